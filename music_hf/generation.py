"""From a model and a tokenizer to music: grammar-constrained decoding, prompts, and `generate_midi()`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import symusic
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from .modeling_music import carry_forward
from .tokenization_music import DRUM_KINDS, DRUM_PROGRAM, KIND_INDEX, PITCHED_KINDS, TOKEN_KINDS, MusicTokenizer

NOTE_END_KINDS = [KIND_INDEX[k] for k in ("Duration", "NoteOff", "DrumOff")]  # a note is complete after these
NUM_PITCHES = 128


class MusicGrammarLogitsProcessor(LogitsProcessor):
    """Masks every token that would make the sequence invalid for the tokenizer, so generations decode whole.

    Rules (vectorized over the batch, from the tokenizer's grammar tables): token kinds follow miditok's
    grammar (Pitch -> Velocity -> Duration, Bar -> TimeSig ...); instruments play pitches, drums (program 128)
    drum pitches; positions move forward inside a bar and stay within the bar's length for the time signature
    in force; a NoteOff/DrumOff closes a note that is sounding (MIDILike); BOS is followed by what a piece
    starts with (a Bar, or without bars what follows a TimeShift); EOS only ends a complete note; PAD, BOS and
    MASK are never generated. `programs` optionally restricts which instruments may be chosen.
    """

    def __init__(self, tokenizer: MusicTokenizer, programs: Sequence[int] | None = None, allow_eos: bool = True):
        t = tokenizer.grammar_tables()
        self.bos_id, self.eos_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        for name in ("first_kind", "last_kind", "first_position", "last_position", "grammar_position",
                     "bar_positions", "program", "event_sign", "event_pitch", "event_program", "event_credit"):
            setattr(self, name, torch.as_tensor(t[name]))
        self.default_bar_positions = t["default_bar_positions"]
        kinds, vocab = len(TOKEN_KINDS), len(self.first_kind)
        allowed = torch.zeros(kinds, vocab, dtype=torch.bool)
        for prev in range(kinds):
            nexts = t["next_kinds"].get(prev)
            allowed[prev] = torch.isin(self.first_kind, torch.tensor(nexts)) if nexts is not None else True
        special = self.first_kind == KIND_INDEX["special"]
        allowed[:, special] = False
        allowed[KIND_INDEX["special"]] = torch.isin(self.first_kind, torch.tensor(t["start_kinds"]))  # after BOS
        if programs is not None:
            wanted = torch.tensor([int(p) for p in programs])
            bad_program = (self.program >= 0) & ~torch.isin(self.program, wanted)
            allowed[:, bad_program] = False
        if allow_eos and self.eos_id is not None:
            allowed[NOTE_END_KINDS, self.eos_id] = True
        self.allowed = allowed
        self.is_pitched = torch.isin(self.first_kind, torch.tensor([KIND_INDEX[k] for k in PITCHED_KINDS]))
        self.is_drum = torch.isin(self.first_kind, torch.tensor([KIND_INDEX[k] for k in DRUM_KINDS]))
        self.is_position = self.first_position >= 0
        self.closes_notes = bool((self.event_sign < 0).any())

    def _to(self, device: torch.device) -> None:
        for name in ("first_kind", "last_kind", "first_position", "last_position", "grammar_position",
                     "bar_positions", "program", "event_sign", "event_pitch", "event_program", "event_credit",
                     "allowed", "is_pitched", "is_drum", "is_position"):
            setattr(self, name, getattr(self, name).to(device))

    def _closable(self, input_ids: torch.Tensor, program: torch.Tensor) -> torch.Tensor:
        """(B, V) bool: ids whose NoteOff/DrumOff events each close a note sounding in that program.

        Counts NoteOn minus NoteOff per (program, pitch) over each row, as miditok's MIDILike check does;
        `program` (B,) is the program in force after the row (miditok starts at program 0)."""
        carried = carry_forward(self.program[input_ids])
        before = torch.cat([carried.new_full((len(carried), 1), -1), carried[:, :-1]], dim=1).clamp(min=0)
        ev_program = self.event_program[input_ids]
        ev_program = torch.where(ev_program >= 0, ev_program, before[..., None])
        keys = ev_program * NUM_PITCHES + self.event_pitch[input_ids].clamp(min=0)
        counts = torch.zeros(len(input_ids), (DRUM_PROGRAM + 1) * NUM_PITCHES, dtype=torch.long,
                             device=input_ids.device)
        counts.scatter_add_(1, keys.flatten(1), self.event_sign[input_ids].flatten(1))
        now = program.clamp(min=0)[:, None, None]
        cand_program = torch.where(self.event_program[None] >= 0, self.event_program[None], now)
        cand_keys = cand_program * NUM_PITCHES + self.event_pitch[None].clamp(min=0)
        sounding = counts.gather(1, cand_keys.flatten(1)).view(cand_keys.shape) + self.event_credit[None]
        return ((self.event_sign[None] >= 0) | (sounding > 0)).all(-1)

    def allowed_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, V) bool: which ids may come next after each row of `input_ids`."""
        if self.allowed.device != input_ids.device:
            self._to(input_ids.device)
        last = input_ids[:, -1]
        mask = self.allowed[self.last_kind[last]].clone()
        # instruments play pitches, drums drum pitches (no restriction before the first Program)
        program = carry_forward(self.program[input_ids])[:, -1]
        mask &= ~(program == DRUM_PROGRAM)[:, None] | ~self.is_pitched[None]
        mask &= ~((program >= 0) & (program != DRUM_PROGRAM))[:, None] | ~self.is_drum[None]
        # positions: forward inside the bar, and inside the bar's length
        low = carry_forward(self.grammar_position[input_ids])[:, -1].clamp(min=0)
        bar_len = carry_forward(self.bar_positions[input_ids], default=self.default_bar_positions)[:, -1]
        ok_pos = (self.first_position[None] >= low[:, None]) & (self.last_position[None] < bar_len[:, None])
        mask &= ok_pos | ~self.is_position[None]
        if self.closes_notes:
            mask &= self._closable(input_ids, program)
        # after EOS only EOS (the row is finished); and never leave a row with nothing allowed
        finished = last == self.eos_id
        empty = ~mask.any(-1) | finished
        if empty.any() and self.eos_id is not None:
            mask[empty] = False
            mask[empty, self.eos_id] = True
        return mask

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        mask = self.allowed_mask(input_ids)
        width = scores.shape[-1]
        if mask.shape[-1] < width:  # ids past the tokenizer's (a model padded to a multiple): never generated
            mask = torch.cat([mask, mask.new_zeros(len(mask), width - mask.shape[-1])], dim=-1)
        return scores.masked_fill(~mask[:, :width], float("-inf"))


def prompt_ids(tokenizer: MusicTokenizer, prompt: Any = None, bars: int | None = None,
               time_signature: str | None = None, tempo: float | None = None) -> list[int]:
    """Token ids that start a generation: BOS, then the first `bars` bars of `prompt` (a path, bytes, Score or id
    list), or for no prompt an opening with the chosen time signature and tempo (`tokenizer.opening_ids`)."""
    bos = [tokenizer.bos_token_id]
    if prompt is None:
        return bos + tokenizer.opening_ids(time_signature, tempo)
    if isinstance(prompt, (list, tuple)) or isinstance(prompt, torch.Tensor):
        ids = [int(i) for i in (prompt.tolist() if isinstance(prompt, torch.Tensor) else prompt)]
        ids = [i for i in ids if i not in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)]
    else:
        ids = tokenizer.encode_score(prompt)
    if bars is not None:
        ids = cut_bars(tokenizer, ids, bars)
    return bos + ids


def cut_bars(tokenizer: MusicTokenizer, ids: Sequence[int], bars: int) -> list[int]:
    """The ids of the first `bars` bars (everything before the (bars+1)-th Bar token)."""
    bar_count = tokenizer.token_table.bar_count
    seen = 0
    for i, tid in enumerate(ids):
        seen += bar_count[tid]
        if seen > bars:
            return list(ids[:i])
    return list(ids)


def finish_sequence(tokenizer: MusicTokenizer, ids: Sequence[int]) -> list[int]:
    """Cut at the first EOS, drop a trailing unfinished note and end notes still sounding (MIDILike), so every
    remaining token decodes."""
    ids = [int(i) for i in ids]
    if tokenizer.eos_token_id in ids:
        ids = ids[: ids.index(tokenizer.eos_token_id)]
    last_kind, open_kinds = tokenizer.token_table.last_kind, tokenizer.grammar_tables()["open_kinds"]
    while ids and last_kind[ids[-1]] in open_kinds:
        ids.pop()
    return ids + tokenizer.closing_ids(ids)


def cpu_threads_for(hidden_size: int, batch: int, available: int) -> int:
    """Threads worth using for one decoding step on CPU: a step of a small model is a handful of tiny ops, and
    OpenMP threads then cost more than they give (30x slower on a busy 2-core machine than one thread). The entry
    point that owns the process (the CLI, the Space) sets it once; library code leaves the thread count alone."""
    return max(1, min(available, hidden_size * batch // 512))


@dataclass
class GeneratedPiece:
    """One generated sequence: its ids (prompt included), where the prompt ends, and the decoded Score."""

    ids: list[int]
    prompt_length: int
    score: symusic.Score


def generate_music(model: Any, tokenizer: MusicTokenizer, prompt: Any = None, genre: str | int | None = None,
                   max_new_tokens: int = 256, constrained: bool = True, prompt_bars: int | None = None,
                   programs: Sequence[int] | None = None, time_signature: str | None = None,
                   tempo: float | None = None, temperature: float | None = None, top_k: int | None = None,
                   top_p: float | None = None, do_sample: bool = True, num_return_sequences: int = 1,
                   seed: int | None = None, **generate_kwargs: Any) -> list[GeneratedPiece]:
    """Continue `prompt` (or start from nothing) and return each variation with its ids and Score.

    Sampling settings left as None come from `model.generation_config` (the run's, saved with the model).
    """
    ids = prompt_ids(tokenizer, prompt, prompt_bars, time_signature, tempo)
    max_ctx = model.config.max_position_embeddings
    if model.config.position_embedding_type == "learned" and len(ids) + max_new_tokens > max_ctx:
        ids = ids[: 1] + ids[1:][-(max_ctx - max_new_tokens - 1):] if max_new_tokens < max_ctx - 1 else ids[:1]
        max_new_tokens = min(max_new_tokens, max_ctx - len(ids))
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    genre_ids = torch.tensor([model.config.genre_id(genre)], device=device)
    processors = LogitsProcessorList(generate_kwargs.pop("logits_processor", []))
    if constrained:
        processors.append(MusicGrammarLogitsProcessor(tokenizer, programs=programs))
    if seed is not None:
        torch.manual_seed(seed)
    sampling = {k: getattr(model.generation_config, k, None) if v is None else v
                for k, v in dict(temperature=temperature, top_k=top_k, top_p=top_p).items()} if do_sample else {}
    was_training = model.training
    model.eval()
    try:
        out = model.generate(
            input_ids, attention_mask=torch.ones_like(input_ids), genre_ids=genre_ids,
            max_new_tokens=max_new_tokens, do_sample=do_sample, num_return_sequences=num_return_sequences,
            logits_processor=processors, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            **sampling, **generate_kwargs,
        )
    finally:
        model.train(was_training)
    sequences = out.sequences if hasattr(out, "sequences") else out
    pieces = []
    for row in sequences.tolist():
        body = finish_sequence(tokenizer, row[1:])
        pieces.append(GeneratedPiece(ids=[row[0]] + body, prompt_length=len(ids), score=tokenizer.decode_midi(body)))
    return pieces


def generate_midi(model: Any, tokenizer: MusicTokenizer, prompt: Any = None, genre: str | int | None = None,
                  max_new_tokens: int = 256, output_path: str | os.PathLike | None = None,
                  **kwargs: Any) -> symusic.Score | list[symusic.Score]:
    """Generate music and return it as a `symusic.Score` (a list of them when `num_return_sequences` > 1).

    `prompt`: None, a MIDI/ABC path, bytes, a Score or token ids; `genre`: a name from `model.config.id2genre`;
    other keywords as in `generate_music` (constrained, prompt_bars, programs, temperature, top_k, top_p, seed...).
    """
    pieces = generate_music(model, tokenizer, prompt=prompt, genre=genre, max_new_tokens=max_new_tokens, **kwargs)
    if output_path is not None:
        if len(pieces) == 1:
            pieces[0].score.dump_midi(str(output_path))
        else:
            stem, ext = os.path.splitext(str(output_path))
            for i, piece in enumerate(pieces):
                piece.score.dump_midi(f"{stem}_{i}{ext or '.mid'}")
    scores = [p.score for p in pieces]
    return scores[0] if len(scores) == 1 else scores


__all__ = ["MusicGrammarLogitsProcessor", "cpu_threads_for", "GeneratedPiece", "generate_music", "generate_midi", "prompt_ids",
           "cut_bars", "finish_sequence"]
