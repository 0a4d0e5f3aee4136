"""Conversion of one score file to MIDI: ABC tunes with symusic (abc2midi), everything else with music21.

symusic is ~100x faster than music21 on ABC, and one ABC file often holds hundreds of tunes, each its own
piece; music21 is the fallback for tunes abc2midi rejects. Errors become failures, never exceptions.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import symusic
from miditok.utils import merge_scores

from ..tokenization_music import split_abc_tunes
from .catalogue import ABC_MULTIPART_COLLECTIONS, genre_for_collection
from .manifest import CorpusEntry
from .pool import PieceTimeout, reason, time_limit

#: Seconds allowed per piece.
DEFAULT_TIMEOUT = 600.0

Failures = list[tuple[str, str]]  # (source, reason) pairs


@dataclass
class ConversionTask:
    """One score file to convert (for ABC, optionally a subset of its tunes), picklable for worker processes.

    ``keys`` name the pieces it stands for in the manifest, so they are recorded as failed if its worker dies.
    """

    file: str  # absolute source file path
    rel_file: str  # corpus-relative source file path (the recorded source, and the output sub-path)
    collection: str
    genre: str
    output_dir: str
    tunes: list[int] | None = None  # indices into abc_pieces(); None = all
    timeout: float | None = DEFAULT_TIMEOUT
    keys: list[str] = field(default_factory=list)


def _read_text(path: str) -> str:
    """Read a text score, UTF-8 first, Latin-1 as fallback (old ABC books)."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def abc_pieces(path: str, collection: str) -> list[list[str]]:
    """The pieces of an ABC file as lists of tune texts: one per tune, or one of all tunes for a part-book
    (:data:`ABC_MULTIPART_COLLECTIONS`, whose ``X:`` blocks are voices) or a file of at most one tune."""
    tunes = split_abc_tunes(_read_text(path))
    if collection in ABC_MULTIPART_COLLECTIONS or len(tunes) <= 1:
        return [tunes]
    return [[tune] for tune in tunes]


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


# ------------------------------------------------------------------- writing


def _tmp_path(path: str) -> str:
    return f"{path}.{os.getpid()}.tmp"


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _dump_score(score: symusic.Score, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = _tmp_path(path)
    try:
        score.dump_midi(tmp)
        os.replace(tmp, path)
    finally:
        _remove_quietly(tmp)


def _out_rel(rel_file: str, tune: int | None) -> str:
    stem = os.path.splitext(rel_file)[0]
    return f"{stem}/{tune:04d}.mid" if tune is not None else f"{stem}.mid"


# ------------------------------------------------------------------------ ABC


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


def _merge_parts(scores: Sequence[symusic.Score], texts: Sequence[str]) -> symusic.Score:
    """Stack single-voice scores (ABC part-books) into one multi-track score with miditok's ``merge_scores``.

    Unnamed tracks are named after the voice title (``T: Tenor``, the last T: line).  Only the first voice
    keeps its tempos, time and key signatures: ``merge_scores`` keeps every score's, and the voices repeat
    the same ones (or, for keys, disagree, one voice written with a different key signature).
    """
    parts = []
    for i, (score, text) in enumerate(zip(scores, texts)):
        score = score.resample(scores[0].tpq) if score.tpq != scores[0].tpq else score.copy()
        titles = _T_LINE.findall(text)
        for track in score.tracks:
            if not track.name and len(titles) > 1:
                track.name = titles[-1]
        if i:
            score.tempos.clear()
            score.time_signatures.clear()
            score.key_signatures.clear()
        parts.append(score)
    return merge_scores(parts)


def _convert_abc(task: ConversionTask) -> tuple[list[CorpusEntry], Failures]:
    entries: list[CorpusEntry] = []
    failed: Failures = []
    pieces = abc_pieces(task.file, task.collection)
    if len(pieces) == 1:
        jobs: list[tuple[int | None, list[str]]] = [(None, pieces[0])]
    else:
        indices = task.tunes if task.tunes is not None else range(len(pieces))
        jobs = [(i, pieces[i]) for i in indices if 0 <= i < len(pieces)]
    for tune_idx, texts in jobs:
        source = task.rel_file if tune_idx is None else f"{task.rel_file}#{tune_idx}"
        out_path = os.path.join(task.output_dir, _out_rel(task.rel_file, tune_idx))
        try:
            with time_limit(task.timeout):
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
                    except PieceTimeout:
                        raise
                    except Exception:
                        raise sym_exc from None
                    if _midi_note_count(out_path) == 0:
                        os.remove(out_path)
                        raise ValueError("no notes") from None
            entries.append(CorpusEntry(out_path, task.genre, task.collection, source))
        except Exception as exc:  # noqa: BLE001 - a bad tune must never stop the corpus
            failed.append((source, reason(exc)))
    return entries, failed


# -------------------------------------------------------------------- music21


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


def _convert_music21(task: ConversionTask) -> tuple[list[CorpusEntry], Failures]:
    out_path = os.path.join(task.output_dir, _out_rel(task.rel_file, None))
    try:
        with time_limit(task.timeout):
            written = _music21_to_midi(task.file, out_path)
    except Exception as exc:  # noqa: BLE001
        return [], [(task.rel_file, reason(exc))]
    entries: list[CorpusEntry] = []
    failed: Failures = []
    for i, path in enumerate(written):
        source = task.rel_file if len(written) == 1 else f"{task.rel_file}#{i}"
        try:
            n = _midi_note_count(path)
        except Exception as exc:  # noqa: BLE001
            failed.append((source, reason(exc)))
            continue
        if n == 0:
            os.remove(path)
            failed.append((source, "ValueError: no notes"))
        else:
            entries.append(CorpusEntry(path, task.genre, task.collection, source))
    return entries, failed


# ------------------------------------------------------------------------ API


def run_task(task: ConversionTask) -> tuple[list[CorpusEntry], Failures]:
    """Convert one task; never raises (errors become failures)."""
    try:
        if task.file.lower().endswith(".abc"):
            return _convert_abc(task)
        return _convert_music21(task)
    except Exception as exc:  # noqa: BLE001
        return [], [(task.rel_file, reason(exc))]


def convert_piece(
    source_path: str,
    output_dir: str,
    collection: str | None = None,
    genre: str | None = None,
    rel_source: str | None = None,
    tunes: Sequence[int] | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> tuple[list[CorpusEntry], Failures]:
    """Convert one score file (.mxl/.xml/.musicxml/.krn/.abc) to MIDI under ``output_dir``.

    Returns ``(entries, failures)``; never raises for bad input.  ``collection``
    defaults to the parent folder name, ``genre`` to that collection's genre and
    ``rel_source`` (the ``source`` recorded, and the output sub-path) to
    ``<collection>/<file name>``.  For ABC, ``tunes`` selects tune indices.
    """
    source_path = os.path.abspath(source_path)
    collection = collection or os.path.basename(os.path.dirname(source_path))
    return run_task(ConversionTask(
        file=source_path,
        rel_file=rel_source or f"{collection}/{os.path.basename(source_path)}",
        collection=collection,
        genre=genre or genre_for_collection(collection),
        output_dir=os.path.abspath(output_dir),
        tunes=list(tunes) if tunes is not None else None,
        timeout=timeout,
    ))
