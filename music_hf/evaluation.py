"""What scripts/evaluate.py and scripts/bench.py share: music metrics for generated pieces (pitch-class histograms
and their distances, note density, grammar error rate, the objective metrics of the literature through muspy, and
structure: repeated bars, simultaneous voices, dissonant intervals), memorization (the longest span of bars copied
from a training piece), a small genre classifier to check genre control, the measures of composition with control
(control adherence against chance, infilling NLL and constraints, accompaniment), and the report helpers (machine
description, Markdown tables, one section of BENCHMARKS.md rewritten at a time)."""

from __future__ import annotations

import datetime
import math
import os
import platform
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import symusic
import torch

from .composition import accompany_piece, infill_piece
from .configuration_music import MusicConfig
from .data import MusicDataCollator, TokenAugmenter, fim_arrange
from .generation import _context_room, cut_bars, generate_music
from .modeling_music import MusicForSequenceClassification
from .tokenization_music import (DENSITY_EDGES, DRUM_PROGRAM, KEY_MODES, KEY_TONICS, MAX_POLYPHONY,
                                 OCTAVES, REPETITION_EDGES, TIMING_STYLES, MusicFileError, MusicTokenizer, load_score,
                                 repeated_share)
from .training import lr_scheduler

PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


# ----- music metrics -------------------------------------------------------------------------------------
def pitch_class_histogram(music: Any, normalize: bool = True) -> np.ndarray:
    """12-bin histogram of note onsets by pitch class (C = 0), drum tracks left out.

    `music` is a `symusic.Score` or anything `load_score` reads (path, MIDI bytes, ABC). Normalized to sum 1
    unless there are no pitched notes (then all zeros).
    """
    score = music if isinstance(music, symusic.Score) else load_score(music)
    counts = np.zeros(12)
    for track in score.tracks:
        if track.is_drum or len(track.notes) == 0:
            continue
        counts += np.bincount(track.notes.numpy()["pitch"].astype(np.int64) % 12, minlength=12)
    total = counts.sum()
    return counts / total if normalize and total > 0 else counts


def histogram_distance(p: np.ndarray, q: np.ndarray, metric: str = "js") -> float:
    """Distance between two histograms, each normalized first: "js" is the Jensen-Shannon divergence in bits
    (0 = identical, 1 = disjoint), "l1" the L1 distance (0 to 2). NaN if either histogram is empty."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return float("nan")
    p, q = p / p.sum(), q / q.sum()
    if metric == "l1":
        return float(np.abs(p - q).sum())
    if metric != "js":
        raise ValueError(f"metric must be 'js' or 'l1', got {metric!r}")
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float((a[nz] * np.log2(a[nz] / m[nz])).sum())

    return max(0.0, 0.5 * kl(p) + 0.5 * kl(q))


def notes_per_bar(ids: Sequence[int], tokenizer: MusicTokenizer) -> float:
    """Note density of a token sequence: notes (Pitch/PitchDrum) over bars (Bar tokens), from the tokenizer's
    per-id tables, so BPE ids count every note and bar they hold. NaN for a sequence without any bar."""
    table = tokenizer.token_table
    ids = np.asarray(ids, dtype=np.int64)
    notes, bars = table.note_count[ids].sum(), table.bar_count[ids].sum()
    return float(notes / bars) if bars > 0 else float("nan")


def grammar_error_rate(sequences: Sequence[Sequence[int]], tokenizer: MusicTokenizer) -> float:
    """Share of generated tokens the tokenizer's grammar check rejects, over all sequences (token-weighted).

    A leading BOS and a final EOS are not counted; any other special id (PAD, BOS, MASK, or EOS before the end)
    is an error, since it cannot be decoded into music.
    """
    special = set(tokenizer.all_special_ids)
    errors = total = 0.0
    for seq in sequences:
        seq = [int(i) for i in seq]
        if seq and seq[0] == tokenizer.bos_token_id:
            seq = seq[1:]
        if seq and seq[-1] == tokenizer.eos_token_id:
            seq = seq[:-1]
        if not seq:
            continue
        misplaced = sum(i in special for i in seq)
        clean = len(seq) - misplaced
        errors += misplaced + (tokenizer.grammar_errors(seq) * clean if clean else 0.0)
        total += len(seq)
    return errors / total if total else float("nan")


def pooled_pitch_class_histogram(sequences: Sequence[Sequence[int]], tokenizer: MusicTokenizer) -> np.ndarray:
    """Pitch-class counts (not normalized) of a set of token sequences, each decoded to a Score: a genre's profile."""
    return sum((pitch_class_histogram(tokenizer.decode_midi(s), normalize=False) for s in sequences), np.zeros(12))


def mean_finite(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


# ----- objective metrics of the literature (muspy) and of structure --------------------------------------
# intervals (semitones mod 12) between simultaneous pitches counted as dissonant: the minor second, the tritone and
# the major seventh, in any octave (so the minor ninth, 13, and the augmented eleventh, 18, count too)
DISSONANT_INTERVALS = frozenset({1, 6, 11})
DRUM_KEY_OFFSET = 128  # a drum note's pitch in `bar_notes`: 128 + its drum key, never equal to a pitched note's
METRIC_MAX_TPQ = 48  # `music_metrics` resamples finer Scores (muspy's polyphony builds a piano roll of every tick)
COPY_THRESHOLD = 4  # memorization: a generation "copies" when its longest copied span is longer than this many bars
# (key, label) of the metrics `music_metrics` computes, in report order
MUSIC_METRICS = (("pitch_class_entropy", "pitch-class entropy (bits)"), ("scale_consistency", "scale consistency"),
                 ("groove_consistency", "groove consistency"), ("polyphony", "polyphony"),
                 ("empty_beat_rate", "empty-beat rate"), ("notes_per_bar", "notes per bar"),
                 ("repeated_bars", "repeated bars"), ("simultaneous_voices", "simultaneous voices"),
                 ("dissonance_rate", "dissonant intervals"))


def _as_ticks(score: symusic.Score) -> symusic.Score:
    return score if score.ttype == symusic.TimeUnit.tick else score.to("tick")


def _note_arrays(score: symusic.Score, drums: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(onset, duration, pitch) of every note of a tick Score, tracks concatenated; drum notes get pitch 128 + key,
    or are left out with `drums=False`."""
    parts = []
    for track in score.tracks:
        if len(track.notes) == 0 or (track.is_drum and not drums):
            continue
        a = track.notes.numpy()
        pitch = a["pitch"].astype(np.int64) + (DRUM_KEY_OFFSET if track.is_drum else 0)
        parts.append((a["time"].astype(np.int64), a["duration"].astype(np.int64), pitch))
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    return tuple(np.concatenate(column) for column in zip(*parts))  # type: ignore[return-value]


def bar_starts(score: symusic.Score) -> list[int]:
    """The tick of each bar's start, up to the bar of the last note onset ([] without notes).

    Bars follow the time signatures (4/4 before the first one); a time signature starts a new bar where it falls,
    and the last of several at one tick wins. A bar lasts numerator * 4 / denominator quarter notes.
    """
    score = _as_ticks(score)
    onsets = _note_arrays(score)[0]
    if not len(onsets):
        return []
    last, tpq = int(onsets.max()), score.ticks_per_quarter
    length = {0: 4 * tpq}
    for ts in score.time_signatures:
        length[int(ts.time)] = max(1, tpq * 4 * ts.numerator // ts.denominator)
    changes = sorted(length)
    starts: list[int] = []
    for k, at in enumerate(changes):
        stop = min(changes[k + 1] if k + 1 < len(changes) else last + 1, last + 1)
        starts.extend(range(at, stop, length[at]))
    return starts


def bar_notes(score: symusic.Score) -> list[tuple[tuple[int, int, int], ...]]:
    """Each bar's notes (bars as `bar_starts` cuts them) as a sorted tuple of (onset relative to the bar start,
    pitch, duration) in ticks, all tracks pooled, drum notes with pitch 128 + key; an empty bar is ()."""
    score = _as_ticks(score)
    starts = np.asarray(bar_starts(score), dtype=np.int64)
    if not len(starts):
        return []
    onset, duration, pitch = _note_arrays(score)
    bar = np.searchsorted(starts, onset, side="right") - 1
    rel = onset - starts[bar]
    order = np.lexsort((duration, pitch, rel, bar))
    bars: list[list[tuple[int, int, int]]] = [[] for _ in starts]
    for b, r, p, d in zip(bar[order].tolist(), rel[order].tolist(), pitch[order].tolist(), duration[order].tolist()):
        bars[b].append((r, p, d))
    return [tuple(b) for b in bars]


def repeated_bar_share(score: symusic.Score | Sequence[tuple]) -> float:
    """Share of the non-empty bars that repeat an earlier bar of the piece: the same notes (onset relative to the
    bar start, pitch, duration; `bar_notes`), so a repeat played an octave higher or with another rhythm does not
    count. Empty bars count neither way; NaN for a piece without notes. Takes a Score or its `bar_notes`. The rule
    is the repetition control's (`tokenization_music.repeated_share`)."""
    share = repeated_share(bar_notes(score) if isinstance(score, symusic.Score) else score)  # the control's rule
    return float("nan") if share is None else share


def simultaneous_voices(score: symusic.Score) -> float:
    """Mean number of notes sounding at a note onset: at each distinct onset tick t (drums left out), the notes
    with onset <= t < onset + duration (a zero-length note sounds at its onset), averaged over the onsets.
    1 for a melody, 4 for block chords in four parts; NaN without pitched notes."""
    onset, duration, _ = _note_arrays(_as_ticks(score), drums=False)
    if not len(onset):
        return float("nan")
    end = np.sort(np.maximum(onset + duration, onset + 1))
    starts, times = np.sort(onset), np.unique(onset)
    sounding = np.searchsorted(starts, times, side="right") - np.searchsorted(end, times, side="right")
    return float(sounding.mean())


def dissonance_rate(score: symusic.Score) -> float:
    """Share of the simultaneous pitch pairs that are dissonant (drums left out).

    A pair is two different pitches that start sounding together: at each onset tick t, every pair {a, b} with a
    among the pitches struck at t and b among the pitches sounding at t (struck at t, or struck earlier and still
    held: onset < t < onset + duration), a != b; each pair is counted once per onset where it forms, so a held chord
    counts once, not at every later onset. Dissonant: |a - b| mod 12 in DISSONANT_INTERVALS (minor second, tritone,
    major seventh and their compounds, e.g. the minor ninth); unisons in two parts, octaves, thirds, fourths,
    fifths, sixths, and the milder major second and minor seventh count as not dissonant. NaN without any pair
    (a melody).
    """
    onset, duration, pitch = _note_arrays(_as_ticks(score), drums=False)
    end = onset + duration
    dissonant = total = 0
    for t in np.unique(onset):
        new = np.unique(pitch[onset == t])
        held = np.setdiff1d(pitch[(onset < t) & (end > t)], new)
        others = np.concatenate([new, held])
        intervals = np.abs(new[:, None] - others[None, :]) % 12
        distinct = new[:, None] != others[None, :]
        # pairs within `new` appear twice (a, b) and (b, a): count them once
        within = np.zeros_like(distinct)
        within[:, : len(new)] = True
        weight = np.where(within, 0.5, 1.0) * distinct
        total += weight.sum()
        dissonant += (weight * np.isin(intervals, list(DISSONANT_INTERVALS))).sum()
    return float(dissonant / total) if total else float("nan")


def to_muspy(score: symusic.Score, shorten: int = 0) -> Any:
    """A `muspy.Music` with the Score's notes (tick times kept: resolution = ticks per quarter), tracks, programs
    and time signatures, built directly (no MIDI round trip: reading a dumped MIDI file back pairs the note-offs of
    overlapping same-pitch notes differently, and pretty_midi's seconds requantize the times). `shorten` ticks
    come off every duration (not below 0). Needs the `eval` extra (`pip install 'music-hf[eval]'`)."""
    try:
        import muspy
    except ImportError as e:  # pragma: no cover - the dev and eval extras install it
        raise ImportError("the music metrics need muspy: pip install 'music-hf[eval]'") from e
    score = _as_ticks(score)
    return muspy.Music(
        resolution=score.ticks_per_quarter,
        time_signatures=[muspy.TimeSignature(time=int(ts.time), numerator=int(ts.numerator),
                                             denominator=int(ts.denominator)) for ts in score.time_signatures],
        tracks=[muspy.Track(program=int(t.program), is_drum=bool(t.is_drum), name=t.name,
                            notes=[muspy.Note(time=int(n.time), pitch=int(n.pitch),
                                              duration=max(0, int(n.duration) - shorten), velocity=int(n.velocity))
                                   for n in t.notes]) for t in score.tracks if len(t.notes)])


def music_metrics(score: symusic.Score) -> dict[str, float]:
    """The objective metrics of MUSIC_METRICS for one piece (NaN where undefined, all NaN without notes).

    From muspy (the definitions of its docs): pitch-class entropy (bits, of the 12-bin histogram of note onsets),
    scale consistency (the largest share of notes in one major or minor scale), groove consistency (1 - mean
    Hamming distance between the onset patterns of neighbouring bars, per tick, bars of the first time signature),
    polyphony (mean number of pitches on over the ticks where any is on), empty-beat rate (share of quarter-note
    beats where no note sounds). muspy counts a note's end tick as sounding (and one more beat or bar after a piece
    that ends on a boundary): the empty-beat rate and the groove consistency get the notes one tick shorter, which
    makes both count exactly the beats and bars the notes sound in.

    Ours: notes per bar (notes over the bars of `bar_starts`), repeated bars (`repeated_bar_share`), simultaneous
    voices (`simultaneous_voices`) and dissonant intervals (`dissonance_rate`).

    A Score finer than METRIC_MAX_TPQ ticks per quarter note (a MIDI file's 480 or 10080; the tokenizer decodes at
    its own, coarser, resolution) is resampled to METRIC_MAX_TPQ first. The groove consistency counts ticks, so it
    compares pieces at one resolution only: here, all decoded by one tokenizer.
    """
    import muspy

    score = _as_ticks(score)
    if score.ticks_per_quarter > METRIC_MAX_TPQ:
        score = score.resample(METRIC_MAX_TPQ, min_dur=1)
    starts = bar_starts(score)
    if not starts:
        return {key: float("nan") for key, _ in MUSIC_METRICS}
    exact, shortened = to_muspy(score), to_muspy(score, shorten=1)
    ts = score.time_signatures[0] if len(score.time_signatures) and score.time_signatures[0].time == 0 else None
    bar_ticks = score.ticks_per_quarter * 4 * (ts.numerator if ts else 4) // (ts.denominator if ts else 4)
    pitched = any(not t.is_drum and len(t.notes) for t in score.tracks)
    nan = float("nan")
    return {
        "pitch_class_entropy": float(muspy.pitch_class_entropy(exact)),
        "scale_consistency": float(muspy.scale_consistency(exact)),
        "groove_consistency": float(muspy.groove_consistency(shortened, max(1, bar_ticks))),
        "polyphony": float(muspy.polyphony(exact)) if pitched else nan,
        "empty_beat_rate": float(muspy.empty_beat_rate(shortened)),
        "notes_per_bar": score.note_num() / len(starts),
        "repeated_bars": repeated_bar_share(bar_notes(score)),
        "simultaneous_voices": simultaneous_voices(score),
        "dissonance_rate": dissonance_rate(score),
    }


# ----- memorization ------------------------------------------------------------------------------------
class BarIndex:
    """Where each bar of a set of pieces (the training pieces) occurs: a hash map from a bar's notes (`bar_notes`:
    the tuple of (relative onset, pitch, duration), hashed by Python, compared exactly) to its (piece, bar index)
    occurrences. Empty bars are left out: a bar of rest matches anything and copies nothing."""

    def __init__(self, pieces: Iterable[Sequence[tuple]] = ()) -> None:
        self.where: dict[tuple, list[tuple[int, int]]] = {}
        self.pieces = 0
        for bars in pieces:
            self.add(bars)

    def add(self, bars: Sequence[tuple]) -> None:
        for j, bar in enumerate(bars):
            if bar:
                self.where.setdefault(bar, []).append((self.pieces, j))
        self.pieces += 1

    def longest_copy(self, bars: Sequence[tuple]) -> dict[str, int | None]:
        """The longest run of consecutive bars of `bars` that equals a run of consecutive bars of one indexed piece:
        `bars` (its length, 0 if no bar matches), `at` (its first bar in `bars`), `piece` and `bar` (where it is in
        the index; None for no match). One pass, extending the runs that end at the previous bar: the work is the
        number of indexed occurrences of the piece's bars."""
        best: dict[str, int | None] = {"bars": 0, "at": None, "piece": None, "bar": None}
        runs: dict[tuple[int, int], int] = {}  # (piece, bar) -> length of the matching run ending there
        for i, bar in enumerate(bars):
            runs = {(p, j): runs.get((p, j - 1), 0) + 1 for p, j in self.where.get(bar, ())} if bar else {}
            for (p, j), n in runs.items():
                if n > best["bars"]:
                    best = {"bars": n, "at": i - n + 1, "piece": p, "bar": j - n + 1}
        return best


def memorization(pieces: Sequence[Sequence[tuple]], index: BarIndex, threshold: int = COPY_THRESHOLD
                 ) -> dict[str, Any]:
    """The longest span of consecutive bars each piece (its `bar_notes`) copies from an indexed piece, and the share
    of pieces copying more than `threshold` bars (NaN for no pieces)."""
    copies = [index.longest_copy(bars) for bars in pieces]
    longest = [int(c["bars"]) for c in copies]
    return {"n": len(longest), "threshold": threshold, "longest": longest,
            "sources": [[c["piece"], c["bar"]] for c in copies],
            "mean_longest": float(np.mean(longest)) if longest else float("nan"),
            "max_longest": max(longest) if longest else 0,
            "copied_share": float(np.mean([n > threshold for n in longest])) if longest else float("nan")}


# ----- generation per genre ------------------------------------------------------------------------------
def generate_per_genre(model: Any, tokenizer: MusicTokenizer, genres: Sequence[str], per_genre: int,
                       max_new_tokens: int, constrained: bool, seed: int = 0, **sampling: Any
                       ) -> dict[str, list[list[int]]]:
    """`per_genre` unprompted generations (ids with the leading BOS, cut at EOS) for each genre, in one batch each."""
    out = {}
    for i, genre in enumerate(genres):
        pieces = generate_music(model, tokenizer, genre=genre, max_new_tokens=max_new_tokens,
                                constrained=constrained, num_return_sequences=per_genre, seed=seed + i, **sampling)
        out[genre] = [p.ids for p in pieces]
    return out


# ----- genre classifier ----------------------------------------------------------------------------------
def train_genre_classifier(windows: Any, tokenizer: MusicTokenizer, genres: Sequence[str], steps: int = 300,
                           batch_size: int = 16, learning_rate: float = 1e-3, seed: int = 0,
                           device: str | torch.device = "cpu", hidden_size: int = 64, num_hidden_layers: int = 2,
                           num_attention_heads: int = 2, max_length: int = 256,
                           augmenter: TokenAugmenter | None = None) -> MusicForSequenceClassification:
    """A small `MusicForSequenceClassification` that tells the genres apart from token windows.

    `windows` has `input_ids` and `genre_id` (0 = unknown, left out); `genres[0]` is "unknown", so label k is
    genre id k + 1. Batches draw genres uniformly, so a genre with many windows does not swamp the others.
    No genre embedding: the label must come from the music.

    `augmenter`: the generator's training augmentation (`TrainConfig.data.augmentation()`), applied to each drawn
    window (seeded by the draw). A generator trained on augmented windows reproduces what augmentation changes
    (performed velocities, other instruments, onset jitter); a classifier that saw only the corpus's score velocities
    and instruments would read those as "not this genre" and judge the surface instead of the music.
    """
    genre_ids = np.asarray(windows["genre_id"])
    by_genre = [np.flatnonzero(genre_ids == g) for g in range(1, len(genres))]
    present = [i for i, rows in enumerate(by_genre) if len(rows)]
    if len(present) < 2:
        raise ValueError(f"a genre classifier needs windows of at least two genres, got {len(present)}")
    names = list(genres[1:])
    config = MusicConfig.from_tokenizer(
        tokenizer, genres=list(genres), num_labels=len(names), id2label=dict(enumerate(names)),
        label2id={g: i for i, g in enumerate(names)}, use_genre_embedding=False, hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
        intermediate_size=4 * hidden_size, max_position_embeddings=max_length, embedding_dropout=0.1,
        hidden_dropout=0.1)
    torch.manual_seed(seed)
    model = MusicForSequenceClassification(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    scheduler = lr_scheduler(optimizer, max(1, steps // 10), steps)
    collator = MusicDataCollator(tokenizer.pad_token_id, augmenter=augmenter, seed=seed)
    rng = np.random.default_rng(seed)
    model.train()
    for step in range(steps):
        labels = rng.choice(present, size=batch_size)
        rows = [int(rng.choice(by_genre[label])) for label in labels]
        batch = collator([{"input_ids": windows[r]["input_ids"][:max_length], "idx": step * batch_size + j}
                          for j, r in enumerate(rows)])
        loss = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                     labels=torch.as_tensor(labels, device=device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return model.eval()


@torch.no_grad()
def classify_genres(model: MusicForSequenceClassification, sequences: Sequence[Sequence[int]],
                    pad_token_id: int, batch_size: int = 32) -> list[int]:
    """Predicted genre id (label + 1, as in `genres`) of each sequence, read from its first max_length tokens."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    limit = model.config.max_position_embeddings
    collator = MusicDataCollator(pad_token_id)
    out: list[int] = []
    for start in range(0, len(sequences), batch_size):
        batch = collator([{"input_ids": list(s)[:limit]} for s in sequences[start: start + batch_size]])
        logits = model(input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device)).logits
        out += (logits.argmax(-1) + 1).tolist()
    model.train(was_training)
    return out


def classification_scores(predicted: Sequence[int], true: Sequence[int]) -> dict[str, Any]:
    """Accuracy, balanced accuracy (mean recall over genres present), per-genre recall, and the two chance
    levels to compare with: 1/number of genres present and the majority genre's share."""
    predicted, true = np.asarray(predicted), np.asarray(true)
    if len(true) == 0:
        return {"n": 0, "accuracy": float("nan"), "balanced_accuracy": float("nan"), "recall": {},
                "uniform_chance": float("nan"), "majority_rate": float("nan")}
    labels, counts = np.unique(true, return_counts=True)
    recall = {int(g): float((predicted[true == g] == g).mean()) for g in labels}
    return {"n": int(len(true)), "accuracy": float((predicted == true).mean()),
            "balanced_accuracy": float(np.mean(list(recall.values()))), "recall": recall,
            "uniform_chance": 1.0 / len(labels), "majority_rate": float(counts.max() / len(true))}


# ----- composition with control --------------------------------------------------------------------------
GUIDANCE_SCALE = 3.0  # classifier-free guidance of the "guided" generations
# bins a control can take (for the uniform chance level): keys, density bins, polyphony 1..6, (low, high) octaves,
# timing styles, repetition bins
CONTROL_BINS = {"key": len(KEY_TONICS) * len(KEY_MODES), "density": len(DENSITY_EDGES), "polyphony": MAX_POLYPHONY,
                "pitch_range": len(OCTAVES) * (len(OCTAVES) + 1) // 2, "timing": len(TIMING_STYLES),
                "repetition": len(REPETITION_EDGES)}
# target programs of the accompaniment: the first the piece lacks (acoustic bass, piano, guitar, violin, flute)
ACCOMPANIMENT_PROGRAMS = (32, 0, 24, 40, 73)


def composition_unsupported(model: Any, tokenizer: MusicTokenizer) -> str | None:
    """Why composition with control cannot be measured for this model and tokenizer, None where it can: it needs
    REMI tokens without BPE, and a tokenizer and a model made with the composition (infill and control) tokens."""
    if tokenizer.tokenization != "REMI" or tokenizer.miditok.is_trained:
        return (f"composition needs REMI tokens without BPE; this tokenizer is {tokenizer.tokenization}"
                f"{' with BPE' if tokenizer.miditok.is_trained else ''}")
    try:
        tokenizer.infill_ids
        tokenizer.control_ids({"key": "C major", "density": 1, "polyphony": 1, "pitch_range": (60, 60)})
    except ValueError:
        return "the model's tokenizer has no composition (infill and control) tokens: it was made before them"
    vocab = getattr(model.config, "vocab_size", None)
    if vocab is not None and vocab < len(tokenizer):
        return (f"the model's vocabulary has {vocab} ids, its tokenizer's {len(tokenizer)}: the model was made before "
                "the composition (infill and control) tokens")
    return None


def _music_body(tokenizer: MusicTokenizer, ids: Sequence[int]) -> list[int]:
    """`ids` without a leading BOS and anything from the first EOS on."""
    ids = [int(i) for i in ids]
    if ids and ids[0] == tokenizer.bos_token_id:
        ids = ids[1:]
    return ids[: ids.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in ids else ids


def _bar_count(tokenizer: MusicTokenizer, ids: Sequence[int]) -> int:
    return int(tokenizer.token_table.bar_count[np.asarray(ids, dtype=np.int64)].sum()) if len(ids) else 0


def composition_measure(tokenizer: MusicTokenizer, ids: Sequence[int]) -> dict[str, Any]:
    """`tokenizer.measure_controls(ids)`, with the density and the repetition counted over the bars before the last
    one where there are two bars or more: a generation (or an opening) cut at a token count ends inside its last
    bar (fewer notes, and rarely a whole repeat). The repetition stays the whole sequence's where the bars before
    the last hold no note."""
    measured = tokenizer.measure_controls(ids)
    bars = _bar_count(tokenizer, ids)
    if bars >= 2:
        whole = tokenizer.measure_controls(cut_bars(tokenizer, ids, bars - 1))
        measured["density"] = whole["density"]
        if whole["repetition"] is not None:
            measured["repetition"] = whole["repetition"]
    return measured


def control_bin(tokenizer: MusicTokenizer, name: str, value: Any) -> tuple[int, ...] | None:
    """The bin of a control value: its control-token ids (`tokenizer.control_ids`); None for no value. Two values
    match when their bins are equal: the same key, density bin, polyphony bin, (low, high) octaves, timing or
    repetition bin."""
    return None if value is None else tuple(tokenizer.control_ids({name: value}))


def control_adherence(model: Any, tokenizer: MusicTokenizer, references: Sequence[Sequence[int]], samples: int = 16,
                      max_new_tokens: int = 256, guidance_scale: float | None = GUIDANCE_SCALE, seed: int = 0,
                      controls: Sequence[str] | None = None, **sampling: Any) -> dict[str, Any]:
    """How often a generation has the control it was asked for, with and without guidance, against chance.

    The requests are the controls measured (`composition_measure`) on the openings of the `references` (held-out
    pieces: their first `max_new_tokens` tokens), taken in turn, `samples` per control; each control is asked
    alone (the others unset) and its pieces generated unprompted with grammar-constrained decoding, once without
    guidance and once with `guidance_scale` (None or 1: not run). A piece matches when its measured value falls in
    the requested bin (`control_bin`). Chance levels: `chance`, the share of reference openings in the requested
    bin (what a model that ignores the control but writes like the held-out pieces would score), and
    `uniform_chance`, 1 / the number of bins (1/24 for the key). Timing is asked "score" and "performed" in turn
    (held-out openings are almost all "score"), and repetition each of its bins in turn (the lower edge of each
    REPETITION_EDGES bin; a third of the openings repeat no bar). `controls`: the names to measure (None: every
    control the tokenizer has, `tokenizer.control_names`).
    The controls not asked keep generation's defaults (`generate_music`: timing "score" and the model's own
    repetition for a new piece).
    """
    controls = tokenizer.control_names if controls is None else controls
    openings = [_music_body(tokenizer, r)[:max_new_tokens] for r in references]
    measured_refs = [composition_measure(tokenizer, o) for o in openings if o]
    guided = guidance_scale is not None and float(guidance_scale) != 1.0
    modes = {"unguided": None, **({"guided": float(guidance_scale)} if guided else {})}
    out: dict[str, Any] = {"references": len(measured_refs), "samples": samples, "max_new_tokens": max_new_tokens,
                           "guidance_scale": float(guidance_scale) if guided else None, "seed": seed, "controls": {}}
    for c, name in enumerate(controls):
        values = [m[name] for m in measured_refs if m[name] is not None]
        requested = ({"timing": list(TIMING_STYLES), "repetition": list(REPETITION_EDGES)}.get(name, values)
                     if values else values)
        entry: dict[str, Any] = {"n": 0, "chance": float("nan"), "uniform_chance": 1.0 / CONTROL_BINS[name],
                                 "adherence": {mode: float("nan") for mode in modes}, "pieces": []}
        out["controls"][name] = entry
        if not values or samples <= 0:
            continue
        requests = [requested[i % len(requested)] for i in range(samples)]
        bins = [control_bin(tokenizer, name, v) for v in requests]
        ref_bins = [control_bin(tokenizer, name, v) for v in values]
        entry["n"] = samples
        entry["chance"] = float(np.mean([np.mean([b == r for b in ref_bins]) for r in bins]))
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, b in enumerate(bins):
            groups.setdefault(b, []).append(i)
        got: dict[str, list[Any]] = {mode: [None] * samples for mode in modes}
        for mode, scale in modes.items():
            for g, (b, members) in enumerate(groups.items()):
                pieces = generate_music(model, tokenizer, controls={name: requests[members[0]]},
                                        max_new_tokens=max_new_tokens, num_return_sequences=len(members),
                                        seed=seed + 1000 * c + g, guidance_scale=scale, **sampling)
                for i, piece in zip(members, pieces):
                    got[mode][i] = composition_measure(tokenizer, piece.ids)[name]
            entry["adherence"][mode] = float(np.mean([control_bin(tokenizer, name, v) == b
                                                      for v, b in zip(got[mode], bins)]))
        entry["pieces"] = [{"requested": r, **{mode: got[mode][i] for mode in modes}} for i, r in enumerate(requests)]
    return out


def _fitting_bars(tokenizer: MusicTokenizer, ids: Sequence[int], limit: int) -> list[int]:
    """The longest run of whole bars from the start of `ids` with at most `limit` tokens (at least one bar)."""
    bars = _bar_count(tokenizer, ids)
    for count in range(bars, 0, -1):
        window = cut_bars(tokenizer, ids, count)
        if len(window) <= limit or count == 1:
            return window
    return list(ids)


@torch.no_grad()
def _span_nlls(model: Any, ids: Sequence[int], start: int, end: int) -> np.ndarray:
    """NLL (nats) of each of ids[start:end] given everything before it (genre unknown)."""
    device = next(model.parameters()).device
    logits = model(input_ids=torch.tensor([list(ids)], device=device)).logits[0, start - 1: end - 1].float()
    target = torch.tensor(list(ids[start:end]), device=device)
    return torch.nn.functional.cross_entropy(logits, target, reduction="none").cpu().numpy()


def infill_quality(model: Any, tokenizer: MusicTokenizer, references: Sequence[Sequence[int]], samples: int = 8,
                   max_gap: int = 2, max_tokens: int = 1024, seed: int = 0, **sampling: Any) -> dict[str, Any]:
    """Bar infilling on the openings of the `references` (held-out pieces; whole bars, as many as fit the model's
    context or `max_tokens`; the pieces of which fewer than three bars fit are `skipped`, the others taken in turn),
    each with a gap of 1 to `max_gap` bars with bars on both sides (drawn from (seed, sample)):

    - `nll_fim` / `nll_left`: NLL per token (nats) of the gap's own tokens given both sides (the fill-in-the-middle
      prompt in the layout the model is trained with, its config's `infill_order`) and given the
      left side only (plain continuation); `fim_better`: share of the gaps where both sides give the lower NLL;
      `by_kind`: the same per token over the gap's bar lines (`bar_tokens` of them: a Bar token opens each bar,
      where the model decides whether the gap goes on) and over its other tokens (the music);
    - `exact_bars`: share of `infill_piece` calls (sampling) that return the piece with exactly the requested bars
      in the gap and the piece's bar count (a failed call counts as a miss, its error kept in `failures`);
    - `grammar_error_rate`: share of the infilled pieces' tokens the grammar check rejects (0 by construction).
    """
    room = min(_context_room(model) or max_tokens, max_tokens)
    usable = []  # (reference index, window, bars)
    for r, ref in enumerate(references):
        window = _fitting_bars(tokenizer, _music_body(tokenizer, ref), room - max_gap - 3)  # BOS, Infill_Start/End
        bars = _bar_count(tokenizer, window)
        if bars >= 3 and len(window) + max_gap + 3 <= room:
            usable.append((r, window, bars))
    nll = {"fim": 0.0, "left": 0.0}
    tokens = exact = fim_better = 0
    bar_id = tokenizer.token_id("Bar")
    outputs: list[list[int]] = []
    failures: list[str] = []
    cases: list[dict[str, Any]] = []
    for i in range(samples if usable else 0):
        r, window, bars = usable[i % len(usable)]
        rng = np.random.default_rng([seed, i])
        k = int(rng.integers(1, min(max_gap, bars - 2) + 1))
        start = int(rng.integers(1, bars - k))  # at least one bar on each side
        end = start + k
        before, upto = cut_bars(tokenizer, window, start), cut_bars(tokenizer, window, end)
        middle = len(upto) - len(before)
        fim = [tokenizer.bos_token_id] + fim_arrange(window, tokenizer, bars=(start, end),
                                                     order=getattr(model.config, "infill_order", "psm"))
        at = fim.index(tokenizer.infill_ids["end"]) - middle  # the gap's tokens end at Infill_End in either layout
        left = [tokenizer.bos_token_id] + upto
        per_fim = _span_nlls(model, fim, at, at + middle)
        per_left = _span_nlls(model, left, len(before) + 1, len(left))
        bar = np.asarray(upto[len(before):]) == bar_id  # the gap's bar lines (a Bar token opens each of its bars)
        case = {"reference": r, "bars": bars, "gap": [start, end], "tokens": middle, "bar_tokens": int(bar.sum()),
                "nll_fim": float(per_fim.sum()), "nll_left": float(per_left.sum()),
                "nll_fim_bar_tokens": float(per_fim[bar].sum()), "nll_left_bar_tokens": float(per_left[bar].sum())}
        nll["fim"] += case["nll_fim"]
        nll["left"] += case["nll_left"]
        tokens += middle
        fim_better += case["nll_fim"] < case["nll_left"]
        score = tokenizer.decode_midi(window)
        try:
            piece = infill_piece(model, tokenizer, score, (start, end), seed=seed + i, **sampling)
        except (RuntimeError, ValueError, MusicFileError) as e:
            failures.append(f"sample {i}: {e}")
            case["exact"] = False
        else:
            span = piece.ids[piece.span[0]: piece.span[1]]
            case["exact"] = _bar_count(tokenizer, span) == k and \
                _bar_count(tokenizer, piece.ids) == _bar_count(tokenizer, tokenizer.encode_score(score))
            outputs.append(piece.ids)
        exact += case["exact"]
        cases.append(case)
    n = len(cases)
    bar_tokens = sum(c["bar_tokens"] for c in cases)
    by_kind = {}  # the gap's bar lines (where the model decides whether the gap goes on) and the rest, apart
    for side in ("fim", "left"):
        on_bars = sum(c[f"nll_{side}_bar_tokens"] for c in cases)
        by_kind[side] = {"bar_tokens": on_bars / bar_tokens if bar_tokens else float("nan"),
                         "other_tokens": (nll[side] - on_bars) / (tokens - bar_tokens) if tokens > bar_tokens
                         else float("nan")}
    return {"n": n, "samples": samples, "skipped": len(references) - len(usable), "max_gap": max_gap,
            "order": getattr(model.config, "infill_order", "psm"), **paired_comparison(cases, seed),
            "tokens": tokens, "bar_tokens": bar_tokens, "by_kind": by_kind,
            "nll_fim": nll["fim"] / tokens if tokens else float("nan"),
            "nll_left": nll["left"] / tokens if tokens else float("nan"),
            "fim_better": fim_better / n if n else float("nan"), "exact_bars": exact / n if n else float("nan"),
            "grammar_error_rate": grammar_error_rate(outputs, tokenizer) if outputs else float("nan"),
            "failures": failures, "cases": cases}


def paired_comparison(cases: Sequence[Mapping[str, Any]], seed: int = 0, resamples: int = 2000) -> dict[str, Any]:
    """How sure the infilling comparison is, gap by gap: `ratio` = the gaps' summed NLL given both sides over
    given the left side only (all tokens; `ratio_music`: without the bar lines, which `infill_music` fixes), each
    with a 95 % percentile bootstrap interval over the gaps (`ratio_ci`, `ratio_music_ci`; resampled with `seed`),
    and `sign_p`: the one-sided sign-test p-value of "both sides lower in more gaps than chance" (ties count
    against)."""
    if not cases:
        nan = float("nan")
        return {"ratio": nan, "ratio_ci": [nan, nan], "ratio_music": nan, "ratio_music_ci": [nan, nan],
                "sign_p": nan}
    fim = np.array([c["nll_fim"] for c in cases])
    left = np.array([c["nll_left"] for c in cases])
    fim_music = fim - np.array([c["nll_fim_bar_tokens"] for c in cases])
    left_music = left - np.array([c["nll_left_bar_tokens"] for c in cases])
    picks = np.random.default_rng(seed).integers(0, len(cases), (resamples, len(cases)))
    out: dict[str, Any] = {}
    for key, a, b in (("ratio", fim, left), ("ratio_music", fim_music, left_music)):
        boot = a[picks].sum(1) / b[picks].sum(1)
        out[key] = float(a.sum() / b.sum())
        out[key + "_ci"] = [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]
    n, wins = len(cases), int((fim < left).sum())
    out["sign_p"] = float(sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n)
    return out


def _notes(score: symusic.Score) -> Counter:
    """A Score's notes as a multiset of (program, drum, onset, duration, pitch, velocity)."""
    return Counter((DRUM_PROGRAM if t.is_drum else int(t.program), n.time, n.duration, n.pitch, n.velocity)
                   for t in score.tracks for n in t.notes)


def accompaniment_quality(model: Any, tokenizer: MusicTokenizer, references: Sequence[Sequence[int]],
                          samples: int = 4, program: int | None = None, max_tokens: int = 1024, seed: int = 0,
                          **sampling: Any) -> dict[str, Any]:
    """`accompany_piece` on the openings of the `references` (held-out pieces, taken in turn; whole bars, a third
    of the model's context or of `max_tokens` at most), for `program` or else the first of
    ACCOMPANIMENT_PROGRAMS the excerpt lacks:

    - `given_kept`: share of the pieces whose given notes all come back exactly (as the tokenizer reads the input:
      onset, duration, pitch, velocity and program), and no other note of their programs;
    - `new_in_target`: share of the new notes (those not given) that are in the target program;
    - `new_notes_per_bar`, `with_new_notes`: how much the new part plays (notes per bar; share of the pieces with
      at least one new note). A failed call counts as a miss, its error kept in `failures`.
    """
    limit = min(_context_room(model) or max_tokens, max_tokens) // 3
    kept = with_new = 0
    new_total = in_target = bars_total = 0
    failures: list[str] = []
    programs: list[int] = []
    n = 0
    for i in range(samples if len(references) else 0):
        excerpt = _fitting_bars(tokenizer, _music_body(tokenizer, references[i % len(references)]), limit)
        score = tokenizer.decode_midi(excerpt)
        given = _notes(tokenizer.decode_midi(tokenizer.encode_score(score)))
        present = {key[0] for key in given}
        target = program if program is not None else next(
            (p for p in ACCOMPANIMENT_PROGRAMS if p not in present), ACCOMPANIMENT_PROGRAMS[0])
        given = Counter({key: c for key, c in given.items() if key[0] != target})  # replaced, as accompany says
        n += 1
        programs.append(target)
        try:
            piece = accompany_piece(model, tokenizer, score, target, seed=seed + i, **sampling)
        except (RuntimeError, ValueError, MusicFileError) as e:
            failures.append(f"sample {i}: {e}")
            continue
        out = _notes(piece.score)
        others = Counter({key: c for key, c in out.items() if key[0] != target})
        new = out - given
        kept += others == given
        new_count = sum(new.values())
        new_total += new_count
        in_target += sum(c for key, c in new.items() if key[0] == target)
        with_new += new_count > 0
        bars_total += _bar_count(tokenizer, piece.ids)
    return {"n": n, "programs": dict(Counter(programs)), "given_kept": kept / n if n else float("nan"),
            "new_notes": new_total, "new_in_target": in_target / new_total if new_total else float("nan"),
            "new_notes_per_bar": new_total / bars_total if bars_total else float("nan"),
            "with_new_notes": with_new / n if n else float("nan"), "failures": failures}


# ----- reports -------------------------------------------------------------------------------------------
REPORT_PREAMBLE = """# Benchmarks

Every number below is written by a script: `scripts/bench.py` rewrites the section "Speed",
`scripts/evaluate.py` the section "Quality", `scripts/repeats.py` "Repeats" and `scripts/size_sweep.py` "Size
sweep" (each leaves the others alone). Do not edit the numbers by hand; re-run the command given in each section
instead.
"""


def machine_description(device: str | torch.device = "cpu") -> dict[str, Any]:
    """CPU model, cores, accelerator, library versions and the load at the time (reports say how noisy they are)."""
    import transformers

    cpu = platform.processor() or platform.machine()
    with_cpuinfo = Path("/proc/cpuinfo")
    if with_cpuinfo.is_file():
        names = re.findall(r"^model name\s*:\s*(.+)$", with_cpuinfo.read_text(), re.MULTILINE)
        cpu = names[0].strip() if names else cpu
    info: dict[str, Any] = {
        "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "device": str(device), "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    if hasattr(os, "getloadavg"):
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    return info


def machine_line(info: Mapping[str, Any]) -> str:
    parts = [f"CPU {info['cpu']} ({info['cores']} cores, torch uses {info['torch_threads']} threads)"]
    if "gpu" in info:
        parts.append(f"GPU {info['gpu']}")
    parts += [f"device `{info['device']}`", f"torch {info['torch']}", f"transformers {info['transformers']}",
              f"Python {info['python']}"]
    if "load_average_1min" in info:
        parts.append(f"1-min load average at start {info['load_average_1min']}")
    return "; ".join(parts) + f"; {info['date']}."


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: numbers with `digits` significant digits (n/a for NaN/None), other values as text."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v, digits) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def update_markdown_section(path: str | os.PathLike, title: str, body: str) -> None:
    """Replace the section `## {title}` of a Markdown file (up to the next `## ` heading) with `body`, adding it
    at the end if absent and the file with the report preamble if missing; other sections stay as they are."""
    path = Path(path)
    text = path.read_text() if path.is_file() else REPORT_PREAMBLE
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}[ \t]*\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


__all__ = ["PITCH_CLASSES", "pitch_class_histogram", "histogram_distance", "notes_per_bar", "grammar_error_rate",
           "pooled_pitch_class_histogram", "mean_finite", "DISSONANT_INTERVALS", "COPY_THRESHOLD", "MUSIC_METRICS",
           "METRIC_MAX_TPQ", "bar_starts", "bar_notes", "repeated_bar_share", "simultaneous_voices", "dissonance_rate",
           "to_muspy", "music_metrics", "BarIndex", "memorization", "generate_per_genre", "train_genre_classifier",
           "classify_genres", "classification_scores", "GUIDANCE_SCALE", "CONTROL_BINS", "ACCOMPANIMENT_PROGRAMS",
           "composition_unsupported", "composition_measure", "control_bin", "control_adherence", "infill_quality",
           "accompaniment_quality", "REPORT_PREAMBLE", "machine_description", "machine_line", "fmt",
           "markdown_table", "update_markdown_section"]
