#!/usr/bin/env python
"""`music-hf evaluate` as a script: test-split metrics, the ablation of the music embeddings and the quality of
generated music, written to BENCHMARKS.md (section "Quality").

    python scripts/evaluate.py --model outputs/small                              # one trained model
    python scripts/evaluate.py --ablation --config scripts/configs/ablation.yaml  # train + compare baselines
    python scripts/evaluate.py --quick --ablation --output_dir /tmp/q --output /tmp/q.md   # smoke run

`python scripts/evaluate.py --help` lists every option. The code is `music_hf.quality`.
"""

import sys

from music_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
