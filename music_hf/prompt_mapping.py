"""A prompt brought to what the model knows before it is continued: `map_prompt(score, model, tokenizer)`.

Music people have (pop songs with drums and synths, expressive piano) holds things a model trained on a small
corpus never saw. What the model learned is measured from the model itself (`model_knowledge`): the share of its
probability that each Program, Velocity and Tempo token gets where such a token comes next, in a few contexts (the
opening of a new piece in each genre, and whatever pieces the caller adds). A value counts as learned when its
share reaches LEARNED_SHARE times chance (1 / the number of values of its kind) in some context: a value the
training data never had gets almost nothing. Then, in the prompt:

- drum tracks are dropped when the model never learned drums (kept when they are all the prompt has);
- a program the model never learned becomes the nearest learned program (by number) of the same General MIDI
  family (Piano, Organ, Guitar, Strings...), else the piano when it is learned, else the learned program the model
  likes best;
- velocities and tempos outside the learned range are clamped into it.

Each change is a line for the user. A model with no evidence of a kind (an untrained one: every share near
chance) leaves that kind of the prompt as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import symusic
import torch

from .tokenization_music import DRUM_PROGRAM, KIND_INDEX, MusicTokenizer, load_score

LEARNED_SHARE = 2.0  # a value counts as learned at this many times the chance share of its kind's tokens
GM_FAMILIES = ("Piano", "Chromatic Percussion", "Organ", "Guitar", "Bass", "Strings", "Ensemble", "Brass", "Reed",
               "Pipe", "Synth Lead", "Synth Pad", "Synth Effects", "Ethnic", "Percussive", "Sound Effects")
PIANO = 0
PROBE_PITCH = 60  # the note after which the velocity probe asks for a Velocity token


def gm_family(program: int) -> str:
    """The General MIDI family of a program (0-127; 128 is "Drums")."""
    return "Drums" if program == DRUM_PROGRAM else GM_FAMILIES[int(program) // 8]


def _genre_kwargs(model: Any, genre: Any, device: torch.device) -> dict[str, torch.Tensor]:
    if getattr(model.config, "model_type", "") != "music":  # a GPT-2 baseline takes no genre
        return {}
    return {"genre_ids": torch.tensor([model.config.genre_id(genre)], device=device)}


def opening_contexts(model: Any, tokenizer: MusicTokenizer) -> list[tuple[list[int], Any]]:
    """The opening of a new piece (BOS, first bar, 4/4 where the vocabulary has it, 120 BPM where it has tempos) in
    each of the model's genres: the contexts `model_knowledge` always asks."""
    signatures = list(tokenizer.time_signatures())
    signature = "4/4" if "4/4" in signatures else (signatures[0] if signatures else None)
    tempo = 120 if len(tokenizer.kind_ids("Tempo")) else None  # (a Structured vocabulary has no Tempo tokens)
    opening = [tokenizer.bos_token_id] + tokenizer.opening_ids(signature, tempo)
    genres = [g for _, g in sorted(getattr(model.config, "id2genre", {0: None}).items())] or [None]
    return [(opening, g) for g in genres]


def kind_shares(model: Any, tokenizer: MusicTokenizer, kind: str,
                contexts: Sequence[tuple[Sequence[int], Any]]) -> dict[float, float]:
    """For each value of `kind` (its single tokens), its highest share among the `kind` tokens over the contexts.

    In a context (ids starting with BOS, and a genre) the model's probability for each `kind` token is shared out
    among them (softmax over them) and averaged over the places where the next token is a `kind` token, or, when
    none is, the last place if the grammar allows a `kind` token there (as at the opening of a new piece)."""
    kind_ids = tokenizer.kind_ids(kind)
    if not len(kind_ids):
        return {}
    table = tokenizer.token_table
    is_kind = table.kind == KIND_INDEX[kind]
    next_kinds = tokenizer.grammar_tables()["next_kinds"]
    device = next(model.parameters()).device
    columns = torch.as_tensor(kind_ids, device=device)
    best = torch.zeros(len(kind_ids))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for ids, genre in contexts:
                ids = [int(i) for i in ids]
                places = [i for i in range(len(ids) - 1) if is_kind[ids[i + 1]]]
                if not places and KIND_INDEX[kind] in next_kinds.get(int(table.last_kind[ids[-1]]), ()):
                    places = [len(ids) - 1]
                if not places:
                    continue
                logits = model(torch.tensor([ids], device=device), **_genre_kwargs(model, genre, device)).logits[0]
                share = logits[places][:, columns].float().softmax(-1).mean(0).cpu()
                best = torch.maximum(best, share)
    finally:
        model.train(was_training)
    return {float(v): float(s) for v, s in zip(table.value[kind_ids], best.tolist())}


def _learned(shares: dict[float, float]) -> list[float]:
    """The values whose share reaches LEARNED_SHARE times chance, best first."""
    if not shares:
        return []
    chance = 1.0 / len(shares)
    return [v for v, s in sorted(shares.items(), key=lambda vs: -vs[1]) if s >= LEARNED_SHARE * chance]


def learned_programs(model: Any, tokenizer: MusicTokenizer,
                     contexts: Sequence[tuple[Sequence[int], Any]] | None = None) -> list[int]:
    """The programs (128 = drums) the model learned to play, ascending, measured from the model itself
    (`kind_shares` of the Program tokens; `contexts` default: `opening_contexts`). A program the training data
    never had gets almost nothing, and a generation restricted to it writes silence: the model would rather move on
    in time than play it."""
    contexts = opening_contexts(model, tokenizer) if contexts is None else contexts
    return sorted(int(p) for p in _learned(kind_shares(model, tokenizer, "Program", contexts)))


USUAL_SHARE = 0.1  # a genre's usual instrument: at least this share of the model's Program probability at its opening


def usual_programs(model: Any, tokenizer: MusicTokenizer, genre: Any = None) -> list[int]:
    """The instruments (programs, 128 = drums) `model` opens a new piece of `genre` with, best first, measured from
    the model: those with at least USUAL_SHARE of its Program probability at the genre's opening (`kind_shares`);
    empty where none has (an untrained model spreads it evenly).

    What a new piece plays when the caller names no instruments (`generate_music`). A model trained with instrument
    reassignment (`program_reassign`) gives a genre's own instruments about half the probability and spreads the rest
    thinly over every General MIDI family: sampled freely, a chorale would as often as not come out on a sitar or a
    tenor sax."""
    config = getattr(model, "config", None)
    name = None
    if genre is not None and getattr(config, "model_type", "") == "music":
        name = config.id2genre[config.genre_id(genre)]
    contexts = [(ids, g) for ids, g in opening_contexts(model, tokenizer) if name is None or g == name][:1]
    shares = kind_shares(model, tokenizer, "Program", contexts)
    return [int(p) for p, share in sorted(shares.items(), key=lambda ps: -ps[1]) if share >= USUAL_SHARE]


@dataclass
class ModelKnowledge:
    """What a model learned, as `map_prompt` uses it: programs (best first; 128 = drums), and the lowest and highest
    learned velocity and tempo (None: no evidence, the prompt's are kept)."""

    programs: list[int] = field(default_factory=list)
    velocity_range: tuple[float, float] | None = None
    tempo_range: tuple[float, float] | None = None

    @property
    def drums(self) -> bool:
        return DRUM_PROGRAM in self.programs


def model_knowledge(model: Any, tokenizer: MusicTokenizer,
                    contexts: Sequence[tuple[Sequence[int], Any]] = ()) -> ModelKnowledge:
    """Measure what `model` learned (see the module's docstring): `opening_contexts` plus `contexts` (ids starting
    with BOS, and a genre: corpus pieces, the prompt), and for velocities one probe per learned program (the opening,
    the program, a middle C) so that a Velocity token comes next."""
    asked = opening_contexts(model, tokenizer) + [(list(ids), g) for ids, g in contexts]
    programs = [int(p) for p in _learned(kind_shares(model, tokenizer, "Program", asked))]
    probes = []
    pitch = [tokenizer.token_id("Pitch", PROBE_PITCH)] if len(tokenizer.kind_ids("Pitch")) else []
    for opening, genre in opening_contexts(model, tokenizer):
        for p in programs or [None]:
            if p is None or not len(tokenizer.kind_ids("Program")):
                probes.append((opening + pitch, genre))
            elif p != DRUM_PROGRAM and pitch:
                probes.append((opening + [tokenizer.token_id("Program", p)] + pitch, genre))
    ranges = []
    for kind, extra in (("Velocity", probes), ("Tempo", [])):
        values = _learned(kind_shares(model, tokenizer, kind, asked + extra))
        ranges.append((min(values), max(values)) if values else None)
    return ModelKnowledge(programs=programs, velocity_range=ranges[0], tempo_range=ranges[1])


def nearest_program(program: int, learned: Sequence[int]) -> tuple[int, str] | None:
    """The learned program that stands in for an unlearned melodic `program`, and how it was chosen: "family" (the
    nearest learned program by number in the same General MIDI family), "piano" (none in the family), "favourite"
    (nor the piano: the first melodic program of `learned`, which is best first). None when no melodic program
    is learned."""
    melodic = [p for p in learned if p != DRUM_PROGRAM]
    if not melodic:
        return None
    family = [p for p in melodic if p // 8 == program // 8]
    if family:
        return min(family, key=lambda p: (abs(p - program), p)), "family"
    if PIANO in melodic:
        return PIANO, "piano"
    return melodic[0], "favourite"


STAND_IN_REASONS = {
    "family": "the nearest learned instrument of the same family",
    "piano": "no instrument of their family was learned",
    "favourite": "no instrument of their family was learned, nor the piano: the instrument the model plays most",
}


def _bin_values(tokenizer: MusicTokenizer, kind: str) -> np.ndarray:
    return np.sort(tokenizer.token_table.value[tokenizer.kind_ids(kind)])


def _quantized(values: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """The nearest of the sorted `bins` to each value, a tie going up (as miditok's `np_get_closest`)."""
    idx = np.searchsorted(bins, values, side="left")
    below = np.maximum(idx - 1, 0)
    above = np.minimum(idx, len(bins) - 1)
    take_below = (idx == len(bins)) | (np.abs(values - bins[below]) < np.abs(values - bins[above]))
    return bins[np.where(take_below, below, above)]


def _outside(values: np.ndarray, bins: np.ndarray, low: float, high: float, per_minute: bool = False) -> np.ndarray:
    """Which values the tokenizer puts, once quantized to `bins`, outside [low, high] (`per_minute`: tempos in beats
    per minute, which miditok quantizes as microseconds per beat)."""
    if not len(bins) or not len(values):
        return np.zeros(len(values), dtype=bool)
    if per_minute:
        quantized = 6e7 / _quantized(6e7 / values, np.sort(6e7 / bins))
    else:
        quantized = _quantized(values, bins)
    return (quantized < low - 1e-6) | (quantized > high + 1e-6)


def map_prompt(score: Any, model: Any, tokenizer: MusicTokenizer, knowledge: ModelKnowledge | None = None,
               contexts: Sequence[tuple[Sequence[int], Any]] = ()) -> tuple[symusic.Score, list[str]]:
    """`score` (a Score, MIDI/ABC path or bytes) mapped into what `model` knows, and one line per change (empty
    when nothing changed). `knowledge` (`model_knowledge(model, tokenizer, contexts)` when None) can be measured
    once and reused for many prompts. The input Score is not modified."""
    from .render import program_name

    knowledge = knowledge or model_knowledge(model, tokenizer, contexts)
    score = load_score(score, tokenizer.max_file_bytes).copy()
    changes: list[str] = []
    tracks = [t for t in score.tracks if len(t.notes)]
    learned = knowledge.programs
    if learned:
        drums = [t for t in tracks if t.is_drum]
        others = [t for t in tracks if not t.is_drum]
        if drums and not knowledge.drums:
            notes = sum(len(t.notes) for t in drums)
            if others:
                kept = [t for t in score.tracks if not t.is_drum]
                score.tracks = kept
                changes.append(f"Dropped the drums ({notes} notes): the model never learned to play drums.")
            else:
                changes.append(f"Kept the drums ({notes} notes) although the model never learned to play them: "
                               "the prompt has nothing else.")
        moved: dict[tuple[int, str], list[int]] = {}  # (stand-in, how) -> the programs it plays, in track order
        for track in score.tracks:
            old = int(track.program)
            if track.is_drum or old in learned or not len(track.notes):
                continue
            stand_in = nearest_program(old, learned)
            if stand_in is None:  # the model learned the drums only: nothing melodic to map to
                continue
            track.program = stand_in[0]
            olds = moved.setdefault(stand_in, [])
            if old not in olds:
                olds.append(old)
        for (new, how), olds in moved.items():
            parts = ", ".join(program_name(p) for p in olds)
            changes.append(f"{program_name(new)} plays the part{'s' if len(olds) > 1 else ''} of {parts}: the model "
                           f"never learned {'them' if len(olds) > 1 else 'it'}; {STAND_IN_REASONS[how]}.")
    if knowledge.velocity_range is not None:
        low, high = knowledge.velocity_range
        bins = _bin_values(tokenizer, "Velocity")
        clamped = 0
        for track in score.tracks:
            if not len(track.notes):
                continue
            notes = track.notes.numpy()
            out = _outside(notes["velocity"].astype(float), bins, low, high)  # clamped, they quantize inside
            if out.any():
                clamped += int(out.sum())
                velocity = notes["velocity"].astype(float)
                velocity[out] = np.clip(velocity[out], low, high)
                notes["velocity"] = velocity.round().astype(notes["velocity"].dtype)
                track.notes = symusic.Note.from_numpy(**notes, ttype=score.ttype)
        if clamped:
            into = (f"set to {low:.0f}, the only loudness" if low == high
                    else f"clamped into {low:.0f}–{high:.0f}, the range")
            changes.append(f"Velocities of {clamped} notes {into} the model learned.")
    if knowledge.tempo_range is not None and len(score.tempos):
        low, high = knowledge.tempo_range
        qpm = np.array([t.qpm for t in score.tempos], dtype=float)
        out = _outside(qpm, _bin_values(tokenizer, "Tempo"), low, high, per_minute=True)
        if out.any():
            before = sorted({round(float(q)) for q in qpm[out]})
            for tempo, is_out in zip(score.tempos, out):
                if is_out:
                    tempo.qpm = float(np.clip(tempo.qpm, low, high))
            shown = ", ".join(map(str, before[:4])) + (" ..." if len(before) > 4 else "")
            into = (f"set to {low:.0f} BPM, the only tempo" if low == high
                    else f"clamped into {low:.0f}–{high:.0f} BPM, the range")
            changes.append(f"Tempo {shown} BPM {into} the model learned.")
    return score, changes


__all__ = ["LEARNED_SHARE", "USUAL_SHARE", "GM_FAMILIES", "gm_family", "opening_contexts", "kind_shares",
           "learned_programs", "usual_programs",
           "ModelKnowledge", "model_knowledge", "nearest_program", "STAND_IN_REASONS", "map_prompt"]
