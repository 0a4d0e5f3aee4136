#!/usr/bin/env python
"""`music-hf generate` as a script: generate music with a trained model (a folder or a Hub repo id) and write
MIDI files; sampling settings left unset come from the model's generation_config.json.

    python scripts/generate.py --model outputs/small --genre chorale --max_new_tokens 512 --out outputs/samples
    python scripts/generate.py --model outputs/small --prompt piece.mid --prompt_bars 4
"""

import sys

from music_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
