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
from .tokenization_music import TOKEN_KINDS, MusicTokenizer

KIND = {k: i for i, k in enumerate(TOKEN_KINDS)}
# kinds after which a note is still unfinished (a sequence ending there loses that note when decoded)
OPEN_NOTE_KINDS = (KIND["Program"], KIND["Pitch"], KIND["PitchDrum"], KIND["Velocity"])


class MusicGrammarLogitsProcessor(LogitsProcessor):
    """Masks every token that would make the sequence invalid for the tokenizer, so generations decode whole.

    Rules (vectorized over the batch, from the tokenizer's grammar tables): token kinds follow miditok's
    grammar (Pitch -> Velocity -> Duration, Bar -> TimeSig ...); a Program is followed by a Pitch, or by a
    drum pitch for drums; positions move forward inside a bar and stay within the bar's length for the
    time signature in force; BOS is followed by a Bar; EOS only ends a complete note; PAD, BOS and MASK are
    never generated. `programs` optionally restricts which instruments may be chosen.
    """

    def __init__(self, tokenizer: MusicTokenizer, programs: Sequence[int] | None = None, allow_eos: bool = True):
        t = tokenizer.grammar_tables()
        vocab = tokenizer.vocab_size
        self.bos_id, self.eos_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        self.first_kind = torch.tensor(t["first_kind"])
        self.last_kind = torch.tensor(t["last_kind"])
        self.first_position = torch.tensor(t["first_position"])
        self.grammar_position = torch.tensor(t["grammar_position"])
        self.bar_positions = torch.tensor(t["bar_positions"])
        self.program = torch.tensor(t["program"])
        self.default_bar_positions = t["default_bar_positions"]
        kinds = len(TOKEN_KINDS)
        allowed = torch.zeros(kinds, vocab, dtype=torch.bool)
        for prev in range(kinds):
            nexts = t["next_kinds"].get(prev)
            allowed[prev] = torch.isin(self.first_kind, torch.tensor(nexts)) if nexts is not None else True
        special = self.first_kind == KIND["special"]
        allowed[:, special] = False
        allowed[KIND["special"]] = self.first_kind == KIND["Bar"]  # after BOS (or a prompt-less start): a Bar
        if programs is not None:
            wanted = torch.tensor([int(p) for p in programs])
            bad_program = (self.program >= 0) & ~torch.isin(self.program, wanted)
            allowed[:, bad_program] = False
        if allow_eos and self.eos_id is not None:
            allowed[KIND["Duration"], self.eos_id] = True
        self.allowed = allowed
        self.is_pitch = self.first_kind == KIND["Pitch"]
        self.is_drum_pitch = self.first_kind == KIND["PitchDrum"]
        self.is_position = self.first_position >= 0

    def _to(self, device: torch.device) -> None:
        for name in ("first_kind", "last_kind", "first_position", "grammar_position", "bar_positions", "program",
                     "allowed", "is_pitch", "is_drum_pitch", "is_position"):
            setattr(self, name, getattr(self, name).to(device))

    def allowed_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, V) bool: which ids may come next after each row of `input_ids`."""
        if self.allowed.device != input_ids.device:
            self._to(input_ids.device)
        last = input_ids[:, -1]
        mask = self.allowed[self.last_kind[last]].clone()
        # Program -> Pitch for instruments, PitchDrum for drums
        prog = self.program[last]
        is_prog = prog >= 0
        mask &= ~(is_prog & (prog == 128))[:, None] | ~self.is_pitch[None]
        mask &= ~(is_prog & (prog != 128))[:, None] | ~self.is_drum_pitch[None]
        # positions: forward inside the bar, and inside the bar's length
        low = carry_forward(self.grammar_position[input_ids])[:, -1].clamp(min=0)
        bar_len = carry_forward(self.bar_positions[input_ids], default=self.default_bar_positions)[:, -1]
        pos = self.first_position[None]
        ok_pos = (pos >= low[:, None]) & (pos < bar_len[:, None])
        mask &= ok_pos | ~self.is_position[None]
        # after EOS only EOS (the row is finished); and never leave a row with nothing allowed
        finished = last == self.eos_id
        empty = ~mask.any(-1) | finished
        if empty.any() and self.eos_id is not None:
            mask[empty] = False
            mask[empty, self.eos_id] = True
        return mask

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores.masked_fill(~self.allowed_mask(input_ids), float("-inf"))


def nearest_token(tokenizer: MusicTokenizer, kind: str, value: float) -> int:
    """Id of the `kind` token (Tempo, ...) whose numeric value is closest to `value`."""
    best = min((abs(float(tok.split("_")[1]) - value), i) for tok, i in tokenizer.get_vocab().items()
               if tok.startswith(kind + "_") and "|" not in tok)
    return best[1]


def prompt_ids(tokenizer: MusicTokenizer, prompt: Any = None, bars: int | None = None,
               time_signature: str | None = None, tempo: float | None = None) -> list[int]:
    """Token ids that start a generation: BOS, then the first `bars` bars of `prompt` (a path, bytes, Score or id
    list), or for no prompt an opening bar with the chosen time signature and tempo."""
    bos = [tokenizer.bos_token_id]
    if prompt is None:
        ids: list[int] = []
        if time_signature is not None or tempo is not None:
            ids.append(tokenizer.convert_tokens_to_ids("Bar_None"))
            if time_signature is not None:
                name = f"TimeSig_{time_signature}"
                if name not in tokenizer.get_vocab():
                    raise ValueError(f"time signature {time_signature} is not in this tokenizer's vocabulary")
                ids.append(tokenizer.convert_tokens_to_ids(name))
            if tempo is not None:
                ids += [tokenizer.convert_tokens_to_ids("Position_0"), nearest_token(tokenizer, "Tempo", tempo)]
        return bos + ids
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
    bar_count = tokenizer.music_attributes()["bar_count"]
    seen = 0
    for i, tid in enumerate(ids):
        seen += bar_count[tid]
        if seen > bars:
            return list(ids[:i])
    return list(ids)


def finish_sequence(tokenizer: MusicTokenizer, ids: Sequence[int]) -> list[int]:
    """Cut at the first EOS and drop a trailing unfinished note, so every remaining token decodes."""
    ids = [int(i) for i in ids]
    if tokenizer.eos_token_id in ids:
        ids = ids[: ids.index(tokenizer.eos_token_id)]
    last_kind = tokenizer.grammar_tables()["last_kind"]
    while ids and last_kind[ids[-1]] in OPEN_NOTE_KINDS:
        ids.pop()
    return ids


def cpu_threads_for(hidden_size: int, batch: int, available: int) -> int:
    """Threads worth using for one decoding step on CPU: a step of a small model is a handful of tiny ops, and
    OpenMP threads then cost more than they give (30x slower on a busy 2-core machine than one thread)."""
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
                   tempo: float | None = None, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None, do_sample: bool = True, num_return_sequences: int = 1,
                   seed: int | None = None, **generate_kwargs: Any) -> list[GeneratedPiece]:
    """Continue `prompt` (or start from nothing) and return each variation with its ids and Score."""
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
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p) if do_sample else {}
    was_training = model.training
    model.eval()
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads_for(model.config.hidden_size, num_return_sequences, threads))
    try:
        out = model.generate(
            input_ids, attention_mask=torch.ones_like(input_ids), genre_ids=genre_ids,
            max_new_tokens=max_new_tokens, do_sample=do_sample, num_return_sequences=num_return_sequences,
            logits_processor=processors, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            **sampling, **generate_kwargs,
        )
    finally:
        model.train(was_training)
        torch.set_num_threads(threads)
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
           "cut_bars", "finish_sequence", "nearest_token"]
