"""MusicTokenizer (issue 2): real-music round trips, the transformers contract, BPE, saving, bad input, fuzzing."""

from __future__ import annotations

import inspect
import json
import os
import random
import struct
import subprocess
import sys
import textwrap
import time
from collections import Counter
from fractions import Fraction
from pathlib import Path

import miditok
import pytest
import symusic
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from symusic import Note, Score, TimeSignature, Track
from transformers import AddedToken, AutoTokenizer, BatchEncoding

import music_hf  # noqa: F401  (registers the Auto classes)
from music_hf import EmptyMusicError, MusicConfig, MusicFileError, MusicTokenizer
from music_hf.generation import MusicGrammarLogitsProcessor, prompt_ids
from music_hf.tokenization_music import TOKEN_KINDS

REPO_ROOT = Path(__file__).resolve().parents[1]
NUM_REAL_PIECES = 7  # len(real_midi_paths), see conftest.py


# ----- helpers -------------------------------------------------------------------------------------------------
def notes_of(score: Score) -> Counter:
    """Multiset of notes as (pitch, program (-1 = drums), onset, duration, velocity).

    Times are exact fractions of a quarter note: the preprocessed input and the decoded output use different
    ticks per quarter (miditok resamples to its grid, then decodes at its own time division), so ticks are
    compared in the one unit both resolve to without rounding.
    """
    notes = Counter()
    for track in score.tracks:
        program = -1 if track.is_drum else track.program
        for n in track.notes:
            notes[(n.pitch, program, Fraction(n.time, score.tpq), Fraction(n.duration, score.tpq), n.velocity)] += 1
    return notes


def tempos_and_time_signatures(score: Score) -> tuple[list, list]:
    tempos = [(Fraction(t.time, score.tpq), t.mspq) for t in score.tempos]
    time_sigs = [(Fraction(t.time, score.tpq), t.numerator, t.denominator) for t in score.time_signatures]
    return tempos, time_sigs


def one_track_score(notes: list[tuple[int, int, int]], tpq: int = 480, time_sig: tuple[int, int] | None = None,
                    drums: bool = False, program: int = 0) -> Score:
    """A Score with one track of (onset, duration, pitch) notes, velocity 90."""
    score = Score(tpq)
    if time_sig:
        score.time_signatures.append(TimeSignature(0, *time_sig))
    track = Track(program=program, is_drum=drums)
    for onset, duration, pitch in notes:
        track.notes.append(Note(onset, duration, pitch, 90))
    score.tracks.append(track)
    return score


def _vlq(n: int) -> bytes:
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def two_note_midi(tpq: int, gap: int) -> bytes:
    """A hand-written format-0 MIDI file: middle C, then D `gap` ticks later (tpq as written in the header)."""
    track = (_vlq(0) + b"\x90\x3c\x40" + _vlq(10) + b"\x80\x3c\x40" + _vlq(gap) + b"\x90\x3e\x40" + _vlq(10)
             + b"\x80\x3e\x40" + b"\x00\xff\x2f\x00")
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, tpq) + b"MTrk" + struct.pack(">I", len(track)) + track


# ----- round trip on real music ----------------------------------------------------------------------------------
@pytest.mark.parametrize("index", range(NUM_REAL_PIECES))
def test_round_trip_recovers_the_preprocessed_notes_exactly(tokenizer, real_midi_paths, index):
    path = real_midi_paths[index]
    expected = tokenizer.miditok.preprocess_score(Score(str(path)))
    decoded = tokenizer.decode_midi(tokenizer(path)["input_ids"])
    assert expected.note_num() > 0
    assert notes_of(decoded) == notes_of(expected), path.name
    assert tempos_and_time_signatures(decoded) == tempos_and_time_signatures(expected), path.name


def test_real_pieces_keep_their_programs_and_meters(tokenizer, real_midi_paths):
    by_name = {p.name: p for p in real_midi_paths}
    palestrina = tokenizer.decode_midi(tokenizer(by_name["palestrina_Agnus_01.krn.mid"])["input_ids"])
    assert {t.program for t in palestrina.tracks} == {53}  # music21 writes voices as "choir aahs"
    jig = tokenizer.convert_ids_to_tokens(tokenizer(by_name["oneills1850_0001-0050_4.mid"])["input_ids"])
    assert "TimeSig_6/8" in jig
    chorale = tokenizer.convert_ids_to_tokens(tokenizer(by_name["bach_bwv269.mid"])["input_ids"])
    assert "TimeSig_3/4" in chorale


def test_decode_midi_writes_a_readable_file(tokenizer, real_midi_paths, tmp_path):
    ids = tokenizer(real_midi_paths[0])["input_ids"]
    out = tmp_path / "out.mid"
    decoded = tokenizer.decode_midi(torch.tensor(ids), output_path=out)
    assert notes_of(Score(str(out))) == notes_of(decoded)


# ----- the transformers contract ---------------------------------------------------------------------------------
def test_call_returns_batch_encoding_framed_by_bos_and_eos(tokenizer, real_midi_paths):
    enc = tokenizer(real_midi_paths[0])
    assert isinstance(enc, BatchEncoding)
    ids = enc["input_ids"]
    assert enc["attention_mask"] == [1] * len(ids)
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.bos_token_id not in ids[1:-1] and tokenizer.eos_token_id not in ids[1:-1]
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert ids[1:-1] == tokenizer.encode_score(real_midi_paths[0])


def test_path_str_bytes_and_score_inputs_give_identical_ids(tokenizer, real_midi_paths):
    path = real_midi_paths[3]
    ids = tokenizer(path)["input_ids"]
    assert tokenizer(str(path))["input_ids"] == ids
    assert tokenizer(path.read_bytes())["input_ids"] == ids
    assert tokenizer(bytearray(path.read_bytes()))["input_ids"] == ids
    assert tokenizer(Score(str(path)))["input_ids"] == ids


def test_abc_text_gives_the_same_ids_as_its_midi(tokenizer, real_midi_paths):
    from music21 import corpus

    from music_hf.tokenization_music import split_abc_tunes

    text = Path(corpus.getWork("essenFolksong/altdeu10")).read_text(encoding="utf-8")
    midi = next(p for p in real_midi_paths if p.name.startswith("essenFolksong"))
    assert tokenizer(split_abc_tunes(text)[0])["input_ids"] == tokenizer(midi)["input_ids"]


def test_batch_pads_on_the_right_with_mask_zero(tokenizer, real_midi_paths):
    single = [tokenizer(p)["input_ids"] for p in real_midi_paths]
    batch = tokenizer(real_midi_paths, padding=True, return_tensors="pt")
    longest = max(map(len, single))
    assert batch["input_ids"].shape == (len(single), longest)
    assert batch["input_ids"].dtype == torch.long
    for row, mask, ids in zip(batch["input_ids"], batch["attention_mask"], single):
        assert row[: len(ids)].tolist() == ids
        assert (row[len(ids):] == tokenizer.pad_token_id).all()
        assert mask.tolist() == [1] * len(ids) + [0] * (longest - len(ids))


def test_truncation_keeps_max_length_with_bos_and_eos(tokenizer, real_midi_paths):
    full = [tokenizer(p)["input_ids"] for p in real_midi_paths[:3]]
    batch = tokenizer(real_midi_paths[:3], truncation=True, max_length=50)
    for ids, whole in zip(batch["input_ids"], full):
        assert len(ids) == 50
        assert ids[:-1] == whole[:49] and ids[-1] == tokenizer.eos_token_id


def test_token_strings_decode_and_encode_back(tokenizer, real_midi_paths):
    ids = tokenizer(real_midi_paths[0])["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[:3] == ["BOS_None", "Bar_None", "TimeSig_4/4"] and tokens[-1] == "EOS_None"
    assert tokenizer.convert_tokens_to_ids(tokens) == ids
    text = tokenizer.decode(ids)
    assert text == " ".join(tokens)
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids
    assert tokenizer(tokenizer.decode(ids, skip_special_tokens=True))["input_ids"] == ids
    assert tokenizer("Bar_None Position_0 Program_0 Pitch_60 Velocity_95 Duration_1.0.8",
                     add_special_tokens=False)["input_ids"] == tokenizer.convert_tokens_to_ids(
        ["Bar_None", "Position_0", "Program_0", "Pitch_60", "Velocity_95", "Duration_1.0.8"])


def test_unknown_token_name_raises(tokenizer):
    with pytest.raises(ValueError, match="Pitch_999"):
        tokenizer("Bar_None Pitch_999")


def test_unknown_token_names_encode_to_unk_token_when_one_is_set():
    # regression: unk_token was accepted but unknown names still raised
    tokenizer = MusicTokenizer(miditok_config={"special_tokens": ["PAD", "BOS", "EOS", "MASK", "UNK"]},
                               unk_token="UNK_None")
    unk, bar = tokenizer.unk_token_id, tokenizer.convert_tokens_to_ids("Bar_None")
    assert tokenizer.convert_ids_to_tokens(unk) == "UNK_None" and unk < tokenizer.vocab_size
    assert tokenizer("Bar_None Pitch_999 hello", add_special_tokens=False)["input_ids"] == [bar, unk, unk]


def test_vocab_is_consistent(tokenizer):
    vocab = tokenizer.get_vocab()
    assert len(vocab) == tokenizer.vocab_size == len(tokenizer)
    assert sorted(vocab.values()) == list(range(tokenizer.vocab_size))
    assert [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.mask_token_id] == [
        0, 1, 2, 3]


# ----- decoding what a model may produce --------------------------------------------------------------------------
def test_decode_ignores_special_and_out_of_range_ids(tokenizer, real_midi_paths):
    ids = tokenizer(real_midi_paths[1])["input_ids"]
    expected = notes_of(tokenizer.decode_midi(ids))
    rng = random.Random(0)
    noisy = list(ids)
    junk = [tokenizer.pad_token_id, tokenizer.mask_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id,
            -1, -7, tokenizer.vocab_size, 10**9]
    for _ in range(100):
        noisy.insert(rng.randrange(len(noisy) + 1), rng.choice(junk))
    assert notes_of(tokenizer.decode_midi(noisy)) == expected


def test_decode_survives_ill_placed_tokens(tokenizer, real_midi_paths):
    ids = tokenizer(real_midi_paths[0])["input_ids"]
    pitch = tokenizer.convert_tokens_to_ids("Pitch_60")
    bar = tokenizer.convert_tokens_to_ids("Bar_None")
    assert tokenizer.decode_midi([]).note_num() == 0
    assert tokenizer.decode_midi([pitch]).note_num() == 0  # a Pitch with no Velocity/Duration is no note
    assert tokenizer.decode_midi([bar, pitch, pitch, bar]).note_num() == 0
    for seed in range(10):
        shuffled = list(ids)
        random.Random(seed).shuffle(shuffled)
        assert isinstance(tokenizer.decode_midi(shuffled), Score)
    for seed in range(30):
        rng = random.Random(seed)
        garbage = [rng.randrange(-3, tokenizer.vocab_size + 3) for _ in range(rng.randrange(300))]
        assert isinstance(tokenizer.decode_midi(garbage), Score)


def test_decode_keeps_the_valid_notes_around_a_broken_one(tokenizer, real_midi_paths):
    ids = tokenizer(real_midi_paths[0])["input_ids"]
    expected = notes_of(tokenizer.decode_midi(ids))
    tokens = tokenizer.convert_ids_to_tokens(ids)
    cut = next(i for i in range(len(tokens) - 1, 0, -1) if tokens[i].startswith("Pitch_"))
    broken = ids[: cut + 1] + ids[cut + 3:]  # drop the last note's Velocity and Duration
    lost = notes_of(tokenizer.decode_midi(broken))
    assert sum(lost.values()) == sum(expected.values()) - 1
    assert not lost - expected


def test_decode_midi_rejects_a_batch(tokenizer, real_midi_paths):
    ids = tokenizer(real_midi_paths[:2], padding=True, return_tensors="pt")["input_ids"]
    with pytest.raises(ValueError, match="one sequence"):
        tokenizer.decode_midi(ids)


def test_grammar_errors_is_zero_on_real_music_and_positive_on_shuffles(tokenizer, real_midi_paths):
    ids = tokenizer(real_midi_paths[0])["input_ids"]
    assert tokenizer.grammar_errors(ids) == 0.0
    shuffled = list(ids)
    random.Random(0).shuffle(shuffled)
    assert tokenizer.grammar_errors(shuffled) > 0.1


# ----- per-id attribute tables -----------------------------------------------------------------------------------
def test_music_attributes_follow_the_token_names(tokenizer):
    tables = tokenizer.music_attributes()
    assert {len(t) for t in tables.values()} == {tokenizer.vocab_size}
    for i, token in enumerate(tokenizer.convert_ids_to_tokens(list(range(tokenizer.vocab_size)))):
        kind, _, value = token.partition("_")
        bar = kind == "Bar" or token == "Infill_Bar"  # a placeholder counts as a bar
        expected_kind = ("special" if kind in ("PAD", "BOS", "EOS", "MASK") else kind + value if kind == "Infill"
                         else "Control" if kind in ("Key", "Density", "Polyphony", "PitchLow", "PitchHigh", "Timing",
                                                    "Repetition")
                         else kind)
        assert TOKEN_KINDS[tables["kind"][i]] == expected_kind, token
        assert tables["pitch"][i] == (int(value) if kind == "Pitch" else -1), token
        assert tables["note_count"][i] == (1 if kind in ("Pitch", "PitchDrum") else 0), token
        assert tables["program_set"][i] == ((128 if int(value) == -1 else int(value)) if kind == "Program" else -1)
        expected_position = int(value) if kind == "Position" else 0 if bar else -1
        assert tables["position_set"][i] == expected_position, token
        assert tables["bar_count"][i] == (1 if bar else 0), token
        assert tables["infill"][i] == {"Infill_Bar": 1, "Infill_Start": 2, "Infill_End": 3}.get(token, 0), token
    assert tables["program_set"][tokenizer.convert_tokens_to_ids("Program_-1")] == 128
    assert tables["pitch"][tokenizer.convert_tokens_to_ids("Pitch_60")] == 60
    assert tables["position_set"][tokenizer.convert_tokens_to_ids("Position_5")] == 5
    assert tokenizer.max_position_in_bar == max(tables["position_set"]) + 1


def test_config_from_tokenizer_carries_the_tables(tokenizer):
    config = MusicConfig.from_tokenizer(tokenizer, genres=["chorale", "folk song"])
    tables = tokenizer.music_attributes()
    assert config.vocab_size == len(tokenizer)
    assert config.token_pitch == tables["pitch"] and config.token_program_set == tables["program_set"]
    assert config.token_infill == tables["infill"] and sorted(set(config.token_infill)) == [0, 1, 2, 3]
    config.validate_architecture()
    saved_before = config.to_dict()
    del saved_before["token_infill"]  # a config saved before the infill table loads with it neutral
    assert MusicConfig.from_dict(saved_before).token_infill == [0] * config.vocab_size


# ----- composition tokens (infilling, controls) -------------------------------------------------------------------
def test_composition_tokens_follow_the_four_specials_and_keep_the_music_tokens(tokenizer, real_midi_paths, tmp_path):
    tokens = tokenizer.convert_ids_to_tokens(list(range(4 + 68)))
    assert tokens[:7] == ["PAD_None", "BOS_None", "EOS_None", "MASK_None", "Infill_Bar", "Infill_Start", "Infill_End"]
    groups = Counter(t.partition("_")[0] for t in tokens[7:])
    assert groups == {"Key": 24, "Density": 9, "Polyphony": 6, "PitchLow": 10, "PitchHigh": 10, "Timing": 2,
                      "Repetition": 4}
    assert tokens[7:9] == ["Key_Cmaj", "Key_C#maj"] and "Key_F#min" in tokens and tokens[66 - 1] == "PitchHigh_9"
    assert tokens[66:68] == ["Timing_score", "Timing_performed"]
    assert tokens[68:72] == ["Repetition_0", "Repetition_1", "Repetition_2", "Repetition_3"]
    assert tokenizer.infill_ids == {"bar": 4, "start": 5, "end": 6}
    # a tokenizer saved with the four specials only (as before) loads its own vocabulary and names what it lacks
    old = MusicTokenizer(miditok_config={"special_tokens": ["PAD", "BOS", "EOS", "MASK"]})
    assert old.vocab_size == tokenizer.vocab_size - 68
    old.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    del config["miditok_config"]  # as the old code saved it: the vocabulary is the folder's miditok_config.json
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    loaded = MusicTokenizer.from_pretrained(tmp_path)
    assert loaded.get_vocab() == old.get_vocab()
    assert loaded(real_midi_paths[0])["input_ids"] == old(real_midi_paths[0])["input_ids"]
    with pytest.raises(ValueError, match="no InfillBar token.*composition tokens"):
        loaded.infill_ids
    with pytest.raises(ValueError, match="no Key token"):
        loaded.control_ids({"key": "D minor"})
    # the music tokens keep their order and meaning, shifted by the 68 new ids
    new_vocab, old_vocab = tokenizer.get_vocab(), old.get_vocab()
    assert all(new_vocab[t] == i + 68 for t, i in old_vocab.items() if i >= 4)


def test_control_ids_accept_user_values_and_name_what_is_accepted(tokenizer):
    def names(controls):
        return tokenizer.convert_ids_to_tokens(tokenizer.control_ids(controls))

    for spelling in ("D minor", "D min", "Dmin", "Dm", "d", " D Minor "):
        assert names({"key": spelling}) == ["Key_Dmin"], spelling
    assert names({"key": "D major"}) == names({"key": "D"}) == ["Key_Dmaj"]
    assert names({"key": "Eb major"}) == names({"key": "D#"}) == names({"key": "E-"}) == ["Key_Ebmaj"]
    assert names({"key": "F#m"}) == names({"key": "Gbmin"}) == ["Key_F#min"] and names({"key": "bb"}) == ["Key_Bbmin"]
    assert names({"key": "Cb"}) == ["Key_Bmaj"]
    # in CONTROL_NAMES order whatever the mapping's order; None and absent set nothing
    assert names({"pitch_range": (40, 84), "polyphony": 3.6, "density": 5.0, "key": None}) == [
        "Density_2", "Polyphony_4", "PitchLow_2", "PitchHigh_6"]
    assert names({}) == [] and names({"density": None}) == []
    edges = {0: 0, 1.99: 0, 2: 1, 7.5: 3, 8: 4, 12: 5, 23.9: 6, 24: 7, 31: 7, 32: 8, 1000: 8}
    for density, k in edges.items():
        assert names({"density": density}) == [f"Density_{k}"], density
    for polyphony, k in {1: 1, 1.49: 1, 1.5: 2, 5.4: 5, 6: 6, 17: 6}.items():
        assert names({"polyphony": polyphony}) == [f"Polyphony_{k}"], polyphony
    assert names({"pitch_range": (0, 127)}) == ["PitchLow_0", "PitchHigh_9"]  # octaves -1 and 10 clip to 0..9
    assert names({"pitch_range": [60, 60]}) == ["PitchLow_4", "PitchHigh_4"]


def test_decode_midi_drops_infill_and_control_ids(tokenizer, real_midi_paths):
    ids = tokenizer(real_midi_paths[0])["input_ids"]
    marked = [ids[0], *tokenizer.control_ids({"key": "F# minor", "density": 10}), *tokenizer.infill_ids.values(),
              *ids[1:60], tokenizer.infill_ids["bar"], *ids[60:]]
    assert notes_of(tokenizer.decode_midi(marked)) == notes_of(tokenizer.decode_midi(ids))
    assert tokenizer.grammar_errors(marked) == tokenizer.grammar_errors(ids) == 0.0


def test_token_table_is_built_once_per_vocabulary(real_midi_paths):
    tok = MusicTokenizer()
    table = tok.token_table
    assert tok.token_table is table and len(table) == len(tok)
    MusicGrammarLogitsProcessor(tok)
    tok.value_tables()
    assert tok.token_table is table  # derived tables and the grammar processor reuse it
    tok.add_special_tokens({"additional_special_tokens": ["<infill>"]})
    new_id = tok.convert_tokens_to_ids("<infill>")
    assert tok.token_table is not table and len(tok.token_table) == len(tok) == new_id + 1
    assert TOKEN_KINDS[tok.token_table.kind[new_id]] == "special" and tok.music_attributes()["pitch"][new_id] == -1
    tok.train_bpe(vocab_size=600, files=real_midi_paths)
    assert len(tok.token_table) == len(tok) == 601 and tok.token_table.length.max() > 1


def test_value_lookups_match_the_token_names(tokenizer):
    """nearest_id / token_id / time_signatures / opening_ids give what reading the token strings gives."""
    vocab = tokenizer.get_vocab()
    tempos = {float(t.split("_")[1]): i for t, i in vocab.items() if t.startswith("Tempo_")}
    for bpm in (20, 93.3, 120, 121.7, 300):
        assert tokenizer.nearest_id("Tempo", bpm) == tempos[min(tempos, key=lambda v: abs(v - bpm))]
    assert tokenizer.nearest_id("Duration", 1.0) == vocab["Duration_1.0.8"]
    assert tokenizer.token_id("Bar") == vocab["Bar_None"] and tokenizer.token_id("Position", 0) == vocab["Position_0"]
    assert tokenizer.token_id("Program", 128) == vocab["Program_-1"]
    signatures = sorted((t.split("_")[1] for t in vocab if t.startswith("TimeSig_")),
                        key=lambda ts: (int(ts.split("/")[1]), int(ts.split("/")[0])))
    assert list(tokenizer.time_signatures()) == signatures
    assert tokenizer.time_signatures()["6/8"] == vocab["TimeSig_6/8"]
    opening = ["Bar_None", "TimeSig_3/4", "Position_0", "Tempo_121.29"]
    assert tokenizer.convert_ids_to_tokens(tokenizer.opening_ids("3/4", 120)) == opening
    assert prompt_ids(tokenizer, time_signature="3/4", tempo=120) == [tokenizer.bos_token_id] + \
        tokenizer.convert_tokens_to_ids(opening)
    assert tokenizer.opening_ids() == []
    with pytest.raises(ValueError, match="13/16"):
        tokenizer.opening_ids("13/16")
    with pytest.raises(KeyError, match="NoteOn"):
        tokenizer.token_id("NoteOn", 60)
    tsd = MusicTokenizer(tokenization="TSD")  # no bars: the opening is TimeSig, Tempo
    assert tsd.convert_ids_to_tokens(tsd.opening_ids("3/4", 120)) == ["TimeSig_3/4", "Tempo_121.29"]
    structured = MusicTokenizer(tokenization="Structured")  # no tempos nor time signatures at all
    assert structured.time_signatures() == {}
    with pytest.raises(ValueError, match="no Tempo"):
        structured.opening_ids(tempo=120)


# ----- BPE -------------------------------------------------------------------------------------------------------
BPE_VOCAB_SIZE = 700


@pytest.fixture(scope="module")
def bpe_tokenizer(real_midi_paths) -> MusicTokenizer:
    tok = MusicTokenizer()
    tok.train_bpe(vocab_size=BPE_VOCAB_SIZE, files=real_midi_paths)
    return tok


def test_bpe_grows_the_vocab_and_shortens_sequences(tokenizer, bpe_tokenizer, real_midi_paths):
    assert tokenizer.vocab_size < bpe_tokenizer.vocab_size == len(bpe_tokenizer) == BPE_VOCAB_SIZE
    assert bpe_tokenizer.miditok.is_trained
    base_total = sum(len(tokenizer(p)["input_ids"]) for p in real_midi_paths)
    bpe_total = sum(len(bpe_tokenizer(p)["input_ids"]) for p in real_midi_paths)
    assert bpe_total < 0.6 * base_total
    for p in real_midi_paths:
        assert len(bpe_tokenizer(p)["input_ids"]) < len(tokenizer(p)["input_ids"])


@pytest.mark.parametrize("index", range(NUM_REAL_PIECES))
def test_bpe_decodes_to_the_same_notes(tokenizer, bpe_tokenizer, real_midi_paths, index):
    path = real_midi_paths[index]
    expected = notes_of(tokenizer.miditok.preprocess_score(Score(str(path))))
    assert notes_of(bpe_tokenizer.decode_midi(bpe_tokenizer(path)["input_ids"])) == expected


def test_bpe_token_strings_are_unique_and_encode_back(bpe_tokenizer, real_midi_paths):
    # Bar-split BPE learns "▁"-marked word-start ids with the same base tokens as plain ids (regression:
    # they used to share a string, so len(tokenizer) < vocab_size and strings did not encode back).
    tokens = bpe_tokenizer.convert_ids_to_tokens(list(range(bpe_tokenizer.vocab_size)))
    assert len(set(tokens)) == bpe_tokenizer.vocab_size
    assert any(t.startswith("▁") for t in tokens)
    ids = bpe_tokenizer(real_midi_paths[0])["input_ids"]
    assert bpe_tokenizer(bpe_tokenizer.decode(ids), add_special_tokens=False)["input_ids"] == ids


def test_bpe_attributes_derive_from_base_tokens(bpe_tokenizer):
    tables = bpe_tokenizer.music_attributes()
    assert {len(t) for t in tables.values()} == {bpe_tokenizer.vocab_size}
    learned_with_pitch = 0
    for i in range(bpe_tokenizer.vocab_size):
        base = bpe_tokenizer.base_tokens(i)
        pitches = [int(t.split("_")[1]) for t in base if t.startswith("Pitch_")]
        programs = [int(t.split("_")[1]) for t in base if t.startswith("Program_")]
        assert tables["pitch"][i] == (pitches[-1] if pitches else -1)
        assert tables["note_count"][i] == sum(t.startswith(("Pitch_", "PitchDrum_")) for t in base)
        assert tables["bar_count"][i] == base.count("Bar_None") + base.count("Infill_Bar")  # a placeholder: a bar
        assert tables["program_set"][i] == ((128 if programs[-1] == -1 else programs[-1]) if programs else -1)
        if len(base) > 1 and pitches:
            learned_with_pitch += 1
    assert learned_with_pitch > 10
    lone_marker = [i for i in range(bpe_tokenizer.vocab_size) if not bpe_tokenizer.base_tokens(i)]
    assert all(TOKEN_KINDS[tables["kind"][i]] == "other" for i in lone_marker)
    assert len(bpe_tokenizer.grammar_tables()["first_kind"]) == bpe_tokenizer.vocab_size


def test_bpe_survives_save_and_load(bpe_tokenizer, real_midi_paths, tmp_path):
    bpe_tokenizer.save_pretrained(tmp_path)
    for loaded in (MusicTokenizer.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)):
        assert loaded.miditok.is_trained and loaded.vocab_size == BPE_VOCAB_SIZE
        assert loaded.get_vocab() == bpe_tokenizer.get_vocab()
        for p in real_midi_paths:
            assert loaded(p)["input_ids"] == bpe_tokenizer(p)["input_ids"]


# ----- saving and loading ----------------------------------------------------------------------------------------
def test_save_pretrained_round_trip_through_auto_tokenizer(real_midi_paths, tmp_path):
    tokenizer = MusicTokenizer(max_file_bytes=1_000_000, max_quarter_notes=5_000)
    tokenizer.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"tokenizer_config.json", "miditok_config.json", "tokenization_music.py"} <= files
    assert "tokenizer.json" not in files
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["auto_map"]["AutoTokenizer"][0] == "tokenization_music.MusicTokenizer"
    assert config["tokenizer_class"] == "MusicTokenizer"
    for loaded in (MusicTokenizer.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)):
        assert type(loaded) is MusicTokenizer
        assert loaded.get_vocab() == tokenizer.get_vocab()
        assert (loaded.max_file_bytes, loaded.max_quarter_notes) == (1_000_000, 5_000)
        assert loaded.music_attributes() == tokenizer.music_attributes()
        for p in real_midi_paths:
            assert loaded(p)["input_ids"] == tokenizer(p)["input_ids"]


# Every constructor argument of MusicTokenizer, each set to a value other than its default (vocab_file is the saved
# vocabulary itself). A new argument must be added here, or test_every_argument_is_covered fails.
NON_DEFAULT_ARGS = {
    "special_tokens_pattern": "eos",
    "tokenization": "TSD",
    # beat ranges as tuple keys (not JSON-serialisable as given), an int-keyed dict, and other special tokens
    "miditok_config": {"num_velocities": 8, "beat_res": {(0, 4): 4, (4, 8): 2},
                       "time_signature_range": {4: [2, 3, 4], 8: [6]},
                       "special_tokens": ["PAD", "START", "END", "UNK"]},
    "max_file_bytes": 2_000_000,
    "max_quarter_notes": 20_000,
    "bos_token": "START_None",
    "eos_token": "END_None",
    "pad_token": "END_None",
    "mask_token": None,
    "unk_token": "UNK_None",  # transformers' other special tokens (unk, sep, cls) are kwargs
}
# miditok_config as kept and saved: JSON form, beat ranges as "start_end" keys as miditok's own file writes them
NON_DEFAULT_MIDITOK_CONFIG_JSON = {"num_velocities": 8, "beat_res": {"0_4": 4, "4_8": 2},
                                   "time_signature_range": {"4": [2, 3, 4], "8": [6]},
                                   "special_tokens": ["PAD", "START", "END", "UNK"]}


def _as_saved(value):
    """An init_kwargs value as tokenizer_config.json holds it (from_pretrained turns special tokens into AddedToken)."""
    return str(value) if isinstance(value, AddedToken) else value


def test_every_argument_is_covered():
    signature = inspect.signature(MusicTokenizer.__init__).parameters
    assert set(signature) - {"self", "vocab_file", "kwargs"} == set(NON_DEFAULT_ARGS) - {"unk_token"}
    assert all(NON_DEFAULT_ARGS[name] != signature[name].default for name in signature if name in NON_DEFAULT_ARGS)


def test_every_constructor_argument_survives_save_and_reload(real_midi_paths, tmp_path):
    # regression: special_tokens_pattern (popped by PythonBackend before init_kwargs is recorded) and miditok_config
    # were not saved; the pattern reverted to "bos_eos" after a reload
    tokenizer = MusicTokenizer(**NON_DEFAULT_ARGS)
    tokenizer.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert saved["miditok_config"] == NON_DEFAULT_MIDITOK_CONFIG_JSON
    for loaded in (MusicTokenizer.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)):
        assert type(loaded) is MusicTokenizer
        for name, value in NON_DEFAULT_ARGS.items():
            if name == "miditok_config":
                value = NON_DEFAULT_MIDITOK_CONFIG_JSON
            assert getattr(loaded, name) == getattr(tokenizer, name) == value, name
            assert _as_saved(loaded.init_kwargs[name]) == _as_saved(tokenizer.init_kwargs[name]) == value, name
        assert type(loaded.miditok) is miditok.TSD
        assert loaded.miditok.config == tokenizer.miditok.config
        assert loaded.miditok.config.num_velocities == 8 and loaded.miditok.config.beat_res == {(0, 4): 4, (4, 8): 2}
        assert loaded.get_vocab() == tokenizer.get_vocab()
        assert loaded.all_special_tokens == tokenizer.all_special_tokens == ["START_None", "END_None", "UNK_None"]
        for path in real_midi_paths[:3]:
            ids = loaded(path)["input_ids"]
            assert ids == tokenizer(path)["input_ids"]
            assert ids[-1] == loaded.eos_token_id and ids[0] != loaded.bos_token_id  # the "eos" pattern
        pair = real_midi_paths[:2]
        assert loaded(pair, padding=True)["input_ids"] == tokenizer(pair, padding=True)["input_ids"]


@pytest.mark.parametrize("pattern", ["eos", "bos", "none"])
def test_special_tokens_pattern_survives_save_and_reload(pattern, real_midi_paths, tmp_path):
    tokenizer = MusicTokenizer(special_tokens_pattern=pattern)
    tokenizer.save_pretrained(tmp_path)
    body = tokenizer.encode_score(real_midi_paths[0])
    expected = {"eos": body + [tokenizer.eos_token_id], "bos": [tokenizer.bos_token_id] + body, "none": body}[pattern]
    for loaded in (MusicTokenizer.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)):
        assert loaded.special_tokens_pattern == pattern
        assert loaded(real_midi_paths[0])["input_ids"] == tokenizer(real_midi_paths[0])["input_ids"] == expected


def test_miditok_config_in_python_or_json_form_builds_the_same_vocabulary():
    python_form = MusicTokenizer(miditok_config=NON_DEFAULT_ARGS["miditok_config"])
    json_form = MusicTokenizer(miditok_config=NON_DEFAULT_MIDITOK_CONFIG_JSON)
    assert python_form.miditok.config == json_form.miditok.config
    assert python_form.get_vocab() == json_form.get_vocab() != MusicTokenizer().get_vocab()
    assert python_form.miditok_config == json_form.miditok_config == NON_DEFAULT_MIDITOK_CONFIG_JSON


def test_vocab_file_follows_transformers_naming(tmp_path):
    assert MusicTokenizer.vocab_files_names == {"vocab_file": "miditok_config.json"}
    tokenizer = MusicTokenizer(miditok_config={"num_velocities": 4})
    tokenizer.save_pretrained(tmp_path)
    vocab_file = tmp_path / "miditok_config.json"
    for loaded in (MusicTokenizer(vocab_file=vocab_file), MusicTokenizer(miditok_file=str(vocab_file))):  # old name
        assert loaded.miditok.config == tokenizer.miditok.config
        assert loaded.get_vocab() == tokenizer.get_vocab() != MusicTokenizer().get_vocab()
        assert "miditok_file" not in loaded.init_kwargs  # the alias is not saved again


def test_a_folder_saved_by_the_old_code_still_loads(real_midi_paths, tmp_path):
    # tokenizer_config.json as the code before vocab_file wrote it (no special_tokens_pattern, no miditok_config),
    # with an old "miditok_file" entry as well: the folder's own miditok_config.json is used, the entry dropped
    old = MusicTokenizer(max_file_bytes=1_000_000)
    old.miditok.save(tmp_path / "miditok_config.json")
    added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                      "special": True} for i, t in enumerate(["PAD_None", "BOS_None", "EOS_None", "MASK_None"])}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "added_tokens_decoder": added, "backend": "custom", "bos_token": "BOS_None", "eos_token": "EOS_None",
        "mask_token": "MASK_None", "max_file_bytes": 1_000_000, "max_quarter_notes": 100_000, "pad_token": "PAD_None",
        "model_max_length": 1000000000000000019884624838656, "tokenization": "REMI",
        "tokenizer_class": "MusicTokenizer", "miditok_file": "/nowhere/miditok_config.json"}))
    for loaded in (MusicTokenizer.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)):
        assert loaded.special_tokens_pattern == "bos_eos" and loaded.max_file_bytes == 1_000_000
        assert loaded.get_vocab() == old.get_vocab()
        assert loaded(real_midi_paths[0])["input_ids"] == old(real_midi_paths[0])["input_ids"]
        resaved = tmp_path / "resaved"
        loaded.save_pretrained(resaved)
        assert "miditok_file" not in json.loads((resaved / "tokenizer_config.json").read_text())


def test_a_miditok_file_path_in_a_loaded_config_is_not_followed(tmp_path):
    # as transformers trusts no vocab-file path in tokenizer_config.json: the alias works when passed directly only
    elsewhere = tmp_path / "elsewhere"
    other = MusicTokenizer(miditok_config={"num_velocities": 4})
    other.save_pretrained(elsewhere)
    folder = tmp_path / "folder"
    MusicTokenizer().save_pretrained(folder)
    (folder / "miditok_config.json").unlink()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["miditok_file"] = str(elsewhere / "miditok_config.json")
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert MusicTokenizer.from_pretrained(folder).get_vocab() != other.get_vocab()
    assert MusicTokenizer(miditok_file=config["miditok_file"]).get_vocab() == other.get_vocab()


def test_trust_remote_code_loads_without_the_package(tokenizer, real_midi_paths, tmp_path):
    saved = tmp_path / "saved"
    tokenizer.save_pretrained(saved)
    expected = tokenizer(real_midi_paths[2])["input_ids"]
    script = textwrap.dedent(f"""
        import json, sys
        sys.modules["music_hf"] = None  # even an editable install cannot provide it now
        try:
            import music_hf
        except ImportError:
            pass
        else:
            raise SystemExit("music_hf is importable: the test would prove nothing")
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained({str(saved)!r}, trust_remote_code=True)
        assert type(tok).__module__.startswith("transformers_modules."), type(tok).__module__
        assert not any(m == "music_hf" or m.startswith("music_hf.") for m, v in sys.modules.items() if v)
        print(json.dumps(tok({str(real_midi_paths[2])!r})["input_ids"]))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), TRANSFORMERS_VERBOSITY="error")
    result = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected


# ----- bad input -------------------------------------------------------------------------------------------------
def test_error_classes():
    assert issubclass(MusicFileError, ValueError) and issubclass(EmptyMusicError, MusicFileError)


def _bad_files(real: bytes) -> dict[str, tuple[bytes, str]]:
    """name -> (file content, what the error message says)."""
    middle = len(real) // 2
    return {
        "empty": (b"", "empty file"),
        "truncated_in_header": (real[:10], "corrupt or truncated MIDI"),
        "truncated_in_track": (real[:100], "corrupt or truncated MIDI"),
        "truncated_by_one_byte": (real[:-1], "corrupt or truncated MIDI"),
        "corrupt_middle": (real[:middle] + b"\xff" * 64 + real[middle + 64:], "corrupt or truncated MIDI"),
        "png": (b"\x89PNG\r\n\x1a\n" + bytes(64), "not a MIDI file"),
        "text": (b"just some text, not music\n", "not a MIDI file"),
        "zero_ticks_per_quarter": (two_note_midi(tpq=0, gap=100), "invalid time division"),
        "smpte_time_division": (two_note_midi(tpq=0xE250, gap=100), "corrupt or truncated MIDI"),
        "event_at_tick_2_28": (two_note_midi(tpq=8, gap=0x0FFFFFFF), "too long"),
    }


@pytest.mark.parametrize("case", list(_bad_files(b"MThd" + bytes(200))))
def test_bad_file_raises_music_file_error_naming_file_and_problem(tokenizer, real_midi_bytes, tmp_path, case):
    content, problem = _bad_files(real_midi_bytes[0])[case]
    path = tmp_path / f"{case}.mid"
    path.write_bytes(content)
    with pytest.raises(MusicFileError) as info:
        tokenizer(path)
    assert str(path) in str(info.value) and problem in str(info.value)
    assert info.value.source == str(path) and not isinstance(info.value, EmptyMusicError)
    with pytest.raises(MusicFileError, match=f"<bytes>: .*{problem}"):
        tokenizer(content)


def test_a_file_cut_after_its_header_is_empty(tokenizer, real_midi_bytes, tmp_path):
    path = tmp_path / "header_only.mid"
    path.write_bytes(real_midi_bytes[0][:14])  # MThd chunk, no track
    with pytest.raises(EmptyMusicError, match="header_only.mid: no notes"):
        tokenizer(path)


def test_midi_without_notes_is_empty(tokenizer, tmp_path):
    path = tmp_path / "silence.mid"
    score = Score(480)
    score.tracks.append(Track(program=0))
    score.dump_midi(str(path))
    with pytest.raises(EmptyMusicError, match="silence.mid: no notes"):
        tokenizer(path)


def test_notes_outside_the_pitch_range_leave_nothing(tokenizer, tmp_path):
    path = tmp_path / "too_low.mid"
    one_track_score([(0, 480, 5), (480, 480, 10)]).dump_midi(str(path))  # piano range is 21-108
    with pytest.raises(EmptyMusicError, match="outside the tokenizer's range"):
        tokenizer(path)


def test_missing_path(tokenizer, tmp_path):
    with pytest.raises(MusicFileError, match="nowhere.mid: no such file"):
        tokenizer(tmp_path / "nowhere.mid")


def test_file_over_max_file_bytes(real_midi_paths):
    small = MusicTokenizer(max_file_bytes=100)
    with pytest.raises(MusicFileError, match=f"{real_midi_paths[0].name}: too large"):
        small(real_midi_paths[0])
    with pytest.raises(MusicFileError, match="<bytes>: too large"):
        small(real_midi_paths[0].read_bytes())


def test_piece_over_max_quarter_notes(real_midi_paths):
    assert MusicTokenizer(max_quarter_notes=10_000)(real_midi_paths[2])["input_ids"]
    with pytest.raises(MusicFileError, match="too long"):
        MusicTokenizer(max_quarter_notes=10)(real_midi_paths[2])


def test_batch_error_names_the_bad_file(tokenizer, real_midi_paths, tmp_path):
    bad = tmp_path / "bad_in_batch.mid"
    bad.write_bytes(b"not midi")
    with pytest.raises(MusicFileError) as info:
        tokenizer([real_midi_paths[0], bad, real_midi_paths[1]], padding=True)
    assert info.value.source == str(bad) and "not a MIDI file" in str(info.value)


def test_drums_only_encode_as_pitch_drum_with_program_128(tokenizer, tmp_path):
    path = tmp_path / "drums.mid"
    pattern = [(i * 240, 120, (36, 38, 42, 46)[i % 4]) for i in range(16)]
    one_track_score(pattern, drums=True).dump_midi(str(path))
    ids = tokenizer(path)["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert "Program_-1" in tokens and not any(t.startswith("Pitch_") for t in tokens)
    assert sum(t.startswith("PitchDrum_") for t in tokens) == 16
    tables = tokenizer.music_attributes()
    assert {tables["program_set"][i] for i in ids if tables["program_set"][i] != -1} == {128}
    assert sum(tables["note_count"][i] for i in ids) == 16
    decoded = tokenizer.decode_midi(ids)
    assert [t.is_drum for t in decoded.tracks] == [True]
    assert notes_of(decoded) == notes_of(tokenizer.miditok.preprocess_score(Score(str(path))))


@pytest.mark.parametrize(("time_sig", "kept"), [
    ((7, 8), True), ((5, 4), True), ((3, 8), True), ((7, 4), True),
    # not in the vocabulary's time_signature_range: miditok replaces them with 4/4, keeping every note
    ((13, 16), False), ((11, 8), False),
])
def test_unusual_time_signatures(tokenizer, tmp_path, time_sig, kept):
    path = tmp_path / f"ts_{time_sig[0]}_{time_sig[1]}.mid"
    one_track_score([(i * 240, 240, 60 + i % 12) for i in range(32)], time_sig=time_sig).dump_midi(str(path))
    ids = tokenizer(path)["input_ids"]
    signatures = {t for t in tokenizer.convert_ids_to_tokens(ids) if t.startswith("TimeSig_")}
    assert signatures == {f"TimeSig_{time_sig[0]}/{time_sig[1]}" if kept else "TimeSig_4/4"}
    decoded = tokenizer.decode_midi(ids)
    assert notes_of(decoded) == notes_of(tokenizer.miditok.preprocess_score(Score(str(path))))
    assert decoded.note_num() == 32


# ----- fuzzing ---------------------------------------------------------------------------------------------------
INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0x81, 0x90, 0x9F, 0xB0, 0xC0, 0xE0, 0xF0, 0xF7, 0xFF, 0x2F, 0x51, 0x58)


def apply_mutations(data: bytes, ops: list[tuple], corpus: list[bytes]) -> bytes:
    """Apply byte-level mutations: ("set", pos, byte), ("truncate", pos), ("insert", pos, bytes),
    ("delete", pos, n), ("splice", pos, source_start, source_index, n) with another corpus file."""
    d = bytearray(data)
    for op in ops:
        kind, pos = op[0], op[1] % (len(d) + 1)
        if kind == "set" and d:
            d[op[1] % len(d)] = op[2]
        elif kind == "truncate":
            del d[pos:]
        elif kind == "insert":
            d[pos:pos] = op[2]
        elif kind == "delete":
            del d[pos:pos + op[2]]
        elif kind == "splice":
            other = corpus[op[3] % len(corpus)]
            start = op[2] % len(other)
            d[pos:pos + op[4]] = other[start:start + op[4]]
    return bytes(d)


def random_ops(rng: random.Random) -> list[tuple]:
    """The slow fuzz's mutations: mostly byte sets (they keep chunk lengths, so parsing goes deep)."""
    ops = []
    for _ in range(rng.randint(1, 8)):
        kind = rng.choice(("set", "set", "set", "set", "truncate", "insert", "delete", "splice"))
        pos = rng.randrange(2**31) if rng.random() < 0.9 else rng.randrange(32)  # sometimes the header
        if kind == "set":
            ops.append((kind, pos, rng.choice(INTERESTING_BYTES) if rng.random() < 0.5 else rng.randrange(256)))
        elif kind == "truncate":
            ops.append((kind, pos))
        elif kind == "insert":
            ops.append((kind, pos, rng.randbytes(rng.randint(1, 16))))
        elif kind == "delete":
            ops.append((kind, pos, rng.randint(1, 64)))
        else:
            ops.append((kind, pos, rng.randrange(2**31), rng.randrange(2**31), rng.randint(1, 512)))
    return ops


positions = st.one_of(st.integers(0, 31), st.integers(0, 2**31))
mutation = st.one_of(
    st.tuples(st.just("set"), positions, st.one_of(st.sampled_from(INTERESTING_BYTES), st.integers(0, 255))),
    st.tuples(st.just("truncate"), positions),
    st.tuples(st.just("insert"), positions, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), positions, st.integers(1, 64)),
    st.tuples(st.just("splice"), positions, st.integers(0, 2**31), st.integers(0, 2**31), st.integers(1, 512)),
)


def check_tokenizer_on(tokenizer: MusicTokenizer, data: bytes) -> None:
    """The fuzz contract: success with sane ids, or MusicFileError (EmptyMusicError included), nothing else."""
    try:
        ids = tokenizer(data)["input_ids"]
    except MusicFileError as e:
        assert e.source == "<bytes>" and e.problem
        return
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    tokenizer.decode_midi(ids)


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                                     HealthCheck.too_slow])
@given(source=st.integers(0, NUM_REAL_PIECES - 1), ops=st.lists(mutation, min_size=1, max_size=6))
def test_fuzz_mutated_midi_raises_only_music_file_errors(tokenizer, real_midi_bytes, source, ops):
    check_tokenizer_on(tokenizer, apply_mutations(real_midi_bytes[source], ops, real_midi_bytes))


@pytest.mark.slow
def test_fuzz_many_mutations_in_a_subprocess(real_midi_paths, tmp_path):
    """20,000 mutated files in a child process, so a crash in symusic's C++ (a segfault) fails this test
    instead of killing pytest; the input being read is saved first, so a crash leaves its culprit behind."""
    script = textwrap.dedent(f"""
        import random, sys, time
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_tokenizer import apply_mutations, check_tokenizer_on, random_ops
        from music_hf import MusicTokenizer
        corpus = [Path(p).read_bytes() for p in {[str(p) for p in real_midi_paths]!r}]
        tokenizer, rng, slowest = MusicTokenizer(), random.Random(1234), 0.0
        for i in range(20_000):
            data = apply_mutations(rng.choice(corpus), random_ops(rng), corpus)
            Path({str(tmp_path / "current.mid")!r}).write_bytes(data)
            start = time.perf_counter()
            check_tokenizer_on(tokenizer, data)
            slowest = max(slowest, time.perf_counter() - start)
        print("slowest", slowest)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, (f"fuzz child exited with {result.returncode}; input being read is kept at "
                                    f"{tmp_path / 'current.mid'}\n{result.stderr[-3000:]}")
    slowest = float(result.stdout.split("slowest")[-1])
    assert slowest < 10.0, f"one mutated file took {slowest:.1f} s to tokenize"


def test_special_tokens_around_a_sequence_are_transformers_own(real_midi_paths):
    """MusicTokenizer keeps the BOS/EOS ids of the "bos_eos" layout instead of resolving them at each use; every
    layout, a changed BOS or EOS and an unset one must give what transformers' generic hook gives."""
    from transformers.tokenization_python import PythonBackend

    def generic(tok, a, b=None):
        return PythonBackend.build_inputs_with_special_tokens(tok, a, b)

    tokenizer = MusicTokenizer()
    body = tokenizer.encode_score(real_midi_paths[0])
    for pattern in ("bos_eos", "eos", "bos", "none", "bos_eos"):
        tokenizer.special_tokens_pattern = pattern
        for a, b in ((body, None), (body, body[:7]), ([], None), ([], [])):
            assert tokenizer.build_inputs_with_special_tokens(a, b) == generic(tokenizer, a, b)
        assert tokenizer.num_special_tokens_to_add() == len(generic(tokenizer, []))
        assert tokenizer(real_midi_paths[0])["input_ids"] == generic(tokenizer, body)
    first = tokenizer(real_midi_paths[0])["input_ids"]
    assert first[0] == tokenizer.bos_token_id and first[-1] == tokenizer.eos_token_id
    tokenizer.bos_token = tokenizer.mask_token  # another token: the kept ids follow it
    assert tokenizer(real_midi_paths[0])["input_ids"] == [tokenizer.mask_token_id, *body, tokenizer.eos_token_id]
    tokenizer.eos_token = None  # unset: transformers' own rule (its id is None there)
    assert tokenizer.build_inputs_with_special_tokens(body) == generic(tokenizer, body)
