#!/usr/bin/env python
"""Convert the music21 corpus into a cached, genre-labelled MIDI corpus.

Thin CLI over :func:`music_hf.corpus.prepare_corpus`; a second run reuses the cache.

    python scripts/prepare_corpus.py --collections bach,essenFolksong --max_pieces_per_collection 50
"""

from __future__ import annotations

import argparse
import os
import sys

try:
    import music_hf  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from music_hf.corpus import CACHE_ENV, DEFAULT_TIMEOUT, MANIFEST_NAME, list_collections, prepare_corpus


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default=None,
                   help=f"where .mid files + {MANIFEST_NAME} go "
                        f"(default: ${CACHE_ENV}/corpus or ~/.cache/music_hf/corpus)")
    p.add_argument("--collections", default="all",
                   help="comma-separated music21 corpus folders, or 'all' (default)")
    p.add_argument("--max_pieces_per_collection", type=int, default=None,
                   help="keep only the first N pieces (sorted) of each collection")
    p.add_argument("--num_workers", type=int, default=None, help="worker processes (default: CPU count)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds allowed per piece")
    p.add_argument("--retry_failed", action="store_true", help="try pieces that failed before again")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    p.add_argument("--max_failures_shown", type=int, default=10)
    p.add_argument("--list", action="store_true", help="list the available collections and exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        print("\n".join(list_collections(include_excluded=True)))
        return 0
    names = [c.strip() for c in args.collections.split(",") if c.strip()]
    collections = None if not names or names == ["all"] else names
    summary = prepare_corpus(
        output_dir=args.output_dir,
        collections=collections,
        max_pieces_per_collection=args.max_pieces_per_collection,
        num_workers=args.num_workers,
        progress=not args.no_progress,
        timeout=args.timeout,
        retry_failed=args.retry_failed,
    )
    print(summary.report(max_failures=args.max_failures_shown))
    print(f"Manifest: {os.path.join(summary.output_dir, MANIFEST_NAME)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
