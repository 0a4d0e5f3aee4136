"""Genre-labelled MIDI corpus built from the music21 corpus (plus any MIDI folder).

The music21 PyPI package ships a few thousand public-domain scores (Bach chorales,
Palestrina masses, Essen folk songs, fiddle-tune books, ...) in MusicXML, Humdrum
and ABC.  Training a MIDI model needs them as ``.mid`` files with a genre label, so
this module converts them once into a cache folder and writes a JSON-lines manifest:

* ABC (one file often holds hundreds of tunes) is split per tune and converted with
  symusic (abc2midi inside, ~100x faster than music21); music21 is only a fallback.
* MusicXML / Humdrum go through ``music21.converter.parse`` in worker processes,
  because music21 is slow (0.5 s to 30 s a piece).
* Already converted pieces (listed in the manifest, file present) and known failures
  are skipped, so a second call is near instant.
* A piece that fails (parse error, no notes, timeout, crashed worker) is recorded as
  a failure and never aborts the run.

Only stdlib, numpy, symusic, music21 and tqdm are used; music21 is imported lazily.
"""

from __future__ import annotations

import contextlib
import csv
import faulthandler
import json
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator, Sequence

import symusic
from tqdm.auto import tqdm

from .tokenization_music import split_abc_tunes

logger = logging.getLogger(__name__)

__all__ = [
    "COLLECTION_GENRES",
    "DEFAULT_EXCLUDED_COLLECTIONS",
    "CorpusEntry",
    "CorpusSummary",
    "convert_piece",
    "default_output_dir",
    "genre_for_collection",
    "list_collections",
    "load_manifest",
    "music21_corpus_dir",
    "prepare_corpus",
    "read_midi_folder",
    "split_abc_tunes",
]

#: music21 corpus folder -> genre label.  Unlisted folders get ``"other"``.
COLLECTION_GENRES: dict[str, str] = {
    # Bach's four-part chorales (the folder is almost entirely chorales)
    "bach": "chorale",
    # Renaissance polyphony
    "palestrina": "renaissance",
    "josquin": "renaissance",
    "monteverdi": "renaissance",
    "lusitano": "renaissance",
    # Medieval / ars nova
    "trecento": "medieval",
    "ciconia": "medieval",
    "luca": "medieval",
    # Folk songs (sung melodies)
    "essenFolksong": "folk song",
    "miscFolk": "folk song",
    # Fiddle / dance tune books
    "ryansMammoth": "fiddle tune",
    "oneills1850": "fiddle tune",
    "airdsAirs": "fiddle tune",
    "nottingham-dataset": "fiddle tune",
    # Baroque
    "handel": "baroque",
    "corelli": "baroque",
    "cpebach": "baroque",
    # Classical
    "beethoven": "classical",
    "mozart": "classical",
    "haydn": "classical",
    "schubert": "classical",
    # Romantic (19th century)
    "chopin": "romantic",
    "schumann": "romantic",
    "schumann_clara": "romantic",
    "schumann_robert": "romantic",
    "verdi": "romantic",
    "beach": "romantic",
    "weber": "romantic",
    "liliuokalani": "romantic",
    # 20th century
    "webern": "modern",
    "schoenberg": "modern",
    "joplin": "modern",
    "johnson_j_r": "modern",
}

#: Folders of music21 test/demo material, left out unless asked for by name.
DEFAULT_EXCLUDED_COLLECTIONS: frozenset[str] = frozenset({"demos", "theoryExercises"})

#: ABC collections whose ``X:`` blocks are the voices of ONE piece (merged into one MIDI).
ABC_MULTIPART_COLLECTIONS: frozenset[str] = frozenset({"josquin"})

#: Score formats converted, in order of preference when one piece exists in several.
SOURCE_EXTENSIONS: tuple[str, ...] = (".mxl", ".musicxml", ".xml", ".krn", ".abc")

MANIFEST_NAME = "metadata.jsonl"
FAILURES_NAME = "failures.jsonl"
DEFAULT_TIMEOUT = 600.0
_ABC_CHUNK = 64  # tunes per worker task
_SKIP_DIRS = {"__pycache__", "_metadataCache"}


# --------------------------------------------------------------------------- data


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
class CorpusSummary:
    """Result of :func:`prepare_corpus` / :func:`load_manifest`.

    ``failed`` holds ``(source, reason)`` pairs; ``converted``/``cached`` count the
    pieces converted by this call and those reused from the cache.
    """

    entries: list[CorpusEntry]
    failed: list[tuple[str, str]]
    output_dir: str
    converted: int = 0
    cached: int = 0
    elapsed_s: float = 0.0

    def genre_counts(self) -> dict[str, int]:
        """Number of pieces per genre, most frequent first."""
        return dict(Counter(e.genre for e in self.entries).most_common())

    def collection_counts(self) -> dict[str, int]:
        """Number of pieces per collection, most frequent first."""
        return dict(Counter(e.collection for e in self.entries).most_common())

    def report(self, max_failures: int = 5) -> str:
        """Human readable multi-line summary (counts per genre, first failures)."""
        lines = [
            f"Corpus at {self.output_dir}: {len(self.entries)} pieces, "
            f"{len(self.failed)} failed "
            f"({self.converted} converted now, {self.cached} cached, {self.elapsed_s:.1f} s)"
        ]
        for genre, n in self.genre_counts().items():
            lines.append(f"  {genre:<14} {n:>6}")
        if self.failed:
            lines.append(f"First failures ({min(max_failures, len(self.failed))} of {len(self.failed)}):")
            for source, reason in self.failed[:max_failures]:
                lines.append(f"  {source}: {reason}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report()


@dataclass
class _Piece:
    """A planned conversion unit: one score file, or one tune of an ABC file."""

    source: str  # corpus-relative, with "#i" for one tune of a multi-tune file
    file: str  # absolute source file path
    rel_file: str  # corpus-relative source file path
    collection: str
    genre: str
    tune: int | None = None  # index into split_abc_tunes(), None = whole file


@dataclass
class _Task:
    """Work sent to a worker process: one file, optionally a subset of its tunes."""

    file: str
    rel_file: str
    collection: str
    genre: str
    output_dir: str
    tunes: list[int] | None = None
    n_pieces: int = 1
    timeout: float | None = DEFAULT_TIMEOUT
    cost: float = 0.0
    keys: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------- locations


def music21_corpus_dir() -> str:
    """Folder of the corpus shipped inside the installed music21 package."""
    import music21

    return os.path.join(os.path.dirname(music21.__file__), "corpus")


def default_output_dir() -> str:
    """``$MUSIC_HF_CACHE/corpus`` (default cache root ``~/.cache/music_hf``)."""
    root = os.environ.get("MUSIC_HF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "music_hf")
    return os.path.join(root, "corpus")


def genre_for_collection(collection: str) -> str:
    """Genre label of a corpus collection folder (``"other"`` when unknown)."""
    return COLLECTION_GENRES.get(collection, "other")


def list_collections(corpus_dir: str | None = None, include_excluded: bool = False) -> list[str]:
    """Sorted collection folders of the corpus that hold at least one score file."""
    corpus_dir = corpus_dir or music21_corpus_dir()
    names = []
    for name in sorted(os.listdir(corpus_dir)):
        if name in _SKIP_DIRS or name.startswith((".", "_")):
            continue
        if not include_excluded and name in DEFAULT_EXCLUDED_COLLECTIONS:
            continue
        if os.path.isdir(os.path.join(corpus_dir, name)) and _score_files(corpus_dir, name):
            names.append(name)
    return names


def _score_files(corpus_dir: str, collection: str) -> list[str]:
    """Corpus-relative score files of a collection, sorted, one format per piece.

    The same piece sometimes exists twice (``bwv277.mxl`` and ``bwv277.krn``); the
    format earliest in :data:`SOURCE_EXTENSIONS` wins so no piece is duplicated.
    """
    best: dict[tuple[str, str], tuple[int, str]] = {}
    top = os.path.join(corpus_dir, collection)
    for root, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        for name in files:
            stem, ext = os.path.splitext(name)
            ext = ext.lower()
            if ext not in SOURCE_EXTENSIONS:
                continue
            rel = os.path.relpath(os.path.join(root, name), corpus_dir).replace(os.sep, "/")
            key = (os.path.dirname(rel), stem)
            rank = SOURCE_EXTENSIONS.index(ext)
            if key not in best or rank < best[key][0]:
                best[key] = (rank, rel)
    return sorted(rel for _, rel in best.values())


# --------------------------------------------------------------------------- ABC



def _read_text(path: str) -> str:
    """Read a text score, UTF-8 first, Latin-1 as fallback (old ABC books)."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _abc_piece_count(path: str, collection: str) -> int:
    """How many pieces an ABC file yields (1 for part-books of one piece)."""
    if collection in ABC_MULTIPART_COLLECTIONS:
        return 1
    return max(1, len(split_abc_tunes(_read_text(path))))


# ------------------------------------------------------------- stdout suppression

_capture_files: dict[int, "tempfile._TemporaryFileWrapper[bytes]"] = {}
_libc = None


def _c_fflush() -> None:
    """Flush C stdio buffers so abc2midi's printf output lands where fd 1 points now."""
    global _libc
    try:
        if _libc is None:
            import ctypes

            _libc = ctypes.CDLL(None)
        _libc.fflush(None)
    except Exception:  # pragma: no cover - non-POSIX platforms
        pass


class _Captured:
    text: str = ""


@contextlib.contextmanager
def _capture_stdout_fd() -> Iterator[_Captured]:
    """Redirect OS-level fd 1 to a per-process temp file (symusic/abc2midi print there).

    The captured text is available after the block (used for failure reasons).
    """
    out = _Captured()
    pid = os.getpid()
    try:
        tmp = _capture_files.get(pid)
        if tmp is None:
            tmp = _capture_files[pid] = tempfile.TemporaryFile()
        try:
            sys.stdout.flush()
        except Exception:  # noqa: BLE001 - closed/odd sys.stdout
            pass
        _c_fflush()
        tmp.seek(0)
        tmp.truncate()
        saved = os.dup(1)
    except OSError:  # no usable fd 1 (daemon); run uncaptured
        yield out
        return
    os.dup2(tmp.fileno(), 1)
    try:
        yield out
    finally:
        _c_fflush()
        os.dup2(saved, 1)
        os.close(saved)
        tmp.seek(0)
        out.text = tmp.read(20000).decode("utf-8", "replace")


def _first_error_line(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("Error"):
            return line.strip()
    return ""


# ------------------------------------------------------------------- conversion


class _PieceTimeout(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`_PieceTimeout` after ``seconds`` (POSIX main thread only)."""
    usable = (
        seconds
        and seconds > 0
        and hasattr(signal, "SIGALRM")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return

    def _handler(signum, frame):  # noqa: ARG001
        raise _PieceTimeout(f"timeout after {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, _handler)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


_IN_WORKER = False


def _worker_init() -> None:
    """Worker process setup: mark the process so a hard watchdog may kill it."""
    global _IN_WORKER
    _IN_WORKER = True
    warnings.simplefilter("ignore")


@contextlib.contextmanager
def _watchdog(seconds: float | None) -> Iterator[None]:
    """In workers, hard-exit the process if C code (abc2midi) hangs past the limit."""
    if not (_IN_WORKER and seconds):
        yield
        return
    faulthandler.dump_traceback_later(seconds + 60, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def _reason(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg}"[:300]


def _tmp_path(path: str) -> str:
    return f"{path}.{os.getpid()}.tmp"


def _dump_score(score: symusic.Score, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = _tmp_path(path)
    try:
        score.dump_midi(tmp)
        os.replace(tmp, path)
    finally:
        _remove_quietly(tmp)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _abc_with_options(tune: str) -> str:
    """Turn off abc2midi's generated guitar-chord accompaniment (keep written notes)."""
    first_nl = tune.find("\n", tune.find("X:") if "X:" in tune else 0)
    if first_nl < 0:
        return tune + "\n%%MIDI gchordoff\n"
    return tune[: first_nl + 1] + "%%MIDI gchordoff\n" + tune[first_nl + 1 :]


def _symusic_from_abc(tune: str) -> symusic.Score:
    """Parse one ABC tune with symusic; RuntimeError carries abc2midi's error line."""
    with _capture_stdout_fd() as cap:
        try:
            score = symusic.Score.from_abc(_abc_with_options(tune))
            err = None
        except RuntimeError as exc:  # abc2midi produced no output
            score, err = None, exc
    if err is not None:
        detail = _first_error_line(cap.text)
        raise RuntimeError(detail or str(err)) from None
    return score


_T_LINE = re.compile(r"^T:\s*(.*?)\s*$", re.MULTILINE)


def _merge_parts(scores: Sequence[symusic.Score], texts: Sequence[str] = ()) -> symusic.Score:
    """Stack single-voice scores (ABC part-books) into one multi-track score.

    Unnamed tracks are named after the voice title (``T: Tenor``, the last T: line).
    """
    merged = symusic.Score(scores[0].tpq)
    merged.tempos = scores[0].tempos.copy()
    merged.time_signatures = scores[0].time_signatures.copy()
    merged.key_signatures = scores[0].key_signatures.copy()
    for i, sc in enumerate(scores):
        if sc.tpq != merged.tpq:
            sc = sc.resample(merged.tpq)
        titles = _T_LINE.findall(texts[i]) if i < len(texts) else []
        for track in sc.tracks:
            track = track.copy()
            if not track.name and len(titles) > 1:
                track.name = titles[-1]
            merged.tracks.append(track)
    return merged


def _music21_to_midi(
    source: str | None, out_path: str, text: str | None = None, fmt: str | None = None, merge_opus: bool = False
) -> list[str]:
    """Parse a score with music21 and write one MIDI per work; returns written paths.

    A music21 Opus (several works in one file) yields ``<stem>/<i>.mid`` files, or
    one file when ``merge_opus`` (works are voices of one piece, as in part-books).
    """
    from music21 import converter, stream

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if text is not None:
            obj = converter.parse(text, format=fmt, forceSource=True)
        else:
            obj = converter.parse(source, forceSource=True)
        if isinstance(obj, stream.Opus):
            works = [obj.mergeScores()] if merge_opus and len(obj.scores) > 1 else list(obj.scores)
        else:
            works = [obj]
        if not works:
            raise ValueError("no score in file")
        os.makedirs(os.path.dirname(out_path), exist_ok=True)
        if len(works) == 1:
            targets = [out_path]
        else:
            stem = out_path[: -len(".mid")]
            targets = [f"{stem}/{i:04d}.mid" for i in range(len(works))]
        written = []
        for work, target in zip(works, targets):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = _tmp_path(target)
            try:
                try:
                    work.write("midi", fp=tmp)
                except Exception as exc:  # noqa: BLE001
                    if type(exc).__name__ != "ExpanderException":
                        raise
                    # music21 expands repeats for MIDI and gives up on inconsistent
                    # repeat marks: play the score straight through instead
                    _strip_repeats(work)
                    work.write("midi", fp=tmp)
                os.replace(tmp, target)
            finally:
                _remove_quietly(tmp)
            written.append(target)
    return written


def _strip_repeats(score) -> None:
    """Remove repeat barlines, volta brackets and D.C./segno marks from a music21 stream."""
    from music21 import bar, repeat, spanner, stream

    for measure in score.recurse().getElementsByClass(stream.Measure):
        if isinstance(measure.leftBarline, bar.Repeat):
            measure.leftBarline = None
        if isinstance(measure.rightBarline, bar.Repeat):
            measure.rightBarline = bar.Barline("regular")
    doomed = list(score.recurse().getElementsByClass((repeat.RepeatExpression, spanner.RepeatBracket)))
    for el in doomed:
        site = el.activeSite
        if site is not None:
            site.remove(el)


def _midi_note_count(path: str) -> int:
    return symusic.Score(path).note_num()


def _out_rel(rel_file: str, tune: int | None) -> str:
    stem = os.path.splitext(rel_file)[0]
    return f"{stem}/{tune:04d}.mid" if tune is not None else f"{stem}.mid"


def _convert_abc(task: _Task) -> tuple[list[CorpusEntry], list[tuple[str, str]]]:
    entries: list[CorpusEntry] = []
    failed: list[tuple[str, str]] = []
    tunes = split_abc_tunes(_read_text(task.file))
    multipart = task.collection in ABC_MULTIPART_COLLECTIONS or len(tunes) <= 1
    if multipart:
        jobs: list[tuple[int | None, list[str]]] = [(None, tunes)]
    else:
        indices = task.tunes if task.tunes is not None else range(len(tunes))
        jobs = [(i, [tunes[i]]) for i in indices if 0 <= i < len(tunes)]
    for tune_idx, texts in jobs:
        source = task.rel_file if tune_idx is None else f"{task.rel_file}#{tune_idx}"
        rel_out = _out_rel(task.rel_file, tune_idx)
        out_path = os.path.join(task.output_dir, rel_out)
        try:
            with _time_limit(task.timeout), _watchdog(task.timeout):
                if not texts:
                    raise ValueError("empty ABC file")
                try:
                    scores = [_symusic_from_abc(t) for t in texts]
                    score = scores[0] if len(scores) == 1 else _merge_parts(scores, texts)
                    if score.note_num() == 0:
                        raise ValueError("no notes")
                    _dump_score(score, out_path)
                except (RuntimeError, ValueError) as sym_exc:
                    # symusic/abc2midi rejected it: one slower try with music21
                    try:
                        _music21_to_midi(None, out_path, text="\n".join(texts), fmt="abc", merge_opus=True)
                    except _PieceTimeout:
                        raise
                    except Exception:
                        raise sym_exc from None
                    if _midi_note_count(out_path) == 0:
                        os.remove(out_path)
                        raise ValueError("no notes") from None
            entries.append(CorpusEntry(out_path, task.genre, task.collection, source))
        except Exception as exc:  # noqa: BLE001 - a bad tune must never stop the corpus
            failed.append((source, _reason(exc)))
    return entries, failed


def _convert_music21(task: _Task) -> tuple[list[CorpusEntry], list[tuple[str, str]]]:
    rel_out = _out_rel(task.rel_file, None)
    out_path = os.path.join(task.output_dir, rel_out)
    try:
        with _time_limit(task.timeout), _watchdog(task.timeout):
            written = _music21_to_midi(task.file, out_path)
    except Exception as exc:  # noqa: BLE001
        return [], [(task.rel_file, _reason(exc))]
    entries: list[CorpusEntry] = []
    failed: list[tuple[str, str]] = []
    for i, path in enumerate(written):
        source = task.rel_file if len(written) == 1 else f"{task.rel_file}#{i}"
        try:
            n = _midi_note_count(path)
        except Exception as exc:  # noqa: BLE001
            failed.append((source, _reason(exc)))
            continue
        if n == 0:
            os.remove(path)
            failed.append((source, "ValueError: no notes"))
        else:
            entries.append(CorpusEntry(path, task.genre, task.collection, source))
    return entries, failed


def _run_task(task: _Task) -> tuple[list[CorpusEntry], list[tuple[str, str]]]:
    """Convert one task; never raises (errors become failures)."""
    try:
        if task.file.lower().endswith(".abc"):
            return _convert_abc(task)
        return _convert_music21(task)
    except Exception as exc:  # noqa: BLE001
        return [], [(task.rel_file, _reason(exc))]


def convert_piece(
    source_path: str,
    output_dir: str,
    collection: str | None = None,
    genre: str | None = None,
    rel_source: str | None = None,
    tunes: Sequence[int] | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> tuple[list[CorpusEntry], list[tuple[str, str]]]:
    """Convert one score file (.mxl/.xml/.musicxml/.krn/.abc) to MIDI under ``output_dir``.

    Returns ``(entries, failures)``; never raises for bad input.  ``collection``
    defaults to the parent folder name, ``genre`` to that collection's genre and
    ``rel_source`` (the ``source`` recorded, and the output sub-path) to
    ``<collection>/<file name>``.  For ABC, ``tunes`` selects tune indices.
    """
    source_path = os.path.abspath(source_path)
    collection = collection or os.path.basename(os.path.dirname(source_path))
    genre = genre or genre_for_collection(collection)
    rel_source = rel_source or f"{collection}/{os.path.basename(source_path)}"
    task = _Task(
        file=source_path,
        rel_file=rel_source,
        collection=collection,
        genre=genre,
        output_dir=os.path.abspath(output_dir),
        tunes=list(tunes) if tunes is not None else None,
        timeout=timeout,
    )
    return _run_task(task)


# --------------------------------------------------------------------- manifest


def _piece_key(source: str) -> str:
    """Cache key: tunes of ABC files are cached one by one, other files as a whole."""
    base, _, _ = source.partition("#")
    return source if base.lower().endswith(".abc") else base


def _read_jsonl(path: str) -> list[dict]:
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
            except json.JSONDecodeError:  # half-written line after a crash
                continue
    return rows


def _write_jsonl_atomic(path: str, rows: Iterable[dict]) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _entry_row(entry: CorpusEntry, output_dir: str) -> dict:
    row = asdict(entry)
    row["path"] = os.path.relpath(entry.path, output_dir).replace(os.sep, "/")
    return row


def _entry_from_row(row: dict, output_dir: str) -> CorpusEntry:
    return CorpusEntry(
        path=os.path.join(output_dir, row["path"]),
        genre=row.get("genre", "unknown"),
        collection=row.get("collection", ""),
        source=row.get("source", row["path"]),
    )


def load_manifest(output_dir: str | None = None, check_files: bool = True) -> CorpusSummary:
    """Read a prepared corpus back (``metadata.jsonl`` + ``failures.jsonl``).

    Entries get absolute paths; with ``check_files`` entries whose .mid is gone are
    dropped.  Later duplicate lines of the same source win.
    """
    output_dir = os.path.abspath(output_dir or default_output_dir())
    by_source: dict[str, CorpusEntry] = {}
    for row in _read_jsonl(os.path.join(output_dir, MANIFEST_NAME)):
        if "path" not in row:
            continue
        entry = _entry_from_row(row, output_dir)
        by_source[entry.source] = entry
    entries = sorted(by_source.values(), key=lambda e: e.source)
    if check_files:
        missing = [e for e in entries if not os.path.isfile(e.path)]
        if missing:
            logger.warning("%d manifest entries point to missing files; ignored", len(missing))
            entries = [e for e in entries if os.path.isfile(e.path)]
    failures: dict[str, str] = {}
    for row in _read_jsonl(os.path.join(output_dir, FAILURES_NAME)):
        if "source" in row:
            failures[row["source"]] = row.get("reason", "")
    ok = {e.source for e in entries}
    failed = sorted((s, r) for s, r in failures.items() if s not in ok)
    return CorpusSummary(entries=entries, failed=failed, output_dir=output_dir)


# ------------------------------------------------------------------ prepare


def _plan(
    corpus_dir: str, collections: Sequence[str], max_pieces: int | None
) -> list[_Piece]:
    pieces: list[_Piece] = []
    for collection in collections:
        genre = genre_for_collection(collection)
        chosen: list[_Piece] = []
        for rel in _score_files(corpus_dir, collection):
            if max_pieces is not None and len(chosen) >= max_pieces:
                break
            path = os.path.join(corpus_dir, rel)
            if rel.lower().endswith(".abc"):
                try:
                    n = _abc_piece_count(path, collection)
                except OSError:
                    n = 1
                if n > 1:
                    for i in range(n):
                        chosen.append(_Piece(f"{rel}#{i}", path, rel, collection, genre, i))
                    continue
            chosen.append(_Piece(rel, path, rel, collection, genre, None))
        if max_pieces is not None:
            chosen = chosen[:max_pieces]
        pieces.extend(chosen)
    return pieces


def _make_tasks(pieces: Sequence[_Piece], output_dir: str, timeout: float | None) -> list[_Task]:
    """Group pending pieces into worker tasks (ABC tunes in chunks), costliest first."""
    by_file: dict[str, list[_Piece]] = {}
    for p in pieces:
        by_file.setdefault(p.file, []).append(p)
    tasks: list[_Task] = []
    for file, group in by_file.items():
        first = group[0]
        try:
            size = os.path.getsize(file)
        except OSError:
            size = 0
        if first.tune is None:
            cost = size * (0.05 if file.lower().endswith(".abc") else 1.0)
            tasks.append(
                _Task(file, first.rel_file, first.collection, first.genre, output_dir, None, 1, timeout, cost,
                      [_piece_key(first.source)])
            )
            continue
        for start in range(0, len(group), _ABC_CHUNK):
            chunk = group[start : start + _ABC_CHUNK]
            tasks.append(
                _Task(file, first.rel_file, first.collection, first.genre, output_dir,
                      [p.tune for p in chunk], len(chunk), timeout, 2000.0 * len(chunk),
                      [p.source for p in chunk])
            )
    tasks.sort(key=lambda t: -t.cost)
    return tasks


def _execute(
    tasks: list[_Task], num_workers: int, on_result, pbar: tqdm
) -> None:
    """Run tasks in a process pool; crashed workers are retried, then recorded as failed."""
    if num_workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            on_result(task, _run_task(task))
            pbar.update(task.n_pieces)
        return

    remaining = list(tasks)
    for attempt in range(3):
        if not remaining:
            return
        # after a crash, isolate tasks one per pool so only the culprit fails
        isolate = attempt == 2
        workers = 1 if isolate else min(num_workers, len(remaining))
        batches = [[t] for t in remaining] if isolate else [remaining]
        unfinished: list[_Task] = []
        for batch in batches:
            try:
                with ProcessPoolExecutor(max_workers=workers, initializer=_worker_init) as pool:
                    futures = {pool.submit(_run_task, t): t for t in batch}
                    pending = set(futures)
                    while pending:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for fut in done:
                            task = futures[fut]
                            try:
                                result = fut.result()
                            except BrokenProcessPool:
                                unfinished.append(task)
                                continue
                            except Exception as exc:  # noqa: BLE001 - e.g. unpicklable result
                                result = ([], [(task.rel_file, _reason(exc))])
                            on_result(task, result)
                            pbar.update(task.n_pieces)
            except BrokenProcessPool:
                pass
        if unfinished and attempt < 2:
            logger.warning("worker process died; retrying %d task(s)", len(unfinished))
        remaining = unfinished
    for task in remaining:
        reason = "worker process crashed (or hung past the timeout)"
        on_result(task, ([], [(k, reason) for k in (task.keys or [task.rel_file])]))
        pbar.update(task.n_pieces)


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
) -> CorpusSummary:
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
    manifest_path = os.path.join(output_dir, MANIFEST_NAME)
    failures_path = os.path.join(output_dir, FAILURES_NAME)
    known_entries: dict[str, CorpusEntry] = {}
    for row in _read_jsonl(manifest_path):
        if "path" in row and "source" in row:
            known_entries[row["source"]] = _entry_from_row(row, output_dir)
    known_failures: dict[str, str] = {}
    for row in _read_jsonl(failures_path):
        if "source" in row:
            known_failures[row["source"]] = row.get("reason", "")

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

    with open(manifest_path, "a", encoding="utf-8") as mf, open(failures_path, "a", encoding="utf-8") as ff:

        def on_result(task: _Task, result: tuple[list[CorpusEntry], list[tuple[str, str]]]) -> None:
            nonlocal n_converted
            new_entries, new_failed = result
            for e in new_entries:
                known_entries[e.source] = e
                mf.write(json.dumps(_entry_row(e, output_dir), ensure_ascii=False) + "\n")
            for source, reason in new_failed:
                known_failures[source] = reason
                ff.write(json.dumps({"source": source, "reason": reason, "collection": task.collection},
                                    ensure_ascii=False) + "\n")
            mf.flush()
            ff.flush()
            n_converted += len(new_entries)

        with tqdm(total=sum(t.n_pieces for t in tasks), desc="Converting corpus", unit="piece",
                  disable=not progress or not tasks) as pbar:
            _execute(tasks, workers, on_result, pbar)

    # ---- rewrite the manifest compactly (deduplicated, sorted) and summarise
    for source in list(known_failures):
        if source in known_entries:
            del known_failures[source]
    _write_jsonl_atomic(manifest_path, (_entry_row(e, output_dir) for _, e in sorted(known_entries.items())))
    coll_of = {}
    for p in pieces:
        coll_of[_piece_key(p.source)] = p.collection
    _write_jsonl_atomic(
        failures_path,
        ({"source": s, "reason": r, "collection": coll_of.get(_piece_key(s), s.split("/", 1)[0])}
         for s, r in sorted(known_failures.items())),
    )

    selected = {_piece_key(p.source) for p in pieces}
    entries = [e for s, e in sorted(known_entries.items()) if _piece_key(s) in selected]
    failed = [(s, r) for s, r in sorted(known_failures.items()) if _piece_key(s) in selected]
    return CorpusSummary(
        entries=entries,
        failed=failed,
        output_dir=output_dir,
        converted=n_converted,
        cached=n_cached,
        elapsed_s=time.perf_counter() - t0,
    )


# ---------------------------------------------------------------- MIDI folders

_MIDI_EXTS = (".mid", ".midi")
_PATH_COLUMNS = ("path", "file", "file_name", "filename", "midi", "midi_path")
_GENRE_COLUMNS = ("genre", "label", "style")


def _load_labels(labels: str) -> dict[str, str]:
    """Read a CSV (path/file + genre columns) or JSON/JSONL labels file into a dict."""
    ext = os.path.splitext(labels)[1].lower()
    mapping: dict[str, str] = {}

    def add_record(rec: dict) -> None:
        lower = {str(k).strip().lower(): v for k, v in rec.items()}
        key = next((lower[c] for c in _PATH_COLUMNS if lower.get(c)), None)
        genre = next((lower[c] for c in _GENRE_COLUMNS if lower.get(c)), None)
        if key is None or genre is None:
            raise ValueError(f"labels record {rec!r} needs a path/file and a genre column")
        mapping[str(key).strip()] = str(genre).strip()

    if ext == ".csv":
        with open(labels, newline="", encoding="utf-8-sig") as f:
            for rec in csv.DictReader(f):
                add_record(rec)
    elif ext == ".jsonl":
        for rec in _read_jsonl(labels):
            add_record(rec)
    elif ext == ".json":
        with open(labels, encoding="utf-8") as f:
            data = json.load(f)
        if isinstance(data, dict):
            mapping.update({str(k): str(v) for k, v in data.items()})
        elif isinstance(data, list):
            for rec in data:
                add_record(rec)
        else:
            raise ValueError("JSON labels must be an object {path: genre} or a list of records")
    else:
        raise ValueError(f"labels file must be .csv, .json or .jsonl, got {labels!r}")
    return mapping


def _norm_label_key(key: str) -> str:
    key = key.strip().replace("\\", "/")
    return key[2:] if key.startswith("./") else key


def read_midi_folder(folder: str, labels: str | None = None, default_genre: str = "unknown") -> list[CorpusEntry]:
    """List every .mid/.midi under ``folder`` (recursive, sorted) as labelled entries.

    Genre comes from ``labels`` (CSV with ``path``/``file`` and ``genre`` columns, or
    JSON ``{relative path or file name: genre}``; unlisted files get
    ``default_genre``), otherwise from the first sub-folder name (files directly in
    ``folder`` get ``default_genre``).  ``collection`` is the first sub-folder (or the
    folder's own name) and ``source`` the path relative to ``folder``.
    """
    folder = os.path.abspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"not a folder: {folder}")
    mapping = _load_labels(labels) if labels else None
    if mapping is not None:
        mapping = {_norm_label_key(k): v for k, v in mapping.items()}
    entries: list[CorpusEntry] = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if not name.lower().endswith(_MIDI_EXTS):
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
