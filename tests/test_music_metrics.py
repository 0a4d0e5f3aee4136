"""Tests for issue 14: the objective music metrics of the literature (through muspy) and of structure (repeated
bars, simultaneous voices, dissonant intervals) on hand-made Scores with known answers, memorization (the longest
span of bars copied from a training piece), and `scripts/evaluate.py` writing the tables "Music metrics",
"Memorization" and the per-genre genre recognition against chance on a tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import symusic

from music_hf.evaluation import (COPY_THRESHOLD, DISSONANT_INTERVALS, MUSIC_METRICS, BarIndex, bar_notes, bar_starts,
                                 dissonance_rate, fmt, memorization, music_metrics, repeated_bar_share,
                                 simultaneous_voices, to_muspy)

muspy = pytest.importorskip("muspy")

TPQ = 16  # ticks per quarter note, as the tokenizer decodes
BAR = 4 * TPQ  # a 4/4 bar
C_MAJOR = [60, 62, 64, 65, 67, 69, 71, 72]


def score(notes, time_signatures=((0, 4, 4),), drums=()):
    """A one-track Score of (onset, pitch, duration) notes in ticks (and a drum track of `drums`)."""
    s = symusic.Score(TPQ)
    for at, num, den in time_signatures:
        s.time_signatures.append(symusic.TimeSignature(at, num, den))
    for is_drum, group in ((False, notes), (True, drums)):
        if group:
            track = symusic.Track(program=0, is_drum=is_drum)
            for onset, pitch, duration in group:
                track.notes.append(symusic.Note(onset, duration, pitch, 80))
            s.tracks.append(track)
    return s


def from_bars(bars):
    """A Score whose bar k holds the (relative onset, pitch, duration) notes of bars[k]."""
    return score([(k * BAR + r, p, d) for k, bar in enumerate(bars) for r, p, d in bar])


def random_bars(seed, count):
    rng = np.random.default_rng(seed)
    return [tuple(sorted((int(r), int(p), TPQ) for r, p in zip(rng.choice([0, 16, 32, 48], 4, replace=False),
                                                                 rng.integers(48, 85, 4)))) for _ in range(count)]


# ----- bars ------------------------------------------------------------------------------------------------
def test_bars_follow_the_time_signatures_up_to_the_last_onset():
    assert bar_starts(score([(0, 60, 16), (200, 62, 16)], ((0, 3, 4), (96, 4, 4)))) == [0, 48, 96, 160]
    assert bar_starts(score([(0, 60, 16), (130, 62, 16)], ())) == [0, 64, 128]  # 4/4 without a time signature
    assert bar_starts(score([(0, 60, 16), (100, 62, 16)], ((0, 6, 8),))) == [0, 48, 96]
    assert bar_starts(score([])) == [] and bar_notes(score([])) == []
    # notes relative to their bar start, sorted; drums with pitch 128 + key
    bars = bar_notes(score([(70, 64, 8), (64, 60, 16), (0, 67, 32)], drums=[(16, 36, 4)]))
    assert bars == [((0, 67, 32), (16, 128 + 36, 4)), ((0, 60, 16), (6, 64, 8))]


# ----- metrics with known answers ---------------------------------------------------------------------------
def test_a_repeated_bar_gives_a_repeat_share_of_one_half():
    bar = [(0, 60, 16), (16, 64, 16), (32, 67, 32)]
    assert repeated_bar_share(from_bars([bar, bar])) == 0.5
    assert repeated_bar_share(from_bars([bar, [], bar])) == 0.5  # an empty bar counts neither way
    assert repeated_bar_share(from_bars([bar, bar, bar, [(0, 72, 64)]])) == 0.5
    assert repeated_bar_share(from_bars([bar, [(r, p + 12, d) for r, p, d in bar]])) == 0.0  # transposed: new
    assert repeated_bar_share(from_bars([bar, [(r, p, 8) for r, p, _ in bar]])) == 0.0  # other durations: new
    assert math.isnan(repeated_bar_share(score([])))


def test_a_c_major_scale_is_fully_scale_consistent():
    scale = score([(TPQ * i, p, TPQ) for i, p in enumerate(C_MAJOR)])
    m = music_metrics(scale)
    assert m["scale_consistency"] == 1.0
    assert m["pitch_class_entropy"] == pytest.approx(2.75)  # C twice in 8 notes, six others once
    assert m["polyphony"] == 1.0 and m["simultaneous_voices"] == 1.0 and m["empty_beat_rate"] == 0.0
    assert m["notes_per_bar"] == 4.0 and m["repeated_bars"] == 0.0 and m["groove_consistency"] == 1.0
    assert math.isnan(m["dissonance_rate"])  # a melody forms no pair
    chromatic = music_metrics(score([(TPQ * i, 60 + i, TPQ) for i in range(12)]))
    assert chromatic["scale_consistency"] == pytest.approx(7 / 12)
    assert chromatic["pitch_class_entropy"] == pytest.approx(math.log2(12))
    assert set(m) == {key for key, _ in MUSIC_METRICS}
    assert all(math.isnan(v) for v in music_metrics(score([])).values())


def test_a_tritone_dyad_is_dissonant_and_a_triad_is_not():
    assert DISSONANT_INTERVALS == {1, 6, 11}
    assert dissonance_rate(score([(0, 60, BAR), (0, 66, BAR)])) == 1.0  # tritone
    assert dissonance_rate(score([(0, 60, BAR), (0, 64, BAR), (0, 67, BAR)])) == 0.0  # C major triad
    assert dissonance_rate(score([(0, 60, BAR), (0, 73, BAR)])) == 1.0  # minor ninth
    assert dissonance_rate(score([(0, 60, BAR), (0, 71, BAR)])) == 1.0  # major seventh
    assert dissonance_rate(score([(0, 60, BAR), (0, 72, BAR)])) == 0.0  # octave
    assert dissonance_rate(score([(0, 60, BAR), (0, 62, BAR), (0, 70, BAR)])) == 0.0  # M2, m7: not counted
    # a held C forms a pair with the F# struck under it (once), the E ended before: 1 of 2 pairs
    assert dissonance_rate(score([(0, 60, BAR), (0, 64, 16), (16, 66, 16)])) == 0.5
    # a chord held over later onsets counts once: C-E-G, then a repeated G above it twice
    assert dissonance_rate(score([(0, 60, BAR), (0, 64, BAR), (0, 67, BAR), (16, 79, 16), (32, 79, 16)])) == 0.0
    assert math.isnan(dissonance_rate(score([(0, 60, 16), (16, 66, 16)])))  # a melody: no simultaneous pair
    assert dissonance_rate(score([(0, 60, BAR), (0, 66, BAR)], drums=[(0, 37, 4)])) == 1.0  # drums left out


def test_simultaneous_voices_and_polyphony_count_the_sounding_notes():
    chord_and_melody = score([(0, 60, BAR), (0, 64, BAR), (0, 67, BAR), (32, 72, 16)])
    assert simultaneous_voices(chord_and_melody) == 3.5  # 3 at the chord, 4 when the melody note joins
    assert music_metrics(score([(0, 60, BAR), (0, 64, BAR), (0, 67, BAR)]))["polyphony"] == 3.0
    assert math.isnan(simultaneous_voices(score([], drums=[(0, 36, 4)])))


def test_empty_beats_and_groove_count_the_beats_and_bars_the_notes_sound_in():
    # quarter notes on beats 1, 3 and 5: two of five beats are empty
    notes = score([(0, 60, TPQ), (2 * TPQ, 62, TPQ), (4 * TPQ, 64, TPQ)])
    assert music_metrics(notes)["empty_beat_rate"] == pytest.approx(2 / 5)
    # muspy alone takes each note's end tick as sounding, so every beat after a note counts as played
    assert muspy.empty_beat_rate(to_muspy(notes)) == 0.0
    quarters = [(r, 60, TPQ) for r in range(0, BAR, TPQ)]
    assert music_metrics(from_bars([quarters, quarters]))["groove_consistency"] == 1.0
    assert muspy.groove_consistency(to_muspy(from_bars([quarters, quarters])), BAR) < 1.0  # an extra empty bar
    halves = [(0, 60, 2 * TPQ), (2 * TPQ, 60, 2 * TPQ)]
    assert music_metrics(from_bars([quarters, halves]))["groove_consistency"] == pytest.approx(1 - 2 / BAR)


def test_to_muspy_keeps_every_note_overlapping_ones_included():
    overlapping = score([(0, 55, 64), (16, 55, 16), (24, 67, 8)], ((0, 3, 4),))
    music = to_muspy(overlapping)
    assert music.resolution == TPQ and [(t.numerator, t.denominator) for t in music.time_signatures] == [(3, 4)]
    assert sorted((n.time, n.pitch, n.duration) for t in music.tracks for n in t.notes) == \
        [(0, 55, 64), (16, 55, 16), (24, 67, 8)]
    assert [n.duration for n in to_muspy(overlapping, shorten=1).tracks[0].notes] == [63, 15, 7]


def test_the_metrics_tell_melodies_chorales_and_atonal_music_apart(real_midi_paths):
    m = {p.stem.split("_")[0]: music_metrics(symusic.Score(str(p))) for p in real_midi_paths
         if p.stem != "bach_bwv66.6"}  # one chorale: bwv269
    for tune in ("essenFolksong", "ryansMammoth", "oneills1850"):
        assert m[tune]["simultaneous_voices"] == 1.0 and m[tune]["polyphony"] == 1.0
        assert math.isnan(m[tune]["dissonance_rate"]) and m[tune]["scale_consistency"] >= 0.95
    chorale = m["bach"]
    assert 3.5 <= chorale["simultaneous_voices"] <= 4.5 and chorale["dissonance_rate"] < 0.1
    assert m["schoenberg"]["dissonance_rate"] > 2 * chorale["dissonance_rate"]
    assert m["schoenberg"]["scale_consistency"] < chorale["scale_consistency"]
    assert m["ryansMammoth"]["repeated_bars"] > 0.3  # a reel repeats its strains


# ----- memorization -----------------------------------------------------------------------------------------
def test_memorization_finds_a_planted_five_bar_copy_and_nothing_in_unrelated_material():
    training = [random_bars(seed, 12) for seed in range(1, 4)]
    index = BarIndex(bar_notes(from_bars(bars)) for bars in training)
    assert index.pieces == 3
    unrelated = random_bars(100, 10)
    planted = unrelated[:2] + training[1][5:10] + unrelated[2:4]  # bars 5-9 of piece 1 at bar 2
    near_miss = unrelated[:3] + training[2][0:4] + unrelated[3:5]  # 4 bars: not more than the threshold
    found = index.longest_copy(bar_notes(from_bars(planted)))
    assert found == {"bars": 5, "at": 2, "piece": 1, "bar": 5}
    assert index.longest_copy(bar_notes(from_bars(unrelated)))["bars"] == 0
    assert index.longest_copy(bar_notes(from_bars(near_miss)))["bars"] == 4
    r = memorization([bar_notes(from_bars(b)) for b in (planted, unrelated, near_miss)], index)
    assert r["threshold"] == COPY_THRESHOLD == 4 and r["longest"] == [5, 0, 4] and r["max_longest"] == 5
    assert r["copied_share"] == pytest.approx(1 / 3) and r["mean_longest"] == pytest.approx(3.0)
    assert r["sources"][0] == [1, 5]
    assert math.isnan(memorization([], index)["copied_share"])


def test_memorization_extends_runs_through_repeated_bars_and_breaks_them_at_empty_bars():
    a, b, c = random_bars(7, 3)
    index = BarIndex([bar_notes(from_bars([a, a, a, b, (), c, c]))])
    assert index.longest_copy(bar_notes(from_bars([a, a, b])))["bars"] == 3  # training bars 1-3
    assert index.longest_copy(bar_notes(from_bars([b, (), c])))["bars"] == 1  # an empty bar never matches
    assert index.longest_copy([])["bars"] == 0


# ----- the report of scripts/evaluate.py ---------------------------------------------------------------------
def table_rows(text: str, first_cell: str) -> list[list[str]]:
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("|")]
    return [r for r in rows if r[0] == first_cell]


def test_evaluate_writes_the_music_metrics_memorization_and_recognition_tables(tmp_path):
    """An untrained tiny music model on the tiny corpus (`--quick`), evaluated in-process: about 10 s."""
    import torch

    from music_hf.cli import main
    from music_hf.hub import build_model_card
    from music_hf.quality import QUICK_OVERRIDES, TINY_CONFIG
    from music_hf.training import TrainConfig, build_datasets, build_model

    cfg = TrainConfig.from_yaml(TINY_CONFIG).replace(**QUICK_OVERRIDES)
    tok, genres, *_ = build_datasets(cfg, progress=False)
    torch.manual_seed(0)
    model_dir = tmp_path / "model"
    build_model(cfg, tok, genres).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    md, out = tmp_path / "BENCHMARKS.md", tmp_path / "eval"
    threads = torch.get_num_threads()
    try:
        main(["evaluate", "--quick", "--model", str(model_dir), "--config", str(TINY_CONFIG), "--output", str(md),
              "--output_dir", str(out), "--no_composition", "--max_new_tokens", "96", "--classifier_steps", "10"])
    finally:
        torch.set_num_threads(threads)
    gen = json.loads((out / "evaluation.json").read_text())["generation"]
    text = md.read_text()
    for part in ("### Music metrics", "### Memorization", "recognised (constrained) / chance",
                 "floor: gap training vs held-out", f"share copying > {COPY_THRESHOLD} bars"):
        assert part in text
    mm, mem = gen["music_metrics"], gen["memorization"]
    assert list(mm["per_genre"]) == gen["genres"] and mm["max_new_tokens"] == 96
    for genre, m in mm["per_genre"].items():
        rows = {r[1]: r for r in table_rows(text, genre) if len(r) == 7}  # metric rows (and recognition's)
        assert rows["pieces"][2:5] == [str(m["n"]["generated"]), str(m["n"]["test"]), str(m["n"]["train"])]
        assert m["n"]["generated"] == 2 and m["n"]["test"] > 0 and m["n"]["train"] > 0
        for key, label in MUSIC_METRICS:
            g, t, tr = m["generated"][key], m["test"][key], m["train"][key]
            assert rows[label][2:] == [fmt(g), fmt(t), fmt(tr), fmt(abs(g - t)), fmt(abs(tr - t))]
        for key in ("scale_consistency", "groove_consistency", "empty_beat_rate", "repeated_bars"):
            assert all(0 <= m[s][key] <= 1 for s in ("generated", "test", "train")), key
        # per-genre recognition against chance: 1/genres
        recognition = rows[str(m["n"]["generated"])]
        assert recognition[5] == fmt(1 / len(gen["genres"]))
    assert mem["threshold"] == COPY_THRESHOLD and mem["training_pieces"] > 0
    for kind in ("generated", "held-out"):
        rows = table_rows(text, kind)
        assert [r[1] for r in rows] == [*gen["genres"], "all genres"]
        for row, r in zip(rows, [*mem[kind]["per_genre"].values(), mem[kind]["all"]]):
            assert row[2:] == [str(r["n"]), fmt(r["mean_longest"]), str(r["max_longest"]), fmt(r["copied_share"])]
    assert mem["generated"]["all"]["n"] == 2 * len(gen["genres"])
    assert mem["held-out"]["all"]["n"] == sum(m["n"]["test"] for m in mm["per_genre"].values())
    # the model card states the measurement the model folder holds
    saved = json.loads((Path(model_dir) / "evaluation_results.json").read_text())
    assert saved["generation"]["memorization"]["generated"]["all"] == mem["generated"]["all"]
    card = str(build_model_card(model_dir, "user/tiny"))
    assert (f"{mem['generated']['all']['copied_share']:.0%} of {2 * len(gen['genres'])} generations copy more than "
            f"{COPY_THRESHOLD} consecutive bars of a training piece") in card
