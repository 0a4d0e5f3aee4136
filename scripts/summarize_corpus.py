#!/usr/bin/env python
"""Tokenize a prepared corpus folder and print what a model would train on: pieces, genres, tokens.

The folder is what `scripts/prepare_corpus.py` writes (.mid files + metadata.jsonl).

    python scripts/summarize_corpus.py --corpus_dir outputs/corpus
"""

from __future__ import annotations

import argparse
import os
import sys

import datasets

try:
    import music_hf  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from music_hf import MusicTokenizer
from music_hf.corpus import MANIFEST_NAME, load_manifest
from music_hf.data import genre_names, pieces_from_entries, tokenize_pieces


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus_dir", required=True, help=f"folder holding {MANIFEST_NAME} and the .mid files")
    p.add_argument("--tokenizer", default=None, help="a saved MusicTokenizer folder (default: a fresh REMI+ one)")
    p.add_argument("--num_proc", type=int, default=None, help="tokenizing processes (default: one)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    datasets.disable_progress_bars()
    corpus = load_manifest(args.corpus_dir)
    if not corpus.entries:
        print(f"{args.corpus_dir}: no pieces in {MANIFEST_NAME}", file=sys.stderr)
        return 1
    tokenizer = MusicTokenizer.from_pretrained(args.tokenizer) if args.tokenizer else MusicTokenizer()
    genres = genre_names(e.genre for e in corpus.entries)
    splits, summary = tokenize_pieces(pieces_from_entries(corpus.entries), tokenizer, genres, num_proc=args.num_proc)
    lengths = sorted(len(ids) for ds in splits.values() for ids in ds["input_ids"])
    print(f"tokenizer: {tokenizer!r}")
    print(summary)
    if lengths:
        print(f"tokens per piece: min {lengths[0]}, median {lengths[len(lengths) // 2]}, max {lengths[-1]}, "
              f"total {sum(lengths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
