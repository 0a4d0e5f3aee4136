"""Fetch real-world MIDI files for evaluation only: the test MIDIs of miditok's source distribution.

`scripts/evaluate.py --real_world_dir .cache/eval-midi` measures how well a model predicts music people actually
have (pop songs with drums, expressive piano), which the music21 training corpus does not contain. miditok's sdist
ships such files for its own tests: `tests/MIDIs_multitrack` (12 pop songs, most with drums) and
`tests/MIDIs_one_track` (17 one-track pieces: MAESTRO and POP909 excerpts, piano etudes, one empty file). This
script downloads the sdist of a miditok version from the package index and unpacks those two folders as
`--dest/multitrack/` and `--dest/one_track/`, with a SOURCE.txt saying where they came from. Nothing of it is
committed (`.cache/` is ignored), and none of it is ever training data.

    python scripts/fetch_eval_midi.py            # into .cache/eval-midi
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DEST = REPO / ".cache" / "eval-midi"
VERSION = "3.1.0"  # the miditok whose test files the BENCHMARKS.md numbers were measured on
FOLDERS = {"MIDIs_multitrack": "multitrack", "MIDIs_one_track": "one_track"}
MIDI_SUFFIXES = (".mid", ".midi")


def fetch(dest: Path = DEFAULT_DEST, version: str = VERSION) -> Path:
    """Unpack miditok `version`'s test MIDIs into `dest/multitrack` and `dest/one_track`; return `dest`. Reuses an
    earlier download of the same version."""
    stamp = dest / "SOURCE.txt"
    if stamp.is_file() and f"miditok-{version}" in stamp.read_text():
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        f"miditok=={version}", "-d", tmp], check=True)
        sdist = next(Path(tmp).glob("miditok-*.tar.gz"))
        counts = dict.fromkeys(FOLDERS.values(), 0)
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                parts = Path(member.name).parts  # miditok-<version>/tests/<folder>/<file>
                if (len(parts) == 4 and parts[1] == "tests" and parts[2] in FOLDERS and member.isfile()
                        and parts[3].lower().endswith(MIDI_SUFFIXES)):
                    folder = FOLDERS[parts[2]]
                    (dest / folder).mkdir(parents=True, exist_ok=True)
                    member.name = parts[3]
                    tar.extract(member, dest / folder, filter="data")
                    counts[folder] += 1
    stamp.write_text(f"Test MIDI files of the miditok-{version} source distribution (PyPI sdist, tests/"
                     f"{{{','.join(FOLDERS)}}}): {counts}. Evaluation only: never training data.\n")
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="where to unpack (default: %(default)s)")
    parser.add_argument("--version", default=VERSION, help="miditok version whose sdist to read (default: "
                                                           "%(default)s)")
    args = parser.parse_args()
    print(fetch(args.dest, args.version))


if __name__ == "__main__":
    main()
