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
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import miditok
import numpy as np
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
# Saved models store indices into it: new kinds are appended, never inserted.
TOKEN_KINDS = (
    "special", "Bar", "Position", "Pitch", "PitchDrum", "Velocity", "Duration",
    "Program", "Tempo", "TimeSig", "Rest", "other",
    "NoteOn", "NoteOff", "DrumOn", "DrumOff", "TimeShift",
    "InfillBar", "InfillStart", "InfillEnd", "Control",
)
KIND_INDEX = {k: i for i, k in enumerate(TOKEN_KINDS)}
# miditok's single-stream tokenizations whose tokens the table reads (BEAT writes most pitches as intervals, so no
# per-id table can give them; CPWord, Octuple and MuMIDI stack tokens; MMM and PerTok need their own settings)
TOKENIZATIONS = ("REMI", "TSD", "MIDILike", "Structured")
PITCHED_KINDS = ("Pitch", "NoteOn", "NoteOff")  # carry a MIDI pitch of a melodic instrument
DRUM_KINDS = ("PitchDrum", "DrumOn", "DrumOff")  # carry a drum pitch
NOTE_START_KINDS = ("Pitch", "PitchDrum", "NoteOn", "DrumOn")  # one note each
NOTE_OFF_KINDS = ("NoteOff", "DrumOff")
TIME_VALUE_KINDS = ("Duration", "TimeShift", "Rest")  # values "beats.steps.resolution"
# kinds with ordered values, each listed by value in `value_tables` (token-level augmentation moves along them)
VALUE_KINDS = ("Pitch", "NoteOn", "NoteOff", "Velocity", "Duration", "Tempo", "Position")
SPECIAL_TOKENS = {"pad_token": "PAD_None", "bos_token": "BOS_None", "eos_token": "EOS_None", "mask_token": "MASK_None"}
# Composition tokens (miditok special tokens after PAD BOS EOS MASK). Infilling: a placeholder per missing bar, the
# start of the missing bars (after the suffix), their end.
INFILL_KINDS = {"Bar": "InfillBar", "Start": "InfillStart", "End": "InfillEnd"}
COMPOSITION_KINDS = (*INFILL_KINDS.values(), "Control")
# Controls: a prefix after BOS, in this order. Key_<tonic><maj|min>, Density_<bin of notes per bar>,
# Polyphony_<mean notes sounding at an onset, 1..6+>, PitchLow_/PitchHigh_<MIDI octave (C4 = 60 -> 4), 0..9>,
# Timing_<score|performed> (onsets on a written grid, or played with expressive timing: see TIMING_OFF_GRID),
# Repetition_<bin of the share of repeated bars, 0..3> (see REPETITION_EDGES).
CONTROL_NAMES = ("key", "density", "polyphony", "pitch_range", "timing", "repetition")
CONTROL_TYPES = ("Key", "Density", "Polyphony", "PitchLow", "PitchHigh", "Timing", "Repetition")  # pitch_range: two
KEY_TONICS = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
KEY_MODES = ("maj", "min")  # a Key token's value: tonic pitch class + 12 * mode index
DENSITY_EDGES = (0, 2, 4, 6, 8, 12, 16, 24, 32)  # Density_k: notes per bar in [edge k, edge k+1), the last open
MAX_POLYPHONY = 6
OCTAVES = range(10)
# a Timing token's value: its index here. "performed" where more than TIMING_OFF_GRID of the note onsets fall off
# the grid of quarter beats (16ths in 4/4, 8ths in 2/2, 32nds in 6/8): written scores sit on it, played timing does
# not. Of the openings (512 tokens) of the 796 held-out pieces of the music21 corpus, 762 (96 %) measure "score"
# (the rest have 32nd notes or triplets); with the training's timing noise (position and duration jitter 1), 791
# measure "performed".
TIMING_STYLES = ("score", "performed")
TIMING_OFF_GRID = 0.25
# Repetition_k: the share of the non-empty bars whose notes equal an earlier bar's (`repeated_share`) in
# [edge k, edge k+1), the last up to 1: none, few, some, many. On the openings (512 tokens) of the 796 held-out
# pieces of the music21 corpus the share has mean 0.21 and median 0.18, and 263 repeat no bar (fiddle tunes 0.34 on
# average, folk songs 0.18, chorales 0.14, renaissance 0.00); these edges put 268, 148, 206 and 174 of them (34,
# 19, 26, 22 %) in the four bins (0, 0.1, 0.25, 0.5 would put 39, 17, 32, 12 %). With the training's augmentation
# (base_infill.yaml: timing jittered in half the augmented windows) the same openings bin 61, 13, 14 and 12 %.
REPETITION_EDGES = (0, 0.05, 0.2, 0.4)
COMPOSITION_TOKENS = (
    *(f"Infill_{name}" for name in INFILL_KINDS),
    *(f"Key_{tonic}{mode}" for mode in KEY_MODES for tonic in KEY_TONICS),
    *(f"Density_{k}" for k in range(len(DENSITY_EDGES))),
    *(f"Polyphony_{k}" for k in range(1, MAX_POLYPHONY + 1)),
    *(f"{side}_{o}" for side in ("PitchLow", "PitchHigh") for o in OCTAVES),
    *(f"Timing_{style}" for style in TIMING_STYLES),
    *(f"Repetition_{k}" for k in range(len(REPETITION_EDGES))),
)
# Krumhansl-Kessler key profiles (C major, C minor), correlated with a duration-weighted pitch-class histogram
KEY_PROFILES = np.array([[6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88],
                         [6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17]])
_KEY_VALUE = re.compile(r"^([A-Ga-g])([#b\-]?)\s*(major|minor|maj|min|m)?$", re.IGNORECASE)
_NATURALS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_ACCIDENTALS = {"": 0, "#": 1, "b": -1, "-": -1}
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
    """REMI+ settings: programs in one stream, tempos, a wide set of time signatures, and the infill and control
    tokens (`COMPOSITION_TOKENS`) as special tokens."""
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
        special_tokens=["PAD", "BOS", "EOS", "MASK", *COMPOSITION_TOKENS],
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


def _carry_forward(values: np.ndarray, default: float) -> np.ndarray:
    """For each position, the last value other than -1 at or before it (else `default`)."""
    last = np.maximum.accumulate(np.where(values != -1, np.arange(len(values)), -1)) if len(values) else values
    return np.where(last >= 0, values[np.maximum(last, 0)], default)


def repeated_share(bars: Iterable[Sequence[Any]]) -> float | None:
    """Share of the non-empty bars that repeat an earlier one: a bar (a sequence of its notes, sorted, in any
    consistent form) counts as repeated when it equals an earlier bar exactly. Empty bars count neither way; None
    without a non-empty bar. The one rule behind the repetition control (`measure_controls`) and the evaluation's
    repeated-bar metric (`music_hf.evaluation.repeated_bar_share`)."""
    seen: set[tuple] = set()
    repeated = total = 0
    for bar in bars:
        bar = tuple(bar)
        if not bar:
            continue
        total += 1
        repeated += bar in seen
        seen.add(bar)
    return repeated / total if total else None


def _estimate_key(histogram: np.ndarray) -> str | None:
    """The key ("F# minor") whose rotated Krumhansl-Kessler profile correlates best with a pitch-class histogram."""
    profiles = np.stack([np.roll(KEY_PROFILES[mode], tonic) for mode in range(2) for tonic in range(12)])
    profiles = profiles - profiles.mean(1, keepdims=True)
    centred = histogram - histogram.mean()
    if not np.any(centred):
        return None
    best = int(np.argmax(profiles @ centred / np.linalg.norm(profiles, axis=1)))
    return f"{KEY_TONICS[best % 12]} {'major' if best < 12 else 'minor'}"


def _number(name: str, value: Any, low: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value) or value < low:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return float(value)


def _control_values(name: str, value: Any) -> list[tuple[str, int]]:
    """(control token type, token value) pairs for one user control value; a bad value raises ValueError."""
    if name == "key":
        match = _KEY_VALUE.match(value.strip()) if isinstance(value, str) else None
        if match is None:
            raise ValueError(f"key must be a tonic (C, C#, Db, ... B) with an optional mode (major/maj, minor/min/m; "
                             f"a lower-case tonic alone is minor), like 'D minor', 'Eb major', 'F#m'; got {value!r}")
        letter, accidental, mode = match.groups()
        pitch_class = (_NATURALS[letter.upper()] + _ACCIDENTALS[accidental.lower()]) % 12
        minor = letter.islower() if mode is None else mode.lower() in ("minor", "min", "m")
        return [("Key", pitch_class + 12 * minor)]
    if name == "density":
        density = _number(name, value, 0, "a number of notes per bar >= 0")
        return [("Density", int(np.searchsorted(DENSITY_EDGES, density, side="right")) - 1)]
    if name == "polyphony":
        polyphony = _number(name, value, 1, "a mean number of notes sounding at each onset >= 1")
        return [("Polyphony", int(min(MAX_POLYPHONY, np.floor(polyphony + 0.5))))]
    if name == "timing":
        if value not in TIMING_STYLES:
            raise ValueError(f"timing must be one of {', '.join(map(repr, TIMING_STYLES))} (notes on the written "
                             f"grid, or played with expressive timing); got {value!r}")
        return [("Timing", TIMING_STYLES.index(value))]
    if name == "repetition":
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                or not 0 <= value <= 1:  # (NaN fails too)
            raise ValueError(f"repetition must be a share of repeated bars, a number from 0 to 1 (bins from "
                             f"{', '.join(f'{e:g}' for e in REPETITION_EDGES)}), got {value!r}")
        return [("Repetition", int(np.searchsorted(REPETITION_EDGES, float(value), side="right")) - 1)]
    pitches = tuple(value) if isinstance(value, (tuple, list)) else ()
    if len(pitches) != 2 or not all(isinstance(p, (int, np.integer)) and not isinstance(p, bool) and 0 <= p <= 127
                                    for p in pitches) or pitches[0] > pitches[1]:
        raise ValueError(f"pitch_range must be (low, high) MIDI pitches, integers 0-127 with low <= high; "
                         f"got {value!r}")
    return [(side, min(max(int(p) // 12 - 1, OCTAVES[0]), OCTAVES[-1]))
            for side, p in zip(("PitchLow", "PitchHigh"), pitches)]


@dataclass(frozen=True, eq=False)
class TokenTable:
    """What each id of a vocabulary means musically: numpy arrays indexed by id, built once per vocabulary.

    A BPE id takes its facts from its base tokens; an id without any (a lone BPE word-start marker) is "other",
    and an added token "special". Values are -1 (NaN for `value`) where an id has none. An Infill_Bar placeholder
    counts as a bar (it sets position 0) in a scheme with bars; the other infill tokens and the controls carry no
    music.
    """

    kind: np.ndarray  # TOKEN_KINDS index of the id's first base token
    last_kind: np.ndarray  # ... of its last base token
    length: np.ndarray  # number of base tokens (1 without BPE)
    value: np.ndarray  # float value of the first base token: pitch, velocity, program (drums 128), position,
    #                    tempo (bpm), time signature (quarter notes per bar), Duration/TimeShift/Rest (beats)
    numerator: np.ndarray  # time signature set by the id (its last TimeSig)
    denominator: np.ndarray
    pitch: np.ndarray  # MIDI pitch of the last Pitch/NoteOn/NoteOff in the id
    note_count: np.ndarray  # notes started in the id (Pitch, PitchDrum, NoteOn, DrumOn)
    bar_count: np.ndarray  # Bar tokens in the id
    program_set: np.ndarray  # program in force after the id if it sets one (drums 128)
    position_set: np.ndarray  # position in the bar after the id if it sets one (a Bar sets 0)
    first_position: np.ndarray  # first / last Position of the id in the bar it starts in (before any Bar)
    last_position: np.ndarray
    grammar_position: np.ndarray  # lowest Position allowed after the id (a Bar gives 0, Position_k gives k + 1)
    bar_positions: np.ndarray  # positions per bar in the time signature the id sets
    control: np.ndarray  # CONTROL_TYPES index of a control token (its value in `value`: key = pitch class + 12 * mode)
    # NoteOn/DrumOn (+1) and NoteOff/DrumOff (-1) events of each id, (vocab, max events per id): the sign, the
    # pitch, the program set earlier in the id (-1: the one in force before it), and for an off the notes of that
    # program and pitch the id itself opened before it (opened minus closed)
    event_sign: np.ndarray
    event_pitch: np.ndarray
    event_program: np.ndarray
    event_credit: np.ndarray

    def __len__(self) -> int:
        return len(self.kind)


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
            tokenization: the miditok tokenization class, one of TOKENIZATIONS (REMI by default).
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
        if tokenization not in TOKENIZATIONS:
            raise ValueError(f"unknown or unsupported miditok tokenization {tokenization!r}; MusicTokenizer "
                             f"supports {', '.join(TOKENIZATIONS)}")
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
        self._token_table = None  # the vocabulary changed: the per-id table is rebuilt on next use
        if mt.is_trained:
            id_to_bytes = {i: b for b, i in mt.vocab_model.items()}
            self._id_to_base = [list(mt._vocab_learned_bytes_to_tokens[id_to_bytes[i]]) for i in range(len(mt))]
            self._id_to_base_ids = [[mt.vocab[t] for t in base] for base in self._id_to_base]
            # BPE split per bar/beat (miditok's default) learns word-start ids, "▁" + bytes, with the same base
            # tokens as the plain id, and a lone "▁" with none: the marker keeps their strings distinct.
            marker = getattr(mt._model.pre_tokenizer, "replacement", None)
            prefixes = [marker if marker and id_to_bytes[i].startswith(marker) else "" for i in range(len(mt))]
        else:
            inv = {i: t for t, i in mt.vocab.items()}
            self._id_to_base = [[inv[i]] for i in range(len(inv))]
            self._id_to_base_ids = [[i] for i in range(len(inv))]
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

    # ----- special tokens around a sequence ---------------------------------------------------------
    def _bos_eos_ids(self) -> tuple[int, int] | None:
        """(BOS id, EOS id) under the "bos_eos" pattern with both tokens set, else None. Kept while the BOS and EOS
        tokens and the vocabulary stay the same objects: transformers resolves each id through `__getattr__` and
        `convert_tokens_to_ids` at each use, six times for one encoded piece (about 20 µs of the tokenizer's
        overhead over miditok)."""
        if self.special_tokens_pattern != "bos_eos":
            return None
        tokens = self.__dict__.get("_special_tokens_map", {})
        bos, eos = tokens.get("bos_token"), tokens.get("eos_token")
        kept = self.__dict__.get("_bos_eos_kept")
        if kept is None or kept[0] is not bos or kept[1] is not eos or kept[2] is not self._token_to_id:
            ids = None if bos is None or eos is None else (self.bos_token_id, self.eos_token_id)
            kept = self.__dict__["_bos_eos_kept"] = (bos, eos, self._token_to_id, ids)
        return kept[3]

    def build_inputs_with_special_tokens(self, token_ids_0: list[int],
                                         token_ids_1: list[int] | None = None) -> list[int]:
        """transformers' "bos_eos" layout, [BOS] seq0 [EOS] (pair: [BOS] seq0 [EOS] seq1 [EOS]), with the ids kept
        (`_bos_eos_ids`); other patterns, or a BOS or EOS unset, are transformers' own."""
        edges = self._bos_eos_ids()
        if edges is None:
            return super().build_inputs_with_special_tokens(token_ids_0, token_ids_1)
        bos, eos = edges
        if token_ids_1 is None:
            return [bos, *token_ids_0, eos]
        return [bos, *token_ids_0, eos, *token_ids_1, eos]

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
        ids = seq.ids if isinstance(seq.ids, list) else list(seq.ids)
        if self._note_ids().isdisjoint(ids):  # (stops at the first note: a piece's first few tokens)
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
    def _music_ids(self, ids: Iterable[int]) -> list[int]:
        """`ids` less special ids (transformers' and the infill and control tokens) and ids outside the vocabulary."""
        dropped = np.isin(self.token_table.kind, [KIND_INDEX[k] for k in COMPOSITION_KINDS])
        dropped[list(self.all_special_ids)] = True
        return [int(i) for i in ids if 0 <= int(i) < self.vocab_size and not dropped[int(i)]]

    def decode_midi(self, ids: Iterable[int] | Any, output_path: str | os.PathLike | None = None) -> symusic.Score:
        """Turn ids into a `symusic.Score` (written to `output_path` if given).

        Special ids (infill and control tokens included), ids outside the vocabulary and ill-placed tokens are
        dropped; the valid rest decodes.
        """
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        ids = list(ids)
        if ids and isinstance(ids[0], (list, tuple)):
            raise ValueError("decode_midi takes one sequence; call it per row for a batch")
        clean = self._music_ids(ids)
        score = self.miditok.decode(clean) if clean else symusic.Score(self.miditok.time_division)
        if output_path is not None:
            score.dump_midi(str(output_path))
        return score

    def grammar_errors(self, ids: Sequence[int]) -> float:
        """Share of tokens miditok's grammar check rejects (0.0 = every token well placed)."""
        clean = self._music_ids(ids)
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
        self._update_total_vocab_size()

    # ----- the per-id table and what derives from it -------------------------------------------------
    @property
    def token_table(self) -> TokenTable:
        """The `TokenTable` of the whole vocabulary (added tokens included); built once, rebuilt when it changes."""
        table = self._token_table
        if table is None or len(table) != len(self):
            table = self._token_table = self._make_token_table()
        return table

    def _note_ids(self) -> frozenset[int]:
        """The ids that start a note (`TokenTable.note_count` > 0), kept with the table they come from."""
        table = self.token_table
        kept = self.__dict__.get("_note_id_set")
        if kept is None or kept[0] is not table:
            kept = self.__dict__["_note_id_set"] = (table, frozenset(np.flatnonzero(table.note_count).tolist()))
        return kept[1]

    def _make_token_table(self) -> TokenTable:
        """Parse each base token string once (kind and value), then combine the base tokens of each id."""
        mt = self.miditok
        tpb = mt.time_division
        special = set(mt.special_tokens)
        base_kind = [KIND_INDEX["other"]] * len(mt.vocab)
        base_value = [float("nan")] * len(mt.vocab)
        base_signature = [(-1, -1)] * len(mt.vocab)
        base_control = [-1] * len(mt.vocab)
        for token, i in mt.vocab.items():
            name, _, raw = token.partition("_")
            if token in special:
                base_kind[i] = KIND_INDEX["special"]
                if name == "Infill" and raw in INFILL_KINDS:
                    base_kind[i] = KIND_INDEX[INFILL_KINDS[raw]]
                elif name in CONTROL_TYPES and token in COMPOSITION_TOKENS:
                    base_kind[i], base_control[i] = KIND_INDEX["Control"], CONTROL_TYPES.index(name)
                    base_value[i] = (KEY_TONICS.index(raw[:-3]) + 12 * KEY_MODES.index(raw[-3:]) if name == "Key"
                                     else TIMING_STYLES.index(raw) if name == "Timing" else int(raw))
                continue
            base_kind[i] = KIND_INDEX.get(name, KIND_INDEX["other"])
            if name in PITCHED_KINDS + DRUM_KINDS or name in ("Velocity", "Position"):
                base_value[i] = int(raw)
            elif name == "Program":
                base_value[i] = DRUM_PROGRAM if int(raw) == -1 else int(raw)
            elif name == "Tempo":
                base_value[i] = float(raw)
            elif name == "TimeSig":
                num, den = (int(v) for v in raw.split("/"))
                base_signature[i], base_value[i] = (num, den), 4 * num / den
            elif name in TIME_VALUE_KINDS:
                base_value[i] = mt._time_token_to_ticks(raw, tpb) / tpb

        k = KIND_INDEX
        bar_kinds = {k["Bar"], k["InfillBar"]} if k["Bar"] in base_kind else set()  # placeholders where bars exist
        pitched = {k[n] for n in PITCHED_KINDS}
        starts = {k[n] for n in NOTE_START_KINDS}
        ons, offs = {k["NoteOn"], k["DrumOn"]}, {k[n] for n in NOTE_OFF_KINDS}
        per_beat = int(mt.config.max_num_pos_per_beat)
        size = len(self)  # ids past the base vocabulary are added tokens: "special", no music
        cols = {name: np.full(size, -1, dtype=np.int64) for name in (
            "numerator", "denominator", "pitch", "program_set", "position_set", "first_position",
            "last_position", "grammar_position", "bar_positions", "control")}
        kind, cols["last_kind"] = (np.full(size, k["special"], dtype=np.int64) for _ in range(2))
        length, note_count, bar_count = (np.zeros(size, dtype=np.int64) for _ in range(3))
        value = np.full(size, np.nan)
        events: list[list[tuple[int, int, int, int]]] = []
        for i, base in enumerate(self._id_to_base_ids):
            id_events: list[tuple[int, int, int, int]] = []
            events.append(id_events)
            length[i] = len(base)
            if not base:  # a lone BPE word-start marker
                kind[i] = cols["last_kind"][i] = k["other"]
                continue
            kind[i], cols["last_kind"][i], value[i] = base_kind[base[0]], base_kind[base[-1]], base_value[base[0]]
            cols["control"][i] = base_control[base[0]]
            program, opened = -1, {}
            for b in base:
                bk, v = base_kind[b], base_value[b]
                if bk in pitched:
                    cols["pitch"][i] = v
                note_count[i] += bk in starts
                if bk in bar_kinds:
                    bar_count[i] += 1
                    cols["position_set"][i] = cols["grammar_position"][i] = 0
                elif bk == k["Position"]:
                    cols["position_set"][i], cols["grammar_position"][i] = v, v + 1
                    if not bar_count[i]:
                        cols["last_position"][i] = v
                        if cols["first_position"][i] < 0:
                            cols["first_position"][i] = v
                elif bk == k["Program"]:
                    cols["program_set"][i] = program = v
                elif bk == k["TimeSig"]:
                    cols["numerator"][i], cols["denominator"][i] = base_signature[b]
                    cols["bar_positions"][i] = base_signature[b][0] * per_beat
                elif bk in ons or bk in offs:
                    key = (program, int(v))
                    sign = 1 if bk in ons else -1
                    id_events.append((sign, int(v), program, opened.get(key, 0) if sign < 0 else 0))
                    opened[key] = opened.get(key, 0) + sign
        width = max((len(e) for e in events), default=0)
        ev = np.zeros((size, width, 4), dtype=np.int64)
        ev[:, :, 1:3] = -1
        for i, id_events in enumerate(events):
            if id_events:
                ev[i, : len(id_events)] = id_events
        return TokenTable(kind=kind, length=length, value=value, note_count=note_count, bar_count=bar_count,
                          event_sign=ev[..., 0], event_pitch=ev[..., 1], event_program=ev[..., 2],
                          event_credit=ev[..., 3], **cols)

    def kind_ids(self, kind: str) -> np.ndarray:
        """Ids that are a single `kind` token (no BPE merge), ascending."""
        t = self.token_table
        return np.flatnonzero((t.kind == KIND_INDEX[kind]) & (t.length == 1))

    def token_id(self, kind: str, value: float | None = None) -> int:
        """Id of the single `kind` token with this value (`token_id("Bar")`, `token_id("Position", 0)`)."""
        ids = self.kind_ids(kind)
        if value is not None:
            ids = ids[self.token_table.value[ids] == value]
        if len(ids) == 0:
            raise KeyError(f"no {kind} token{'' if value is None else f' of value {value}'} in this "
                           f"{self.tokenization} vocabulary")
        return int(ids[0])

    def nearest_id(self, kind: str, value: float) -> int:
        """Id of the single `kind` token (Tempo, Velocity, Duration in beats...) whose value is nearest `value`."""
        ids = self.kind_ids(kind)
        if len(ids) == 0:
            raise ValueError(f"this {self.tokenization} vocabulary has no {kind} tokens")
        return int(ids[np.argmin(np.abs(self.token_table.value[ids] - value))])

    def time_signatures(self) -> dict[str, int]:
        """The vocabulary's time signatures ("3/4" -> id of its TimeSig token), by denominator, then numerator."""
        t = self.token_table
        ids = sorted(self.kind_ids("TimeSig"), key=lambda i: (t.denominator[i], t.numerator[i]))
        return {f"{t.numerator[i]}/{t.denominator[i]}": int(i) for i in ids}

    def opening_ids(self, time_signature: str | None = None, tempo: float | None = None) -> list[int]:
        """Ids that open a piece in `time_signature` ("3/4") and the tempo bin nearest `tempo`, in this scheme's
        order (REMI: Bar, TimeSig, Position 0, Tempo; without bars: TimeSig, Tempo). Nothing when both are None."""
        if time_signature is None and tempo is None:
            return []
        ids = [self.token_id("Bar")] if len(self.kind_ids("Bar")) else []
        if time_signature is not None:
            signatures = self.time_signatures()
            if time_signature not in signatures:
                raise ValueError(f"time signature {time_signature} is not in this tokenizer's vocabulary")
            ids.append(signatures[time_signature])
        if tempo is not None:
            if len(self.kind_ids("Position")):
                ids.append(self.token_id("Position", 0))
            ids.append(self.nearest_id("Tempo", tempo))
        return ids

    def closing_ids(self, ids: Sequence[int]) -> list[int]:
        """Ids that end every note still sounding after `ids` (a NoteOn without its NoteOff, MIDILike), one
        shortest TimeShift later: miditok drops such notes and counts them as errors. Empty for other schemes."""
        t = self.token_table
        program, sounding = 0, {}  # miditok starts at program 0
        for i in ids:
            for sign, pitch, own_program in zip(t.event_sign[i], t.event_pitch[i], t.event_program[i]):
                if sign:
                    key = (int(own_program) if own_program >= 0 else program, int(pitch))
                    sounding[key] = sounding.get(key, 0) + int(sign)
            program = int(t.program_set[i]) if t.program_set[i] >= 0 else program
        sounding = {key: n for key, n in sorted(sounding.items()) if n > 0}
        if not sounding:
            return []
        shifts = self.kind_ids("TimeShift")
        shifts = shifts[t.value[shifts] > 0]
        out = [int(shifts[np.argmin(t.value[shifts])])]
        for (prog, pitch), n in sounding.items():
            off = self.token_id("DrumOff" if prog == DRUM_PROGRAM else "NoteOff", pitch)
            out += [self.token_id("Program", prog), off] * n
        return out

    # ----- composition: infilling and controls ------------------------------------------------------
    def _composition_id(self, kind: str, control: str | None = None, value: int | None = None) -> int:
        t = self.token_table
        ids = self.kind_ids(kind)
        if control is not None:
            ids = ids[(t.control[ids] == CONTROL_TYPES.index(control)) & (t.value[ids] == value)]
        if len(ids) == 0:
            raise ValueError(f"this tokenizer has no {control or kind} token{'' if value is None else f' {value}'}: "
                             "it was built without the composition tokens (the default miditok_config has them)")
        return int(ids[0])

    @property
    def infill_ids(self) -> dict[str, int]:
        """Ids of the infilling tokens: {"bar": Infill_Bar, "start": Infill_Start, "end": Infill_End}."""
        if not len(self.kind_ids("Bar")):
            raise ValueError(f"infilling works over bars, and this {self.tokenization} vocabulary has no Bar tokens")
        return {name.lower(): self._composition_id(kind) for name, kind in INFILL_KINDS.items()}

    @property
    def control_names(self) -> tuple[str, ...]:
        """The controls (of CONTROL_NAMES) this vocabulary has tokens for: a tokenizer saved before a control existed
        lacks it (`with_composition_tokens` adds it)."""
        t = self.token_table
        types = set(t.control[t.kind == KIND_INDEX["Control"]].tolist())
        first_type = {"pitch_range": "PitchLow"}
        return tuple(n for n in CONTROL_NAMES if CONTROL_TYPES.index(first_type.get(n, n.capitalize())) in types)

    def with_composition_tokens(self) -> "MusicTokenizer":
        """This tokenizer with every composition token this version of music_hf defines (`COMPOSITION_TOKENS`):
        itself where it has them all, else a new tokenizer of the same settings whose miditok vocabulary adds the
        missing ones to its special tokens (a tokenizer saved before a control existed). Special tokens come first
        in a miditok vocabulary, so the music tokens' ids move: carry a model's weights over by token with
        `training.remap_vocabulary`. Not for a vocabulary with learned BPE or added tokens (their ids cannot be
        rebuilt from the settings): a ValueError."""
        missing = [token for token in COMPOSITION_TOKENS if token not in self.miditok.vocab]
        if not missing:
            return self
        if self.miditok.is_trained or len(self) != len(self.miditok.vocab):
            raise ValueError(f"cannot add the composition tokens {missing} to a vocabulary with "
                             f"{'learned BPE' if self.miditok.is_trained else 'added tokens'}: train a tokenizer "
                             "with the default miditok_config instead")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / MIDITOK_FILE
            self.miditok.save(path)
            saved = json.loads(path.read_text())
            saved["config"]["special_tokens"] = [*saved["config"]["special_tokens"], *missing]
            path.write_text(json.dumps(saved))
            return type(self)(vocab_file=path, tokenization=self.tokenization, miditok_config=self.miditok_config,
                              max_file_bytes=self.max_file_bytes, max_quarter_notes=self.max_quarter_notes)

    def control_ids(self, controls: Mapping[str, Any]) -> list[int]:
        """Control-token ids for user values, in CONTROL_NAMES order (absent or None: not set).

        key: "D minor", "Dmin", "Dm", "d" (lower case: minor), "Eb major", "F#"...; density: notes per bar >= 0;
        polyphony: mean notes sounding at an onset >= 1 (6 or more: 6); pitch_range: (low, high) MIDI pitches;
        timing: "score" (onsets on the written grid) or "performed" (expressive timing); repetition: the share of
        the non-empty bars that repeat an earlier bar, 0 to 1 (its REPETITION_EDGES bin).
        """
        if not isinstance(controls, Mapping):
            raise TypeError(f"controls must be a mapping of {', '.join(CONTROL_NAMES)}, not {type(controls).__name__}")
        for name in controls:
            if name not in CONTROL_NAMES:
                hint = " (the tempo is the opening Tempo token: opening_ids(tempo=...))" if name == "tempo" else ""
                raise ValueError(f"unknown control {name!r}; accepted: {', '.join(CONTROL_NAMES)}{hint}")
        return [self._composition_id("Control", control, value) for name in CONTROL_NAMES
                if controls.get(name) is not None for control, value in _control_values(name, controls[name])]

    def measure_controls(self, ids: Iterable[int] | Any) -> dict[str, Any]:
        """The controls a token sequence (in playing order) has: key ("D minor", Krumhansl-Kessler profiles against
        the duration-weighted pitch-class histogram), density (notes per bar), polyphony (mean notes sounding at
        each onset, held notes included), pitch_range (lowest, highest pitch), timing ("performed" where more than
        TIMING_OFF_GRID of the onsets are off the grid of quarter beats, else "score"), repetition (the share of the
        non-empty bars whose notes equal an earlier bar's, `repeated_share`: bars cut at Bar tokens, each bar's
        notes a sorted tuple of (onset in the bar, pitch (drums 128 + key), duration), in quarter notes, all
        programs pooled, a note without its Duration left out) and tempo (bpm of the first Tempo); None where there
        is nothing to measure. REMI without BPE."""
        if self.tokenization != "REMI" or self.miditok.is_trained:
            raise ValueError(f"measure_controls needs a REMI tokenizer without BPE, not {self.tokenization}"
                             f"{' with BPE' if self.miditok.is_trained else ''}")
        t = self.token_table
        ids = np.asarray(ids.tolist() if hasattr(ids, "tolist") else list(ids), dtype=np.int64).reshape(-1)
        ids = ids[(ids >= 0) & (ids < len(t))]
        kind = t.kind[ids]
        quarters_per_beat = 4 / _carry_forward(t.denominator[ids], 4)  # positions and durations count beats
        bar_length = _carry_forward(t.numerator[ids], 4) * quarters_per_beat
        bar = np.cumsum(t.bar_count[ids])
        bars = int(bar[-1]) if len(bar) else 0
        last_of_bar = np.searchsorted(bar, np.arange(1, bars + 1), side="right") - 1  # its time signature counts
        bar_start = np.concatenate([[0.0, 0.0], np.cumsum(bar_length[last_of_bar])[:-1]])[: bars + 1]
        per_beat = int(self.miditok.config.max_num_pos_per_beat)
        time = bar_start[bar] + _carry_forward(t.position_set[ids], 0) / per_beat * quarters_per_beat
        notes = np.flatnonzero(np.isin(kind, [KIND_INDEX[k] for k in NOTE_START_KINDS]))
        durations = np.flatnonzero(kind == KIND_INDEX["Duration"])
        nxt = np.searchsorted(durations, notes)  # a note's Duration is the first one after it, before the next note
        dur_at = durations[np.minimum(nxt, len(durations) - 1)] if len(durations) else notes
        has = (nxt < len(durations)) & (dur_at < np.append(notes[1:], len(ids)))
        duration = np.where(has, t.value[ids[dur_at]] * quarters_per_beat[dur_at], 0.0)
        tempos = ids[kind == KIND_INDEX["Tempo"]]
        out = {"key": None, "density": float(t.note_count[ids].sum() / max(bars, 1)), "polyphony": None,
               "pitch_range": None, "timing": None, "repetition": None,
               "tempo": float(t.value[tempos[0]]) if len(tempos) else None}
        if len(notes):
            onset, end = time[notes], time[notes] + duration
            position = _carry_forward(t.position_set[ids], 0)[notes]  # in the bar (a Bar sets 0)
            off_grid = position % max(1, per_beat // 4) != 0  # quarter beats
            out["timing"] = TIMING_STYLES[int(off_grid.mean() > TIMING_OFF_GRID)]
            key = t.value[ids[notes]] + DRUM_PROGRAM * (kind[notes] == KIND_INDEX["PitchDrum"])
            in_bar = position / per_beat * quarters_per_beat[notes]
            bars_notes: dict[int, list[tuple[float, int, float]]] = {}
            whole = zip(bar[notes][has].tolist(), in_bar[has].tolist(), key[has].astype(np.int64).tolist(),
                        duration[has].tolist())  # a note cut before its Duration decodes to nothing: left out
            for b, *note in whole:
                bars_notes.setdefault(b, []).append(tuple(note))
            out["repetition"] = repeated_share(sorted(n) for _, n in sorted(bars_notes.items()))
            end = np.where(duration > 0, end, np.nextafter(onset, np.inf))  # a note sounds at its own onset
            starts = np.unique(onset)
            sounding = np.searchsorted(np.sort(onset), starts, "right") - np.searchsorted(np.sort(end), starts, "right")
            out["polyphony"] = float(sounding.mean())
        pitched = kind[notes] == KIND_INDEX["Pitch"]
        if pitched.any():
            pitch = t.pitch[ids[notes[pitched]]]
            out["pitch_range"] = (int(pitch.min()), int(pitch.max()))
            out["key"] = _estimate_key(np.bincount(pitch % 12, weights=duration[pitched], minlength=12))
        return out

    def music_attributes(self) -> dict[str, list[int]]:
        """The per-id lists the model reads (`MusicConfig.from_tokenizer` stores them): `kind`, `pitch`,
        `program_set`, `position_set`, `bar_count`, `note_count`, as described in `TokenTable`, and `infill`
        (0 none, 1 Infill_Bar, 2 Infill_Start, 3 Infill_End)."""
        t = self.token_table
        infill = np.zeros(len(t), dtype=np.int64)
        for n, kind in enumerate(INFILL_KINDS.values(), 1):
            infill[t.kind == KIND_INDEX[kind]] = n
        return {**{name: getattr(t, name).tolist()
                   for name in ("kind", "pitch", "program_set", "position_set", "bar_count", "note_count")},
                "infill": infill.tolist()}

    def grammar_tables(self) -> dict[str, Any]:
        """What a grammar-constrained decoder needs: per-id arrays of `token_table` (`first_kind` (= kind),
        `last_kind`, `first_position`, `last_position`, `grammar_position`, `bar_positions`, `program`
        (= program_set), `event_*`), and

        - `next_kinds`: for each kind, the kinds miditok's grammar allows next (specials excluded);
        - `start_kinds`: kinds a piece starts with: a Bar where the scheme has bars, else what may follow a
          TimeShift;
        - `open_kinds`: kinds after which a note is unfinished (Program, a note start, and Velocity where a
          Duration follows it);
        - `default_bar_positions`: positions per bar in 4/4, before any TimeSig.
        """
        t = self.token_table
        graph = self.miditok.tokens_types_graph
        next_kinds = {KIND_INDEX[kind]: sorted(KIND_INDEX[n] for n in nexts if n in KIND_INDEX and n != "special")
                      for kind, nexts in graph.items() if kind in KIND_INDEX}
        first = "Bar" if "Bar" in graph else "TimeShift"
        start_kinds = [KIND_INDEX["Bar"]] if first == "Bar" else next_kinds.get(KIND_INDEX[first], [])
        open_kinds = ["Program", *NOTE_START_KINDS]
        if "Duration" in graph.get("Velocity", ()):
            open_kinds.append("Velocity")
        return {"first_kind": t.kind, "last_kind": t.last_kind, "first_position": t.first_position,
                "last_position": t.last_position, "grammar_position": t.grammar_position,
                "bar_positions": t.bar_positions,
                "program": t.program_set, "event_sign": t.event_sign, "event_pitch": t.event_pitch,
                "event_program": t.event_program, "event_credit": t.event_credit, "next_kinds": next_kinds,
                "start_kinds": start_kinds, "open_kinds": [KIND_INDEX[k] for k in open_kinds],
                "default_bar_positions": 4 * int(self.miditok.config.max_num_pos_per_beat)}

    def value_tables(self) -> dict[str, np.ndarray]:
        """For each kind with ordered values (VALUE_KINDS: Pitch, NoteOn, NoteOff, Velocity, Duration, Tempo,
        Position), its ids sorted by value: moving k steps in such a list transposes, changes loudness, tempo or
        timing by k bins. Token-level augmentation uses it; with BPE, learned ids have no single value, so it is
        refused."""
        if self.miditok.is_trained:
            raise ValueError("value_tables (token-level augmentation) needs a tokenizer without BPE")
        values = self.token_table.value
        return {kind: ids[np.argsort(values[ids], kind="stable")]
                for kind in VALUE_KINDS for ids in [self.kind_ids(kind)]}

    @property
    def max_position_in_bar(self) -> int:
        return int(self.token_table.position_set.max()) + 1

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


__all__ = ["MusicTokenizer", "TokenTable", "TOKENIZATIONS", "MusicFileError", "EmptyMusicError", "load_score", "split_abc_tunes",
           "TOKEN_KINDS", "CONTROL_NAMES", "TIMING_STYLES", "REPETITION_EDGES", "repeated_share"]
