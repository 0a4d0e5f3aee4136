#!/usr/bin/env python
"""Measure repeat completion (`generate_music(repeat_bias=...)`) side by side for several biases: repeated bars,
pitch-class entropy, groove consistency, notes per bar, simultaneous voices and dissonant intervals of unprompted
generations per genre against the held-out and training pieces, and memorization; written to BENCHMARKS.md,
section "Repeats".

    python scripts/repeats.py --model models/music-hf-base --biases 0 2 4 6 8 --per_genre 16 --threads 2

The data are the model's own training settings (its training_results.json), so the test split stays held out.
The code is `music_hf.quality.repeat_completion_quality`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

try:
    import music_hf  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from music_hf.evaluation import machine_description, machine_line, update_markdown_section
from music_hf.quality import load_model, repeat_completion_quality, repeat_section
from music_hf.training import TrainConfig, build_datasets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/music-hf-base", help="a trained MusicForCausalLM folder")
    parser.add_argument("--biases", type=float, nargs="+", default=[0, 2, 4, 6, 8],
                        help="repeat_bias values, measured side by side (0: off)")
    parser.add_argument("--per_genre", type=int, default=16, help="generations per genre and bias")
    parser.add_argument("--max_new_tokens", type=int, default=384)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--output", default="BENCHMARKS.md", help="markdown file whose section Repeats is rewritten")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if any(b < 0 for b in args.biases):
        parser.error("--biases: each bias must be >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    folder = Path(args.model)
    trained = folder / "training_results.json"
    if not trained.is_file():
        parser.error(f"{folder}: no training_results.json (the data settings that keep its test split held out)")
    cfg = TrainConfig.from_dict(json.loads(trained.read_text()).get("config") or {}, str(trained))
    model, tok = load_model(folder, "cpu")
    _, genres, pieces, _, _ = build_datasets(cfg.replace(init_from=str(folder)), tokenizer=tok, progress=False)
    sampling = {k: getattr(model.generation_config, k) for k in ("temperature", "top_p", "top_k")}
    results = repeat_completion_quality(model, tok, genres, pieces, args.biases, args.per_genre,
                                        args.max_new_tokens, args.seed, **sampling)
    seconds = time.perf_counter() - start
    command = "python scripts/repeats.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                                 else sys.argv[1:]))
    results.update(command=command, seconds=seconds, machine=machine_description("cpu"))
    update_markdown_section(args.output, "Repeats", repeat_section(results, command,
                                                                   machine_line(results["machine"]), seconds))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.output} (section Repeats) in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
