"""Tests for music_hf.corpus: music21 corpus -> genre-labelled, cached MIDI files."""

from __future__ import annotations

import csv
import dataclasses
import json
import multiprocessing
import os
import shutil
import time

import pytest
import symusic

from music_hf.corpus import (
    COLLECTION_GENRES,
    CorpusEntry,
    DataSummary,
    convert_piece,
    genre_for_collection,
    list_collections,
    load_manifest,
    music21_corpus_dir,
    prepare_corpus,
    read_midi_folder,
    split_abc_tunes,
)

SUBSET = ["bach", "essenFolksong", "ryansMammoth", "trecento", "palestrina"]
N_EACH = 3
EXPECTED_GENRES = {
    "bach": "chorale",
    "essenFolksong": "folk song",
    "ryansMammoth": "fiddle tune",
    "trecento": "medieval",
    "palestrina": "renaissance",
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Convert 3 pieces of each of 5 collections once for the whole module."""
    out = tmp_path_factory.mktemp("corpus")
    summary = prepare_corpus(
        str(out), collections=SUBSET, max_pieces_per_collection=N_EACH, num_workers=2, progress=False
    )
    mtimes = {e.path: os.stat(e.path).st_mtime_ns for e in summary.entries}
    return summary, mtimes


def test_genre_table():
    assert genre_for_collection("bach") == "chorale"
    assert genre_for_collection("palestrina") == "renaissance"
    assert genre_for_collection("josquin") == "renaissance"
    assert genre_for_collection("trecento") == "medieval"
    assert genre_for_collection("ryansMammoth") == "fiddle tune"
    assert genre_for_collection("nottingham-dataset") == "fiddle tune"
    assert genre_for_collection("essenFolksong") == "folk song"
    assert genre_for_collection("mozart") == "classical"
    assert genre_for_collection("chopin") == "romantic"
    assert genre_for_collection("webern") == "modern"
    assert genre_for_collection("no_such_collection") == "other"
    # every real collection of the installed music21 corpus gets a label
    for name in list_collections():
        assert genre_for_collection(name)
    assert "demos" not in list_collections()
    assert set(COLLECTION_GENRES.values()) >= {
        "chorale", "renaissance", "medieval", "folk song", "fiddle tune", "baroque", "classical", "romantic", "modern",
    }


def test_all_pieces_converted_with_genre_labels(prepared):
    summary, _ = prepared
    assert isinstance(summary, DataSummary)
    assert summary.failed == []
    assert len(summary.entries) == N_EACH * len(SUBSET)
    counts = {}
    for e in summary.entries:
        assert isinstance(e, CorpusEntry)
        assert e.genre == EXPECTED_GENRES[e.collection], e
        counts[e.collection] = counts.get(e.collection, 0) + 1
    assert counts == {c: N_EACH for c in SUBSET}
    assert summary.genres == {g: N_EACH for g in EXPECTED_GENRES.values()}
    assert summary.pieces == {c: N_EACH for c in SUBSET}
    text = str(summary)
    assert "chorale" in text and "15 pieces" in text


def test_midi_files_exist_and_have_notes(prepared):
    summary, _ = prepared
    out = os.path.realpath(summary.output_dir)
    for e in summary.entries:
        assert e.path.endswith(".mid")
        assert os.path.realpath(e.path).startswith(os.path.join(out, e.collection) + os.sep)
        score = symusic.Score(e.path)
        assert score.note_num() > 0, e
        assert score.end() > 0


def test_deterministic_first_n_selection(prepared):
    summary, _ = prepared
    bach = [e.source for e in summary.entries if e.collection == "bach"]
    files = sorted(f for f in os.listdir(os.path.join(music21_corpus_dir(), "bach")) if f.endswith(".mxl"))
    assert bach == [f"bach/{f}" for f in files[:N_EACH]]
    ryans = [e.source for e in summary.entries if e.collection == "ryansMammoth"]
    assert ryans == sorted(ryans) and len(ryans) == N_EACH


def test_multi_tune_abc_file_is_split(prepared):
    summary, _ = prepared
    essen = [e for e in summary.entries if e.collection == "essenFolksong"]
    assert len(essen) == N_EACH
    files = {e.source.split("#")[0] for e in essen}
    assert files == {"essenFolksong/altdeu10.abc"}  # all three tunes from ONE file
    assert len({e.source for e in essen}) == N_EACH
    assert len({e.path for e in essen}) == N_EACH
    assert [e.source.split("#")[1] for e in essen] == ["0", "1", "2"]
    # different tunes -> different music
    pitches = {tuple(n.pitch for n in symusic.Score(e.path).tracks[0].notes[:20]) for e in essen}
    assert len(pitches) == N_EACH


def test_split_abc_tunes_keeps_header():
    text = "% comment\nM:3/4\nL:1/8\n\nX:1\nT:One\nK:C\nCDE|\n\nX:2\nT:Two\nK:G\nGAB|\n"
    tunes = split_abc_tunes(text)
    assert len(tunes) == 2
    assert all(t.startswith("M:3/4\nL:1/8\nX:") for t in tunes)
    assert "T:One" in tunes[0] and "T:Two" in tunes[1]
    assert "comment" not in tunes[0]
    assert split_abc_tunes("") == []


def test_manifest_written_and_loadable(prepared):
    summary, _ = prepared
    path = os.path.join(summary.output_dir, "metadata.jsonl")
    rows = [json.loads(line) for line in open(path, encoding="utf-8")]
    assert len(rows) == len(summary.entries)
    for row in rows:
        assert set(row) == {"path", "genre", "collection", "source"}
        assert not os.path.isabs(row["path"]) and row["path"].endswith(".mid")
        assert os.path.isfile(os.path.join(summary.output_dir, row["path"]))
    loaded = load_manifest(summary.output_dir)
    assert sorted(loaded.entries, key=lambda e: e.source) == sorted(summary.entries, key=lambda e: e.source)


def test_conversion_speed_is_reported_per_collection(prepared):
    summary, _ = prepared
    assert set(summary.conversion) == set(SUBSET) and summary.workers == 2
    for collection, (pieces, seconds) in summary.conversion.items():
        assert pieces == summary.pieces.get(collection, 0) + sum(
            1 for s, _ in summary.failed if s.startswith(collection + "/"))
        assert seconds > 0
    text = summary.report()
    assert "pieces/s per worker" in text and all(f"  {c}: " in text for c in SUBSET)


def test_second_call_is_cached(prepared):
    summary, mtimes = prepared
    t0 = time.perf_counter()
    again = prepare_corpus(
        summary.output_dir, collections=SUBSET, max_pieces_per_collection=N_EACH, num_workers=2, progress=False
    )
    elapsed = time.perf_counter() - t0
    assert again.converted == 0
    assert again.cached == len(summary.entries)
    assert sorted(e.source for e in again.entries) == sorted(e.source for e in summary.entries)
    assert {e.path: os.stat(e.path).st_mtime_ns for e in again.entries} == mtimes
    assert elapsed < 5.0 and elapsed < summary.elapsed_s
    # a smaller request is served from the same cache
    small = prepare_corpus(summary.output_dir, collections=["bach"], max_pieces_per_collection=1, progress=False)
    assert small.converted == 0 and [e.source for e in small.entries] == ["bach/bwv1.6.mxl"]
    # ...and the manifest still lists everything
    assert len(load_manifest(summary.output_dir).entries) == len(summary.entries)


def test_deleted_midi_is_reconverted(prepared, tmp_path):
    summary, _ = prepared
    out = tmp_path / "copy"
    shutil.copytree(summary.output_dir, out)
    victim = out / "ryansMammoth" / "7thRegimentReel.mid"
    assert victim.exists()
    victim.unlink()
    again = prepare_corpus(str(out), collections=["ryansMammoth"], max_pieces_per_collection=N_EACH, progress=False)
    assert again.converted == 1 and again.cached == N_EACH - 1
    assert victim.exists() and symusic.Score(str(victim)).note_num() > 0


def test_garbage_inputs_are_failures_not_errors(tmp_path, capfd):
    src = tmp_path / "junk"
    src.mkdir()
    (src / "garbage.mxl").write_bytes(b"this is not a zip file \x00\x01\x02")
    (src / "garbage.xml").write_text("<score-partwise><part id='P1'><measure", encoding="utf-8")
    (src / "garbage.abc").write_text("complete nonsense without any header\n", encoding="utf-8")
    (src / "empty.abc").write_text("X:1\nT:No notes\nK:C\n", encoding="utf-8")
    out = tmp_path / "out"
    for name in ["garbage.mxl", "garbage.xml", "garbage.abc", "empty.abc"]:
        entries, failed = convert_piece(str(src / name), str(out))
        assert entries == [], name
        assert len(failed) == 1 and failed[0][0] == f"junk/{name}", failed
        assert failed[0][1], "a reason is recorded"
    assert not list(out.rglob("*.mid")) if out.exists() else True
    # abc2midi's chatter on fd 1 is swallowed
    assert "Error in line" not in capfd.readouterr().out


def test_badly_formed_repeats_are_played_straight(tmp_path):
    """music21 refuses to expand incoherent repeats for MIDI; we fall back to no repeats."""
    from music21 import bar, note, stream

    part = stream.Part()
    for i in range(4):
        m = stream.Measure(number=i + 1)
        m.append(note.Note(60 + i, type="whole"))
        part.append(m)
    part.getElementsByClass(stream.Measure)[1].leftBarline = bar.Repeat(direction="start")  # never closed
    score = stream.Score()
    score.insert(0, part)
    src = tmp_path / "classical" / "bad_repeats.musicxml"
    src.parent.mkdir()
    score.write("musicxml", fp=str(src))
    entries, failed = convert_piece(str(src), str(tmp_path / "out"))
    assert failed == []
    assert [n.pitch for n in symusic.Score(entries[0].path).tracks[0].notes] == [60, 61, 62, 63]


def test_prepare_survives_bad_files(tmp_path):
    """A collection mixing good and broken files converts the good ones, counts the rest."""
    corpus = tmp_path / "corpus"
    (corpus / "miscFolk").mkdir(parents=True)
    (corpus / "miscFolk" / "a_bad.mxl").write_bytes(b"garbage")
    (corpus / "miscFolk" / "b_tunes.abc").write_text(
        "X:1\nT:Good\nM:4/4\nL:1/8\nK:D\nDEFG ABcd|d2 A2 F2 D2|]\n\n"
        "X:2\nT:Broken\nK:\n\n"
        "X:3\nT:Also good\nM:3/4\nL:1/4\nK:G\nG A B|c B A|G3|]\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    summary = prepare_corpus(str(out), corpus_dir=str(corpus), num_workers=1, progress=False)
    assert sorted(e.source for e in summary.entries) == ["miscFolk/b_tunes.abc#0", "miscFolk/b_tunes.abc#2"]
    assert all(e.genre == "folk song" for e in summary.entries)
    failed = dict(summary.failed)
    assert set(failed) == {"miscFolk/a_bad.mxl", "miscFolk/b_tunes.abc#1"}
    assert "skipped: 2 file(s)" in summary.report()
    # failures are remembered, not retried, on the next call
    again = prepare_corpus(str(out), corpus_dir=str(corpus), num_workers=1, progress=False)
    assert again.converted == 0 and len(again.failed) == 2
    assert len(load_manifest(str(out)).failed) == 2


@pytest.mark.skipif(multiprocessing.get_start_method() != "fork", reason="patch must reach forked workers")
def test_crashing_worker_is_a_failure(tmp_path, monkeypatch):
    """A worker that dies (segfault, hang killed by the watchdog) fails only its own piece."""
    import music_hf.corpus.convert as convert_mod

    original = convert_mod._convert_music21

    def crash_on_one(task):
        if task.rel_file.endswith("bwv10.7.mxl"):
            os._exit(3)
        return original(task)

    monkeypatch.setattr(convert_mod, "_convert_music21", crash_on_one)
    summary = prepare_corpus(
        str(tmp_path), collections=["bach"], max_pieces_per_collection=3, num_workers=2, progress=False
    )
    assert [e.source for e in summary.entries] == ["bach/bwv1.6.mxl", "bach/bwv101.7.mxl"]
    assert [s for s, _ in summary.failed] == ["bach/bwv10.7.mxl"]
    assert "crashed" in summary.failed[0][1]


def test_unknown_collection_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown corpus collection"):
        prepare_corpus(str(tmp_path), collections=["no_such_collection"], progress=False)


def _write_midi(path, pitch: int) -> None:
    score = symusic.Score(480)
    track = symusic.Track("t", 0, False)
    track.notes.append(symusic.Note(0, 480, pitch, 80))
    score.tracks.append(track)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    score.dump_midi(str(path))


@pytest.fixture
def midi_folder(tmp_path):
    root = tmp_path / "midis"
    _write_midi(root / "jazz" / "a.mid", 60)
    _write_midi(root / "jazz" / "deep" / "b.midi", 62)
    _write_midi(root / "rock" / "c.MID", 64)
    _write_midi(root / "top.mid", 65)
    _write_midi(root / "rock" / "song.kar", 67)  # karaoke MIDI: the tokenizer reads it, so the folder lists it
    (root / "notes.txt").write_text("not midi")
    return root


def test_read_midi_folder_uses_subfolders(midi_folder):
    entries = read_midi_folder(str(midi_folder), default_genre="misc")
    got = {e.source: (e.genre, e.collection) for e in entries}
    assert got == {
        "jazz/a.mid": ("jazz", "jazz"),
        "jazz/deep/b.midi": ("jazz", "jazz"),
        "rock/c.MID": ("rock", "rock"),
        "rock/song.kar": ("rock", "rock"),
        "top.mid": ("misc", "midis"),
    }
    assert all(os.path.isfile(e.path) for e in entries)


def test_read_midi_folder_with_csv_labels(midi_folder, tmp_path):
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "genre"])
        w.writerow(["jazz/a.mid", "bebop"])
        w.writerow(["c.MID", "punk"])  # file name only
        w.writerow(["top.mid", "ambient"])
    got = {e.source: e.genre for e in read_midi_folder(str(midi_folder), labels=str(labels))}
    assert got == {"jazz/a.mid": "bebop", "jazz/deep/b.midi": "unknown", "rock/c.MID": "punk",
                   "rock/song.kar": "unknown", "top.mid": "ambient"}
    alt = tmp_path / "alt.csv"
    alt.write_text("file,genre\njazz/deep/b.midi,cool\n")
    got = {e.source: e.genre for e in read_midi_folder(str(midi_folder), labels=str(alt), default_genre="x")}
    assert got["jazz/deep/b.midi"] == "cool" and got["top.mid"] == "x"


def test_read_midi_folder_with_json_labels(midi_folder, tmp_path):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"jazz/deep/b.midi": "swing", "top.mid": "piano", "a.mid": "bop"}))
    got = {e.source: e.genre for e in read_midi_folder(str(midi_folder), labels=str(labels))}
    assert got == {"jazz/a.mid": "bop", "jazz/deep/b.midi": "swing", "rock/c.MID": "unknown",
                   "rock/song.kar": "unknown", "top.mid": "piano"}
    records = tmp_path / "records.json"
    records.write_text(json.dumps([{"file": "c.MID", "style": "grunge"}]))
    got = {e.source: e.genre for e in read_midi_folder(str(midi_folder), labels=str(records))}
    assert got["rock/c.MID"] == "grunge" and got["top.mid"] == "unknown"
    bad = tmp_path / "labels.yaml"
    bad.write_text("a: b")
    with pytest.raises(ValueError):
        read_midi_folder(str(midi_folder), labels=str(bad))


def test_read_midi_folder_with_jsonl_labels_and_text_cells(midi_folder, tmp_path):
    """Labels files read through `datasets`: JSON lines, and CSV cells kept as text ("007" is not 7)."""
    _write_midi(midi_folder / "007.mid", 70)
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"path": "jazz/a.mid", "genre": "bebop"}\n{"Label": "surf", "File": "./rock/c.MID"}\n')
    got = {e.source: e.genre for e in read_midi_folder(str(midi_folder), labels=str(labels), default_genre="x")}
    assert got["jazz/a.mid"] == "bebop" and got["rock/c.MID"] == "surf" and got["top.mid"] == "x"
    csv_labels = tmp_path / "numbers.csv"
    csv_labels.write_text("\ufeffPath , Genre\n007,1990\ntop.mid,\n", encoding="utf-8")
    with pytest.raises(ValueError, match="needs a path/file and a genre"):  # the empty genre cell
        read_midi_folder(str(midi_folder), labels=str(csv_labels))
    csv_labels = tmp_path / "numbers_fixed.csv"
    csv_labels.write_text("Path , Genre\n007,1990\n", encoding="utf-8")
    got = {e.source: e.genre for e in read_midi_folder(str(midi_folder), labels=str(csv_labels))}
    assert got["007.mid"] == "1990" and got["top.mid"] == "unknown"


def test_part_books_merge_into_one_multitrack_piece(tmp_path):
    """A josquin ABC file holds one piece's voices: one MIDI, a track per named voice, the first voice's meter,
    tempo and key only (miditok's merge_scores would keep every voice's copy)."""
    src = os.path.join(music21_corpus_dir(), "josquin", "fortunaDunGranTempo.abc")
    entries, failed = convert_piece(src, str(tmp_path))
    assert failed == [] and len(entries) == 1 and entries[0].source == "josquin/fortunaDunGranTempo.abc"
    score = symusic.Score(entries[0].path)
    assert [t.name for t in score.tracks] == ["Fortuna dun gran tempo", "Tenor", "Bassus"]
    assert len(score.time_signatures) == len(score.tempos) == len(score.key_signatures) == 1
    assert score.key_signatures[0].key == 0  # the first voice's key; the lower voices carry one and two flats


def test_data_summary_reports_a_corpus_and_a_tokenization_alike():
    entry = CorpusEntry("/c/bach/a.mid", "chorale", "bach", "bach/a.mxl")
    corpus = DataSummary.of_corpus([entry, entry], [("bach/b.mxl", "ValueError: no notes")], "/c",
                                   converted=1, cached=1)
    assert corpus.pieces == {"bach": 2} and corpus.genres == {"chorale": 2}
    text = corpus.report()
    assert text.startswith("Corpus at /c: 2 pieces (1 converted now, 1 cached")
    assert "skipped: 1 file(s)" in text and "bach/b.mxl: ValueError: no notes" in text
    failed = [(f"f{i}.mid", f"f{i}.mid: not MIDI") for i in range(12)]
    tokenized = DataSummary(pieces={"train": 3, "test": 1}, tokens={"train": 300, "test": 90}, failed=failed)
    text = str(tokenized)
    assert text.startswith("4 pieces\n") and "tokens: {'train': 300" in text and "skipped: 12 file(s)" in text
    assert "f9.mid" in text and "f10.mid" not in text and "... and 2 more" in text
    for summary in (corpus, tokenized):  # what load_or_tokenize saves as JSON comes back equal
        assert DataSummary.from_dict(json.loads(json.dumps(dataclasses.asdict(summary)))) == summary


@pytest.mark.slow
def test_full_abc_collection_and_bach_40(tmp_path):
    """Timing check: a full ABC collection and 40 chorales (run with -m slow)."""
    s = prepare_corpus(str(tmp_path), collections=["ryansMammoth"], progress=False)
    assert len(s.entries) > 1000 and len(s.failed) < 10
    s = prepare_corpus(str(tmp_path), collections=["bach"], max_pieces_per_collection=40, progress=False)
    assert len(s.entries) == 40
