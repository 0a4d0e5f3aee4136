#!/usr/bin/env bash
# Set up the project and run its main job on a small subset of the corpus that ships with music21:
# convert pieces to genre-labelled MIDI, then tokenize them and print pieces, genres and token counts.
#
#   bash scripts/quickstart.sh
#
# Environment knobs: VENV (default .venv), COLLECTIONS, MAX_PIECES (per collection), CORPUS_DIR,
# SKIP_TORCH_INSTALL=1 (keep the torch already in the venv, e.g. a CUDA build you installed yourself).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV="${VENV:-.venv}"
COLLECTIONS="${COLLECTIONS:-bach,palestrina,essenFolksong,ryansMammoth,oneills1850}"
MAX_PIECES="${MAX_PIECES:-10}"
CORPUS_DIR="${CORPUS_DIR:-outputs/quickstart_corpus}"

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

# torch first, pinned. `pip install torch==2.13.0` takes PyPI's default build (CUDA on Linux) unless a CPU
# wheel is on the package index; GPU users: install the torch build for your CUDA version, then run with
# SKIP_TORCH_INSTALL=1.
if [ "${SKIP_TORCH_INSTALL:-0}" != "1" ]; then
    python -m pip install "torch==2.13.0"
fi
python -m pip install -e '.[dev]'

python scripts/prepare_corpus.py --output_dir "$CORPUS_DIR" --collections "$COLLECTIONS" \
    --max_pieces_per_collection "$MAX_PIECES" --num_workers "$(nproc)" --no_progress
python scripts/summarize_corpus.py --corpus_dir "$CORPUS_DIR"
