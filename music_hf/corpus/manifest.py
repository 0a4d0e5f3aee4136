"""Labelled MIDI on disk: the corpus manifest (metadata.jsonl, failures.jsonl), MIDI folders with labels
files, and the summary of what a data step kept and skipped."""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import datasets

from ..configuration_music import UNKNOWN_GENRE
from ..tokenization_music import MIDI_SUFFIXES

logger = logging.getLogger(__name__)

MANIFEST_NAME = "metadata.jsonl"  # one converted piece per line: path (relative), genre, collection, source
FAILURES_NAME = "failures.jsonl"  # one failed piece per line: source, reason, collection
CACHE_ENV = "MUSIC_HF_CACHE"  # root of music_hf's caches (default ~/.cache/music_hf)

_PATH_COLUMNS = ("path", "file", "file_name", "filename", "midi", "midi_path")
_GENRE_COLUMNS = ("genre", "label", "style")


@dataclass
class CorpusEntry:
    """One converted piece: ``path`` is the .mid file, ``source`` where it came from.

    ``source`` is the corpus-relative score path, with ``#<tune index>`` (0-based)
    appended for one tune of a multi-tune ABC file or one work of a music21 Opus.
    """

    path: str
    genre: str
    collection: str
    source: str


@dataclass
class DataSummary:
    """What a data step kept and skipped, each skipped file with its reason: corpus conversion or tokenization.

    ``pieces`` counts kept pieces per group (collection for a corpus, split after tokenization), ``tokens``
    tokens per split, ``genres`` pieces per genre; ``failed`` holds ``(source, reason)`` pairs.  A corpus
    also lists its ``entries`` and ``output_dir``, and how many pieces this call ``converted`` or found ``cached``.
    """

    pieces: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    genres: dict[str, int] = field(default_factory=dict)
    failed: list[tuple[str, str]] = field(default_factory=list)
    entries: list[CorpusEntry] = field(default_factory=list)
    output_dir: str = ""
    converted: int = 0
    cached: int = 0
    elapsed_s: float = 0.0
    workers: int = 0
    conversion: dict[str, tuple[int, float]] = field(default_factory=dict)  # collection -> (pieces, worker seconds)

    @classmethod
    def of_corpus(cls, entries: list[CorpusEntry], failed: list[tuple[str, str]], output_dir: str,
                  **counts: Any) -> DataSummary:
        """The summary of corpus ``entries``: pieces per collection and per genre, most frequent first."""
        return cls(pieces=dict(Counter(e.collection for e in entries).most_common()),
                   genres=dict(Counter(e.genre for e in entries).most_common()),
                   failed=failed, entries=entries, output_dir=output_dir, **counts)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataSummary:
        """Inverse of ``dataclasses.asdict`` (JSON turns the failure pairs into lists)."""
        return cls(**data | {"failed": [tuple(f) for f in data.get("failed", [])],
                             "conversion": {c: tuple(v) for c, v in data.get("conversion", {}).items()},
                             "entries": [CorpusEntry(**e) for e in data.get("entries", [])]})

    def report(self, max_failures: int = 10) -> str:
        """Multi-line summary: counts, then the first ``max_failures`` skipped files with their reasons."""
        head = f"{sum(self.pieces.values())} pieces"
        if self.output_dir:
            head = (f"Corpus at {self.output_dir}: {head} ({self.converted} converted now, {self.cached} cached, "
                    f"{self.elapsed_s:.1f} s)")
        lines = [head, f"pieces: {self.pieces}"]
        if self.tokens:
            lines.append(f"tokens: {self.tokens}")
        if self.conversion:
            lines.append(f"converted now, per collection ({self.workers} worker process(es)): pieces, worker seconds, "
                         "pieces/s per worker")
            lines += [f"  {c}: {n} pieces, {sec:.1f} s, {n / sec if sec else float('inf'):.2f}/s"
                      for c, (n, sec) in sorted(self.conversion.items(), key=lambda kv: -kv[1][1])]
        lines += [f"genres: {self.genres}", f"skipped: {len(self.failed)} file(s)"]
        lines += [f"  {source}: {why}" for source, why in self.failed[:max_failures]]
        if len(self.failed) > max_failures:
            lines.append(f"  ... and {len(self.failed) - max_failures} more")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report()


# --------------------------------------------------------------------- manifest


def default_cache_dir() -> str:
    """``$MUSIC_HF_CACHE``, else ``~/.cache/music_hf``."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "music_hf")


def default_output_dir() -> str:
    """Where the converted corpus goes by default: ``<default_cache_dir()>/corpus``."""
    return os.path.join(default_cache_dir(), "corpus")


def _read_jsonl(path: str) -> list[dict]:
    """Rows of a JSON-lines file, skipping a line torn by a crash (``datasets``' JSON reader rejects the file)."""
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def write_jsonl_atomic(path: str, rows: Iterable[dict]) -> None:
    """Replace a JSON-lines file at once (a crash leaves the old file)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def entry_row(entry: CorpusEntry, output_dir: str) -> dict:
    """A manifest row: the entry with its path relative to ``output_dir``."""
    row = asdict(entry)
    row["path"] = os.path.relpath(entry.path, output_dir).replace(os.sep, "/")
    return row


def read_manifest(output_dir: str) -> tuple[dict[str, CorpusEntry], dict[str, str]]:
    """Entries and failure reasons by source; a later line for the same source wins."""
    entries = {}
    for row in _read_jsonl(os.path.join(output_dir, MANIFEST_NAME)):
        if "path" in row:
            entry = CorpusEntry(path=os.path.join(output_dir, row["path"]), genre=row.get("genre", UNKNOWN_GENRE),
                                collection=row.get("collection", ""), source=row.get("source", row["path"]))
            entries[entry.source] = entry
    failures = {row["source"]: row.get("reason", "")
                for row in _read_jsonl(os.path.join(output_dir, FAILURES_NAME)) if "source" in row}
    return entries, failures


def load_manifest(output_dir: str | None = None, check_files: bool = True) -> DataSummary:
    """Read a prepared corpus back (``metadata.jsonl`` + ``failures.jsonl``).

    Entries get absolute paths; with ``check_files`` entries whose .mid is gone are
    dropped.  Later duplicate lines of the same source win.
    """
    output_dir = os.path.abspath(output_dir or default_output_dir())
    by_source, failures = read_manifest(output_dir)
    entries = sorted(by_source.values(), key=lambda e: e.source)
    if check_files:
        missing = [e for e in entries if not os.path.isfile(e.path)]
        if missing:
            logger.warning("%d manifest entries point to missing files; ignored", len(missing))
            entries = [e for e in entries if os.path.isfile(e.path)]
    ok = {e.source for e in entries}
    failed = sorted((s, r) for s, r in failures.items() if s not in ok)
    return DataSummary.of_corpus(entries, failed, output_dir)


# ---------------------------------------------------------------- MIDI folders


def _label_records(labels: str) -> Sequence[dict]:
    """Rows of a CSV or JSON-lines labels file, every value as read (CSV cells as text)."""
    features = None
    if labels.lower().endswith(".csv"):  # all columns as text: pandas would read "001" as 1
        with open(labels, newline="", encoding="utf-8-sig") as f:
            features = datasets.Features({name: datasets.Value("string") for name in next(csv.reader(f), [])})
    builder = "csv" if features is not None else "json"
    return datasets.load_dataset(builder, data_files=labels, split="train", features=features).to_list()


def _load_labels(labels: str) -> dict[str, str]:
    """Read a CSV (path/file + genre columns), JSON-lines or JSON labels file into a dict."""
    ext = os.path.splitext(labels)[1].lower()
    if ext == ".json":
        with open(labels, encoding="utf-8") as f:
            data = json.load(f)
        if isinstance(data, dict):
            return {str(k): str(v) for k, v in data.items()}
        if not isinstance(data, list):
            raise ValueError("JSON labels must be an object {path: genre} or a list of records")
        records: Sequence[dict] = data
    elif ext in (".csv", ".jsonl"):
        records = _label_records(labels)
    else:
        raise ValueError(f"labels file must be .csv, .json or .jsonl, got {labels!r}")
    mapping: dict[str, str] = {}
    for rec in records:
        lower = {str(k).strip().lower(): v for k, v in rec.items()}
        key = next((lower[c] for c in _PATH_COLUMNS if lower.get(c)), None)
        genre = next((lower[c] for c in _GENRE_COLUMNS if lower.get(c)), None)
        if key is None or genre is None:
            raise ValueError(f"labels record {rec!r} needs a path/file and a genre column")
        mapping[str(key).strip()] = str(genre).strip()
    return mapping


def _norm_label_key(key: str) -> str:
    key = key.strip().replace("\\", "/")
    return key[2:] if key.startswith("./") else key


def read_midi_folder(folder: str, labels: str | None = None, default_genre: str = UNKNOWN_GENRE) -> list[CorpusEntry]:
    """List every MIDI file (``MIDI_SUFFIXES``) under ``folder`` (recursive, sorted) as labelled entries.

    Genre comes from ``labels`` (CSV or JSON lines with ``path``/``file`` and ``genre`` columns, or
    JSON ``{relative path or file name: genre}``; unlisted files get
    ``default_genre``), otherwise from the first sub-folder name (files directly in
    ``folder`` get ``default_genre``).  ``collection`` is the first sub-folder (or the
    folder's own name) and ``source`` the path relative to ``folder``.
    """
    folder = os.path.abspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"not a folder: {folder}")
    mapping = {_norm_label_key(k): v for k, v in _load_labels(labels).items()} if labels else None
    entries: list[CorpusEntry] = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if not name.lower().endswith(MIDI_SUFFIXES):
                continue
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder).replace(os.sep, "/")
            parts = rel.split("/")
            sub = parts[0] if len(parts) > 1 else None
            if mapping is not None:
                genre = mapping.get(rel) or mapping.get(name) or mapping.get(os.path.splitext(name)[0]) or default_genre
            else:
                genre = sub or default_genre
            entries.append(CorpusEntry(path=path, genre=genre, collection=sub or os.path.basename(folder), source=rel))
    entries.sort(key=lambda e: e.source)
    return entries
