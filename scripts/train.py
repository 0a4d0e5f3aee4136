#!/usr/bin/env python
"""`music-hf train` as a script, for `accelerate launch`:

    accelerate launch scripts/train.py --config scripts/configs/small.yaml --output_dir outputs/small \
        [--max_steps N] [--stop_after N] [--resume [PATH]] [--push_to_hub org/name] [--<setting> value ...]

`python scripts/train.py --help` lists every setting. The loop is `music_hf.training.train`.
"""

import sys

from music_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
