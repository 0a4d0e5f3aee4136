#!/usr/bin/env bash
# Set up the project and run its main job on the corpus that ships with music21: convert pieces to
# genre-labelled MIDI, train the small config with `accelerate launch` (about 20 minutes on 2 CPU cores),
# generate a piece per genre, and say where the model and the MIDI files are.
#
#   bash scripts/quickstart.sh
#
# Environment knobs: VENV (default .venv), CONFIG (default scripts/configs/small.yaml), OUTPUT_DIR,
# NUM_PROCESSES (default 1), SKIP_TORCH_INSTALL=1 (keep the torch already in the venv, e.g. a CUDA build you
# installed yourself). Any further arguments go to scripts/train.py, e.g. `--max_steps 200`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV="${VENV:-.venv}"
CONFIG="${CONFIG:-scripts/configs/small.yaml}"
OUTPUT_DIR="${OUTPUT_DIR:-outputs/small}"
NUM_PROCESSES="${NUM_PROCESSES:-1}"

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

# 1. data: the corpus collections named in the config, converted once to MIDI and cached
#    (~/.cache/music_hf/corpus, or $MUSIC_HF_CACHE/corpus), then tokenized into an Arrow cache by train.py
COLLECTIONS=$(python -c "import yaml,sys; c=yaml.safe_load(open('$CONFIG')); print(','.join(c['corpus_collections']))")
MAX_PIECES=$(python -c "import yaml; c=yaml.safe_load(open('$CONFIG')); print(c.get('max_pieces_per_collection') or '')")
python scripts/prepare_corpus.py --collections "$COLLECTIONS" ${MAX_PIECES:+--max_pieces_per_collection "$MAX_PIECES"} \
    --num_workers "$(nproc)"

# 2. training: a plain Accelerate loop (the same command runs on GPUs with another config)
accelerate launch --num_processes "$NUM_PROCESSES" --num_machines 1 --mixed_precision no --dynamo_backend no \
    scripts/train.py --config "$CONFIG" --output_dir "$OUTPUT_DIR" "$@"

# 3. generation: one piece per genre the model knows, grammar-constrained
python scripts/generate.py --model "$OUTPUT_DIR" --genre all --max_new_tokens 512 --out "$OUTPUT_DIR/samples"

# 4. how it compares with the model that ships in the repository, on the same held-out pieces
python - "$CONFIG" "$OUTPUT_DIR" models/music-hf-base <<'PY'
import sys
from music_hf.quality import compare_on_test_split
from music_hf.training import TrainConfig
print(f"held-out pieces of {sys.argv[1]}:")
for r in compare_on_test_split(TrainConfig.from_yaml(sys.argv[1]), sys.argv[2:]):
    print(f"  {r['model']}: NLL/token {r['loss']:.3f}, NLL/note {r['nll_per_note']:.2f}, "
          f"{r['parameters'] / 1e6:.1f}M parameters")
PY

echo
echo "model and tokenizer: $OUTPUT_DIR   (AutoModelForCausalLM / AutoTokenizer .from_pretrained)"
echo "generated MIDI:      $OUTPUT_DIR/samples/"
echo "training logs:       $OUTPUT_DIR/logs   (tensorboard --logdir $OUTPUT_DIR/logs)"
echo "demo:                MODEL_ID=$OUTPUT_DIR python space/app.py"
