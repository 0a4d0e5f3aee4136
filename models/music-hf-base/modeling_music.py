"""The music transformer: music-specific embeddings, pre-norm blocks, LM and classification heads.

Reads bottom-up like transformers' Llama: norms, rotary, MLP, causal conv, attention, block, embeddings,
then the PreTrainedModel base, the base model and the heads. Copied next to saved models for
`trust_remote_code` users, so it imports its siblings relatively and never `music_hf` by name.

Carried attributes (instrument, position in bar, bar index) depend on the whole history; with a KV cache they
are kept as fixed-size state (the values at the last token) next to the block's keys and values, in a proper cache
layer type (`MusicCacheLayer` / `MusicStaticCacheLayer`, transformers' hybrid attention + conv-state layers), and
so is each conv's last `kernel-1` inputs. A decoding step then costs O(1) in the history length, a `StaticCache`
compiles, and beam reordering, cropping (assisted decoding) and batch expansion apply to the state too. Where a
sequence restarts inside a packed row (`position_ids` back to 0), the carried state and the conv restart too.
A decoding step (one token per row, a dynamic cache, eval mode, no padding or restart) takes a shorter route,
`MusicModel._decode_step`: the same math without the masks, the restart handling and most module calls, which are
most of a small model's step on a CPU (`music_hf.fast_inference` exports the same step to ONNX).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as torch_module
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import (Cache, DynamicCache, DynamicLayer, LinearAttentionAndFullAttentionLayer,
                                      LinearAttentionAndStaticFullAttentionLayer, StaticLayer)
from transformers.generation.utils import MULTIMODAL_INPUTS_TO_DROP_OUTSIDE_PREFILL
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (BaseModelOutputWithPast, CausalLMOutputWithPast,
                                           SequenceClassifierOutputWithPast)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.import_utils import is_torchdynamo_compiling
from transformers.utils.output_capturing import capture_outputs

from .configuration_music import MusicConfig

NUM_INSTRUMENTS = 130  # 0 = none yet, 1..128 = GM program + 1, 129 = drums
NUM_OCTAVES = 11
# fixed-size states of a MusicCacheLayer (transformers' "conv states": the last `kernel` steps along the last dim)
CONV_STATE = 0  # the block conv's last kernel-1 inputs, (B, H, kernel-1)
CARRIED_STATE = 1  # in the first block's layer: program, position in bar, bar count at the last token, (B, 3, 1)
# generation inputs as long as the ids that transformers slices for each step (position ids aside)
_SLICED_GENERATION_INPUTS = ("token_type_ids", "mm_token_type_ids", "moe_mm_token_type_ids")


# ----- cache ----------------------------------------------------------------------------------------
def _crop_music_layer(layer: Cache, attention_layer: type, tokens_to_remove: int) -> None:
    """Crop a music cache layer: keys/values as `attention_layer` does, and each recorded state back by as many
    steps. Both states are conv-like (the last few steps), so a layer that records its past (assisted decoding)
    can always be cropped, even where a state is unused (no conv in the block, or a block other than the first)."""
    if tokens_to_remove > 0:
        raise ValueError(f"crop takes a negative number of tokens to remove, got {tokens_to_remove}")
    if tokens_to_remove < 0 and not layer.record_past:
        raise RuntimeError("crop needs a cache that records its past: call activate_past_recording() first")
    for i, state in layer.conv_states.items():
        if state is not None and layer.record_past:
            end = state.shape[-1] + tokens_to_remove
            layer.conv_states[i] = state[..., max(end - layer.conv_kernel_size[i], 0):end]
    attention_layer.crop(layer, tokens_to_remove)


class MusicCacheLayer(LinearAttentionAndFullAttentionLayer):
    """A block's cache: growing keys/values plus the fixed-size states (`CONV_STATE`, `CARRIED_STATE`)."""

    is_croppable = True

    def __init__(self, number_of_states: int = 2, **kwargs):
        super().__init__(number_of_states=number_of_states)

    def crop(self, tokens_to_remove: int) -> None:
        _crop_music_layer(self, DynamicLayer, tokens_to_remove)

    def batch_repeat_interleave(self, repeats: int) -> None:
        for i, state in self.conv_states.items():
            if state is not None:
                self.conv_states[i] = state.repeat_interleave(repeats, dim=0)
        DynamicLayer.batch_repeat_interleave(self, repeats)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        for i, state in self.conv_states.items():
            if state is not None:
                self.conv_states[i] = state[indices, ...]
        DynamicLayer.batch_select_indices(self, indices)


class MusicStaticCacheLayer(LinearAttentionAndStaticFullAttentionLayer):
    """The same for a `StaticCache`: preallocated keys/values, states updated in place (compileable)."""

    is_croppable = True

    def __init__(self, max_cache_len: int, number_of_states: int = 2, **kwargs):
        super().__init__(max_cache_len=max_cache_len, number_of_states=number_of_states)

    def crop(self, tokens_to_remove: int) -> None:
        _crop_music_layer(self, StaticLayer, tokens_to_remove)


_MUSIC_LAYER_FOR = {LinearAttentionAndFullAttentionLayer: MusicCacheLayer,
                    LinearAttentionAndStaticFullAttentionLayer: MusicStaticCacheLayer}


def music_cache(cache: Cache | None, config: MusicConfig) -> Cache | None:
    """The cache to use: a music layer per block.

    `DynamicCache(config=...)` and `StaticCache(config=...)` (what `generate` builds) hold transformers' "hybrid"
    layers, as `config.layer_types` says: each gets the music layer class (a subclass adding no data, so the
    instance is kept as it is). An empty `DynamicCache()` made without the config (as tutorials do) gets new music
    layers. A cache of other layer types is refused."""
    if cache is None:
        return cache
    if not cache.layers and getattr(cache, "layer_class_to_replicate", None) is DynamicLayer:
        cache.layers = [MusicCacheLayer() for _ in range(config.num_hidden_layers)]
        cache.layer_class_to_replicate = None
    for layer in cache.layers:
        if type(layer) in _MUSIC_LAYER_FOR:
            layer.__class__ = _MUSIC_LAYER_FOR[type(layer)]
    if len(cache.layers) == config.num_hidden_layers and all(isinstance(layer, (MusicCacheLayer, MusicStaticCacheLayer))
                                                             for layer in cache.layers):
        return cache
    raise ValueError(f"{type(cache).__name__} with layers {[type(layer).__name__ for layer in cache.layers]} cannot "
                     "hold this model's state: build it with the model's config (DynamicCache(config=model.config) or "
                     "StaticCache(config=model.config, max_cache_len=...)) or pass an empty DynamicCache()")


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

    def step_tables(self, positions: torch.Tensor, dtype: torch.dtype
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For a decoding step at `positions` (B,): (cos, sin with its first half negated, swap), each row (B, 1, dim)
        looked up in tables `forward` computed for positions 0..n-1 (kept; n doubles when a position passes it), so
        that `x * cos + x.index_select(-1, swap) * sin` is `apply_rotary`'s `x * cos + rotate_half(x) * sin`: the
        same products (a negated factor instead of a negated product) and sums."""
        kept = self.__dict__.get("_step_tables")
        inv_freq = self.inv_freq
        needed = int(positions.max()) + 1
        if (kept is None or kept[0] is not inv_freq or kept[1] != inv_freq._version or kept[2] != dtype
                or kept[3].shape[0] < needed):
            n = max(needed, 2 * kept[3].shape[0] if kept is not None else 1024)
            ids = torch.arange(n, device=inv_freq.device)[None]
            cos, sin = self.forward(torch.empty(0, dtype=dtype, device=inv_freq.device), ids)
            half = self.dim // 2
            sin = torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1)
            swap = torch.cat([torch.arange(half, self.dim), torch.arange(half)]).to(inv_freq.device)
            kept = (inv_freq, inv_freq._version, dtype, cos[0], sin, swap)
            self.__dict__["_step_tables"] = kept
        return kept[3][positions, None], kept[4][positions, None], kept[5]


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
    """Depthwise 1D convolution over time that sees only the current and the `kernel-1` previous positions, and
    nothing before a sequence restart (a packed row's next piece)."""

    def __init__(self, config: MusicConfig):
        super().__init__()
        self.kernel_size = config.conv_kernel_size
        self.conv = nn.Conv1d(config.hidden_size, config.hidden_size, self.kernel_size, groups=config.hidden_size)

    def forward(self, x: torch.Tensor, past: torch.Tensor | None = None,
                restart: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, H); past: (B, kernel-1, H) inputs before x (from the cache; zeros at a start) or None;
        restart: (B, T) bool, True where a new sequence starts (nothing earlier may be seen from there on)."""
        k, t = self.kernel_size, x.shape[1]
        if past is None:
            past = x.new_zeros(x.shape[0], k - 1, x.shape[2])
        full = torch.cat([past[:, past.shape[1] - (k - 1):], x], dim=1)  # (B, k-1+T, H)
        if restart is None:  # no restart: every tap counts (the same sums, in the same order, as below)
            return self.taps(full.transpose(1, 2)).transpose(1, 2)
        # tap i sees position t-(k-1-i); it counts only inside the same sequence (segment) as t
        segment = torch.cumsum(restart.long(), dim=-1)
        segment_full = F.pad(segment, (k - 1, 0))  # the past belongs to the segment before any restart here
        weight = self.conv.weight[:, 0, :]  # (H, k)
        out = self.conv.bias
        for i in range(k):
            same = (segment_full[:, i:i + t] == segment)[..., None].to(x.dtype)
            out = out + full[:, i:i + t] * same * weight[:, i]
        return out

    def taps(self, full: torch.Tensor) -> torch.Tensor:
        """The conv of channel-first inputs `full` (B, H, k-1+T), each of its T outputs seeing its k inputs:
        (B, H, T). The cached decoding step reads the cache's state and the new input in this layout (no transposes),
        and the sums are those of `forward` without a restart, bit for bit (a tap counted there is multiplied by 1)."""
        k, t = self.kernel_size, full.shape[-1] - self.kernel_size + 1
        weight = self.conv.weight[:, 0, :, None]  # (H, k, 1)
        out = self.conv.bias[:, None]
        for i in range(k):
            out = out + full[..., i:i + t] * weight[:, i]
        return out


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
def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _norm_step(norm: MaskedNorm, x: torch.Tensor) -> torch.Tensor:
    """`norm(x)` without a token mask, calling no module (what `MaskedNorm` and the norm it holds compute)."""
    inner = norm.norm
    if norm.kind == "layernorm":
        return F.layer_norm(x, inner.normalized_shape, inner.weight, inner.bias, inner.eps)
    return inner.forward(x) if norm.kind == "rmsnorm" else inner.forward(x, None)


def _unhooked(modules: list[nn.Module]) -> bool:
    """True when calling these modules' forwards directly skips nothing: no forward hooks (other than transformers'
    output capturing, which records nothing unless outputs are requested), no replaced forward (accelerate)."""
    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return False
    for module in modules:
        state = module.__dict__
        if module._forward_pre_hooks or "forward" in state or "_hf_hook" in state:
            return False
        for hook in module._forward_hooks.values():
            if getattr(hook, "__name__", None) != "output_capturing_hook":
                return False
    return True


_STEP_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (its cache, its _StepPlan)


def _plain(module: nn.Module | None, kind: type = nn.Linear) -> bool:
    """True for a module of exactly `kind` that a decoding step may replace by its math: no hooks, no replaced
    forward (an adapter, a quantized layer or accelerate's offloading are other types or hooked)."""
    return module is not None and type(module) is kind and _unhooked([module])


def _rms_scales(x: torch.Tensor, eps: float) -> float | torch.Tensor:
    """1 / sqrt(mean(x^2) + eps) of the rows x: a Python float for one row (H,) (one dot product, where
    `F.rms_norm` runs about nine ops), else a (B, 1) tensor for rows (B, H)."""
    if x.dim() == 1:
        return 1.0 / math.sqrt(float(torch.dot(x, x)) / x.shape[0] + eps)
    return torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _as_rows(module: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """A module called on the step's rows: one row (H,) goes in as (1, H) and comes out as a row again."""
    return lambda x: module(x[None])[0] if x.dim() == 1 else module(x)


def _row_projection(module: nn.Module, scale: torch.Tensor | None = None
                    ) -> Callable[[torch.Tensor], torch.Tensor] | tuple[torch.Tensor, torch.Tensor, int]:
    """`module(x)` as a function of the decoding step's rows: (H,) for one float32 row (batch 1), else (B, H).

    A plain float32 `nn.Linear` becomes its product with the weight: for one row `torch.addmv` (a matrix-vector
    product, about half the overhead of `nn.Linear` on a (1, 1, in) input), else `F.linear` on the rows. With the
    weight of the RMSNorm before it as `scale`, it returns (W diag(w), bias, beta) for `_normed` to fold the norm in:
    W (w * x * r) = r (W diag(w)) x for the row's 1 / rms r, one product with a matrix made once per `generate` call
    instead of the norm's ops and the product. The values are the module's up to float rounding (sums in another
    order). Anything else (an adapter, a quantized layer) is called as the module."""
    if not _plain(module) or module.weight.dtype != torch.float32:
        return _as_rows(module)
    bias = module.bias
    if scale is None:
        weight = module.weight

        def project(x: torch.Tensor) -> torch.Tensor:
            if x.dim() == 1:
                return torch.mv(weight, x) if bias is None else torch.addmv(bias, weight, x)
            return F.linear(x, weight, bias)
        return project
    weight = (module.weight * scale.to(module.weight.dtype)).detach()
    zeros = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device) if bias is None else bias
    return weight, zeros, 0 if bias is None else 1


def _normed(norm: MaskedNorm, module: nn.Module | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """`module(norm(x))` (`norm(x)` without a module) on the step's rows, the RMSNorm's scale folded into a plain
    linear layer where there is one (`_row_projection`)."""
    inner = norm.norm
    rms = (norm.kind == "rmsnorm" and _plain(inner, nn.RMSNorm) and inner.elementwise_affine
           and inner.weight.dtype == torch.float32)
    if not rms:
        project = _row_projection(module) if module is not None else None
        return (lambda x: _norm_step(norm, x)) if project is None else (lambda x: project(_norm_step(norm, x)))
    eps = inner.eps if inner.eps is not None else torch.finfo(torch.float32).eps
    scale = inner.weight
    if module is None:
        def normalize(x: torch.Tensor) -> torch.Tensor:
            r = _rms_scales(x, eps)
            return x * (scale * r) if isinstance(r, float) else x * r * scale
        return normalize
    folded = _row_projection(module, scale)
    if not isinstance(folded, tuple):  # not a plain linear: the norm, then the module
        return lambda x: folded(_norm_step(norm, x))
    weight, bias, beta = folded

    def project(x: torch.Tensor) -> torch.Tensor:
        r = _rms_scales(x, eps)
        if isinstance(r, float):
            return torch.addmv(bias, weight, x, beta=beta, alpha=r)
        return F.linear(x * r, weight, bias if beta else None)
    return project


def _activation(act: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """transformers' activation module as its function where it is a plain wrapper of one (GELU), else itself."""
    function = getattr(act, "act", None)
    return function if type(act).__name__ == "GELUActivation" and callable(function) and _unhooked([act]) else act


class _StepPlan:
    """What a decoding step reads from the model, gathered once per `generate` call (each new cache): per block
    (layer index, norm + qkv projection, head dim, scaling, output projection, conv norm, conv width, bias and tap
    weights, norm + MLP input projection, activation, MLP output projection), the final norm (+ LM head) and the
    summed note embeddings (`MusicEmbeddings.note_table`)."""

    def __init__(self, model: "MusicModel", lm_head: nn.Module | None):
        self.blocks = []
        for layer in model.layers:
            attn, conv = layer.attn, layer.conv
            taps = (conv.kernel_size, conv.conv.bias, conv.conv.weight[:, 0].detach().unbind(-1)) if conv else None
            self.blocks.append((layer.layer_idx, _normed(layer.attn_norm, attn.qkv_proj), attn.head_dim,
                                attn.scaling, _row_projection(attn.o_proj),
                                _normed(layer.conv_norm) if conv is not None else None, taps,
                                _normed(layer.mlp_norm, layer.mlp.fc_in), _activation(layer.mlp.act),
                                _row_projection(layer.mlp.fc_out)))
        self.final = _normed(model.norm, lm_head)
        self.note_table = model.embeddings.note_table()


class MusicDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block: attention, optional causal depthwise conv, MLP; dropout on each residual branch."""

    def __init__(self, config: MusicConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.attn_norm = MaskedNorm(config)
        self.attn = MusicAttention(config, layer_idx)
        self.conv_norm = MaskedNorm(config) if config.conv_kernel_size > 0 else None
        self.conv = CausalDepthwiseConv(config) if config.conv_kernel_size > 0 else None
        self.mlp_norm = MaskedNorm(config)
        self.mlp = MusicMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                token_mask: torch.Tensor | None = None, restart: torch.Tensor | None = None,
                cache: Cache | None = None, **kwargs) -> torch.Tensor:
        # dropout only where it does something (in eval each call would be a no-op module call)
        dropout = self.dropout if self.training else _identity
        attn_out, _ = self.attn(self.attn_norm(hidden_states, token_mask), attention_mask, position_embeddings,
                                cache=cache, **kwargs)
        hidden_states = hidden_states + dropout(attn_out)
        if self.conv is not None:
            conv_in = self.conv_norm(hidden_states, token_mask)
            if token_mask is not None:  # padding enters the conv as zeros, exactly like the start of a sequence
                conv_in = conv_in * token_mask[..., None].to(conv_in.dtype)
            k, t = self.conv.kernel_size, conv_in.shape[1]
            past = cache.get_conv_state(self.layer_idx, CONV_STATE) if cache is not None and k > 1 else None
            if restart is None and past is not None:
                # a decoding step with no restart (see MusicModel.forward): the state update returns the state and
                # the new inputs side by side, channel-first, which is what the conv reads
                full = cache.update_conv_state(conv_in.transpose(1, 2), self.layer_idx, CONV_STATE,
                                               conv_kernel_size=k - 1)
                conv_out = self.conv.taps(full[..., full.shape[-1] - (k - 1 + t):]).transpose(1, 2)
            else:  # the state is read before its in-place update
                conv_out = self.conv(conv_in, past.transpose(1, 2) if past is not None else None, restart)
                if cache is not None and k > 1:
                    cache.update_conv_state(conv_in.transpose(1, 2), self.layer_idx, CONV_STATE,
                                            conv_kernel_size=k - 1)
            hidden_states = hidden_states + dropout(conv_out)
        return hidden_states + dropout(self.mlp(self.mlp_norm(hidden_states, token_mask)))


# ----- music embeddings -----------------------------------------------------------------------------
def carry_forward(values: torch.Tensor, default: int = -1) -> torch.Tensor:
    """For each position, the last value other than -1 at or before it (else `default`); a cumulative-max scan."""
    steps = torch.arange(values.shape[-1], device=values.device).expand_as(values)
    last = torch.where(values != -1, steps, -1).cummax(dim=-1).values
    carried = values.gather(-1, last.clamp(min=0))
    return torch.where(last >= 0, carried, torch.full_like(carried, default))


NO_VALUE = -2  # a restart with no value of its own: carries "none" (-1) forward instead of the previous piece's
INFILL_BAR, INFILL_START = 1, 2  # values of the config's token_infill table
ATTRIBUTE_BUFFERS = ("pitch", "program_set", "position_set", "bar_count", "infill")  # per-id tables kept as buffers


def _carry(values: torch.Tensor, restart: torch.Tensor | None, state: torch.Tensor | None,
           column: int) -> torch.Tensor:
    """`carry_forward` of one attribute's set values (-1: none): from `state[:, column]`, restarting at `restart`."""
    if restart is not None:
        values = torch.where(restart & (values == -1), NO_VALUE, values)
    if state is None:
        return carry_forward(values).clamp(min=-1)
    return carry_forward(torch.cat([state[:, column:column + 1], values], dim=-1)).clamp(min=-1)[:, 1:]


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
        self.reset_tables()

    @property
    def uses_attributes(self) -> bool:
        cfg = self.config
        return cfg.use_note_embedding or cfg.use_instrument_embedding or cfg.use_temporal_embedding

    def table(self, name: str) -> torch.Tensor:
        return torch.tensor(getattr(self.config, "token_" + name), dtype=torch.long)

    def reset_tables(self) -> None:
        """(Re)build the per-id attribute buffers from the config (after a vocabulary resize too)."""
        for name in ATTRIBUTE_BUFFERS:
            old, new = getattr(self, name + "_table", None), self.table(name)
            self.register_buffer(name + "_table", new if old is None else new.to(old.device), persistent=False)

    def _note_indices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per id, the pitch class and octave embedding indices `_attributes` computes (kept until the pitch table
        changes)."""
        pitch, kept = self.pitch_table, self.__dict__.get("_note_index_tables")
        if kept is None or kept[0] is not pitch or kept[1] != pitch._version:
            kept = (pitch, pitch._version, torch.where(pitch >= 0, pitch % 12 + 1, 0),
                    torch.where(pitch >= 0, (pitch // 12).clamp(max=NUM_OCTAVES - 1) + 1, 0))
            self.__dict__["_note_index_tables"] = kept
        return kept[2], kept[3]

    def _step(self, input_ids: torch.Tensor, position_ids: torch.Tensor, genre_ids: torch.Tensor | None,
              state: torch.Tensor | None, note_table: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`forward` for one token per row after the carried `state` (B, 3) (None: no attributes in use), with no
        restart, in eval mode, `position_ids` already within the position table: the same sums in the same order,
        in fewer ops. The ids and genres are those of the prefill's checks; an id or genre out of range still
        fails in the lookups. `note_table` (`note_table()`): the token and note embeddings summed per id, one lookup
        for three."""
        modules = self._modules
        x = self.token(input_ids) if note_table is None else F.embedding(input_ids, note_table)
        carried = None
        if state is not None:
            program_set, position_set = self.program_set_table[input_ids], self.position_set_table[input_ids]
            program = torch.where(program_set != -1, program_set, state[:, 0:1])
            position = torch.where(position_set != -1, position_set, state[:, 1:2])
            bars = self.bar_count_table[input_ids] + state[:, 2:3]
            carried = torch.stack([program, position, bars], dim=1)
            if "pitch_class" in modules and note_table is None:
                pitch_class, octave = self._note_indices()
                x = x + self.pitch_class(pitch_class[input_ids]) + self.octave(octave[input_ids])
            if "instrument" in modules:
                x = x + self.instrument(program + 1)
            if "bar_position" in modules:
                x = (x + self.bar_position((position + 1).clamp(max=self.bar_position.num_embeddings - 1))
                     + self.bar_index((bars - 1).clamp(min=0, max=self.bar_index.num_embeddings - 1)))
        if "genre" in modules:
            if genre_ids is None:
                genre_ids = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
            x = x + self.genre(genre_ids.view(-1))[:, None, :]
        if "position" in modules:
            x = x + self.position(position_ids)
        return x, carried

    def note_table(self) -> torch.Tensor | None:
        """Per id, token + pitch-class + octave embedding (summed in `_step`'s order), for `_step`'s one lookup; None
        where there are no note embeddings or the three are not plain embeddings (an adapter, hooks)."""
        modules = self._modules
        if not self.uses_attributes or "pitch_class" not in modules or not all(
                _plain(modules[name], nn.Embedding) for name in ("token", "pitch_class", "octave")):
            return None
        pitch_class, octave = self._note_indices()
        return (self.token.weight + self.pitch_class.weight[pitch_class] + self.octave.weight[octave]).detach()

    def carried(self, ids: torch.Tensor, restart: torch.Tensor | None = None,
                state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Program in force, position in the bar and bar count at each position of `ids` (B, T): vectorized scans.

        `state` (B, 3): the three values before `ids` (from the cache), or None at the start. `restart` (B, T) bool:
        a new sequence starts there (a packed row), so nothing before it is carried past it. An Infill_Start takes
        the bar count back to the count before the run of Infill_Bar placeholders it closes, the program to the one
        in force at the run's first placeholder, the position to none: the missing bars after it carry their true
        values. (The placeholders come in the same forward as their Infill_Start.)
        """
        program_set, position_set = self.program_set_table[ids], self.position_set_table[ids]
        bar_count = self.bar_count_table[ids]
        if ids.shape[1] == 1 and restart is None and state is not None:
            # one token after the cached state (a decoding step): the scans below reduce to these (an Infill_Start
            # alone has no placeholders in its forward to go back over)
            return (torch.where(program_set != -1, program_set, state[:, 0:1]),
                    torch.where(position_set != -1, position_set, state[:, 1:2]), bar_count + state[:, 2:3])
        infill = self.infill_table[ids]
        first = self._infill_run_starts(infill, restart)
        at_start, first = first >= 0, first.clamp(min=0)
        counted = torch.cumsum(bar_count, dim=-1)
        bar_count = torch.where(at_start, counted.gather(-1, first) - 1 - counted + bar_count, bar_count)
        position_set = torch.where(at_start, NO_VALUE, position_set)
        program_then = _carry(program_set, restart, state, 0).gather(-1, first)
        program_set = torch.where(at_start, torch.where(program_then >= 0, program_then, NO_VALUE), program_set)
        program, position = _carry(program_set, restart, state, 0), _carry(position_set, restart, state, 1)
        bars = torch.cumsum(bar_count, dim=-1)
        if state is not None:
            bars = bars + state[:, 2:3]
        if restart is not None:  # bars counted before a restart belong to the previous piece
            bars = bars - carry_forward(torch.where(restart, bars - bar_count, -1), default=0)
        return program, position, bars

    @staticmethod
    def _infill_run_starts(infill: torch.Tensor, restart: torch.Tensor | None) -> torch.Tensor:
        """At each Infill_Start, the index of the first placeholder of the last run before it in its sequence; -1
        elsewhere (and where there is none)."""
        placeholder = infill == INFILL_BAR
        follows = F.pad(placeholder[:, :-1], (1, 0), value=False)
        if restart is not None:
            follows = follows & ~restart
        steps = torch.arange(infill.shape[-1], device=infill.device).expand_as(infill)
        marks = torch.where(placeholder & ~follows, steps, -1)
        if restart is not None:
            marks = torch.where(restart & (marks == -1), NO_VALUE, marks)
        first = carry_forward(marks)
        return torch.where((infill == INFILL_START) & (first >= 0), first, -1)

    def music_attributes(self, ids: torch.Tensor, restart: torch.Tensor | None = None,
                         state: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per-position embedding indices (pitch class, octave, instrument, bar position, bar index) of `ids`."""
        return self._attributes(ids, restart, state)[0]

    def _attributes(self, ids: torch.Tensor, restart: torch.Tensor | None,
                    state: torch.Tensor | None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        pitch = self.pitch_table[ids]
        program, position, bars = self.carried(ids, restart, state)
        attributes = {
            "pitch_class": torch.where(pitch >= 0, pitch % 12 + 1, 0),
            "octave": torch.where(pitch >= 0, (pitch // 12).clamp(max=NUM_OCTAVES - 1) + 1, 0),
            "instrument": program + 1,  # -1 (none) -> 0, program p -> p + 1, drums 128 -> 129
            "bar_position": (position + 1).clamp(max=self.config.num_positions_in_bar),
            "bar_index": (bars - 1).clamp(min=0, max=self.config.max_bars - 1),
        }
        return attributes, torch.stack([program, position, bars], dim=1)

    def attribute_ids(self, input_ids: torch.Tensor | None, attribute_ids: torch.Tensor | None,
                      length: int) -> torch.Tensor:
        """The ids whose music attributes apply at each of `length` positions: `input_ids`, else `attribute_ids`
        aligned to the right (soft-prompt positions before them, as PEFT prompt tuning adds, carry none)."""
        ids = input_ids if input_ids is not None else attribute_ids
        if ids is None:
            raise ValueError(
                "inputs_embeds without input_ids: the music embeddings (note, instrument, bar position) need the "
                "token ids. Pass input_ids alongside inputs_embeds, or attribute_ids=<the ids the embeddings stand "
                "for>, or build the model with use_note_embedding, use_instrument_embedding and "
                "use_temporal_embedding all False")
        pad = self.config.pad_token_id if self.config.pad_token_id is not None else 0
        ids = torch.where((ids < 0) | (ids >= self.config.vocab_size), pad, ids)
        if ids.shape[1] < length:
            ids = F.pad(ids, (length - ids.shape[1], 0), value=pad)
        return ids[:, ids.shape[1] - length:]

    def forward(self, input_ids: torch.Tensor | None, position_ids: torch.Tensor,
                genre_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                attribute_ids: torch.Tensor | None = None, restart: torch.Tensor | None = None,
                state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The summed embeddings (B, T, H) and the carried values at each position (B, 3, T) for the cache."""
        x = self.token(input_ids) if inputs_embeds is None else inputs_embeds
        cfg = self.config
        carried = None
        if self.uses_attributes:
            attrs, carried = self._attributes(self.attribute_ids(input_ids, attribute_ids, x.shape[1]), restart, state)
            if cfg.use_note_embedding:
                x = x + self.pitch_class(attrs["pitch_class"]) + self.octave(attrs["octave"])
            if cfg.use_instrument_embedding:
                x = x + self.instrument(attrs["instrument"])
            if cfg.use_temporal_embedding:
                x = x + self.bar_position(attrs["bar_position"]) + self.bar_index(attrs["bar_index"])
        if cfg.use_genre_embedding:
            if genre_ids is None:
                genre_ids = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
            genre_ids = genre_ids.view(-1)
            if not is_torchdynamo_compiling() and ((genre_ids < 0) | (genre_ids >= cfg.num_genres)).any():
                bad = sorted({int(g) for g in genre_ids.tolist() if not 0 <= g < cfg.num_genres})
                raise ValueError(f"genre_ids {bad} outside this model's genres {cfg.id2genre}")
            x = x + self.genre(genre_ids)[:, None, :]
        if cfg.position_embedding_type == "learned":
            x = x + self.position(position_ids.clamp(max=cfg.max_position_embeddings - 1))
        return (self.dropout(x) if self.training else x), carried


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
    _can_compile_fullgraph = True
    _can_record_outputs = {"hidden_states": MusicDecoderLayer, "attentions": MusicAttention}

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, CausalBatchNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
        elif isinstance(module, MusicEmbeddings):
            for name in ATTRIBUTE_BUFFERS:
                init.copy_(getattr(module, name + "_table"), module.table(name))
        elif isinstance(module, MusicRotaryEmbedding):
            init.copy_(module.inv_freq, module.compute_inv_freq())

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                                mean_resizing: bool = True) -> nn.Embedding:
        """transformers' resize, plus the per-id attribute tables: new ids (added special tokens, padding to a
        multiple) get neutral attributes (no pitch, program, position or bar), removed ids lose theirs."""
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        self.config.resize_attribute_tables(embeddings.num_embeddings)
        self.get_base_model().embeddings.reset_tables()
        return embeddings

    def get_base_model(self) -> MusicModel:
        return getattr(self, self.base_model_prefix, self)

    @torch.no_grad()
    def embed_piece(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    genre_ids: torch.Tensor | None = None) -> torch.Tensor:
        """A fixed-size, L2-normalized embedding per sequence (mean of final hidden states over real tokens),
        for similarity search and recommendation."""
        hidden = self.get_base_model()(input_ids=input_ids, attention_mask=attention_mask, genre_ids=genre_ids,
                                       use_cache=False).last_hidden_state
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

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        genre_ids: torch.LongTensor | None = None,
        attribute_ids: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """`genre_ids` (B,): one genre per sequence (0 = unknown). `attribute_ids` (B, <=T): with `inputs_embeds`
        and no `input_ids`, the ids whose music attributes apply (right-aligned; earlier positions carry none).
        `position_ids` going back to 0 inside a row start a new sequence there (packed, padding-free batches)."""
        if input_ids is None and inputs_embeds is None:
            raise ValueError("MusicModel needs input_ids or inputs_embeds")
        reference = inputs_embeds if inputs_embeds is not None else input_ids
        batch, length = reference.shape[:2]
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        cache = music_cache(cache, self.config)
        # `generate` may pass the masks already built per layer pattern ("hybrid": attention + 2D padding mask)
        premade = attention_mask if isinstance(attention_mask, dict) else None
        padding = attention_mask if premade is None and attention_mask is not None and attention_mask.dim() == 2 else None
        if position_ids is None and padding is not None:
            # count real tokens only, so a left-padded row gets the positions it would have alone
            position_ids = (padding.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]
        elif position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            position_ids = (torch.arange(length, device=reference.device) + past)[None].expand(batch, -1)
        restart = position_ids == 0
        # a decoding step (one token, a dynamic cache, eager mode): no restart is the usual case, and then the
        # carried attributes and the convs skip their restart handling (the same values, fewer ops)
        decoding = (length == 1 and cache is not None and not cache.is_compileable
                    and not is_torchdynamo_compiling())
        if decoding and not restart.any():
            restart = None
        state = None
        if cache is not None and self.embeddings.uses_attributes:
            state = cache.get_conv_state(0, CARRIED_STATE)
            state = state[..., -1] if state is not None else None
        hidden, carried = self.embeddings(input_ids, position_ids, genre_ids, inputs_embeds, attribute_ids,
                                          restart, state)
        if cache is not None and carried is not None:
            cache.update_conv_state(carried, 0, CARRIED_STATE, conv_kernel_size=1)
        if premade is not None:
            mask, token_mask = premade["full_attention"], premade.get("linear_attention")
        elif (decoding and self.config._attn_implementation in ("sdpa", "eager")
              and (attention_mask is None or (padding is not None and padding.all()))):
            mask, token_mask = None, None  # one query, no padding: it sees every cached key, nothing to mask
        else:
            mask = create_causal_mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask,
                                      cache=cache, position_ids=position_ids)
            token_mask = padding[:, -length:] if padding is not None else None
        rotary = self.rotary(hidden, position_ids) if self.rotary is not None else None
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=mask, position_embeddings=rotary, token_mask=token_mask,
                           restart=restart, cache=cache, **kwargs)
        hidden = self.norm(hidden, token_mask)
        return BaseModelOutputWithPast(last_hidden_state=hidden, cache=cache if use_cache else None)

    def _decode_step(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                     position_ids: torch.Tensor | None, cache: Cache | None,
                     genre_ids: torch.Tensor | None, lm_head: nn.Module | None = None) -> torch.Tensor | None:
        """The final hidden states (B, 1, H) of one decoding step (with `lm_head`: its logits (B, 1, V)), by a
        shorter route than `forward`: or None where that route does not apply, and `forward` is to run instead.

        The route: one new token per row after a cached history in a dynamic music cache, no padding and no restart,
        eval mode, SDPA attention, no outputs requested, no hooks on the modules it goes around (the blocks and
        their norms, attention, conv and MLP). It computes the values `forward` computes without the mask building,
        the restart handling, the module calls and the cache's dispatch, which are most of a small model's decoding
        step on a CPU: rows kept (B, H), q and k rotated together from tables, plain linear layers as matrix-vector
        products with the RMSNorm before them folded in, the note embeddings summed into one table (`_StepPlan`,
        made once per `generate` call). Adapters, quantized layers and hooked modules are called as modules. The
        logits agree with `forward`'s up to float rounding (sums in another order; about 2e-5 on the shipped model's
        logits, which span about 30)."""
        if (self.training or input_ids is None or input_ids.dim() != 2 or input_ids.shape[1] != 1
                or not isinstance(cache, Cache) or cache.is_compileable or getattr(cache, "offloading", False)
                or self.config._attn_implementation != "sdpa" or is_torchdynamo_compiling()
                or torch.is_autocast_enabled(input_ids.device.type)):
            return None  # (autocast: its casts apply to modules and ops the route replaces)
        first = self.layers[0].conv
        layers, conv = cache.layers, first is not None and first.kernel_size > 1  # (kernel 1: no conv state)
        if (len(layers) != len(self.layers) or any(type(layer) is not MusicCacheLayer or not layer.is_initialized
                                                   or layer.record_past
                                                   or (conv and not layer.has_previous_state[CONV_STATE])
                                                   for layer in layers)):
            return None  # (recording past states for assisted decoding: the cache's own updates keep them)
        plan = self._step_plan(cache, lm_head)
        if plan is None or torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
            return None
        batch = input_ids.shape[0]
        if attention_mask is not None and (attention_mask.dim() != 2 or not attention_mask.all()):
            return None  # padding: the masks of `forward`
        embeddings = self.embeddings
        learned = "position" in embeddings._modules
        if position_ids is None:  # as `forward` counts them (real tokens; here all of them are)
            position = attention_mask.shape[1] - 1 if attention_mask is not None else cache.get_seq_length()
            if position == 0:
                return None
            if learned:
                position = min(position, embeddings.position.num_embeddings - 1)
            position_ids = torch.full((batch, 1), position, dtype=torch.long, device=input_ids.device)
        elif (position_ids == 0).any():
            return None  # a restart
        elif learned:
            position_ids = position_ids.clamp(max=embeddings.position.num_embeddings - 1)
        state = None
        if embeddings.uses_attributes:
            if not layers[0].has_previous_state[CARRIED_STATE]:
                return None
            state = layers[0].conv_states[CARRIED_STATE]  # (B, 3, 1)
        hidden, carried = embeddings._step(input_ids, position_ids, genre_ids,
                                           state[..., -1] if state is not None else None, plan.note_table)
        if carried is not None:  # the cache's update of a one-step state, in place
            state.copy_(carried)
        # the rows: (H,) for one float32 row (matrix-vector products, no batch dimension to index), else (B, H)
        hidden = hidden.view(-1) if batch == 1 and hidden.dtype == torch.float32 else hidden.view(batch, -1)
        rotary = self.rotary.step_tables(position_ids.view(batch), hidden.dtype) if self.rotary is not None else None
        for idx, attn_in, head_dim, scaling, o_proj, conv_norm, taps, mlp_in, act, fc_out in plan.blocks:
            qkv = attn_in(hidden)
            width = qkv.shape[-1] // 3
            heads = width // head_dim
            # (B, heads, 1, head_dim) views of the projection, as `MusicAttention` takes them
            v = qkv[..., 2 * width:].view(batch, heads, 1, head_dim)
            qk = qkv[..., :2 * width].view(batch, 2 * heads, head_dim)
            if rotary is not None:  # q and k rotated together: `apply_rotary`'s products and sums (see step_tables)
                cos, sin, swap = rotary
                qk = qk * cos + qk.index_select(-1, swap) * sin
            q, k = qk.view(batch, 2, heads, 1, head_dim).unbind(1)
            cached = layers[idx]  # the cache's update (a dynamic layer: concatenation), without its dispatch
            k = cached.keys = torch.cat([cached.keys, k], dim=-2)
            v = cached.values = torch.cat([cached.values, v], dim=-2)
            # transformers' SDPA attention for one query and no mask: no causal flag, all keys; (B, heads, 1, d)
            # is laid out as the rows
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, scale=scaling,
                                                 is_causal=False)
            hidden = hidden + o_proj(out.view(hidden.shape))
            if conv_norm is not None:
                kernel, out, weights = taps
                window = conv_norm(hidden).view(batch, -1, 1)  # (B, H, 1), the cache's conv-state layout
                if kernel > 1:  # the state and the new input side by side, (B, H, kernel); the state keeps the last
                    state = cached.conv_states[CONV_STATE]  # kernel - 1 (the cache's update_conv_state, in place)
                    window = torch.cat([state, window], dim=-1)
                    state.copy_(window[..., 1:])
                # the sums of CausalDepthwiseConv, tap by tap in the same order, on the rows
                window = window[0] if hidden.dim() == 1 else window
                for tap, weight in zip(window[..., window.shape[-1] - kernel:].unbind(-1), weights):
                    out = torch.addcmul(out, tap, weight)
                hidden = hidden + out
            hidden = hidden + fc_out(act(mlp_in(hidden)))
        return plan.final(hidden).view(batch, 1, -1)

    def _step_plan(self, cache: Cache, lm_head: nn.Module | None) -> _StepPlan | None:
        """The `_StepPlan` of this model for `cache` (made at its first step; a new cache, a new plan, so weights
        changed between `generate` calls are read again), or None where a module the step goes around has hooks
        (checked once per cache)."""
        found = _STEP_PLANS.get(self)
        if found is None or found[0]() is not cache or found[2] is not lm_head:
            plan = _StepPlan(self, lm_head) if _unhooked(self._bypassed_modules()) else None
            found = _STEP_PLANS[self] = (weakref.ref(cache), plan, lm_head)
        return found[1]

    def _bypassed_modules(self) -> list[nn.Module]:
        """The modules `_decode_step` goes around (whose hooks it would skip)."""
        modules: list[nn.Module] = [self, self.embeddings]
        for layer in self.layers:
            modules += [layer, layer.attn, layer.mlp]
            for norm in (layer.attn_norm, layer.conv_norm, layer.mlp_norm):
                if norm is not None:
                    modules += [norm, norm.norm]
            if layer.conv is not None:
                modules.append(layer.conv)
        return modules + [self.norm, self.norm.norm]


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

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, next_sequence_length: int | None = None,
                                      cache: Cache | None = None, attention_mask: torch.Tensor | None = None,
                                      inputs_embeds: torch.Tensor | None = None,
                                      is_first_iteration: bool | None = False, **kwargs) -> dict:
        """transformers' inputs of a generation step; a decoding step (one new token per row, a dynamic cache) gets
        the same inputs by a shorter route (transformers' own inspects `forward`'s signature at every step of a
        model registered for the Auto classes, as this one is)."""
        if (next_sequence_length != 1 or is_first_iteration or kwargs.get("past_key_values") is not None
                or not isinstance(cache, Cache) or cache.is_compileable
                or any(kwargs.get(key) is not None for key in _SLICED_GENERATION_INPUTS)
                or input_ids.device != self.model.embeddings.token.weight.device):
            if "past_key_values" not in kwargs:
                kwargs["cache"] = cache
            return super().prepare_inputs_for_generation(
                input_ids, next_sequence_length=next_sequence_length, attention_mask=attention_mask,
                inputs_embeds=inputs_embeds, is_first_iteration=is_first_iteration, **kwargs)
        inputs = {"input_ids": input_ids[:, -1:].clone(memory_format=torch.contiguous_format), "cache": cache}
        if (position_ids := kwargs.pop("position_ids", None)) is not None:
            inputs["position_ids"] = position_ids[..., -1:].clone(memory_format=torch.contiguous_format)
        if attention_mask is not None:
            inputs["attention_mask"] = attention_mask
        prefill_only = kwargs.get("use_cache", True)  # multimodal inputs go only into the prefill
        for key, value in kwargs.items():
            if key not in ("labels", "next_sequence_length") and not (
                    prefill_only and key in MULTIMODAL_INPUTS_TO_DROP_OUTSIDE_PREFILL):
                inputs.setdefault(key, value)
        return inputs

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        genre_ids: torch.LongTensor | None = None,
        attribute_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """`labels` are the input ids (shifted inside the loss), -100 where ignored; `shift_labels` (already
        shifted, as context parallelism passes them) may replace them. `num_items_in_batch` normalizes the summed
        loss by a token count shared across accumulation steps and processes."""
        loss_kwargs = {k: kwargs.pop(k) for k in ("num_items_in_batch", "ignore_index", "shift_labels") if k in kwargs}
        if (labels is None and not loss_kwargs and inputs_embeds is None and attribute_ids is None
                and (use_cache if use_cache is not None else self.config.use_cache)
                and all(v is None or v is False for v in kwargs.values()) and not self.config.output_attentions
                and not self.config.output_hidden_states):
            # a decoding step: the short route when it applies (the same values; see MusicModel._decode_step)
            logits = self.model._decode_step(input_ids, attention_mask, position_ids, cache, genre_ids, self.lm_head)
            if logits is not None:
                if isinstance(logits_to_keep, torch.Tensor):
                    logits = logits[:, logits_to_keep]
                return CausalLMOutputWithPast(logits=logits, cache=cache)
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             cache=cache, inputs_embeds=inputs_embeds, genre_ids=genre_ids,
                             attribute_ids=attribute_ids, use_cache=use_cache, return_dict=True, **kwargs)
        hidden = outputs.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden = hidden[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden = hidden[:, logits_to_keep]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None or loss_kwargs.get("shift_labels") is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **loss_kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=outputs.cache,
                                      hidden_states=outputs.hidden_states, attentions=outputs.attentions)


class MusicForSequenceClassification(MusicPreTrainedModel):
    """Genre (or any label) from the last real token's hidden state (transformers' generic pooling and loss).

    Written out rather than inherited from `GenericForSequenceClassification`: the generic forward reads its base
    model's output as a ModelOutput, which breaks where `config.return_dict` is False, and its base model comes from
    `AutoModel.from_config`, which cannot find `MusicModel` when loaded with `trust_remote_code`.
    """

    def __init__(self, config: MusicConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = MusicModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        genre_ids: torch.LongTensor | None = None,
        attribute_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutputWithPast:
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             cache=cache, inputs_embeds=inputs_embeds, genre_ids=genre_ids,
                             attribute_ids=attribute_ids, use_cache=use_cache, return_dict=True, **kwargs)
        logits = self.score(outputs.last_hidden_state)
        batch = logits.shape[0]
        ids = input_ids if input_ids is not None else attribute_ids
        if self.config.pad_token_id is None or ids is None or ids.shape[1] != logits.shape[1]:
            last = torch.full((batch,), logits.shape[1] - 1, device=logits.device)
        else:  # the rightmost real token, for left and right padding alike
            real = (ids != self.config.pad_token_id).to(logits.device, torch.int32)
            last = (torch.arange(ids.shape[-1], device=logits.device, dtype=torch.int32) * real).argmax(-1)
        pooled = logits[torch.arange(batch, device=logits.device), last]
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, pooled_logits=pooled, config=self.config)
        return SequenceClassifierOutputWithPast(loss=loss, logits=pooled, cache=outputs.cache,
                                                hidden_states=outputs.hidden_states, attentions=outputs.attentions)


__all__ = ["MusicPreTrainedModel", "MusicModel", "MusicForCausalLM", "MusicForSequenceClassification",
           "MusicCacheLayer", "MusicStaticCacheLayer", "carry_forward"]
