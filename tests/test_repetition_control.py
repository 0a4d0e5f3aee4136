"""The repetition control: Repetition_<k> (k = 0..3), the bin of the share of a window's non-empty bars whose notes
equal an earlier bar's, measured on every training window like the other controls, so generation can ask for the
repeats real tunes have (the shipped model repeats far fewer bars than the corpus).

- `measure_controls`' repetition counts the bars of the ids exactly as the evaluation's `repeated_bar_share` counts
  the bars of the decoded score (one rule, `repeated_share`): checked on real corpus pieces, their training windows
  (cut inside a bar: a note without its Duration decodes to nothing), the same with timing noise and
  transposition, and a hand-made piece with drums;
- user values: a share in [0, 1] -> its REPETITION_EDGES bin; anything else a ValueError naming what is accepted;
- the collator's control prefix ends with the window's repetition (after the timing), an older vocabulary gets the
  others;
- generation asks for the prompt's repetition where the prompt has MIN_REPETITION_BARS bars with notes, else the
  model's own most likely Repetition token after the other controls (for the genre); `{"repetition": None}` leaves
  it out; a vocabulary without the control (the shipped model's) gets nothing; in `generate_music`, `infill_piece`,
  `accompany_piece` and the pipeline (once).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import symusic
import torch
from transformers import pipeline

from music_hf import MusicConfig, MusicForCausalLM, MusicTokenizer
from music_hf.cli import parse_controls
from music_hf.composition import accompany_piece, infill_piece
from music_hf.data import AugmentationConfig, MusicDataCollator, TokenAugmenter, window_starts
from music_hf.evaluation import bar_notes, repeated_bar_share
from music_hf.generation import MIN_REPETITION_BARS, cut_bars, default_repetition, generate_music
from music_hf.tokenization_music import (COMPOSITION_TOKENS, CONTROL_NAMES, CONTROL_TYPES, KIND_INDEX,
                                        REPETITION_EDGES, repeated_share)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NOISE = AugmentationConfig(position_jitter=1, duration_jitter=1, pitch_shift=5)
# a vocabulary saved before the repetition control (the shipped model's: the timing control and every other token)
BEFORE = ["PAD", "BOS", "EOS", "MASK", *(t for t in COMPOSITION_TOKENS if not t.startswith("Repetition_"))]
GENRES = ["unknown", "chorale", "fiddle tune"]
SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             embedding_dropout=0.0, hidden_dropout=0.0, attention_dropout=0.0)
REEL = 5  # real_midi_paths[5]: the 7th Regiment Reel, whose bars repeat


@pytest.fixture(scope="module")
def tok() -> MusicTokenizer:
    return MusicTokenizer()


@pytest.fixture(scope="module")
def before_tok() -> MusicTokenizer:
    return MusicTokenizer(miditok_config={"special_tokens": BEFORE})


@pytest.fixture(scope="module")
def pieces(tok, real_midi_paths) -> list[list[int]]:
    return [tok.encode_score(p) for p in real_midi_paths]


@pytest.fixture(scope="module")
def windows(tok, pieces) -> list[list[int]]:
    """256-token windows of the seven real pieces, as make_windows cuts them (from a bar, ending anywhere)."""
    out = []
    for ids in pieces:
        bars = tok.token_table.bar_count[ids] > 0
        out += [ids[s:s + 256] for s in window_starts(bars, len(ids), 256, 224)]
    return out


@pytest.fixture(scope="module")
def model(tok) -> MusicForCausalLM:
    torch.manual_seed(0)
    return MusicForCausalLM(MusicConfig.from_tokenizer(tok, genres=GENRES, **SIZES)).eval()


def repetition_ids(tok: MusicTokenizer) -> list[int]:
    return [tok.convert_tokens_to_ids(f"Repetition_{k}") for k in range(len(REPETITION_EDGES))]


def bin_id(tok: MusicTokenizer, share: float) -> int:
    return tok.control_ids({"repetition": share})[0]


def most_likely_repetition(model, tok, prefix, genre=None) -> int:
    """The Repetition id with the highest logit after `prefix` (the model's choice made explicit)."""
    genre_ids = torch.tensor([model.config.genre_id(genre)])
    with torch.no_grad():
        logits = model(torch.tensor([prefix]), genre_ids=genre_ids).logits[0, -1]
    ids = repetition_ids(tok)
    return ids[int(logits[ids].argmax())]


def favour(model, tok, token_id: int, prefix, genre=None) -> MusicForCausalLM:
    """A copy of `model` whose output row for `token_id` points along the last hidden state after `prefix`, so that
    of the Repetition tokens it is by far the most likely there (the row is never read as an input: the token is
    not in the prefix)."""
    import copy

    out = copy.deepcopy(model)
    with torch.no_grad():
        hidden = out.model(torch.tensor([prefix]), genre_ids=torch.tensor([out.config.genre_id(genre)]))
        last = hidden.last_hidden_state[0, -1]
        out.get_output_embeddings().weight[token_id] = 50 * last / last.norm()
    return out


# ----- measuring -------------------------------------------------------------------------------------------------
def test_repetition_is_the_evaluations_repeated_bar_share_of_the_decoded_notes(tok, pieces, windows):
    """Exactly equal (the same bars, the same rule): whole pieces, windows cut inside a bar, and the same windows
    with timing noise and transposition."""
    augment = TokenAugmenter(tok, NOISE)
    rng = np.random.default_rng(0)
    shares = []
    for ids in pieces + windows + [augment(w, rng) for w in windows]:
        measured = tok.measure_controls(ids)["repetition"]
        assert measured == repeated_bar_share(tok.decode_midi(ids)), tok.decode_midi(ids)
        shares.append(measured)
    assert len(windows) > 20 and min(shares) == 0.0
    whole = {i: tok.measure_controls(ids)["repetition"] for i, ids in enumerate(pieces)}
    assert whole[REEL] == pytest.approx(17 / 32) and whole[0] == 0.0  # the reel repeats, the chorale does not
    cut = windows[1]  # ends inside a bar: its last note's Duration is cut off
    assert tok.token_table.kind[cut[-1]] != KIND_INDEX["Duration"]
    assert tok.measure_controls([])["repetition"] is None
    assert tok.measure_controls([tok.token_id("Bar"), tok.token_id("Position", 0)])["repetition"] is None


def test_the_bars_pool_programs_and_drums_and_ignore_velocity(tok):
    """A hand-made piece: bar 1 repeats bar 0 (another velocity), bar 2 repeats it but for a drum note, bar 3 is
    empty, bar 4 repeats bar 2, bar 5 is bar 0 with the piano's notes on a violin: 3 of the 5 non-empty bars repeat
    an earlier one (the programs are pooled)."""
    tpq = 16
    score = symusic.Score(tpq)
    score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    tracks = {0: symusic.Track(program=0, is_drum=False), 40: symusic.Track(program=40, is_drum=False),
              128: symusic.Track(program=0, is_drum=True)}
    bars = [(0, 80, 36), (0, 50, 36), (0, 80, 38), None, (0, 80, 38), (40, 80, 36)]
    for bar, notes in enumerate(bars):
        if notes is None:
            continue
        program, velocity, drum = notes
        start = bar * 4 * tpq
        tracks[program].notes.extend([symusic.Note(start, tpq, 60, velocity),
                                      symusic.Note(start + 2 * tpq, 2 * tpq, 64, velocity)])
        tracks[128].notes.append(symusic.Note(start + tpq, tpq // 2, drum, velocity))
    score.tracks.extend(tracks.values())
    ids = tok.encode_score(score)
    assert tok.measure_controls(ids)["repetition"] == pytest.approx(0.6) == repeated_bar_share(tok.decode_midi(ids))
    assert tok.convert_ids_to_tokens(tok.control_ids({"repetition": 0.6})) == ["Repetition_3"]


def test_evaluation_counts_with_the_controls_rule():
    """One rule: `repeated_bar_share` is `repeated_share` over `bar_notes` (NaN instead of None for no notes)."""
    a, b = ((0, 60, 16),), ((0, 62, 16),)
    for bars in ([a, a], [a, (), b, a, b], [a, b], [(), a]):
        assert repeated_bar_share(bars) == repeated_share(bars)
    assert repeated_share([a, a]) == 0.5 and repeated_share([(), ()]) is None and repeated_share([]) is None
    assert math.isnan(repeated_bar_share([]))
    assert repeated_bar_share(symusic.Score(16)) != repeated_bar_share(symusic.Score(16))  # NaN
    assert bar_notes(symusic.Score(16)) == []


# ----- tokens and user values ------------------------------------------------------------------------------------
def test_tokens_come_last_and_user_shares_map_to_their_bins(tok):
    assert CONTROL_NAMES[-1] == "repetition" and CONTROL_TYPES[-1] == "Repetition"
    assert list(COMPOSITION_TOKENS[-4:]) == [f"Repetition_{k}" for k in range(4)] and REPETITION_EDGES[0] == 0
    assert tok.control_names == CONTROL_NAMES
    names = lambda controls: tok.convert_ids_to_tokens(tok.control_ids(controls))  # noqa: E731
    expected = {0: 0, 0.0499: 0, 0.05: 1, 0.1: 1, 0.1999: 1, 0.2: 2, 0.3: 2, 0.4: 3, 0.75: 3, 1: 3,
                np.float32(0.25): 2}
    for share, k in expected.items():
        assert names({"repetition": share}) == [f"Repetition_{k}"], share
    # in CONTROL_NAMES order: last, after the timing
    assert names({"repetition": 0.3, "timing": "score", "key": "D minor"}) == ["Key_Dmin", "Timing_score",
                                                                              "Repetition_2"]
    assert names({"repetition": None}) == []
    assert parse_controls(["repetition=0.3", "timing=score"]) == {"repetition": 0.3, "timing": "score"}  # the CLI
    for bad in (-0.1, 1.01, "many", True, float("nan"), (0.1, 0.2)):
        with pytest.raises(ValueError, match=r"repetition must be a share of repeated bars, a number from 0 to 1 "
                                             r"\(bins from 0, 0.05, 0.2, 0.4\), got "):
            tok.control_ids({"repetition": bad})
    table = tok.token_table
    for k, i in enumerate(repetition_ids(tok)):
        assert table.kind[i] == KIND_INDEX["Control"] and table.control[i] == CONTROL_TYPES.index("Repetition")
        assert table.value[i] == k and table.note_count[i] == 0 and table.bar_count[i] == 0


def test_a_vocabulary_from_before_the_control_lacks_it_and_gets_it_added(tok, before_tok):
    assert before_tok.control_names == CONTROL_NAMES[:-1] and len(tok) == len(before_tok) + 4
    with pytest.raises(ValueError, match="has no Repetition token"):
        before_tok.control_ids({"repetition": 0.3})
    assert before_tok.with_composition_tokens().get_vocab() == tok.get_vocab()


# ----- training --------------------------------------------------------------------------------------------------
def test_collator_prefix_ends_with_the_windows_repetition(tok, before_tok, pieces, windows):
    """Measured on the window as augmented (transposed, and half of them with jittered timing, which breaks
    repeats); the whole pieces too, where the reel and a chorale (music21 plays its repeats) repeat bars."""
    augmenter = TokenAugmenter(tok, AugmentationConfig(pitch_shift=5, position_jitter=1, duration_jitter=1,
                                                       timing_noise=0.5))
    collator = MusicDataCollator(tok.pad_token_id, augmenter, tokenizer=tok, control_dropout=0.0, seed=4)
    batch = collator([{"input_ids": [tok.bos_token_id] + w, "idx": i} for i, w in enumerate(windows + pieces)])
    seen = set()
    control = tok.token_table.kind == KIND_INDEX["Control"]
    for row, mask in zip(batch["input_ids"], batch["attention_mask"]):
        row = row[mask.bool()].tolist()
        # BOS, key, density, polyphony, pitch low and high, timing, repetition, then the (augmented) window
        assert [bool(control[i]) for i in row[:9]] == [False] + [True] * 7 + [False]
        assert tok.convert_ids_to_tokens(row[6]).startswith("Timing_")
        assert row[7] == bin_id(tok, tok.measure_controls(row[8:])["repetition"])
        seen.add(row[7])
    assert len(seen) >= 3, tok.convert_ids_to_tokens(sorted(seen))  # several bins occur
    # dropped with the others, at the control dropout rate
    dropping = MusicDataCollator(tok.pad_token_id, tokenizer=tok, control_dropout=0.5, seed=1)
    n = 400
    rows = dropping([{"input_ids": [tok.bos_token_id] + windows[i % len(windows)], "idx": i} for i in range(n)])
    kept = sum(bool(set(repetition_ids(tok)) & set(r.tolist())) for r in rows["input_ids"])
    assert abs(kept - n / 2) <= 4 * math.sqrt(n / 4), kept
    # a vocabulary without the control: the prefix of the controls it has, as before
    old = MusicDataCollator(before_tok.pad_token_id, tokenizer=before_tok, control_dropout=0.0)
    ids = before_tok.encode_score(tok.decode_midi(windows[0]))[:200]
    row = old([{"input_ids": [before_tok.bos_token_id] + ids}])["input_ids"][0].tolist()
    assert before_tok.convert_ids_to_tokens(row[6]).startswith("Timing_") and row[7:] == ids


# ----- generation ------------------------------------------------------------------------------------------------
def test_a_new_piece_asks_for_the_models_own_repetition(tok, model):
    score_id = tok.control_ids({"timing": "score"})[0]
    head = [tok.bos_token_id, score_id]
    for genre in (None, "chorale", "fiddle tune"):
        piece = generate_music(model, tok, genre=genre, max_new_tokens=8, seed=0)[0]
        assert piece.ids[:3] == head + [most_likely_repetition(model, tok, head, genre)], genre
    # the model's choice, whatever it is: steer the untrained model to each bin in turn
    for k in (0, 3):
        steered = favour(model, tok, repetition_ids(tok)[k], head, "fiddle tune")
        assert generate_music(steered, tok, genre="fiddle tune", max_new_tokens=8, seed=0)[0].ids[:3] == \
            head + [repetition_ids(tok)[k]]
        assert default_repetition(steered, tok, None, [], head, "fiddle tune") == [repetition_ids(tok)[k]]
    # asked after the other controls, the control ids in CONTROL_NAMES order
    keyed = [tok.bos_token_id, *tok.control_ids({"key": "G major"}), score_id]
    piece = generate_music(model, tok, max_new_tokens=8, seed=0, controls={"key": "G major"})[0]
    assert piece.ids[:4] == keyed + [most_likely_repetition(model, tok, keyed)]
    # asked for: the bin, after the default timing; None: no Repetition token at all
    asked = generate_music(model, tok, max_new_tokens=8, seed=0, controls={"repetition": 0.45})[0]
    assert asked.ids[:3] == head + [repetition_ids(tok)[3]]
    alone = generate_music(model, tok, max_new_tokens=8, seed=0, controls={"repetition": 0.3, "timing": None})[0]
    assert alone.ids[:2] == [tok.bos_token_id, repetition_ids(tok)[2]]
    assert tok.token_table.kind[alone.ids[2]] != KIND_INDEX["Control"]
    left = generate_music(model, tok, max_new_tokens=8, seed=0, controls={"repetition": None})[0]
    assert left.ids[:2] == head and not set(repetition_ids(tok)) & set(left.ids[:left.prompt_length])
    # guidance pulls toward it too (the unconditional prompt has no control)
    guided = generate_music(model, tok, max_new_tokens=8, seed=0, guidance_scale=2.0)[0]
    assert guided.ids[:3] == head + [most_likely_repetition(model, tok, head)]


def test_a_prompt_asks_for_its_own_repetition(tok, model, pieces):
    reel = pieces[REEL]
    score_id = tok.control_ids({"timing": "score"})[0]
    for bars in (8, 16):
        prompt = cut_bars(tok, reel, bars)
        own = bin_id(tok, tok.measure_controls(prompt)["repetition"])
        score = tok.decode_midi(prompt)
        piece = generate_music(model, tok, prompt=score, max_new_tokens=8, seed=0, prompt_mapping=False)[0]
        assert piece.ids[:3] == [tok.bos_token_id, score_id, own]
        assert infill_piece(model, tok, score, (1, 2), seed=0).prompt[:3] == [tok.bos_token_id, score_id, own]
        assert accompany_piece(model, tok, score, 40, seed=0, max_new_tokens=8).prompt[:3] == \
            [tok.bos_token_id, score_id, own]
    # the bins differ: 8 bars of the reel repeat one of them, 16 more than half
    assert [bin_id(tok, tok.measure_controls(cut_bars(tok, reel, b))["repetition"]) for b in (8, 16)] == \
        [repetition_ids(tok)[1], repetition_ids(tok)[3]]
    # fewer bars with notes than MIN_REPETITION_BARS: the model's choice; the steered model shows it is asked
    short = cut_bars(tok, reel, MIN_REPETITION_BARS - 1)
    head = [tok.bos_token_id, score_id]
    steered = favour(model, tok, repetition_ids(tok)[0], head)
    piece = generate_music(steered, tok, prompt=short, max_new_tokens=8, seed=0)[0]
    assert piece.ids[:3] == head + [repetition_ids(tok)[0]] and piece.ids[3:3 + len(short)] == short
    assert default_repetition(steered, tok, None, cut_bars(tok, reel, MIN_REPETITION_BARS), head) == \
        [bin_id(tok, tok.measure_controls(cut_bars(tok, reel, MIN_REPETITION_BARS))["repetition"])]
    # infill and accompany ask the model for a piece this short, for their genre
    steered = favour(model, tok, repetition_ids(tok)[2], head, "fiddle tune")
    short_score = tok.decode_midi(short)
    assert infill_piece(steered, tok, short_score, (1, 2), genre="fiddle tune", seed=0).prompt[:3] == \
        head + [repetition_ids(tok)[2]]
    assert accompany_piece(steered, tok, short_score, 40, genre="fiddle tune", seed=0,
                           max_new_tokens=8).prompt[:3] == head + [repetition_ids(tok)[2]]
    # asked for, or None: as the caller says
    assert infill_piece(model, tok, short_score, (1, 2), controls={"repetition": 0.0}, seed=0).prompt[:3] == \
        head + [repetition_ids(tok)[0]]
    prompt = accompany_piece(model, tok, short_score, 40, {"repetition": None}, seed=0, max_new_tokens=8).prompt
    assert prompt[:2] == head and not set(repetition_ids(tok)) & set(prompt)


def test_the_pipeline_asks_once(tok, model, pieces):
    pipe = pipeline("music-generation", model=model, tokenizer=tok, device="cpu")
    prompt = tok.decode_midi(cut_bars(tok, pieces[REEL], 16))
    ids = pipe(prompt, max_new_tokens=8, seed=0, return_type="ids", prompt_mapping=False)[0]["token_ids"]
    control = [i for i in ids if tok.token_table.kind[i] == KIND_INDEX["Control"]]
    own = bin_id(tok, tok.measure_controls(tok.encode_score(prompt))["repetition"])
    assert control == [tok.control_ids({"timing": "score"})[0], own] and ids[1:3] == control
    new = pipe(max_new_tokens=8, seed=0, genre="fiddle tune", return_type="ids")[0]["token_ids"]
    head = [tok.bos_token_id, tok.control_ids({"timing": "score"})[0]]
    assert new[:3] == head + [most_likely_repetition(model, tok, head, "fiddle tune")]
    assert sum(tok.token_table.kind[i] == KIND_INDEX["Control"] for i in new) == 2


def test_a_vocabulary_without_the_control_generates_as_before(before_tok, pieces, tok):
    """The shipped model's vocabulary: no Repetition token anywhere, no forward pass to choose one."""
    torch.manual_seed(0)
    old = MusicForCausalLM(MusicConfig.from_tokenizer(before_tok, genres=GENRES, **SIZES)).eval()
    timing = before_tok.control_ids({"timing": "score"})
    assert default_repetition(old, before_tok, None, [], [before_tok.bos_token_id] + timing) == []
    new = generate_music(old, before_tok, max_new_tokens=8, seed=0)[0]
    assert new.ids[:2] == [before_tok.bos_token_id] + timing
    assert not before_tok.token_table.kind[new.ids[2]] == KIND_INDEX["Control"]
    score = tok.decode_midi(cut_bars(tok, pieces[REEL], 16))
    for prompt in (infill_piece(old, before_tok, score, (1, 2), seed=0).prompt,
                   accompany_piece(old, before_tok, score, 40, seed=0, max_new_tokens=8).prompt,
                   generate_music(old, before_tok, prompt=score, max_new_tokens=8, seed=0,
                                  prompt_mapping=False)[0].ids):
        assert prompt[:2] == [before_tok.bos_token_id] + timing
        assert not any(before_tok.token_table.kind[i] == KIND_INDEX["Control"] for i in prompt[2:])
    with pytest.raises(ValueError, match="has no Repetition token"):
        generate_music(old, before_tok, max_new_tokens=8, controls={"repetition": 0.3})
