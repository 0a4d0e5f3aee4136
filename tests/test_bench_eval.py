"""Tests for issue 7: the metrics of music_hf.evaluation on real music21 pieces, the report helpers, and smoke runs
of scripts/bench.py and scripts/evaluate.py (`--quick`, subprocesses) whose reports must hold every section and row
with finite numbers, and ratios that follow from the measured values. Issue 12: the measures of composition with
control (control adherence against chance, infilling NLL and constraints, accompaniment) on a tiny untrained model
and real pieces: computed, consistent with their definitions, and within their bounds."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import symusic

from music_hf import MusicConfig, MusicForCausalLM
from music_hf.evaluation import (ACCOMPANIMENT_PROGRAMS, CONTROL_BINS, accompaniment_quality, classification_scores,
                                 classify_genres, composition_measure, composition_unsupported, control_adherence,
                                 control_bin, fmt, grammar_error_rate, histogram_distance, infill_quality,
                                 notes_per_bar, pitch_class_histogram, pooled_pitch_class_histogram,
                                 train_genre_classifier, update_markdown_section)
from music_hf.generation import cut_bars
from music_hf.quality import composition_quality, composition_section
from music_hf.reports import Report
from music_hf.tokenization_music import CONTROL_NAMES, REPETITION_EDGES, MusicTokenizer

REPO = Path(__file__).resolve().parents[1]
C_MAJOR_CHORALE = "bach/bwv130.6"  # music21's key analysis: C major, no accidentals in the key signature
DIATONIC_C = {0, 2, 4, 5, 7, 9, 11}
SMOKE_TIMEOUT = 300  # each smoke run takes well under 90 s on 2 idle cores; the limit leaves room for a busy CI


@pytest.fixture(scope="module")
def c_major_chorale(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from music21 import corpus

    path = tmp_path_factory.mktemp("chorale") / "bwv130.6.mid"
    corpus.parse(C_MAJOR_CHORALE).write("midi", fp=str(path))
    return path


# ----- pitch classes ---------------------------------------------------------------------------------------
def test_pitch_class_histogram_of_a_c_major_chorale_peaks_on_the_c_major_scale(c_major_chorale):
    hist = pitch_class_histogram(c_major_chorale)
    assert hist.shape == (12,) and hist.sum() == pytest.approx(1.0)
    assert set(np.argsort(hist)[-7:].tolist()) == DIATONIC_C
    assert int(np.argmax(hist)) == 0  # the tonic C is the most frequent pitch class
    assert hist[[1, 3, 6, 8, 10]].sum() < 0.05  # chromatic notes are rare
    # the counts are the notes of the file (drums excluded; there are none)
    score = symusic.Score(str(c_major_chorale))
    counts = pitch_class_histogram(score, normalize=False)
    assert counts.sum() == score.note_num()


def test_pitch_class_histogram_follows_transposition_and_skips_drums(c_major_chorale):
    score = symusic.Score(str(c_major_chorale))
    hist = pitch_class_histogram(score)
    np.testing.assert_allclose(pitch_class_histogram(score.shift_pitch(2)), np.roll(hist, 2))
    drums = score.copy()
    for track in drums.tracks:
        track.is_drum = True
    assert pitch_class_histogram(drums).sum() == 0.0


def test_distance_of_a_piece_to_itself_is_zero_and_grows_with_transposition(c_major_chorale):
    score = symusic.Score(str(c_major_chorale))
    hist = pitch_class_histogram(score)
    for metric in ("js", "l1"):
        assert histogram_distance(hist, hist, metric) == pytest.approx(0.0, abs=1e-12)
        assert histogram_distance(hist * 7, hist, metric) == pytest.approx(0.0, abs=1e-12)  # normalized first
    fifth, tritone = (pitch_class_histogram(score.shift_pitch(k)) for k in (7, 6))
    # a fifth away shares six of seven scale degrees, a tritone only two: the profiles say so
    assert 0 < histogram_distance(hist, fifth) < histogram_distance(hist, tritone) <= 1.0
    assert histogram_distance(hist, fifth) == pytest.approx(histogram_distance(fifth, hist))
    assert histogram_distance(np.eye(12)[0], np.eye(12)[1]) == pytest.approx(1.0)  # disjoint: 1 bit
    assert histogram_distance(np.eye(12)[0], np.eye(12)[1], "l1") == pytest.approx(2.0)
    assert math.isnan(histogram_distance(np.zeros(12), hist))
    with pytest.raises(ValueError, match="metric"):
        histogram_distance(hist, hist, "cosine")


def test_pooled_histogram_of_token_ids_counts_the_decoded_notes(tokenizer, real_midi_paths):
    ids = [tokenizer.encode_score(p) for p in real_midi_paths[:3]]
    pooled = pooled_pitch_class_histogram(ids, tokenizer)
    expected = sum(pitch_class_histogram(tokenizer.decode_midi(x), normalize=False) for x in ids)
    np.testing.assert_array_equal(pooled, expected)
    assert pooled.sum() > 100


# ----- note density and grammar ----------------------------------------------------------------------------
def test_notes_per_bar_counts_note_and_bar_tokens(tokenizer, real_midi_paths):
    for path in real_midi_paths:
        ids = tokenizer.encode_score(path)
        tokens = tokenizer.convert_ids_to_tokens(ids)
        notes = sum(t.startswith(("Pitch_", "PitchDrum_")) for t in tokens)
        bars = sum(t == "Bar_None" for t in tokens)
        assert notes_per_bar(ids, tokenizer) == pytest.approx(notes / bars)
    assert math.isnan(notes_per_bar([tokenizer.bos_token_id], tokenizer))


def test_notes_per_bar_is_the_same_with_bpe(real_midi_paths, tmp_path):
    plain = MusicTokenizer()
    bpe = MusicTokenizer()
    bpe.train_bpe(len(plain) + 60, real_midi_paths)
    for path in real_midi_paths[:3]:
        short = bpe.encode_score(path)
        assert len(short) < len(plain.encode_score(path))  # merged ids hold several notes or bars
        assert notes_per_bar(short, bpe) == pytest.approx(notes_per_bar(plain.encode_score(path), plain))


def test_grammar_error_rate_is_zero_on_real_pieces_and_counts_misplaced_tokens(tokenizer, real_midi_paths):
    pieces = [[tokenizer.bos_token_id] + tokenizer.encode_score(p) + [tokenizer.eos_token_id]
              for p in real_midi_paths]
    assert grammar_error_rate(pieces, tokenizer) == 0.0
    # a PAD in the middle of a piece cannot be decoded: one error among its tokens
    body = pieces[0][1:-1]
    padded = body[:20] + [tokenizer.pad_token_id] + body[20:]
    assert grammar_error_rate([padded], tokenizer) == pytest.approx(1 / len(padded))
    # token-weighted over sequences
    assert grammar_error_rate([padded, body], tokenizer) == pytest.approx(1 / (len(padded) + len(body)))
    shuffled = list(np.random.default_rng(0).permutation(body))
    assert grammar_error_rate([shuffled], tokenizer) > 0.1
    assert math.isnan(grammar_error_rate([[tokenizer.bos_token_id]], tokenizer))


# ----- genre classifier ------------------------------------------------------------------------------------
def test_genre_classifier_learns_to_tell_two_real_pieces_apart(tokenizer, real_midi_paths):
    chorale = tokenizer.encode_score(real_midi_paths[0])  # bach/bwv66.6
    reel = tokenizer.encode_score(real_midi_paths[5])  # ryansMammoth/7thRegimentReel
    windows = datasets.Dataset.from_dict({
        "input_ids": [chorale[i: i + 64] for i in range(0, 256, 64)] + [reel[i: i + 64] for i in range(0, 256, 64)]
        + [chorale[:64]],
        "genre_id": [1] * 4 + [2] * 4 + [0],  # the unknown-genre window is left out
    })
    genres = ["unknown", "chorale", "fiddle tune"]
    model = train_genre_classifier(windows, tokenizer, genres, steps=40, batch_size=8, hidden_size=32,
                                   num_hidden_layers=1, max_length=64)
    assert model.config.id2label == {0: "chorale", 1: "fiddle tune"} and not model.config.use_genre_embedding
    predicted = classify_genres(model, windows["input_ids"][:8], tokenizer.pad_token_id, batch_size=3)
    assert predicted == [1] * 4 + [2] * 4
    with pytest.raises(ValueError, match="at least two genres"):
        train_genre_classifier(windows.select(range(4)), tokenizer, genres, steps=1)


def test_genre_classifier_trains_on_windows_augmented_as_the_generator_was(tokenizer, real_midi_paths, tmp_path):
    """With an augmenter, every drawn window goes through it, each with its own seeded generator (the draws of
    one run are reproducible, and differ from each other); `trained_augmentation` reads a model folder's."""
    from music_hf.data import AugmentationConfig, TokenAugmenter
    from music_hf.quality import trained_augmentation

    seen = []

    class Spy(TokenAugmenter):
        def __call__(self, ids, rng):
            out = super().__call__(ids, rng)
            seen.append((list(ids), out, rng.bit_generator.state["state"]["state"]))
            return out

    chorale = tokenizer.encode_score(real_midi_paths[0])
    reel = tokenizer.encode_score(real_midi_paths[5])
    windows = datasets.Dataset.from_dict({"input_ids": [chorale[:64], chorale[64:128], reel[:64], reel[64:128]],
                                          "genre_id": [1, 1, 2, 2]})
    aug = AugmentationConfig(pitch_shift=5, velocity_dynamics=1.0, program_reassign=1.0)
    train_genre_classifier(windows, tokenizer, ["unknown", "chorale", "fiddle tune"], steps=3, batch_size=4,
                           hidden_size=16, num_hidden_layers=1, max_length=64, augmenter=Spy(tokenizer, aug))
    assert len(seen) == 12 and all(ids in windows["input_ids"] for ids, _, _ in seen)
    assert sum(out != ids for ids, out, _ in seen) >= 11  # augmented (a draw may shift by 0 and keep a program)
    assert len({state for _, _, state in seen}) == 12  # a generator per draw
    results = {"config": {"pitch_shift": 5, "velocity_dynamics": 1.0, "program_reassign": 1.0, "no_such_key": 1}}
    (tmp_path / "training_results.json").write_text(json.dumps(results))
    assert trained_augmentation(tmp_path) == aug
    (tmp_path / "training_results.json").write_text(json.dumps({"config": {"pitch_shift": 0}}))
    assert trained_augmentation(tmp_path) is None and trained_augmentation(tmp_path / "absent") is None


def test_classification_scores_against_chance():
    scores = classification_scores([1, 1, 1, 2, 1, 3], [1, 1, 1, 2, 2, 3])
    assert scores["accuracy"] == pytest.approx(5 / 6)
    assert scores["recall"] == {1: 1.0, 2: 0.5, 3: 1.0}
    assert scores["balanced_accuracy"] == pytest.approx(2.5 / 3)
    assert scores["uniform_chance"] == pytest.approx(1 / 3) and scores["majority_rate"] == pytest.approx(0.5)
    assert classification_scores([], [])["n"] == 0


# ----- composition with control ----------------------------------------------------------------------------
SAMPLING = {"temperature": 1.0, "top_p": 0.95, "top_k": 0}


@pytest.fixture(scope="module")
def one_thread():
    """A tiny model's decoding step gains nothing from intra-op threads (5-30x slower on a busy 2-core machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(tok: MusicTokenizer) -> MusicForCausalLM:
    import torch

    torch.manual_seed(0)
    return MusicForCausalLM(MusicConfig.from_tokenizer(tok, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                       intermediate_size=64, max_position_embeddings=256)).eval()


@pytest.fixture(scope="module")
def references(real_midi_paths) -> list[list[int]]:
    """Held-out stand-ins: the first 8 bars of each real piece, as the test split holds them (BOS ... EOS)."""
    tok = MusicTokenizer()
    return [[tok.bos_token_id] + cut_bars(tok, tok.encode_score(p), 8) + [tok.eos_token_id] for p in real_midi_paths]


def test_control_bins_match_values_in_the_same_token_bin(tokenizer):
    assert control_bin(tokenizer, "key", "D minor") == control_bin(tokenizer, "key", "Dmin") \
        != control_bin(tokenizer, "key", "D major")
    assert control_bin(tokenizer, "density", 4.0) == control_bin(tokenizer, "density", 5.9) \
        != control_bin(tokenizer, "density", 6.0)
    assert control_bin(tokenizer, "polyphony", 1.2) == control_bin(tokenizer, "polyphony", 1.0)
    assert control_bin(tokenizer, "pitch_range", (60, 72)) == control_bin(tokenizer, "pitch_range", (71, 83)) \
        != control_bin(tokenizer, "pitch_range", (59, 83))
    assert control_bin(tokenizer, "repetition", 0.0) == control_bin(tokenizer, "repetition", 0.04) \
        != control_bin(tokenizer, "repetition", 0.05)
    assert control_bin(tokenizer, "key", None) is None
    assert CONTROL_BINS["key"] == 24 and CONTROL_BINS["polyphony"] == 6 and CONTROL_BINS["pitch_range"] == 55
    assert CONTROL_BINS["repetition"] == 4


def test_composition_measure_counts_density_over_the_bars_before_the_last(tokenizer, real_midi_paths):
    ids = cut_bars(tokenizer, tokenizer.encode_score(real_midi_paths[0]), 6)
    cut = ids[: len(cut_bars(tokenizer, ids, 5)) + 3]  # five whole bars and the start of a sixth
    assert composition_measure(tokenizer, cut)["density"] == pytest.approx(notes_per_bar(cut_bars(tokenizer, ids, 5),
                                                                                          tokenizer))
    # the repetition too (a cut last bar is rarely a whole repeat)
    fiddle = tokenizer.encode_score(real_midi_paths[5])  # a reel: its bars repeat
    reel = fiddle[: len(cut_bars(tokenizer, fiddle, 12)) + 6]
    measured = composition_measure(tokenizer, reel)["repetition"]
    assert measured == tokenizer.measure_controls(cut_bars(tokenizer, fiddle, 12))["repetition"] > 0
    whole = tokenizer.measure_controls(cut)
    assert {k: v for k, v in composition_measure(tokenizer, cut).items() if k not in ("density", "repetition")} == \
        {k: v for k, v in whole.items() if k not in ("density", "repetition")}


def test_control_adherence_is_measured_with_and_without_guidance_against_chance(references, one_thread):
    tok = MusicTokenizer()
    model = tiny_model(tok)
    r = control_adherence(model, tok, references, samples=3, max_new_tokens=40, guidance_scale=2.0, seed=0, **SAMPLING)
    assert r["references"] == len(references) and r["guidance_scale"] == 2.0 and list(r["controls"]) == \
        list(CONTROL_NAMES)
    openings = [composition_measure(tok, ref[1:-1][:40]) for ref in references]
    for name, e in r["controls"].items():
        values = [m[name] for m in openings if m[name] is not None]
        # the requests are the held-out openings' own values, in turn (timing: both styles in turn; repetition: its
        # bins in turn, each by its lower edge)
        requested = (["score", "performed", "score"] if name == "timing" else list(REPETITION_EDGES[:3])
                     if name == "repetition" else values[:3])
        assert e["n"] == 3 and [p["requested"] for p in e["pieces"]] == requested
        bins = [control_bin(tok, name, v) for v in values]
        asked = [control_bin(tok, name, v) for v in requested]
        assert e["chance"] == pytest.approx(np.mean([np.mean([b == a for b in bins]) for a in asked]))
        assert 0 < e["chance"] <= 1 and e["uniform_chance"] == pytest.approx(1 / CONTROL_BINS[name])
        for mode in ("unguided", "guided"):
            # the share is the pieces' own: their measured value in the requested bin
            hits = [control_bin(tok, name, p[mode]) == control_bin(tok, name, p["requested"]) for p in e["pieces"]]
            assert e["adherence"][mode] == pytest.approx(np.mean(hits)) and 0 <= e["adherence"][mode] <= 1
            assert all(p[mode] is not None for p in e["pieces"]), (name, mode)  # every piece has notes
    assert r["controls"]["key"]["uniform_chance"] == pytest.approx(1 / 24)
    # one piece as the whole held-out set: every request is in its own bin, chance 1
    same = control_adherence(model, tok, references[:1], samples=2, max_new_tokens=24, guidance_scale=None, **SAMPLING)
    assert same["guidance_scale"] is None
    own = composition_measure(tok, references[0][1:-1][:24])["repetition"]
    own_bin = control_bin(tok, "repetition", own)
    chances = {"timing": 0.5,  # "performed", asked second, is not the piece's
               "repetition": np.mean([control_bin(tok, "repetition", v) == own_bin for v in REPETITION_EDGES[:2]])}
    assert all(e["chance"] == chances.get(name, 1.0) and set(e["adherence"]) == {"unguided"}
               for name, e in same["controls"].items())


def test_paired_comparison_ratio_bootstrap_interval_and_sign_test():
    from music_hf.evaluation import paired_comparison

    def case(fim, left, fim_bars=0.0, left_bars=0.0):
        return {"nll_fim": fim, "nll_left": left, "nll_fim_bar_tokens": fim_bars, "nll_left_bar_tokens": left_bars}

    # both sides lower in every one of 10 gaps: ratio 0.9, an interval around it, p = 1 / 2^10
    cases = [case(9.0 + 0.1 * i, 10.0 + 0.1 * i * 10 / 9, 1.0, 0.5) for i in range(10)]
    r = paired_comparison(cases, seed=0)
    assert r["ratio"] == pytest.approx(sum(c["nll_fim"] for c in cases) / sum(c["nll_left"] for c in cases))
    assert r["ratio_ci"][0] <= r["ratio"] <= r["ratio_ci"][1] < 1
    assert r["ratio_music"] == pytest.approx(sum(c["nll_fim"] - 1.0 for c in cases)
                                             / sum(c["nll_left"] - 0.5 for c in cases))
    assert r["sign_p"] == pytest.approx(1 / 2 ** 10)
    # a coin flip: half the gaps each way, the interval spans 1, p about one half or more; ties count against
    mixed = [case(9.0, 10.0), case(10.0, 9.0)] * 5 + [case(5.0, 5.0)]
    r = paired_comparison(mixed, seed=0)
    assert r["ratio_ci"][0] < 1 < r["ratio_ci"][1] and r["sign_p"] > 0.5
    assert paired_comparison(mixed, seed=0) == r  # seeded
    assert math.isnan(paired_comparison([])["ratio"])


def test_infill_quality_nll_both_sides_vs_left_side_exact_bars_and_no_grammar_errors(references, one_thread):
    import torch

    tok = MusicTokenizer()
    model = tiny_model(tok)
    r = infill_quality(model, tok, references, samples=4, seed=0, **SAMPLING)
    # the first chorale's bars are long (four voices): fewer than three of them fit 256 positions with a gap's tokens
    assert r["n"] == 4 and r["skipped"] == 1 and not r["failures"]
    assert [c["reference"] for c in r["cases"]] == [1, 2, 3, 4]
    assert r["exact_bars"] == 1.0 and r["grammar_error_rate"] == 0.0
    assert r["tokens"] == sum(c["tokens"] for c in r["cases"]) > 0
    for key in ("nll_fim", "nll_left"):
        assert r[key] == pytest.approx(sum(c[key] for c in r["cases"]) / r["tokens"])
        assert 0 < r[key] < 2 * math.log(len(tok))  # an untrained model: about log(vocabulary) per token
    assert r["fim_better"] == pytest.approx(np.mean([c["nll_fim"] < c["nll_left"] for c in r["cases"]]))
    assert r["ratio"] == pytest.approx(r["nll_fim"] / r["nll_left"]) and 0 <= r["sign_p"] <= 1
    # bar lines and the rest apart: one Bar per gap bar, and the two parts make up the whole
    assert r["bar_tokens"] == sum(c["gap"][1] - c["gap"][0] for c in r["cases"]) > 0
    for side in ("fim", "left"):
        kinds = r["by_kind"][side]
        whole = kinds["bar_tokens"] * r["bar_tokens"] + kinds["other_tokens"] * (r["tokens"] - r["bar_tokens"])
        assert whole == pytest.approx(r[f"nll_{side}"] * r["tokens"], rel=1e-5)
    for c in r["cases"]:
        start, end = c["gap"]
        assert 1 <= start < end <= c["bars"] - 1 and end - start <= 2  # bars on both sides, 1-2 missing
    # the left-side NLL of the first gap, recomputed with the model's own loss over the gap's tokens
    case = r["cases"][0]
    ref = references[case["reference"]][1:-1]
    window = [tok.bos_token_id] + cut_bars(tok, ref, case["bars"])
    upto = cut_bars(tok, window[1:], case["gap"][1])
    before = cut_bars(tok, window[1:], case["gap"][0])
    ids = torch.tensor([[tok.bos_token_id] + upto])
    labels = torch.full_like(ids, -100)
    labels[0, 1 + len(before):] = ids[0, 1 + len(before):]
    with torch.no_grad():
        loss = model(input_ids=ids, labels=labels).loss
    assert case["tokens"] == len(upto) - len(before)
    assert case["nll_left"] == pytest.approx(float(loss) * case["tokens"], rel=1e-4)


def test_accompaniment_quality_keeps_the_given_notes_and_writes_the_target_program(references, one_thread):
    tok = MusicTokenizer()
    model = tiny_model(tok)
    r = accompaniment_quality(model, tok, references[:3], samples=3, seed=0, **SAMPLING)
    assert r["n"] == 3 and not r["failures"]
    assert r["given_kept"] == 1.0 and r["new_in_target"] == 1.0
    assert r["new_notes"] > 0 and 0 < r["with_new_notes"] <= 1 and r["new_notes_per_bar"] > 0
    assert set(r["programs"]) <= set(ACCOMPANIMENT_PROGRAMS) and sum(r["programs"].values()) == 3
    forced = accompaniment_quality(model, tok, references[:1], samples=1, program=0, **SAMPLING)
    assert forced["programs"] == {0: 1} and forced["given_kept"] == 1.0


def test_composition_quality_reports_a_model_made_before_the_composition_tokens(references, tmp_path):
    old = MusicTokenizer(miditok_config={"special_tokens": ["PAD", "BOS", "EOS", "MASK"]})
    model = tiny_model(old)
    reason = composition_unsupported(model, old)
    assert "no composition" in reason and "made before them" in reason
    new = MusicTokenizer()
    assert "made before" in composition_unsupported(model, new)  # an old model with a new tokenizer
    assert composition_unsupported(tiny_model(new), new) is None
    settings = {"samples": 2, "max_new_tokens": 24, "seed": 0, "guidance_scale": 2.0, "sampling": SAMPLING}
    comp = composition_quality(model, old, references, settings)
    assert comp == {"skipped": reason, "trained_with": None}
    report = Report("test", "cpu")
    composition_section(report, comp)
    text = "\n".join(report.lines)
    assert "### Composition with control" in text and f"Not evaluated: {reason}." in text and "|" not in text


def test_composition_quality_writes_every_table_with_numbers(references, one_thread):
    tok = MusicTokenizer()
    settings = {"samples": 2, "max_new_tokens": 32, "seed": 0, "guidance_scale": 2.0, "sampling": SAMPLING}
    comp = composition_quality(tiny_model(tok), tok, references, settings,
                               trained={"fim_rate": 0.0, "control_dropout": None, "genre_dropout": 0.0})
    json.dumps(comp)  # the JSON results hold it
    report = Report("test", "cpu")
    composition_section(report, comp)
    text = "\n".join(report.lines)
    # the model never saw a control or infill token: the report says so
    assert "without control prefixes" in text and "without fill-in-the-middle windows" in text
    for name in CONTROL_NAMES:
        row = table_rows(text, name)[0]
        e = comp["controls"]["controls"][name]
        assert row[2:6] == [fmt(e["chance"]), fmt(e["uniform_chance"]), fmt(e["adherence"]["unguided"]),
                            fmt(e["adherence"]["guided"])]
    inf, acc = comp["infill"], comp["accompaniment"]
    assert table_rows(text, str(inf["n"]))[0][5:7] == [fmt(inf["exact_bars"]), "0"]  # exact bars, no grammar errors
    assert inf["exact_bars"] == 1.0 and acc["given_kept"] == 1.0 and acc["new_in_target"] == 1.0
    for label, key, count in (("bar lines", "bar_tokens", inf["bar_tokens"]),
                              ("everything else", "other_tokens", inf["tokens"] - inf["bar_tokens"])):
        fim, left = inf["by_kind"]["fim"][key], inf["by_kind"]["left"][key]
        assert table_rows(text, label)[0][1:] == [str(count), fmt(fim), fmt(left), fmt(fim / left)]


# ----- report helpers --------------------------------------------------------------------------------------
def test_update_markdown_section_rewrites_only_its_own_section(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    update_markdown_section(path, "Speed", "speed v1")
    update_markdown_section(path, "Quality", "quality v1\n\n### sub\n\nrow")
    update_markdown_section(path, "Speed", "speed v2")
    text = path.read_text()
    assert text.startswith("# Benchmarks") and text.count("## Speed") == 1 and text.count("## Quality") == 1
    assert "speed v1" not in text and "speed v2" in text and "quality v1\n\n### sub\n\nrow" in text
    assert text.index("## Speed") < text.index("## Quality")  # order kept
    update_markdown_section(path, "Speed", "speed v2")
    assert path.read_text() == text  # idempotent


def test_fmt_formats_cells():
    assert fmt(float("nan")) == "n/a" and fmt(None) == "n/a"
    assert fmt(3) == "3" and fmt(0.123456) == "0.123" and fmt(12345.6) == "12346" and fmt("x") == "x"


# ----- smoke runs of the scripts ---------------------------------------------------------------------------
def run_script(*args: str) -> float:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=SMOKE_TIMEOUT)
    assert out.returncode == 0, out.stderr[-4000:]
    return time.perf_counter() - start


def section(text: str, title: str) -> str:
    match = re.search(rf"^## {title}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"no section {title!r} in:\n{text}"
    return match.group(1)


def table_rows(text: str, first_cell: str) -> list[list[str]]:
    """Cells of every Markdown table row whose first cell is `first_cell`."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("|")]
    return [r for r in rows if r[0] == first_cell]


def number_cells(row: list[str]) -> list[float]:
    values = [float(c) for c in row[1:] if re.fullmatch(r"-?[\d.]+(e[-+]?\d+)?", c)]
    assert values and all(math.isfinite(v) for v in values), row
    return values


def assert_measured_facts_only(text: str, machine: dict) -> None:
    """The report states the machine as measured (cores, torch threads, load) and nothing it cannot know."""
    assert f"({machine['cores']} cores, torch uses {machine['torch_threads']} threads)" in text
    assert f"1-min load average at start {machine['load_average_1min']}" in text
    assert "1-min load average at the end" in text
    assert "shared" not in text and "noisy" not in text


def test_bench_quick_reports_every_figure_with_ratios_from_the_measurements(tmp_path):
    md, js = tmp_path / "bench.md", tmp_path / "bench.json"
    seconds = run_script("scripts/bench.py", "--quick", "--output", str(md), "--json", str(js))
    r = json.loads(js.read_text())
    text = section(md.read_text(), "Speed")
    for part in ("### Tokenization", "### Training", "### Generation", "### Commands", r["machine"]["cpu"],
                 f"torch {r['machine']['torch']}", f"transformers {r['machine']['transformers']}", "device `cpu`"):
        assert part in text
    assert_measured_facts_only(text, r["machine"])

    tok = r["tokenization"]
    for mode in ("single_process", "datasets_map_2_proc"):
        ours, theirs = tok[mode]["music_hf"], tok[mode]["miditok"]
        assert tok[mode]["overhead_ratio"] == pytest.approx(ours["seconds"] / theirs["seconds"])
        for m, name in ((ours, "music_hf"), (theirs, "miditok")):
            assert m["files_per_s"] == pytest.approx(tok["files"] / m["seconds"])
            assert m["tokens_per_s"] == pytest.approx(tok["tokens"][name] / m["seconds"])
    single = table_rows(text, "MusicTokenizer")[0]
    assert single[1] == "1 process" and single[-1] == fmt(tok["single_process"]["overhead_ratio"])
    sc = tok["map_scaling"]
    assert sc["files"] == tok["files"] * sc["repeat"] and sc["repeat"] >= 2
    assert sc["speedup"] == pytest.approx(sc["num_proc_1"]["seconds"] / sc["num_proc_2"]["seconds"])
    assert sc["num_proc_2"]["files_per_s"] == pytest.approx(sc["files"] / sc["num_proc_2"]["seconds"])
    assert "`datasets.map` scaling" in text and table_rows(text, "num_proc=2")[0][-1] == fmt(sc["speedup"])

    tr = r["training"]
    assert tr["throughput_ratio"] == pytest.approx(tr["music"]["tokens_per_s"] / tr["gpt2"]["tokens_per_s"])
    assert tr["memory_ratio"] == pytest.approx(tr["music"]["memory"]["peak_bytes"] / tr["gpt2"]["memory"]["peak_bytes"])
    for arch in ("music", "gpt2"):
        m = tr[arch]
        assert m["memory"]["peak_bytes"] > 0 and m["tokens_per_s"] > 0
        assert m["mfu"] == pytest.approx(m["achieved_gflops"] / tr["matmul"]["gflops"])
        assert m["achieved_gflops"] == pytest.approx(m["tokens_per_s"] * m["gflop_per_token"])
    ratio_row = table_rows(text, "ratio music / GPT-2")[0]
    assert ratio_row[2] == fmt(tr["throughput_ratio"]) and ratio_row[4] == fmt(tr["memory_ratio"])
    for name in ("MusicForCausalLM", "GPT-2"):
        assert len(number_cells(table_rows(text, name)[0])) == 7

    gen = r["generation"]
    for batch in ("1", "8"):
        row = gen["batch"][batch]
        assert row["ratio"] == pytest.approx(row["music"]["tokens_per_s"] / row["gpt2"]["tokens_per_s"])
        assert row["music"]["tokens_per_s"] == pytest.approx(int(batch) * gen["new_tokens"] / row["music"]["seconds"])
        assert table_rows(text, batch)[0][-1] == fmt(row["ratio"])
    for arch in ("music", "gpt2"):
        c = gen["cache"][arch]
        assert c["speedup"] == pytest.approx(c["no_cache_seconds"] / c["cache_seconds"])
    assert table_rows(text, "MusicForCausalLM")[1][-1] == fmt(gen["cache"]["music"]["speedup"])
    # batch 1 side by side: GPT-2, ours eager (constrained too) and the fast backends, ratios from the medians
    b1, fast = gen["batch1"], gen["fast_backends"]
    for name in ("gpt2", "music", "music_constrained", *(f"{b}_constrained" for b in fast)):
        assert b1[name]["vs_gpt2"] == pytest.approx(b1[name]["tokens_per_s"] / b1["gpt2"]["tokens_per_s"])
        assert b1[name]["tokens_per_s"] == pytest.approx(gen["new_tokens"] / b1[name]["seconds"])
    assert b1["constrained_overhead"] == pytest.approx(b1["music_constrained"]["seconds"] / b1["music"]["seconds"] - 1)
    assert table_rows(text, "ours, eager, grammar-constrained")[0][2] == fmt(b1["music_constrained"]["vs_gpt2"])
    split = gen["token_split"]  # a token of generate = the model's step + the loop around it, for both models
    for arch, label in (("music", "ours, per token"), ("gpt2", "GPT-2, per token")):
        m = split[arch]
        assert m["token_ms"] == pytest.approx(b1[arch]["seconds"] / gen["new_tokens"] * 1000)
        assert m["step_ms"] == pytest.approx(statistics.median(m["all_step_seconds"]) / gen["new_tokens"] * 1000)
        assert m["loop_ms"] == pytest.approx(m["token_ms"] - m["step_ms"])
        assert m["loop_share"] == pytest.approx(m["loop_ms"] / m["token_ms"])
        assert table_rows(text, label)[0][1:] == [fmt(m[k]) for k in ("token_ms", "step_ms", "loop_ms", "loop_share")]
    assert split["step_ms_for_1_3x"] == pytest.approx(split["gpt2"]["token_ms"] / 1.3 - split["music"]["loop_ms"])
    assert f"that leaves {split['step_ms_for_1_3x']:.3f} ms for the model's step" in text
    if "onnx" in fast:  # float32 ONNX Runtime: the eager model's greedy tokens
        assert b1["onnx_constrained"]["same_tokens_as_eager"]
    for backend in ("torch", *fast):
        rt = gen["real_time"][backend]
        assert rt["real_time_factor"] == pytest.approx(rt["music_seconds"] / rt["seconds"]) and rt["music_seconds"] > 0
    for name in ("music", "gpt2"):
        assert gen["memory"][name]["cache_bytes"] > 0 and gen["memory"][name]["peak_bytes"] > 0
    for part in (tok, tr, b1, split, gen["cache"], gen["real_time"], gen["memory"]):
        assert f"1-min load average {part['load_start']} at the start" in text
    print(f"bench --quick took {seconds:.0f} s")


def test_evaluate_quick_ablation_then_a_given_model(tmp_path):
    md, out = tmp_path / "BENCHMARKS.md", tmp_path / "eval"
    update_markdown_section(md, "Speed", "left alone")
    seconds = run_script("scripts/evaluate.py", "--quick", "--ablation", "--output", str(md), "--output_dir", str(out))
    r = json.loads((out / "evaluation.json").read_text())
    text = md.read_text()
    assert section(text, "Speed").strip() == "left alone"
    quality = section(text, "Quality")
    assert_measured_facts_only(quality, r["machine"])
    for part in ("### Next-token prediction on the test split", "### Generated music", "### Genre control",
                 "### Commands", "python scripts/evaluate.py --ablation --config scripts/configs/ablation.yaml"):
        assert part in quality

    assert list(r["models"]) == ["music", "gpt2", "no_note", "no_instrument", "no_temporal", "no_genre",
                                 "music_seed1"]
    target = r["ablation"]["target_parameters"]
    for name, m in r["models"].items():
        assert set(m["test"]) >= {"loss", "perplexity", "nll_per_note", "accuracy"}
        assert all(math.isfinite(v) for v in m["test"].values())
        assert m["test"]["perplexity"] == pytest.approx(math.exp(m["test"]["loss"]))
        assert abs(m["parameters"] - target) / target < 0.01  # matched through the MLP width
        saved = json.loads((Path(m["dir"]) / "evaluation_results.json").read_text())
        assert saved["split"] == "test" and saved["test"] == pytest.approx(m["test"])
        row = table_rows(quality, m["label"])[0]
        assert row[1] == str(m["parameters"]) and len(number_cells(row)) == 7
    # the baseline is GPT-2 and each variant lacks its embedding
    configs = {n: json.loads((Path(m["dir"]) / "config.json").read_text()) for n, m in r["models"].items()}
    assert configs["gpt2"]["model_type"] == "gpt2" and configs["music"]["use_note_embedding"]
    assert configs["music_seed1"] == configs["music"]  # the noise reference differs only by its training seed
    for kind in ("note", "instrument", "temporal", "genre"):
        assert configs[f"no_{kind}"][f"use_{kind}_embedding"] is False

    gen = r["generation"]
    assert gen["grammar_error_rate"]["constrained"] == 0.0  # constrained decoding never breaks the grammar
    assert 0.0 < gen["grammar_error_rate"]["unconstrained"] <= 1.0
    for genre, g in gen["per_genre"].items():
        assert g["generated"] == 2 and g["test_pieces"] > 0
        assert 0 <= g["pitch_class_js"] <= 1 and 0 <= g["pitch_class_js_train_vs_test"] <= 1
        assert len(number_cells(table_rows(quality, genre)[0])) == 10
    from music_hf.quality import trained_augmentation
    trained = trained_augmentation(Path(r["models"]["music"]["dir"]))  # the classifier saw what the model saw
    assert gen["classifier"]["augmentation"] == (dataclasses.asdict(trained) if trained else None)
    assert ("augmented as the model's were" if trained else "are not augmented") in quality
    real = gen["classifier"]["test_windows"]
    assert real["n"] > 0 and 0 <= real["accuracy"] <= 1 and real["uniform_chance"] == pytest.approx(0.5)
    real_row = table_rows(quality, "real test windows")[0]
    assert real_row[-1] == fmt(real["balanced_accuracy"] / real["uniform_chance"])
    # composition with control, measured on the held-out pieces; the tiny run never saw a control, and says so
    comp = r["composition"]
    assert "### Composition with control" in quality and "without control prefixes" in quality
    assert comp["trained_with"] == {"fim_rate": 0.0, "fim_order": "psm", "fim_max_bars": None,
                                    "control_dropout": None, "genre_dropout": 0.0}
    for name in CONTROL_NAMES:
        e = comp["controls"]["controls"][name]
        assert e["n"] == 2 and 0 < e["chance"] <= 1 and set(e["adherence"]) == {"unguided", "guided"}
        assert len(table_rows(quality, name)) == 1
    assert comp["infill"]["n"] == 2 and comp["infill"]["exact_bars"] == 1.0
    assert comp["infill"]["grammar_error_rate"] == 0.0
    assert comp["accompaniment"]["given_kept"] == 1.0
    first = seconds

    # a given model folder: evaluated on its own held-out split, the previous report section replaced; --compare
    # puts another trained folder (here the GPT-2 of the same size and steps) beside it, on the same pieces
    model_dir, gpt2_dir = Path(r["models"]["music"]["dir"]), r["models"]["gpt2"]["dir"]
    seconds = run_script("scripts/evaluate.py", "--quick", "--model", str(model_dir), "--output", str(md),
                         "--output_dir", str(tmp_path / "eval2"), "--compare", gpt2_dir)
    r2 = json.loads((tmp_path / "eval2" / "evaluation.json").read_text())
    assert list(r2["models"]) == ["model", "compare0"] and r2["ablation"] is None
    assert r2["models"]["model"]["test"] == pytest.approx(r["models"]["music"]["test"])  # same split, same model
    assert r2["models"]["compare0"]["test"] == pytest.approx(r["models"]["gpt2"]["test"])
    assert len(number_cells(table_rows(section(md.read_text(), "Quality"), f"`{gpt2_dir}`")[0])) == 6
    text = md.read_text()
    assert text.count("## Quality") == 1 and "### Next-token prediction" in text and "left alone" in text
    assert json.loads((model_dir / "evaluation_results.json").read_text())["generation"]["genres"]
    print(f"evaluate --quick --ablation took {first:.0f} s, --model {seconds:.0f} s")
