"""MusicTokenizer: a transformers tokenizer over a miditok tokenization (REMI+ by default).

MIDI (or ABC) goes in as a path, raw bytes or a `symusic.Score`; token ids come out in a `BatchEncoding`
exactly as for text. miditok does the musical work; this class adds the transformers contract
(`save_pretrained`, `AutoTokenizer`, padding, truncation) and the per-id attribute tables the model reads.

This module is copied next to saved tokenizers for `trust_remote_code` users: it must not import
`music_hf` by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import miditok
import symusic
from transformers import PreTrainedTokenizer

MIDITOK_FILE = "miditok_config.json"
MIDI_SUFFIXES = (".mid", ".midi", ".kar", ".smf")
ABC_SUFFIXES = (".abc",)
DEFAULT_MAX_FILE_BYTES = 32 * 1024 * 1024
# A few bytes of MIDI can place an event at tick 2**28: tokens grow with the length (a Bar per bar), so cap it.
DEFAULT_MAX_QUARTER_NOTES = 100_000  # about 14 hours at 120 bpm
DRUM_PROGRAM = 128  # miditok writes drums as Program_-1; the attribute tables use 128
# Token kinds the attribute tables know; the model embeds nothing from these names, only from the tables.
TOKEN_KINDS = (
    "special", "Bar", "Position", "Pitch", "PitchDrum", "Velocity", "Duration",
    "Program", "Tempo", "TimeSig", "Rest", "other",
)
SPECIAL_TOKENS = {"pad_token": "PAD_None", "bos_token": "BOS_None", "eos_token": "EOS_None", "mask_token": "MASK_None"}
_X_LINE = re.compile(r"^X:", re.MULTILINE)
_HEADER_FIELD = re.compile(r"^(%%|[A-Za-z]:)")
BPE_JOINER = "|"  # a learned (BPE) token's string is its base tokens joined by this


class MusicFileError(ValueError):
    """A music input that cannot be tokenized; the message names the file and the problem."""

    def __init__(self, source: str, problem: str):
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: {problem}")


class EmptyMusicError(MusicFileError):
    """A readable music input that holds no notes (nothing to tokenize)."""


def default_miditok_config(**overrides: Any) -> miditok.TokenizerConfig:
    """REMI+ settings: programs in one stream, tempos and a wide set of time signatures."""
    params: dict[str, Any] = dict(
        use_programs=True,
        one_token_stream_for_programs=True,
        use_time_signatures=True,
        use_tempos=True,
        use_velocities=True,
        num_velocities=16,
        num_tempos=32,
        tempo_range=(40, 250),
        beat_res={(0, 4): 8, (4, 12): 4},
        time_signature_range={8: [3, 5, 6, 7, 9, 12], 4: [1, 2, 3, 4, 5, 6, 7], 2: [1, 2, 3, 4]},
        special_tokens=["PAD", "BOS", "EOS", "MASK"],
    )
    params.update(overrides)
    return miditok.TokenizerConfig(**params)


def _json_value(value: Any) -> Any:
    """`json.dumps` fallback for miditok setting values: sets, ranges and arrays become lists."""
    if isinstance(value, (set, frozenset, range)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"miditok_config value {value!r} ({type(value).__name__}) cannot be saved as JSON")


def miditok_config_to_json(overrides: dict[str, Any] | None) -> dict[str, Any] | None:
    """`default_miditok_config` overrides in the JSON form `tokenizer_config.json` keeps them in.

    Beat ranges become "start_end" keys (miditok's own file format), other keys strings, tuples lists: the form a
    save/reload gives back, so the saved value and the value in memory are the same.
    """
    if overrides is None:
        return None
    if not isinstance(overrides, dict):
        raise TypeError(f"miditok_config must be a dict of miditok.TokenizerConfig settings, "
                        f"not {type(overrides).__name__}")
    params = dict(overrides)
    for key in ("beat_res", "beat_res_rest"):
        if isinstance(params.get(key), dict):
            params[key] = {("_".join(str(int(b)) for b in k) if isinstance(k, (tuple, list)) else str(k)): v
                           for k, v in params[key].items()}
    return json.loads(json.dumps(params, default=_json_value))


def miditok_config_from_json(params: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `miditok_config_to_json` (as miditok's `TokenizerConfig.load_from_json` reads its file);
    overrides in Python form pass through unchanged."""
    params = dict(params)
    for key in ("beat_res", "beat_res_rest"):
        if isinstance(params.get(key), dict):
            params[key] = {(tuple(int(b) for b in k.split("_")) if isinstance(k, str) else k): v
                           for k, v in params[key].items()}
    if isinstance(params.get("time_signature_range"), dict):
        params["time_signature_range"] = {int(k): v for k, v in params["time_signature_range"].items()}
    return params


@contextlib.contextmanager
def _quiet_stdout():
    """Silence C-level stdout (symusic prints ABC warnings there) for the duration of the block."""
    try:
        fd = os.dup(1)
    except OSError:  # no usable stdout: nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        os.dup2(fd, 1)
        os.close(fd)


def split_abc_tunes(text: str) -> list[str]:
    """Split ABC text into single tunes at lines starting with ``X:``.

    Field/directive lines of the file header (before the first ``X:``) are prepended
    to every tune, since they apply to all of them; comments are dropped.  Text
    without any ``X:`` line is returned as one tune.
    """
    starts = [m.start() for m in _X_LINE.finditer(text)]
    if not starts:
        return [text] if text.strip() else []
    header = "".join(
        line + "\n" for line in text[: starts[0]].splitlines() if _HEADER_FIELD.match(line.strip())
    )
    bounds = starts + [len(text)]
    return [header + text[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _score_from_abc(text: str, source: str) -> symusic.Score:
    tunes = split_abc_tunes(text)
    if not tunes:
        raise MusicFileError(source, "empty ABC text")
    try:
        with _quiet_stdout():
            return symusic.Score.from_abc(tunes[0])
    except RuntimeError as e:
        raise MusicFileError(source, f"not valid ABC ({e})") from e


def _score_from_midi_bytes(data: bytes, source: str) -> symusic.Score:
    if len(data) == 0:
        raise MusicFileError(source, "empty file")
    if not (data[:4] == b"MThd" or data[:4] == b"RIFF"):
        raise MusicFileError(source, "not a MIDI file (no MThd header)")
    try:
        score = symusic.Score.from_midi(data)
    except RuntimeError as e:
        raise MusicFileError(source, f"corrupt or truncated MIDI ({e})") from e
    if score.tpq <= 0:
        raise MusicFileError(source, f"invalid time division ({score.tpq} ticks per quarter note)")
    return score


def is_music_input(x: Any) -> bool:
    """True for what `load_score` can read: a Score, bytes, a path to a MIDI/ABC file, or ABC text."""
    if isinstance(x, (symusic.Score, bytes, bytearray, memoryview, os.PathLike)):
        return True
    if isinstance(x, str):
        if x.lower().endswith(MIDI_SUFFIXES + ABC_SUFFIXES) or x.lstrip().startswith("X:"):
            return True
        return "\n" not in x and len(x) < 4096 and os.path.isfile(x)
    return False


def load_score(x: Any, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> symusic.Score:
    """Read a path, MIDI bytes, ABC text or Score into a `symusic.Score`; bad input raises `MusicFileError`.

    For a multi-tune ABC file the first tune is read (the corpus reader splits tunes into pieces).
    """
    if isinstance(x, symusic.Score):
        return x
    if isinstance(x, (bytes, bytearray, memoryview)):
        data = bytes(x)
        if len(data) > max_file_bytes:
            raise MusicFileError("<bytes>", f"too large ({len(data)} bytes > {max_file_bytes})")
        if data[:4] not in (b"MThd", b"RIFF") and data.lstrip()[:2] == b"X:":
            return _score_from_abc(data.decode("utf-8", errors="replace"), "<bytes>")
        return _score_from_midi_bytes(data, "<bytes>")
    if isinstance(x, str) and x.lstrip().startswith("X:") and "\n" in x:
        return _score_from_abc(x, "<abc text>")
    if isinstance(x, (str, os.PathLike)):
        path = Path(x)
        source = str(path)
        if not path.is_file():
            raise MusicFileError(source, "no such file")
        size = path.stat().st_size
        if size > max_file_bytes:
            raise MusicFileError(source, f"too large ({size} bytes > {max_file_bytes})")
        if path.suffix.lower() in ABC_SUFFIXES:
            return _score_from_abc(path.read_text(encoding="utf-8", errors="replace"), source)
        return _score_from_midi_bytes(path.read_bytes(), source)
    raise TypeError(f"cannot read music from {type(x).__name__}; pass a path, MIDI bytes, ABC text or symusic.Score")


def _source_name(x: Any) -> str:
    if isinstance(x, (str, os.PathLike)) and not (isinstance(x, str) and "\n" in x):
        return str(x)
    return "<bytes>" if isinstance(x, (bytes, bytearray, memoryview)) else f"<{type(x).__name__}>"


class MusicTokenizer(PreTrainedTokenizer):
    """A transformers tokenizer whose "text" is music: MIDI/ABC paths, bytes or `symusic.Score`.

    `tokenizer(x)` returns `input_ids` and `attention_mask`; lists batch, pad and truncate as usual.
    Strings of token names ("Bar_None Position_0 Pitch_60 ...") also encode, and `decode` gives them back.
    `decode_midi(ids)` turns ids into a `symusic.Score`. The miditok tokenizer is `tokenizer.miditok`.
    """

    vocab_files_names = {"vocab_file": MIDITOK_FILE}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab_file: str | os.PathLike | None = None,
        tokenization: str = "REMI",
        miditok_config: dict[str, Any] | None = None,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        max_quarter_notes: int = DEFAULT_MAX_QUARTER_NOTES,
        special_tokens_pattern: str = "bos_eos",
        bos_token: str | None = SPECIAL_TOKENS["bos_token"],
        eos_token: str | None = SPECIAL_TOKENS["eos_token"],
        pad_token: str | None = SPECIAL_TOKENS["pad_token"],
        mask_token: str | None = SPECIAL_TOKENS["mask_token"],
        **kwargs: Any,
    ):
        """
        Args:
            vocab_file: a saved miditok tokenizer (`miditok_config.json`: its settings and any learned BPE);
                `from_pretrained` passes the saved folder's. It holds the whole vocabulary, so when given,
                `miditok_config` is only kept as the record of the overrides it was first built from.
                `miditok_file` (the old name of this argument) is accepted as an alias.
            tokenization: the miditok tokenization class (REMI by default; one token stream is needed).
            miditok_config: overrides of `default_miditok_config` (miditok `TokenizerConfig` settings).
            max_file_bytes, max_quarter_notes: inputs beyond these raise `MusicFileError`.
            special_tokens_pattern: transformers' pattern for `add_special_tokens=True` ("bos_eos": BOS ... EOS).
            bos_token, eos_token, pad_token, mask_token: miditok special token names (`None` for none).
            unk_token (in kwargs, as the other transformers special tokens): unknown token names encode to it;
                without one (the default) they raise `ValueError`.
        """
        legacy_file = kwargs.pop("miditok_file", None)  # never saved again: vocab-file names are not saved
        if vocab_file is None and legacy_file is not None and "name_or_path" not in kwargs:
            # Passed directly. From a loaded tokenizer_config.json (`from_pretrained` sets name_or_path) the path
            # is not followed: transformers trusts no vocab-file path there (it could point outside the repository)
            # and passes the repository's own miditok_config.json as vocab_file instead.
            vocab_file = legacy_file
        if not hasattr(miditok, tokenization):
            raise ValueError(f"unknown miditok tokenization {tokenization!r}")
        tok_class = getattr(miditok, tokenization)
        # kept (and saved) in JSON form: beat ranges as "start_end" keys, as miditok's own file writes them
        self.miditok_config = miditok_config_to_json(miditok_config)
        if vocab_file is not None:
            self.miditok = tok_class(params=Path(vocab_file))
        else:
            self.miditok = tok_class(default_miditok_config(**miditok_config_from_json(miditok_config or {})))
        if not self.miditok.one_token_stream:
            raise ValueError(f"{tokenization} with this config makes one stream per track; MusicTokenizer needs one")
        self.tokenization = tokenization
        self.max_file_bytes = max_file_bytes
        self.max_quarter_notes = max_quarter_notes
        self._build_vocab()  # PythonBackend.__init__ calls get_vocab(): the vocabulary must exist first
        super().__init__(
            tokenization=tokenization,
            miditok_config=self.miditok_config,
            max_file_bytes=max_file_bytes,
            max_quarter_notes=max_quarter_notes,
            special_tokens_pattern=special_tokens_pattern,
            bos_token=bos_token,
            eos_token=eos_token,
            pad_token=pad_token,
            mask_token=mask_token,
            **kwargs,
        )
        # PythonBackend pops `special_tokens_pattern` before PreTrainedTokenizerBase records `init_kwargs`, so it
        # would not be saved; as transformers' own tokenizers do for such arguments (wav2vec2's target_lang), record
        # it here: `save_pretrained` writes the current value of every attribute named in `init_kwargs`.
        self.init_kwargs["special_tokens_pattern"] = special_tokens_pattern

    # ----- vocabulary -----------------------------------------------------------------------------
    def _build_vocab(self) -> None:
        """Token strings per id; with BPE a learned id's string is its base tokens joined by `|`."""
        mt = self.miditok
        if mt.is_trained:
            id_to_bytes = {i: b for b, i in mt.vocab_model.items()}
            self._id_to_base = [list(mt._vocab_learned_bytes_to_tokens[id_to_bytes[i]]) for i in range(len(mt))]
            # BPE split per bar/beat (miditok's default) learns word-start ids, "▁" + bytes, with the same base
            # tokens as the plain id, and a lone "▁" with none: the marker keeps their strings distinct.
            marker = getattr(mt._model.pre_tokenizer, "replacement", None)
            prefixes = [marker if marker and id_to_bytes[i].startswith(marker) else "" for i in range(len(mt))]
        else:
            inv = {i: t for t, i in mt.vocab.items()}
            self._id_to_base = [[inv[i]] for i in range(len(inv))]
            prefixes = [""] * len(inv)
        self._id_to_token = [p + BPE_JOINER.join(base) for p, base in zip(prefixes, self._id_to_base)]
        self._token_to_id = {t: i for i, t in enumerate(self._id_to_token)}

    @property
    def vocab_size(self) -> int:
        return len(self._id_to_token)

    def get_vocab(self) -> dict[str, int]:
        vocab = dict(self._token_to_id)
        vocab.update(getattr(self, "_added_tokens_encoder", {}))
        return vocab

    def _tokenize(self, text: str, **kwargs: Any) -> list[str]:
        return text.split()

    def _convert_token_to_id(self, token: str) -> int:
        index = self._token_to_id.get(token)
        if index is not None:
            return index
        if self.unk_token is None:  # the default: a misspelt token name is an error, not a silent UNK
            raise ValueError(f"unknown token {token!r} (not in this {self.tokenization} vocabulary; "
                             "set unk_token to map unknown names to it)")
        unk = str(self.unk_token)  # looked up here, not by unk_token_id, which would come back to this method
        unk_id = self._token_to_id.get(unk, self._added_tokens_encoder.get(unk))
        if unk_id is None:
            raise ValueError(f"unknown token {token!r}, and unk_token {unk!r} is not in the vocabulary either")
        return unk_id

    def _convert_id_to_token(self, index: int) -> str:
        return self._id_to_token[index]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return " ".join(tokens)

    def base_tokens(self, token_id: int) -> list[str]:
        """The miditok base tokens an id stands for (one without BPE, one or more with it)."""
        return list(self._id_to_base[token_id])

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        name = (filename_prefix + "-" if filename_prefix else "") + MIDITOK_FILE
        path = Path(save_directory) / name
        self.miditok.save(path)
        return (str(path),)

    # ----- encoding ------------------------------------------------------------------------------
    def encode_score(self, x: Any) -> list[int]:
        """Token ids of one piece (no special tokens). Raises `MusicFileError` / `EmptyMusicError`."""
        source = _source_name(x)
        score = load_score(x, self.max_file_bytes)
        if score.note_num() == 0:
            raise EmptyMusicError(source, "no notes")
        if score.end() > self.max_quarter_notes * score.tpq:
            raise MusicFileError(source, f"too long ({score.end()} ticks at {score.tpq} per quarter note > "
                                         f"{self.max_quarter_notes} quarter notes)")
        try:
            seq = self.miditok.encode(score)
        except (RuntimeError, ValueError, IndexError, KeyError, ArithmeticError) as e:
            raise MusicFileError(source, f"miditok could not tokenize it ({type(e).__name__}: {e})") from e
        ids = list(seq.ids)
        if not any(self._note_counts[i] for i in ids):
            raise EmptyMusicError(source, "no notes left after preprocessing (all outside the tokenizer's range)")
        return ids

    def _to_ids(self, x: Any) -> Any:
        if x is None or not is_music_input(x):
            return x
        return self.encode_score(x)

    def _encode_plus(self, text: Any, text_pair: Any = None, **kwargs: Any):
        if isinstance(text, (list, tuple)) and text and is_music_input(text[0]):
            text = [self._to_ids(t) for t in text]
            if isinstance(text_pair, (list, tuple)):
                text_pair = [self._to_ids(t) for t in text_pair]
        else:
            text, text_pair = self._to_ids(text), self._to_ids(text_pair)
        return super()._encode_plus(text, text_pair, **kwargs)

    # ----- decoding ------------------------------------------------------------------------------
    def decode_midi(self, ids: Iterable[int] | Any, output_path: str | os.PathLike | None = None) -> symusic.Score:
        """Turn ids into a `symusic.Score` (written to `output_path` if given).

        Special ids, ids outside the vocabulary and ill-placed tokens are dropped; the valid rest decodes.
        """
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        ids = list(ids)
        if ids and isinstance(ids[0], (list, tuple)):
            raise ValueError("decode_midi takes one sequence; call it per row for a batch")
        ids = [int(i) for i in ids]
        special = set(self.all_special_ids)
        clean = [i for i in ids if 0 <= i < self.vocab_size and i not in special]
        score = self.miditok.decode(clean) if clean else symusic.Score(self.miditok.time_division)
        if output_path is not None:
            score.dump_midi(str(output_path))
        return score

    def grammar_errors(self, ids: Sequence[int]) -> float:
        """Share of tokens miditok's grammar check rejects (0.0 = every token well placed)."""
        special = set(self.all_special_ids)
        clean = [int(i) for i in ids if int(i) not in special]
        if not clean:
            return 0.0
        seq = miditok.TokSequence(ids=clean, are_ids_encoded=self.miditok.is_trained)
        self.miditok.decode_token_ids(seq)
        self.miditok.complete_sequence(seq)
        return float(self.miditok.tokens_errors(seq))

    # ----- BPE -----------------------------------------------------------------------------------
    def train_bpe(self, vocab_size: int, files: Sequence[str | os.PathLike], model: str = "BPE") -> None:
        """Learn BPE (or Unigram) merges over MIDI files with miditok; the vocabulary grows to `vocab_size`."""
        paths = [Path(f) for f in files]
        self.miditok.train(vocab_size=vocab_size, model=model, files_paths=paths)
        self._build_vocab()
        self._music_attributes = None
        self._update_total_vocab_size()

    # ----- per-id music attributes ---------------------------------------------------------------
    @property
    def _note_counts(self) -> list[int]:
        return self.music_attributes()["note_count"]

    def music_attributes(self) -> dict[str, list[int]]:
        """Per-id tables the model reads (computed once from the vocabulary, BPE ids from their base tokens).

        - `kind`: index into TOKEN_KINDS of the id's first base token;
        - `pitch`: MIDI pitch of the last Pitch in the id, -1 if none;
        - `program_set`: program in force after the id if it sets one (drums = 128), else -1;
        - `position_set`: position in the bar after the id if it sets one (a Bar sets 0), else -1;
        - `bar_count`: number of Bar tokens in the id; `note_count`: number of notes (Pitch/PitchDrum) in it.
        """
        cached = getattr(self, "_music_attributes", None)
        if cached is not None:
            return cached
        tables: dict[str, list[int]] = {k: [] for k in
                                        ("kind", "pitch", "program_set", "position_set", "bar_count", "note_count")}
        for base in self._id_to_base:
            kind = base[0].split("_")[0] if base else "other"  # a lone BPE word-start marker has no base token
            tables["kind"].append(TOKEN_KINDS.index(kind) if kind in TOKEN_KINDS else
                                        (0 if kind in ("PAD", "BOS", "EOS", "MASK") else TOKEN_KINDS.index("other")))
            pitch = program = position = -1
            bars = notes = 0
            for tok in base:
                kind, _, value = tok.partition("_")
                if kind == "Pitch":
                    pitch, notes = int(value), notes + 1
                elif kind == "PitchDrum":
                    notes += 1
                elif kind == "Program":
                    program = DRUM_PROGRAM if int(value) == -1 else int(value)
                elif kind == "Position":
                    position = int(value)
                elif kind == "Bar":
                    position, bars = 0, bars + 1
            for key, val in (("pitch", pitch), ("program_set", program), ("position_set", position),
                             ("bar_count", bars), ("note_count", notes)):
                tables[key].append(val)
        self._music_attributes = tables
        return tables

    def grammar_tables(self) -> dict[str, Any]:
        """What a grammar-constrained decoder needs, per id (computed here so nothing else parses token strings).

        - `first_kind` / `last_kind`: TOKEN_KINDS index of the id's first / last base token;
        - `first_position`: value of the id's first base token if it is a Position, else -1;
        - `grammar_position`: the bar position the id leaves, as the lowest Position allowed next
          (a Bar gives 0, Position_k gives k + 1), or -1 if it sets none;
        - `bar_positions`: positions per bar set by a TimeSig id (numerator x positions per beat), else -1;
        - `program`: program of a Program id (drums 128), else -1;
        - `next_kinds`: for each kind, the kinds miditok's grammar allows next (specials excluded);
        - `default_bar_positions`: positions per bar in 4/4, before any TimeSig.
        """
        per_beat = int(self.miditok.config.max_num_pos_per_beat)
        kind_index = {k: i for i, k in enumerate(TOKEN_KINDS)}

        def kind_of(tok: str) -> int:
            name = tok.split("_")[0]
            return kind_index.get(name, 0 if name in ("PAD", "BOS", "EOS", "MASK") else kind_index["other"])

        tables: dict[str, Any] = {"first_kind": [], "last_kind": [], "first_position": [], "bar_positions": [],
                                  "program": [], "grammar_position": []}
        for base in self._id_to_base:
            base = base or ["other"]  # a lone BPE word-start marker has no base token
            first, _, value = base[0].partition("_")
            tables["first_kind"].append(kind_of(base[0]))
            tables["last_kind"].append(kind_of(base[-1]))
            tables["first_position"].append(int(value) if first == "Position" else -1)
            tables["program"].append((DRUM_PROGRAM if int(value) == -1 else int(value)) if first == "Program" else -1)
            bar_positions = grammar_position = -1
            for tok in base:
                name, _, val = tok.partition("_")
                if name == "TimeSig":
                    bar_positions = int(val.split("/")[0]) * per_beat
                elif name == "Bar":
                    grammar_position = 0
                elif name == "Position":
                    grammar_position = int(val) + 1
            tables["bar_positions"].append(bar_positions)
            tables["grammar_position"].append(grammar_position)
        graph = self.miditok.tokens_types_graph
        tables["next_kinds"] = {
            kind_index[k]: sorted(kind_index[n] for n in nexts if n in kind_index and n != "special")
            for k, nexts in graph.items() if k in kind_index
        }
        tables["default_bar_positions"] = 4 * per_beat
        return tables

    def value_tables(self) -> dict[str, list[int]]:
        """For each kind with ordered values (Pitch, Velocity, Duration, Tempo, Position), its ids sorted by
        value: moving k steps in such a list transposes, changes loudness, tempo or timing by k bins.
        Token-level augmentation uses it; with BPE, learned ids have no single value, so it is refused."""
        if self.miditok.is_trained:
            raise ValueError("value_tables (token-level augmentation) needs a tokenizer without BPE")

        def number(kind: str, value: str) -> float:
            if kind == "Duration":  # beats.ticks.resolution
                beats, ticks, res = (int(v) for v in value.split("."))
                return beats + ticks / res
            return float(value)

        tables: dict[str, list[tuple[float, int]]] = {k: [] for k in ("Pitch", "Velocity", "Duration", "Tempo",
                                                                       "Position")}
        for i, base in enumerate(self._id_to_base):
            kind, _, value = base[0].partition("_")
            if kind in tables:
                tables[kind].append((number(kind, value), i))
        return {k: [i for _, i in sorted(v)] for k, v in tables.items()}

    @property
    def max_position_in_bar(self) -> int:
        return max(self.music_attributes()["position_set"]) + 1

    def __repr__(self) -> str:
        bpe = f", bpe={self.miditok.is_trained}"
        return f"{type(self).__name__}(tokenization={self.tokenization}, vocab_size={self.vocab_size}{bpe})"

    def to_json_summary(self) -> str:
        """One-line JSON description (for model cards and logs)."""
        cfg = self.miditok.config
        return json.dumps({
            "tokenization": self.tokenization, "vocab_size": self.vocab_size, "bpe": self.miditok.is_trained,
            "beat_res": {f"{a}-{b}": r for (a, b), r in cfg.beat_res.items()},
            "num_velocities": cfg.num_velocities, "use_programs": cfg.use_programs,
            "use_tempos": cfg.use_tempos, "use_time_signatures": cfg.use_time_signatures,
        })


__all__ = ["MusicTokenizer", "MusicFileError", "EmptyMusicError", "load_score", "split_abc_tunes", "TOKEN_KINDS"]
