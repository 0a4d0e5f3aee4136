"""A training run: its settings (data, model, loop, sampling defaults), data and model building, the optimizer's
parameter groups and schedule, the epoch-seeded sampler, evaluation metrics, and the Accelerate loop `train`."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import json
import logging
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from torch import nn
from transformers import PreTrainedConfig, get_scheduler
from transformers.hf_argparser import HfArg

from .adapters import GENRE_MODULE, GENRES_FILE, LORA_TARGET_MODULES, add_genres, merge_genres, model_genres
from .configuration_music import ATTRIBUTE_TABLES, MusicConfig
from .corpus import prepare_corpus, read_midi_folder
from .data import (AugmentationConfig, DataSummary, MusicDataCollator, TokenAugmenter, genre_names,
                   load_or_tokenize, make_windows, pieces_from_entries, pieces_from_hf_dataset, streaming_windows)
from .modeling_music import MusicForCausalLM
from .tokenization_music import MIDI_SUFFIXES, MusicTokenizer

logger = logging.getLogger("music_hf.train")


# ----- settings ---------------------------------------------------------------------------------------
@dataclass
class DataArguments:
    """Where the pieces come from, how they are split, cut into windows and augmented, and the tokenizer."""

    _argument_group_name = "data"

    corpus_collections: list[str] = HfArg(
        default_factory=lambda: ["bach", "essenFolksong", "ryansMammoth"],
        help="music21 corpus collections to train on (space- or comma-separated; `all` for every one)")
    max_pieces_per_collection: int | None = HfArg(default=200, help="pieces per collection at most (none: all)")
    corpus_dir: str | None = HfArg(default=None, help="where the converted corpus MIDI goes "
                                                      "(none: ~/.cache/music_hf/corpus)")
    midi_dir: str | None = HfArg(default=None, help="train on this folder of MIDI files instead of the corpus")
    labels_file: str | None = HfArg(default=None, help="CSV/JSON genre labels of the files in midi_dir")
    hf_dataset: str | None = HfArg(default=None, help="train on this dataset (saved with save_to_disk, a column "
                                                      "of MIDI bytes) instead of the corpus")
    hf_midi_column: str = HfArg(default="midi", help="hf_dataset's column of MIDI bytes")
    hf_genre_column: str | None = HfArg(default="genre", help="hf_dataset's genre column (none: no genres)")
    cache_dir: str | None = HfArg(default=None, help="Arrow cache of the tokenized pieces (none: beside the data)")
    num_proc: int = HfArg(default=2, help="processes for corpus conversion and tokenization")
    validation_fraction: float = HfArg(default=0.05, help="share of the pieces held out for validation")
    test_fraction: float = HfArg(default=0.05, help="share of the pieces held out for testing")
    max_length: int = HfArg(default=256, help="tokens per window at most")
    overlap: int = HfArg(default=32, help="tokens that consecutive windows of a piece share at least")
    pack: bool = HfArg(default=False, help="concatenate short windows into full ones")
    pitch_shift: int = HfArg(default=0, help="augmentation: transpose by up to this many semitones, up or down")
    tempo_shift: int = HfArg(default=0, help="augmentation: move the tempo by up to this many tempo bins")
    velocity_jitter: int = HfArg(default=0, help="augmentation: move each velocity by up to this many bins")
    duration_jitter: int = HfArg(default=0, help="augmentation: move each duration by up to this many bins")
    position_jitter: int = HfArg(default=0, help="augmentation: move each onset by up to this many positions")
    velocity_dynamics: float = HfArg(default=0.0, help="augmentation: chance that a window's velocities are redrawn "
                                                       "as performed dynamics (level, crescendo or swell, accents) "
                                                       "over the whole velocity range")
    program_reassign: float = HfArg(default=0.0, help="augmentation: chance that a window's instruments are "
                                                      "reassigned to other General MIDI families")
    augment_probability: float = HfArg(default=1.0, help="chance that a training window is augmented")
    timing_noise: float = HfArg(default=1.0, help="augmentation: chance that an augmented window also gets the "
                                                  "duration and position jitter (played timing; with "
                                                  "control_dropout, its timing control says 'performed', so "
                                                  "generation can ask for the written grid)")
    fim_rate: float = HfArg(default=0.0, help="composition: chance that a training window is rearranged for "
                                              "fill-in-the-middle over its bars (infilling)")
    fim_order: Literal["psm", "spm"] = HfArg(default="psm", help="composition: the fill-in-the-middle layout, "
                                                               "saved as the model's infill_order: psm (prefix, "
                                                               "placeholders, suffix, middle) or spm (placeholders, "
                                                               "suffix, prefix, middle: the middle continues the "
                                                               "prefix right before it)")
    fim_max_bars: int | None = HfArg(default=None, help="composition: the most bars a fill-in-the-middle window "
                                                        "leaves out (drawn uniformly from 1 to this, or to the "
                                                        "window's bars when fewer); none: up to every bar of the "
                                                        "window")
    control_dropout: float | None = HfArg(default=None, help="composition: give training windows a control prefix "
                                                             "(key, density, polyphony, pitch range, timing, "
                                                             "repetition) measured on "
                                                             "them, each control dropped with this probability "
                                                             "(none: no prefix)")
    genre_dropout: float = HfArg(default=0.0, help="composition: chance that a training window's genre is dropped "
                                                   "to unknown (classifier-free guidance)")
    tokenizer_path: str | None = HfArg(default=None, help="load the tokenizer from this folder or Hub repo "
                                                          "(none: a new REMI+ tokenizer)")
    bpe_vocab_size: int = HfArg(default=0, help="learn BPE on the training pieces up to this vocabulary size "
                                                "(0: no BPE)")
    streaming: bool = HfArg(default=False, help="stream the training and validation windows (a datasets "
                                                "IterableDataset read and tokenized as consumed, each process its "
                                                "own pieces) instead of tokenizing everything first")
    shuffle_buffer: int = HfArg(default=256, help="with streaming: pieces in the shuffle buffer")

    def __post_init__(self) -> None:
        self.corpus_collections = [c for item in self.corpus_collections for c in item.split(",") if c]

    def augmentation(self) -> AugmentationConfig:
        return AugmentationConfig(pitch_shift=self.pitch_shift, tempo_shift=self.tempo_shift,
                                  velocity_jitter=self.velocity_jitter, duration_jitter=self.duration_jitter,
                                  position_jitter=self.position_jitter, velocity_dynamics=self.velocity_dynamics,
                                  program_reassign=self.program_reassign, probability=self.augment_probability,
                                  timing_noise=self.timing_noise)


# MusicConfig fields that MusicConfig.from_tokenizer fills from the tokenizer and the genres
SET_BY_TOKENIZER = {"vocab_size", "id2genre", "pad_token_id", "bos_token_id", "eos_token_id",
                    *(f"token_{name}" for name in ATTRIBUTE_TABLES)}


def _model_fields() -> list[tuple[str, Any, dataclasses.Field]]:
    """One optional field per MusicConfig setting (its own fields, less those the tokenizer sets)."""
    namespace = vars(sys.modules[MusicConfig.__module__])
    inherited = {f.name for f in dataclasses.fields(PreTrainedConfig)}
    out = []
    for f in dataclasses.fields(MusicConfig):
        if f.init and f.name not in inherited and f.name not in SET_BY_TOKENIZER:
            hint = eval(f.type, namespace) if isinstance(f.type, str) else f.type  # noqa: S307 (an annotation)
            help_text = f"MusicConfig.{f.name} (none: its default, {f.default!r})"
            out.append((f.name, hint | None, HfArg(default=None, help=help_text)))
    return out


def _model_settings(self) -> dict[str, Any]:
    """The settings given, as keyword arguments of `MusicConfig.from_tokenizer`."""
    return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


ModelArguments = dataclasses.make_dataclass(
    "ModelArguments", _model_fields(),
    namespace={"__module__": __name__,
               "__doc__": "MusicConfig keyword arguments (`model:` in a YAML file); unset ones keep its defaults.",
               "_argument_group_name": "model (MusicConfig settings; `model:` in the YAML file)",
               "settings": _model_settings})


@dataclass
class RunArguments:
    """The model class, optimization, the loop's schedule of evaluations and checkpoints, and the output."""

    _argument_group_name = "training"

    architecture: Literal["music", "gpt2"] = HfArg(
        default="music", help="music: MusicForCausalLM; gpt2: GPT2LMHeadModel of the same sizes (a baseline "
                              "without music embeddings)")
    gradient_checkpointing: bool = HfArg(default=False, help="recompute activations in the backward pass")
    init_from: str | None = HfArg(
        default=None, help="fine-tune: start from the MusicForCausalLM saved in this folder or Hub repo (a run's "
                           "output_dir, models/music-hf-base): its tokenizer (unless tokenizer_path, which must "
                           "match its vocabulary) and its sizes; model settings that would change them are ignored "
                           "with a warning, the *_dropout ones apply. Its genres keep their ids; data genres it does "
                           "not know get new genre embedding rows after them (none: a new model)")
    add_composition_tokens: bool = HfArg(
        default=False, help="with init_from: add the composition tokens this version defines that the saved "
                            "tokenizer lacks (a model saved before the timing or repetition control existed): the "
                            "weights move to the new ids by token (`remap_vocabulary`), the new tokens' rows start "
                            "fresh")
    lora_r: int = HfArg(default=0, help="with init_from: train a PEFT LoRA adapter of this rank instead of all the "
                                        "weights (new genres' embedding rows train too); output_dir then holds only "
                                        "the adapter, for `PeftModel.from_pretrained` or `--adapter` (0: off)")
    lora_alpha: float | None = HfArg(default=None, help="LoRA scaling alpha (none: 2 x lora_r)")
    lora_dropout: float = HfArg(default=0.0, help="dropout on the LoRA branch's input")
    lora_target_modules: list[str] = HfArg(
        default_factory=lambda: list(LORA_TARGET_MODULES),
        help="linear layers that get LoRA adapters, by name (spaces or commas between): attention qkv_proj, "
             "o_proj; MLP fc_in, fc_out")
    learning_rate: float = HfArg(default=1e-3, help="peak learning rate of AdamW")
    min_lr_rate: float = HfArg(default=0.1, help="learning rate at the end of the cosine decay, as a fraction "
                                                 "of the peak")
    warmup_steps: int = HfArg(default=100, help="steps of linear warmup from 0 to the peak learning rate")
    max_steps: int = HfArg(default=1000, help="optimizer steps of the run (the schedule's length)")
    weight_decay: float = HfArg(default=0.01, help="AdamW weight decay of linear and conv weight matrices")
    l1_penalty: float = HfArg(default=0.0, help="L1 penalty on the decayed weight matrices")
    adam_beta1: float = HfArg(default=0.9, help="AdamW beta1")
    adam_beta2: float = HfArg(default=0.98, help="AdamW beta2")
    max_grad_norm: float = HfArg(default=1.0, help="gradient clipping norm (0: off)")
    per_device_batch_size: int = HfArg(default=16, help="windows per process and micro-batch")
    gradient_accumulation_steps: int = HfArg(default=1, help="micro-batches per optimizer step")
    mixed_precision: Literal["no", "fp16", "bf16"] = HfArg(
        default="no", help="autocast precision (`accelerate launch --mixed_precision` takes precedence)")
    seed: int = HfArg(default=0, help="seed of the split, initialization, data order and augmentation")
    eval_every: int = HfArg(default=200, help="evaluate on the validation split every this many steps")
    eval_max_batches: int | None = HfArg(default=50, help="validation batches per evaluation at most "
                                                          "(none: all)")
    save_every: int = HfArg(default=200, help="save a checkpoint every this many steps")
    keep_checkpoints: int = HfArg(default=2, help="checkpoints kept (the oldest are deleted)")
    log_every: int = HfArg(default=10, help="log the training loss every this many steps")
    log_with: str | None = HfArg(default="tensorboard", help="accelerate tracker (none: no tracking)")
    output_dir: str = HfArg(default="outputs/run", help="the final model and tokenizer; checkpoint-N folders, "
                                                        "logs beside them")
    push_to_hub: str | None = HfArg(default=None, help="push the final model to this Hub repo (namespace/name)")
    hub_private: bool = HfArg(default=False, help="create the Hub repo private")

    def __post_init__(self) -> None:
        self.lora_target_modules = [m for item in self.lora_target_modules for m in item.split(",") if m]


@dataclass
class SamplingArguments:
    """Sampling defaults: a run writes them to its model's generation_config.json, which generation reads."""

    _argument_group_name = "sampling"

    temperature: float | None = HfArg(default=1.0, help="sampling temperature (none: the model's)")
    top_k: int | None = HfArg(default=0, help="sample among the k likeliest tokens (0: off; none: the model's)")
    top_p: float | None = HfArg(default=0.95, help="sample within this probability mass (1: off; none: the "
                                                   "model's)")


# sampling settings that generation reads from the model's generation_config.json
MODEL_SAMPLING = {f.name: None for f in dataclasses.fields(SamplingArguments)}


@dataclass
class TrainConfig:
    """A run's settings, shaped like the YAML files in scripts/configs/: data, training and sampling keys at the
    top, MusicConfig settings under `model:`."""

    data: DataArguments = dataclasses.field(default_factory=DataArguments)
    model: ModelArguments = dataclasses.field(default_factory=ModelArguments)
    training: RunArguments = dataclasses.field(default_factory=RunArguments)
    sampling: SamplingArguments = dataclasses.field(default_factory=SamplingArguments)

    @staticmethod
    def argument_types() -> tuple[type, ...]:
        """The section dataclasses in field order (for HfArgumentParser; `TrainConfig(*parsed)` rebuilds one)."""
        return DataArguments, ModelArguments, RunArguments, SamplingArguments

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config") -> TrainConfig:
        """A config from its YAML form; a key that is no setting is a ValueError naming it and `source`."""
        values = dict(values)
        model = values.pop("model", None) or {}
        model_keys = {f.name for f in dataclasses.fields(ModelArguments)}
        if not isinstance(model, Mapping):
            raise ValueError(f"{source}: `model:` must map MusicConfig settings to values, got {model!r}")
        if set(model) - model_keys:
            raise ValueError(f"{source}: unknown model setting(s) {sorted(set(model) - model_keys)} under `model:`; "
                             f"MusicConfig settings are: {', '.join(sorted(model_keys))}")
        flat = {f.name for t in (DataArguments, RunArguments, SamplingArguments) for f in dataclasses.fields(t)}
        unknown = set(values) - flat
        if unknown:
            hint = " (model settings go under `model:`)" if unknown & model_keys else ""
            raise ValueError(f"{source}: unknown config key(s) {sorted(unknown)}{hint}")
        return cls().replace(**values, **model)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> TrainConfig:
        return cls.from_dict(yaml.safe_load(Path(path).read_text()) or {}, str(path))

    def to_dict(self) -> dict[str, Any]:
        """The YAML form: what `from_dict` reads back, saved with each run."""
        return {**dataclasses.asdict(self.data), "model": self.model.settings(),
                **dataclasses.asdict(self.training), **dataclasses.asdict(self.sampling)}

    def flat(self) -> dict[str, Any]:
        """Every setting by its command-line name."""
        return {k: v for part in dataclasses.fields(self)
                for k, v in dataclasses.asdict(getattr(self, part.name)).items()}

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with settings changed by their command-line names."""
        parts = {}
        for part in dataclasses.fields(self):
            section = getattr(self, part.name)
            own = {f.name: changes.pop(f.name) for f in dataclasses.fields(section) if f.name in changes}
            parts[part.name] = dataclasses.replace(section, **own)
        if changes:
            raise ValueError(f"unknown setting(s) {sorted(changes)}")
        return TrainConfig(**parts)


# ----- data -------------------------------------------------------------------------------------------
def _source(cfg: TrainConfig, progress: bool = True) -> tuple[Any, list[Any] | None, str]:
    """The run's pieces as (hf dataset, None) or (None, corpus/folder entries), with their default cache folder."""
    data = cfg.data
    if data.hf_dataset:
        import datasets
        ds = datasets.load_from_disk(data.hf_dataset)
        ds = ds["train"] if isinstance(ds, datasets.DatasetDict) else ds
        return ds, None, os.path.join(data.hf_dataset, "..", "music_hf_tokenized")
    if data.midi_dir:
        entries = read_midi_folder(data.midi_dir, labels=data.labels_file)
        if not entries:
            raise ValueError(f"{data.midi_dir}: no MIDI files found (suffixes {', '.join(MIDI_SUFFIXES)})")
        return None, entries, os.path.join(data.midi_dir, ".music_hf_cache")
    summary = prepare_corpus(output_dir=data.corpus_dir, collections=data.corpus_collections,
                             max_pieces_per_collection=data.max_pieces_per_collection,
                             num_workers=data.num_proc, progress=progress)
    return None, summary.entries, os.path.join(summary.output_dir, "..", "datasets")


def load_pieces(cfg: TrainConfig, progress: bool = True) -> tuple[Any, list[str], str, str]:
    """The pieces dataset, the genre names (index 0 "unknown"), its music column and its cache folder."""
    data = cfg.data
    ds, entries, cache = _source(cfg, progress)
    if ds is not None:
        pieces, column = pieces_from_hf_dataset(ds, data.hf_midi_column, data.hf_genre_column), "midi_bytes"
    else:
        pieces, column = pieces_from_entries(entries), "path"
    return pieces, genre_names(pieces["genre"]), column, data.cache_dir or cache


def build_tokenizer(cfg: TrainConfig, pieces: Any = None, column: str = "path") -> MusicTokenizer:
    """The run's tokenizer: loaded from `tokenizer_path` or else `init_from`, else REMI+ (with BPE learned on train
    pieces if asked)."""
    if cfg.data.tokenizer_path:
        return MusicTokenizer.from_pretrained(cfg.data.tokenizer_path)
    if cfg.training.init_from:
        tokenizer = MusicTokenizer.from_pretrained(cfg.training.init_from)
        return tokenizer.with_composition_tokens() if cfg.training.add_composition_tokens else tokenizer
    tokenizer = MusicTokenizer()
    if cfg.data.bpe_vocab_size and pieces is not None and column == "path":
        tokenizer.train_bpe(cfg.data.bpe_vocab_size, pieces[column])
    return tokenizer


def run_genres(cfg: TrainConfig, genres: Sequence[str]) -> list[str]:
    """The run's genre names by id: the data's (`genre_names`), or with `init_from` the saved model's genres in its
    id order followed by the data's new ones (`merge_genres`), so that data genre ids are the model's."""
    if not cfg.training.init_from:
        return list(genres)
    return merge_genres(model_genres(init_config(cfg.training.init_from)), genres)


def init_config(path: str) -> MusicConfig:
    """The MusicConfig saved in `init_from`; a ValueError for a folder or repo of another model type."""
    model_type = MusicConfig.get_config_dict(path)[0].get("model_type")
    if model_type != MusicConfig.model_type:
        raise ValueError(f"init_from {path}: not a music model (model_type {model_type!r}); fine-tuning starts "
                         "from a saved MusicForCausalLM")
    return MusicConfig.from_pretrained(path)


def build_datasets(cfg: TrainConfig, tokenizer: MusicTokenizer | None = None, progress: bool = True
                   ) -> tuple[MusicTokenizer, list[str], Any, DataSummary, dict[str, Any]]:
    """Tokenizer, genres, tokenized pieces (DatasetDict), summary, and windows per split."""
    data = cfg.data
    pieces, genres, column, cache = load_pieces(cfg, progress)
    genres = run_genres(cfg, genres)
    tokenizer = tokenizer or build_tokenizer(cfg, pieces, column)
    ds, summary = load_or_tokenize(pieces, tokenizer, genres, cache_dir=cache, music_column=column,
                                   num_proc=data.num_proc, seed=cfg.training.seed,
                                   validation_fraction=data.validation_fraction, test_fraction=data.test_fraction)
    windows = {name: make_windows(split, tokenizer, data.max_length, data.overlap, data.pack)
               for name, split in ds.items() if len(split)}
    return tokenizer, genres, ds, summary, windows


def build_streams(cfg: TrainConfig, rank: int = 0, world_size: int = 1, progress: bool = True
                  ) -> tuple[MusicTokenizer, list[str], dict[str, Any]]:
    """Tokenizer, genres and streamed windows per split (`streaming_windows`): this process's share of the pieces,
    split as `build_datasets` splits them."""
    data = cfg.data
    if data.bpe_vocab_size and not (data.tokenizer_path or cfg.training.init_from):
        raise ValueError("streaming learns no BPE (it sees no pieces ahead): pass tokenizer_path of a BPE tokenizer")
    ds, entries, _ = _source(cfg, progress)
    if ds is not None:
        source: dict[str, Any] = {"dataset": ds, "midi_column": data.hf_midi_column,
                                  "genre_column": data.hf_genre_column}
        labels = ds[data.hf_genre_column] if data.hf_genre_column else []
    else:
        source, labels = {"entries": entries}, [e.genre for e in entries]
    genres = run_genres(cfg, genre_names(labels))
    tokenizer = build_tokenizer(cfg)
    streams = {split: streaming_windows(tokenizer, genres, data.max_length, data.overlap, split=split,
                                        validation_fraction=data.validation_fraction,
                                        test_fraction=data.test_fraction, seed=cfg.training.seed,
                                        buffer_size=data.shuffle_buffer, rank=rank, world_size=world_size, **source)
               for split in ("train", "validation")}
    return tokenizer, genres, streams


def train_collator(cfg: TrainConfig, tokenizer: MusicTokenizer) -> MusicDataCollator:
    aug = cfg.data.augmentation()
    augmenter = TokenAugmenter(tokenizer, aug) if aug.enabled else None
    return MusicDataCollator(tokenizer.pad_token_id, augmenter=augmenter, seed=cfg.training.seed, tokenizer=tokenizer,
                             fim_rate=cfg.data.fim_rate, control_dropout=cfg.data.control_dropout,
                             genre_dropout=cfg.data.genre_dropout, fim_order=cfg.data.fim_order,
                             fim_max_bars=cfg.data.fim_max_bars)


class EpochSampler(torch.utils.data.Sampler[int]):
    """A permutation per epoch from (seed, epoch): the same order in every run, resumable without RNG state.

    `multiple_of` (the global batch: per-device batch x processes x accumulation steps) drops the tail of each
    permutation, so every optimizer step takes whole batches of one epoch and no process repeats windows to even
    out the last batch: any split of the global batch over processes and accumulation sees the same windows.
    """

    def __init__(self, length: int, seed: int = 0, multiple_of: int = 1):
        self.length, self.seed, self.epoch = length, seed, 0
        self.num_samples = length - length % max(1, multiple_of)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.length)
        return iter(order[: self.num_samples].tolist())

    def __len__(self) -> int:
        return self.num_samples


# ----- model ------------------------------------------------------------------------------------------
def build_model(cfg: TrainConfig, tokenizer: MusicTokenizer, genres: Sequence[str]) -> nn.Module:
    """A fresh model for the run: MusicForCausalLM, or GPT-2 of the same sizes as a baseline."""
    config = MusicConfig.from_tokenizer(tokenizer, genres=list(genres), **cfg.model.settings())
    if cfg.training.architecture == "music":
        return MusicForCausalLM(config)
    if cfg.training.architecture != "gpt2":
        raise ValueError(f"architecture must be 'music' or 'gpt2', got {cfg.training.architecture!r}")
    from transformers import GPT2Config, GPT2LMHeadModel
    return GPT2LMHeadModel(GPT2Config(
        vocab_size=len(tokenizer), n_positions=config.max_position_embeddings, n_embd=config.hidden_size,
        n_layer=config.num_hidden_layers, n_head=config.num_attention_heads, n_inner=config.intermediate_size,
        resid_pdrop=config.hidden_dropout, embd_pdrop=config.embedding_dropout, attn_pdrop=config.attention_dropout,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))


# model settings a fine-tuning run may change on the saved model: they change no weight's shape or meaning
FINE_TUNING_SETTINGS = {"embedding_dropout", "attention_dropout", "hidden_dropout", "classifier_dropout", "use_cache"}


def load_init_model(cfg: TrainConfig, tokenizer: MusicTokenizer, genres: Sequence[str]) -> MusicForCausalLM:
    """The saved model of `init_from`, to fine-tune: its weights and sizes (model settings other than the dropouts
    that differ from its own are ignored with a warning), float32. `genres` (`run_genres`: its genres in id order,
    then new ones) that it does not know get new genre-embedding rows (`add_genres`); the tokenizer must have its
    vocabulary size."""
    run = cfg.training
    path = run.init_from
    if run.architecture != "music":
        raise ValueError(f"init_from loads a MusicForCausalLM: architecture must be 'music', got {run.architecture!r}")
    config = init_config(path)
    settings = cfg.model.settings()
    applied = {k: v for k, v in settings.items() if k in FINE_TUNING_SETTINGS}
    ignored = {k: v for k, v in settings.items() if k not in applied and getattr(config, k) != v}
    if ignored:
        logger.warning("init_from %s: ignoring model settings %s (the saved model has %s)", path, ignored,
                       {k: getattr(config, k) for k in ignored})
    model = MusicForCausalLM.from_pretrained(path, dtype=torch.float32, **applied)
    if run.add_composition_tokens and len(tokenizer) != model.config.vocab_size:
        saved = MusicTokenizer.from_pretrained(path)
        model = remap_vocabulary(model, saved, tokenizer)
        logger.info("init_from %s: composition tokens added, vocabulary %d -> %d ids", path, len(saved), len(tokenizer))
    if len(tokenizer) != model.config.vocab_size:
        source = f"tokenizer_path {cfg.data.tokenizer_path}" if cfg.data.tokenizer_path else f"the tokenizer in {path}"
        raise ValueError(f"{source} has {len(tokenizer)} ids but the model in init_from {path} has vocab_size "
                         f"{model.config.vocab_size}: fine-tune with the tokenizer the model was trained with")
    known = model_genres(model.config)
    if list(genres[: len(known)]) != known:
        raise ValueError(f"init_from {path}: the run's genres {list(genres)} do not start with the model's {known} "
                         "(build them with run_genres)")
    added = add_genres(model, genres)
    if added:
        logger.info("init_from %s: new genres %s get ids %s", path, added,
                    list(range(len(known), len(known) + len(added))))
    return model


def remap_vocabulary(model: MusicForCausalLM, old: MusicTokenizer, new: MusicTokenizer) -> MusicForCausalLM:
    """`model`, trained with tokenizer `old`, carried over to tokenizer `new` (`with_composition_tokens`): a model of
    the same settings and genres whose per-id attribute tables are `new`'s and whose token rows (the input embedding
    and the output layer) are taken from `old`'s row of the same token; `new`'s other tokens get rows drawn as at
    initialisation. Every token of `old` must be in `new` (a ValueError names those that are not)."""
    old_vocab, new_vocab = old.get_vocab(), new.get_vocab()
    if len(old_vocab) != model.config.vocab_size:
        raise ValueError(f"the model has vocab_size {model.config.vocab_size}, its tokenizer {len(old_vocab)} ids")
    lost = sorted(set(old_vocab) - set(new_vocab))
    if lost:
        raise ValueError(f"the new tokenizer lacks {len(lost)} of the model's tokens ({', '.join(lost[:5])}...)")
    fresh = MusicConfig.from_tokenizer(new)
    config = copy.deepcopy(model.config)
    for name in SET_BY_TOKENIZER - {"id2genre"}:
        setattr(config, name, getattr(fresh, name))
    out = MusicForCausalLM(config).to(model.dtype)
    state = out.state_dict()
    rows_old = torch.tensor([old_vocab[t] for t in old_vocab])
    rows_new = torch.tensor([new_vocab[t] for t in old_vocab])
    for key, value in model.state_dict().items():
        if value.shape[:1] == (len(old_vocab),) and state[key].shape[:1] == (len(new_vocab),):
            value = state[key].clone().index_copy_(0, rows_new, value[rows_old])
        state[key] = value
    out.load_state_dict(state)
    out.tie_weights()
    return out


def lora_model(model: MusicForCausalLM, run: RunArguments, genres_added: bool = False) -> nn.Module:
    """`model` wrapped for LoRA training (`peft.get_peft_model`): adapters of rank `lora_r` on
    `lora_target_modules`, the rest frozen, except the genre embedding when genres were added (`modules_to_save`:
    trained and saved whole with the adapter)."""
    try:
        import peft
    except ImportError as e:
        raise ImportError("lora_r needs peft: pip install peft") from e
    train_genres = genres_added and model.config.use_genre_embedding
    config = peft.LoraConfig(r=run.lora_r, lora_alpha=run.lora_alpha or 2 * run.lora_r,
                             lora_dropout=run.lora_dropout, target_modules=list(run.lora_target_modules),
                             modules_to_save=[GENRE_MODULE] if train_genres else None, task_type="CAUSAL_LM")
    return peft.get_peft_model(model, config)


def model_inputs(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch keys this model's forward takes (GPT-2 baselines get no genre_ids)."""
    config = getattr(model, "config", None) or model.module.config
    if getattr(config, "model_type", "") == "music":
        return batch
    return {k: v for k, v in batch.items() if k != "genre_ids"}


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices of linear and conv layers only (not norms, biases, embeddings)."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            is_matrix = name == "weight" and isinstance(module, (nn.Linear, nn.Conv1d)) or \
                type(module).__name__ == "Conv1D"  # GPT-2's linear layers
            (decay if is_matrix and name == "weight" else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def l1_norm(params: Iterable[torch.Tensor]) -> torch.Tensor:
    return sum(p.abs().sum() for p in params)


def lr_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, max_steps: int,
                 min_lr_rate: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup, then cosine decay to `min_lr_rate` x the peak learning rate (transformers' schedule)."""
    return get_scheduler("cosine_with_min_lr", optimizer, num_warmup_steps=warmup_steps,
                         num_training_steps=max_steps, scheduler_specific_kwargs={"min_lr_rate": min_lr_rate})


# ----- evaluation -------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: nn.Module, dataloader: Iterable[dict[str, torch.Tensor]], note_counts: Sequence[int],
             accelerator: Any = None, max_batches: int | None = None, lockstep: bool = False) -> dict[str, float]:
    """Loss (NLL per token), perplexity, next-token accuracy and NLL per note over a dataloader.

    NLL per note is the summed NLL over the summed number of notes among the predicted tokens: comparable
    across tokenizations. Sums are gathered across processes when an accelerator is given. `lockstep` (sharded
    weights: FSDP, DeepSpeed, where every forward pass is a collective operation): all processes run as many
    forward passes, a process out of batches repeating its last one (or a 1-token one) uncounted.
    """
    was_training = model.training
    model.eval()
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    notes_table = None
    totals = torch.zeros(4, dtype=torch.float64)  # nll, tokens, correct, notes
    batches, filler = iter(dataloader), {"input_ids": torch.zeros((1, 1), dtype=torch.long)}
    for i in itertools.count():
        batch = next(batches, None) if max_batches is None or i < max_batches else None
        if lockstep and accelerator.reduce(torch.tensor(float(batch is not None), device=device), "sum").item():
            if batch is None:  # the others still evaluate: take part in their forward pass
                model(**{k: v.to(device) for k, v in model_inputs(model, filler).items() if k != "labels"})
                continue
        elif batch is None:
            break
        filler = batch
        batch = {k: v.to(device) for k, v in batch.items()}  # a plain (unprepared) loader yields CPU tensors
        logits = model(**{k: v for k, v in model_inputs(model, batch).items() if k != "labels"}).logits
        labels = batch["labels"][:, 1:]
        logits = logits[:, :-1].float()
        mask = labels != -100
        safe = labels.clamp(min=0)
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), safe, reduction="none")
        if notes_table is None:
            notes_table = torch.tensor(note_counts, device=labels.device, dtype=torch.float64)
        stats = torch.stack([
            (nll.double() * mask).sum(), mask.sum().double(),
            ((logits.argmax(-1) == labels) & mask).sum().double(), (notes_table[safe] * mask).sum()])
        totals = totals.to(stats.device) + stats
    if accelerator is not None:
        totals = accelerator.reduce(totals, reduction="sum")
    model.train(was_training)
    nll, tokens, correct, notes = totals.tolist()
    loss = nll / max(tokens, 1.0)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "accuracy": correct / max(tokens, 1.0),
            "nll_per_note": nll / max(notes, 1.0), "tokens": tokens, "notes": notes}


# ----- the loop ---------------------------------------------------------------------------------------
class TrainState:
    """Step and epoch counters saved with every checkpoint (accelerate's `register_for_checkpointing`)."""

    def __init__(self) -> None:
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]


CHECKPOINT_DONE = "checkpoint_complete"  # written once every process has saved: a folder without it was cut short


def checkpoints(output_dir: Path) -> list[Path]:
    """Complete `checkpoint-N` folders, oldest first (a run killed while saving leaves one that is skipped)."""
    found = [p for p in output_dir.glob("checkpoint-*") if (p / CHECKPOINT_DONE).is_file()]
    return sorted(found, key=lambda p: int(re.sub(r"\D", "", p.name)))


def fsdp_on_cpu(accelerator: Any) -> None:
    """Shard the model with FSDP2 in a CPU run (gloo) launched with an FSDP config (scripts/configs/accelerate/
    fsdp_cpu.yaml): accelerate 1.15 makes a launch with ACCELERATE_USE_FSDP an FSDP run only on accelerator devices
    (`AcceleratorState.__init__` looks for the FSDP plugin only when the distributed type is MULTI_GPU, MULTI_XPU...,
    not MULTI_CPU), so on CPU the same launch silently trains as plain DDP. torch's FSDP2 (`fully_shard`) runs on
    CPU over gloo: the state is switched to FSDP, with the plugin accelerate builds from the launcher's FSDP_*
    environment. Anything else is left alone."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if accelerator.distributed_type != DistributedType.MULTI_CPU or \
            os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return
    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise SystemExit("FSDP on CPU needs fsdp_version: 2 (FSDP2, torch's fully_shard) in the accelerate config: "
                         "see scripts/configs/accelerate/fsdp_cpu.yaml")
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    accelerator.state.fsdp_plugin = plugin
    accelerator.state.distributed_type = DistributedType.FSDP  # AcceleratorState's shared state...
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # ...and PartialState's
    logger.info("FSDP2 on CPU over %s: %d processes", accelerator.state.backend, accelerator.num_processes)


def unsharded_class(model: nn.Module) -> type[nn.Module]:
    """The model's own class: FSDP2's `fully_shard` turns a model's class into a subclass `FSDP<Name>` of it."""
    from torch.distributed.fsdp import FSDPModule

    return next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))


def train(cfg: TrainConfig, stop_after: int | None = None, resume: str | None = None) -> dict[str, Any]:
    """Train with a plain Accelerate loop (one process or many: DDP, FSDP, DeepSpeed through `accelerate launch`).

    The final model, tokenizer and generation config land in `output_dir`, checkpoints in `output_dir/checkpoint-N`.
    With `init_from` the run fine-tunes that saved model (`load_init_model`); with `lora_r` too, it trains a LoRA
    adapter of it (`lora_model`) and `output_dir` holds only the adapter (`music_hf.adapters.load_adapter`).
    `stop_after` ends after that many optimizer steps with a checkpoint, the schedule unchanged; `resume` ("latest"
    or a checkpoint folder) continues from a checkpoint. Returns the step reached, the last training loss, the
    last evaluation's metrics and the process count.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, ProjectConfiguration, set_seed
    from torch.utils.data import DataLoader, Subset
    from tqdm.auto import tqdm

    run = cfg.training
    if run.lora_r and not run.init_from:
        raise ValueError("lora_r trains an adapter of a saved model: pass init_from (its folder or Hub repo)")
    if run.lora_r and run.push_to_hub:
        raise ValueError("push_to_hub publishes a whole model; a LoRA run saves only its adapter: upload output_dir "
                         "with `hf upload` instead")
    out = Path(run.output_dir)
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    accelerator = Accelerator(
        mixed_precision=None if os.environ.get("ACCELERATE_MIXED_PRECISION") else run.mixed_precision,
        step_scheduler_with_optimizer=False,  # the schedule counts optimizer steps, whatever the process count
        log_with=run.log_with, project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        # a multi-process launch on a machine without GPU trains on CPU over gloo (as with ACCELERATE_USE_CPU=1),
        # not as processes that each train alone (accelerate's DistributedType.NO); DeepSpeed picks its own
        cpu=int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available() and not deepspeed,
    )
    if deepspeed and accelerator.distributed_type != DistributedType.DEEPSPEED:
        raise SystemExit(f"launched with a DeepSpeed config but accelerate set up {accelerator.distributed_type}: it "
                         "enables DeepSpeed only without ACCELERATE_USE_CPU / use_cpu (accelerate/state.py)")
    fsdp_on_cpu(accelerator)
    # sharded weights: forward passes (evaluation) are collective, the final model is gathered from all processes
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    set_seed(run.seed)

    # data: the main process prepares the corpus and the Arrow cache first, the others then read them
    streaming = cfg.data.streaming
    summary = None
    with accelerator.main_process_first():
        if streaming:  # each process streams its own pieces: nothing is tokenized ahead
            tokenizer, genres, windows = build_streams(cfg, accelerator.process_index, accelerator.num_processes,
                                                       progress=accelerator.is_main_process)
        else:
            tokenizer, genres, _, summary, windows = build_datasets(cfg, progress=accelerator.is_main_process)
            logger.info("data:\n%s", summary)
    if "train" not in windows:
        raise SystemExit("no training pieces: check the data settings")
    train_windows = windows["train"]
    eval_windows = windows.get("validation") or windows.get("test")

    genres_added = False
    if run.init_from:
        model = load_init_model(cfg, tokenizer, genres)
        genres_added = len(genres) > init_config(run.init_from).num_genres
    else:
        model = build_model(cfg, tokenizer, genres)
    if cfg.data.fim_rate and isinstance(model, MusicForCausalLM):  # infilling prompts follow the trained layout
        model.config.infill_order = cfg.data.fim_order
    if run.gradient_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    if run.lora_r:  # after checkpointing is on: PEFT then makes the frozen embeddings' output require grad
        model = lora_model(model, run, genres_added)
    n_params = sum(p.numel() for p in model.parameters())
    n_trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("model: %s%s, %.2fM parameters (%s trained); %s training windows", run.architecture,
                f" from {run.init_from}" + (f" + LoRA r={run.lora_r}" if run.lora_r else "") if run.init_from else "",
                n_params / 1e6, f"{n_trained:,}", "streamed" if streaming else len(train_windows))

    collator = train_collator(cfg, tokenizer)
    if streaming:  # already this process's share: the loader is not prepared (accelerate would shard it again)
        sampler = None
        train_loader = DataLoader(train_windows, batch_size=run.per_device_batch_size, collate_fn=collator,
                                  drop_last=True)
    else:
        sampler = EpochSampler(len(train_windows), run.seed, multiple_of=run.per_device_batch_size *
                               accelerator.num_processes * run.gradient_accumulation_steps)
        train_loader = DataLoader(train_windows, batch_size=run.per_device_batch_size, sampler=sampler,
                                  collate_fn=collator, drop_last=True,
                                  # its own generator: creating an iterator then draws nothing from the global
                                  # RNG, so dropout after a resume sees the same random stream as an unbroken run
                                  generator=torch.Generator().manual_seed(run.seed))
        if len(train_loader) < accelerator.num_processes * run.gradient_accumulation_steps:
            raise SystemExit(f"too few training windows ({len(train_windows)}) for batch size "
                             f"{run.per_device_batch_size} x {accelerator.num_processes} processes")
    optimizer = torch.optim.AdamW(parameter_groups(model, run.weight_decay), lr=run.learning_rate,
                                  betas=(run.adam_beta1, run.adam_beta2))
    scheduler = lr_scheduler(optimizer, run.warmup_steps, run.max_steps, run.min_lr_rate)
    if streaming:
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    else:
        model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    state = TrainState()
    accelerator.register_for_checkpointing(state)

    # evaluation: each process takes every n-th window, sums are reduced across processes
    eval_loader = None
    if streaming:  # this process's validation pieces
        eval_loader = DataLoader(eval_windows, batch_size=run.per_device_batch_size,
                                 collate_fn=MusicDataCollator(tokenizer.pad_token_id))
    elif eval_windows is not None and len(eval_windows):
        shard = Subset(eval_windows, range(accelerator.process_index, len(eval_windows), accelerator.num_processes))
        eval_loader = DataLoader(shard, batch_size=run.per_device_batch_size,
                                 collate_fn=MusicDataCollator(tokenizer.pad_token_id))
    note_counts = tokenizer.music_attributes()["note_count"]

    if resume:
        found = checkpoints(out)
        path = Path(resume) if resume != "latest" else found[-1] if found else None
        if path is None:
            logger.warning("resume: no checkpoint in %s, starting from scratch", out)
        else:
            accelerator.load_state(str(path))
            logger.info("resumed from %s at step %d", path, state.step)

    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    if run.log_with:
        accelerator.init_trackers("music-hf", {k: v for k, v in cfg.flat().items()
                                               if isinstance(v, (int, float, str, bool))})

    def save_checkpoint() -> None:
        path = out / f"checkpoint-{state.step}"
        if accelerator.is_main_process:
            (path / CHECKPOINT_DONE).unlink(missing_ok=True)  # overwriting: incomplete until saved again
        accelerator.save_state(str(path))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (path / CHECKPOINT_DONE).touch()
            for old in checkpoints(out)[: -run.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)

    last_step = run.max_steps if stop_after is None else min(run.max_steps, state.step + stop_after)
    decay_params = [p for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]]
    accum = run.gradient_accumulation_steps
    progress = tqdm(total=run.max_steps, initial=state.step, disable=not accelerator.is_local_main_process,
                    desc="training", mininterval=0.5 if sys.stderr.isatty() else 30.0)  # a log file gets a line / 30 s
    history: list[dict[str, float]] = []
    metrics: dict[str, float] = {}
    model.train()
    t0, tokens_seen = time.time(), 0

    def streamed_batches():
        """Micro-batches of this process's stream from where the run stands (an epoch's batches are skipped
        again on resume), on the device; each epoch reshuffles."""
        while True:
            train_windows.set_epoch(state.epoch)
            collator.epoch = state.epoch
            seen = 0
            for seen, batch in enumerate(train_loader, start=1):
                if seen > state.batch_in_epoch:
                    state.batch_in_epoch += 1
                    yield {k: v.to(accelerator.device) for k, v in batch.items()}
            if seen == 0:
                raise SystemExit(f"process {accelerator.process_index} streamed no training batch: too few "
                                 f"pieces for {accelerator.num_processes} processes x batch size "
                                 f"{run.per_device_batch_size}")
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0

    def batches():
        """Micro-batches from where the run stands, across epochs, in the same order as an unbroken run."""
        while True:
            loader = accelerator.skip_first_batches(train_loader, state.batch_in_epoch) \
                if state.batch_in_epoch else train_loader
            loader.set_epoch(state.epoch)  # accelerate passes it on to the EpochSampler at each iteration...
            sampler.set_epoch(state.epoch)  # ...except through skip_first_batches' wrapper with several processes
            collator.epoch = state.epoch
            for batch in loader:
                state.batch_in_epoch += 1
                yield batch
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0

    stream = streamed_batches() if streaming else batches()
    while state.step < last_step:
        micro = [next(stream) for _ in range(accum)]
        # the loss is a sum over tokens divided by the tokens of the whole step, over all micro-batches and
        # processes; DDP averages gradients over processes, hence the factor num_processes
        local_tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
        step_tokens = accelerator.reduce(torch.tensor(local_tokens, device=accelerator.device), "sum").item()
        step_loss = 0.0
        for i, batch in enumerate(micro):
            sync = accelerator.no_sync(model) if i < accum - 1 else contextlib.nullcontext()
            with sync:
                with accelerator.autocast():
                    outputs = model(**model_inputs(model, batch), num_items_in_batch=step_tokens)
                loss = outputs.loss * accelerator.num_processes
                if run.l1_penalty:
                    loss = loss + run.l1_penalty * l1_norm(decay_params) / accum
                accelerator.backward(loss)
                step_loss += outputs.loss.detach().float().item()
        if run.max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), run.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        tokens_seen += step_tokens
        step_loss = accelerator.reduce(torch.tensor(step_loss, device=accelerator.device), "sum").item()
        progress.update(1)
        progress.set_postfix(loss=f"{step_loss:.3f}", refresh=False)  # shown at the next update (mininterval)
        history.append({"step": state.step, "loss": step_loss})
        if accelerator.is_main_process:  # written as it happens, so a killed run keeps its log (a resume
            with (out / "train_log.jsonl").open("a") as f:  # appends the steps it redoes again)
                f.write(json.dumps(history[-1]) + "\n")
        if state.step % run.log_every == 0 or state.step == 1:
            accelerator.log({"train/loss": step_loss, "train/lr": scheduler.get_last_lr()[0],
                             "train/tokens_per_s": tokens_seen / max(time.time() - t0, 1e-9)}, step=state.step)
        if eval_loader is not None and (state.step % run.eval_every == 0 or state.step == run.max_steps):
            # streamed shards differ in length: the unwrapped model runs no collective op per batch (DDP); a
            # sharded one does, so the processes evaluate in lockstep
            metrics = evaluate(accelerator.unwrap_model(model) if streaming else model, eval_loader, note_counts,
                               accelerator, run.eval_max_batches, lockstep=sharded)
            accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=state.step)
            logger.info("step %d eval %s", state.step, {k: round(v, 4) for k, v in metrics.items()})
        if state.step % run.save_every == 0 or state.step == last_step:
            save_checkpoint()
    progress.close()

    accelerator.wait_for_everyone()
    if state.step >= run.max_steps:
        unwrapped = accelerator.unwrap_model(model)
        # sharded weights are gathered by all processes into the main one's full state dict (the others get
        # an empty one); with DDP or one process each holds the full model and save_pretrained reads it itself
        full_state = accelerator.get_state_dict(model) if sharded else None
        if accelerator.is_main_process:
            base = unwrapped.get_base_model() if run.lora_r else unwrapped  # a PeftModel's MusicForCausalLM
            base.generation_config.update(do_sample=True, **dataclasses.asdict(cfg.sampling))
            if run.lora_r:  # the adapter alone (new genre rows included), and the genres it knows
                unwrapped.save_pretrained(out, save_embedding_layers=False, state_dict=full_state)
                base.generation_config.save_pretrained(out)
                (out / GENRES_FILE).write_text(json.dumps({"id2genre": base.config.id2genre}, indent=2))
            elif sharded:  # an unsharded copy of the model's own class saves it: FSDP2 re-classes the model
                # (FSDPMusicForCausalLM, made in torch), whose save_pretrained would copy torch's FSDP sources as
                # the custom code instead of modeling_music.py
                plain = unsharded_class(unwrapped)(unwrapped.config)
                plain.load_state_dict(full_state)
                plain.generation_config = base.generation_config
                plain.save_pretrained(out)
            else:
                unwrapped.save_pretrained(out)
            tokenizer.save_pretrained(out)
            (out / "training_results.json").write_text(json.dumps({
                "eval": metrics, "steps": state.step, "train_loss": history[-1]["loss"] if history else None,
                "data": {"pieces": summary.pieces, "tokens": summary.tokens, "genres": summary.genres,
                         "skipped": len(summary.failed)} if summary is not None else {"streamed": True},
                "config": cfg.to_dict(), "parameters": sum(p.numel() for p in unwrapped.parameters()),
                "trained_parameters": sum(p.numel() for p in unwrapped.parameters() if p.requires_grad),
                "processes": accelerator.num_processes}, indent=2))
            logger.info("%s, tokenizer and generation config saved to %s", "LoRA adapter" if run.lora_r else "model",
                        out)
            if run.push_to_hub:
                from .hub import push_model_dir
                url = push_model_dir(out, run.push_to_hub, private=run.hub_private)
                logger.info("pushed to %s", url)
    else:
        logger.info("stopped after step %d of %d (resume with --resume)", state.step, run.max_steps)
    # what refers to the process group (a sharded model's DTensors and its optimizer's state, the prepared loaders)
    # is let go and collected while the interpreter is fully alive and every process is still in the group, not
    # in interpreter finalization after the group is gone (a resumed 2-process FSDP2 run on CPU aborted once at
    # exit, "terminate called without an active exception", after its final save)
    model = optimizer = scheduler = train_loader = eval_loader = unwrapped = full_state = None
    accelerator.free_memory()
    # every process leaves together: one that tears its process group down while the main one still saves can
    # block in gloo's teardown after the main one has exited (seen once, a 2-process CPU run on a loaded machine)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {"step": state.step, "final_train_loss": history[-1]["loss"] if history else None, "eval": metrics,
            "processes": accelerator.num_processes}


__all__ = ["DataArguments", "ModelArguments", "RunArguments", "SamplingArguments", "MODEL_SAMPLING", "TrainConfig",
           "load_pieces", "build_tokenizer", "run_genres", "build_datasets", "train_collator", "EpochSampler",
           "build_model", "init_config", "load_init_model", "lora_model", "model_inputs", "parameter_groups",
           "l1_norm", "lr_scheduler", "evaluate", "checkpoints", "fsdp_on_cpu",
           "unsharded_class", "train"]
