"""prepare_corpus: plan the pieces of the chosen collections, convert what the manifest lacks, record the rest."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from tqdm.auto import tqdm

from .catalogue import genre_for_collection, list_collections, music21_corpus_dir, score_files
from .convert import DEFAULT_TIMEOUT, ConversionTask, abc_pieces, run_task
from .manifest import (FAILURES_NAME, MANIFEST_NAME, CorpusEntry, DataSummary, default_output_dir, entry_row,
                       read_manifest, write_jsonl_atomic)
from .pool import run_tasks

_ABC_CHUNK = 64  # tunes per worker task


@dataclass
class _Piece:
    """A planned conversion unit: one score file, or one tune of an ABC file."""

    source: str  # corpus-relative, with "#i" for one tune of a multi-tune file
    file: str  # absolute source file path
    rel_file: str  # corpus-relative source file path
    collection: str
    genre: str
    tune: int | None = None  # index into abc_pieces(), None = whole file


def _piece_key(source: str) -> str:
    """Cache key: tunes of ABC files are cached one by one, other files as a whole."""
    base, _, _ = source.partition("#")
    return source if base.lower().endswith(".abc") else base


def _plan(corpus_dir: str, collections: Sequence[str], max_pieces: int | None) -> list[_Piece]:
    pieces: list[_Piece] = []
    for collection in collections:
        genre = genre_for_collection(collection)
        chosen: list[_Piece] = []
        for rel in score_files(corpus_dir, collection):
            if max_pieces is not None and len(chosen) >= max_pieces:
                break
            path = os.path.join(corpus_dir, rel)
            if rel.lower().endswith(".abc"):
                try:
                    n = len(abc_pieces(path, collection))
                except OSError:
                    n = 1
                if n > 1:
                    chosen.extend(_Piece(f"{rel}#{i}", path, rel, collection, genre, i) for i in range(n))
                    continue
            chosen.append(_Piece(rel, path, rel, collection, genre, None))
        pieces.extend(chosen[:max_pieces] if max_pieces is not None else chosen)
    return pieces


def _timed_task(task: ConversionTask) -> tuple[tuple[list[CorpusEntry], list[tuple[str, str]]], float]:
    """`run_task` in a worker, with the worker's seconds (for pieces/s per collection)."""
    t0 = time.perf_counter()
    return run_task(task), time.perf_counter() - t0


def _make_tasks(pieces: Sequence[_Piece], output_dir: str, timeout: float | None) -> list[ConversionTask]:
    """Group pending pieces into worker tasks (ABC tunes in chunks), costliest first."""
    by_file: dict[str, list[_Piece]] = {}
    for p in pieces:
        by_file.setdefault(p.file, []).append(p)
    costed: list[tuple[float, ConversionTask]] = []
    for file, group in by_file.items():
        first = group[0]
        if first.tune is None:
            try:
                size = os.path.getsize(file)
            except OSError:
                size = 0
            cost = size * (0.05 if file.lower().endswith(".abc") else 1.0)
            task = ConversionTask(file, first.rel_file, first.collection, first.genre, output_dir, None, timeout,
                                  [_piece_key(first.source)])
            costed.append((cost, task))
            continue
        for start in range(0, len(group), _ABC_CHUNK):
            chunk = group[start: start + _ABC_CHUNK]
            task = ConversionTask(file, first.rel_file, first.collection, first.genre, output_dir,
                                  [p.tune for p in chunk], timeout, [p.source for p in chunk])
            costed.append((2000.0 * len(chunk), task))
    costed.sort(key=lambda ct: -ct[0])
    return [task for _, task in costed]


def prepare_corpus(
    output_dir: str | None = None,
    collections: list[str] | None = None,
    max_pieces_per_collection: int | None = None,
    num_workers: int | None = None,
    progress: bool = True,
    *,
    corpus_dir: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    retry_failed: bool = False,
) -> DataSummary:
    """Convert (part of) the music21 corpus to genre-labelled MIDI files, with caching.

    Pieces go to ``output_dir/<collection>/...`` and are listed in
    ``output_dir/metadata.jsonl`` (failures in ``failures.jsonl``).  Pieces already
    listed with their file present, and known failures unless ``retry_failed``, are
    not converted again.  ``collections=None`` (or ``["all"]``) means every collection
    except :data:`DEFAULT_EXCLUDED_COLLECTIONS`; ``max_pieces_per_collection`` keeps
    the first N pieces in sorted order.  ``timeout`` is per piece in seconds.

    The returned summary lists the selected pieces only (the manifest keeps all).
    """
    t0 = time.perf_counter()
    corpus_dir = corpus_dir or music21_corpus_dir()
    output_dir = os.path.abspath(output_dir or default_output_dir())
    os.makedirs(output_dir, exist_ok=True)

    if not collections or list(collections) == ["all"]:
        collections = list_collections(corpus_dir)
    else:
        available = set(list_collections(corpus_dir, include_excluded=True))
        unknown = [c for c in collections if c not in available]
        if unknown:
            raise ValueError(f"unknown corpus collection(s) {unknown}; available: {sorted(available)}")
    if max_pieces_per_collection is not None and max_pieces_per_collection < 0:
        raise ValueError("max_pieces_per_collection must be >= 0")

    pieces = _plan(corpus_dir, collections, max_pieces_per_collection)

    # ---- cache lookup
    known_entries, known_failures = read_manifest(output_dir)
    entries_by_key: dict[str, list[CorpusEntry]] = {}
    for e in known_entries.values():
        entries_by_key.setdefault(_piece_key(e.source), []).append(e)
    failures_by_key: dict[str, list[str]] = {}
    for s in known_failures:
        failures_by_key.setdefault(_piece_key(s), []).append(s)

    pending: list[_Piece] = []
    n_cached = 0
    for p in pieces:
        key = _piece_key(p.source)
        have = entries_by_key.get(key, [])
        if have and all(os.path.isfile(e.path) for e in have):
            n_cached += 1
            continue
        if key in failures_by_key and not have and not retry_failed:
            n_cached += 1
            continue
        pending.append(p)
        # forget stale records of this piece; they are rewritten below
        for e in have:
            known_entries.pop(e.source, None)
        for s in failures_by_key.get(key, []):
            known_failures.pop(s, None)

    # ---- convert
    tasks = _make_tasks(pending, output_dir, timeout)
    workers = num_workers if num_workers is not None else (os.cpu_count() or 1)
    n_converted = 0
    rates: dict[str, list] = {}  # collection -> [pieces converted now, worker seconds]

    with open(os.path.join(output_dir, MANIFEST_NAME), "a", encoding="utf-8") as mf, \
            open(os.path.join(output_dir, FAILURES_NAME), "a", encoding="utf-8") as ff, \
            tqdm(total=sum(len(t.keys) for t in tasks), desc="Converting corpus", unit="piece",
                 disable=not progress or not tasks) as pbar:

        def on_result(task: ConversionTask, timed: tuple[tuple[list[CorpusEntry], list[tuple[str, str]]], float]
                      ) -> None:
            """Append to the manifest as results come, so an interrupted run keeps its work."""
            nonlocal n_converted
            (new_entries, new_failed), seconds = timed
            speed = rates.setdefault(task.collection, [0, 0.0])
            speed[0] += len(task.keys)
            speed[1] += seconds
            for e in new_entries:
                known_entries[e.source] = e
                mf.write(json.dumps(entry_row(e, output_dir), ensure_ascii=False) + "\n")
            for source, reason in new_failed:
                known_failures[source] = reason
                ff.write(json.dumps({"source": source, "reason": reason, "collection": task.collection},
                                    ensure_ascii=False) + "\n")
            mf.flush()
            ff.flush()
            n_converted += len(new_entries)
            pbar.update(len(task.keys))

        def on_error(task: ConversionTask, reason: str) -> None:
            on_result(task, (([], [(key, reason) for key in task.keys]), 0.0))

        run_tasks(_timed_task, tasks, workers, on_result, on_error)

    # ---- rewrite the manifest compactly (deduplicated, sorted) and summarise
    for source in list(known_failures):
        if source in known_entries:
            del known_failures[source]
    write_jsonl_atomic(os.path.join(output_dir, MANIFEST_NAME),
                       (entry_row(e, output_dir) for _, e in sorted(known_entries.items())))
    coll_of = {_piece_key(p.source): p.collection for p in pieces}
    write_jsonl_atomic(
        os.path.join(output_dir, FAILURES_NAME),
        ({"source": s, "reason": r, "collection": coll_of.get(_piece_key(s), s.split("/", 1)[0])}
         for s, r in sorted(known_failures.items())),
    )

    selected = {_piece_key(p.source) for p in pieces}
    entries = [e for s, e in sorted(known_entries.items()) if _piece_key(s) in selected]
    failed = [(s, r) for s, r in sorted(known_failures.items()) if _piece_key(s) in selected]
    return DataSummary.of_corpus(entries, failed, output_dir, converted=n_converted, cached=n_cached,
                                 elapsed_s=time.perf_counter() - t0, workers=min(workers, max(1, len(tasks))),
                                 conversion={c: (n, round(sec, 3)) for c, (n, sec) in sorted(rates.items())})
