"""Composition training data (issue 12) on real corpus pieces: fill-in-the-middle windows, control prefixes measured
on the window (`measure_controls`, checked against the decoded notes and against music21's key analysis), control
and genre dropout rates, and `control_ids`' refusals."""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter

import numpy as np
import pytest

from music_hf.data import AugmentationConfig, MusicDataCollator, TokenAugmenter, fim_arrange, window_starts
from music_hf.tokenization_music import CONTROL_NAMES, KEY_TONICS, MusicTokenizer

MAX_LENGTH = 256


@pytest.fixture(scope="module")
def tok() -> MusicTokenizer:
    return MusicTokenizer()


@pytest.fixture(scope="module")
def piece_ids(tok, real_midi_paths) -> list[list[int]]:
    """The seven real pieces, BOS ... EOS."""
    return [tok(p)["input_ids"] for p in real_midi_paths]


@pytest.fixture(scope="module")
def windows(tok, piece_ids) -> list[list[int]]:
    """Training windows of the real pieces, cut as make_windows cuts them (bar-aligned, the first from BOS)."""
    out = []
    for ids in piece_ids:
        bars = tok.token_table.bar_count[ids] > 0
        out += [ids[s:s + MAX_LENGTH] for s in window_starts(bars, len(ids), MAX_LENGTH, MAX_LENGTH - 32)]
    return out


def bar_count(tok: MusicTokenizer, ids: list[int]) -> int:
    """Bar tokens in ids (placeholders not included)."""
    return sum(t == tok.token_id("Bar") for t in ids)


def prefix_controls(tok: MusicTokenizer, ids: list[int]) -> list[int]:
    """The control ids right after BOS (or at the start)."""
    at = 1 if ids and ids[0] == tok.bos_token_id else 0
    controls = set(tok.kind_ids("Control").tolist())
    end = at
    while end < len(ids) and ids[end] in controls:
        end += 1
    return ids[at:end]


# ----- fill-in-the-middle ---------------------------------------------------------------------------------------
def test_fim_windows_keep_every_token_in_three_contiguous_parts(tok, windows):
    infill = tok.infill_ids
    rng = np.random.default_rng(0)
    middles = Counter()
    for window in windows:
        n = bar_count(tok, window)
        for _ in range(6):
            fim = fim_arrange(window, tok, rng)
            assert len(fim) == len(window) + fim.count(infill["bar"]) + 2
            assert Counter(t for t in fim if t not in infill.values()) == Counter(window)  # every token, once
            k = fim.count(infill["bar"])
            first = fim.index(infill["bar"])
            start, end = fim.index(infill["start"]), fim.index(infill["end"])
            assert fim.count(infill["start"]) == fim.count(infill["end"]) == 1 and first < start < end
            assert fim[first:first + k] == [infill["bar"]] * k  # the placeholders: one run
            prefix, suffix, middle = fim[:first], fim[first + k:start], fim[start + 1:end]
            tail = fim[end + 1:]
            # each part contiguous and in order: the window is prefix + middle + suffix (+ its final EOS)
            assert window == prefix + middle + suffix + tail
            assert tail in ([], [tok.eos_token_id]) and (tail == []) == (window[-1] != tok.eos_token_id)
            # k placeholders for k middle bars; with the prefix's and the suffix's bars, the window's
            assert middle[0] == tok.token_id("Bar") and (not suffix or suffix[0] == tok.token_id("Bar"))
            assert bar_count(tok, middle) == k >= 1
            assert bar_count(tok, prefix) + k + bar_count(tok, suffix) == n
            middles[(k == n, bar_count(tok, prefix) == 0, bar_count(tok, suffix) == 0)] += 1
    # drawn middles cover the whole window, an empty prefix, an empty suffix, and inner middles
    assert {(True, True, True), (False, True, False), (False, False, True), (False, False, False)} <= set(middles)


def test_fim_bars_argument_and_windows_without_bars(tok, windows):
    window = windows[0]
    n = bar_count(tok, window)
    fim = fim_arrange(window, tok, bars=(1, 3))
    assert fim.count(tok.infill_ids["bar"]) == 2
    for bad in ((2, 2), (-1, 1), (0, n + 1)):
        with pytest.raises(ValueError, match=re.escape(f"bars {bad} must satisfy 0 <= start < end <= {n}")):
            fim_arrange(window, tok, bars=bad)
    no_bars = [t for t in window if t != tok.token_id("Bar")]
    assert fim_arrange(no_bars, tok, np.random.default_rng(0)) == no_bars


def test_spm_layout_puts_the_prefix_right_before_the_middle(tok, windows):
    """order="spm": head + one placeholder per bar before the suffix + suffix + Infill_Start + prefix + middle +
    Infill_End (+ EOS); the same draws as psm; an unknown order is refused, by fim_arrange and the collator."""
    infill = tok.infill_ids
    for window in windows[:6]:
        n = bar_count(tok, window)
        for seed in range(4):
            psm = fim_arrange(window, tok, np.random.default_rng(seed))
            spm = fim_arrange(window, tok, np.random.default_rng(seed), order="spm")
            k = psm.count(infill["bar"])
            first = spm.index(infill["bar"])
            start, end = spm.index(infill["start"]), spm.index(infill["end"])
            placeholders = spm[first:].index(next(t for t in spm[first:] if t != infill["bar"]))
            suffix, rest, tail = spm[first + placeholders:start], spm[start + 1:end], spm[end + 1:]
            prefix_and_middle_psm = psm[:psm.index(infill["bar"])] + psm[psm.index(infill["start"]) + 1:-1 - len(tail)]
            assert spm[:first] + rest == prefix_and_middle_psm  # head, prefix, middle: in their order, adjacent
            assert bar_count(tok, suffix) + placeholders == n and placeholders >= k
            assert spm[:first] + rest + suffix + tail == window and len(spm) == len(window) + placeholders + 2
    with pytest.raises(ValueError, match=r"order must be one of \('psm', 'spm'\), got 'mps'"):
        fim_arrange(windows[0], tok, bars=(0, 1), order="mps")
    with pytest.raises(ValueError, match=r"fim_order must be one of \('psm', 'spm'\), got 'x'"):
        MusicDataCollator(tok.pad_token_id, tokenizer=tok, fim_rate=0.5, fim_order="x")
    rows, _ = batch_rows(MusicDataCollator(tok.pad_token_id, tokenizer=tok, fim_rate=1.0, fim_order="spm"),
                         [{"input_ids": w, "idx": i} for i, w in enumerate(windows[:4])])
    for row in rows:  # the prefix (or, when empty, the middle) opens with its bar right after Infill_Start
        assert row[row.index(infill["start"]) + 1] == tok.token_id("Bar")


def test_fim_max_bars_caps_the_bars_left_out(tok, windows):
    """fim_max_bars: every length from 1 to the cap is drawn, never more, in both layouts and through the collator;
    without it the lengths go up to the window's bars; a cap that is not a whole number >= 1 is refused."""
    infill = tok.infill_ids
    long = [w for w in windows if bar_count(tok, w) >= 8][:4]
    assert long, "the real pieces give windows of 8 bars or more"
    capped, free = Counter(), Counter()
    for window in long:
        for seed in range(60):
            for cap, seen in ((3, capped), (None, free)):
                psm = fim_arrange(window, tok, np.random.default_rng(seed), max_bars=cap)
                k, start = psm.count(infill["bar"]), bar_count(tok, psm[:psm.index(infill["bar"])])
                seen[k] += 1
                spm = fim_arrange(window, tok, np.random.default_rng(seed), order="spm", max_bars=cap)
                assert spm == fim_arrange(window, tok, bars=(start, start + k), order="spm")  # the same draws
    assert set(capped) == {1, 2, 3}, capped
    assert max(free) > 3, free
    collator = MusicDataCollator(tok.pad_token_id, tokenizer=tok, fim_rate=1.0, fim_max_bars=1)
    rows, _ = batch_rows(collator, [{"input_ids": w, "idx": i} for i, w in enumerate(long)])
    for row in rows:
        assert row.count(infill["bar"]) == 1 and bar_count(tok, row[row.index(infill["start"]):]) == 1
    for bad in (0, 2.5, True, "3"):
        with pytest.raises(ValueError, match=rf"fim_max_bars must be a whole number of bars >= 1 \(or None\), "
                                             rf"got {re.escape(repr(bad))}"):
            MusicDataCollator(tok.pad_token_id, tokenizer=tok, fim_rate=0.5, fim_max_bars=bad)


# ----- measured controls ----------------------------------------------------------------------------------------
def reference_key(score) -> str:
    """Krumhansl-Kessler key of a decoded score: duration-weighted pitch classes, best Pearson correlation."""
    major = [6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88]
    minor = [6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17]
    histogram = np.zeros(12)
    for track in score.tracks:
        if not track.is_drum:
            for note in track.notes:
                histogram[note.pitch % 12] += note.duration
    scores = {(tonic, mode): np.corrcoef(histogram, np.roll(profile, tonic))[0, 1]
              for mode, profile in (("major", major), ("minor", minor)) for tonic in range(12)}
    tonic, mode = max(scores, key=scores.get)
    return f"{KEY_TONICS[tonic]} {mode}"


def reference_polyphony(score) -> float:
    """Mean number of notes sounding at each distinct onset (a note sounds on [onset, end), and at its onset)."""
    notes = [(n.time, n.time + n.duration) for track in score.tracks for n in track.notes]
    onsets = sorted({on for on, _ in notes})
    return float(np.mean([sum(on == u or on < u < end for on, end in notes) for u in onsets]))


def test_measured_controls_match_the_decoded_notes(tok, piece_ids, windows):
    checked = 0
    for ids in piece_ids + windows[::3]:
        ends = [i for i, t in enumerate(ids) if tok.token_table.bar_count[t]] + [len(ids)]
        ids = ids[:ends[-2] if ids[-1] != tok.eos_token_id else len(ids)]  # whole bars: every note has its Duration
        measured = tok.measure_controls(ids)
        score = tok.decode_midi(ids)
        pitches = [n.pitch for track in score.tracks if not track.is_drum for n in track.notes]
        assert measured["density"] == pytest.approx(score.note_num() / bar_count(tok, ids))
        assert measured["polyphony"] == pytest.approx(reference_polyphony(score))
        assert measured["pitch_range"] == (min(pitches), max(pitches))
        assert measured["key"] == reference_key(score)
        has_tempo = bool(set(ids) & set(tok.kind_ids("Tempo").tolist()))  # else miditok decodes a default one
        assert measured["tempo"] == (pytest.approx(score.tempos[0].qpm, rel=2e-3) if has_tempo else None)
        checked += 1
    assert checked > 10
    assert tok.measure_controls([]) == {"key": None, "density": 0.0, "polyphony": None, "pitch_range": None,
                                        "timing": None, "repetition": None, "tempo": None}


def test_measured_key_agrees_with_music21(tok, piece_ids, real_midi_paths):
    """bwv66.6 is in F# minor: music21's own key analysis (its default, Aarden-Essen) says so for the same file,
    and music21's Krumhansl-Kessler analysis (the profiles measure_controls uses) agrees on every real piece."""
    music21 = pytest.importorskip("music21")
    from music21.analysis.discrete import KrumhanslKessler

    def name(key) -> str:
        return f"{KEY_TONICS[key.tonic.pitchClass]} {key.mode}"

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        streams = [music21.converter.parse(str(p)) for p in real_midi_paths]
        assert real_midi_paths[0].name == "bach_bwv66.6.mid"
        assert name(streams[0].analyze("key")) == tok.measure_controls(piece_ids[0])["key"] == "F# minor"
        for path, stream, ids in zip(real_midi_paths, streams, piece_ids):
            assert tok.measure_controls(ids)["key"] == name(KrumhanslKessler(stream).getSolution(stream)), path.name


# ----- the collator: control prefixes, FIM, dropout ---------------------------------------------------------------
def batch_rows(collator: MusicDataCollator, examples: list[dict]) -> tuple[list[list[int]], list[int]]:
    batch = collator(examples)
    rows = [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
    return rows, batch["genre_ids"].tolist()


def test_control_prefix_matches_the_measured_window(tok, windows):
    examples = [{"input_ids": w, "idx": i, "genre_id": 2} for i, w in enumerate(windows)]
    for fim_rate in (0.0, 1.0):
        collator = MusicDataCollator(tok.pad_token_id, tokenizer=tok, control_dropout=0.0, fim_rate=fim_rate)
        rows, genres = batch_rows(collator, examples)
        assert genres == [2] * len(windows)
        for window, row in zip(windows, rows):
            measured = tok.measure_controls(window)
            expected = tok.control_ids({name: measured[name] for name in CONTROL_NAMES})
            assert prefix_controls(tok, row) == expected and len(expected) == 7  # pitch_range: two
            at = 1 if window[0] == tok.bos_token_id else 0
            assert row[:at] == window[:at] and row[at:at + 7] == expected  # after BOS, else first
            body = row[:at] + row[at + 7:]
            if fim_rate:
                assert body.count(tok.infill_ids["start"]) == 1
            else:
                assert body == window


def test_dropout_rates_are_respected_and_independent(tok, windows):
    n = 1200
    examples = [{"input_ids": windows[i % len(windows)], "idx": 1000 + i, "genre_id": 1} for i in range(n)]
    collator = MusicDataCollator(tok.pad_token_id, tokenizer=tok, control_dropout=0.3, genre_dropout=0.25,
                                 fim_rate=0.4, seed=7)
    table = tok.token_table
    kept = np.zeros((n, len(CONTROL_NAMES)), dtype=bool)
    fims, dropped_genres = 0, 0
    for b in range(0, n, 100):
        rows, genres = batch_rows(collator, examples[b:b + 100])
        dropped_genres += genres.count(0)
        for j, row in enumerate(rows):
            groups = [int(table.control[t]) for t in prefix_controls(tok, row)]
            assert groups == sorted(groups) and (3 in groups) == (4 in groups)  # in order; low and high together
            kept[b + j] = [g in groups for g in (0, 1, 2, 3, 5, 6)]  # key ... pitch range, timing, repetition
            fims += tok.infill_ids["start"] in row

    def within(count: float, p: float) -> bool:  # four standard deviations of a binomial(n, p)
        return abs(count - n * p) <= 4 * math.sqrt(n * p * (1 - p))

    assert all(within(kept[:, c].sum(), 0.7) for c in range(len(CONTROL_NAMES))), kept.mean(0)
    assert within((kept[:, 0] & kept[:, 1]).sum(), 0.49) and within((kept[:, 2] & ~kept[:, 3]).sum(), 0.21)
    assert within(dropped_genres, 0.25) and within(fims, 0.4), (dropped_genres, fims)


def test_composition_is_seeded_per_window_and_leaves_augmentation_as_it_was(tok, windows):
    """(seed, epoch, idx) decide everything: a window gets the same arrangement in any batch (so a resumed run
    sees what an unbroken one would), another epoch another one; augmentation draws exactly as without it."""
    examples = [{"input_ids": w, "idx": 50 + i, "genre_id": 1} for i, w in enumerate(windows)]
    augmenter = TokenAugmenter(tok, AugmentationConfig(pitch_shift=5, velocity_jitter=2))
    settings = dict(tokenizer=tok, fim_rate=0.5, control_dropout=0.2, genre_dropout=0.3, seed=3)
    collator = MusicDataCollator(tok.pad_token_id, augmenter, **settings)
    rows, genres = batch_rows(collator, examples)
    again = [batch_rows(collator, [ex]) for ex in reversed(examples)]
    assert [(r[0], g[0]) for r, g in reversed(again)] == list(zip(rows, genres))
    collator.epoch = 1
    assert batch_rows(collator, examples)[0] != rows
    collator.epoch = 0
    augmented, _ = batch_rows(MusicDataCollator(tok.pad_token_id, augmenter, seed=3), examples)
    composing = set(tok.infill_ids.values()) | set(tok.kind_ids("Control").tolist())
    for row, plain in zip(rows, augmented):
        assert Counter(t for t in row if t not in composing) == Counter(plain)
        measured = tok.measure_controls(plain)  # the controls of the augmented window (transposed key)
        assert set(prefix_controls(tok, row)) <= set(tok.control_ids({n: measured[n] for n in CONTROL_NAMES}))
    # off by default: the collator is the plain one
    assert batch_rows(MusicDataCollator(tok.pad_token_id, tokenizer=tok), examples)[0] == \
        batch_rows(MusicDataCollator(tok.pad_token_id), examples)[0] == [list(w) for w in windows]


def test_collator_settings_are_checked(tok):
    with pytest.raises(ValueError, match="need the tokenizer"):
        MusicDataCollator(0, fim_rate=0.5)
    with pytest.raises(ValueError, match=r"control_dropout must be a probability in \[0, 1\], got 1.5"):
        MusicDataCollator(0, tokenizer=tok, control_dropout=1.5)
    tsd = MusicTokenizer(tokenization="TSD")  # other schemes refuse composition features, naming the scheme
    with pytest.raises(ValueError, match="measure_controls needs a REMI tokenizer without BPE, not TSD"):
        MusicDataCollator(0, tokenizer=tsd, control_dropout=0.1)
    with pytest.raises(ValueError, match="infilling works over bars, and this TSD vocabulary has no Bar tokens"):
        MusicDataCollator(0, tokenizer=tsd, fim_rate=0.1)
    assert tsd.token_table.bar_count.max() == 0 and tsd.max_position_in_bar == 0  # no bar from a placeholder


def test_training_settings_reach_the_collator(tok):
    from music_hf.cli import parse_train_args
    from music_hf.training import train_collator

    default = train_collator(parse_train_args([])[0], tok)
    assert not default.composing and default.control_dropout is None
    cfg, _ = parse_train_args(["--fim_rate", "0.5", "--control_dropout", "0.2", "--genre_dropout", "0.1",
                               "--fim_order", "spm", "--fim_max_bars", "4"])
    collator = train_collator(cfg, tok)
    assert collator.composing and (collator.fim_rate, collator.control_dropout, collator.genre_dropout,
                                   collator.fim_order, collator.fim_max_bars) == (0.5, 0.2, 0.1, "spm", 4)
    assert default.fim_order == "psm" and default.fim_max_bars is None


# ----- control_ids refusals --------------------------------------------------------------------------------------
@pytest.mark.parametrize("controls,message", [
    ({"tempo_x": 120}, "unknown control 'tempo_x'; accepted: key, density, polyphony, pitch_range"),
    ({"tempo": 120}, r"unknown control 'tempo'.*opening_ids\(tempo=...\)"),
    ({"key": "H minor"}, r"key must be a tonic \(C, C#, Db, ... B\).*'D minor'.*got 'H minor'"),
    ({"key": "D dorian"}, "key must be a tonic.*got 'D dorian'"),
    ({"key": 2}, "key must be a tonic.*got 2"),
    ({"density": -1}, "density must be a number of notes per bar >= 0, got -1"),
    ({"density": "dense"}, "density must be a number of notes per bar >= 0, got 'dense'"),
    ({"density": float("nan")}, "density must be a number"),
    ({"density": True}, "density must be a number"),
    ({"polyphony": 0.5}, "polyphony must be a mean number of notes sounding at each onset >= 1, got 0.5"),
    ({"pitch_range": (80, 40)}, r"pitch_range must be \(low, high\) MIDI pitches, integers 0-127 with low <= high; "
                                r"got \(80, 40\)"),
    ({"pitch_range": (40, 128)}, "pitch_range must be"),
    ({"pitch_range": (40.5, 60)}, "pitch_range must be"),
    ({"pitch_range": 60}, "pitch_range must be.*got 60"),
    ({"pitch_range": (40, 60, 80)}, "pitch_range must be"),
])
def test_control_ids_reject_bad_input_naming_what_is_accepted(tok, controls, message):
    with pytest.raises(ValueError, match=message):
        tok.control_ids(controls)


def test_control_ids_take_a_mapping(tok):
    with pytest.raises(TypeError, match="controls must be a mapping of key, density, polyphony, pitch_range"):
        tok.control_ids(["key"])
