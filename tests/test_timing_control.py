"""The timing control (issue 14: exact repeats and a steady pulse): "score" (onsets on the written grid) or
"performed" (played timing), measured on every training window like the other controls, so a model trained with
timing noise (position and duration jitter) can be asked for the written grid.

- `measure_controls` calls a window "performed" when more than TIMING_OFF_GRID of its onsets fall off the grid of
  quarter beats: checked against the onsets of the decoded notes, on real corpus pieces and on the same pieces with
  the training's timing noise;
- `AugmentationConfig.timing_noise`: the chance that an augmented window's timing is jittered;
- a tokenizer saved before the control existed: `control_names` lacks it, `with_composition_tokens` adds the tokens
  (the vocabulary of a fresh tokenizer), and `--add_composition_tokens` carries a saved model over by token
  (`remap_vocabulary`: the same logits for every old token);
- generation asks for the prompt's timing (a new piece: "score") unless `controls` says otherwise, in
  `generate_music`, `infill_piece` and `accompany_piece`.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import symusic
import torch

from music_hf import MusicConfig, MusicForCausalLM, MusicTokenizer
from music_hf.composition import accompany_piece, infill_piece
from music_hf.data import AugmentationConfig, MusicDataCollator, TokenAugmenter, window_starts
from music_hf.generation import MIN_TIMING_NOTES, default_timing, generate_music
from music_hf.tokenization_music import (COMPOSITION_TOKENS, CONTROL_NAMES, KIND_INDEX, REPETITION_EDGES,
                                        TIMING_OFF_GRID, TIMING_STYLES)
from music_hf.training import TrainConfig, load_init_model, remap_vocabulary

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NOISE = AugmentationConfig(position_jitter=1, duration_jitter=1)
# (the repetition control came after the timing control: a tokenizer saved before timing lacks both)
OLD_SPECIALS = ["PAD", "BOS", "EOS", "MASK", *(t for t in COMPOSITION_TOKENS
                                               if not t.startswith(("Timing_", "Repetition_")))]
SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             embedding_dropout=0.0, hidden_dropout=0.0, attention_dropout=0.0)


@pytest.fixture(scope="module")
def tok() -> MusicTokenizer:
    return MusicTokenizer()


@pytest.fixture(scope="module")
def old_tok() -> MusicTokenizer:
    """A tokenizer as saved before the timing control existed (every other composition token)."""
    return MusicTokenizer(miditok_config={"special_tokens": OLD_SPECIALS})


@pytest.fixture(scope="module")
def windows(tok, real_midi_paths) -> list[list[int]]:
    """256-token windows of the seven real pieces, whole bars (every note has its Duration)."""
    out = []
    for path in real_midi_paths:
        ids = tok.encode_score(path)
        bars = tok.token_table.bar_count[ids] > 0
        for s in window_starts(bars, len(ids), 256, 224):
            window = ids[s:s + 256]
            ends = [i for i, t in enumerate(window) if tok.token_table.bar_count[t]]
            out.append(window[:ends[-1]] if len(ends) > 1 else window)
    return out


def off_grid_share(score: symusic.Score) -> float:
    """Share of the decoded notes whose onset is off the grid of quarter beats of the time signature in force."""
    signatures = sorted((ts.time, ts.denominator) for ts in score.time_signatures) or [(0, 4)]
    off = total = 0
    for track in score.tracks:
        for note in track.notes:
            start, denominator = [s for s in signatures if s[0] <= note.time][-1]
            grid = score.ticks_per_quarter * 4 / denominator / 4
            off += not math.isclose((note.time - start) / grid, round((note.time - start) / grid))
            total += 1
    return off / total


def test_timing_is_measured_on_the_onsets(tok, windows):
    """measure_controls' timing agrees with the decoded notes, for the written pieces and with timing noise; the
    written pieces measure "score" and nearly every noisy window "performed"."""
    augment = TokenAugmenter(tok, NOISE)
    rng = np.random.default_rng(0)
    styles = {"plain": [], "noisy": []}
    for window in windows:
        for name, ids in (("plain", window), ("noisy", augment(window, rng))):
            measured = tok.measure_controls(ids)["timing"]
            expected = TIMING_STYLES[off_grid_share(tok.decode_midi(ids)) > TIMING_OFF_GRID]
            assert measured == expected, (name, off_grid_share(tok.decode_midi(ids)))
            styles[name].append(measured)
    assert len(windows) > 20
    assert styles["plain"].count("score") >= 0.9 * len(windows), styles["plain"]
    assert styles["noisy"].count("performed") >= 0.9 * len(windows), styles["noisy"]
    assert tok.measure_controls([])["timing"] is None
    names = tok.convert_ids_to_tokens(tok.control_ids({"timing": "performed", "key": "D minor"}))
    assert names == ["Key_Dmin", "Timing_performed"]  # CONTROL_NAMES order: timing last
    assert CONTROL_NAMES[-2:] == ("timing", "repetition") and tok.control_names == CONTROL_NAMES
    with pytest.raises(ValueError, match=r"timing must be one of 'score', 'performed' .*; got 'swing'"):
        tok.control_ids({"timing": "swing"})


def test_timing_noise_is_the_chance_of_jittered_timing(tok, windows):
    """timing_noise 0.5: about half the augmented windows get jittered positions or durations, the others keep
    the written ones; every window is still transposed. At 1 (the default) every window is jittered, drawing as
    before the setting existed."""
    n = 400
    rng = np.random.default_rng(1)
    timing = set(tok.kind_ids("Position").tolist()) | set(tok.kind_ids("Duration").tolist())
    half = TokenAugmenter(tok, AugmentationConfig(pitch_shift=3, position_jitter=1, duration_jitter=1,
                                                  timing_noise=0.5))
    jittered = 0
    for i in range(n):
        window = windows[i % len(windows)]
        out = half(window, rng)
        jittered += [t for t in out if t in timing] != [t for t in window if t in timing]
    assert abs(jittered - n / 2) <= 4 * math.sqrt(n / 4), jittered
    never = TokenAugmenter(tok, AugmentationConfig(pitch_shift=3, position_jitter=1, timing_noise=0.0))
    for window in windows:
        out = never(window, np.random.default_rng(2))
        assert [t for t in out if t in timing] == [t for t in window if t in timing]
    default = TokenAugmenter(tok, NOISE)
    explicit = TokenAugmenter(tok, AugmentationConfig(position_jitter=1, duration_jitter=1, timing_noise=1.0))
    for i, window in enumerate(windows):
        assert default(window, np.random.default_rng(i)) == explicit(window, np.random.default_rng(i))
    assert TrainConfig().replace(timing_noise=0.3, position_jitter=1).data.augmentation().timing_noise == 0.3


def test_collator_measures_timing_where_the_vocabulary_has_it(tok, old_tok, windows):
    """The control prefix ends with the window's measured timing (then its repetition); an older vocabulary gets the
    other controls."""
    augmenter = TokenAugmenter(tok, AugmentationConfig(position_jitter=1, duration_jitter=1, timing_noise=0.5))
    collator = MusicDataCollator(tok.pad_token_id, augmenter, tokenizer=tok, control_dropout=0.0, seed=4)
    batch = collator([{"input_ids": [tok.bos_token_id] + w, "idx": i} for i, w in enumerate(windows)])
    seen = set()
    for row, mask, window in zip(batch["input_ids"], batch["attention_mask"], windows):
        row = row[mask.bool()].tolist()
        timing = row[6]  # BOS, key, density, polyphony, pitch low and high, timing
        assert tok.token_table.kind[timing] == KIND_INDEX["Control"]
        played = row[8:]  # (row[7]: the repetition)
        assert tok.convert_ids_to_tokens(timing) == f"Timing_{tok.measure_controls(played)['timing']}"
        seen.add(timing)
    assert len(seen) == 2  # both styles occur at timing_noise 0.5
    old = MusicDataCollator(old_tok.pad_token_id, tokenizer=old_tok, control_dropout=0.0)
    ids = old_tok.encode_score(tok.decode_midi(windows[0]))[:200]  # the same music in the old vocabulary
    row = old([{"input_ids": [old_tok.bos_token_id] + ids}])["input_ids"][0].tolist()
    assert row[6:] == ids and old_tok.control_names == CONTROL_NAMES[:-2]


def test_with_composition_tokens_adds_the_missing_ones(tok, old_tok, tmp_path):
    assert old_tok.control_names == ("key", "density", "polyphony", "pitch_range")
    with pytest.raises(ValueError, match="has no Timing token"):
        old_tok.control_ids({"timing": "score"})
    new = old_tok.with_composition_tokens()
    assert new is not old_tok and len(new) == len(old_tok) + len(TIMING_STYLES) + len(REPETITION_EDGES)
    assert new.get_vocab() == tok.get_vocab()  # what a fresh tokenizer has
    assert set(old_tok.get_vocab()) < set(new.get_vocab()) and new.control_names == CONTROL_NAMES
    assert tok.with_composition_tokens() is tok
    new.save_pretrained(tmp_path)
    assert MusicTokenizer.from_pretrained(tmp_path).get_vocab() == new.get_vocab()
    added = MusicTokenizer(miditok_config={"special_tokens": OLD_SPECIALS})
    added.add_tokens(["<extra>"])
    with pytest.raises(ValueError, match="cannot add the composition tokens .* added tokens"):
        added.with_composition_tokens()


def test_add_composition_tokens_carries_the_model_over_by_token(tok, old_tok, real_midi_paths, tmp_path):
    torch.manual_seed(0)
    old_model = MusicForCausalLM(MusicConfig.from_tokenizer(old_tok, genres=["unknown", "chorale"], **SIZES)).eval()
    old_model.save_pretrained(tmp_path / "old")
    old_tok.save_pretrained(tmp_path / "old")
    cfg = TrainConfig().replace(init_from=str(tmp_path / "old"), add_composition_tokens=True)
    model = load_init_model(cfg, old_tok.with_composition_tokens(), ["unknown", "chorale"]).eval()
    assert model.config.vocab_size == len(tok) and model.config.token_kind == MusicConfig.from_tokenizer(tok).token_kind
    assert model.lm_head.weight.data_ptr() == model.model.embeddings.token.weight.data_ptr()  # still tied
    ids = old_tok.encode_score(real_midi_paths[0])[:120]
    old_vocab, new_vocab = old_tok.get_vocab(), tok.get_vocab()
    old_to_new = {old_vocab[t]: new_vocab[t] for t in old_vocab}
    with torch.no_grad():
        before = old_model(torch.tensor([ids]), genre_ids=torch.tensor([1])).logits[0]
        after = model(torch.tensor([[old_to_new[i] for i in ids]]), genre_ids=torch.tensor([1])).logits[0]
    order = torch.tensor([old_to_new[i] for i in range(len(old_tok))])
    torch.testing.assert_close(after[:, order], before)
    # without the setting the saved tokenizer and model are used as they are
    assert load_init_model(cfg.replace(add_composition_tokens=False), old_tok, ["unknown", "chorale"]) \
        .config.vocab_size == len(old_tok)
    with pytest.raises(ValueError, match="the new tokenizer lacks 1 of the model's tokens"):
        remap_vocabulary(old_model, old_tok, MusicTokenizer(miditok_config={"special_tokens": OLD_SPECIALS[:-1]}))


def test_generation_asks_for_the_prompts_timing(tok, old_tok, windows, real_midi_paths):
    torch.manual_seed(0)
    model = MusicForCausalLM(MusicConfig.from_tokenizer(tok, **SIZES)).eval()
    score_id, performed_id = tok.control_ids({"timing": "score"})[0], tok.control_ids({"timing": "performed"})[0]
    new = generate_music(model, tok, max_new_tokens=16, seed=0)[0]
    assert new.ids[1] == score_id  # a new piece: the written grid
    keyed = generate_music(model, tok, max_new_tokens=16, seed=0, controls={"key": "G major"})[0]
    assert keyed.ids[1:3] == tok.control_ids({"key": "G major"}) + [score_id]
    left = generate_music(model, tok, max_new_tokens=16, seed=0, controls={"timing": None})[0]
    assert not {score_id, performed_id} & set(left.ids[:left.prompt_length])  # None: the model's choice
    asked = generate_music(model, tok, max_new_tokens=16, seed=0, controls={"timing": "performed"})[0]
    assert asked.ids[1] == performed_id
    written = tok.decode_midi(windows[0])
    played = tok.decode_midi(TokenAugmenter(tok, NOISE)(windows[0], np.random.default_rng(0)))
    for prompt, expected in ((written, score_id), (played, performed_id)):
        piece = generate_music(model, tok, prompt=prompt, max_new_tokens=8, seed=0, prompt_mapping=False)[0]
        assert piece.ids[1] == expected
        assert infill_piece(model, tok, prompt, (1, 2), seed=0).prompt[1] == expected
        assert accompany_piece(model, tok, prompt, 40, seed=0, max_new_tokens=8).prompt[1] == expected
    starts = np.flatnonzero(tok.token_table.note_count[windows[0]])
    few = windows[0][: starts[MIN_TIMING_NOTES - 1]]  # the notes before the 8th
    assert tok.token_table.note_count[few].sum() == MIN_TIMING_NOTES - 1
    assert default_timing(tok, None, TokenAugmenter(tok, NOISE)(few, np.random.default_rng(0))) == [score_id]
    assert default_timing(old_tok, None, windows[0]) == []  # a vocabulary without the control
