#!/usr/bin/env python
"""`music-hf push` as a script: publish a saved model folder (e.g. the `--output_dir` of a training run) to the
Hugging Face Hub.

    python scripts/push_to_hub.py --model_dir outputs/small --repo_id my-user/music-small [--private]

Uploads weights, config, generation config, tokenizer, the code `trust_remote_code` needs, training results and a
model card in one commit, and prints the repo URL. Exit code 2 for a folder, repo id or token that is not right.
"""

import sys

from music_hf.cli import push_command


def main(argv: list[str] | None = None) -> int:
    return push_command(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
