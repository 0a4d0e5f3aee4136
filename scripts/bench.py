#!/usr/bin/env python
"""`music-hf bench` as a script: tokenization, training and generation speed against miditok and GPT-2, written
to BENCHMARKS.md (section "Speed").

    python scripts/bench.py                                   # CPU, or CUDA when present
    python scripts/bench.py --quick --output /tmp/bench.md    # smoke run: tiny sizes

The code is `music_hf.benchmark`.
"""

import sys

from music_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
