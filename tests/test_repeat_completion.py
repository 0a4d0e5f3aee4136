"""Repeat completion (`MusicRepeatLogitsProcessor`, `generate_music(repeat_bias=...)`): once the bar being written
has reproduced an earlier bar's opening for REPEAT_MIN_NOTES notes, the tokens that carry on such a bar get
`bias` more logit.

- on a real reel whose bars repeat: before the second note of a repeated bar nothing is favoured, after it exactly
  the earlier bars' next tokens (velocities left out both ways; after a Pitch, where a Velocity comes, nothing);
- the state advanced one token a step equals the state read whole, row by row in a batch, and a new prompt starts
  over;
- with a large bias a tiny untrained model, given the opening of a repeat, finishes it exactly and closes the bar,
  through `model.generate` and through `generate_music`'s lean loop (same tokens);
- `repeat_bias=0` adds nothing (the tokens of the processor-less call); bad values are ValueErrors; a tokenization
  without bar lines or with BPE leaves the scores alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LogitsProcessorList

from music_hf import MusicConfig, MusicForCausalLM, MusicTokenizer, generation
from music_hf.generation import (REPEAT_MIN_NOTES, MusicGrammarLogitsProcessor, MusicRepeatLogitsProcessor,
                                 generate_music)
from music_hf.tokenization_music import KIND_INDEX

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REEL = 5  # real_midi_paths[5]: the 7th Regiment Reel, whose bars repeat
SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             embedding_dropout=0.0, hidden_dropout=0.0, attention_dropout=0.0)


@pytest.fixture(scope="module")
def tok() -> MusicTokenizer:
    return MusicTokenizer()


@pytest.fixture(scope="module")
def reel(tok, real_midi_paths) -> list[int]:
    return [tok.bos_token_id, *tok.encode_score(real_midi_paths[REEL])]


@pytest.fixture(scope="module")
def model(tok) -> MusicForCausalLM:
    torch.manual_seed(0)
    return MusicForCausalLM(MusicConfig.from_tokenizer(tok, **SIZES)).eval()


def kinds(tok, ids):
    return [int(tok.token_table.kind[i]) for i in ids]


def bars_of(tok, ids) -> list[tuple[int, int]]:
    """(start, end) of each bar's content: from after a Bar token to the next Bar (or the end)."""
    starts = [i for i, k in enumerate(kinds(tok, ids)) if k == KIND_INDEX["Bar"]]
    return [(s + 1, e) for s, e in zip(starts, starts[1:] + [len(ids)])]


def content(tok, ids) -> tuple[int, ...]:
    return tuple(t for t, k in zip(ids, kinds(tok, ids)) if k != KIND_INDEX["Velocity"])


def first_repeat(tok, ids) -> tuple[int, int]:
    """(start, end) of the first bar whose content (velocities aside) equals an earlier bar's."""
    seen = set()
    for start, end in bars_of(tok, ids)[:-1]:
        body = content(tok, ids[start:end])
        if body in seen:
            return start, end
        seen.add(body)
    raise AssertionError("the reel repeats no bar")


def favoured(proc, ids, vocab) -> set[int]:
    scores = torch.zeros(1, vocab)
    out = proc(torch.tensor([ids]), scores)
    assert torch.equal(scores, torch.zeros(1, vocab))  # the caller's logits are not changed in place
    return set(torch.nonzero(out[0]).flatten().tolist())


def expected_next(tok, ids, upto) -> set[int]:
    """Next non-velocity token of each earlier bar whose content opens as ids[bar start:upto] does (Bar where one
    ends there)."""
    start = max(s for s, _ in bars_of(tok, ids[:upto]))
    prefix = content(tok, ids[start:upto])
    out = set()
    for s, e in bars_of(tok, ids[:start - 1]):
        body = content(tok, ids[s:e])
        if body[:len(prefix)] == prefix:
            out.add(body[len(prefix)] if len(body) > len(prefix) else tok.convert_tokens_to_ids("Bar_None"))
    return out


def test_a_repeated_bar_is_favoured_only_after_its_opening_notes(tok, reel):
    start, end = first_repeat(tok, reel)
    notes_seen = 0
    checked_after = 0
    for upto in range(start, end):
        proc = MusicRepeatLogitsProcessor(tok, bias=1.0)
        got = favoured(proc, reel[:upto], len(tok))
        last_kind = tok.token_table.kind[reel[upto - 1]]
        if notes_seen < REPEAT_MIN_NOTES or last_kind == KIND_INDEX["Pitch"]:
            assert got == set(), (upto, notes_seen)
        else:
            assert got == expected_next(tok, reel, upto)
            assert reel[upto] in got  # the reel's own next token carries the repeat on
            checked_after += 1
        notes_seen += tok.token_table.kind[reel[upto]] == KIND_INDEX["Pitch"]
    assert checked_after >= 3


def test_the_state_advanced_a_token_at_a_time_is_the_state_read_whole(tok, reel, real_midi_paths):
    other = [tok.bos_token_id, *tok.encode_score(real_midi_paths[0])]
    n = min(len(reel), len(other), 300)
    rows = torch.tensor([reel[:n], other[:n]])
    step = MusicRepeatLogitsProcessor(tok, bias=2.0)
    hits = 0
    for t in range(2, n):
        scores = torch.randn(2, len(tok))
        stepped = step(rows[:, :t], scores)
        for r in range(2):
            whole = MusicRepeatLogitsProcessor(tok, bias=2.0)(rows[r:r + 1, :t], scores[r:r + 1])
            assert torch.equal(stepped[r:r + 1], whole)
        hits += int((stepped != scores).any())
    assert hits > 10  # the reel's repeats were favoured along the way
    # a new prompt (here: a shorter history) starts over instead of carrying the old state
    scores = torch.randn(1, len(tok))
    assert torch.equal(step(rows[:1, :40], scores), MusicRepeatLogitsProcessor(tok, bias=2.0)(rows[:1, :40], scores))


def test_a_started_repeat_is_finished_and_its_bar_closed(tok, reel, model):
    start, end = first_repeat(tok, reel)
    # the prompt: the reel up to the repeated bar's second note's Duration (its opening is then a repeat's)
    pitches = [i for i in range(start, end) if tok.token_table.kind[reel[i]] == KIND_INDEX["Pitch"]]
    cut = pitches[REPEAT_MIN_NOTES - 1] + 3
    prompt = torch.tensor([reel[:cut]])
    want = content(tok, reel[start:end])
    processors = [MusicRepeatLogitsProcessor(tok, bias=1e4), MusicGrammarLogitsProcessor(tok)]
    torch.manual_seed(0)
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, max_new_tokens=end - cut + 4,
                         logits_processor=LogitsProcessorList(processors), pad_token_id=tok.pad_token_id)[0].tolist()
    close = out.index(tok.convert_tokens_to_ids("Bar_None"), cut)
    assert content(tok, out[start:close]) == want
    # generate_music's lean loop (backend torch), the same prompt and seed: the same tokens as model.generate
    pieces = generate_music(model, tok, prompt=reel[1:cut], max_new_tokens=end - cut + 4, seed=0, repeat_bias=1e4,
                            prompt_mapping=False, programs="any")
    ids = pieces[0].ids
    close = ids.index(tok.convert_tokens_to_ids("Bar_None"), pieces[0].prompt_length)
    body_start = len(ids[:pieces[0].prompt_length]) - (cut - start)
    assert content(tok, ids[body_start:close]) == want


def test_no_bias_adds_nothing_and_bad_values_are_refused(tok, model, monkeypatch):
    default = generate_music(model, tok, max_new_tokens=60, seed=3)[0].ids
    monkeypatch.setattr(generation, "MusicRepeatLogitsProcessor", None)  # repeat_bias=0 must not build one
    assert len(generate_music(model, tok, max_new_tokens=60, seed=3, repeat_bias=0)[0].ids) > 1
    monkeypatch.undo()
    # an untrained model starts no repeat in 60 tokens: the default's tokens are those without it
    assert generate_music(model, tok, max_new_tokens=60, seed=3, repeat_bias=0)[0].ids == default
    for bad in (-1, float("nan"), "6", True):
        with pytest.raises(ValueError, match="repeat_bias"):
            generate_music(model, tok, max_new_tokens=4, repeat_bias=bad)


@pytest.mark.parametrize("settings", [dict(tokenization="MIDILike"), dict(bpe=True)])
def test_without_bar_lines_or_with_bpe_it_changes_nothing(settings, real_midi_paths):
    if settings.get("bpe"):
        tok = MusicTokenizer()
        tok.train_bpe(len(tok) + 40, real_midi_paths)
    else:
        tok = MusicTokenizer(**settings)
    proc = MusicRepeatLogitsProcessor(tok)
    assert not proc.active
    ids = torch.tensor([[tok.bos_token_id, *tok.encode_score(real_midi_paths[REEL])[:200]]])
    scores = torch.randn(1, len(tok))
    assert torch.equal(proc(ids, scores), scores)


def test_the_command_line_passes_repeat_bias(tok, model, tmp_path, monkeypatch, capsys, real_midi_paths):
    from music_hf.cli import main as cli_main

    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    seen = []
    real = generation.generate_music
    monkeypatch.setattr(generation, "generate_music", lambda *a, **k: seen.append(k) or real(*a, **k))
    common = ["generate", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "out"), "--max_new_tokens", "8"]
    assert cli_main([*common, "--repeat_bias", "3"]) == 0 and cli_main(common) == 0
    assert seen[0]["repeat_bias"] == 3.0 and "repeat_bias" not in seen[1]  # (the default: generate_music's)
    with pytest.raises(SystemExit):
        cli_main([*common, "--repeat_bias", "-2"])
    assert "repeat_bias must be a number >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # not silently ignored where it does not apply
        cli_main([*common, "--repeat_bias", "2", "--prompt", str(real_midi_paths[REEL]), "--infill_bars", "1", "2"])
    assert "do not use repeat completion" in capsys.readouterr().err


def test_the_repeats_measure_compares_biases_with_held_out_pieces(tok, real_midi_paths):
    from music_hf.evaluation import bar_notes, generate_per_genre, music_metrics, repeated_bar_share
    from music_hf.quality import REPEAT_METRICS, repeat_completion_quality, repeat_section

    torch.manual_seed(0)
    model = MusicForCausalLM(MusicConfig.from_tokenizer(tok, genres=["unknown", "fiddle tune"], **SIZES)).eval()
    ids = [[tok.bos_token_id, *tok.encode_score(p), tok.eos_token_id] for p in real_midi_paths]
    pieces = {"train": {"input_ids": ids[:5], "genre_id": [1] * 5},
              "test": {"input_ids": [ids[REEL], ids[6]], "genre_id": [1, 1]}}
    out = repeat_completion_quality(model, tok, ["unknown", "fiddle tune"], pieces, [0, 6], per_genre=2,
                                    max_new_tokens=40, seed=1, temperature=1.0, top_p=0.95, top_k=0)
    assert out["genres"] == ["fiddle tune"] and set(out["runs"]) == {"0", "6"}
    ref = out["reference"]["per_genre"]["fiddle tune"]
    assert ref["n"] == {"generated": 2, "test": 2, "train": 5}
    # the held-out column: the pieces' openings (their first 40 music tokens), measured as the evaluation measures
    openings = [tok.decode_midi(x[1:41]) for x in pieces["test"]["input_ids"]]
    assert ref["test"]["repeated_bars"] == pytest.approx(np.mean([repeated_bar_share(bar_notes(s))
                                                                  for s in openings]))
    # bias 0 is plain generation with the same seed
    plain = generate_per_genre(model, tok, ["fiddle tune"], 2, 40, constrained=True, seed=1, repeat_bias=0,
                               temperature=1.0, top_p=0.95, top_k=0)["fiddle tune"]
    want = np.nanmean([music_metrics(tok.decode_midi(tok._music_ids(x)))["notes_per_bar"] for x in plain])
    assert out["runs"]["0"]["per_genre"]["fiddle tune"]["notes_per_bar"] == pytest.approx(want)
    assert set(out["runs"]["6"]["per_genre"]["fiddle tune"]) == set(REPEAT_METRICS)
    text = repeat_section(out, "python scripts/repeats.py", "a machine.", 60.0)
    assert "| fiddle tune | repeated bars |" in text and "| bias 0 | bias 6 |" in text and "copy > 4 bars" in text


def test_the_pipeline_passes_repeat_bias(tok, model, monkeypatch):
    from transformers import pipeline

    pipe = pipeline("music-generation", model=model, tokenizer=tok, device="cpu")
    seen = []
    real = MusicRepeatLogitsProcessor.__init__
    monkeypatch.setattr(MusicRepeatLogitsProcessor, "__init__", lambda self, t, bias=2.0, **k: seen.append(bias)
                        or real(self, t, bias, **k))
    pipe(max_new_tokens=4, repeat_bias=5.0)
    pipe(max_new_tokens=4)
    assert seen == [5.0, generation.REPEAT_BIAS]
    with pytest.raises(ValueError, match="repeat_bias"):
        pipe(max_new_tokens=4, repeat_bias=-1)
