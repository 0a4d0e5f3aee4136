"""MusicGrammarLogitsProcessor's incremental state: one token per row per step gives the same masks as a full scan
of the history (the processor's code before the incremental state, kept here as `FullScan`), on real pieces, with
batches, beam-search row reordering and restarts, and in generate_music."""

from __future__ import annotations

import time

import pytest
import torch

import music_hf.generation as generation
from music_hf import MusicConfig, MusicForCausalLM, MusicTokenizer
from music_hf.generation import DRUM_PROGRAM, NUM_PITCHES, MusicGrammarLogitsProcessor, generate_music
from music_hf.modeling_music import carry_forward

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PREFIX = 260  # tokens of each piece fed one at a time


class FullScan(MusicGrammarLogitsProcessor):
    """The full-scan mask, verbatim from before the incremental state: every call re-reads the whole history."""

    def _closable(self, input_ids, program):
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

    def allowed_mask(self, input_ids):
        if self.allowed.device != input_ids.device:
            self._to(input_ids.device)
        last = input_ids[:, -1]
        mask = self.allowed[self.last_kind[last]].clone()
        program = carry_forward(self.program[input_ids])[:, -1]
        mask &= ~(program == DRUM_PROGRAM)[:, None] | ~self.is_pitched[None]
        mask &= ~((program >= 0) & (program != DRUM_PROGRAM))[:, None] | ~self.is_drum[None]
        low = carry_forward(self.grammar_position[input_ids])[:, -1].clamp(min=0)
        bar_len = carry_forward(self.bar_positions[input_ids], default=self.default_bar_positions)[:, -1]
        ok_pos = (self.first_position[None] >= low[:, None]) & (self.last_position[None] < bar_len[:, None])
        mask &= ok_pos | ~self.is_position[None]
        if self.closes_notes:
            mask &= self._closable(input_ids, program)
        finished = last == self.eos_id
        empty = ~mask.any(-1) | finished
        if empty.any() and self.eos_id is not None:
            mask[empty] = False
            mask[empty, self.eos_id] = True
        return mask


CASES = [("REMI", False), ("MIDILike", False), ("REMI", True)]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c[0] + ("-bpe" if c[1] else ""))
def tok(request, real_midi_paths) -> MusicTokenizer:
    scheme, bpe = request.param
    tok = MusicTokenizer() if scheme == "REMI" else MusicTokenizer(tokenization=scheme)
    if bpe:
        tok.train_bpe(vocab_size=len(tok) + 100, files=real_midi_paths)
    return tok


@pytest.fixture(scope="module")
def pieces(tok, real_midi_paths) -> list[list[int]]:
    return [tok(p)["input_ids"][:PREFIX] for p in real_midi_paths]


def _check_steps(processor, rows: torch.Tensor, start: int, reference: FullScan) -> None:
    """Feeds rows[:, :start+1], rows[:, :start+2], ... to `processor`, each mask equal to the full scan's."""
    for n in range(start + 1, rows.shape[1] + 1):
        got, want = processor.allowed_mask(rows[:, :n]), reference.allowed_mask(rows[:, :n])
        assert torch.equal(got, want), n


def test_one_row_growing_prefixes_match_full_scan(tok, pieces):
    reference = FullScan(tok)
    for ids in pieces:  # one processor across pieces: each new piece is a restart from a new prompt
        processor = MusicGrammarLogitsProcessor(tok)
        _check_steps(processor, torch.tensor([ids]), 0, reference)
    assert reference.closes_notes == (tok.tokenization == "MIDILike")  # the open-note state is exercised
    processor = MusicGrammarLogitsProcessor(tok)
    for ids in pieces[:3]:
        _check_steps(processor, torch.tensor([ids]), 5, reference)  # restart: a new prompt of 6 tokens, then steps


def _check_calls(processor, rows: torch.Tensor, start: int, reference: FullScan) -> None:
    """As `_check_steps`, through the processor's call (one row: the Python state and the mask cache)."""
    scores = torch.zeros(rows.shape[0], len(reference.first_kind) + 3)  # a model's vocabulary can be wider
    for n in range(start + 1, rows.shape[1] + 1):
        got = torch.isfinite(processor(rows[:, :n], scores.clone()))
        want = reference.allowed_mask(rows[:, :n])
        assert torch.equal(got[:, :want.shape[1]], want) and not got[:, want.shape[1]:].any(), n


def test_one_row_calls_match_full_scan(tok, pieces):
    """The call's one-row path (a state in Python ints, masks cached per table row, position bound and bar length)
    gives the full scan's masks: across pieces, restarts from new prompts, and a batch of two in between."""
    reference, processor = FullScan(tok), MusicGrammarLogitsProcessor(tok)
    for ids in pieces:
        _check_calls(processor, torch.tensor([ids]), 0, reference)
        _check_calls(processor, torch.tensor([ids]), 7, reference)  # restart: a new prompt of 8 tokens
    n = min(len(pieces[0]), len(pieces[1]))
    _check_calls(processor, torch.tensor([pieces[0][:n], pieces[1][:n]]), n // 2, reference)  # two rows
    _check_calls(processor, torch.tensor([pieces[1]]), 3, reference)  # one row again
    if not processor.closes_notes:  # (MIDILike's note counts take the batched path)
        assert 0 < len(processor._row_masks) < sum(map(len, pieces))  # masks came from the cache


def test_batch_reordering_and_restarts_match_full_scan(tok, pieces):
    reference, processor = FullScan(tok), MusicGrammarLogitsProcessor(tok)
    n = min(len(pieces[0]), len(pieces[1]), len(pieces[2]))
    rows = torch.tensor([pieces[0][:n], pieces[1][:n]])
    half = n // 2
    _check_steps(processor, rows[:, :half], 4, reference)
    swapped = rows.flip(0)  # beam search reordering: same length + 1, rows swapped
    assert torch.equal(processor.allowed_mask(swapped[:, :half + 1]), reference.allowed_mask(swapped[:, :half + 1]))
    _check_steps(processor, swapped, half + 1, reference)
    # a row duplicated over another one (beam search keeping two continuations of one beam), then steps
    dup = torch.stack([rows[0, :half + 1], torch.cat([rows[0, :half], rows[1, half:half + 1]])])
    processor.allowed_mask(rows[:, :half])
    assert torch.equal(processor.allowed_mask(dup), reference.allowed_mask(dup))
    # only the last token before the new one differs (a change the length check alone would miss)
    other = rows[:, :half + 1].clone()
    other[0, half - 1] = rows[1, half - 1]
    processor.allowed_mask(rows[:, :half])
    assert torch.equal(processor.allowed_mask(other), reference.allowed_mask(other))
    # another batch size, then a restart from a new prompt
    third = torch.tensor([pieces[2][:n]])
    _check_steps(processor, third, 10, reference)
    _check_steps(processor, rows, 2, reference)


@pytest.mark.parametrize("kwargs", [dict(seed=0), dict(seed=1, num_return_sequences=2),
                                    dict(do_sample=False, num_beams=3, num_return_sequences=2)],
                         ids=["sample", "sample-2", "beam-3"])
def test_generate_music_same_ids_as_full_scan(tok, kwargs, monkeypatch):
    torch.manual_seed(0)
    config = MusicConfig.from_tokenizer(tok, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=64)
    model = MusicForCausalLM(config).eval()
    calls = {"scan": 0, "call": 0}

    class Counting(MusicGrammarLogitsProcessor):
        def _scan(self, input_ids):
            calls["scan"] += 1
            return super()._scan(input_ids)

        def __call__(self, input_ids, scores):
            calls["call"] += 1
            return super().__call__(input_ids, scores)

    monkeypatch.setattr(generation, "MusicGrammarLogitsProcessor", Counting)
    new = [p.ids for p in generate_music(model, tok, max_new_tokens=48, **kwargs)]
    monkeypatch.setattr(generation, "MusicGrammarLogitsProcessor", FullScan)
    old = [p.ids for p in generate_music(model, tok, max_new_tokens=48, **kwargs)]
    assert new == old
    calls["step"] = calls["call"] - calls["scan"]
    assert calls["step"] > 0 and calls["scan"] >= 1  # the incremental path ran
    if "num_beams" not in kwargs:
        assert calls["scan"] == 1, calls  # sampling: one full scan of the prompt, then one token per step
    print(f"\n[{kwargs}] full scans {calls['scan']}, incremental steps {calls['step']}")


def test_step_timing(tok, pieces):
    """Prints one allowed_mask call's time at histories of 64 and 1024 tokens, incremental vs full scan."""
    long = [i for ids in pieces for i in ids]
    long = (long * (1100 // len(long) + 1))[:1100]
    row = torch.tensor([long])
    steps = 200
    for length in (64, 1024):
        times = {}
        for name, cls in (("incremental", MusicGrammarLogitsProcessor), ("full scan", FullScan)):
            processor = cls(tok)
            processor.allowed_mask(row[:, :length - 1])
            took = []
            for _ in range(steps):  # the same step again and again: prime with length - 1, time the next call
                processor.allowed_mask(row[:, :length - 1])
                t0 = time.perf_counter()
                processor.allowed_mask(row[:, :length])
                took.append(time.perf_counter() - t0)
            times[name] = sorted(took)[len(took) // 2] * 1e3
        print(f"\n[{tok.tokenization}{'-bpe' if tok.miditok.is_trained else ''}] history {length}: "
              + ", ".join(f"{k} {v:.3f} ms/call (median)" for k, v in times.items()))
