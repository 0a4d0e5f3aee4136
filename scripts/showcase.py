#!/usr/bin/env python
"""A showcase of a trained model for the README: one seeded, grammar-constrained piece per genre, as MIDI and as a
piano roll, with a Markdown snippet listing them (`music_hf.showcase`).

    python scripts/showcase.py --model outputs/small --out docs/showcase
    python scripts/showcase.py --model outputs/small --out docs/showcase --bars 16 --seed 3 --genres chorale
"""

import sys

from music_hf.showcase import main

if __name__ == "__main__":
    sys.exit(main())
