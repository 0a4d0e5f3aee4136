"""Fine-tuning a saved model on new music: genres appended to its genre embedding, and LoRA adapters (PEFT).

A model fine-tuned on labels it has not seen gets new genre ids after its own (`add_genres`: new rows of the
genre embedding, the old rows kept exactly). A LoRA run (`music-hf train --init_from BASE --lora_r R`) saves only
its adapter, plus `adapter_genres.json` (`GENRES_FILE`: the genres it was trained with); where it added genres,
the whole genre table travels in the adapter (PEFT `modules_to_save`). `load_adapter` puts such an adapter on its
base: it appends the adapter's genres first, then `PeftModel.from_pretrained`, merged into a plain model by default.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from .configuration_music import UNKNOWN_GENRE

logger = logging.getLogger(__name__)

# MusicForCausalLM's linear layers: attention (fused q/k/v and output) and MLP
LORA_TARGET_MODULES = ("qkv_proj", "o_proj", "fc_in", "fc_out")
GENRE_MODULE = "embeddings.genre"  # the genre embedding (a PEFT `modules_to_save` name) when genres are added
GENRES_FILE = "adapter_genres.json"  # the genres ({"id2genre": {...}}) of an adapter saved by a training run


def model_genres(config: Any) -> list[str]:
    """The model's genre names in id order (id 0 "unknown")."""
    return [config.id2genre[i] for i in sorted(config.id2genre)]


def merge_genres(known: Sequence[str], found: Iterable[str]) -> list[str]:
    """A model's genres in id order, then the genres of `found` it does not know, sorted (their new ids)."""
    known = list(known) or [UNKNOWN_GENRE]
    return known + sorted(set(found) - set(known))


def add_genres(model: nn.Module, genres: Iterable[str]) -> list[str]:
    """Give `model` (a MusicForCausalLM or MusicModel) the genres of `genres` it does not know: new ids after its
    own, each a new row of the genre embedding initialized as a copy of the "unknown" row (id 0); the old rows are
    kept exactly. Returns the names added, in id order."""
    config = model.config
    known = model_genres(config)
    if sorted(config.id2genre) != list(range(len(known))):
        raise ValueError(f"genre ids must be 0..n-1 to add genres, got {config.id2genre}")
    new = [g for g in merge_genres(known, genres) if g not in known]
    if not new:
        return []
    embeddings = getattr(model, "get_base_model", lambda: model)().embeddings
    old = getattr(embeddings, "genre", None)
    if old is not None:
        table = nn.Embedding(len(known) + len(new), old.embedding_dim, device=old.weight.device,
                             dtype=old.weight.dtype)
        with torch.no_grad():
            table.weight[: len(known)] = old.weight
            table.weight[len(known):] = old.weight[0]
        table.weight.requires_grad_(old.weight.requires_grad)
        embeddings.genre = table
    config.id2genre = dict(enumerate(known + new))
    return new


def _adapter_file(adapter: str | os.PathLike, name: str) -> str | None:
    """A file of an adapter folder or Hub repo, None where it has none."""
    if os.path.isdir(adapter):
        path = os.path.join(adapter, name)
        return path if os.path.isfile(path) else None
    from transformers.utils import cached_file

    return cached_file(str(adapter), name, _raise_exceptions_for_missing_entries=False,
                       _raise_exceptions_for_connection_errors=False)


def load_adapter(model: nn.Module, adapter: str | os.PathLike, merge: bool = True) -> nn.Module:
    """Put a LoRA adapter (a folder or Hub repo saved by `music-hf train --lora_r`, or any PEFT LoRA adapter of this
    model) on `model`, its base: the genres the adapter added are appended first (`add_genres`), then
    `PeftModel.from_pretrained`. `merge`: fold the adapter into the weights and return the plain model (fast
    generation); else the `PeftModel`. `model` itself is changed: pass a copy to keep it."""
    try:
        from peft import PeftModel
    except ImportError as e:
        raise ImportError("LoRA adapters need peft: pip install peft") from e
    genres_file = _adapter_file(adapter, GENRES_FILE)
    if genres_file is not None:
        with open(genres_file) as f:
            saved = {int(k): v for k, v in json.load(f)["id2genre"].items()}
        wanted, known = [saved[i] for i in sorted(saved)], model_genres(model.config)
        if wanted[: len(known)] != known:
            raise ValueError(f"the adapter {adapter} was trained on a base with genres {wanted[: len(known)]}, "
                             f"this model has {known}")
        add_genres(model, wanted)
    tuned = PeftModel.from_pretrained(model, str(adapter))
    tuned.eval()
    return tuned.merge_and_unload() if merge else tuned


__all__ = ["LORA_TARGET_MODULES", "GENRE_MODULE", "GENRES_FILE", "model_genres", "merge_genres", "add_genres",
           "load_adapter"]
