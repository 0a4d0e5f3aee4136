"""Data for training: tokenized `datasets` splits by piece, bar-aligned windows, on-the-fly augmentation, collator.

Pieces come from the embedded corpus (`music_hf.corpus`), any folder of MIDI files, or a HF dataset with a
MIDI-bytes column. Tokenization runs through `datasets.map(batched=True, num_proc=N)`; files that fail are
skipped and counted, never fatal. Splits are decided per piece by a seeded hash of its source, so a piece
is never on both sides and the split does not depend on which other pieces are present.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from .configuration_music import INFILL_ORDERS, UNKNOWN_GENRE
from .corpus import DataSummary, read_midi_folder
from .tokenization_music import MusicFileError, MusicTokenizer

logger = logging.getLogger(__name__)
SPLITS = ("train", "validation", "test")
TOKENIZED_PREFIX = "tokenized-"  # load_or_tokenize's cache folders: <cache_dir>/tokenized-<key>
SUMMARY_NAME = "summary.json"  # the DataSummary saved in each of them


# ----- reading and tokenizing -------------------------------------------------------------------------
def split_of(source: str, seed: int = 0, validation_fraction: float = 0.05, test_fraction: float = 0.05) -> str:
    """The split a piece belongs to, from a seeded hash of its source (stable across runs and subsets)."""
    u = int(hashlib.sha1(f"{seed}:{source}".encode()).hexdigest()[:12], 16) / 16**12
    if u < test_fraction:
        return "test"
    if u < test_fraction + validation_fraction:
        return "validation"
    return "train"


def genre_names(genres: Iterable[str]) -> list[str]:
    """The genre list a model is trained with: "unknown" (genre id 0) first, then the others sorted."""
    return [UNKNOWN_GENRE] + sorted(set(genres) - {UNKNOWN_GENRE})


def _tokenize_batch(batch: dict[str, list], tokenizer: MusicTokenizer, music_column: str,
                    genre2id: dict[str, int]) -> dict[str, list]:
    """Token ids (BOS ... EOS) and genre ids of a batch of pieces; a file that fails gets no ids and an error."""
    ids, errors = [], []
    for x, source in zip(batch[music_column], batch["source"]):
        try:
            ids.append([tokenizer.bos_token_id] + tokenizer.encode_score(x) + [tokenizer.eos_token_id])
            errors.append("")
        except MusicFileError as e:
            ids.append([])
            errors.append(f"{source}: {e.problem}")
    return {"input_ids": ids, "error": errors, "genre_id": [genre2id.get(g, 0) for g in batch["genre"]]}


def tokenize_pieces(pieces: datasets.Dataset, tokenizer: MusicTokenizer, genres: Sequence[str],
                    music_column: str = "path", num_proc: int | None = None, seed: int = 0,
                    validation_fraction: float = 0.05, test_fraction: float = 0.05
                    ) -> tuple[datasets.DatasetDict, DataSummary]:
    """Tokenize a dataset of pieces (columns `music_column`, `genre`, `source`) and split it by piece.

    Returns a DatasetDict (train/validation/test; columns input_ids, genre_id, source) and a summary.
    """
    num_proc = num_proc if num_proc and num_proc > 1 and len(pieces) >= 2 * num_proc else None
    tokenized = pieces.map(_tokenize_batch, batched=True, batch_size=32, num_proc=num_proc,
                           fn_kwargs={"tokenizer": tokenizer, "music_column": music_column,
                                      "genre2id": {g: i for i, g in enumerate(genres)}},
                           remove_columns=[music_column], desc="tokenizing")
    summary = DataSummary(failed=[(s, e) for s, e in zip(tokenized["source"], tokenized["error"]) if e])
    for src, why in summary.failed:
        logger.warning("skipped %s", why)
    tokenized = tokenized.filter(lambda err: not err, input_columns="error").remove_columns("error")
    tokenized = tokenized.map(
        lambda b: {"split": [split_of(s, seed, validation_fraction, test_fraction) for s in b["source"]]},
        batched=True)
    out = datasets.DatasetDict({
        name: tokenized.filter(lambda s, n=name: s == n, input_columns="split").remove_columns("split")
        for name in SPLITS
    })
    for name, ds in out.items():
        summary.pieces[name] = len(ds)
        summary.tokens[name] = int(sum(len(x) for x in ds["input_ids"]))
    summary.genres = dict(Counter(tokenized["genre"]))
    return out, summary


def pieces_from_entries(entries: Sequence[Any]) -> datasets.Dataset:
    """A dataset of pieces (path, genre, source) from corpus entries (objects with those attributes)."""
    return datasets.Dataset.from_dict({
        "path": [str(e.path) for e in entries],
        "genre": [e.genre for e in entries],
        "source": [str(getattr(e, "source", e.path)) for e in entries],
    })


def pieces_from_hf_dataset(ds: datasets.Dataset | datasets.IterableDataset, midi_column: str = "midi",
                           genre_column: str | None = "genre", source_column: str | None = None
                           ) -> datasets.Dataset | datasets.IterableDataset:
    """A dataset of pieces (midi_bytes, genre, source) from a HF dataset, map-style or streamed, holding MIDI bytes
    (a `bytes` column or an `{"bytes": ...}` struct).

    Without `source_column` rows are named "row-<i>"; in a stream, whose row numbers restart in each process's
    shard, "sha1-<digest of the bytes>".
    """
    streamed = isinstance(ds, datasets.IterableDataset)
    columns = [c for c in (midi_column, genre_column, source_column) if c]

    def convert(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        midi = [m["bytes"] if isinstance(m, dict) else m for m in batch[midi_column]]
        if source_column:
            sources = [str(s) for s in batch[source_column]]
        elif streamed:
            sources = [f"sha1-{hashlib.sha1(m).hexdigest()[:16]}" for m in midi]
        else:
            sources = [f"row-{i}" for i in indices]
        return {"midi_bytes": midi, "genre": batch[genre_column] if genre_column else [UNKNOWN_GENRE] * len(midi),
                "source": sources}
    return ds.select_columns(columns).map(convert, batched=True, with_indices=True, remove_columns=columns)


def _cache_key(tokenizer: MusicTokenizer, pieces: datasets.Dataset, music_column: str, extra: dict[str, Any]) -> str:
    """A digest of the tokenizer, the settings and each piece's content: its MIDI bytes, or its file's
    path, size and mtime (sources alone, e.g. "row-3", do not tell two datasets apart)."""
    h = hashlib.sha1()
    h.update(tokenizer.miditok.config.to_dict().__repr__().encode())
    h.update(str(tokenizer.vocab_size).encode())
    h.update(json.dumps(extra, sort_keys=True).encode())
    for batch in pieces.select_columns(["source", music_column]).iter(batch_size=256):
        for source, x in zip(batch["source"], batch[music_column]):
            h.update(source.encode())
            if isinstance(x, (bytes, bytearray)):
                h.update(hashlib.sha1(x).digest())
            else:
                with contextlib.suppress(OSError):  # a missing file is reported by tokenization
                    st = os.stat(x)
                    h.update(f"{x}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def load_or_tokenize(pieces: datasets.Dataset, tokenizer: MusicTokenizer, genres: Sequence[str],
                     cache_dir: str | os.PathLike | None = None, **kwargs: Any
                     ) -> tuple[datasets.DatasetDict, DataSummary]:
    """`tokenize_pieces` with an Arrow cache on disk: the same pieces, tokenizer and split settings load at once."""
    if cache_dir is None:
        return tokenize_pieces(pieces, tokenizer, genres, **kwargs)
    extra = {k: v for k, v in kwargs.items() if k != "num_proc"} | {"genres": list(genres)}
    key = _cache_key(tokenizer, pieces, kwargs.get("music_column", "path"), extra)
    path = Path(cache_dir) / f"{TOKENIZED_PREFIX}{key}"
    if (path / SUMMARY_NAME).exists():
        summary = DataSummary.from_dict(json.loads((path / SUMMARY_NAME).read_text()))
        return datasets.load_from_disk(str(path)), summary
    ds, summary = tokenize_pieces(pieces, tokenizer, genres, **kwargs)
    ds.save_to_disk(str(path))
    (path / SUMMARY_NAME).write_text(json.dumps(asdict(summary)))
    return ds, summary


# ----- windows ----------------------------------------------------------------------------------------
def window_starts(bar_flags: np.ndarray, length: int, max_length: int, stride: int) -> list[int]:
    """Start indices of windows: the first at 0, each next at the last bar start <= previous + stride.

    Consecutive windows thus overlap by at least max_length - stride tokens and no token between them is
    lost; only a bar longer than the stride moves the next start further, to the first later bar.
    """
    bars = np.flatnonzero(bar_flags)
    starts, start = [0], 0
    while start + max_length < length:
        later = bars[bars > start]
        if len(later) == 0:
            break
        within = later[later <= start + stride]
        start = int(within[-1] if len(within) else later[0])
        starts.append(start)
    return starts


def _window_cutter(tokenizer: MusicTokenizer, max_length: int, overlap: int, stable_idx: bool = False):
    """A batched map function cutting pieces (input_ids, genre_id, source) into windows at `window_starts`.

    With `stable_idx` each window also gets an `idx` from its piece and start, which seeds its augmentation in
    the collator wherever the window is streamed.
    """
    bar_table = np.asarray(tokenizer.music_attributes()["bar_count"]) > 0
    stride = max(1, max_length - overlap)

    def cut(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {"input_ids": [], "genre_id": [], "source": [], **({"idx": []} if stable_idx else {})}
        for ids, genre, source in zip(batch["input_ids"], batch["genre_id"], batch["source"]):
            arr = np.asarray(ids)
            for s in window_starts(bar_table[arr], len(arr), max_length, stride):
                out["input_ids"].append(arr[s: s + max_length].tolist())
                out["genre_id"].append(genre)
                out["source"].append(source)
                if stable_idx:
                    out["idx"].append(int(hashlib.sha1(f"{source}:{s}".encode()).hexdigest()[:12], 16))
        return out
    return cut


def make_windows(pieces: datasets.Dataset, tokenizer: MusicTokenizer, max_length: int, overlap: int = 0,
                 pack: bool = False) -> datasets.Dataset:
    """Cut tokenized pieces into windows of at most `max_length` tokens starting at bar boundaries.

    Consecutive windows share at least `overlap` tokens (each starts at the last bar within max_length - overlap
    tokens of the previous start), so every token is in some window unless a single bar exceeds max_length.
    Short pieces stay short (the collator pads them) unless `pack` concatenates consecutive short windows
    into full ones.
    """
    windows = pieces.map(_window_cutter(tokenizer, max_length, overlap), batched=True,
                         remove_columns=pieces.column_names, desc="windows")
    if pack:
        windows = windows.map(lambda b: _pack(b, max_length), batched=True, batch_size=256, desc="packing")
    return windows.add_column("idx", list(range(len(windows))))


def _pack(batch: dict[str, list], max_length: int) -> dict[str, list]:
    out: dict[str, list] = {"input_ids": [], "genre_id": [], "source": []}
    cur: list[int] = []
    genre, source = 0, ""
    for ids, g, s in zip(batch["input_ids"], batch["genre_id"], batch["source"]):
        if cur and len(cur) + len(ids) > max_length:
            out["input_ids"].append(cur), out["genre_id"].append(genre), out["source"].append(source)
            cur = []
        if not cur:
            genre, source = g, s
        cur = cur + ids
    if cur:
        out["input_ids"].append(cur[:max_length]), out["genre_id"].append(genre), out["source"].append(source)
    return out


# ----- streaming --------------------------------------------------------------------------------------
def _distribute(stream: datasets.IterableDataset, seed: int, buffer_size: int, rank: int, world_size: int
                ) -> datasets.IterableDataset:
    """Shuffle a stream (shard order, then a buffer; reseeded by `set_epoch`) and keep process `rank`'s part."""
    from datasets.distributed import split_dataset_by_node

    stream = stream.shuffle(seed=seed, buffer_size=buffer_size)
    return split_dataset_by_node(stream, rank=rank, world_size=world_size)


def _num_shards(n_pieces: int, world_size: int) -> int:
    """Shards for a stream of `n_pieces`: a multiple of `world_size` (up to 8 per process) when there are enough
    pieces, so `split_dataset_by_node` gives each process whole shards, i.e. its own pieces."""
    per_process = min(8, n_pieces // world_size)
    return world_size * per_process if per_process else max(1, n_pieces)


def iterable_windows(pieces: datasets.Dataset, tokenizer: MusicTokenizer, max_length: int, overlap: int = 0,
                     seed: int = 0, rank: int = 0, world_size: int = 1) -> datasets.IterableDataset:
    """Streaming windows of tokenized pieces (as `make_windows`), shuffled by shard and split across processes."""
    stream = pieces.to_iterable_dataset(num_shards=_num_shards(len(pieces), world_size))
    stream = _distribute(stream, seed, 256, rank, world_size)
    return stream.map(_window_cutter(tokenizer, max_length, overlap, stable_idx=True), batched=True,
                      remove_columns=list(pieces.column_names))


def _open_dataset(name: str | os.PathLike, split: str) -> datasets.Dataset | datasets.IterableDataset:
    """A dataset saved with `save_to_disk`, else a Hub id or local data path opened as a stream."""
    path = Path(name)
    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        ds = datasets.load_from_disk(str(path))
        return ds[split] if isinstance(ds, datasets.DatasetDict) else ds
    return datasets.load_dataset(str(name), split=split, streaming=True)


def _kept(error: str) -> bool:
    if error:
        logger.warning("skipped %s", error)
    return not error


def streaming_windows(tokenizer: MusicTokenizer, genres: Sequence[str], max_length: int, overlap: int = 0, *,
                      midi_dir: str | os.PathLike | None = None, labels_file: str | None = None,
                      entries: Sequence[Any] | None = None,
                      dataset: str | os.PathLike | datasets.Dataset | datasets.IterableDataset | None = None,
                      dataset_split: str = "train", midi_column: str = "midi", genre_column: str | None = "genre",
                      source_column: str | None = None, split: str | None = "train",
                      validation_fraction: float = 0.05, test_fraction: float = 0.05, seed: int = 0,
                      buffer_size: int = 256, rank: int = 0, world_size: int = 1) -> datasets.IterableDataset:
    """Bar-aligned token windows for training, read and tokenized as they are consumed (no Arrow cache, any size).

    Pieces come from exactly one of: `midi_dir` (its MIDI files; genres from `labels_file` or sub-folders, as
    `read_midi_folder`); corpus `entries` (e.g. `prepare_corpus(...).entries`, named by their source as in
    `pieces_from_entries`); or `dataset` with MIDI bytes in `midi_column` (as `pieces_from_hf_dataset`): a
    `Dataset` or `IterableDataset`, a folder saved with `save_to_disk`, or a Hub id / data path streamed with
    `load_dataset(dataset, split=dataset_split, streaming=True)`.

    Only pieces of `split` are kept (`split_of` with `seed` and the fractions, as `tokenize_pieces`; None keeps
    all). The pieces are shuffled (shard order, then a buffer of `buffer_size`, both seeded by `seed` plus the
    epoch `IterableDataset.set_epoch` sets) and shared among `world_size` processes with `split_dataset_by_node`:
    process `rank` reads and tokenizes its own pieces. (A streamed `dataset` whose shard count is not a multiple
    of `world_size` is shared by window instead: datasets' fallback, each process reading every piece.)

    Windows are as `make_windows` cuts them, with input_ids, genre_id (index in `genres`, 0 for a genre not in
    it), source and idx (stable per window: it seeds the collator's augmentation). Files that fail to tokenize
    are logged and skipped.
    """
    if sum(x is not None for x in (midi_dir, entries, dataset)) != 1:
        raise ValueError("give exactly one of midi_dir, entries and dataset")
    if dataset is None:
        pieces = pieces_from_entries(entries if entries is not None else
                                     read_midi_folder(str(midi_dir), labels=labels_file))
        music_column = "path"
    else:
        if isinstance(dataset, (str, os.PathLike)):
            dataset = _open_dataset(dataset, dataset_split)
        pieces = pieces_from_hf_dataset(dataset, midi_column, genre_column, source_column)
        music_column = "midi_bytes"
    if isinstance(pieces, datasets.Dataset):
        pieces = pieces.to_iterable_dataset(num_shards=_num_shards(len(pieces), world_size))
    if split is not None:
        pieces = pieces.filter(lambda s: split_of(s, seed, validation_fraction, test_fraction) == split,
                               input_columns="source")
    pieces = _distribute(pieces, seed, buffer_size, rank, world_size)
    tokenized = pieces.map(_tokenize_batch, batched=True, remove_columns=[music_column],
                           fn_kwargs={"tokenizer": tokenizer, "music_column": music_column,
                                      "genre2id": {g: i for i, g in enumerate(genres)}})
    tokenized = tokenized.filter(_kept, input_columns="error")
    return tokenized.map(_window_cutter(tokenizer, max_length, overlap, stable_idx=True), batched=True,
                         remove_columns=["input_ids", "error", "genre", "genre_id", "source"])


# ----- augmentation -----------------------------------------------------------------------------------
@dataclass
class AugmentationConfig:
    """On-the-fly, token-level augmentation (off for evaluation). Steps are in vocabulary bins."""

    pitch_shift: int = 0  # transpose non-drum notes by a random number of semitones in [-n, n]
    tempo_shift: int = 0  # move every Tempo token by one random number of tempo bins in [-n, n]
    velocity_jitter: int = 0  # each Velocity token moves independently by up to n bins
    duration_jitter: int = 0  # each Duration token moves by up to n bins (timing noise)
    position_jitter: int = 0  # each onset Position moves by up to n positions, keeping order inside its bar
    velocity_dynamics: float = 0.0  # chance that a window's velocities are redrawn as dynamics over the whole range
    program_reassign: float = 0.0  # chance that a window's instruments move to other General MIDI families
    probability: float = 1.0  # chance that a window is augmented at all
    timing_noise: float = 1.0  # chance that an augmented window gets the duration and position jitter

    @property
    def enabled(self) -> bool:
        return self.probability > 0 and any((self.pitch_shift, self.tempo_shift, self.velocity_jitter,
                                             self.duration_jitter, self.position_jitter, self.velocity_dynamics,
                                             self.program_reassign))


#: General MIDI instrument families (program // 8) that reassignment draws from: all but "sound effects" (120-127)
#: and "percussive" (112-119), whose sounds carry no pitch line.
GM_FAMILIES = tuple(range(14))


class TokenAugmenter:
    """Applies an `AugmentationConfig` to id windows by moving ids along the tokenizer's value tables."""

    def __init__(self, tokenizer: MusicTokenizer, config: AugmentationConfig):
        self.config = config
        table = tokenizer.token_table
        self.rank: dict[str, np.ndarray] = {}
        self.ids: dict[str, np.ndarray] = {}
        for kind, ids in tokenizer.value_tables().items():
            rank = np.full(len(table), -1)
            rank[ids] = np.arange(len(ids))
            self.rank[kind], self.ids[kind] = rank, ids
        # the kinds a transposition moves together (MIDILike: NoteOn and NoteOff), each over the same pitch range
        self.pitch_kinds = [k for k in ("Pitch", "NoteOn", "NoteOff") if len(self.ids[k])]
        self.bar = table.bar_count > 0
        # Program tokens by program (-1 drums, 0-127; the table's value for drums is 128), -2 for other tokens;
        # program_id[p] is the id of Program_p, -1 where the vocabulary lacks it
        program_ids = tokenizer.kind_ids("Program")
        values = table.value[program_ids].astype(np.int64)
        self.program_value = np.full(len(table), -2, dtype=np.int64)
        self.program_value[program_ids] = np.where(values >= 128, -1, values)
        self.program_id = np.full(128, -1, dtype=np.int64)
        self.program_id[values[values < 128]] = program_ids[values < 128]
        self.beat_positions = max(1, int(max(tokenizer.miditok.config.beat_res.values())))

    def _shift_all(self, ids: np.ndarray, kind: str, shift: int) -> None:
        r = self.rank[kind][ids]
        sel = r >= 0
        ids[sel] = self.ids[kind][np.clip(r[sel] + shift, 0, len(self.ids[kind]) - 1)]

    def _jitter(self, ids: np.ndarray, kind: str, n: int, rng: np.random.Generator) -> None:
        r = self.rank[kind][ids]
        sel = r >= 0
        noise = rng.integers(-n, n + 1, size=int(sel.sum()))
        ids[sel] = self.ids[kind][np.clip(r[sel] + noise, 0, len(self.ids[kind]) - 1)]

    def __call__(self, ids: Sequence[int], rng: np.random.Generator) -> list[int]:
        cfg = self.config
        out = np.asarray(ids).copy()
        if not cfg.enabled or rng.random() >= cfg.probability:
            return out.tolist()
        if cfg.pitch_shift and self.pitch_kinds:
            present = np.concatenate([r[r >= 0] for r in (self.rank[k][out] for k in self.pitch_kinds)])
            if len(present):  # a shift that keeps every pitch inside the vocabulary
                lo = max(-cfg.pitch_shift, -int(present.min()))
                hi = min(cfg.pitch_shift, len(self.ids[self.pitch_kinds[0]]) - 1 - int(present.max()))
                shift = int(rng.integers(lo, hi + 1))
                for kind in self.pitch_kinds:
                    self._shift_all(out, kind, shift)
        if cfg.tempo_shift:
            self._shift_all(out, "Tempo", int(rng.integers(-cfg.tempo_shift, cfg.tempo_shift + 1)))
        if cfg.program_reassign and rng.random() < cfg.program_reassign:
            self._reassign_programs(out, rng)
        if cfg.velocity_dynamics and len(self.ids["Velocity"]) and rng.random() < cfg.velocity_dynamics:
            self._dynamics(out, rng)
        if cfg.velocity_jitter:
            self._jitter(out, "Velocity", cfg.velocity_jitter, rng)
        if (cfg.duration_jitter or cfg.position_jitter) and cfg.timing_noise < 1 and rng.random() >= cfg.timing_noise:
            return out.tolist()  # the written timing kept (the draw is skipped at 1, as before timing_noise existed)
        if cfg.duration_jitter:
            self._jitter(out, "Duration", cfg.duration_jitter, rng)
        if cfg.position_jitter:
            self._jitter_positions(out, cfg.position_jitter, rng)
        return out.tolist()

    def _reassign_programs(self, ids: np.ndarray, rng: np.random.Generator) -> None:
        """Give each pitched instrument of the window a program of another General MIDI family (distinct families
        while they last: a chorale's voices become strings, brass and a piano; a fiddle tune a flute or a guitar).
        Drums stay drums. Only programs the vocabulary has are drawn."""
        values = self.program_value[ids]
        present = sorted({int(v) for v in values[values >= 0]})
        if not present:
            return
        available = [f for f in GM_FAMILIES if (self.program_id[f * 8: f * 8 + 8] >= 0).any()]
        order = rng.permutation(available)
        mapping = np.arange(-2, 128)  # value + 2 -> new value
        for n, program in enumerate(present):
            family = int(order[n % len(order)])
            choices = np.flatnonzero(self.program_id[family * 8: family * 8 + 8] >= 0) + family * 8
            mapping[program + 2] = int(rng.choice(choices))
        where = np.flatnonzero(values >= 0)
        ids[where] = self.program_id[mapping[values[where] + 2]]

    def _dynamics(self, ids: np.ndarray, rng: np.random.Generator) -> None:
        """Redraw every Velocity as performed dynamics over the whole velocity range: a level drawn anywhere from
        pp to ff, a crescendo/diminuendo or a swell over the window, a level per instrument (a melody over a
        softer accompaniment), accents on downbeats and beats, and per-note variation."""
        rank = self.rank["Velocity"][ids]
        where = np.flatnonzero(rank >= 0)
        if not len(where):
            return
        top = len(self.ids["Velocity"]) - 1
        t = where / max(1, len(ids) - 1)
        level = rng.uniform(0.1, 0.9) * top
        shape = int(rng.integers(3))  # 0 steady, 1 crescendo/diminuendo, 2 swell (or dip) over the window
        size = rng.uniform(-0.4, 0.4) * top
        curve = level + (size * (t - 0.5) if shape == 1 else size * np.sin(np.pi * t) if shape == 2 else 0.0)
        # the instrument and the onset position in force at each Velocity token
        values = self.program_value[ids]
        last_program = np.maximum.accumulate(np.where(values >= -1, np.arange(len(ids)), -1))[where]
        programs = np.where(last_program >= 0, values[np.maximum(last_program, 0)], -2)
        offsets = {int(p): rng.integers(-2, 3) for p in np.unique(programs)}
        curve = curve + np.array([offsets[int(p)] for p in programs])
        pos_rank = self.rank["Position"][ids]
        last_pos = np.maximum.accumulate(np.where(pos_rank >= 0, np.arange(len(ids)), -1))[where]
        position = np.where(last_pos >= 0, pos_rank[np.maximum(last_pos, 0)], -1)
        accent = rng.integers(0, 3)
        curve = curve + np.where(position == 0, accent, np.where(position % self.beat_positions == 0, accent / 2, 0))
        curve = curve + rng.normal(0, 0.7, size=len(where))
        ids[where] = self.ids["Velocity"][np.clip(np.rint(curve), 0, top).astype(np.int64)]

    def _jitter_positions(self, ids: np.ndarray, n: int, rng: np.random.Generator) -> None:
        """Move Position values by up to n while each stays strictly between its neighbours in the same bar."""
        rank = self.rank["Position"]
        where = np.flatnonzero(rank[ids] >= 0)
        if len(where) == 0:
            return
        bar_of = np.cumsum(self.bar[ids])[where]
        vals = rank[ids[where]]
        new = vals.copy()
        limit = len(self.ids["Position"])
        for j in range(len(where)):
            lo = new[j - 1] + 1 if j > 0 and bar_of[j - 1] == bar_of[j] else 0
            hi = vals[j + 1] - 1 if j + 1 < len(where) and bar_of[j + 1] == bar_of[j] else vals[j]
            hi = min(hi, limit - 1)
            cand = vals[j] + int(rng.integers(-n, n + 1))
            new[j] = min(max(cand, lo), max(hi, lo))
        ids[where] = self.ids["Position"][new]


# ----- composition: fill-in-the-middle ---------------------------------------------------------------
def fim_arrange(ids: Sequence[int], tokenizer: MusicTokenizer, rng: np.random.Generator | None = None,
                bars: tuple[int, int] | None = None, order: str = "psm", max_bars: int | None = None) -> list[int]:
    """A window's fill-in-the-middle arrangement over its bars: [tokens before the first bar] + prefix bars +
    [Infill_Bar] * k + suffix bars + [Infill_Start] + the k middle bars + [Infill_End] (+ a final EOS, kept last).

    `order` "spm": [tokens before the first bar] + [Infill_Bar] * (prefix bars + k) + suffix bars + [Infill_Start]
    + prefix bars + the k middle bars + [Infill_End] (+ EOS): the missing bars continue the prefix right before
    them, as in plain continuation, with the suffix further back; the placeholders stand for every bar before
    the suffix, so the suffix's bars carry their true bar index (`MusicEmbeddings.carried` takes the count back
    to the run's start at Infill_Start) and so do the prefix's and the middle's.

    `bars` (start, end), counted from the window's first bar, end exclusive, sets the middle; else `rng` draws
    it: k uniform in 1..(bars in the window, or `max_bars` when fewer), then its place uniform. Every token is kept;
    a window without bars comes back unchanged.
    """
    ids = list(ids)
    infill = tokenizer.infill_ids
    tail = 1 if ids and ids[-1] == tokenizer.eos_token_id else 0
    bounds = [*np.flatnonzero(tokenizer.token_table.bar_count[np.asarray(ids[:len(ids) - tail], dtype=np.int64)] > 0),
              len(ids) - tail]
    n = len(bounds) - 1
    if n == 0:
        return ids
    if bars is None:
        k = int(rng.integers(1, min(n, max_bars or n) + 1))
        start = int(rng.integers(0, n - k + 1))
        bars = (start, start + k)
    start, end = bars
    if not 0 <= start < end <= n:
        raise ValueError(f"bars {bars} must satisfy 0 <= start < end <= {n} (the window's bars)")
    h, a, b, c = bounds[0], bounds[start], bounds[end], bounds[n]
    if order == "spm":
        return (ids[:h] + [infill["bar"]] * end + ids[b:c] + [infill["start"]] + ids[h:a] + ids[a:b]
                + [infill["end"]] + ids[c:])
    if order != "psm":
        raise ValueError(f"order must be one of {INFILL_ORDERS}, got {order!r}")
    return (ids[:a] + [infill["bar"]] * (end - start) + ids[b:c] + [infill["start"]] + ids[a:b] + [infill["end"]]
            + ids[c:])


# ----- collator ---------------------------------------------------------------------------------------
class MusicDataCollator:
    """Pads windows into a batch: input_ids, attention_mask, labels (-100 on padding) and genre_ids.

    With an augmenter, each window is augmented with a generator seeded by (seed, epoch, window idx), so a
    resumed run sees exactly the augmentations an unbroken run would. With a `tokenizer`, composition training
    (from a second generator seeded the same way, drawn after augmentation): a control prefix after BOS measured
    on the window (`measure_controls`; each control dropped with probability `control_dropout`, None: no
    prefix), a fill-in-the-middle arrangement (`fim_arrange`, laid out as `fim_order` says) with probability
    `fim_rate` (leaving out at most `fim_max_bars` bars), and genre 0 with probability `genre_dropout`.
    """

    def __init__(self, pad_token_id: int, augmenter: TokenAugmenter | None = None, seed: int = 0,
                 pad_to_multiple_of: int | None = None, tokenizer: MusicTokenizer | None = None,
                 fim_rate: float = 0.0, control_dropout: float | None = None, genre_dropout: float = 0.0,
                 fim_order: str = "psm", fim_max_bars: int | None = None):
        self.pad_token_id = pad_token_id
        self.augmenter = augmenter
        self.seed = seed
        self.epoch = 0
        self.pad_to_multiple_of = pad_to_multiple_of
        for name, rate in (("fim_rate", fim_rate), ("control_dropout", control_dropout),
                           ("genre_dropout", genre_dropout)):
            if rate is not None and not 0 <= rate <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {rate}")
        if fim_order not in INFILL_ORDERS:
            raise ValueError(f"fim_order must be one of {INFILL_ORDERS}, got {fim_order!r}")
        self.fim_order = fim_order
        if fim_max_bars is not None and (isinstance(fim_max_bars, bool) or not isinstance(fim_max_bars, int)
                                         or fim_max_bars < 1):
            raise ValueError(f"fim_max_bars must be a whole number of bars >= 1 (or None), got {fim_max_bars!r}")
        self.fim_max_bars = fim_max_bars
        self.composing = bool(fim_rate or genre_dropout) or control_dropout is not None
        if self.composing and tokenizer is None:
            raise ValueError("fim_rate, control_dropout and genre_dropout need the tokenizer (tokenizer=...)")
        if fim_rate:
            tokenizer.infill_ids  # fails here, naming the problem, for a tokenizer that cannot infill
        if control_dropout is not None:
            tokenizer.measure_controls([])  # ... or cannot measure controls
        self.tokenizer = tokenizer
        self.fim_rate, self.control_dropout, self.genre_dropout = fim_rate, control_dropout, genre_dropout

    def compose(self, ids: list[int], genre: int, rng: np.random.Generator) -> tuple[list[int], int]:
        """One window's control prefix, fill-in-the-middle arrangement and genre dropout (draws in a fixed order)."""
        controls = []
        if self.control_dropout is not None:
            measured = self.tokenizer.measure_controls(ids)
            names = self.tokenizer.control_names  # those the vocabulary has (an older one lacks timing, repetition)
            kept = [rng.random() >= self.control_dropout for _ in names]
            controls = self.tokenizer.control_ids({n: measured[n] for n, keep in zip(names, kept) if keep})
        if rng.random() < self.fim_rate:
            ids = fim_arrange(ids, self.tokenizer, rng, order=self.fim_order, max_bars=self.fim_max_bars)
        if rng.random() < self.genre_dropout:
            genre = 0
        at = 1 if ids and ids[0] == self.tokenizer.bos_token_id else 0
        return ids[:at] + controls + ids[at:], genre

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seqs, genres = [], []
        for ex in examples:
            ids, genre, idx = list(ex["input_ids"]), int(ex.get("genre_id", 0)), int(ex.get("idx", 0))
            if self.augmenter is not None:
                ids = self.augmenter(ids, np.random.default_rng([self.seed, self.epoch, idx]))
            if self.composing:
                ids, genre = self.compose(ids, genre, np.random.default_rng([self.seed, self.epoch, idx, 1]))
            seqs.append(ids)
            genres.append(genre)
        length = max(len(s) for s in seqs)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(seqs), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(seqs), length), dtype=torch.long)
        for i, s in enumerate(seqs):
            input_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            attention_mask[i, : len(s)] = 1
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        genre_ids = torch.tensor(genres, dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "genre_ids": genre_ids}


__all__ = ["DataSummary", "genre_names", "split_of", "tokenize_pieces", "pieces_from_entries", "pieces_from_hf_dataset",
           "load_or_tokenize", "window_starts", "make_windows", "iterable_windows", "streaming_windows",
           "AugmentationConfig", "TokenAugmenter", "fim_arrange", "MusicDataCollator"]
