"""Tests for music_hf.data on real corpus pieces: splits, skipped files, the Arrow cache, HF datasets,
bar-aligned windows, packing, streaming, token-level augmentation and the collator."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import symusic
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import music_hf.data as data_module
from music_hf.corpus import prepare_corpus
from music_hf.corpus import read_midi_folder
from music_hf.data import (
    AugmentationConfig,
    MusicDataCollator,
    TokenAugmenter,
    genre_names,
    iterable_windows,
    load_or_tokenize,
    make_windows,
    pieces_from_entries,
    pieces_from_hf_dataset,
    split_of,
    streaming_windows,
    tokenize_pieces,
    window_starts,
)
from music_hf.tokenization_music import MusicTokenizer

# the same collections and size as scripts/configs/tiny.yaml, in the session's shared corpus folder, so
# tests/test_training.py reuses the conversion
COLLECTIONS = ["bach", "essenFolksong"]
PIECES_PER_COLLECTION = 8
GENRES = genre_names(["folk song", "chorale", "unknown"])  # ["unknown", "chorale", "folk song"]
MAX_LENGTH, OVERLAP = 128, 16


# ----- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def entries(tmp_path_factory):
    out = tmp_path_factory.getbasetemp() / "music_hf_cache" / "corpus"
    summary = prepare_corpus(output_dir=str(out), collections=COLLECTIONS,
                             max_pieces_per_collection=PIECES_PER_COLLECTION, num_workers=2, progress=False)
    assert len(summary.entries) >= 12, summary.report()
    return summary.entries


@pytest.fixture(scope="module")
def tokenizer():
    return MusicTokenizer()


@pytest.fixture(scope="module")
def pieces(entries):
    return pieces_from_entries(entries)


@pytest.fixture(scope="module")
def all_tokenized(pieces, tokenizer):
    """Every piece in the train split (no validation or test), tokenized."""
    ds, summary = tokenize_pieces(pieces, tokenizer, GENRES, validation_fraction=0.0, test_fraction=0.0)
    assert summary.pieces["train"] == len(pieces) and not summary.failed
    return ds["train"]


@pytest.fixture(scope="module")
def windows(all_tokenized, tokenizer):
    return make_windows(all_tokenized, tokenizer, MAX_LENGTH, OVERLAP)


@pytest.fixture(scope="module")
def bar_table(tokenizer):
    return np.asarray(tokenizer.music_attributes()["bar_count"]) > 0


@pytest.fixture(scope="module")
def ranks(tokenizer):
    """kind -> array mapping each id to its rank among that kind's values (-1 for other ids)."""
    out = {}
    for kind, ids in tokenizer.value_tables().items():
        r = np.full(tokenizer.vocab_size, -1)
        r[ids] = np.arange(len(ids))
        out[kind] = r
    return out


def _split_of_sources(ds: datasets.DatasetDict) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, split in ds.items():
        for source in split["source"]:
            assert source not in out, f"{source} is in both {out[source]} and {name}"
            out[source] = name
    return out


# ----- splits -------------------------------------------------------------------------------------------
def test_splits_are_by_piece_reproducible_and_seeded(pieces, tokenizer):
    kwargs = dict(validation_fraction=0.25, test_fraction=0.25)
    ds, summary = tokenize_pieces(pieces, tokenizer, GENRES, seed=0, **kwargs)
    assignment = _split_of_sources(ds)  # fails if a source is in two splits
    assert set(assignment) == set(pieces["source"])
    assert assignment == {s: split_of(s, 0, **kwargs) for s in pieces["source"]}
    assert sum(summary.pieces.values()) == len(pieces)
    assert {name for name in assignment.values()} == {"train", "validation", "test"}

    again, _ = tokenize_pieces(pieces, tokenizer, GENRES, seed=0, **kwargs)
    assert _split_of_sources(again) == assignment
    assert again["train"]["input_ids"] == ds["train"]["input_ids"]

    other_seed, _ = tokenize_pieces(pieces, tokenizer, GENRES, seed=1, **kwargs)
    assert _split_of_sources(other_seed) != assignment

    # windows keep their piece's split: no piece's material on both sides
    window_sources = {name: set(make_windows(split, tokenizer, MAX_LENGTH, OVERLAP)["source"])
                      for name, split in ds.items() if len(split)}
    names = list(window_sources)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not window_sources[a] & window_sources[b]


def test_split_of_a_piece_does_not_depend_on_other_pieces(pieces, tokenizer):
    kwargs = dict(validation_fraction=0.25, test_fraction=0.25, seed=3)
    full = _split_of_sources(tokenize_pieces(pieces, tokenizer, GENRES, **kwargs)[0])
    subset = _split_of_sources(tokenize_pieces(pieces.select(range(0, len(pieces), 2)), tokenizer, GENRES,
                                               **kwargs)[0])
    assert subset and all(full[s] == split for s, split in subset.items())


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), validation=st.floats(0.0, 0.4), test=st.floats(0.0, 0.4))
def test_split_fractions_are_respected_on_many_sources(seed, validation, test):
    sources = [f"collection/piece{i}.mid" for i in range(3000)]
    counts = Counter(split_of(s, seed, validation, test) for s in sources)
    assert abs(counts["test"] / 3000 - test) < 0.04
    assert abs(counts["validation"] / 3000 - validation) < 0.04
    assert [split_of(s, seed, validation, test) for s in sources[:50]] == \
        [split_of(s, seed, validation, test) for s in sources[:50]]


# ----- skipped files ------------------------------------------------------------------------------------
def test_bad_files_are_skipped_counted_and_named(entries, tokenizer, tmp_path):
    good = [e.path for e in entries]
    garbage = tmp_path / "garbage.mid"
    garbage.write_bytes(b"this is not a MIDI file at all")
    truncated = tmp_path / "truncated.mid"
    truncated.write_bytes(Path(good[0]).read_bytes()[:40])
    no_notes = tmp_path / "no_notes.mid"
    empty = symusic.Score(480)
    empty.tracks.append(symusic.Track("empty", 0, False))
    empty.dump_midi(str(no_notes))
    missing = tmp_path / "missing.mid"
    bad = [str(garbage), str(truncated), str(no_notes), str(missing)]

    paths = good[:5] + bad[:2] + good[5:] + bad[2:]
    pieces = datasets.Dataset.from_dict({"path": paths, "genre": ["chorale"] * len(paths), "source": paths})
    ds, summary = tokenize_pieces(pieces, tokenizer, GENRES, validation_fraction=0.0, test_fraction=0.0)

    assert sorted(src for src, _ in summary.failed) == sorted(bad)
    for src, why in summary.failed:
        assert Path(src).name in why  # the reason names the file
    assert "skipped: 4 file(s)" in str(summary)
    assert sorted(ds["train"]["source"]) == sorted(good)  # nothing else lost
    assert all(len(ids) > 2 for ids in ds["train"]["input_ids"])


# ----- Arrow cache --------------------------------------------------------------------------------------
def test_load_or_tokenize_loads_the_second_call_from_disk(pieces, tokenizer, tmp_path, monkeypatch):
    kwargs = dict(validation_fraction=0.25, test_fraction=0.25, seed=0)
    first, summary = load_or_tokenize(pieces, tokenizer, GENRES, cache_dir=tmp_path, **kwargs)
    assert list(tmp_path.glob("tokenized-*/summary.json"))

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenize_pieces called although the cache holds these pieces")

    monkeypatch.setattr(data_module, "tokenize_pieces", no_tokenizing)
    second, cached_summary = load_or_tokenize(pieces, tokenizer, GENRES, cache_dir=tmp_path, **kwargs)
    assert cached_summary == summary
    for name in first:
        assert second[name]["input_ids"] == first[name]["input_ids"]
        assert second[name]["source"] == first[name]["source"]
        assert second[name]["genre_id"] == first[name]["genre_id"]

    # other settings or other pieces are not served from this cache
    with pytest.raises(AssertionError, match="tokenize_pieces called"):
        load_or_tokenize(pieces, tokenizer, GENRES, cache_dir=tmp_path, **(kwargs | {"seed": 1}))
    with pytest.raises(AssertionError, match="tokenize_pieces called"):
        load_or_tokenize(pieces.select(range(3)), tokenizer, GENRES, cache_dir=tmp_path, **kwargs)


def test_cache_tells_apart_hf_datasets_with_the_same_rows(entries, tokenizer, tmp_path):
    """Rows of a HF dataset are named row-0, row-1...: the cache must look at the MIDI bytes, not the names."""
    midi = [Path(e.path).read_bytes() for e in entries]
    a = pieces_from_hf_dataset(datasets.Dataset.from_dict({"midi": midi[:4], "genre": ["chorale"] * 4}))
    b = pieces_from_hf_dataset(datasets.Dataset.from_dict({"midi": midi[4:8], "genre": ["chorale"] * 4}))
    kwargs = dict(music_column="midi_bytes", validation_fraction=0.0, test_fraction=0.0)
    ds_a, _ = load_or_tokenize(a, tokenizer, GENRES, cache_dir=tmp_path, **kwargs)
    ds_b, _ = load_or_tokenize(b, tokenizer, GENRES, cache_dir=tmp_path, **kwargs)
    assert ds_a["train"]["input_ids"] != ds_b["train"]["input_ids"]
    assert ds_b["train"]["input_ids"] == [tokenize_pieces(b, tokenizer, GENRES, **kwargs)[0]["train"][i]["input_ids"]
                                          for i in range(4)]


# ----- HF datasets --------------------------------------------------------------------------------------
@pytest.mark.parametrize("as_struct", [False, True], ids=["bytes", "struct"])
def test_hf_dataset_with_midi_bytes_tokenizes_like_the_files(entries, all_tokenized, tokenizer, as_struct):
    midi = [Path(e.path).read_bytes() for e in entries]
    column = [{"bytes": m, "path": Path(e.path).name} for m, e in zip(midi, entries)] if as_struct else midi
    hf = datasets.Dataset.from_dict({"midi": column, "genre": [e.genre for e in entries],
                                     "name": [e.source for e in entries]})
    pieces = pieces_from_hf_dataset(hf, midi_column="midi", genre_column="genre", source_column="name")
    assert sorted(pieces.column_names) == ["genre", "midi_bytes", "source"]
    ds, summary = tokenize_pieces(pieces, tokenizer, GENRES, music_column="midi_bytes",
                                  validation_fraction=0.0, test_fraction=0.0)
    assert not summary.failed
    by_source = dict(zip(all_tokenized["source"], all_tokenized["input_ids"]))
    assert dict(zip(ds["train"]["source"], ds["train"]["input_ids"])) == by_source
    assert ds["train"]["genre_id"] == all_tokenized["genre_id"]


# ----- windows ------------------------------------------------------------------------------------------
def _windows_by_piece(windows: datasets.Dataset) -> dict[str, list[list[int]]]:
    out: dict[str, list[list[int]]] = {}
    for ids, source in zip(windows["input_ids"], windows["source"]):
        out.setdefault(source, []).append(ids)
    return out


def test_windows_are_bounded_and_start_at_bars(windows, all_tokenized, bar_table, tokenizer):
    by_piece = _windows_by_piece(windows)
    assert set(by_piece) == set(all_tokenized["source"])
    assert sum(len(w) > 1 for w in by_piece.values()) >= 5  # long pieces were cut
    for source, ws in by_piece.items():
        assert all(1 <= len(w) <= MAX_LENGTH for w in ws)
        assert ws[0][0] == tokenizer.bos_token_id
        assert all(bar_table[w[0]] for w in ws[1:]), source
    assert windows["idx"] == list(range(len(windows)))


def test_windows_cover_each_piece_with_the_configured_overlap(windows, all_tokenized, bar_table):
    by_piece = _windows_by_piece(windows)
    stride = MAX_LENGTH - OVERLAP
    for ids, source in zip(all_tokenized["input_ids"], all_tokenized["source"]):
        arr = np.asarray(ids)
        bars = np.flatnonzero(bar_table[arr])
        assert np.diff(bars).max() <= MAX_LENGTH  # else a bar cannot fit a window (not so in this corpus)
        starts = window_starts(bar_table[arr], len(arr), MAX_LENGTH, stride)
        ws = by_piece[source]
        assert ws == [ids[s: s + MAX_LENGTH] for s in starts]
        # concatenating the windows minus their overlaps gives the piece back: nothing lost, nothing added
        rebuilt = list(ws[0])
        for prev, start, w in zip(starts, starts[1:], ws[1:]):
            end = prev + MAX_LENGTH
            assert start <= end, f"{source}: tokens {end}..{start} are in no window"
            shared = end - start
            assert w[:shared] == rebuilt[start:end]
            rebuilt += w[shared:]
            # each next window starts as late as allowed: at the last bar within the stride
            later_bars = bars[(bars > prev) & (bars <= prev + stride)]
            if len(later_bars):
                assert start == later_bars[-1] and shared >= OVERLAP
        assert rebuilt == ids, source


def test_window_starts_follow_the_stride_on_regular_bars():
    bars = np.zeros(200, dtype=bool)
    bars[::8] = True
    assert window_starts(bars, 200, 32, 24) == list(range(0, 169, 24))
    assert window_starts(bars, 200, 32, 32) == list(range(0, 193, 32))
    assert window_starts(bars, 20, 32, 24) == [0]  # a short piece is one window


def test_window_starts_leave_no_gap_when_bars_miss_the_stride():
    # bars at 0, 60, 130, 190, 260: a window of 128 ending at 128 must not skip tokens 128-129
    bars = np.zeros(300, dtype=bool)
    bars[[0, 60, 130, 190, 260]] = True
    starts = window_starts(bars, 300, 128, 128)
    assert starts == [0, 60, 130, 190]
    assert all(b <= a + 128 for a, b in zip(starts, starts[1:])) and starts[-1] + 128 >= 300


@settings(max_examples=200, deadline=None)
@given(length=st.integers(1, 400), max_length=st.integers(4, 64), overlap=st.integers(0, 16),
       bar_every=st.lists(st.integers(1, 80), min_size=1, max_size=60))
def test_window_starts_invariants(length, max_length, overlap, bar_every):
    overlap = min(overlap, max_length - 1)
    stride = max_length - overlap
    positions = np.cumsum([0] + bar_every)
    flags = np.zeros(length, dtype=bool)
    flags[positions[positions < length]] = True
    starts = window_starts(flags, length, max_length, stride)
    assert starts[0] == 0 and all(a < b for a, b in zip(starts, starts[1:]))
    assert all(flags[s] for s in starts[1:])
    longest_bar = max(np.diff(np.append(np.flatnonzero(flags), length)), default=length)
    if longest_bar <= max_length:  # every bar fits a window: every token is covered
        assert all(b <= a + max_length for a, b in zip(starts, starts[1:]))
        assert starts[-1] + max_length >= length


def test_packing_fills_windows(all_tokenized, tokenizer):
    max_length = 512
    plain = make_windows(all_tokenized, tokenizer, max_length, overlap=0)
    packed = make_windows(all_tokenized, tokenizer, max_length, overlap=0, pack=True)
    plain_ids, packed_ids = plain["input_ids"], packed["input_ids"]
    assert len(packed_ids) < len(plain_ids)
    assert all(len(w) <= max_length for w in packed_ids)
    assert sum(packed_ids, []) == sum(plain_ids, [])  # same tokens in the same order
    assert packed["idx"] == list(range(len(packed_ids)))
    # greedy: a packed window is closed only when the next window does not fit in it
    it = iter(plain_ids)
    firsts = []
    for w in packed_ids:
        first, taken = next(it), None
        firsts.append(len(first))
        taken = len(first)
        while taken < len(w):
            taken += len(next(it))
        assert taken == len(w)
    for w, next_first in zip(packed_ids, firsts[1:]):
        assert len(w) + next_first > max_length
    assert np.mean([len(w) for w in packed_ids]) > np.mean([len(w) for w in plain_ids])


# ----- streaming ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_pieces", [16, 15], ids=["shards-per-rank", "uneven-shards"])
def test_streaming_ranks_share_the_windows_without_overlap(all_tokenized, windows, tokenizer, n_pieces):
    pieces = all_tokenized.select(range(min(n_pieces, len(all_tokenized))))
    expected = Counter(tuple(w) for w, s in zip(windows["input_ids"], windows["source"])
                       if s in set(pieces["source"]))
    per_rank = []
    for rank in range(2):
        stream = iterable_windows(pieces, tokenizer, MAX_LENGTH, OVERLAP, seed=0, rank=rank, world_size=2)
        per_rank.append(list(stream))
    assert per_rank[0] and per_rank[1]
    got = [Counter(tuple(ex["input_ids"]) for ex in rows) for rows in per_rank]
    assert not set(got[0]) & set(got[1])
    assert got[0] + got[1] == expected
    ids = [ex["idx"] for rows in per_rank for ex in rows]
    assert len(set(ids)) == len(ids)  # each streamed window seeds its own augmentation


def test_genre_names_put_unknown_first():
    assert GENRES == ["unknown", "chorale", "folk song"]
    assert genre_names([]) == ["unknown"]


@pytest.fixture(scope="module")
def real_midi_folder(real_midi_paths, tmp_path_factory):
    """The seven real MIDI files, the two chorales in a `chorale` sub-folder (their genre), the others on top."""
    folder = tmp_path_factory.mktemp("real_midi_folder")
    for path in real_midi_paths:
        target = folder / ("chorale" if path.name.startswith("bach") else "") / path.name
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(path.read_bytes())
    return folder


def _streamed_by_rank(tokenizer, world_size: int = 2, **kwargs) -> list[list[dict]]:
    return [list(streaming_windows(tokenizer, GENRES, MAX_LENGTH, OVERLAP, rank=rank, world_size=world_size,
                                   **kwargs)) for rank in range(world_size)]


def _saved(ds: datasets.Dataset, folder: Path) -> str:
    ds.save_to_disk(str(folder))
    return str(folder)


def _parquet(ds: datasets.Dataset, folder: Path) -> str:
    folder.mkdir()
    ds.to_parquet(str(folder / "train.parquet"))
    return str(folder)


@pytest.mark.parametrize("origin", ["midi_dir", "entries", "dataset", "saved", "stream", "parquet"])
def test_streaming_windows_give_each_rank_its_own_pieces(real_midi_folder, tokenizer, tmp_path, monkeypatch, origin):
    """Two processes stream disjoint sets of pieces whose union is every piece, cut as make_windows cuts them.

    A parquet file is one shard: two processes then share it by window (datasets' fallback), not by piece.
    """
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)  # 5 s after each parquet pass
    entries = read_midi_folder(str(real_midi_folder))
    assert len(entries) == 7 and {e.genre for e in entries} == {"chorale", "unknown"}
    tokenized, _ = tokenize_pieces(pieces_from_entries(entries), tokenizer, GENRES, validation_fraction=0.0,
                                   test_fraction=0.0)
    expected = make_windows(tokenized["train"], tokenizer, MAX_LENGTH, OVERLAP)
    hf = datasets.Dataset.from_dict({"midi": [Path(e.path).read_bytes() for e in entries],
                                     "genre": [e.genre for e in entries], "name": [e.source for e in entries]})
    kwargs = {
        "midi_dir": {"midi_dir": real_midi_folder},
        "entries": {"entries": entries},
        "dataset": {"dataset": hf, "source_column": "name"},
        "saved": {"dataset": _saved(hf, tmp_path / "saved"), "source_column": "name"},
        "parquet": {"dataset": _parquet(hf, tmp_path / "parquet"), "source_column": "name"},
        "stream": {"dataset": hf.to_iterable_dataset(num_shards=4)},  # sources: digests of the bytes
    }[origin]
    per_rank = _streamed_by_rank(tokenizer, split=None, seed=0, **kwargs)

    windows = [Counter((tuple(w["input_ids"]), w["genre_id"]) for w in rows) for rows in per_rank]
    assert windows[0] and windows[1] and not set(windows[0]) & set(windows[1])
    assert windows[0] + windows[1] == Counter(zip(map(tuple, expected["input_ids"]), expected["genre_id"]))
    sources = [{w["source"] for w in rows} for rows in per_rank]
    assert len(sources[0] | sources[1]) == len(entries)
    if origin != "stream":
        assert sources[0] | sources[1] == {e.source for e in entries}
    if origin != "parquet":
        assert not sources[0] & sources[1]
    idx = [w["idx"] for rows in per_rank for w in rows]
    assert len(set(idx)) == len(idx)
    assert _streamed_by_rank(tokenizer, split=None, seed=0, **kwargs) == per_rank  # seeded: the same order again


def test_streaming_windows_keep_only_their_split_and_reshuffle_by_epoch(real_midi_folder, tokenizer):
    fractions = dict(validation_fraction=0.3, test_fraction=0.3)
    sources = {e.source for e in read_midi_folder(str(real_midi_folder))}
    for seed in range(2):
        for split in ("train", "test"):
            per_rank = _streamed_by_rank(tokenizer, midi_dir=real_midi_folder, split=split, seed=seed, **fractions)
            assert {w["source"] for rows in per_rank for w in rows} == \
                {s for s in sources if split_of(s, seed, **fractions) == split}
    stream = streaming_windows(tokenizer, GENRES, MAX_LENGTH, OVERLAP, midi_dir=real_midi_folder, split=None,
                               buffer_size=8)
    orders = []
    for epoch in range(3):
        stream.set_epoch(epoch)
        orders.append([w["source"] for w in stream])
    assert sorted(orders[0]) == sorted(orders[1]) == sorted(orders[2])
    assert len({tuple(o) for o in orders}) > 1
    with pytest.raises(ValueError, match="exactly one"):
        streaming_windows(tokenizer, GENRES, MAX_LENGTH)


# ----- augmentation -------------------------------------------------------------------------------------
def _sample_windows(windows: datasets.Dataset, n: int = 40) -> list[list[int]]:
    return windows.select(range(0, len(windows), max(1, len(windows) // n)))["input_ids"]


def _augment(tokenizer, config: AugmentationConfig, ids: list[int], *seed: int) -> list[int]:
    return TokenAugmenter(tokenizer, config)(ids, np.random.default_rng(list(seed)))


def _changed_kinds(ranks, before, after) -> set[str]:
    before, after = np.asarray(before), np.asarray(after)
    changed = before != after
    kinds = {kind for kind, r in ranks.items() if (r[before[changed]] >= 0).any()}
    assert all(any(r[i] >= 0 for r in ranks.values()) for i in before[changed])  # only valued tokens move
    return kinds


def _rank_deltas(ranks, kind, before, after) -> np.ndarray:
    before, after = np.asarray(before), np.asarray(after)
    sel = ranks[kind][before] >= 0
    assert (ranks[kind][after[sel]] >= 0).all()  # a token stays of its kind
    return ranks[kind][after[sel]] - ranks[kind][before[sel]]


def test_pitch_shift_transposes_every_pitch_by_one_amount(windows, tokenizer, ranks):
    config = AugmentationConfig(pitch_shift=5)
    shifts = set()
    for i, ids in enumerate(_sample_windows(windows)):
        out = _augment(tokenizer, config, ids, 0, 0, i)
        assert _changed_kinds(ranks, ids, out) <= {"Pitch"}
        deltas = set(_rank_deltas(ranks, "Pitch", ids, out).tolist())
        assert len(deltas) == 1 and abs(next(iter(deltas))) <= 5
        shifts |= deltas
    assert len(shifts) > 3  # different windows, different transpositions


def _drum_piece(path: Path) -> Path:
    score = symusic.Score(480)
    piano = symusic.Track("piano", 0, False)
    drums = symusic.Track("drums", 0, True)
    for beat in range(32):
        piano.notes.append(symusic.Note(beat * 480, 480, 60 + beat % 12, 80))
        drums.notes.append(symusic.Note(beat * 480, 120, 36 if beat % 2 else 38, 100))
        drums.notes.append(symusic.Note(beat * 480 + 240, 120, 42, 90))
    score.tracks.extend([piano, drums])
    score.dump_midi(str(path))
    return path


def test_pitch_shift_leaves_drums_alone(tokenizer, ranks, tmp_path):
    ids = [tokenizer.bos_token_id] + tokenizer.encode_score(str(_drum_piece(tmp_path / "drums.mid")))
    drum_ids = {i for i in range(tokenizer.vocab_size) if tokenizer.convert_ids_to_tokens(i).startswith("PitchDrum")}
    n_drums = sum(i in drum_ids for i in ids)
    assert n_drums == 64
    config = AugmentationConfig(pitch_shift=4)
    moved = 0
    for seed in range(8):
        out = _augment(tokenizer, config, ids, seed, 0, 0)
        assert [i for i in out if i in drum_ids] == [i for i in ids if i in drum_ids]
        deltas = set(_rank_deltas(ranks, "Pitch", ids, out).tolist())
        assert len(deltas) == 1
        moved += deltas != {0}
        before, after = tokenizer.decode_midi(ids), tokenizer.decode_midi(out)
        drum_track = [t for t in after.tracks if t.is_drum]
        assert drum_track and [n.pitch for n in drum_track[0].notes] == \
            [n.pitch for n in [t for t in before.tracks if t.is_drum][0].notes]
    assert moved  # some seed transposed the piano while the drums stayed


def test_tempo_shift_moves_every_tempo_by_one_amount(windows, tokenizer, ranks):
    config = AugmentationConfig(tempo_shift=3)
    shifts = set()
    for i, ids in enumerate(_sample_windows(windows)):
        out = _augment(tokenizer, config, ids, 0, 0, i)
        assert _changed_kinds(ranks, ids, out) <= {"Tempo"}
        deltas = set(_rank_deltas(ranks, "Tempo", ids, out).tolist())
        assert len(deltas) <= 1 and all(abs(d) <= 3 for d in deltas)
        shifts |= deltas
    assert len(shifts) > 1


@pytest.mark.parametrize("kind", ["Velocity", "Duration"])
def test_jitter_changes_only_its_kind_within_range(windows, tokenizer, ranks, kind):
    config = AugmentationConfig(**{f"{kind.lower()}_jitter": 2})
    changed = 0
    for i, ids in enumerate(_sample_windows(windows)):
        out = _augment(tokenizer, config, ids, 0, 0, i)
        assert _changed_kinds(ranks, ids, out) <= {kind}
        deltas = _rank_deltas(ranks, kind, ids, out)
        assert np.abs(deltas).max(initial=0) <= 2
        changed += int((deltas != 0).sum())
    assert changed > 50


def test_position_jitter_keeps_positions_increasing_in_each_bar(windows, tokenizer, ranks, bar_table):
    config = AugmentationConfig(position_jitter=2)
    changed = 0
    for i, ids in enumerate(_sample_windows(windows)):
        out = np.asarray(_augment(tokenizer, config, ids, 0, 0, i))
        assert _changed_kinds(ranks, ids, out) <= {"Position"}
        deltas = _rank_deltas(ranks, "Position", ids, out)
        assert np.abs(deltas).max(initial=0) <= 2
        changed += int((deltas != 0).sum())
        where = np.flatnonzero(ranks["Position"][out] >= 0)
        bar_of = np.cumsum(bar_table[out])[where]
        values = ranks["Position"][out[where]]
        same_bar = bar_of[1:] == bar_of[:-1]
        assert (values[1:][same_bar] > values[:-1][same_bar]).all()
    assert changed > 20


def _program_values(tokenizer, ids) -> list[int | None]:
    table = tokenizer.token_table
    program_ids = set(tokenizer.kind_ids("Program").tolist())
    return [(-1 if table.value[i] >= 128 else int(table.value[i])) if i in program_ids else None for i in ids]


def test_program_reassign_moves_whole_instruments_across_families_and_keeps_drums(windows, tokenizer, tmp_path):
    config = AugmentationConfig(program_reassign=1.0)
    drum_piece = [tokenizer.bos_token_id] + tokenizer.encode_score(str(_drum_piece(tmp_path / "drums.mid")))
    families = set()
    for i, ids in enumerate([drum_piece, *_sample_windows(windows, 20)]):
        for seed in range(3):
            out = _augment(tokenizer, config, ids, seed, 0, i)
            before, after = _program_values(tokenizer, ids), _program_values(tokenizer, out)
            # only Program tokens change, drums stay drums, pitched parts stay pitched
            assert [a for a, p in zip(ids, before) if p is None] == [b for b, p in zip(out, after) if p is None]
            assert all((a == -1) == (b == -1) for a, b in zip(before, after) if a is not None)
            # one new program per old one (the whole part moves), to a pitched General MIDI family
            mapping = {}
            for a, b in zip(before, after):
                if a is not None and a >= 0:
                    assert mapping.setdefault(a, b) == b
                    assert 0 <= b < 112
                    families.add(b // 8)
            assert tokenizer.grammar_errors(out) == tokenizer.grammar_errors(ids)
            assert tokenizer.decode_midi(out).note_num() == tokenizer.decode_midi(ids).note_num()
    assert len(families) >= 10  # strings, brass, reeds, guitars... not only the corpus's piano and choir


def test_velocity_dynamics_span_the_whole_range(windows, tokenizer, ranks):
    config = AugmentationConfig(velocity_dynamics=1.0)
    levels, spans, bins = [], [], set()
    for i, ids in enumerate(_sample_windows(windows, 30)):
        out = _augment(tokenizer, config, ids, 0, 0, i)
        assert _changed_kinds(ranks, ids, out) <= {"Velocity"}
        after = ranks["Velocity"][np.asarray(out)]
        after = after[after >= 0]
        levels.append(after.mean())
        spans.append(after.max() - after.min())
        bins |= set(after.tolist())
        assert tokenizer.grammar_errors(out) == tokenizer.grammar_errors(ids)
    top = len(tokenizer.value_tables()["Velocity"]) - 1
    assert len(bins) >= top - 1  # pp to ff, where the corpus has one score velocity
    assert min(levels) < 0.35 * top and max(levels) > 0.65 * top  # soft and loud windows
    assert np.median(spans) >= 3  # dynamics inside a window, not one level


FULL = AugmentationConfig(pitch_shift=5, tempo_shift=2, velocity_jitter=2, duration_jitter=1, position_jitter=1,
                          velocity_dynamics=0.5, program_reassign=0.5)


def test_augmented_windows_stay_grammatical_with_the_same_notes(windows, tokenizer):
    for i, ids in enumerate(_sample_windows(windows, 30)):
        out = _augment(tokenizer, FULL, ids, 0, 0, i)
        assert out != ids
        assert tokenizer.grammar_errors(out) == tokenizer.grammar_errors(ids) == 0
        assert tokenizer.decode_midi(out).note_num() == tokenizer.decode_midi(ids).note_num()


def test_augmentation_is_seeded_by_seed_epoch_and_window(windows, tokenizer):
    rows = windows.select(range(8))
    examples = [dict(r) for r in rows]
    augmenter = TokenAugmenter(tokenizer, FULL)

    def batch(seed: int, epoch: int) -> torch.Tensor:
        collator = MusicDataCollator(tokenizer.pad_token_id, augmenter=augmenter, seed=seed)
        collator.epoch = epoch
        return collator(examples)["input_ids"]

    assert torch.equal(batch(0, 0), batch(0, 0))
    assert not torch.equal(batch(0, 0), batch(0, 1))
    assert not torch.equal(batch(0, 0), batch(1, 0))
    # the augmentation of a window depends on its idx, not on its place in the batch
    single = MusicDataCollator(tokenizer.pad_token_id, augmenter=augmenter)([examples[3]])["input_ids"][0]
    full = batch(0, 0)[3]
    assert torch.equal(full[: len(single)], single)


def test_augmentation_probability_and_off_switch(windows, tokenizer):
    ids = windows[5]["input_ids"]
    assert not AugmentationConfig().enabled
    assert not AugmentationConfig(pitch_shift=3, probability=0.0).enabled
    half = AugmentationConfig(pitch_shift=5, velocity_jitter=2, probability=0.5)
    same = sum(_augment(tokenizer, half, ids, 0, 0, i) == ids for i in range(40))
    assert 5 < same < 35


# ----- collator -----------------------------------------------------------------------------------------
def test_collator_pads_right_with_mask_labels_and_genres(tokenizer):
    examples = [{"input_ids": [1, 5, 6, 7], "genre_id": 2, "idx": 0},
                {"input_ids": [8, 9], "genre_id": 1, "idx": 1},
                {"input_ids": [4, 4, 4, 4, 4, 4], "genre_id": 0, "idx": 2}]
    pad = tokenizer.pad_token_id
    batch = MusicDataCollator(pad)(examples)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "genre_ids"}
    assert batch["input_ids"].tolist() == [[1, 5, 6, 7, pad, pad], [8, 9, pad, pad, pad, pad], [4] * 6]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0], [1] * 6]
    assert batch["labels"].tolist() == [[1, 5, 6, 7, -100, -100], [8, 9, -100, -100, -100, -100], [4] * 6]
    assert batch["genre_ids"].tolist() == [2, 1, 0]
    assert all(t.dtype == torch.long for t in batch.values())
    padded = MusicDataCollator(pad, pad_to_multiple_of=8)(examples)
    assert padded["input_ids"].shape == (3, 8) and padded["labels"][:, 6:].eq(-100).all()


def test_collator_labels_follow_the_augmented_inputs(windows, tokenizer):
    examples = [dict(r) for r in windows.select(range(0, len(windows), max(1, len(windows) // 6)))]
    train = MusicDataCollator(tokenizer.pad_token_id, augmenter=TokenAugmenter(tokenizer, FULL), seed=0)
    evaluation = MusicDataCollator(tokenizer.pad_token_id)
    aug, plain = train(examples), evaluation(examples)
    mask = aug["attention_mask"].bool()
    assert torch.equal(mask, plain["attention_mask"].bool())
    assert torch.equal(aug["labels"][mask], aug["input_ids"][mask])
    assert aug["labels"][~mask].eq(-100).all()
    assert not torch.equal(aug["input_ids"], plain["input_ids"])  # augmentation was applied
    for row, ex in zip(plain["input_ids"], examples):  # evaluation leaves ids unchanged
        assert row[: len(ex["input_ids"])].tolist() == ex["input_ids"]
