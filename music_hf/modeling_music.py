"""The music transformer: music-specific embeddings, pre-norm blocks, LM and classification heads.

Reads bottom-up like transformers' Llama: norms, rotary, MLP, causal conv, attention, block, embeddings,
then the PreTrainedModel base, the base model and the heads. Copied next to saved models for
`trust_remote_code` users, so it imports its siblings relatively and never `music_hf` by name.

Carried attributes (instrument, position in bar, bar index) depend on the whole history, so with a
KV cache the model keeps the token history (and each conv's recent inputs) in extra layers of the same
`Cache` object: beam reordering, cropping and batch expansion then apply to them too, and cached
and uncached forwards agree exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GenericForSequenceClassification, GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_music import MusicConfig

NUM_INSTRUMENTS = 130  # 0 = none yet, 1..128 = GM program + 1, 129 = drums
NUM_OCTAVES = 11


# ----- norms ----------------------------------------------------------------------------------------
class CausalBatchNorm(nn.Module):
    """Batch norm that never lets a position see the future.

    Training: position t is normalized with mean/variance over the batch and positions <= t (cumulative
    statistics), so changing token t+1 changes nothing before it. Eval: running statistics, per token.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.bias = nn.Parameter(torch.zeros(hidden_size))
        self.register_buffer("running_mean", torch.zeros(hidden_size))
        self.register_buffer("running_var", torch.ones(hidden_size))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if not self.training:
            mean, var = self.running_mean, self.running_var
        else:
            m = (torch.ones_like(x[..., :1]) if mask is None else mask[..., None].to(x.dtype))
            count = torch.cumsum(m.sum(0), dim=0).clamp(min=1.0)  # (T, 1)
            xf = x.float() * m
            mean = torch.cumsum(xf.sum(0), dim=0) / count  # (T, H)
            sq = torch.cumsum((xf * x.float()).sum(0), dim=0) / count
            var = (sq - mean.square()).clamp(min=0.0)
            with torch.no_grad():
                full_mean, full_var = mean[-1], var[-1]
                self.running_mean.lerp_(full_mean.to(self.running_mean.dtype), self.momentum)
                self.running_var.lerp_(full_var.to(self.running_var.dtype), self.momentum)
            mean, var = mean.to(x.dtype), var.to(x.dtype)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


class MaskedNorm(nn.Module):
    """LayerNorm, RMSNorm or CausalBatchNorm behind one call signature (`norm(x, mask)`)."""

    def __init__(self, config: MusicConfig):
        super().__init__()
        self.kind = config.norm_type
        if self.kind == "layernorm":
            self.norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        elif self.kind == "rmsnorm":
            self.norm = nn.RMSNorm(config.hidden_size, eps=config.norm_eps)
        else:
            self.norm = CausalBatchNorm(config.hidden_size, eps=config.norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.norm(x, mask) if self.kind == "batchnorm" else self.norm(x)


# ----- rotary ---------------------------------------------------------------------------------------
class MusicRotaryEmbedding(nn.Module):
    """cos/sin tables for rotary position embedding, computed from position ids."""

    def __init__(self, config: MusicConfig):
        super().__init__()
        self.dim, self.base = config.head_dim, config.rope_theta
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=False)

    def compute_inv_freq(self) -> torch.Tensor:
        return 1.0 / (self.base ** (torch.arange(0, self.dim, 2, dtype=torch.float32) / self.dim))

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(x.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


# ----- feed-forward, conv, attention ----------------------------------------------------------------
class MusicMLP(nn.Module):
    """Fully connected feed-forward: hidden -> intermediate -> hidden."""

    def __init__(self, config: MusicConfig):
        super().__init__()
        self.fc_in = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.fc_out = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.act(self.fc_in(x)))


class CausalDepthwiseConv(nn.Module):
    """Depthwise 1D convolution over time that sees only the current and the `kernel-1` previous positions."""

    def __init__(self, config: MusicConfig):
        super().__init__()
        self.kernel_size = config.conv_kernel_size
        self.conv = nn.Conv1d(config.hidden_size, config.hidden_size, self.kernel_size, groups=config.hidden_size)

    def forward(self, x: torch.Tensor, past: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, H); past: (B, P, H) inputs of earlier positions (from the cache) or None."""
        t = x.shape[1]
        if past is not None and past.shape[1] > 0:
            x = torch.cat([past[:, -(self.kernel_size - 1):], x], dim=1) if self.kernel_size > 1 else x
        x = F.pad(x.transpose(1, 2), (self.kernel_size - 1 - (x.shape[1] - t), 0))
        return self.conv(x).transpose(1, 2)


def eager_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0, **kwargs):
    """Plain softmax attention (the `eager` implementation)."""
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            weights = weights.masked_fill(~attention_mask, torch.finfo(weights.dtype).min)
        else:
            weights = weights + attention_mask
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


class MusicAttention(nn.Module):
    """Multi-head causal self-attention through transformers' attention interface (SDPA by default)."""

    def __init__(self, config: MusicConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.attention_bias)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.attention_bias)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None,
                position_embeddings: tuple[torch.Tensor, torch.Tensor] | None, cache: Cache | None = None,
                **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        q, k, v = (t.view(shape).transpose(1, 2) for t in self.qkv_proj(hidden_states).chunk(3, dim=-1))
        if position_embeddings is not None:
            q, k = apply_rotary(q, k, *position_embeddings)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation,
                                                                    eager_attention_forward)
        out, weights = attention(self, q, k, v, attention_mask, scaling=self.scaling,
                                 dropout=self.config.attention_dropout if self.training else 0.0, **kwargs)
        return self.o_proj(out.reshape(*hidden_states.shape[:-1], -1)), weights


# ----- block ----------------------------------------------------------------------------------------
def _aux_cache_update(cache: Cache, index: int, new: torch.Tensor) -> torch.Tensor:
    """Append `new` (B, T, D) to auxiliary cache layer `index` and return the whole history (B, P+T, D)."""
    while len(cache.layers) <= index:
        cache.layers.append(DynamicLayer())
    full, _ = cache.layers[index].update(new[:, None], new[:, None, :, :0])
    return full[:, 0]


class MusicDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block: attention, optional causal depthwise conv, MLP; dropout on each residual branch."""

    def __init__(self, config: MusicConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.conv_cache_index = config.num_hidden_layers + 1 + layer_idx
        self.attn_norm = MaskedNorm(config)
        self.attn = MusicAttention(config, layer_idx)
        self.conv_norm = MaskedNorm(config) if config.conv_kernel_size > 0 else None
        self.conv = CausalDepthwiseConv(config) if config.conv_kernel_size > 0 else None
        self.mlp_norm = MaskedNorm(config)
        self.mlp = MusicMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                token_mask: torch.Tensor | None = None, cache: Cache | None = None, **kwargs) -> torch.Tensor:
        attn_out, _ = self.attn(self.attn_norm(hidden_states, token_mask), attention_mask, position_embeddings,
                                cache=cache, **kwargs)
        hidden_states = hidden_states + self.dropout(attn_out)
        if self.conv is not None:
            conv_in = self.conv_norm(hidden_states, token_mask)
            if token_mask is not None:  # padding enters the conv as zeros, exactly like the start of a sequence
                conv_in = conv_in * token_mask[..., None].to(conv_in.dtype)
            past = None
            if cache is not None:
                past = _aux_cache_update(cache, self.conv_cache_index, conv_in)[:, : -conv_in.shape[1]]
            hidden_states = hidden_states + self.dropout(self.conv(conv_in, past))
        return hidden_states + self.dropout(self.mlp(self.mlp_norm(hidden_states, token_mask)))


# ----- music embeddings -----------------------------------------------------------------------------
def carry_forward(values: torch.Tensor, default: int = -1) -> torch.Tensor:
    """For each position, the last value >= 0 at or before it (else `default`); a cumulative-max scan."""
    steps = torch.arange(values.shape[-1], device=values.device).expand_as(values)
    last = torch.where(values >= 0, steps, -1).cummax(dim=-1).values
    carried = values.gather(-1, last.clamp(min=0))
    return torch.where(last >= 0, carried, torch.full_like(carried, default))


class MusicEmbeddings(nn.Module):
    """Sum of token, note (pitch class + octave), instrument, temporal (bar position, bar index, sequence
    position) and genre embeddings, each switchable in the config."""

    def __init__(self, config: MusicConfig):
        super().__init__()
        self.config = config
        h = config.hidden_size
        self.token = nn.Embedding(config.vocab_size, h, config.pad_token_id)
        if config.use_note_embedding:
            self.pitch_class = nn.Embedding(13, h, padding_idx=0)
            self.octave = nn.Embedding(NUM_OCTAVES + 1, h, padding_idx=0)
        if config.use_instrument_embedding:
            self.instrument = nn.Embedding(NUM_INSTRUMENTS, h)
        if config.use_temporal_embedding:
            self.bar_position = nn.Embedding(config.num_positions_in_bar + 1, h)
            self.bar_index = nn.Embedding(config.max_bars, h)
        if config.use_genre_embedding:
            self.genre = nn.Embedding(config.num_genres, h)
        if config.position_embedding_type == "learned":
            self.position = nn.Embedding(config.max_position_embeddings, h)
        self.dropout = nn.Dropout(config.embedding_dropout)
        for name in ("pitch", "program_set", "position_set", "bar_count"):
            self.register_buffer(name + "_table", self.table(name), persistent=False)

    def table(self, name: str) -> torch.Tensor:
        return torch.tensor(getattr(self.config, "token_" + name), dtype=torch.long)

    def music_attributes(self, history_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-position attribute indices from the whole token history (B, T): vectorized scans, no loops."""
        pitch = self.pitch_table[history_ids]
        program = carry_forward(self.program_set_table[history_ids])
        position = carry_forward(self.position_set_table[history_ids])
        bars = torch.cumsum(self.bar_count_table[history_ids], dim=-1)
        return {
            "pitch_class": torch.where(pitch >= 0, pitch % 12 + 1, 0),
            "octave": torch.where(pitch >= 0, (pitch // 12).clamp(max=NUM_OCTAVES - 1) + 1, 0),
            "instrument": program + 1,  # -1 (none) -> 0, program p -> p + 1, drums 128 -> 129
            "bar_position": (position + 1).clamp(max=self.config.num_positions_in_bar),
            "bar_index": (bars - 1).clamp(min=0, max=self.config.max_bars - 1),
        }

    def forward(self, input_ids: torch.Tensor, history_ids: torch.Tensor, position_ids: torch.Tensor,
                genre_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        x = self.token(input_ids) if inputs_embeds is None else inputs_embeds
        cfg = self.config
        if cfg.use_note_embedding or cfg.use_instrument_embedding or cfg.use_temporal_embedding:
            attrs = {k: v[:, -input_ids.shape[1]:] for k, v in self.music_attributes(history_ids).items()}
            if cfg.use_note_embedding:
                x = x + self.pitch_class(attrs["pitch_class"]) + self.octave(attrs["octave"])
            if cfg.use_instrument_embedding:
                x = x + self.instrument(attrs["instrument"])
            if cfg.use_temporal_embedding:
                x = x + self.bar_position(attrs["bar_position"]) + self.bar_index(attrs["bar_index"])
        if cfg.use_genre_embedding:
            if genre_ids is None:
                genre_ids = torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
            x = x + self.genre(genre_ids.view(-1))[:, None, :]
        if cfg.position_embedding_type == "learned":
            x = x + self.position(position_ids.clamp(max=cfg.max_position_embeddings - 1))
        return self.dropout(x)


# ----- models ---------------------------------------------------------------------------------------
class MusicPreTrainedModel(PreTrainedModel):
    config_class = MusicConfig
    config: MusicConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MusicDecoderLayer"]
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, CausalBatchNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
        elif isinstance(module, MusicEmbeddings):
            for name in ("pitch", "program_set", "position_set", "bar_count"):
                init.copy_(getattr(module, name + "_table"), module.table(name))
        elif isinstance(module, MusicRotaryEmbedding):
            init.copy_(module.inv_freq, module.compute_inv_freq())

    @torch.no_grad()
    def embed_piece(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    genre_ids: torch.Tensor | None = None) -> torch.Tensor:
        """A fixed-size, L2-normalized embedding per sequence (mean of final hidden states over real tokens),
        for similarity search and recommendation."""
        base = self.get_base_model() if hasattr(self, "get_base_model") else self.base_model
        hidden = base(input_ids=input_ids, attention_mask=attention_mask, genre_ids=genre_ids).last_hidden_state
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        mask = mask[..., None].to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return F.normalize(pooled.float(), dim=-1)


class MusicModel(MusicPreTrainedModel):
    """The base transformer: music embeddings, `num_hidden_layers` blocks, final norm."""

    def __init__(self, config: MusicConfig):
        super().__init__(config)
        self.embeddings = MusicEmbeddings(config)
        self.layers = nn.ModuleList([MusicDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = MaskedNorm(config)
        self.rotary = MusicRotaryEmbedding(config) if config.position_embedding_type == "rotary" else None
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.token

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.token = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        genre_ids: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if input_ids is None:
            raise ValueError("MusicModel needs input_ids: its music embeddings are computed from the token ids")
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None and attention_mask is not None and attention_mask.dim() == 2:
            # count real tokens only, so a left-padded row gets the positions it would have alone
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1]:]
        elif position_ids is None:
            position_ids = (torch.arange(input_ids.shape[1], device=input_ids.device) + past)[None].expand_as(input_ids)
        # the whole token history (kept in the cache) feeds the carried attributes
        history = input_ids if cache is None else _aux_cache_update(
            cache, self.config.num_hidden_layers, input_ids[..., None])[..., 0]
        hidden = self.embeddings(input_ids, history, position_ids, genre_ids, inputs_embeds)
        mask = create_causal_mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask,
                                  cache=cache, position_ids=position_ids)
        token_mask = attention_mask[:, -input_ids.shape[1]:] if attention_mask is not None else None
        rotary = self.rotary(hidden, position_ids) if self.rotary is not None else None
        all_hidden = [hidden] if output_hidden_states else None
        for layer in self.layers:
            hidden = layer(hidden, mask, rotary, token_mask, cache=cache, **kwargs)
            if all_hidden is not None:
                all_hidden.append(hidden)
        hidden = self.norm(hidden, token_mask)
        return BaseModelOutputWithPast(last_hidden_state=hidden, cache=cache if use_cache else None,
                                       hidden_states=tuple(all_hidden) if all_hidden else None)


class MusicForCausalLM(MusicPreTrainedModel, GenerationMixin):
    """MusicModel with a language-modelling head: next-token loss and `generate()`."""

    _tied_weights_keys = {"lm_head.weight": "model.embeddings.token.weight"}

    def __init__(self, config: MusicConfig):
        super().__init__(config)
        self.model = MusicModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        genre_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """`labels` are the input ids (shifted inside the loss), -100 where ignored. `num_items_in_batch` in
        kwargs normalizes the summed loss by a token count shared across accumulation steps and processes."""
        loss_kwargs = {k: kwargs.pop(k) for k in ("num_items_in_batch", "ignore_index") if k in kwargs}
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             cache=cache, inputs_embeds=inputs_embeds, genre_ids=genre_ids, use_cache=use_cache,
                             output_hidden_states=output_hidden_states, **kwargs)
        hidden = outputs.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden = hidden[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden = hidden[:, logits_to_keep]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **loss_kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=outputs.cache,
                                      hidden_states=outputs.hidden_states)


class MusicForSequenceClassification(GenericForSequenceClassification, MusicPreTrainedModel):
    """Genre (or any label) from the last real token's hidden state.

    The generic head builds its base model with `AutoModel.from_config`, which cannot find `MusicModel` when this
    class is loaded with `trust_remote_code` (the Auto registry only knows the local `music_hf` import), so the
    base model is built directly here; forward, pooling and loss stay the generic ones.
    """

    def __init__(self, config: MusicConfig):
        super(GenericForSequenceClassification, self).__init__(config)
        self.num_labels = config.num_labels
        self.model = MusicModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()


__all__ = ["MusicPreTrainedModel", "MusicModel", "MusicForCausalLM", "MusicForSequenceClassification",
           "carry_forward"]
