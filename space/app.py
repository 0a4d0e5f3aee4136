#!/usr/bin/env python
"""music-hf Studio: generate, continue, edit and compare symbolic music in the browser (a Gradio app).

    python space/app.py                      # the model that ships in the repository (models/music-hf-base)
    MODEL_ID=org/name python space/app.py    # a model on the Hub, or MODEL_ID=path/to/folder

The same file is the `app_file` of the Hugging Face Space in this folder. Everything a visitor can do is a
plain method of `Studio` (tests call them directly): generate, continue, regenerate some bars (`infill_piece`),
add a part (`accompany_piece`), undo, find similar pieces, with the controls (key, density, polyphony, pitch
range) and classifier-free guidance. `build_demo` lays out the page and wires events, and runs the model in a
thread so that the piano rolls draw while tokens come in and Stop keeps what was made.
Settings come from the environment: MODEL_ID, ADAPTER (a LoRA adapter folder or Hub repo fine-tuned from
MODEL_ID), CORPUS_DIR, MAX_NEW_TOKENS, GENERATION_TIMEOUT_S, MAX_UPLOAD_MB, QUEUE_SIZE, MUSIC_HF_SOUNDFONT, and
Gradio's own (GRADIO_SERVER_PORT, GRADIO_SERVER_NAME).
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import logging
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
if (REPO_ROOT / "music_hf" / "__init__.py").is_file() and str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # a checkout without `pip install -e .`

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList  # noqa: E402

import music_hf  # noqa: E402,F401  (registers the Auto classes)
from music_hf import MusicFileError  # noqa: E402
from music_hf.configuration_music import UNKNOWN_GENRE  # noqa: E402
from music_hf.corpus import MANIFEST_NAME, default_cache_dir  # noqa: E402
from music_hf.hub import SHIPPED_MODEL  # noqa: E402
from music_hf.tokenization_music import (CONTROL_NAMES, DENSITY_EDGES, KEY_MODES, KEY_TONICS, KIND_INDEX,  # noqa: E402
                                         MIDI_SUFFIXES, REPETITION_EDGES)
from music_hf.composition import accompany_piece, check_composition_setup, infill_piece  # noqa: E402
from music_hf.generation import cpu_threads_for, cut_bars, finish_sequence, generate_music, prompt_ids  # noqa: E402
from music_hf.text_prompt import settings_from_text  # noqa: E402
from music_hf.fast_inference import default_backend  # noqa: E402  (ONNX Runtime decoding on the CPU when installed)
from music_hf.prompt_mapping import LEARNED_SHARE, learned_programs, map_prompt, model_knowledge  # noqa: E402,F401
from music_hf.render import (GM_PROGRAM_NAMES, audio_available, bar_end_tick, bar_starts,  # noqa: E402
                             describe_instruments, piano_roll, pitch_name, program_name, render_audio)

logger = logging.getLogger("music_hf.space")

DEFAULT_MODEL = str(SHIPPED_MODEL)  # models/music-hf-base, the model that ships in the repository
TRAIN_COMMAND = "python scripts/train.py --config scripts/configs/base.yaml --output_dir models/music-hf-base"
MAX_NEW_TOKENS = int(os.environ.get("MAX_NEW_TOKENS", 1024))
GENERATION_TIMEOUT_S = float(os.environ.get("GENERATION_TIMEOUT_S", 120))
MAX_UPLOAD_BYTES = int(float(os.environ.get("MAX_UPLOAD_MB", 2)) * 1024 * 1024)
QUEUE_SIZE = int(os.environ.get("QUEUE_SIZE", 16))
MAX_VARIATIONS = 4
MAX_PROMPT_BARS = 32
LIVE_ROLL_EVERY = 64  # new tokens between two drawings of the piano roll while a generation runs
ANY_KEY = "any"
ANY = "any"  # a control left to the model
CONTROL_LABELS = {"key": "Key", "density": "Notes per bar", "polyphony": "Notes at once",
                  "pitch_range": "Pitch range", "timing": "Timing", "repetition": "Repeats"}
CONTROL_SAMPLES = {"key": "C major", "density": 0, "polyphony": 1, "pitch_range": (60, 60),  # to probe the tokenizer
                   "timing": "score", "repetition": 0.0}
DENSITY_CHOICES = ["1", "2", "4", "6", "8", "12", "16", "24", "32"]  # one per Density bin (notes per bar)
POLYPHONY_CHOICES = ["1", "2", "3", "4", "5", "6"]  # 6 = 6 or more
AUTO = "auto"  # timing: the prompt's own (a new piece: written), as generate_music does without a timing control
TIMING_CHOICES = [("as the prompt (new piece: written)", AUTO), ("written (on the beat grid)", "score"),
                  ("played (expressive)", "performed")]
REPEAT_WORDS = ("none", "few", "some", "many")  # the Repetition bins (REPETITION_EDGES), as the page says them


def repeat_label(k: int) -> str:
    """Repetition bin k as the page says it, with its share of the bars that repeat an earlier one: "few (5-20 %)"."""
    low, high = (round(100 * edge) for edge in (*REPETITION_EDGES, 1)[k:k + 2])
    share = f"<{high} %" if low == 0 else f"{low} % or more" if high == 100 else f"{low}-{high} %"
    return f"{REPEAT_WORDS[k]} ({share})"


# repetition: AUTO is the prompt's share of repeated bars (a new piece: the model's choice), as generate_music does
# without a repetition control; else one choice per Repetition bin, its lower edge
REPETITION_CHOICES = [("as the prompt (new piece: the model's choice)", AUTO),
                      *((repeat_label(k), f"{edge:g}") for k, edge in enumerate(REPETITION_EDGES))]
STOPPED_BY_REQUEST = "stopped by request"

NEW, UPLOAD, EXAMPLE = "new", "upload", "example"
SOURCE_LABELS = {NEW: "New piece", UPLOAD: "My MIDI file", EXAMPLE: "Corpus example"}


class ModelUnavailable(RuntimeError):
    """The model named by MODEL_ID cannot be loaded; the message says what to run instead."""


class Unchanged(Exception):
    """A request that ended without a result (Stop before a regeneration was complete): the history stays."""

    def __init__(self, history: list[dict], message: str):
        super().__init__(message)
        self.history, self.message = history, message


def user_error(message: str, title: str) -> gr.Error:
    """An error shown to the visitor (the server log gets no traceback for it).

    The title leads the message: Gradio 6.31's toasts head every error "Error" and show no title."""
    return gr.Error(f"{title} — {message}", title=title, print_exception=False)


def _error_title(message: str, default: str) -> str:
    """The field a library refusal is about, from its message."""
    if message.startswith("bars "):
        return "Bar range"
    if "max_new_tokens" in message:
        return "Length (new tokens)"
    if "guidance" in message:
        return "Guidance"
    return default


def naming_the_field(component: gr.components.Component) -> None:
    """Make the component's own check of an input value ("Value 0 is less than minimum value 1.") say which field it
    is about. (The instance's method is wrapped: a subclass would make Gradio write an app.pyi next to this file.)"""
    check = component.preprocess

    def preprocess(payload: Any) -> Any:
        try:
            return check(payload)
        except gr.Error as e:
            raise user_error(e.message, title=component.label) from None

    component.preprocess = preprocess


# ----- model and corpus ----------------------------------------------------------------------------------

def resolve_model_id(model_id: str) -> str:
    """A local folder (absolute, relative to the working directory or to the repository) or a Hub repo id."""
    for candidate in (Path(model_id).expanduser(), REPO_ROOT / model_id):
        if candidate.is_dir():
            return str(candidate.resolve())
    return model_id


def load_model(model_id: str, adapter: str | None = None) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer), or `ModelUnavailable` saying what to train or set. `adapter`: a LoRA
    adapter folder or Hub repo fine-tuned from the model (`music-hf train --lora_r`), merged into it."""
    resolved = resolve_model_id(model_id)
    looks_local = Path(resolved).is_dir() or model_id.startswith((".", "/", "~")) or model_id.count("/") != 1
    if not Path(resolved).is_dir() and looks_local:
        hint = (f"Train it first:\n\n    {TRAIN_COMMAND}\n\n" if model_id == DEFAULT_MODEL else "")
        raise ModelUnavailable(
            f"No model at `{model_id}`. {hint}Or set MODEL_ID to a saved model folder or a Hub repo id, e.g.\n\n"
            f"    MODEL_ID=org/music-model python space/app.py")
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved)
        model = AutoModelForCausalLM.from_pretrained(resolved)
    except (OSError, ValueError) as e:
        raise ModelUnavailable(f"Could not load the model `{model_id}`: {e}") from e
    if adapter:
        from music_hf.adapters import load_adapter
        try:
            model = load_adapter(model, resolve_model_id(adapter))
        except (OSError, ValueError, ImportError) as e:
            raise ModelUnavailable(f"Could not load the adapter `{adapter}` onto `{model_id}`: {e}") from e
    if torch.cuda.is_available():
        model.to("cuda")
    model.eval()
    return model, tokenizer


@dataclass(frozen=True)
class CorpusPiece:
    """A prepared corpus piece: offered as a prompt and indexed for "Find similar"."""

    source: str
    name: str
    genre: str
    path: str


def _control_value(value: Any) -> Any:
    """A control widget's value: None for "any" or empty, a number where the text reads as one, else the value as
    given (the tokenizer's check then says what it accepts)."""
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ("", ANY):
            return None
        for number in (int, float):
            try:
                return number(text)
            except ValueError:
                pass
        return text
    return value


def pretty_name(source: str) -> str:
    """'ryansMammoth/7thRegimentReel.abc#2' -> 'ryansMammoth · 7th Regiment Reel (tune 3)'."""
    path, _, tune = source.partition("#")
    collection, _, rest = path.partition("/")
    stem = re.sub(r"\.(mxl|musicxml|xml|krn|abc|mid|midi)$", "", rest or collection, flags=re.I)
    stem = re.sub(r"(?<=[a-z])(?=[A-Z0-9])", " ", stem.replace("_", " ").replace("/", " / "))
    name = f"{collection} · {stem}" if rest else stem
    return f"{name} (tune {int(tune) + 1})" if tune.isdigit() else name


def _spread(items: list, n: int) -> list:
    """Up to n items evenly spaced through the list (a varied, deterministic sample)."""
    if len(items) <= n:
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]


def load_corpus_pieces(genres: list[str], corpus_dir: str | None = None, per_genre: int = 24,
                       prepare_missing: bool = True) -> tuple[list[CorpusPiece], str]:
    """Corpus pieces for examples and similarity, up to `per_genre` for each of the model's genres (for each genre
    of the corpus when it has none of them).

    Reads the corpus manifest (the one training prepared); when there is none, converts a few pieces of the
    collections of the model's genres (cached). Returns the pieces and a note on what happened.
    """
    try:
        from music_hf.corpus import COLLECTION_GENRES, default_output_dir, load_manifest, prepare_corpus
    except ImportError as e:  # the corpus module is optional for the app
        return [], f"corpus unavailable ({e})"
    corpus_dir = corpus_dir or os.environ.get("CORPUS_DIR") or default_output_dir()
    try:
        entries = load_manifest(corpus_dir).entries if Path(corpus_dir, MANIFEST_NAME).is_file() else []
        if not entries and prepare_missing:
            wanted = [g for g in genres if g != UNKNOWN_GENRE]
            collections = [c for c, g in COLLECTION_GENRES.items() if g in wanted] or ["bach", "essenFolksong",
                                                                                      "ryansMammoth"]
            by_genre: dict[str, list[str]] = {}
            for c in collections:
                by_genre.setdefault(COLLECTION_GENRES.get(c, "other"), []).append(c)
            collections = [c for cs in by_genre.values() for c in cs[:2]]
            logger.info("preparing corpus examples from %s in %s", collections, corpus_dir)
            entries = prepare_corpus(corpus_dir, collections=collections, max_pieces_per_collection=6,
                                     num_workers=min(2, os.cpu_count() or 1), progress=False).entries
    except (OSError, ValueError, RuntimeError) as e:
        logger.warning("no corpus examples: %s", e)
        return [], f"corpus unavailable ({e})"
    by_genre = {}
    for e in sorted(entries, key=lambda e: e.source):
        by_genre.setdefault(e.genre, []).append(e)
    order = [g for g in genres if g in by_genre] or sorted(by_genre)  # the model's genres, if the corpus has them
    pieces = [CorpusPiece(e.source, pretty_name(e.source), e.genre, e.path)
              for g in order for e in _spread(by_genre[g], per_genre)]
    return pieces, f"{len(pieces)} corpus pieces from {corpus_dir}"


# ----- generation bookkeeping --------------------------------------------------------------------------

class GenerationProgress(StoppingCriteria):
    """Follows one generation: counts its new tokens (the progress line), keeps the newest ids of every variation
    (the piano roll drawn while tokens stream in), and stops it when `cancel` is set (Stop keeps what was made)."""

    def __init__(self, total: int):
        self.total = total
        self.done = 0
        self.cancel = threading.Event()
        self.prompt: list[int] | None = []  # the ids the new tokens follow (no BOS); set when the generation starts
        # (None: what is written cannot be drawn before it is complete, as the bars of an infilling)
        self._latest: tuple[int, torch.Tensor] | None = None  # (new tokens, every row so far), replaced at once

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        self.done += 1
        self._latest = (self.done, input_ids)
        return torch.full((input_ids.shape[0],), self.cancel.is_set(), dtype=torch.bool, device=input_ids.device)

    def so_far(self) -> list[list[int]]:
        """Each variation as generated so far: the prompt, then its new ids."""
        if self._latest is None or self.prompt is None:
            return []
        done, rows = self._latest
        return [self.prompt + row for row in rows[:, rows.shape[1] - done:].tolist()]


@dataclass
class Settings:
    """What a visitor chose; `Studio.settings` validates and clamps the raw widget values."""

    genre: str = UNKNOWN_GENRE
    instruments: list[str] = field(default_factory=list)
    tempo: float = 120.0
    time_signature: str = "4/4"
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    variations: int = 1
    constrained: bool = True
    key: str | None = None
    density: float | None = None
    polyphony: float | None = None
    pitch_range: tuple[int, int] | None = None
    guidance_scale: float | None = None  # None: off (the widget's 0 or 1)
    timing: str | None = None  # "score" or "performed"; None: the prompt's (generate_music's default_timing)
    repetition: float | None = None  # share of repeated bars (a Repetition bin's lower edge); None: generate_music's

    @property
    def programs(self) -> list[int] | None:
        return [GM_PROGRAM_NAMES.index(n) for n in self.instruments] or None

    @property
    def controls(self) -> dict[str, Any] | None:
        """The `controls=` of the library: the ones set (tempo is the opening's, not a control token here)."""
        values = {"key": self.key, "density": self.density, "polyphony": self.polyphony,
                  "pitch_range": self.pitch_range, "timing": self.timing, "repetition": self.repetition}
        return {k: v for k, v in values.items() if v is not None} or None

    def describe(self) -> str:
        """The controls and guidance for a history line (empty when none is set)."""
        parts = [self.key] if self.key else []
        if self.density is not None:
            parts.append(f"{self.density:g} notes per bar")
        if self.polyphony is not None:
            parts.append(f"{self.polyphony:g} at once")
        if self.pitch_range is not None:
            parts.append(f"pitches {pitch_name(self.pitch_range[0])}–{pitch_name(self.pitch_range[1])}")
        if self.timing is not None:
            parts.append("written timing" if self.timing == "score" else "played timing")
        if self.repetition is not None:
            parts.append(f"repeats: {repeat_label(bisect.bisect_right(REPETITION_EDGES, self.repetition) - 1)}")
        if self.guidance_scale is not None:
            parts.append(f"guidance {self.guidance_scale:g}")
        return "".join(f" · {p}" for p in parts)


@dataclass
class Prompt:
    """Token ids to continue (no BOS), a line describing where they came from, and what `map_prompt` changed to
    fit them to the model (one line each)."""

    ids: list[int]
    label: str
    changes: list[str] = field(default_factory=list)


class Studio:
    """A loaded model with its tokenizer, corpus examples and embedding index; every UI action is a method.

    History (kept per visitor in `gr.State`) is a list of steps; a step is a dict with `label` and `pieces`,
    each piece a dict with `ids` (BOS included), `prompt_bars`, `midi`, `image`, `audio` and `info`.
    """

    def __init__(self, model_id: str | None = None, corpus_dir: str | None = None, output_dir: str | None = None,
                 examples_per_genre: int = 4, index_per_genre: int = 24, prepare_corpus: bool = True,
                 cache_dir: str | None = None):
        self.model_id = model_id or os.environ.get("MODEL_ID") or DEFAULT_MODEL
        self.model, self.tokenizer = load_model(self.model_id, os.environ.get("ADAPTER") or None)
        config = self.model.config
        self.genres = [config.id2genre[i] for i in sorted(config.id2genre)]
        self.time_signatures = list(self.tokenizer.time_signatures())
        self.max_context = int(config.max_position_embeddings)
        self.max_new_tokens = max(32, min(MAX_NEW_TOKENS, self.max_context - 16)) \
            if config.position_embedding_type == "learned" else MAX_NEW_TOKENS
        self.output_root = Path(output_dir or Path(tempfile.gettempdir()) / "music_hf_space")
        self.output_root.mkdir(parents=True, exist_ok=True)
        self.cache_dir = Path(cache_dir or default_cache_dir())
        self.corpus, self.corpus_note = load_corpus_pieces(self.genres, corpus_dir, index_per_genre, prepare_corpus)
        counts: dict[str, int] = {}
        self.examples = []
        for piece in self.corpus:
            counts[piece.genre] = counts.get(piece.genre, 0) + 1
            if counts[piece.genre] <= examples_per_genre:
                self.examples.append(piece)
        covered = {p.genre for p in self.examples}
        self.missing_genres = [g for g in self.genres if g != UNKNOWN_GENRE and g not in covered]
        if self.missing_genres:
            logger.warning("no corpus example for the genre(s) %s (%s)", ", ".join(self.missing_genres),
                           self.corpus_note)
        # what the model learned (`music_hf.prompt_mapping`): the instruments a visitor may pick (`learned_programs`),
        # and what an uploaded prompt is mapped into
        self.knowledge = model_knowledge(self.model, self.tokenizer, self._program_contexts())
        self.programs = sorted(self.knowledge.programs)
        self.control_names, self.controls_note = self._controls()
        self.keys = self._keys()
        try:  # bar infilling and accompaniment: REMI with Program tokens, and the infill tokens in the model
            check_composition_setup(self.model, self.tokenizer)
            self.composition_note = ""
        except ValueError as e:
            self.composition_note = f"Regenerate bars and Add a part are unavailable with this model: {e}."
        self.audio_ok, self.audio_note = audio_available()
        self._embeddings: torch.Tensor | None = None
        self._embedding_lock = threading.Lock()
        self._model_lock = threading.Lock()  # generation and embedding never run at the same time

    # ----- describing the model ---------------------------------------------------------------------
    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def instrument_names(self) -> list[str]:
        """The names of the programs the model learned (`learned_programs`), the instruments a visitor may pick."""
        return [program_name(p) for p in self.programs]

    def _program_contexts(self) -> list[tuple[list[int], str]]:
        """Where `learned_programs` asks the model: the opening of a new piece in each genre, and the corpus examples
        (each with its genre), cut to the context."""
        signature = "4/4" if "4/4" in self.time_signatures else self.time_signatures[0]
        contexts = [(prompt_ids(self.tokenizer, None, time_signature=signature, tempo=120), g) for g in self.genres]
        for piece in self.examples:
            try:
                ids = self.tokenizer.encode_score(piece.path)
            except MusicFileError as e:
                logger.warning("not used to find the instruments: %s", e)
                continue
            contexts.append(([self.tokenizer.bos_token_id] + ids[: self.max_context - 1], piece.genre))
        return contexts

    def _controls(self) -> tuple[list[str], str]:
        """The controls (of CONTROL_NAMES) the tokenizer has tokens for and the model can read, and a note
        naming the others (a model trained before the control tokens has none)."""
        vocab = getattr(self.model.config, "vocab_size", None)
        names = [name for name in self.tokenizer.control_names  # those the tokenizer has, within the model's ids
                 if vocab is None or max(self.tokenizer.control_ids({name: CONTROL_SAMPLES[name]})) < vocab]
        missing = [CONTROL_LABELS[n].lower() for n in CONTROL_NAMES if n not in names]
        if not missing:
            return names, ""
        what = "no control tokens" if not names else f"no control tokens for {', '.join(missing)}"
        every = "key, timing, repeats, density, polyphony and pitch range are"
        return names, (f"This model has {what} (it was made before them), so "
                       f"{every if not names else 'that control is' if len(missing) == 1 else 'those controls are'} "
                       "not offered; Guidance still pulls toward the genre.")

    def _keys(self) -> list[str]:
        """The keys the tokenizer has control tokens for ("C major" ... "B minor"); none for one without them."""
        if "key" not in self.control_names:
            return []
        return [f"{tonic} {'major' if mode == 'maj' else 'minor'}" for mode in KEY_MODES for tonic in KEY_TONICS]

    @property
    def can_compose(self) -> bool:
        """Whether Regenerate bars and Add a part work with this model (see `composition_note`)."""
        return not self.composition_note

    def summary(self) -> str:
        genres = ", ".join(g for g in self.genres if g != UNKNOWN_GENRE) or "none"
        name = self.model_id if len(self.model_id) < 60 else "…" + self.model_id[-57:]
        text = (f"**Model** `{name}` · {self.num_parameters / 1e6:.1f} M parameters · "
                f"{len(self.tokenizer)} tokens · context {self.max_context} · genres: {genres} · "
                f"instruments it learned: {', '.join(self.instrument_names) or 'none it plays reliably'}")
        if self.missing_genres:
            plural = "s" if len(self.missing_genres) > 1 else ""
            text += f"<br>⚠️ The example corpus has no piece of the genre{plural} {', '.join(self.missing_genres)}."
        return text

    # ----- a description in words -------------------------------------------------------------------
    def read_description(self, text: str) -> tuple[dict[str, Any], str]:
        """The page's settings a description sets (`music_hf.text_prompt.settings_from_text`): {component name: value}
        for genre, key, timing, repetition, density, polyphony, pitch_low, pitch_high, instruments, tempo and
        time_signature (only those it sets, and only values the page offers), and a line saying what it understood,
        what it left unused and what it could not set here."""
        said = settings_from_text(text or "", self.tokenizer, self.model)
        values: dict[str, Any] = {}
        notes = list(said.notes)
        if said.genre is not None and said.genre in self.genres:
            values["genre"] = said.genre
        controls = {k: v for k, v in said.controls.items() if k in self.control_names}
        if "key" in controls and controls["key"] in self.keys:
            values["key"] = controls["key"]
        if "timing" in controls:
            values["timing"] = controls["timing"]
        if "repetition" in controls:
            k = int(np.searchsorted(REPETITION_EDGES, controls["repetition"], side="right")) - 1
            values["repetition"] = f"{REPETITION_EDGES[k]:g}"
        if "density" in controls:
            values["density"] = DENSITY_CHOICES[int(np.searchsorted(DENSITY_EDGES, controls["density"],
                                                                    side="right")) - 1]
        if "polyphony" in controls:
            values["polyphony"] = str(min(int(controls["polyphony"]), len(POLYPHONY_CHOICES)))
        if "pitch_range" in controls:
            values["pitch_low"], values["pitch_high"] = (str(p) for p in controls["pitch_range"])
        if said.programs:
            learned = [program_name(p) for p in said.programs if p in self.programs]
            unlearned = [p for p in said.programs if p not in self.programs]
            if learned:
                values["instruments"] = learned
            if unlearned:
                notes.append(f"This model did not learn {describe_instruments(unlearned)}: not set (it would write "
                             "silence).")
        if said.tempo is not None:
            values["tempo"] = float(min(250, max(40, said.tempo)))
        if said.time_signature is not None and said.time_signature in self.time_signatures:
            values["time_signature"] = said.time_signature
        said.notes = notes
        return values, said.summary()

    # ----- validating inputs -------------------------------------------------------------------------
    def settings(self, genre: str | None = None, instruments: list[str] | None = None, tempo: float = 120,
                 time_signature: str | None = "4/4", max_new_tokens: int = 256, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int | None = 0, variations: int = 1,
                 constrained: bool = True, key: str | None = None, density: Any = None, polyphony: Any = None,
                 pitch_low: Any = None, pitch_high: Any = None, guidance: float | None = None,
                 timing: str | None = None, repetition: Any = None) -> Settings:
        """Raw widget values -> Settings; out-of-range values are clamped, unknown names refused, and so are the
        instruments the model never learned (it would write silence for them). Controls ("any" or None: not set)
        are checked by the tokenizer (`control_ids`): a value it refuses is its message, titled by the field."""
        genre = genre or UNKNOWN_GENRE
        if genre not in self.genres:
            raise user_error(f"Unknown genre {genre!r}; this model knows {', '.join(self.genres)}.", title="Genre")
        instruments = list(instruments or [])
        self.programs_named(instruments, "Instruments")
        key = None if key in (None, "", ANY_KEY) else key
        if key is not None and key not in self.keys:
            raise user_error(f"Unknown key {key!r}; choose one of {self.keys[0]} ... {self.keys[-1]}."
                             if self.keys else "This model's tokenizer has no key control.", title="Key")
        time_signature = time_signature or "4/4"
        if time_signature not in self.time_signatures:
            raise user_error(f"Time signature {time_signature} is not in the tokenizer's vocabulary "
                             f"({', '.join(self.time_signatures)}).", title="Time signature")
        density, polyphony = _control_value(density), _control_value(polyphony)
        low, high = _control_value(pitch_low), _control_value(pitch_high)
        if (low is None) != (high is None):
            raise user_error("Set both the lowest and the highest pitch, or leave both at any.", title="Pitch range")
        pitch_range = None if low is None else (low, high)
        for name, value in (("density", density), ("polyphony", polyphony), ("pitch_range", pitch_range)):
            if value is not None:
                try:
                    self.tokenizer.control_ids({name: value})
                except ValueError as e:
                    raise user_error(str(e), title=CONTROL_LABELS[name]) from None
                if name not in self.control_names:  # in the tokenizer, beyond the model's vocabulary
                    raise user_error(self.controls_note, title=CONTROL_LABELS[name])
        timing = None if timing in (None, "", AUTO) else timing
        repetition = None if repetition in (None, "", AUTO) else _control_value(repetition)
        for name, value in (("timing", timing), ("repetition", repetition)):  # the dropdowns with an AUTO choice
            if value is None:
                continue
            if name not in self.control_names:
                raise user_error(self.controls_note, title=CONTROL_LABELS[name])
            try:
                self.tokenizer.control_ids({name: value})
            except ValueError as e:
                raise user_error(str(e), title=CONTROL_LABELS[name]) from None
        guidance = float(guidance) if guidance not in (None, "") else None
        seed = -1 if seed is None else int(seed)
        return Settings(
            genre=genre, instruments=instruments, tempo=float(min(max(tempo or 120, 20), 300)),
            time_signature=time_signature,
            max_new_tokens=int(min(max(int(max_new_tokens or 1), 1), self.max_new_tokens)),
            temperature=float(min(max(temperature or 1.0, 0.05), 3.0)), top_k=int(max(top_k or 0, 0)),
            top_p=float(min(max(top_p or 1.0, 0.05), 1.0)),
            seed=seed if seed >= 0 else secrets.randbelow(2**31),
            variations=int(min(max(int(variations or 1), 1), MAX_VARIATIONS)), constrained=bool(constrained),
            key=key, density=density, polyphony=polyphony, pitch_range=pitch_range,
            guidance_scale=None if guidance in (None, 0.0, 1.0) else guidance, timing=timing,
            repetition=None if repetition is None else float(repetition))

    def programs_named(self, names: Sequence[str] | str | None, field_name: str) -> list[int]:
        """The programs of instrument names a visitor chose; unknown ones are refused, and so are those the model
        never learned (it would write silence for them)."""
        names = [names] if isinstance(names, str) else list(names or [])
        unknown = [n for n in names if n not in GM_PROGRAM_NAMES]
        if unknown:
            raise user_error(f"Unknown instrument(s): {', '.join(map(str, unknown))}.", title=field_name)
        unlearned = [n for n in names if GM_PROGRAM_NAMES.index(n) not in self.programs]
        if unlearned:
            never = describe_instruments([GM_PROGRAM_NAMES.index(n) for n in unlearned])
            plays = ", ".join(self.instrument_names) or "no instrument reliably (leave Instruments empty)"
            raise user_error(f"This model never learned to play {never}: it would write silence. It plays {plays}.",
                             title="Instrument not learned")
        return [GM_PROGRAM_NAMES.index(n) for n in names]

    def read_upload(self, upload: str | os.PathLike | None) -> list[int]:
        """Token ids of an uploaded MIDI file; a readable `gr.Error` for anything that is not usable music."""
        if not upload:
            raise user_error("Upload a MIDI file first (or choose another prompt).", title="No file")
        path = Path(upload)
        name = path.name
        if not path.is_file():
            raise user_error(f"The upload {name} is gone; please upload it again.", title="Upload lost")
        size = path.stat().st_size
        if size > MAX_UPLOAD_BYTES:
            raise user_error(f"{name} is {size / 2**20:.1f} MB; the limit is {MAX_UPLOAD_BYTES / 2**20:.0f} MB.",
                           title="File too large")
        if path.suffix and path.suffix.lower() not in MIDI_SUFFIXES:
            raise user_error(f"{name} is not a MIDI file (expected .mid or .midi).", title="Not MIDI")
        try:
            return self.tokenizer.encode_score(path.read_bytes())
        except MusicFileError as e:
            raise user_error(f"Could not use {name}: {e.problem}.", title="Unreadable MIDI") from None

    def read_prompt(self, source: str, upload: str | None = None, example: str | None = None,
                    bars: int = 4) -> Prompt | None:
        """The prompt the visitor picked: None for a new piece, else the first `bars` bars of the file/example."""
        bars = int(min(max(int(bars or 1), 1), MAX_PROMPT_BARS))
        if source == NEW or not source:
            return None
        if source == UPLOAD:
            ids, label = self.read_upload(upload), Path(upload).name if upload else ""
        elif source == EXAMPLE:
            piece = next((p for p in self.examples + self.corpus if p.source == example), None)
            if piece is None:
                raise user_error("Choose a corpus example first.", title="No example")
            try:
                ids = self.tokenizer.encode_score(piece.path)
            except MusicFileError as e:
                raise user_error(f"Could not read the example {piece.name}: {e.problem}.",
                                 title="Unreadable example") from None
            label = piece.name
        else:
            raise user_error(f"Unknown prompt source {source!r}.", title="Start from")
        kept = cut_bars(self.tokenizer, ids, bars)
        if not any(self.tokenizer.music_attributes()["note_count"][i] for i in kept):
            raise user_error(f"The first {bars} bar(s) of {label} hold no notes; keep more bars.", title="Empty prompt")
        kept, changes = self.fit_to_model(kept)
        return Prompt(kept, f"{label} (first {self._bars(kept)} bars)", changes)

    def fit_to_model(self, ids: list[int]) -> tuple[list[int], list[str]]:
        """The prompt's ids mapped into what the model learned (`map_prompt`: unlearned drums dropped, unlearned
        instruments to the nearest learned one, velocities and tempos into the learned range), and the changes."""
        score, changes = map_prompt(self.tokenizer.decode_midi(ids), self.model, self.tokenizer, self.knowledge)
        return (self.tokenizer.encode_score(score), changes) if changes else (ids, [])

    def _bars(self, ids: list[int]) -> int:
        bar_count = self.tokenizer.music_attributes()["bar_count"]
        return sum(bar_count[i] for i in ids)

    def _has_notes(self, ids: list[int]) -> bool:
        note_count = self.tokenizer.music_attributes()["note_count"]
        return any(note_count[i] for i in ids)

    def _prompt_end_tick(self, prompt: list[int]) -> int | None:
        """Tick where generation begins after `prompt` (None when it holds no notes): its last note onset, or the
        start of its last bar when that bar has no note yet. Not the end of the last bar: new notes may join it,
        at the last onset or later (decoding moves forward in time: positions rise inside a bar)."""
        score = self.tokenizer.decode_midi(prompt)
        onsets = [int(track.notes.numpy()["time"].max()) for track in score.tracks if len(track.notes)]
        if not onsets:
            return None
        return max(max(onsets), bar_end_tick(score, max(self._bars(prompt) - 1, 0)))

    # ----- generating --------------------------------------------------------------------------------
    def generate(self, history: list[dict] | None, source: str = NEW, upload: str | None = None,
                 example: str | None = None, bars: int = 4, settings: Settings | None = None,
                 progress: GenerationProgress | None = None, notify: Any = None) -> list[dict]:
        """Generate variations from the chosen prompt; returns the history with the new step appended."""
        settings = settings or self.settings()
        prompt = self.read_prompt(source, upload, example, bars)
        if prompt is None:
            start = prompt_ids(self.tokenizer, None, time_signature=settings.time_signature, tempo=settings.tempo)[1:]
            label = f"New piece in {settings.time_signature} at {settings.tempo:.0f} BPM"
        else:
            start, label = prompt.ids, f"From {prompt.label}"
        step = self._step(start, label, settings, progress, notify)
        step["prompt_changes"] = prompt.changes if prompt is not None else []
        return list(history or []) + [step]

    def continue_piece(self, history: list[dict] | None, variation: int = 1, settings: Settings | None = None,
                       progress: GenerationProgress | None = None, notify: Any = None) -> list[dict]:
        """Continue one variation of the last step (the whole piece is the prompt)."""
        piece = self.current_piece(history, variation)
        settings = settings or self.settings()
        label = f"Continued variation {variation} of step {len(history)}"
        return list(history) + [self._step(piece["ids"][1:], label, settings, progress, notify)]

    def undo(self, history: list[dict] | None) -> list[dict]:
        """The history without its last step."""
        if not history:
            raise user_error("Nothing to undo.", title="Undo")
        return list(history[:-1])

    def current_piece(self, history: list[dict] | None, variation: int = 1) -> dict:
        if not history:
            raise user_error("Generate something first.", title="No piece yet")
        pieces = history[-1]["pieces"]
        variation = int(variation or 1)
        if not 1 <= variation <= len(pieces):
            raise user_error(f"There is no variation {variation} (the last step has {len(pieces)}).",
                             title="Variation")
        return pieces[variation - 1]

    def _output_folder(self) -> Path:
        """A new folder for one result's files (older ones are deleted after some hours)."""
        self._clean_old_outputs()
        folder = self.output_root / uuid.uuid4().hex[:12]
        folder.mkdir(parents=True)
        return folder

    def _context_warning(self, prompt: list[int], seen: int, head: int, settings: Settings) -> str:
        """What to tell when the model saw only the last `seen` ids of `prompt` (its context is too short);
        `head`: the ids before the prompt (BOS and the control tokens)."""
        whole = self.max_context - head - len(prompt)
        advice = (f"ask for at most {whole} new tokens or keep fewer bars" if whole >= 32 else "keep fewer bars")
        if seen == 0:
            return (f"The model's context holds {self.max_context} tokens: with {settings.max_new_tokens} new ones "
                    f"it did not see the prompt at all. To continue the whole prompt, {advice}.")
        return (f"The model's context holds {self.max_context} tokens: it saw only the last {seen} of the prompt's "
                f"{len(prompt)} (from bar {max(self._bars(prompt[: len(prompt) - seen]), 1)} on). To continue "
                f"the whole prompt, {advice}.")

    def _step(self, start: list[int], label: str, settings: Settings, progress: GenerationProgress | None,
              notify: Any) -> dict:
        """Run the model on `start` (ids without BOS), then decode, draw and render each variation."""
        tokenizer = self.tokenizer
        progress = progress or GenerationProgress(settings.max_new_tokens)
        progress.prompt = list(start)
        t0 = time.perf_counter()
        with self._model_lock:
            try:
                pieces = generate_music(
                    self.model, tokenizer, prompt=start, genre=settings.genre,
                    max_new_tokens=settings.max_new_tokens, constrained=settings.constrained,
                    programs=settings.programs if settings.constrained else None, controls=settings.controls,
                    guidance_scale=settings.guidance_scale, temperature=settings.temperature, top_k=settings.top_k,
                    top_p=settings.top_p, num_return_sequences=settings.variations,
                    seed=settings.seed, max_time=GENERATION_TIMEOUT_S, backend=default_backend(self.model),
                    stopping_criteria=StoppingCriteriaList([progress]))
            except ValueError as e:  # a control or guidance the library refuses: its message
                raise user_error(str(e), title=_error_title(str(e), "Generation")) from None
        elapsed = time.perf_counter() - t0
        prompt_bars = self._bars(start) if self._has_notes(start) else 0
        prompt_end = self._prompt_end_tick(start)
        stopped = (STOPPED_BY_REQUEST if progress.cancel.is_set() else
                   f"stopped at the {GENERATION_TIMEOUT_S:.0f} s time limit" if elapsed >= GENERATION_TIMEOUT_S
                   else "")
        control = tokenizer.token_table.kind == KIND_INDEX["Control"]
        first = pieces[0].ids
        head = 1 + next((n for n, i in enumerate(first[1:]) if not control[i]), len(first) - 1)  # BOS, controls
        seen = pieces[0].prompt_length - head  # the library cuts a prompt too long for the context from the left
        warnings = [self._context_warning(start, seen, head, settings)] if seen < len(start) else []
        folder = self._output_folder()
        out = []
        for n, piece in enumerate(pieces, 1):
            if notify:
                notify(n, len(pieces))
            new_ids = piece.ids[piece.prompt_length:]
            ids = [tokenizer.bos_token_id] + list(start) + new_ids  # the whole piece, even past the context
            score = tokenizer.decode_midi(ids)
            item = self._render(ids, score, folder, n, settings, prompt_end=prompt_end)
            item.update(prompt_bars=prompt_bars, new_tokens=len(new_ids),
                        info=(f"**Variation {n}** · {score.note_num()} notes · {item['seconds']:.0f} s · "
                              f"{len(new_ids)} new tokens · {item['valid']:.0%} well-formed tokens · "
                              f"seed {settings.seed}"))
            out.append(item)
        allowed = pieces[0].programs if pieces else settings.programs  # by default the genre's usual instruments
        instruments = describe_instruments(allowed) if allowed else "any instrument"
        summary = (f"{label} · {self._genre_name(settings)} · {instruments}{settings.describe()} · "
                   f"T={settings.temperature:g}")
        return {"label": summary, "pieces": out, "seconds": elapsed, "stopped": stopped,
                "tokens": settings.max_new_tokens, "warnings": warnings}

    @staticmethod
    def _genre_name(settings: Settings) -> str:
        return "any genre" if settings.genre == UNKNOWN_GENRE else settings.genre

    def _render(self, ids: list[int], score: Any, folder: Path, n: int, settings: Settings, title: str = "",
                prompt_end: int | None = None, band: tuple[int, int] | None = None) -> dict:
        """One variation's files: MIDI, piano roll (the prompt shaded up to `prompt_end`, or the ticks of `band`
        marked as rewritten), audio; returns the piece dict less its `info`, `prompt_bars` and `new_tokens`."""
        slug = re.sub(r"[^a-z0-9]+", "-", settings.genre.lower()).strip("-")
        slug = "piece" if slug in ("", UNKNOWN_GENRE) else slug
        midi = folder / f"{slug}-{n}.mid"
        score.dump_midi(str(midi))
        image = piano_roll(score, prompt_end_tick=prompt_end, path=folder / f"roll_{n}.png",
                           title=f"Variation {n} · {self._genre_name(settings)}{title}")
        if band is not None:
            mark_ticks(image, score, *band)
        audio = render_audio(score, folder / f"audio_{n}.wav") if self.audio_ok else None
        return {"ids": ids, "midi": str(midi), "image": image, "audio": audio, "notes": score.note_num(),
                "seconds": score.to("second").end() if score.note_num() else 0.0,
                "valid": 1.0 - self.tokenizer.grammar_errors(ids)}

    # ----- composing: regenerate bars, add a part -----------------------------------------------------
    def _bar_number(self, value: Any, field_name: str) -> int:
        if value is None or value == "":
            raise user_error("Give a bar number (bars count from 0).", title=field_name)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise user_error(f"{value!r} is not a bar number (bars count from 0).", title=field_name) from None
        if not number.is_integer():
            raise user_error(f"{value} is not a whole bar number (bars count from 0).", title=field_name)
        return int(number)

    def _compose(self, write: Any, history: list[dict], settings: Settings, progress: GenerationProgress,
                 action: str) -> tuple[list[Any], str, float]:
        """Call `write(seed, seconds_left)` (an `infill_piece` / `accompany_piece`) once per variation.

        Returns the pieces, how it stopped ("" when it did not) and the seconds. The library's refusals (a bar
        range outside the piece, a control value, guidance with nothing to guide toward) become its message as a
        titled error. A regeneration cut short has no usable result: Stop keeps the variations already complete,
        and with none the history stays as it was (`Unchanged`)."""
        progress.prompt = None  # nothing to draw before a variation is complete
        results: list[Any] = []
        stopped = ""
        t0 = time.perf_counter()
        with self._model_lock:
            for n in range(settings.variations):
                left = GENERATION_TIMEOUT_S - (time.perf_counter() - t0)
                if progress.cancel.is_set():
                    stopped = STOPPED_BY_REQUEST
                    break
                if left <= 0:
                    stopped = f"stopped at the {GENERATION_TIMEOUT_S:.0f} s time limit"
                    break
                try:
                    results.append(write(settings.seed + n, left))
                except MusicFileError as e:
                    raise user_error(e.problem, title=_error_title(e.problem, action)) from None
                except ValueError as e:
                    raise user_error(str(e), title=_error_title(str(e), action)) from None
                except RuntimeError:  # the decode ended before the bars did: Stop or the time limit
                    if progress.cancel.is_set():
                        stopped = STOPPED_BY_REQUEST
                    elif time.perf_counter() - t0 >= GENERATION_TIMEOUT_S:
                        stopped = f"stopped at the {GENERATION_TIMEOUT_S:.0f} s time limit"
                    else:
                        raise
                    break
        elapsed = time.perf_counter() - t0
        if not results:
            if stopped == STOPPED_BY_REQUEST:
                raise Unchanged(history, f"⏹ Stopped before {action.lower()} was complete: the piece is unchanged.")
            raise user_error(f"The model did not finish within the {GENERATION_TIMEOUT_S:.0f} s time limit; the "
                             "piece is unchanged. Ask for fewer bars or a shorter Length.", title="Time limit")
        return results, stopped, elapsed

    def _sampling(self, settings: Settings, progress: GenerationProgress) -> dict[str, Any]:
        """The keywords the composition functions share."""
        return dict(controls=settings.controls, genre=settings.genre, max_new_tokens=settings.max_new_tokens,
                    guidance_scale=settings.guidance_scale, temperature=settings.temperature, top_k=settings.top_k,
                    top_p=settings.top_p, stopping_criteria=StoppingCriteriaList([progress]))

    def _composed_step(self, results: list[Any], label: str, done: str, settings: Settings, stopped: str,
                       elapsed: float, describe: Any, band: Any = None, title: str = "",
                       notify: Any = None) -> dict:
        """A history step from composed pieces: `describe(n, composed, score)` gives each variation's info
        line after its number, `band(score)` the ticks to mark on its roll."""
        folder = self._output_folder()
        out = []
        for n, composed in enumerate(results, 1):
            if notify:
                notify(n, len(results))
            ids = [self.tokenizer.bos_token_id] + list(composed.ids)
            score = composed.score
            item = self._render(ids, score, folder, n, settings, title=title,
                                band=band(score) if band is not None else None)
            written = composed.span[1] - composed.span[0]
            item.update(prompt_bars=0, new_tokens=written,
                        info=(f"**Variation {n}** · {describe(composed, score)} · {score.note_num()} notes · "
                              f"{item['seconds']:.0f} s · {item['valid']:.0%} well-formed tokens · "
                              f"seed {settings.seed + n - 1}"))
            out.append(item)
        summary = f"{label} · {self._genre_name(settings)}{settings.describe()} · T={settings.temperature:g}"
        return {"label": summary, "pieces": out, "seconds": elapsed, "stopped": stopped,
                "tokens": settings.max_new_tokens, "warnings": [], "done": done}

    def regenerate_bars(self, history: list[dict] | None, variation: int = 1, start: int = 0, end: int = 1,
                        parts: Sequence[str] | None = None, settings: Settings | None = None,
                        progress: GenerationProgress | None = None, notify: Any = None) -> list[dict]:
        """Write bars `start` to `end` of a variation of the last step anew (bars count from 0, `end` is not
        included: the library's `infill_piece`); with `parts` (instrument names) only their notes there. Every
        other note stays as it is. Returns the history with the new step (one piece per variation asked for)."""
        piece = self.current_piece(history, variation)
        settings = settings or self.settings()
        if not self.can_compose:
            raise user_error(self.composition_note, title="Regenerate bars")
        programs = self.programs_named(parts, "Only these parts") or None
        bars = (self._bar_number(start, "From bar"), self._bar_number(end, "To bar"))
        score = self.tokenizer.decode_midi(piece["ids"])
        progress = progress or GenerationProgress(settings.max_new_tokens)
        forced = len(piece["ids"]) if programs else 0  # with parts, the others' tokens are decoded too
        progress.total = settings.variations * (settings.max_new_tokens + forced)
        sampling = self._sampling(settings, progress)
        results, stopped, elapsed = self._compose(
            lambda seed, left: infill_piece(self.model, self.tokenizer, score, bars, programs=programs, seed=seed,
                                            max_time=left, **sampling),
            history, settings, progress, "Regenerate bars")
        what = f"bars {bars[0]}-{bars[1]}" + (f" of {describe_instruments(programs)}" if programs else "")
        kept = "every other note" if programs else "every other bar"
        n = len(results)
        done = (f"✅ Regenerated {what} in {elapsed:.1f} s ({n} variation{'s' if n > 1 else ''}); {kept} is "
                "unchanged.")
        return list(history) + [self._composed_step(
            results, f"Regenerated {what} of variation {variation} of step {len(history)}", done, settings, stopped,
            elapsed, lambda composed, s: f"{what} new", title=f" · {what} regenerated",
            band=lambda s: (bar_end_tick(s, bars[0]), bar_end_tick(s, bars[1])), notify=notify)]

    def add_part(self, history: list[dict] | None, variation: int = 1, instrument: str | None = None,
                 settings: Settings | None = None, progress: GenerationProgress | None = None,
                 notify: Any = None) -> list[dict]:
        """A new part for `instrument` (one the model learned) around a variation of the last step (the library's
        `accompany_piece`): every given note stays; notes the piece had for that instrument are replaced.
        Returns the history with the new step (one piece per variation asked for)."""
        piece = self.current_piece(history, variation)
        settings = settings or self.settings()
        if not self.can_compose:
            raise user_error(self.composition_note, title="Add a part")
        if not instrument:
            raise user_error("Choose the instrument of the new part.", title="New part")
        program = self.programs_named([instrument], "New part")[0]
        score = self.tokenizer.decode_midi(piece["ids"])
        had = sum(len(t.notes) for t in score.tracks if int(t.program) == program and not t.is_drum)
        progress = progress or GenerationProgress(settings.max_new_tokens)
        progress.total = settings.variations * (len(piece["ids"]) + settings.max_new_tokens)
        sampling = self._sampling(settings, progress)
        results, stopped, elapsed = self._compose(
            lambda seed, left: accompany_piece(self.model, self.tokenizer, score, program, seed=seed,
                                               max_time=left, **sampling),
            history, settings, progress, "Add a part")

        def describe(composed: Any, s: Any) -> str:
            new = sum(len(t.notes) for t in s.tracks if int(t.program) == program and not t.is_drum)
            return f"+{new} notes of {instrument}" + (f" (its {had} earlier notes replaced)" if had else "")

        n = len(results)
        done = (f"✅ Added a part for {instrument} in {elapsed:.1f} s ({n} variation{'s' if n > 1 else ''}); every "
                "given note is kept.")
        return list(history) + [self._composed_step(
            results, f"Added {instrument} to variation {variation} of step {len(history)}", done, settings, stopped,
            elapsed, describe, title=f" · + {instrument}", notify=notify)]

    def sketch(self, progress: GenerationProgress, genre: str = UNKNOWN_GENRE) -> list[str]:
        """Piano rolls (PNG paths) of the variations as generated so far, the prompt shaded: drawn while tokens
        stream in."""
        rows = progress.so_far()
        if not rows:
            return []
        folder = self._output_folder()
        prompt_end = self._prompt_end_tick(progress.prompt)
        genre = "any genre" if genre == UNKNOWN_GENRE else genre
        return [piano_roll(self.tokenizer.decode_midi(finish_sequence(self.tokenizer, ids)),
                           prompt_end_tick=prompt_end, path=folder / f"live_{n}.png",
                           title=f"Variation {n} · {genre} · {progress.done} of {progress.total} tokens so far")
                for n, ids in enumerate(rows, 1)]

    def _clean_old_outputs(self, max_age_s: float = 6 * 3600) -> None:
        """Delete generated files older than `max_age_s` (a Space runs for days)."""
        now = time.time()
        for folder in self.output_root.iterdir():
            try:
                if folder.is_dir() and now - folder.stat().st_mtime > max_age_s:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                pass

    # ----- similarity --------------------------------------------------------------------------------
    def _embed(self, ids: list[int]) -> torch.Tensor:
        ids = ids[: self.max_context]
        input_ids = torch.tensor([ids], device=self.model.device)
        with torch.no_grad():
            return self.model.embed_piece(input_ids)[0].float().cpu()  # genre "unknown": similarity of content

    def _index_cache_path(self) -> Path:
        """Where the corpus embeddings of this model and corpus are stored (key: model files and pieces)."""
        h = hashlib.sha1()
        h.update(str(resolve_model_id(self.model_id)).encode())
        h.update(str(getattr(self.model.config, "_commit_hash", "")).encode())
        folder = Path(resolve_model_id(self.model_id))
        weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) if folder.is_dir() else []
        for f in weights:
            h.update(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}".encode())
        for p in self.corpus:
            h.update(f"{p.source}:{p.path}".encode())
        return self.cache_dir / "space" / f"embeddings-{h.hexdigest()[:16]}.pt"

    def corpus_embeddings(self) -> torch.Tensor:
        """(pieces, hidden) L2-normalized embeddings of the corpus pieces: computed once, cached on disk."""
        with self._embedding_lock:
            if self._embeddings is not None:
                return self._embeddings
            cache = self._index_cache_path()
            if cache.is_file():
                try:
                    emb = torch.load(cache, map_location="cpu", weights_only=True)
                    if emb.shape[0] == len(self.corpus):
                        self._embeddings = emb
                        return emb
                except (OSError, RuntimeError) as e:
                    logger.warning("ignoring embedding cache %s: %s", cache, e)
            rows = []
            for piece in self.corpus:
                try:
                    ids = [self.tokenizer.bos_token_id] + self.tokenizer.encode_score(piece.path)
                    with self._model_lock:
                        rows.append(self._embed(ids))
                except MusicFileError as e:  # keep the row so indices match; it never ranks first
                    logger.warning("not indexed: %s", e)
                    rows.append(torch.zeros(self.model.config.hidden_size))
            emb = torch.stack(rows) if rows else torch.zeros(0, self.model.config.hidden_size)
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                torch.save(emb, cache)
            except OSError as e:
                logger.warning("could not cache embeddings at %s: %s", cache, e)
            self._embeddings = emb
            return emb

    def similar(self, ids: list[int], k: int = 5) -> list[list]:
        """Rows [rank, piece, genre, cosine similarity] of the `k` corpus pieces nearest to `ids`.

        Embeddings are centred on the corpus mean first: mean-pooled hidden states share a large common
        direction, which would put every cosine near 1 and hide the differences between pieces."""
        if not self.corpus:
            raise user_error(f"No corpus pieces to compare with ({self.corpus_note}).", title="Find similar")
        index = self.corpus_embeddings()
        with self._model_lock:
            query = self._embed(ids)
        if len(index) >= 3:
            mean = index.mean(0)
            index, query = F.normalize(index - mean, dim=-1), F.normalize(query - mean, dim=0)
        sims = index @ query
        order = torch.argsort(sims, descending=True)[:k].tolist()
        return [[rank, self.corpus[i].name, self.corpus[i].genre, round(float(sims[i]), 3)]
                for rank, i in enumerate(order, 1)]

    def find_similar(self, history: list[dict] | None, variation: int = 1, k: int = 5) -> list[list]:
        """Nearest corpus pieces to a variation of the last step."""
        return self.similar(self.current_piece(history, variation)["ids"], k)

    def warm_up(self) -> None:
        """Compute the similarity index now (called in a background thread at launch)."""
        try:
            if self.corpus:
                self.corpus_embeddings()
        except Exception:  # noqa: BLE001 - a failed warm-up is retried on the first click
            logger.exception("embedding warm-up failed")

    # ----- preview -----------------------------------------------------------------------------------
    def preview(self, source: str, upload: str | None, example: str | None, bars: int) -> tuple[str | None, str]:
        """Piano roll of the prompt as it will be used, and a line describing it."""
        prompt = self.read_prompt(source, upload, example, bars)
        if prompt is None:
            return None, "Starting from an empty first bar (time signature and tempo below)."
        score = self.tokenizer.decode_midi(prompt.ids)
        folder = self.output_root / "previews"
        folder.mkdir(parents=True, exist_ok=True)
        image = piano_roll(score, path=folder / f"{uuid.uuid4().hex[:12]}.png", title=f"Prompt: {prompt.label}",
                           height=300)
        return image, (f"Prompt: **{prompt.label}**, {score.note_num()} notes, {len(prompt.ids)} tokens."
                       + (f" {fitted_line(prompt.changes)}" if prompt.changes else ""))


def fitted_line(changes: Sequence[str]) -> str:
    """What `map_prompt` changed in the prompt, for the status line."""
    return "🔀 Prompt fitted to what the model learned: " + " ".join(changes)


def step_message(step: dict) -> str:
    """The status line after a generation: what came out, how it ended, and what the visitor should know."""
    n = len(step["pieces"])
    if step.get("done"):  # regenerated bars, an added part: only complete variations are kept
        message = step["done"]
        if step["stopped"]:
            reason = "Stopped" if step["stopped"] == STOPPED_BY_REQUEST else step["stopped"].capitalize()
            message += f" ⏹ {reason}: kept the {n} variation{'s' if n > 1 else ''} finished before."
    elif step["stopped"] == STOPPED_BY_REQUEST:
        made = max((p["new_tokens"] for p in step["pieces"]), default=0)
        what = "the variation as far as it got" if n == 1 else f"the {n} variations as far as they got"
        message = f"⏹ Stopped: kept {what} ({made} of {step['tokens']} new tokens, {step['seconds']:.1f} s)."
    else:
        message = (f"✅ {n} variation{'s' if n > 1 else ''} in {step['seconds']:.1f} s "
                   f"(up to {step['tokens']} new tokens each).")
        if step["stopped"]:
            message += f" ⚠️ Generation {step['stopped']}; the music is cut there."
    changes = step.get("prompt_changes") or []
    return " ".join([message, *(f"⚠️ {warning}" for warning in step["warnings"]),
                     *([fitted_line(changes)] if changes else [])])


def roll_end_tick(score: Any) -> int:
    """The tick at the right edge of `piano_roll`'s plot (without a prompt marker): the end of the bar where the
    music ends, at least one 4/4 bar."""
    score = score if "Tick" in str(score.ttype) else score.to("tick")
    tpq = score.ticks_per_quarter
    end = max(score.end(), tpq * 4)
    bars = bar_starts(score, end=end)
    if bars[-1] < end:
        bars = bar_starts(score, end=end + tpq * 16)
        bars = [b for b in bars if b < end] + [next(b for b in bars if b >= end)]
    return bars[-1] if bars[-1] >= end else end


PLOT_COLORS = ((251, 251, 253), (238, 240, 244))  # piano_roll's plot background: white and black-key rows
BAND_TINT, BAND_EDGE = (255, 214, 64), (74, 85, 104)  # a yellow background; slate dashes as the prompt marker


def mark_ticks(path: str, score: Any, start: int, end: int, label: str = "regenerated") -> str:
    """Mark ticks [start, end) on a piano roll PNG drawn by `piano_roll` (in place): the plot's background turns
    yellow there (the notes keep their colours), with dashed edges and a label. The plot is found by its background
    colours; its x axis runs from 0 to `roll_end_tick`."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    image = Image.open(path).convert("RGB")
    pixels = np.array(image)
    plot = np.zeros(pixels.shape[:2], dtype=bool)
    for color in PLOT_COLORS:
        plot |= np.all(pixels == color, axis=-1)
    rows, cols = np.flatnonzero(plot.sum(1) > plot.shape[1] // 4), np.flatnonzero(plot.sum(0) > plot.shape[0] // 4)
    if not len(rows) or not len(cols) or end <= start:
        return path
    left, right, top, bottom = int(cols[0]), int(cols[-1]) + 1, int(rows[0]), int(rows[-1]) + 1
    span = max(roll_end_tick(score), 1)
    x0 = left + round((right - left) * min(start, span) / span)
    x1 = left + round((right - left) * min(end, span) / span)
    band = np.zeros_like(plot)
    band[top:bottom, x0:x1] = True
    band &= plot
    pixels[band] = (0.6 * pixels[band] + 0.4 * np.array(BAND_TINT)).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for x in (x0, x1):
        for y in range(top, bottom, 6):
            draw.line((x, y, x, min(y + 3, bottom)), fill=BAND_EDGE, width=2)
    try:
        font = ImageFont.load_default(size=12)
    except (OSError, TypeError):  # Pillow without FreeType: its bitmap font
        font = ImageFont.load_default()
    box = draw.textbbox((0, 0), label, font=font)
    width, height = box[2] - box[0], box[3] - box[1]
    if width + 8 <= x1 - x0:
        at = (x0 + (x1 - x0 - width) // 2, top + 4)
        draw.rounded_rectangle((at[0] - 4, at[1] - 2, at[0] + width + 4, at[1] + height + 5), radius=3,
                               fill=(255, 255, 255))
        draw.text(at, label, fill=BAND_EDGE, font=font)
    image.save(path)
    return path


# ----- the page -------------------------------------------------------------------------------------------

CSS = """
.header h1 {margin-bottom: 0.1em;}
.header p {margin-top: 0; opacity: 0.85;}
.variation {border-radius: 12px;}
.status {min-height: 2.2em;}
"""


def _theme() -> gr.themes.Base:
    fonts = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"]
    return gr.themes.Soft(primary_hue="indigo", secondary_hue="sky", neutral_hue="slate", font=fonts)


def build_unavailable_demo(message: str) -> gr.Blocks:
    """A page that explains why there is no model and what to run."""
    with gr.Blocks(title="music-hf Studio", analytics_enabled=False) as demo:
        gr.Markdown("# 🎼 music-hf Studio\n\n### The model is not available\n\n" + message)
    return demo


def build_demo(studio: Studio) -> gr.Blocks:
    """Lay out the page and connect each control to a `Studio` method."""
    genre_choices = [("any (unconditioned)" if g == UNKNOWN_GENRE else g, g) for g in studio.genres]
    source_choices = [(SOURCE_LABELS[s], s) for s in (NEW, UPLOAD, EXAMPLE) if s != EXAMPLE or studio.examples]
    example_choices = [(f"{p.name} — {p.genre}", p.source) for p in studio.examples]
    example_info = f"{len(example_choices)} pieces of the corpus, by genre" + (
        f" (none of {', '.join(studio.missing_genres)})" if studio.missing_genres else "")
    audio_line = ("" if studio.audio_ok else f"<br>🔇 Audio preview is unavailable here: {studio.audio_note}. "
                  "Piano rolls and MIDI downloads work.")

    with gr.Blocks(title="music-hf Studio", analytics_enabled=False, delete_cache=(3600, 6 * 3600)) as demo:
        history = gr.State([])
        gr.Markdown(
            "# 🎼 music-hf Studio\nCompose with a music transformer: start from nothing, your own MIDI or a piece "
            "from the corpus; pick a genre, instruments, key, density and range; listen, download, continue, "
            "regenerate some bars, add a part, undo, and find the corpus pieces that sound alike."
            f"<br>{studio.summary()}{audio_line}", elem_classes="header")
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                with gr.Group():
                    source = gr.Radio(source_choices, value=NEW, label="Start from")
                    upload = gr.File(label=f"MIDI file (up to {MAX_UPLOAD_BYTES / 2**20:.0f} MB)",
                                     file_types=list(MIDI_SUFFIXES), type="filepath", height=110)
                    example = gr.Dropdown(example_choices, value=None, label="Corpus example",
                                          visible=bool(example_choices), info=example_info)
                    bars = gr.Slider(1, MAX_PROMPT_BARS, value=4, step=1, label="Bars of the prompt to keep")
                with gr.Group():
                    with gr.Row(equal_height=True):
                        description = gr.Textbox("", label="Describe it (optional)", lines=1, scale=4,
                                                 placeholder="a sparse jig in D minor for flute, 100 bpm")
                        describe_btn = gr.Button("✍️ Set from words", scale=1, min_width=120)
                    described = gr.Markdown("", label="What the words set", elem_classes="described")
                with gr.Group():
                    with gr.Row():
                        genre = gr.Dropdown(genre_choices, value=genre_choices[min(1, len(genre_choices) - 1)][1],
                                            label="Genre", scale=2)
                        key = gr.Dropdown([ANY_KEY, *studio.keys], value=ANY_KEY, label="Key",
                                          visible=bool(studio.keys), scale=1)
                        timing = gr.Dropdown(TIMING_CHOICES, value=AUTO, label="Timing", scale=1,
                                             visible="timing" in studio.control_names,
                                             info="Written: notes on the beat grid, so bars can repeat exactly; "
                                                  "played: expressive timing.")
                        repetition = gr.Dropdown(REPETITION_CHOICES, value=AUTO, label="Repeats", scale=1,
                                                 visible="repetition" in studio.control_names,
                                                 info="The share of bars that repeat an earlier bar note for note.")
                    has = set(studio.control_names)
                    with gr.Row(visible=bool(has - {"key"})):
                        density = gr.Dropdown([ANY, *DENSITY_CHOICES], value=ANY, label="Notes per bar",
                                              allow_custom_value=True, visible="density" in has, min_width=100)
                        polyphony = gr.Dropdown([ANY, *POLYPHONY_CHOICES], value=ANY, label="Notes at once",
                                                allow_custom_value=True, visible="polyphony" in has, min_width=100)
                        lows = [(f"{pitch_name(p)} ({p})", str(p)) for p in range(24, 97, 12)]  # C1 ... C7
                        highs = [(f"{pitch_name(p)} ({p})", str(p)) for p in range(35, 108, 12)]  # B1 ... B7
                        pitch_low = gr.Dropdown([(ANY, ANY), *lows], value=ANY, label="Lowest pitch",
                                                allow_custom_value=True, visible="pitch_range" in has, min_width=100)
                        pitch_high = gr.Dropdown([(ANY, ANY), *highs], value=ANY, label="Highest pitch",
                                                 allow_custom_value=True, visible="pitch_range" in has, min_width=100)
                    guidance = gr.Slider(0, 5, value=1, step=0.25, label="Guidance (1 or 0 = off)",
                                         info="Classifier-free guidance: above 1 pulls harder toward the controls "
                                              "and the genre (twice the compute).")
                    gr.Markdown(f"ℹ️ {studio.controls_note}", visible=bool(studio.controls_note),
                                label="About the controls")
                    instruments = gr.Dropdown(studio.instrument_names, value=[], multiselect=True,
                                              label="Instruments", visible=bool(studio.programs),
                                              info="Only those this model learned: it writes silence for the "
                                                   "others. Empty: the prompt's and the genre's usual ones. Needs "
                                                   "the grammar constraint.")
                    with gr.Row():
                        tempo = gr.Slider(40, 250, value=120, step=1, label="Tempo (BPM, new pieces)")
                        time_signature = gr.Dropdown(studio.time_signatures, value="4/4" if "4/4" in
                                                     studio.time_signatures else studio.time_signatures[0],
                                                     label="Time signature (new pieces)")
                    length = gr.Slider(32, studio.max_new_tokens, value=min(384, studio.max_new_tokens), step=16,
                                       label="Length (new tokens)")
                with gr.Accordion("Sampling", open=False):
                    defaults = studio.model.generation_config  # the run's sampling settings (None: off)
                    with gr.Row():
                        temperature = gr.Slider(0.1, 2.0, value=defaults.temperature or 1.0, step=0.05,
                                                label="Temperature")
                        top_k = gr.Slider(0, 200, value=defaults.top_k or 0, step=1, label="Top-k (0 = off)")
                    with gr.Row():
                        top_p = gr.Slider(0.1, 1.0, value=defaults.top_p or 1.0, step=0.01, label="Top-p")
                        seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)")
                    with gr.Row():
                        variations = gr.Slider(1, MAX_VARIATIONS, value=2, step=1, label="Variations")
                        constrained = gr.Checkbox(value=True, label="Grammar-constrained decoding")
                with gr.Row():
                    generate_btn = gr.Button("🎵 Generate", variant="primary", scale=3)
                    stop_btn = gr.Button("⏹ Stop & keep", variant="stop", scale=2)
                preview_image = gr.Image(label="Prompt preview", show_label=False, type="filepath",
                                         interactive=False, visible=False, buttons=["fullscreen"])
                preview_text = gr.Markdown("Starting from an empty first bar (time signature and tempo below).")

            with gr.Column(scale=3, min_width=420):
                status = gr.Markdown("Choose a prompt and press **Generate**.", label="Status", elem_classes="status")
                with gr.Row(equal_height=True, elem_classes="actions"):
                    variation = gr.Radio(["1"], value="1", label="Variation", scale=2, min_width=160)
                    continue_btn = gr.Button("➕ Continue", interactive=False, scale=1, min_width=100)
                    undo_btn = gr.Button("↩ Undo", interactive=False, scale=1, min_width=100)
                    similar_btn = gr.Button("🔎 Find similar", interactive=False, scale=1, min_width=120)
                gr.Markdown("**Edit the selected variation** · bars count from 0 (the piano roll's bar 1 is bar 0) "
                            "and *To bar* is not included; everything else stays note for note. Controls, "
                            "Guidance, Length and sampling apply." if studio.can_compose else
                            f"ℹ️ {studio.composition_note}", elem_classes="edit-note")
                with gr.Group(visible=studio.can_compose):
                    with gr.Row(equal_height=True):
                        bar_from = gr.Number(value=0, precision=0, label="From bar", scale=1, min_width=90)
                        bar_to = gr.Number(value=1, precision=0, label="To bar (not included)", scale=1,
                                           min_width=90)
                        parts = gr.Dropdown(studio.instrument_names, value=[], multiselect=True,
                                            label="Only these parts (empty: all)", visible=bool(studio.programs),
                                            scale=2, min_width=160)
                        regen_btn = gr.Button("🔁 Regenerate bars", interactive=False, scale=1, min_width=150)
                    with gr.Row(equal_height=True, visible=bool(studio.programs)):
                        new_part = gr.Dropdown(studio.instrument_names,
                                               value=(studio.instrument_names or [None])[-1], label="New part",
                                               info="An instrument this model learned; the given notes stay.",
                                               scale=3)
                        part_btn = gr.Button("🎻 Add part", interactive=False, scale=1, min_width=150)
                similar_table = gr.Dataframe(headers=["#", "Corpus piece", "Genre", "Similarity"],
                                             datatype=["number", "str", "str", "number"], interactive=False,
                                             visible=False,
                                             label="Nearest corpus pieces (cosine of the model's piece embeddings)")
                slots = []
                for i in range(MAX_VARIATIONS):
                    with gr.Column(visible=False, elem_classes="variation") as box:
                        info = gr.Markdown(label=f"About variation {i + 1}")
                        image = gr.Image(type="filepath", interactive=False, label=f"Piano roll {i + 1}",
                                         show_label=False, buttons=["download", "fullscreen"])
                        with gr.Row():
                            audio = gr.Audio(type="filepath", interactive=False, label=f"Listen {i + 1}",
                                             visible=studio.audio_ok, scale=3, buttons=["download"])
                            midi = gr.File(label=f"MIDI {i + 1}", interactive=False, scale=2, height=90)
                    slots.append((box, info, image, audio, midi))
                timeline = gr.Markdown("", label="History")

        settings_inputs = [genre, instruments, key, tempo, time_signature, length, temperature, top_k, top_p, seed,
                           variations, constrained, density, polyphony, pitch_low, pitch_high, guidance, timing,
                           repetition]
        for choice in (example, bars, bar_from, bar_to, parts, new_part, *settings_inputs):
            naming_the_field(choice)
        slot_outputs = [c for slot in slots for c in slot]
        outputs = [history, status, timeline, variation, continue_btn, undo_btn, similar_btn, similar_table,
                   regen_btn, part_btn, *slot_outputs]
        running: dict[str, GenerationProgress] = {}  # the generation each session has under way, for Stop

        def reporting_errors(handler):
            """Generate and continue: an error goes into the status line too (its toast goes away)."""
            @functools.wraps(handler)
            def wrapper(*args, **kwargs):
                try:
                    yield from handler(*args, **kwargs)
                except gr.Error as e:
                    yield [gr.skip(), f"⚠️ {e.message}"] + [gr.skip()] * (len(outputs) - 2)
                    raise
            return wrapper

        def show(hist: list[dict], message: str) -> list:
            """Component values for a history: the last step's variations, the timeline, the buttons."""
            step = hist[-1] if hist else None
            pieces = step["pieces"] if step else []
            values: list = [hist, message]
            lines = [f"{n}. {s['label']}" for n, s in enumerate(hist, 1)]
            values.append("**History** (Undo goes back one step)\n\n" + "\n".join(lines) if lines else "")
            choices = [str(n) for n in range(1, max(len(pieces), 1) + 1)]
            values.append(gr.Radio(choices=choices, value="1"))
            values += [gr.Button(interactive=bool(step)), gr.Button(interactive=bool(hist)),
                       gr.Button(interactive=bool(step) and bool(studio.corpus)), gr.Dataframe(visible=False),
                       gr.Button(interactive=bool(step)), gr.Button(interactive=bool(step))]
            for i in range(MAX_VARIATIONS):
                if i < len(pieces):
                    p = pieces[i]
                    values += [gr.Column(visible=True), p["info"], p["image"], p["audio"], p["midi"]]
                else:
                    values += [gr.Column(visible=False), "", None, None, None]
            return values

        def live(line: str, images: list[str]) -> list:
            """Component values while generating: the progress line, and the piano rolls so far if just drawn."""
            values = [gr.skip(), line] + [gr.skip()] * (len(outputs) - 2 - len(slot_outputs))
            for i in range(MAX_VARIATIONS):
                if not images:
                    values += [gr.skip()] * 5
                elif i < len(images):
                    values += [gr.Column(visible=True), f"**Variation {i + 1}** · being written…", images[i], None,
                               None]
                else:
                    values += [gr.Column(visible=False), "", None, None, None]
            return values

        def progress_line(done: int, total: int, text: str) -> str:
            filled = round(12 * done / max(total, 1))
            return f"⏳ `{'█' * filled}{'░' * (12 - filled)}` {text}"

        def run(work, settings: Settings, session: str, doing: str = ""):
            """Run `work(progress_criteria, notify)` in a thread; yield the progress line meanwhile, with the piano
            rolls so far every LIVE_ROLL_EVERY tokens, then the history it returns. Stop (`on_stop`) ends the
            generation early, and the result keeps what was made. `doing`: what the progress line says while
            composing (the tracker's total is then an upper bound: the model ends the bars where it likes)."""
            tracker = GenerationProgress(settings.max_new_tokens)
            running[session] = tracker
            phase = {"render": None}
            result: dict = {}

            def target() -> None:
                try:
                    result["history"] = work(tracker, lambda n, total: phase.update(render=(n, total)))
                except BaseException as e:  # noqa: BLE001 - handed to the event loop below
                    result["error"] = e

            thread = threading.Thread(target=target, daemon=True)
            t0 = time.perf_counter()
            thread.start()
            drawn = 0
            try:
                while thread.is_alive():
                    thread.join(0.5)
                    seconds = time.perf_counter() - t0
                    images = []
                    if phase["render"]:
                        n, total = phase["render"]
                        line = progress_line(n - 1, total, f"drawing and rendering variation {n} of {total} · "
                                                           f"{seconds:.0f} s")
                    elif doing:
                        line = progress_line(tracker.done, tracker.total,
                                             f"{doing}: {tracker.done} tokens (up to {tracker.total}) · "
                                             f"{seconds:.0f} s")
                    else:
                        line = progress_line(tracker.done, settings.max_new_tokens,
                                             f"generating: {tracker.done} / {settings.max_new_tokens} tokens · "
                                             f"{seconds:.0f} s")
                        if tracker.done - drawn >= LIVE_ROLL_EVERY:
                            drawn = tracker.done
                            images = studio.sketch(tracker, settings.genre)
                    yield live(line, images)
            finally:
                if running.get(session) is tracker:
                    del running[session]
                if thread.is_alive():  # the visitor left: stop the model too
                    logger.info("generation cancelled after %d tokens", tracker.done)
                    tracker.cancel.set()
            if "error" in result:
                error = result["error"]
                if isinstance(error, Unchanged):
                    yield show(error.history, error.message)
                    return
                if isinstance(error, gr.Error):
                    raise error
                logger.error("generation failed", exc_info=error)
                raise user_error(f"{type(error).__name__}: {error}", title="Generation failed")
            hist = result["history"]
            yield show(hist, step_message(hist[-1]))

        @reporting_errors
        def on_generate(hist, prompt_source, prompt_bars, genre, instruments, key, tempo, time_signature, length,
                        temperature, top_k, top_p, seed, variations, constrained, density=ANY, polyphony=ANY,
                        pitch_low=ANY, pitch_high=ANY, guidance=1.0, timing=AUTO, repetition=AUTO, midi_file=None,
                        corpus_example=None, request: gr.Request = None):
            """Generate variations from a new piece, an uploaded MIDI file or a corpus example."""
            settings = studio.settings(genre, instruments, tempo, time_signature, length, temperature, top_k, top_p,
                                       seed, variations, constrained, key, density, polyphony, pitch_low,
                                       pitch_high, guidance, timing, repetition)
            prompt = (prompt_source, midi_file, corpus_example, prompt_bars)
            studio.read_prompt(*prompt)  # fail fast on a bad upload, before the thread starts
            yield from run(lambda tracker, notify: studio.generate(hist, *prompt, settings, tracker, notify),
                           settings, request.session_hash)

        @reporting_errors
        def on_continue(hist, variation, genre, instruments, key, tempo, time_signature, length, temperature, top_k,
                        top_p, seed, variations, constrained, density=ANY, polyphony=ANY, pitch_low=ANY,
                        pitch_high=ANY, guidance=1.0, timing=AUTO, repetition=AUTO, request: gr.Request = None):
            """Continue one variation of the last result (the whole piece is the prompt)."""
            settings = studio.settings(genre, instruments, tempo, time_signature, length, temperature, top_k, top_p,
                                       seed, variations, constrained, key, density, polyphony, pitch_low,
                                       pitch_high, guidance, timing, repetition)
            studio.current_piece(hist, int(variation or 1))
            yield from run(lambda tracker, notify: studio.continue_piece(hist, int(variation or 1), settings,
                                                                         tracker, notify),
                           settings, request.session_hash)

        @reporting_errors
        def on_regenerate(hist, variation, from_bar, to_bar, parts, genre, instruments, key, tempo, time_signature,
                          length, temperature, top_k, top_p, seed, variations, constrained, density=ANY,
                          polyphony=ANY, pitch_low=ANY, pitch_high=ANY, guidance=1.0, timing=AUTO,
                          repetition=AUTO, request: gr.Request = None):
            """Write bars from_bar to to_bar (not included; bars count from 0) of a variation of the last result
            anew, only the notes of `parts` there when some are chosen; everything else stays note for note."""
            settings = studio.settings(genre, instruments, tempo, time_signature, length, temperature, top_k, top_p,
                                       seed, variations, constrained, key, density, polyphony, pitch_low,
                                       pitch_high, guidance, timing, repetition)
            studio.current_piece(hist, int(variation or 1))
            yield from run(lambda tracker, notify: studio.regenerate_bars(hist, int(variation or 1), from_bar,
                                                                          to_bar, parts, settings, tracker, notify),
                           settings, request.session_hash, doing=f"regenerating bars {from_bar}-{to_bar}")

        @reporting_errors
        def on_add_part(hist, variation, new_part, genre, instruments, key, tempo, time_signature, length,
                        temperature, top_k, top_p, seed, variations, constrained, density=ANY, polyphony=ANY,
                        pitch_low=ANY, pitch_high=ANY, guidance=1.0, timing=AUTO, repetition=AUTO,
                        request: gr.Request = None):
            """Add a part for an instrument the model learned to a variation of the last result; every given note
            stays."""
            settings = studio.settings(genre, instruments, tempo, time_signature, length, temperature, top_k, top_p,
                                       seed, variations, constrained, key, density, polyphony, pitch_low,
                                       pitch_high, guidance, timing, repetition)
            studio.current_piece(hist, int(variation or 1))
            yield from run(lambda tracker, notify: studio.add_part(hist, int(variation or 1), new_part, settings,
                                                                   tracker, notify),
                           settings, request.session_hash, doing=f"adding {new_part}")

        def on_stop(request: gr.Request):
            """Stop this session's generation; the result keeps the tokens generated so far."""
            tracker = running.get(request.session_hash)
            if tracker is None:
                return gr.skip()
            tracker.cancel.set()
            return "⏹ Stopping: keeping what was made so far…"

        def on_undo(hist):
            """Go back one step."""
            hist = studio.undo(hist)
            return show(hist, "↩ Back one step." if hist else "↩ Back to the start.")

        def on_similar(hist, variation):
            """The corpus pieces nearest to a variation of the last result."""
            rows = studio.find_similar(hist, int(variation or 1))
            return gr.Dataframe(value=rows, visible=True)

        def on_preview(src, up, ex, nbars):
            if (src == UPLOAD and not up) or (src == EXAMPLE and not ex):
                return gr.Image(value=None, visible=False), ("Upload a MIDI file." if src == UPLOAD else
                                                             "Choose a corpus example.")
            try:
                image, text = studio.preview(src, up, ex, nbars)
            except gr.Error as e:  # said next to the prompt; Generate refuses it with the same message
                return gr.Image(value=None, visible=False), (f"⚠️ {e.message} This prompt cannot be used: Generate "
                                                             "will refuse it.")
            return gr.Image(value=image, visible=image is not None), text

        def on_upload(src, up, ex, nbars):
            src = UPLOAD if up else src
            return src, *on_preview(src, up, ex, nbars)

        def on_example(src, up, ex, nbars):
            src = EXAMPLE if ex else src
            return src, *on_preview(src, up, ex, nbars)

        described_outputs = {"genre": genre, "key": key, "timing": timing, "repetition": repetition,
                             "density": density, "polyphony": polyphony, "pitch_low": pitch_low,
                             "pitch_high": pitch_high, "instruments": instruments, "tempo": tempo,
                             "time_signature": time_signature}

        def on_describe(text):
            values, line = studio.read_description(text)
            return [gr.update(value=values[name]) if name in values else gr.update() for name in described_outputs
                    ] + [line]

        describe_btn.click(on_describe, [description], [*described_outputs.values(), described],
                           api_name="describe", show_progress="hidden")
        description.submit(on_describe, [description], [*described_outputs.values(), described], api_name=False,
                           show_progress="hidden")
        generate_btn.click(on_generate, [history, source, bars, *settings_inputs, upload, example], outputs,
                           api_name="generate", concurrency_id="model", show_progress="hidden")
        continue_btn.click(on_continue, [history, variation, *settings_inputs], outputs, api_name="continue",
                           concurrency_id="model", show_progress="hidden")
        regen_btn.click(on_regenerate, [history, variation, bar_from, bar_to, parts, *settings_inputs], outputs,
                        api_name="regenerate_bars", concurrency_id="model", show_progress="hidden")
        part_btn.click(on_add_part, [history, variation, new_part, *settings_inputs], outputs, api_name="add_part",
                       concurrency_id="model", show_progress="hidden")
        stop_btn.click(on_stop, None, status, queue=False, api_name="stop", show_progress="hidden")
        undo_btn.click(on_undo, [history], outputs, api_name="undo", show_progress="hidden")
        similar_btn.click(on_similar, [history, variation], [similar_table], api_name="find_similar",
                          concurrency_id="model")
        preview_inputs = [source, upload, example, bars]
        preview_outputs = [preview_image, preview_text]
        source.input(on_preview, preview_inputs, preview_outputs, api_name=False, show_progress="hidden")
        bars.release(on_preview, preview_inputs, preview_outputs, api_name=False, show_progress="hidden")
        upload.change(on_upload, preview_inputs, [source, *preview_outputs], api_name=False, show_progress="hidden")
        example.change(on_example, preview_inputs, [source, *preview_outputs], api_name=False,
                       show_progress="hidden")
    return demo


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        studio = Studio()
    except ModelUnavailable as e:
        logger.error("%s", e)
        demo = build_unavailable_demo(str(e))
        allowed = []
    else:
        logger.info("%s | %s | audio: %s", studio.summary(), studio.corpus_note, studio.audio_note)
        if studio.model.device.type == "cpu":  # this process's thread count, chosen once for the model's size
            torch.set_num_threads(cpu_threads_for(studio.model.config.hidden_size, 1, torch.get_num_threads()))
        demo = build_demo(studio)
        threading.Thread(target=studio.warm_up, name="embedding-warm-up", daemon=True).start()
        allowed = [str(studio.output_root)]
    demo.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
    demo.launch(max_file_size=MAX_UPLOAD_BYTES, allowed_paths=allowed, theme=_theme(), css=CSS,
                footer_links=["api"])


if __name__ == "__main__":
    main()
