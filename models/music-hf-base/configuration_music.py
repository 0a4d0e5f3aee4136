"""MusicConfig: sizes, regularization, music-embedding switches and the tokenizer's per-id attribute tables.

Copied next to saved models for `trust_remote_code` users: it must not import `music_hf` by name.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

NORM_TYPES = ("layernorm", "rmsnorm", "batchnorm")
POSITION_TYPES = ("learned", "rotary")
# how fill-in-the-middle sequences are laid out (data.fim_arrange): "psm" prefix, one Infill_Bar per missing bar,
# suffix, Infill_Start, the missing bars; "spm" one Infill_Bar per bar before the suffix, suffix, Infill_Start,
# prefix, the missing bars (the prefix's end next to the bars that continue it)
INFILL_ORDERS = ("psm", "spm")
UNKNOWN_GENRE = "unknown"
ATTRIBUTE_TABLES = ("kind", "pitch", "program_set", "position_set", "bar_count", "note_count", "infill")
# what an id without music attributes (a special or added token) holds in each table (configs saved without a
# table load with it neutral)
NEUTRAL_ATTRIBUTES = {"kind": 0, "pitch": -1, "program_set": -1, "position_set": -1, "bar_count": 0, "note_count": 0,
                      "infill": 0}


@strict(accept_kwargs=True)
class MusicConfig(PreTrainedConfig):
    r"""Configuration of [`MusicModel`] and its heads.

    Sizes use transformers' usual names. Music embeddings (`use_*_embedding`) are summed with the token
    embedding; the tables `token_*` come from `MusicTokenizer.music_attributes()` (build a config with
    `MusicConfig.from_tokenizer`). `id2genre` maps genre ids to names, id 0 being "unknown".
    """

    model_type = "music"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    vocab_size: int = 512
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 1024
    max_position_embeddings: int = 1024
    hidden_act: str = "gelu"
    initializer_range: float = 0.02
    norm_type: str = "layernorm"
    norm_eps: float = 1e-5
    conv_kernel_size: int = 0
    position_embedding_type: str = "learned"
    rope_theta: float = 10000.0
    embedding_dropout: float = 0.1
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.1
    classifier_dropout: float = 0.1
    attention_bias: bool = True
    mlp_bias: bool = True
    use_cache: bool = True
    tie_word_embeddings: bool = True
    # music embeddings
    use_note_embedding: bool = True
    use_instrument_embedding: bool = True
    use_temporal_embedding: bool = True
    use_genre_embedding: bool = True
    max_bars: int = 512
    num_positions_in_bar: int = 96
    id2genre: dict[int, str] | dict[str, str] | None = None
    infill_order: str = "psm"  # the fill-in-the-middle layout the model was trained with (INFILL_ORDERS)
    # per-id attribute tables, computed by the tokenizer (length vocab_size each)
    token_kind: list[int] | None = None
    token_pitch: list[int] | None = None
    token_program_set: list[int] | None = None
    token_position_set: list[int] | None = None
    token_bar_count: list[int] | None = None
    token_note_count: list[int] | None = None
    token_infill: list[int] | None = None  # 0 none, 1 Infill_Bar, 2 Infill_Start, 3 Infill_End
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2

    def __post_init__(self, **kwargs: Any) -> None:
        if self.id2genre is None:
            self.id2genre = {0: UNKNOWN_GENRE}
        self.id2genre = {int(k): v for k, v in self.id2genre.items()}
        for name in ATTRIBUTE_TABLES:
            if getattr(self, "token_" + name) is None:
                setattr(self, "token_" + name, [NEUTRAL_ATTRIBUTES[name]] * self.vocab_size)
        super().__post_init__(**kwargs)

    def validate_architecture(self) -> None:
        """Checks sizes, option names and table lengths, naming the field that is wrong."""
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                             f"({self.num_attention_heads})")
        if self.norm_type not in NORM_TYPES:
            raise ValueError(f"norm_type must be one of {NORM_TYPES}, got {self.norm_type!r}")
        if self.position_embedding_type not in POSITION_TYPES:
            raise ValueError(f"position_embedding_type must be one of {POSITION_TYPES}, got "
                             f"{self.position_embedding_type!r}")
        if self.infill_order not in INFILL_ORDERS:
            raise ValueError(f"infill_order must be one of {INFILL_ORDERS}, got {self.infill_order!r}")
        if self.conv_kernel_size < 0:
            raise ValueError(f"conv_kernel_size must be >= 0 (0 turns the conv off), got {self.conv_kernel_size}")
        for name in ATTRIBUTE_TABLES:
            table = getattr(self, "token_" + name)
            if len(table) != self.vocab_size:
                raise ValueError(f"token_{name} has {len(table)} entries, vocab_size is {self.vocab_size}")
        if self.id2genre.get(0) != UNKNOWN_GENRE:
            raise ValueError(f"id2genre[0] must be {UNKNOWN_GENRE!r}, got {self.id2genre.get(0)!r}")

    @property
    def layer_types(self) -> list[str]:
        """Each block caches attention keys/values plus fixed-size state: transformers' "hybrid" cache layer
        (the model gives it the music layer class, `MusicCacheLayer`)."""
        return ["hybrid"] * self.num_hidden_layers

    @property
    def number_of_conv_states(self) -> int:
        """States per cache layer: the conv's last inputs, and the carried music attributes."""
        return 2

    def resize_attribute_tables(self, vocab_size: int) -> None:
        """Cut or extend every per-id table to `vocab_size` (new ids neutral) and set `vocab_size`."""
        for name in ATTRIBUTE_TABLES:
            table = list(getattr(self, "token_" + name))[:vocab_size]
            setattr(self, "token_" + name, table + [NEUTRAL_ATTRIBUTES[name]] * (vocab_size - len(table)))
        self.vocab_size = vocab_size

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_genres(self) -> int:
        return len(self.id2genre)

    @property
    def genre2id(self) -> dict[str, int]:
        return {v: k for k, v in self.id2genre.items()}

    def genre_id(self, genre: str | int | None) -> int:
        """Id of a genre name or id (None gives 0, "unknown"); a name or id this model does not know is a
        `ValueError` that lists the known genres."""
        if genre is None:
            return 0
        known = self.genre2id
        if isinstance(genre, int) and not isinstance(genre, bool):
            if genre not in self.id2genre:
                raise ValueError(f"genre id {genre} is not one of this model's genres {self.id2genre}")
            return genre
        if genre not in known:
            raise ValueError(f"unknown genre {genre!r}; this model knows {sorted(known)}")
        return known[genre]

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, genres: list[str] | None = None,
                       id2genre: dict[int, str] | None = None, **kwargs: Any) -> MusicConfig:
        """A config whose vocabulary, special ids and attribute tables come from a `MusicTokenizer`.

        Genres come as a list of names (`genres=[...]`, "unknown" first, added if missing) or as the config's
        own mapping (`id2genre={0: "unknown", 1: ...}`), not both."""
        if genres is not None and id2genre is not None:
            raise ValueError("pass genres=[...] or id2genre={...}, not both")
        if id2genre is None:
            id2genre = dict(enumerate([UNKNOWN_GENRE] + [g for g in (genres or []) if g != UNKNOWN_GENRE]))
        tables = tokenizer.music_attributes()
        vocab_size = len(tokenizer)
        kwargs.setdefault("num_positions_in_bar", max(tables["position_set"]) + 1)
        config = cls(
            vocab_size=len(tables["kind"]),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            id2genre=dict(id2genre),
            **{"token_" + name: list(tables[name]) for name in ATTRIBUTE_TABLES if name in tables},
            **kwargs,
        )
        if vocab_size != config.vocab_size:  # tokens added to the tokenizer: neutral attributes
            config.resize_attribute_tables(vocab_size)
        return config


__all__ = ["MusicConfig"]
