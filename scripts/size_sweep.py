#!/usr/bin/env python
"""Choose music-hf-base's size: train each candidate size for the same compute budget on the same data and
compare held-out NLL per token and per note (written to BENCHMARKS.md, section "Size sweep").

    python scripts/size_sweep.py --config scripts/configs/base.yaml --minutes 4

The budget is compute, not wall time: the first size gets the steps its measured seconds per step allow in
`--minutes`, and every other size the steps that cost the same training FLOPs (6 x matmul parameters + attention,
per token: `music_hf.benchmark.flops_per_token`), each with a full warmup-and-cosine schedule. So a busy machine
changes how long the sweep takes, not what it compares. Short runs favour small models; the table says how far
each got.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

try:
    import music_hf  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from music_hf.benchmark import matmul_parameters
from music_hf.evaluation import machine_description, machine_line, markdown_table, update_markdown_section
from music_hf.training import TrainConfig, build_datasets, build_model, train

SIZES = {  # name -> MusicConfig settings
    "128x4": {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 512},
    "192x4": {"hidden_size": 192, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 768},
    "256x6": {"hidden_size": 256, "num_hidden_layers": 6, "num_attention_heads": 4, "intermediate_size": 1024},
    "384x6": {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 6, "intermediate_size": 1536},
}


def seconds_per_step(cfg: TrainConfig, tokenizer, genres, steps: int = 3) -> float:
    """Median time of a forward-backward-step on a full random batch of the config's shape."""
    model = build_model(cfg, tokenizer, genres)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(4, tokenizer.vocab_size, (cfg.training.per_device_batch_size, cfg.data.max_length))
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[len(times[1:]) // 2]


def training_flops_per_token(cfg: TrainConfig, tokenizer, genres) -> float:
    """6 x matmul parameters + attention's 12 x layers x context x width (as `music_hf.benchmark.flops_per_token`)."""
    model = build_model(cfg, tokenizer, genres)
    c = model.config
    return 6.0 * matmul_parameters(model) + 12.0 * c.num_hidden_layers * cfg.data.max_length * c.hidden_size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="scripts/configs/base.yaml")
    p.add_argument("--minutes", type=float, default=4.0, help="training budget per size")
    p.add_argument("--steps", type=int, default=None, help="the first size's steps (instead of --minutes: the "
                                                           "budget is then independent of the machine's load)")
    p.add_argument("--sizes", default="192x4,128x4,256x6", help=f"comma-separated, of {', '.join(SIZES)}")
    p.add_argument("--output_dir", default="outputs/sweep")
    p.add_argument("--report", default="BENCHMARKS.md")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    base = TrainConfig.from_yaml(args.config)
    machine = machine_description("cpu")
    tokenizer, genres, _, summary, _ = build_datasets(base)
    rows, results, budget = [], {}, None
    for name in args.sizes.split(","):
        cfg = base.replace(**SIZES[name], log_with=None, output_dir=os.path.join(args.output_dir, name))
        step_s = seconds_per_step(cfg, tokenizer, genres)
        flops = training_flops_per_token(cfg, tokenizer, genres)
        if budget is None:  # FLOPs per window position the first size spends in --steps or --minutes
            budget = (args.steps or int(args.minutes * 60 / step_s)) * flops
        steps = max(20, int(budget / flops))
        cfg = cfg.replace(max_steps=steps, warmup_steps=max(10, steps // 20), eval_every=steps, save_every=steps)
        params = sum(p.numel() for p in build_model(cfg, tokenizer, genres).parameters())
        t0 = time.perf_counter()
        out = train(cfg)
        minutes = (time.perf_counter() - t0) / 60
        ev = out.get("eval") or {}
        results[name] = {"parameters": params, "s_per_step": step_s, "steps": steps, "minutes": minutes, **ev}
        rows.append([name, params, f"{step_s:.2f}", steps, steps * cfg.training.per_device_batch_size
                     * cfg.data.max_length, f"{minutes:.1f}", ev.get("loss"), ev.get("nll_per_note")])
        print(json.dumps({name: results[name]}), flush=True)
    best = min(results, key=lambda n: results[n].get("nll_per_note", float("inf")))
    budget_arg = f"--steps {args.steps}" if args.steps else f"--minutes {args.minutes:g}"
    body = (f"Produced by `python scripts/size_sweep.py --config {args.config} {budget_arg}`. "
            f"{machine_line(machine)}\n\nEach size trained with the training FLOPs the first size spends in "
            f"{f'{args.steps} steps' if args.steps else f'about {args.minutes:g} minutes'} (warmup 5 %, cosine decay; "
            f"s/step measured, which a busy machine inflates) on the same data ({len(genres) - 1} genres, "
            f"{summary.pieces if hasattr(summary, 'pieces') else ''} pieces), evaluated on at most "
            f"{base.training.eval_max_batches} validation batches. Token budget: steps x batch x context (an upper "
            f"bound: windows can be shorter).\n\n"
            + markdown_table(["size (hidden x layers)", "parameters", "s/step", "steps", "token budget", "minutes",
                              "val NLL/token", "val NLL/note"], rows)
            + f"\n\nLowest NLL per note at this budget: {best}.\n")
    update_markdown_section(args.report, "Size sweep", body)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
