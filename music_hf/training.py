"""What the training and evaluation scripts share: the run config, data and model building, the optimizer's
parameter groups, the epoch-seeded sampler, and the evaluation metrics."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import types
import typing
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from .configuration_music import MusicConfig
from .corpus import prepare_corpus, read_midi_folder
from .data import (AugmentationConfig, DataSummary, MusicDataCollator, TokenAugmenter, load_or_tokenize,
                   make_windows, pieces_from_entries, pieces_from_hf_dataset)
from .modeling_music import MusicForCausalLM
from .tokenization_music import MusicTokenizer


@dataclass
class TrainConfig:
    """Every setting of a run; YAML files in scripts/configs/ set them and `--key value` overrides any."""

    # data
    corpus_collections: list[str] = field(default_factory=lambda: ["bach", "essenFolksong", "ryansMammoth"])
    max_pieces_per_collection: int | None = 200
    corpus_dir: str | None = None  # where converted corpus MIDI goes (default: ~/.cache/music_hf/corpus)
    midi_dir: str | None = None  # train on a folder of MIDI files instead of the corpus
    labels_file: str | None = None  # CSV/JSON genre labels for midi_dir
    hf_dataset: str | None = None  # a dataset saved with save_to_disk, with a MIDI-bytes column
    hf_midi_column: str = "midi"
    hf_genre_column: str | None = "genre"
    cache_dir: str | None = None  # Arrow cache of tokenized pieces (default: <corpus_dir>/../datasets)
    num_proc: int = 2
    validation_fraction: float = 0.05
    test_fraction: float = 0.05
    max_length: int = 256
    overlap: int = 32
    pack: bool = False
    # augmentation (training split only)
    pitch_shift: int = 0
    tempo_shift: int = 0
    velocity_jitter: int = 0
    duration_jitter: int = 0
    position_jitter: int = 0
    augment_probability: float = 1.0
    # tokenizer
    tokenizer_path: str | None = None
    bpe_vocab_size: int = 0
    # model
    architecture: str = "music"  # music | gpt2 (baseline without music embeddings)
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 512
    max_position_embeddings: int = 1024
    norm_type: str = "layernorm"
    conv_kernel_size: int = 0
    position_embedding_type: str = "learned"
    embedding_dropout: float = 0.1
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.1
    use_note_embedding: bool = True
    use_instrument_embedding: bool = True
    use_temporal_embedding: bool = True
    use_genre_embedding: bool = True
    gradient_checkpointing: bool = False
    # optimization
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    l1_penalty: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    max_grad_norm: float = 1.0
    warmup_steps: int = 100
    max_steps: int = 1000
    per_device_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"  # no | fp16 | bf16 (accelerate launch --mixed_precision takes precedence)
    # loop
    seed: int = 0
    eval_every: int = 200
    eval_max_batches: int | None = 50
    save_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10
    log_with: str | None = "tensorboard"
    output_dir: str = "outputs/run"
    push_to_hub: str | None = None
    hub_private: bool = False

    @classmethod
    def from_yaml(cls, path: str | os.PathLike | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
        values: dict[str, Any] = {}
        if path is not None:
            values = yaml.safe_load(Path(path).read_text()) or {}
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown config key(s) {sorted(unknown)}")
        values.update(overrides or {})
        return cls(**values)

    def augmentation(self) -> AugmentationConfig:
        return AugmentationConfig(pitch_shift=self.pitch_shift, tempo_shift=self.tempo_shift,
                                  velocity_jitter=self.velocity_jitter, duration_jitter=self.duration_jitter,
                                  position_jitter=self.position_jitter, probability=self.augment_probability)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _parse_value(text: str, annotation: Any) -> Any:
    """Turn a command-line string into the type a TrainConfig field declares."""
    if text.lower() in ("none", "null"):
        return None
    target = annotation if not isinstance(annotation, str) else eval(annotation, vars(typing), {})  # noqa: S307
    if typing.get_origin(target) in (typing.Union, types.UnionType):  # `int | None` -> int; list[str] stays a list
        target = next(a for a in typing.get_args(target) if a is not type(None))
    if typing.get_origin(target) is list:
        return [s for s in text.split(",") if s]
    if target is bool:
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"expected a boolean, got {text!r}")
        return text.lower() in ("true", "1", "yes")
    return target(text)


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """`--key value` pairs (or `--key=value`) for any TrainConfig field, typed by the field."""
    fields = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    out: dict[str, Any] = {}
    items = list(pairs)
    i = 0
    while i < len(items):
        item = items[i]
        if not item.startswith("--"):
            raise ValueError(f"unexpected argument {item!r}")
        key, eq, value = item[2:].partition("=")
        if not eq:
            if i + 1 >= len(items):
                raise ValueError(f"--{key} needs a value")
            value, i = items[i + 1], i + 1
        if key not in fields:
            raise ValueError(f"unknown option --{key}; config keys are: {', '.join(sorted(fields))}")
        try:
            out[key] = _parse_value(value, fields[key])
        except ValueError as e:
            raise ValueError(f"--{key} {value!r}: {e}") from None
        i += 1
    return out


def config_from_args(argv: Sequence[str] | None = None, description: str = "") -> tuple[argparse.Namespace,
                                                                                            TrainConfig]:
    """Parse the training command line: fixed flags plus `--<any config key> value` overrides."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=None, help="YAML file with TrainConfig keys")
    parser.add_argument("--stop_after", type=int, default=None,
                        help="end after N optimizer steps with a checkpoint, without changing the schedule")
    parser.add_argument("--resume", nargs="?", const="latest", default=None,
                        help="resume from the latest checkpoint in output_dir, or from PATH")
    args, rest = parser.parse_known_args(argv)
    try:
        cfg = TrainConfig.from_yaml(args.config, parse_overrides(rest))
    except (ValueError, TypeError, OSError) as e:
        parser.error(str(e))
    return args, cfg


# ----- data -------------------------------------------------------------------------------------------
def load_pieces(cfg: TrainConfig, progress: bool = True) -> tuple[Any, list[str], str, str]:
    """The pieces dataset, the genre names (index 0 "unknown"), its music column and its cache folder."""
    if cfg.hf_dataset:
        import datasets
        ds = datasets.load_from_disk(cfg.hf_dataset)
        ds = ds["train"] if isinstance(ds, datasets.DatasetDict) else ds
        pieces = pieces_from_hf_dataset(ds, cfg.hf_midi_column, cfg.hf_genre_column)
        column, cache = "midi_bytes", cfg.cache_dir or os.path.join(cfg.hf_dataset, "..", "music_hf_tokenized")
    elif cfg.midi_dir:
        entries = read_midi_folder(cfg.midi_dir, labels=cfg.labels_file)
        if not entries:
            raise ValueError(f"{cfg.midi_dir}: no .mid/.midi files found")
        pieces, column = pieces_from_entries(entries), "path"
        cache = cfg.cache_dir or os.path.join(cfg.midi_dir, ".music_hf_cache")
    else:
        summary = prepare_corpus(output_dir=cfg.corpus_dir, collections=cfg.corpus_collections,
                                 max_pieces_per_collection=cfg.max_pieces_per_collection,
                                 num_workers=cfg.num_proc, progress=progress)
        pieces, column = pieces_from_entries(summary.entries), "path"
        cache = cfg.cache_dir or os.path.join(summary.output_dir, "..", "datasets")
    genres = ["unknown"] + sorted({g for g in pieces["genre"] if g != "unknown"})
    return pieces, genres, column, cache


def build_tokenizer(cfg: TrainConfig, pieces: Any = None, column: str = "path") -> MusicTokenizer:
    """The run's tokenizer: loaded from `tokenizer_path`, else REMI+ (with BPE learned on train pieces if asked)."""
    if cfg.tokenizer_path:
        return MusicTokenizer.from_pretrained(cfg.tokenizer_path)
    tokenizer = MusicTokenizer()
    if cfg.bpe_vocab_size and pieces is not None and column == "path":
        tokenizer.train_bpe(cfg.bpe_vocab_size, pieces[column])
    return tokenizer


def build_datasets(cfg: TrainConfig, tokenizer: MusicTokenizer | None = None, progress: bool = True
                   ) -> tuple[MusicTokenizer, list[str], Any, DataSummary, dict[str, Any]]:
    """Tokenizer, genres, tokenized pieces (DatasetDict), summary, and windows per split."""
    pieces, genres, column, cache = load_pieces(cfg, progress)
    tokenizer = tokenizer or build_tokenizer(cfg, pieces, column)
    ds, summary = load_or_tokenize(pieces, tokenizer, genres, cache_dir=cache, music_column=column,
                                   num_proc=cfg.num_proc, seed=cfg.seed,
                                   validation_fraction=cfg.validation_fraction, test_fraction=cfg.test_fraction)
    windows = {name: make_windows(split, tokenizer, cfg.max_length, cfg.overlap, cfg.pack)
               for name, split in ds.items() if len(split)}
    return tokenizer, genres, ds, summary, windows


def train_collator(cfg: TrainConfig, tokenizer: MusicTokenizer) -> MusicDataCollator:
    aug = cfg.augmentation()
    augmenter = TokenAugmenter(tokenizer, aug) if aug.enabled else None
    return MusicDataCollator(tokenizer.pad_token_id, augmenter=augmenter, seed=cfg.seed)


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
    """A fresh model for the run: MusicForCausalLM, or GPT-2 of the same size as a baseline."""
    if cfg.architecture == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel
        return GPT2LMHeadModel(GPT2Config(
            vocab_size=len(tokenizer), n_positions=cfg.max_position_embeddings, n_embd=cfg.hidden_size,
            n_layer=cfg.num_hidden_layers, n_head=cfg.num_attention_heads, n_inner=cfg.intermediate_size,
            resid_pdrop=cfg.hidden_dropout, embd_pdrop=cfg.embedding_dropout, attn_pdrop=cfg.attention_dropout,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id))
    if cfg.architecture != "music":
        raise ValueError(f"architecture must be 'music' or 'gpt2', got {cfg.architecture!r}")
    config = MusicConfig.from_tokenizer(
        tokenizer, genres=list(genres), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings, norm_type=cfg.norm_type,
        conv_kernel_size=cfg.conv_kernel_size, position_embedding_type=cfg.position_embedding_type,
        embedding_dropout=cfg.embedding_dropout, attention_dropout=cfg.attention_dropout,
        hidden_dropout=cfg.hidden_dropout, use_note_embedding=cfg.use_note_embedding,
        use_instrument_embedding=cfg.use_instrument_embedding, use_temporal_embedding=cfg.use_temporal_embedding,
        use_genre_embedding=cfg.use_genre_embedding)
    return MusicForCausalLM(config)


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


def lr_lambda(warmup_steps: int, max_steps: int):
    """Linear warmup then cosine decay to 10% of the peak learning rate."""
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
    return f


# ----- evaluation -------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: nn.Module, dataloader: Iterable[dict[str, torch.Tensor]], note_counts: Sequence[int],
             accelerator: Any = None, max_batches: int | None = None) -> dict[str, float]:
    """Loss (NLL per token), perplexity, next-token accuracy and NLL per note over a dataloader.

    NLL per note is the summed NLL over the summed number of notes among the predicted tokens: comparable
    across tokenizations. Sums are gathered across processes when an accelerator is given.
    """
    was_training = model.training
    model.eval()
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    notes_table = None
    totals = torch.zeros(4, dtype=torch.float64)  # nll, tokens, correct, notes
    for i, batch in enumerate(dataloader):
        if max_batches is not None and i >= max_batches:
            break
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


__all__ = ["TrainConfig", "config_from_args", "parse_overrides", "load_pieces", "build_tokenizer",
           "build_datasets", "train_collator", "EpochSampler", "build_model", "model_inputs", "parameter_groups",
           "l1_norm", "lr_lambda", "evaluate"]
