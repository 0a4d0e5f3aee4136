"""Speed of music-hf, each figure next to a reference measured in the same run: tokenization (MusicTokenizer vs
miditok called directly, one process and `datasets.map` with 2 processes), training throughput, memory and model
FLOPs utilization (MusicForCausalLM vs transformers' GPT2LMHeadModel of the same shape, on the same batches), and
generation in the shape of scripts/configs/small.yaml (batch-1 tokens/s of GPT-2, ours eager, ours grammar-constrained
and ours with the fast CPU backends side by side; batch 8; the KV cache's speedup; the real-time factor of
`generate_music`; the int8 backend's NLL change; memory per token of training and generation).

Writes the section "Speed" of BENCHMARKS.md and a JSON file with every measurement.

    python scripts/bench.py                                   # CPU, or CUDA when present
    python scripts/bench.py --quick --output /tmp/bench.md    # smoke run: tiny sizes

Reference and candidate run interleaved (A, B, A, B ...) after warm-up; each figure is the median of the
repetitions.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from torch import nn
from transformers.hf_argparser import HfArg

from .configuration_music import UNKNOWN_GENRE
from .corpus import prepare_corpus
from .reports import Report
from .tokenization_music import MusicTokenizer
from .training import TrainConfig, build_model, model_inputs, parameter_groups

REPO = Path(__file__).resolve().parents[1]


@dataclass
class BenchArguments:
    """Which settings to measure with and where the results go."""

    quick: bool = HfArg(default=False, help="smoke run: tiny sizes, 1-2 repetitions, 1 thread")
    output: str = HfArg(default="BENCHMARKS.md", help="Markdown report (its section 'Speed' is rewritten)")
    json: str | None = HfArg(default=None, help="all measurements (none: outputs/bench[_quick].json)")
    device: str = HfArg(default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    threads: int | None = HfArg(default=None, help="torch CPU threads (none: torch's choice; quick: 1)")


@dataclass
class Settings:
    """What one run measures and how often; `quick()` and `for_cuda()` derive the other presets."""

    collections: tuple[str, ...] = ("bach", "essenFolksong", "ryansMammoth", "trecento")
    pieces_per_collection: int = 50
    token_reps: int = 15  # its ratio swings by a few % between passes (garbage collection, caches): a longer median
    map_reps: int = 5
    map_scale_repeat: int = 10  # datasets.map scaling (num_proc 1 vs 2) on the files this many times over
    hidden_size: int = 128  # the shape of scripts/configs/small.yaml (without its conv, which GPT-2 lacks)
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 512
    context: int = 256
    batch_size: int = 16
    train_warmup: int = 2
    train_reps: int = 7
    steps_per_rep: int = 2
    gen_tokens: int = 256
    gen_batches: tuple[int, ...] = (1, 8)
    gen_reps: int = 5
    # generation measures the shape of scripts/configs/small.yaml (width 192, MLP 768, conv kernel 4; GPT-2 has no
    # conv): what the CPU quickstart trains and the Space runs
    gen_hidden_size: int = 192
    gen_intermediate_size: int = 768
    gen_conv_kernel_size: int = 4
    cache_tokens: int = 1024
    cache_reps: int = 3
    rtf_tokens: int = 256
    rtf_reps: int = 3
    nll_windows: int = 4
    matmul_size: int = 2048
    mixed_precision: str = "no"

    def quick(self) -> Settings:
        return replace(self, collections=("bach", "essenFolksong"), pieces_per_collection=8, token_reps=2, map_reps=1,
                       map_scale_repeat=2,
                       hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, context=64,
                       batch_size=4, train_warmup=1, train_reps=2, steps_per_rep=1, gen_tokens=16, gen_reps=1,
                       gen_hidden_size=32, gen_intermediate_size=64, cache_tokens=48, cache_reps=1, rtf_tokens=16,
                       rtf_reps=1, nll_windows=2, matmul_size=256)

    def for_cuda(self) -> Settings:  # the shape of scripts/configs/gpu.yaml, in bf16
        return replace(self, hidden_size=512, num_hidden_layers=8, num_attention_heads=8, intermediate_size=2048,
                       context=1024, batch_size=16, matmul_size=8192, mixed_precision="bf16", gen_hidden_size=512,
                       gen_intermediate_size=2048)


# ----- timing ----------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], Any]], reps: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of each function, called in turn `reps` times, the order reversed every other round
    (A B, B A, A B ...) so that neither side always runs first. Each call starts after a full garbage collection
    (not timed): otherwise the collections that the garbage of earlier calls sets off land on every other call,
    whichever function it is (seen in the tokenizer rows: calls alternating between 0.57 s and 0.82 s, so the
    medians compared a slow slot with a fast one); a collection the call's own garbage sets off still counts."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for rep in range(reps):
        for name in (list(fns) if rep % 2 == 0 else list(fns)[::-1]):
            fn = fns[name]
            gc.collect()
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


# ----- tokenization ----------------------------------------------------------------------------------------
def ours_batch(batch: dict[str, list], tokenizer: MusicTokenizer) -> dict[str, list]:
    return {"input_ids": [tokenizer(p)["input_ids"] for p in batch["path"]]}


def miditok_batch(batch: dict[str, list], tokenizer: MusicTokenizer) -> dict[str, list]:
    return {"input_ids": [tokenizer.miditok.encode(Path(p)).ids for p in batch["path"]]}


def bench_tokenization(tokenizer: MusicTokenizer, files: list[str], s: Settings) -> tuple[dict[str, Any], list]:
    """Files/s and tokens/s of MusicTokenizer and of miditok on the same files, in one process and through
    `datasets.map(num_proc=2)`. Returns the results and our token ids (the training batches reuse them)."""
    ours = [tokenizer(p)["input_ids"] for p in files]  # warm-up, and the token counts
    theirs = [tokenizer.miditok.encode(Path(p)).ids for p in files]
    counts = {"music_hf": sum(map(len, ours)), "miditok": sum(map(len, theirs))}
    cpu = torch.device("cpu")
    # both keep only the ids (keeping miditok's whole TokSequence objects alive costs it extra garbage collection)
    single = interleaved({"miditok": lambda: [tokenizer.miditok.encode(Path(p)).ids for p in files],
                          "music_hf": lambda: [tokenizer(p)["input_ids"] for p in files]}, s.token_reps, cpu)
    ds = datasets.Dataset.from_dict({"path": files})

    def mapped(fn: Callable, num_proc: int = 2, data: datasets.Dataset = ds) -> Callable[[], Any]:
        return lambda: data.map(fn, batched=True, batch_size=8, num_proc=num_proc, fn_kwargs={"tokenizer": tokenizer},
                                remove_columns=["path"], keep_in_memory=True, load_from_cache_file=False)
    datasets.disable_progress_bars()
    multi = interleaved({"miditok": mapped(miditok_batch), "music_hf": mapped(ours_batch)}, s.map_reps, cpu)
    # scaling: the same map with 1 and with 2 processes on a corpus-sized job (the files, repeated), where the
    # processes' start-up is a small part as it is in data preparation (thousands of files), not most of it
    many = datasets.Dataset.from_dict({"path": files * s.map_scale_repeat})
    scaling = interleaved({"1": mapped(ours_batch, 1, many), "2": mapped(ours_batch, 2, many)}, s.map_reps, cpu)
    results: dict[str, Any] = {"files": len(files), "tokens": counts}
    t = {name: median(v) for name, v in scaling.items()}
    results["map_scaling"] = {"files": len(many), "repeat": s.map_scale_repeat,
                              **{f"num_proc_{n}": {"seconds": t[n], "files_per_s": len(many) / t[n],
                                                   "all_seconds": scaling[n]} for n in t},
                              "speedup": t["1"] / t["2"]}
    for mode, times in (("single_process", single), ("datasets_map_2_proc", multi)):
        t = {name: median(v) for name, v in times.items()}
        results[mode] = {
            name: {"seconds": t[name], "files_per_s": len(files) / t[name], "tokens_per_s": counts[name] / t[name],
                   "all_seconds": times[name]} for name in times}
        results[mode]["overhead_ratio"] = t["music_hf"] / t["miditok"]  # our time per file over miditok's
    return results, ours


# ----- training --------------------------------------------------------------------------------------------
def model_config(s: Settings, architecture: str, max_positions: int | None = None) -> TrainConfig:
    return TrainConfig().replace(architecture=architecture, hidden_size=s.hidden_size,
                                 num_hidden_layers=s.num_hidden_layers, num_attention_heads=s.num_attention_heads,
                                 intermediate_size=s.intermediate_size,
                                 max_position_embeddings=max_positions or s.context, conv_kernel_size=0)


def generation_config(s: Settings, architecture: str, max_positions: int) -> TrainConfig:
    """The generation benchmark's shape (scripts/configs/small.yaml's on the CPU); the conv is ours only."""
    return TrainConfig().replace(architecture=architecture, hidden_size=s.gen_hidden_size,
                                 num_hidden_layers=s.num_hidden_layers, num_attention_heads=s.num_attention_heads,
                                 intermediate_size=s.gen_intermediate_size, max_position_embeddings=max_positions,
                                 conv_kernel_size=s.gen_conv_kernel_size if architecture == "music" else 0)


def load_now() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def make_batches(ids: list[list[int]], s: Settings, n: int, vocab: int) -> list[dict[str, torch.Tensor]]:
    """`n` full batches of `context` tokens cut from the concatenated pieces (random ids if there are too few)."""
    stream = torch.tensor([t for piece in ids for t in piece], dtype=torch.long)
    need = n * s.batch_size * s.context
    if len(stream) < need:
        stream = torch.cat([stream, torch.randint(4, vocab, (need - len(stream),))])
    out = []
    for x in stream[:need].view(n, s.batch_size, s.context):
        out.append({"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x.clone(),
                    "genre_ids": torch.zeros(s.batch_size, dtype=torch.long)})
    return out


def matmul_parameters(model: nn.Module) -> int:
    """Weights that take part in a matrix multiply for each token: linear layers (GPT-2's Conv1D included) and
    the LM head; embedding lookups cost no multiplies and are left out."""
    total, seen = 0, set()
    for module in model.modules():
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            if id(module.weight) not in seen:
                seen.add(id(module.weight))
                total += module.weight.numel()
    return total


def flops_per_token(model: nn.Module, s: Settings) -> float:
    """Training FLOPs per token: 6 x matmul parameters (forward 2, backward 4) plus attention's 12 x layers x
    context x width (QK^T and AV, forward and backward; the causal mask's savings not counted), as in PaLM's MFU."""
    return 6.0 * matmul_parameters(model) + 12.0 * s.num_hidden_layers * s.context * s.hidden_size


def training_step_fn(model: nn.Module, batches: list[dict[str, torch.Tensor]], device: torch.device,
                     s: Settings) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.01), lr=1e-4)
    state = {"i": 0}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=s.mixed_precision == "bf16")

    def step() -> None:
        batch = {k: v.to(device, non_blocking=True) for k, v in batches[state["i"] % len(batches)].items()}
        state["i"] += 1
        with autocast:
            loss = model(**model_inputs(model, batch)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def matmul_fn(s: Settings, device: torch.device) -> tuple[Callable[[], Any], str]:
    """A multiply of two square matrices of `matmul_size` (fp32, or bf16 with mixed precision): the peak."""
    dtype = torch.bfloat16 if s.mixed_precision == "bf16" else torch.float32
    a = torch.randn(s.matmul_size, s.matmul_size, device=device, dtype=dtype)
    b = torch.randn(s.matmul_size, s.matmul_size, device=device, dtype=dtype)
    return (lambda: torch.matmul(a, b)), str(dtype).replace("torch.", "")


def bench_training(tokenizer: MusicTokenizer, ids: list[list[int]], s: Settings, device: torch.device
                   ) -> dict[str, Any]:
    """Training steps of both models and the matmul peak, interleaved, so MFU divides figures taken alike."""
    batches = make_batches(ids, s, 4, len(tokenizer))
    models, steps, results = {}, {}, {}
    for arch in ("music", "gpt2"):
        torch.manual_seed(0)
        models[arch] = build_model(model_config(s, arch), tokenizer, [UNKNOWN_GENRE]).to(device).train()
        steps[arch] = training_step_fn(models[arch], batches, device, s)
        for _ in range(s.train_warmup):
            steps[arch]()
    matmul, dtype = matmul_fn(s, device)
    matmul()

    def several(step: Callable[[], None]) -> Callable[[], None]:
        return lambda: [step() for _ in range(s.steps_per_rep)]
    times = interleaved({"matmul": matmul, **{arch: several(step) for arch, step in steps.items()}}, s.train_reps,
                        device)
    peak_gflops = 2 * s.matmul_size ** 3 / median(times["matmul"]) / 1e9
    results["matmul"] = {"size": s.matmul_size, "dtype": dtype, "seconds": median(times["matmul"]),
                         "gflops": peak_gflops, "all_seconds": times["matmul"]}
    tokens = s.batch_size * s.context * s.steps_per_rep
    for arch, model in models.items():
        t = median(times[arch])
        fpt = flops_per_token(model, s)
        achieved = tokens / t * fpt / 1e9
        results[arch] = {"parameters": sum(p.numel() for p in model.parameters()),
                         "matmul_parameters": matmul_parameters(model), "step_seconds": t / s.steps_per_rep,
                         "tokens_per_s": tokens / t, "gflop_per_token": fpt / 1e9, "achieved_gflops": achieved,
                         "mfu": achieved / peak_gflops, "all_seconds": times[arch]}
        results[arch]["memory"] = memory_in_subprocess(arch, s, device)
    results["throughput_ratio"] = results["music"]["tokens_per_s"] / results["gpt2"]["tokens_per_s"]
    results["memory_ratio"] = results["music"]["memory"]["peak_bytes"] / results["gpt2"]["memory"]["peak_bytes"]
    return results


def memory_in_subprocess(arch: str, s: Settings, device: torch.device, mode: str = "train",
                         backend: str = "torch") -> dict[str, Any]:
    """Peak training (or generation, `mode="generate"`) memory of one model, measured in a fresh process (see
    `memory_worker`)."""
    cmd = [sys.executable, "-m", __name__, json.dumps({"arch": arch, "settings": asdict(s), "device": str(device),
                                                       "threads": torch.get_num_threads(), "mode": mode,
                                                       "backend": backend})]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"memory worker for {arch} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """The process's peak resident set since the last reset (/proc/self/status VmHWM, which writing 5 to
    /proc/self/clear_refs resets; getrusage's maxrss, the fallback, also keeps peaks of exited threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def memory_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Build one model, then train it a few steps: on CUDA, the peak allocated memory above what was allocated
    before the first step; on CPU, the peak resident set size (`peak_rss`) above the RSS before the first
    step (torch's allocations bypass tracemalloc). Covers activations, gradients and optimizer state."""
    s = Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["settings"].items()})
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    tokenizer = MusicTokenizer()
    torch.manual_seed(0)
    if spec.get("mode") == "generate":
        return generation_memory(spec, s, device, tokenizer)
    model = build_model(model_config(s, spec["arch"]), tokenizer, [UNKNOWN_GENRE]).to(device).train()
    batches = make_batches([], s, 2, len(tokenizer))  # memory does not depend on the ids: random ones do
    step = training_step_fn(model, batches, device, s)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        for _ in range(3):
            step()
        torch.cuda.synchronize(device)
        return {"method": "torch.cuda.max_memory_allocated", "peak_bytes": torch.cuda.max_memory_allocated(device)
                - before}
    before = current_rss()
    try:  # reset the process's peak RSS (Linux), so imports and model building do not mask the steps' peak
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    for _ in range(3):
        step()
    peak = peak_rss()
    return {"method": "peak RSS (reset before the first step) minus RSS before it",
            "peak_bytes": max(0, peak - before), "rss_before_bytes": before}


def generation_memory(spec: dict[str, Any], s: Settings, device: torch.device,
                      tokenizer: MusicTokenizer) -> dict[str, Any]:
    """Memory of a batch-1 greedy generation of `gen_tokens` new tokens: the bytes of the cache it ends with (keys,
    values and, for ours, the fixed-size conv and music-attribute states) per token of the sequence, and the
    process's peak memory while generating (model, libraries, ONNX Runtime session included), measured on a second
    generation after a first of the same length (so that code and allocator pools are already in place)."""
    from .fast_inference import fast_model

    model = build_model(generation_config(s, spec["arch"], s.gen_tokens + 64), tokenizer,
                        [UNKNOWN_GENRE]).to(device).eval()
    runner = fast_model(model, spec.get("backend", "torch")) if spec["arch"] == "music" else model
    prompt = torch.full((1, 1), tokenizer.bos_token_id, device=device)

    def generate() -> Any:
        with torch.inference_mode():
            return runner.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=s.gen_tokens,
                                   min_new_tokens=s.gen_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=tokenizer.eos_token_id, return_dict_in_generate=True)
    generate()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = generate()
        torch.cuda.synchronize(device)
        peak, method = torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    else:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
        out = generate()
        peak = peak_rss()
        method = "peak RSS of the process"
    cache = getattr(out, "past_key_values", None)
    cache_bytes = None
    if cache is not None:  # (the ONNX loop returns no cache: its arrays are the same as eager's)
        tensors = [t for layer in cache.layers for t in (getattr(layer, "keys", None), getattr(layer, "values", None),
                                                         *getattr(layer, "conv_states", {}).values())
                   if isinstance(t, torch.Tensor)]
        cache_bytes = sum(t.numel() * t.element_size() for t in tensors)
    return {"method": method, "peak_bytes": peak, "cache_bytes": cache_bytes, "sequence": s.gen_tokens + 1}


# ----- generation ------------------------------------------------------------------------------------------
def bench_generation(tokenizer: MusicTokenizer, s: Settings, device: torch.device,
                     ids: list[list[int]] | None = None) -> dict[str, Any]:
    """Generation of the small.yaml shape against GPT-2 of the same width, layers, heads and MLP: greedy, a fixed
    number of new tokens (min_new_tokens = max_new_tokens) from a BOS prompt. Batch 1 side by side: GPT-2, ours
    eager (unconstrained and grammar-constrained), ours with the fast CPU backends (constrained); then batch 8,
    the KV cache's speedup, the real-time factor of `generate_music`, the int8 backend's NLL change and the peak
    memory of generation. The 1-min load average is recorded around each part."""
    from .fast_inference import available_backends, fast_model, sequence_nll
    from .generation import MusicGrammarLogitsProcessor, MusicRepeatLogitsProcessor, generate_music

    positions = max(s.cache_tokens, s.gen_tokens, s.rtf_tokens) + 64
    models = {}
    for arch in ("music", "gpt2"):
        torch.manual_seed(0)
        models[arch] = build_model(generation_config(s, arch, positions), tokenizer, [UNKNOWN_GENRE]).to(device).eval()
    fast = ([b for b in available_backends() if b != "torch"] if device.type == "cpu" else [])
    lean = ["torch", *fast]  # generate_music's backends: the lean decoding loop (torch: the PyTorch model's step)
    runners = {"gpt2": models["gpt2"], "music": models["music"],
               **{b: fast_model(models["music"], b) for b in lean}}
    outputs: dict[str, torch.Tensor] = {}

    def gen(name: str, batch: int, new: int, use_cache: bool = True, constrained: bool = False
            ) -> Callable[[], None]:
        model = runners[name]
        prompt = torch.full((batch, 1), tokenizer.bos_token_id, device=device)

        def run() -> None:
            processors = [MusicRepeatLogitsProcessor(tokenizer), MusicGrammarLogitsProcessor(tokenizer)] \
                if constrained else []  # what generate_music adds by default
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                        enabled=s.mixed_precision == "bf16"):
                out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                                     min_new_tokens=new, do_sample=False, use_cache=use_cache,
                                     logits_processor=processors, pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=tokenizer.eos_token_id)
            if out.shape[1] != new + 1:
                raise RuntimeError(f"generated {out.shape[1] - 1} tokens, expected {new}")
            outputs[f"{name}{'_constrained' if constrained else ''}_{batch}"] = out
        return run

    def timed(fns: dict[str, Callable[[], None]], reps: int) -> tuple[dict[str, list[float]], dict[str, Any]]:
        load = {"load_start": load_now()}
        times = interleaved(fns, reps, device)
        load["load_end"] = load_now()
        return times, load

    results: dict[str, Any] = {"new_tokens": s.gen_tokens, "threads": torch.get_num_threads(),
                               "fast_backends": fast, "batch": {}}
    # batch 1, side by side: GPT-2, ours eager, ours eager constrained, ours fast backends constrained
    fns = {"gpt2": gen("gpt2", 1, s.gen_tokens), "music": gen("music", 1, s.gen_tokens),
           "music_constrained": gen("music", 1, s.gen_tokens, constrained=True),
           "torch": gen("torch", 1, s.gen_tokens),
           **{f"{b}_constrained": gen(b, 1, s.gen_tokens, constrained=True) for b in lean}}
    for name in fns:  # warm-up (and the ONNX Runtime sessions' first runs)
        gen(name.removesuffix("_constrained"), 1, 4, constrained=name.endswith("_constrained"))()
    times, load = timed(fns, s.gen_reps)
    side = {name: {"seconds": median(t), "tokens_per_s": s.gen_tokens / median(t), "all_seconds": t}
            for name, t in times.items()}
    for row in side.values():
        row["vs_gpt2"] = row["tokens_per_s"] / side["gpt2"]["tokens_per_s"]
        row["vs_eager_constrained"] = row["tokens_per_s"] / side["music_constrained"]["tokens_per_s"]
        row["vs_lean_constrained"] = row["tokens_per_s"] / side["torch_constrained"]["tokens_per_s"]
    side["constrained_overhead"] = side["music_constrained"]["seconds"] / side["music"]["seconds"] - 1
    side["lean_constrained_overhead"] = side["torch_constrained"]["seconds"] / side["torch"]["seconds"] - 1
    for b in lean:  # greedy: the same tokens as the eager model in transformers' loop?
        side[f"{b}_constrained"]["same_tokens_as_eager"] = bool(torch.equal(outputs[f"{b}_constrained_1"],
                                                                            outputs["music_constrained_1"]))
    results["batch1"] = {**side, **load}
    # where a token's time goes: the model's decoding step alone (one token after a cached history, as generate
    # calls it) against the whole token of generate (the step plus transformers' decoding loop around it)
    steps = {arch: decode_steps_fn(models[arch], tokenizer, s.gen_tokens, device) for arch in ("music", "gpt2")}
    for fn in steps.values():
        fn()
    times, load = timed(steps, s.gen_reps)
    split = {}
    for arch in ("music", "gpt2"):
        token = side[arch]["seconds"] / s.gen_tokens
        step = median(times[arch]) / s.gen_tokens
        split[arch] = {"token_ms": token * 1000, "step_ms": step * 1000, "loop_ms": (token - step) * 1000,
                       "loop_share": (token - step) / token, "all_step_seconds": times[arch]}
    # ours at 1.3 x GPT-2 takes GPT-2's token time / 1.3; with our own loop cost, the step that leaves
    split["step_ms_for_1_3x"] = split["gpt2"]["token_ms"] / 1.3 - split["music"]["loop_ms"]
    # the same step in generate_music's lean loop (backend "torch")
    token = side["torch"]["seconds"] / s.gen_tokens
    step = split["music"]["step_ms"] / 1000
    split["lean"] = {"token_ms": token * 1000, "step_ms": step * 1000, "loop_ms": (token - step) * 1000,
                     "loop_share": (token - step) / token}
    results["token_split"] = {**split, **load}
    # batches of 1 and 8, eager, unconstrained
    for batch in s.gen_batches:
        fns = {arch: gen(arch, batch, s.gen_tokens) for arch in ("music", "gpt2")}
        for arch in fns:
            gen(arch, batch, 4)()
        times, load = timed(fns, s.gen_reps)
        row = {arch: {"seconds": median(t), "tokens_per_s": batch * s.gen_tokens / median(t), "all_seconds": t}
               for arch, t in times.items()}
        row["ratio"] = row["music"]["tokens_per_s"] / row["gpt2"]["tokens_per_s"]
        results["batch"][str(batch)] = {**row, **load}
    # KV cache against none
    fns = {f"{arch}_{mode}": gen(arch, 1, s.cache_tokens, mode == "cache") for arch in ("music", "gpt2")
           for mode in ("cache", "no_cache")}
    times, load = timed(fns, s.cache_reps)
    results["cache"] = {"new_tokens": s.cache_tokens, **load}
    for arch in ("music", "gpt2"):
        with_cache, without = median(times[f"{arch}_cache"]), median(times[f"{arch}_no_cache"])
        results["cache"][arch] = {"cache_seconds": with_cache, "no_cache_seconds": without,
                                  "speedup": without / with_cache, "all_seconds": {
                                      "cache": times[f"{arch}_cache"], "no_cache": times[f"{arch}_no_cache"]}}
    results["real_time"] = bench_real_time(models["music"], tokenizer, s, ["torch", *fast], generate_music)
    results["int8_nll"] = bench_nll(models["music"], tokenizer, s, ids, fast, sequence_nll)
    shipped = shipped_model()
    if shipped is not None:  # the default model, as the Space and `music-hf generate` run it
        model, shipped_tokenizer = shipped
        results["real_time_shipped"] = bench_real_time(model, shipped_tokenizer, s, ["torch", *fast], generate_music)
        # the same pieces in the shipped vocabulary (by token: a vocabulary saved before a control existed numbers
        # the music tokens differently)
        shipped_ids = [shipped_tokenizer.convert_tokens_to_ids(tokenizer.convert_ids_to_tokens(piece))
                       for piece in (ids or [])]
        results["int8_nll_shipped"] = bench_nll(model, shipped_tokenizer, s, shipped_ids, fast, sequence_nll)
    runs = [("music", "music", "torch"), ("gpt2", "gpt2", "torch")] + ([("onnx", "music", "onnx")] if "onnx" in fast
                                                                         else [])
    load = {"load_start": load_now()}
    results["memory"] = {name: memory_in_subprocess(arch, s, device, mode="generate", backend=backend)
                         for name, arch, backend in runs}
    results["memory"].update(load, load_end=load_now())
    return results


def decode_steps_fn(model: nn.Module, tokenizer: MusicTokenizer, steps: int, device: torch.device
                    ) -> Callable[[], None]:
    """`steps` single-token forward calls after a BOS, each on the cache the previous ones filled (a fresh
    `DynamicCache` per run): the model's part of greedy decoding, without `generate`'s loop (no logits processing,
    sampling, stopping checks or input bookkeeping)."""
    from transformers.cache_utils import DynamicCache

    bos = torch.full((1, 1), tokenizer.bos_token_id, device=device)
    token = torch.full((1, 1), tokenizer.token_id("Bar"), device=device)

    def run() -> None:
        with torch.inference_mode():
            cache = DynamicCache(config=model.config)
            model(bos, cache=cache, use_cache=True)
            for _ in range(steps):
                model(token, cache=cache, use_cache=True)
    return run


def shipped_model() -> tuple[nn.Module, MusicTokenizer] | None:
    """The model that ships in the repository (`music_hf.hub.SHIPPED_MODEL`) in eval mode, None where absent."""
    from .hub import SHIPPED_MODEL
    from .modeling_music import MusicForCausalLM

    if not (SHIPPED_MODEL / "config.json").is_file():
        return None
    return MusicForCausalLM.from_pretrained(str(SHIPPED_MODEL)).eval(), MusicTokenizer.from_pretrained(str(SHIPPED_MODEL))


def bench_real_time(model: nn.Module, tokenizer: MusicTokenizer, s: Settings, backends: list[str],
                    generate_music: Callable) -> dict[str, Any]:
    """Seconds of music per second of compute: `generate_music` as users call it (batch 1, grammar-constrained,
    sampling with the model's defaults and a fixed seed, unprompted), the music's length from the decoded Score's
    end in seconds. The model is the benchmark's untrained one: its pieces are grammatical, their density is not a
    trained model's."""
    pieces: dict[str, Any] = {}

    def run(backend: str) -> Callable[[], None]:
        def call() -> None:
            with torch.inference_mode():
                pieces[backend] = generate_music(model, tokenizer, max_new_tokens=s.rtf_tokens, seed=0,
                                                 backend=backend)[0]
        return call
    fns = {b: run(b) for b in backends}
    for fn in fns.values():
        fn()
    load = {"load_start": load_now()}
    times = interleaved(fns, s.rtf_reps, torch.device("cpu"))
    load["load_end"] = load_now()
    out: dict[str, Any] = {"max_new_tokens": s.rtf_tokens, **load}
    for b, t in times.items():
        piece = pieces[b]
        music = float(piece.score.to("second").end())
        out[b] = {"seconds": median(t), "music_seconds": music, "real_time_factor": music / median(t),
                  "new_tokens": len(piece.ids) - piece.prompt_length, "all_seconds": t}
    return out


def bench_nll(model: nn.Module, tokenizer: MusicTokenizer, s: Settings, ids: list[list[int]] | None,
              backends: list[str], sequence_nll: Callable) -> dict[str, Any]:
    """NLL per token of corpus windows (BOS + the first `gen_tokens` ids of the first pieces) under PyTorch and
    each fast backend (teacher forcing through its decoding step), on the benchmark's untrained model."""
    windows = [[tokenizer.bos_token_id] + piece[:s.gen_tokens] for piece in (ids or []) if len(piece) >= s.gen_tokens]
    windows = windows[:s.nll_windows]
    if not windows or not backends:
        return {}
    with torch.inference_mode():
        nll = {b: float(np.mean([sequence_nll(model, w, b) for w in windows])) for b in ["torch", *backends]}
    return {"windows": len(windows), "tokens": s.gen_tokens, "nll": nll,
            "relative_change": {b: nll[b] / nll["torch"] - 1 for b in backends}}


# ----- report ----------------------------------------------------------------------------------------------
def speed_section(report: Report, r: dict[str, Any]) -> None:
    """The tables of the section "Speed", each with the settings it was measured with."""
    s, tok, tr, gen = r["settings"], r["tokenization"], r["training"], r["generation"]
    mm = tr["matmul"]
    report.heading(f"Tokenization ({tok['files']} corpus MIDI files: {', '.join(s['collections'])}, "
                   f"{s['pieces_per_collection']} pieces each)")
    report.text("`tokenizer(path)['input_ids']` (MusicTokenizer: file checks, miditok, a transformers "
                "`BatchEncoding`) against `tokenizer.miditok.encode(path).ids`; median of "
                f"{s['token_reps']} passes in one process, {s['map_reps']} through `datasets.map(batched=True, "
                "num_proc=2)` (process start-up included). Time vs miditok: our time over miditok's. "
                f"{_load(tok).capitalize()}.")
    rows = []
    for mode, label in (("single_process", "1 process"), ("datasets_map_2_proc", "datasets.map, num_proc=2")):
        for name in ("miditok", "music_hf"):
            m = tok[mode][name]
            rows.append(["MusicTokenizer" if name == "music_hf" else "miditok directly", label, m["files_per_s"],
                         m["tokens_per_s"], tok[mode]["overhead_ratio"] if name == "music_hf" else 1.0])
    report.table(["tokenizer", "how", "files/s", "tokens/s", "time vs miditok"], rows)
    sc = tok.get("map_scaling")
    if sc:
        report.text(f"`datasets.map` scaling: MusicTokenizer through `datasets.map(batched=True)` with 1 and with 2 "
                    f"processes on a corpus-sized job, the {tok['files']} files {sc['repeat']} times over "
                    f"({sc['files']} files; start-up included, as above; median of {s['map_reps']}, interleaved). "
                    "Issue #13's target: 2 processes >= 1.7 x one.")
        report.table(["datasets.map", "files", "seconds", "files/s", "speedup vs 1 process"],
                     [[f"num_proc={n}", sc["files"], sc[f"num_proc_{n}"]["seconds"],
                       sc[f"num_proc_{n}"]["files_per_s"], 1.0 if n == 1 else sc["speedup"]] for n in (1, 2)])

    report.heading(f"Training (width {s['hidden_size']}, {s['num_hidden_layers']} layers, "
                   f"{s['num_attention_heads']} heads, MLP {s['intermediate_size']}, context {s['context']}, "
                   f"batch {s['batch_size']})")
    report.text("MusicForCausalLM (all music embeddings on, no conv) against `GPT2LMHeadModel` of the same shape on "
                "the same batches of corpus tokens, AdamW with gradient clipping, "
                f"{'bf16 autocast' if s['mixed_precision'] == 'bf16' else 'fp32'}; median of {s['train_reps']} "
                f"repetitions of {s['steps_per_rep']} steps after {s['train_warmup']} warm-up steps. Peak memory: "
                f"{tr['music']['memory']['method']}, each model in a fresh process. FLOPs per token: 6 x the "
                "parameters in matrix multiplies (linear layers and LM head) + 12 x layers x context x width for "
                f"attention. MFU: achieved FLOP/s over the {mm['dtype']} peak of a {mm['size']} x {mm['size']} "
                f"matmul measured interleaved with the steps ({mm['gflops']:.1f} GFLOP/s). {_load(tr).capitalize()}.")
    rows = [[label, tr[a]["parameters"], tr[a]["tokens_per_s"], tr[a]["step_seconds"] * 1000,
             tr[a]["memory"]["peak_bytes"] / 2**20, tr[a]["gflop_per_token"] * 1000, tr[a]["achieved_gflops"],
             tr[a]["mfu"]] for a, label in (("music", "MusicForCausalLM"), ("gpt2", "GPT-2"))]
    rows.append(["ratio music / GPT-2", tr["music"]["parameters"] / tr["gpt2"]["parameters"], tr["throughput_ratio"],
                 tr["music"]["step_seconds"] / tr["gpt2"]["step_seconds"], tr["memory_ratio"],
                 tr["music"]["gflop_per_token"] / tr["gpt2"]["gflop_per_token"],
                 tr["music"]["achieved_gflops"] / tr["gpt2"]["achieved_gflops"],
                 tr["music"]["mfu"] / tr["gpt2"]["mfu"]])
    report.table(["model", "parameters", "tokens/s", "ms/step", "peak memory MiB", "MFLOP/token", "GFLOP/s", "MFU"],
                 rows)

    report.heading(f"Generation (width {s['gen_hidden_size']}, {s['num_hidden_layers']} layers, "
                   f"{s['num_attention_heads']} heads, MLP {s['gen_intermediate_size']}, conv kernel "
                   f"{s['gen_conv_kernel_size']}: the shape of scripts/configs/small.yaml; GPT-2 of the same width, "
                   "layers, heads and MLP, without the conv)")
    b1 = gen["batch1"]
    fast = gen.get("fast_backends", [])
    report.text(f"Batch 1, greedy, exactly {gen['new_tokens']} new tokens from a BOS prompt with the KV cache, all "
                f"in one run: median of {s['gen_reps']} runs each, interleaved, after a warm-up; torch "
                f"{gen['threads']} threads (ONNX Runtime as many); {_load(b1)}. Eager: transformers' `generate` "
                "(`model.generate(...)`, its general decoding loop). Constrained: with `MusicGrammarLogitsProcessor` and "
                "repeat completion (`MusicRepeatLogitsProcessor`), what `generate_music` adds by default. Backends: `generate_music(..., backend=...)` decodes in "
                "`music_hf.fast_inference`'s lean loop (transformers' greedy/sampling loop reduced to its steps: the "
                "same processors, token choice and stopping criteria, without the per-step input preparation and "
                "output objects); `torch`, the default: the PyTorch model's own decoding step; `onnx`: the decoding "
                "step in ONNX Runtime after a PyTorch prefill; `onnx-int8` with int8 matrix multiplies. GPT-2 runs "
                "in transformers' loop only (the lean loop drives our decoding step). Same tokens: the greedy tokens "
                "equal the eager constrained run's (int8 changes the probabilities a little, see the NLL table "
                "below, so its greedy choice can differ).")
    labels = [("gpt2", "GPT-2, eager, unconstrained"), ("music", "ours, eager, unconstrained"),
              ("music_constrained", "ours, eager, grammar-constrained"),
              ("torch", "ours, backend torch, unconstrained"),
              *((f"{b}_constrained", f"ours, backend {b}, grammar-constrained") for b in ["torch", *fast])]
    report.table(["model, decoding", "tokens/s", "vs GPT-2", "vs ours eager constrained",
                  "vs ours backend torch constrained", "same tokens"],
                 [[label, b1[k]["tokens_per_s"], b1[k]["vs_gpt2"], b1[k]["vs_eager_constrained"],
                   b1[k]["vs_lean_constrained"],
                   {True: "yes", False: "no"}.get(b1[k].get("same_tokens_as_eager"), "-")] for k, label in labels])
    best = max(b1[f"{b}_constrained"]["tokens_per_s"] for b in ["torch", *fast])
    report.text(f"The constraint (grammar and repeat completion) costs {b1['constrained_overhead']:.1%} of the eager "
                f"unconstrained time ({b1['lean_constrained_overhead']:.1%} in the lean loop, whose tokens are shorter). Issue #13's "
                f"targets: constrained decoding as users run it (`generate_music`, backend torch) >= 1.3 x GPT-2 "
                f"(measured {b1['torch_constrained']['vs_gpt2']:.2f} x; through transformers' `generate` "
                f"{b1['music_constrained']['vs_gpt2']:.2f} x), the constraint <= 10 % (measured "
                f"{b1['constrained_overhead']:.1%}), a fast backend >= 2 x eager (the fastest: "
                f"{best / b1['music_constrained']['tokens_per_s']:.2f} x eager in transformers' `generate`, "
                f"{best / b1['torch_constrained']['tokens_per_s']:.2f} x backend torch).")
    split = gen.get("token_split")
    if split:
        report.text(f"Where a token's time goes (eager, unconstrained, batch 1): the whole token as `generate` makes "
                    f"it (above), against the model's decoding step alone ({gen['new_tokens']} single-token forward "
                    f"calls on a growing `DynamicCache` after a BOS, median of {s['gen_reps']}, interleaved; "
                    f"{_load(split)}); the rest is transformers' decoding loop around the step (input and mask "
                    "bookkeeping, logits processing, stopping checks), the same code for both models.")
        report.table(["model", "ms per token in generate", "ms in the model's step", "ms in the loop around it",
                      "loop share"],
                     [[label, split[a]["token_ms"], split[a]["step_ms"], split[a]["loop_ms"], split[a]["loop_share"]]
                      for a, label in (("music", "ours, per token"), ("gpt2", "GPT-2, per token"),
                                       ("lean", "ours in the lean loop (backend torch), per token"))
                      if a in split])
        report.text(f"For 1.3 x GPT-2 a token of ours may take {split['gpt2']['token_ms'] / 1.3:.3f} ms; after our "
                    f"loop's {split['music']['loop_ms']:.3f} ms that leaves {split['step_ms_for_1_3x']:.3f} ms for "
                    f"the model's step, against {split['music']['step_ms']:.3f} ms measured "
                    f"({split['music']['step_ms'] / split['gpt2']['step_ms']:.2f} x GPT-2's step, which does less: "
                    "no conv, no music embeddings).")
    batches = gen["batch"]
    report.text(f"Eager, unconstrained, by batch size (median of {s['gen_reps']}; "
                f"{_load(next(iter(batches.values())))} for batch {next(iter(batches))}):")
    report.table(["batch", "MusicForCausalLM tokens/s", "GPT-2 tokens/s", "ratio music / GPT-2"],
                 [[batch, row["music"]["tokens_per_s"], row["gpt2"]["tokens_per_s"], row["ratio"]]
                  for batch, row in batches.items()])
    report.text(f"KV cache against no cache, batch 1, {gen['cache']['new_tokens']} new tokens (median of "
                f"{s['cache_reps']}; {_load(gen['cache'])}):")
    report.table(["model", "with cache s", "without cache s", "speedup"],
                 [[label, gen["cache"][a]["cache_seconds"], gen["cache"][a]["no_cache_seconds"],
                   gen["cache"][a]["speedup"]] for a, label in (("music", "MusicForCausalLM"), ("gpt2", "GPT-2"))])
    rt = gen["real_time"]
    report.text(f"Real-time factor: seconds of music per second of compute of `generate_music` as users call it "
                f"(batch 1, grammar-constrained, sampling with seed 0, unprompted, at most {rt['max_new_tokens']} new "
                "tokens), the music's length being the decoded Score's end in seconds; median of "
                f"{s['rtf_reps']} (prompt, decoding to a Score included; {_load(rt)}). The model is the untrained "
                "one above: its music is grammatical but not a trained model's, so seconds per token differ.")
    report.table(["backend", "new tokens", "compute s", "music s", "real-time factor"],
                 [[b, rt[b]["new_tokens"], rt[b]["seconds"], rt[b]["music_seconds"], rt[b]["real_time_factor"]]
                  for b in ["torch", *fast] if b in rt])
    rt = gen.get("real_time_shipped")
    if rt:
        report.text(f"The same for the model that ships in the repository (`models/music-hf-base`, the default of the "
                    f"Space and `music-hf generate`; {_load(rt)}): its own pieces, so the seconds of music are a "
                    "trained model's.")
        report.table(["backend", "new tokens", "compute s", "music s", "real-time factor"],
                     [[b, rt[b]["new_tokens"], rt[b]["seconds"], rt[b]["music_seconds"], rt[b]["real_time_factor"]]
                      for b in ["torch", *fast] if b in rt])
    nll = gen.get("int8_nll") or {}
    if nll:
        report.text(f"Probabilities of the fast backends: mean NLL per token of {nll['windows']} corpus windows "
                    f"(BOS + {nll['tokens']} tokens) with teacher forcing through each backend's decoding step, on "
                    "the untrained model above (`music_hf.fast_inference.sequence_nll`; tests/test_fast_inference.py "
                    "checks a briefly trained tiny model too).")
        report.table(["backend", "NLL/token", "change vs torch"],
                     [["torch", nll["nll"]["torch"], 0.0]]
                     + [[b, nll["nll"][b], nll["relative_change"][b]] for b in nll["relative_change"]])
    nll = gen.get("int8_nll_shipped") or {}
    if nll:
        report.text("The same windows under the shipped `models/music-hf-base` (a trained model: where int8's change "
                    "of the probabilities shows):")
        report.table(["backend", "NLL/token", "change vs torch"],
                     [["torch", nll["nll"]["torch"], 0.0]]
                     + [[b, nll["nll"][b], nll["relative_change"][b]] for b in nll["relative_change"]])
    mem = gen["memory"]
    per_train = s["batch_size"] * s["context"]
    report.text(f"Memory: training as in the table above (width {s['hidden_size']}, batch {s['batch_size']} x "
                f"{s['context']} tokens; per token: peak / {per_train}); generation of {gen['new_tokens']} tokens at "
                "batch 1 in the generation shape, each in a fresh process: the cache it ends with (keys, values and "
                "our fixed-size conv and attribute states) per token of the sequence, and the process's peak memory "
                f"while generating ({mem['music']['method']}: model, libraries and session included; {_load(mem)}).")
    rows = []
    for key, label, train in (("music", "ours, eager", tr["music"]), ("gpt2", "GPT-2, eager", tr["gpt2"]),
                              ("onnx", "ours, backend onnx", None)):
        if key not in mem:
            continue
        g = mem[key]
        rows.append([label, train["memory"]["peak_bytes"] / 2**20 if train else "-",
                     train["memory"]["peak_bytes"] / per_train / 1024 if train else "-",
                     g["cache_bytes"] / g["sequence"] / 1024 if g["cache_bytes"] is not None else "as eager",
                     g["peak_bytes"] / 2**20])
    report.table(["model", "training peak MiB", "training KiB/token", "generation cache KiB/token",
                  "generation process peak MiB"], rows)
    report.heading("Commands")
    report.bullets([
        "CPU: `python scripts/bench.py` (`--threads N` sets torch's CPU threads)",
        "GPU: `python scripts/bench.py --device cuda` (CUDA is the default when present) measures the shape of "
        "`scripts/configs/gpu.yaml` (width 512, 8 layers, context 1024) in bf16",
        "smoke run: `python scripts/bench.py --quick --output /tmp/bench.md`",
        "the fast backends' rows need ONNX Runtime: `pip install 'music-hf[fast]'` (without it they are left out)"])


def _load(part: dict[str, Any]) -> str:
    """The 1-min load average recorded around a part of the run."""
    if part.get("load_start") is None:
        return "load average not available"
    return f"1-min load average {part['load_start']} at the start, {part['load_end']} at the end"


# ----- the run ---------------------------------------------------------------------------------------------
def run(args: BenchArguments, command: str) -> dict[str, Any]:
    """Measure everything; write the report section and the JSON file."""
    device = torch.device(args.device)
    report = Report(command, device)
    s = Settings().for_cuda() if device.type == "cuda" else Settings()
    s = s.quick() if args.quick else s
    summary = prepare_corpus(collections=list(s.collections), max_pieces_per_collection=s.pieces_per_collection,
                             progress=False)
    tokenizer = MusicTokenizer()
    load = load_now()
    tokenization, ids = bench_tokenization(tokenizer, [e.path for e in summary.entries], s)
    tokenization.update(load_start=load, load_end=load_now())
    training = bench_training(tokenizer, ids, s, device)
    training.update(load_start=tokenization["load_end"], load_end=load_now())
    generation = bench_generation(tokenizer, s, device, ids)
    results = {"command": command, "quick": args.quick, "machine": report.machine, "settings": asdict(s),
               "tokenization": tokenization, "training": training, "generation": generation,
               "seconds": report.seconds}
    json_path = Path(args.json) if args.json else REPO / "outputs" / ("bench_quick.json" if args.quick else
                                                                       "bench.json")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2))
    speed_section(report, results)
    report.write(args.output, "Speed", "smoke settings, `--quick`: tiny sizes, 1-2 repetitions" if args.quick
                 else "full settings")
    print(f"wrote {args.output} (section Speed) and {json_path} in {report.seconds:.0f} s")
    return results


__all__ = ["BenchArguments", "Settings", "run"]

if __name__ == "__main__":  # the memory worker: `python -m music_hf.benchmark SPEC` (see memory_in_subprocess)
    print(json.dumps(memory_worker(json.loads(sys.argv[1]))))
