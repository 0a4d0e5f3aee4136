#!/usr/bin/env python
"""Publish a saved model folder (e.g. `<output_dir>/final` of scripts/train.py) to the Hugging Face Hub.

    python scripts/push_to_hub.py --model_dir outputs/small/final --repo_id my-user/music-small [--private]

Uploads weights, config, tokenizer, the code `trust_remote_code` needs, training results and a model card
in one commit, and prints the repo URL. Exit code 2 for a folder, repo id or token that is not right.
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="folder saved with save_pretrained (model + tokenizer)")
    parser.add_argument("--repo_id", required=True, help="namespace/name on the Hub")
    parser.add_argument("--private", action="store_true", help="create the repo private (if it does not exist)")
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the `hf auth login` one)")
    parser.add_argument("--commit_message", default="Upload music-hf model, tokenizer and model card")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    from huggingface_hub.errors import HfHubHTTPError

    from music_hf.hub import HubPushError, push_model_dir

    try:
        url = push_model_dir(args.model_dir, args.repo_id, private=args.private, token=args.token,
                             commit_message=args.commit_message)
    except HubPushError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # HfHubHTTPError derives from its HTTP client's base error, which connection failures raise too
    except (HfHubHTTPError, OSError, *HfHubHTTPError.__bases__) as e:
        detail = str(e).splitlines()[0] if str(e) else ""
        print(f"error: push to {args.repo_id} failed: {type(e).__name__}: {detail}", file=sys.stderr)
        return 1
    print(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
