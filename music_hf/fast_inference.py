"""Fast CPU generation, switched on with one argument: `generate_music(..., backend="onnx")` (or `generate_midi`,
`scripts/generate.py --backend onnx`).

Backends:

- `"torch"` (the default): the PyTorch model's own decoding step (`MusicModel._decode_step`) in the lean loop
  below; the same tokens as `model.generate`, which runs transformers' general loop.
- `"onnx"`: the model's decoding step (one new token per row, with the KV cache, the conv states and the carried
  music attributes as inputs and outputs) exported to ONNX and run by ONNX Runtime; the prompt goes through the
  PyTorch model once (the prefill), then every new token is one ONNX Runtime call in a lean loop. The same float32
  math up to the order of roundings: greedy decoding gives the same tokens as `"torch"` (the tests and the bench
  check it), and sampling the same samples for a seed.
- `"onnx-int8"`: the same graph with its matrix multiplies quantized to int8 by ONNX Runtime's dynamic quantization
  (weights int8, activations quantized per call): smaller and a little faster, with a small change in the
  probabilities (`sequence_nll` measures it; the tests bound it).

Generation stays transformers' `generate`: its settings, logits processors (the grammar constraint, temperature,
top-k/p, classifier-free guidance), stopping criteria (EOS, `max_time`, a progress callback) and seeds apply as in
`model.generate`; only the greedy/sampling decoding loop is replaced (`_FastSampling._sample`, the lean loop: at
batch 1 on a CPU transformers' general loop costs about as much per token as a small model's step, in per-step
input preparation, output objects and kwargs bookkeeping). Anything that loop does not cover (beam search, padded
batches, attentions or hidden states in the output, model inputs other than the genre, a cache other than a
`DynamicCache`; for the ONNX backends also forward hooks on the model's modules and other devices than the CPU)
runs in transformers' loop as usual.
Classifier-free guidance's unconditional forward stays PyTorch (transformers' processor calls the model itself).
With `return_dict_in_generate`, scores and logits come back as usual, and the cache with "torch" (with the ONNX
backends none: the session holds the state).

ONNX Runtime and `onnx` come with the optional extra `fast` (`pip install music-hf[fast]`); `available_backends()`
lists what this installation can run. The exported graph lives in memory, made once per model and weights
(a change of the weights, e.g. more training, makes a new one), with ONNX Runtime using `torch.get_num_threads()`
threads.
"""

from __future__ import annotations

import copy
import inspect
import io
import logging
import os
import tempfile
import time
import warnings
import weakref
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria, MaxTimeCriteria
from transformers.generation.utils import GenerateDecoderOnlyOutput

from .modeling_music import CARRIED_STATE, CONV_STATE, _norm_step, _unhooked

BACKENDS = ("torch", "onnx", "onnx-int8")
_FAST: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {backend: (fingerprint, fast model)}


def available_backends() -> list[str]:
    """The backends this installation can run ("onnx" ones need onnxruntime and onnx: the extra `fast`)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return ["torch"]
    return list(BACKENDS)


def check_backend(backend: str) -> str:
    """`backend` if it is one of `BACKENDS` and installed, else a ValueError / ImportError saying what to do."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(map(repr, BACKENDS))}")
    if backend != "torch" and backend not in available_backends():
        raise ImportError(f"backend {backend!r} needs onnxruntime and onnx: pip install 'music-hf[fast]'")
    return backend


def default_backend(model: Any) -> str:
    """The fastest backend for `model` here: "onnx" for a music model on the CPU where ONNX Runtime is installed,
    else "torch" (what the Space uses)."""
    on_cpu = next(model.parameters()).device.type == "cpu"
    music = getattr(getattr(model, "config", None), "model_type", None) == "music"
    return "onnx" if on_cpu and music and "onnx" in available_backends() else "torch"


def fast_model(model: Any, backend: str = "onnx") -> Any:
    """`model` as a model whose `generate` decodes with `backend` in the lean loop of `_FastSampling` ("torch": the
    PyTorch model's own decoding step; a model other than MusicForCausalLM: `model` itself).

    The returned object shares `model`'s modules and weights (a shallow copy whose class replaces the decoding loop);
    it and its ONNX Runtime session are kept while `model` lives and its weights do not change."""
    check_backend(backend)
    music = (getattr(getattr(model, "config", None), "model_type", None) == "music"
             and hasattr(getattr(model, "model", None), "_decode_step") and hasattr(model, "lm_head"))
    if backend == "torch":  # the PyTorch model in the lean loop (another model: itself, in transformers' loop)
        if not music:
            return model
        kept = _FAST.setdefault(model, {})
        if "torch" not in kept:
            fast = copy.copy(model)
            fast.__class__ = _fast_class(type(model))
            fast._decoder = TorchDecoder()
            kept["torch"] = (None, fast, None)
        return _synced(kept["torch"][1], model)
    if not music:
        raise ValueError(f"backend {backend!r} runs MusicForCausalLM models, not {type(model).__name__}")
    if next(model.parameters()).device.type != "cpu":
        raise ValueError(f"backend {backend!r} runs on the CPU; this model is on "
                         f"{next(model.parameters()).device} (use backend='torch' there)")
    print_ = _fingerprint(model)
    kept = _FAST.setdefault(model, {})
    if backend in kept and kept[backend][0] == print_ and kept[backend][2] == torch.get_num_threads():
        return _synced(kept[backend][1], model)
    fast = copy.copy(model)  # the same modules, parameters and configs
    fast.__class__ = _fast_class(type(model))
    fast._decoder = OnnxDecoder(model, quantize=backend == "onnx-int8")
    kept[backend] = (print_, fast, torch.get_num_threads())
    return fast


def _synced(fast: nn.Module, model: nn.Module) -> nn.Module:
    """The kept copy with `model`'s attributes as they are now (a generation_config or config replaced since, the
    training flag): the copy shares what they point to, not later assignments."""
    decoder = fast.__dict__["_decoder"]
    fast.__dict__.update(model.__dict__)
    fast.__dict__["_decoder"] = decoder
    return fast


def _fingerprint(model: nn.Module) -> tuple:
    """Changes when a parameter or buffer is replaced or updated in place (training, loading weights)."""
    return tuple((t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers()))


# ----- the exported decoding step ----------------------------------------------------------------------------
def _export_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`_norm_step` in ops ONNX opset 17 has (RMSNorm written out, as `F.rms_norm` computes it)."""
    if norm.kind != "rmsnorm":
        return _norm_step(norm, x)
    inner = norm.norm
    eps = inner.eps if inner.eps is not None else torch.finfo(x.dtype).eps
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * inner.weight


class _DecodeStep(nn.Module):
    """One decoding step of a MusicForCausalLM as a function of tensors only (what ONNX export takes): the math of
    `MusicModel._decode_step`, with the cache's tensors as inputs and their updated versions as outputs.

    Inputs: input_ids (B, 1), position_ids (B, 1), genre_ids (B,), carried (B, 3) (the music attributes in force),
    then per block past keys and values (B, heads, L, head_dim) and conv states (B, H, kernel-1).
    Outputs: logits (B, V), carried (B, 3), per block keys and values (B, heads, L+1, head_dim), conv states."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        model = lm.model
        self.attributes = model.embeddings.uses_attributes
        self.kernel = model.config.conv_kernel_size
        self.learned = "position" in model.embeddings._modules

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, genre_ids: torch.Tensor,
                carried: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        model = self.lm.model
        n = len(model.layers)
        keys, values, convs = past[:n], past[n:2 * n], past[2 * n:]
        batch = input_ids.shape[0]
        positions = position_ids.clamp(max=model.embeddings.position.num_embeddings - 1) if self.learned \
            else position_ids
        # the note embeddings summed into one table: one lookup for three (a constant of the graph)
        hidden, new_carried = model.embeddings._step(input_ids, positions, genre_ids,
                                                     carried if self.attributes else None,
                                                     model.embeddings.note_table())
        rotary = None
        if model.rotary is not None:  # cos and sin once per step, q and k rotated together in each block
            # (`step_tables`' form: x * cos + x[swap] * sin with sin's first half negated, `apply_rotary`'s values)
            freqs = position_ids[..., None].float() * model.rotary.inv_freq  # (B, 1, dim / 2)
            cos, sin = freqs.cos(), freqs.sin()
            half = cos.shape[-1]
            swap = torch.cat([torch.arange(half, 2 * half), torch.arange(half)])
            rotary = (torch.cat([cos, cos], -1).to(hidden.dtype), torch.cat([-sin, sin], -1).to(hidden.dtype), swap)
        new_keys, new_values, new_convs = [], [], []
        for i, layer in enumerate(model.layers):
            attn = layer.attn
            h = _export_norm(layer.attn_norm, hidden)
            qkv = attn.qkv_proj(h).view(batch, -1, 1, attn.head_dim)  # (B, 3 heads, 1, head_dim)
            heads = qkv.shape[1] // 3
            qk, v = qkv[:, :2 * heads], qkv[:, 2 * heads:]
            if rotary is not None:
                cos, sin, swap = rotary
                qk = qk * cos[:, None] + qk.index_select(-1, swap) * sin[:, None]
            q, k = qk[:, :heads], qk[:, heads:]
            k, v = torch.cat([keys[i], k], dim=2), torch.cat([values[i], v], dim=2)
            new_keys.append(k)
            new_values.append(v)
            out = F.scaled_dot_product_attention(q, k, v, scale=attn.scaling)
            hidden = hidden + attn.o_proj(out.reshape(batch, 1, -1))
            if layer.conv is not None:
                conv = layer.conv.conv
                taps = _export_norm(layer.conv_norm, hidden).transpose(1, 2)  # (B, H, 1)
                if self.kernel > 1:
                    taps = torch.cat([convs[i], taps], dim=-1)
                    new_convs.append(taps[..., 1:])
                # the taps' products summed in one op (the PyTorch step adds them one by one: float rounding)
                hidden = hidden + (conv.bias + (taps * conv.weight[:, 0]).sum(-1))[:, None]
            hidden = hidden + layer.mlp.forward(_export_norm(layer.mlp_norm, hidden))
        logits = self.lm.lm_head(_export_norm(model.norm, hidden))[:, 0]
        carried = new_carried[..., 0] if new_carried is not None else carried
        return (logits, carried, *new_keys, *new_values, *new_convs)


class OnnxDecoder:
    """The decoding step of `model` in an ONNX Runtime session (exported in memory; `quantize`: int8 matmuls)."""

    def __init__(self, model: nn.Module, quantize: bool = False, threads: int | None = None):
        import onnxruntime as ort

        config = model.config
        self.layers = config.num_hidden_layers
        self.heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.kernel = config.conv_kernel_size
        self.attributes = model.model.embeddings.uses_attributes
        n = self.layers
        self.input_names = (["input_ids", "position_ids", "genre_ids", "carried"]
                            + [f"past_key_{i}" for i in range(n)] + [f"past_value_{i}" for i in range(n)]
                            + ([f"past_conv_{i}" for i in range(n)] if self.kernel > 1 else []))
        self.output_names = (["logits", "carried_out"] + [f"key_{i}" for i in range(n)]
                             + [f"value_{i}" for i in range(n)]
                             + ([f"conv_{i}" for i in range(n)] if self.kernel > 1 else []))
        graph = self._export(model)
        if quantize:
            graph = self._quantize(graph)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        kept = {i.name for i in self.session.get_inputs()}  # the export drops inputs the graph does not read
        self.feed_names = [name for name in self.input_names if name in kept]

    def _export(self, model: nn.Module) -> bytes:
        config = model.config
        n, batch, past = self.layers, 1, 3
        args = [torch.zeros(batch, 1, dtype=torch.long), torch.full((batch, 1), past, dtype=torch.long),
                torch.zeros(batch, dtype=torch.long), torch.zeros(batch, 3, dtype=torch.long)]
        args += [torch.zeros(batch, self.heads, past, self.head_dim) for _ in range(2 * n)]
        if self.kernel > 1:
            args += [torch.zeros(batch, config.hidden_size, self.kernel - 1) for _ in range(n)]
        dynamic = {name: {0: "batch"} for name in self.input_names + self.output_names}
        for i in range(n):
            for name in (f"past_key_{i}", f"past_value_{i}"):
                dynamic[name] = {0: "batch", 2: "past"}
            for name in (f"key_{i}", f"value_{i}"):
                dynamic[name] = {0: "batch", 2: "length"}
        buffer = io.BytesIO()
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(_DecodeStep(model), tuple(args), buffer, input_names=self.input_names,
                                  output_names=self.output_names, dynamic_axes=dynamic, opset_version=17,
                                  dynamo=False, do_constant_folding=True)
        except Exception as e:  # an op of this configuration the exporter does not know
            raise ValueError(f"this model's decoding step could not be exported to ONNX ({type(e).__name__}: "
                             f"{e}); use backend='torch'") from e
        finally:
            model.train(was_training)
        return buffer.getvalue()

    @staticmethod
    def _quantize(graph: bytes) -> bytes:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with tempfile.TemporaryDirectory() as folder:
            out = os.path.join(folder, "step_int8.onnx")
            root, level = logging.getLogger(), logging.getLogger().level
            root.setLevel(logging.ERROR)  # its advice to pre-process the graph, on the root logger
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    quantize_dynamic(onnx.load_from_string(graph), out, weight_type=QuantType.QInt8)
            finally:
                root.setLevel(level)
            with open(out, "rb") as f:
                return f.read()

    skips_hooks = True  # the session runs none of the modules' hooks

    def state(self, cache: Any, genre_ids: torch.Tensor | None, batch: int, model: Any = None
              ) -> dict[str, np.ndarray]:
        """The session's inputs (but the new ids and positions) from a music cache after the prefill."""
        feeds: dict[str, np.ndarray] = {}
        layers = cache.layers
        carried = layers[0].conv_states[CARRIED_STATE][..., -1] if self.attributes else None
        feeds["carried"] = _numpy(carried) if carried is not None else np.zeros((batch, 3), dtype=np.int64)
        genre = genre_ids.view(-1) if genre_ids is not None else torch.zeros(batch, dtype=torch.long)
        feeds["genre_ids"] = _numpy(genre.expand(batch) if genre.numel() == 1 else genre)
        for i, layer in enumerate(layers):
            feeds[f"past_key_{i}"], feeds[f"past_value_{i}"] = _numpy(layer.keys), _numpy(layer.values)
            if self.kernel > 1:
                conv = layer.conv_states[CONV_STATE]
                feeds[f"past_conv_{i}"] = _numpy(conv[..., conv.shape[-1] - (self.kernel - 1):])
        return feeds

    def step(self, feeds: dict[str, np.ndarray], tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Logits (B, V) of the next tokens `tokens` (B, 1) at `positions` (B, 1); `feeds` move on by one step."""
        feeds["input_ids"], feeds["position_ids"] = tokens, positions
        outputs = self.session.run(self.output_names, {name: feeds[name] for name in self.feed_names})
        n = self.layers
        feeds["carried"] = outputs[1]
        for i in range(n):
            feeds[f"past_key_{i}"], feeds[f"past_value_{i}"] = outputs[2 + i], outputs[2 + n + i]
            if self.kernel > 1:
                feeds[f"past_conv_{i}"] = outputs[2 + 2 * n + i]
        return outputs[0]


    def next_logits(self, feeds: dict[str, np.ndarray], tokens: torch.Tensor, positions: torch.Tensor
                    ) -> torch.Tensor:
        """`step` on tensors: float32 logits (B, V) of `tokens` (B, 1) at `positions` (B, 1)."""
        return torch.from_numpy(self.step(feeds, tokens.numpy(), positions.numpy()))


class TorchDecoder:
    """The decoding step of the PyTorch model itself, for the lean loop (backend "torch" of `generate_music`):
    `MusicModel._decode_step` with the LM head, or the model's `forward` where that route does not apply (hooks,
    autocast, adapters it calls as modules are all honoured: they are the model's own code paths)."""

    skips_hooks = False

    def state(self, cache: Any, genre_ids: torch.Tensor | None, batch: int, model: Any = None) -> dict[str, Any]:
        return {"model": model, "cache": cache, "genre_ids": genre_ids}

    @staticmethod
    def next_logits(feeds: dict[str, Any], tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        model, cache, genre = feeds["model"], feeds["cache"], feeds["genre_ids"]
        logits = model.model._decode_step(tokens, None, positions, cache, genre, model.lm_head)
        if logits is None:
            logits = model(tokens, position_ids=positions, cache=cache, genre_ids=genre, use_cache=True,
                           return_dict=True).logits
        return logits[:, -1].to(dtype=torch.float32)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().cpu().numpy())


# ----- the decoding loop -------------------------------------------------------------------------------------
class _FastSampling:
    """transformers' greedy/sampling loop (`GenerationMixin._sample`) reduced to its steps, each step after the
    prefill run by `_decoder` (the ONNX Runtime session, or the PyTorch model's own decoding step): the same
    processors, token choice, padding of finished rows and stopping criteria, without the per-step input
    preparation, output objects and kwargs bookkeeping transformers' general loop does for every model."""

    _decoder: OnnxDecoder | TorchDecoder

    def _sample(self, input_ids: torch.LongTensor, logits_processor: Any, stopping_criteria: Any,
                generation_config: Any, synced_gpus: bool = False, streamer: Any = None, **model_kwargs: Any) -> Any:
        config = generation_config
        mask = model_kwargs.get("attention_mask")
        cache = model_kwargs.get("cache")
        if (synced_gpus or (config.return_dict_in_generate and (config.output_attentions
                                                                  or config.output_hidden_states))
                or (mask is not None and not bool(mask.all())) or not model_kwargs.get("use_cache", True)
                or (cache is not None and not isinstance(cache, DynamicCache))
                or any(value is not None and value is not False for key, value in model_kwargs.items()
                       if key not in _LOOP_INPUTS)
                or not _unhooked(list(self.modules()) if self._decoder.skips_hooks else [self])
                or (self._decoder.skips_hooks and input_ids.device.type != "cpu")):
            # padding, recorded attentions or hidden states, another cache, model inputs the loop does not pass
            # on, hooks on the model's modules (which the session would skip): transformers' loop
            return super()._sample(input_ids, logits_processor, stopping_criteria, generation_config,
                                   synced_gpus=synced_gpus, streamer=streamer, **model_kwargs)
        pad = config._pad_token_tensor
        keep_scores = config.return_dict_in_generate and config.output_scores
        keep_logits = config.return_dict_in_generate and config.output_logits
        scores, raw_logits = (() if keep_scores else None), (() if keep_logits else None)
        batch = input_ids.shape[0]
        unfinished = torch.ones(batch, dtype=torch.long, device=input_ids.device)
        has_eos = any(hasattr(criteria, "eos_token_id") for criteria in stopping_criteria)
        position_ids = model_kwargs.get("position_ids")
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], dtype=torch.long)[None].expand(batch, -1)
        cache = cache if cache is not None else DynamicCache(config=self.config)
        outputs = self(input_ids, attention_mask=mask, position_ids=position_ids,
                       genre_ids=model_kwargs.get("genre_ids"), cache=cache, use_cache=True, logits_to_keep=1,
                       return_dict=True)
        logits = outputs.logits[:, -1].to(copy=True, dtype=torch.float32)
        decoder = self._decoder
        feeds = decoder.state(outputs.cache, model_kwargs.get("genre_ids"), batch, self)
        del outputs
        positions = position_ids[:, -1:]
        # the processors called one by one, as LogitsProcessorList calls those taking (input_ids, scores) only,
        # without its signature inspection of each one at every step
        processors = list(logits_processor)
        if any(len(inspect.signature(processor.__call__).parameters) > 2 for processor in processors):
            processors = [logits_processor]  # one that takes more (the list raises its own error)
        stops = _python_stops(stopping_criteria) if batch == 1 else None
        while True:
            next_scores = logits
            for processor in processors:
                next_scores = processor(input_ids, next_scores)
            if keep_scores:
                scores += (next_scores,)
            if keep_logits:
                raw_logits += (logits,)
            if config.do_sample:
                next_tokens = torch.multinomial(F.softmax(next_scores, dim=-1), num_samples=1).squeeze(1)
            else:
                next_tokens = torch.argmax(next_scores, dim=-1)
            if stops is not None:  # one row, the usual criteria: checked in Python (no finished row to pad)
                input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
                if streamer is not None:
                    streamer.put(next_tokens.cpu())
                if stops(input_ids.shape[1], int(next_tokens[0])):
                    break
                positions = positions + 1
                logits = decoder.next_logits(feeds, next_tokens[:, None], positions)
                continue
            if has_eos:
                next_tokens = next_tokens * unfinished + pad * (1 - unfinished)
            input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
            unfinished = unfinished & ~stopping_criteria(input_ids, scores)
            if streamer is not None:
                streamer.put(next_tokens.cpu())
            if unfinished.max() == 0:
                break
            positions = positions + 1
            logits = decoder.next_logits(feeds, next_tokens[:, None], positions)
        if streamer is not None:
            streamer.end()
        if config.return_dict_in_generate:
            return GenerateDecoderOnlyOutput(sequences=input_ids, scores=scores, logits=raw_logits,
                                             cache=feeds.get("cache"))
        return input_ids


def _python_stops(criteria: Any) -> Any:
    """For one row: a function (sequence length, new token) -> stop, equal to `criteria`'s verdict where every
    criterion is one of transformers' MaxLengthCriteria, EosTokenCriteria and MaxTimeCriteria (what `generate`
    builds from max_new_tokens, the EOS id and max_time); None for any other (it is called as it is)."""
    lengths, eos, times = [], set(), []
    for criterion in criteria:
        kind = type(criterion)
        if kind is MaxLengthCriteria:
            lengths.append(int(criterion.max_length))
        elif kind is EosTokenCriteria:
            eos.update(torch.as_tensor(criterion.eos_token_id).view(-1).tolist())
        elif kind is MaxTimeCriteria:
            times.append((criterion.initial_timestamp, criterion.max_time))
        else:
            return None
    longest = min(lengths, default=None)

    def stop(length: int, token: int) -> bool:
        return ((longest is not None and length >= longest) or token in eos
                or any(time.time() - start > limit for start, limit in times))
    return stop


# the model inputs the loop passes on (prefill) or carries itself (cache, positions, genre); anything else set
# (e.g. attribute_ids, inputs_embeds, a timing control of another model) sends the generation to transformers' loop
_LOOP_INPUTS = frozenset({"attention_mask", "cache", "use_cache", "position_ids", "genre_ids",
                          "logits_to_keep", "output_attentions", "output_hidden_states", "return_dict"})
_CLASSES: dict[type, type] = {}


def _fast_class(base: type) -> type:
    if base not in _CLASSES:
        _CLASSES[base] = type(f"Fast{base.__name__}", (_FastSampling, base), {"__module__": __name__})
    return _CLASSES[base]


# ----- measuring ---------------------------------------------------------------------------------------------
@torch.no_grad()
def sequence_nll(model: Any, ids: list[int] | torch.Tensor, backend: str = "torch", genre_id: int = 0) -> float:
    """Mean negative log-likelihood per predicted token of `ids` (one sequence, BOS first) under `backend`: the
    first token through the PyTorch model, every later one through the backend's decoding step, as generation
    runs them (teacher forcing). Compares a backend's probabilities with PyTorch's (e.g. int8's change)."""
    ids = torch.as_tensor(ids, dtype=torch.long).view(1, -1)
    genre = torch.tensor([genre_id])
    if backend == "torch":
        logits = model(ids, genre_ids=genre, use_cache=False).logits[0, :-1].float()
        return float(F.cross_entropy(logits, ids[0, 1:]))
    decoder = fast_model(model, backend)._decoder
    cache = DynamicCache(config=model.config)
    first = model(ids[:, :1], genre_ids=genre, cache=cache, use_cache=True).logits[:, -1].float()
    feeds = decoder.state(cache, genre, 1)
    steps = [first]
    for t in range(1, ids.shape[1] - 1):
        steps.append(torch.from_numpy(decoder.step(feeds, ids[:, t:t + 1].numpy(), np.array([[t]]))))
    return float(F.cross_entropy(torch.cat(steps), ids[0, 1:]))


__all__ = ["BACKENDS", "available_backends", "check_backend", "default_backend", "fast_model", "OnnxDecoder",
           "sequence_nll"]
