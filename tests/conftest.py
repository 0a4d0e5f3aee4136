"""Shared fixtures: a handful of real pieces from the music21 corpus, written once per test session as MIDI.

The pieces cover what the tokenizer meets in the corpus: four-part chorales (4/4 and 3/4), a Palestrina mass
movement (4/2, program 53), a two-staff piano piece, and folk/fiddle tunes read from ABC (4/2, 2/4, 6/8).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import transformers

from music_hf.tokenization_music import MusicTokenizer, load_score, split_abc_tunes

# transformers' common test mixins (tests/test_transformers_common*.py), unpacked by scripts/fetch_transformers_tests.py
TRANSFORMERS_TESTS = Path(os.environ.get("MUSIC_HF_TRANSFORMERS_TESTS") or
                          Path(__file__).resolve().parent.parent / ".cache" / "transformers-tests" / transformers.__version__)
if (TRANSFORMERS_TESTS / "transformers_tests" / "test_modeling_common.py").is_file():
    sys.path.append(str(TRANSFORMERS_TESTS))
elif os.environ.get("CI") == "true":
    raise RuntimeError(f"transformers' common tests are missing under {TRANSFORMERS_TESTS}: CI runs "
                       "scripts/fetch_transformers_tests.py before pytest")

# music21 corpus works converted with music21 itself (MusicXML / Humdrum -> MIDI); about 2 s in all.
MUSIC21_WORKS = (
    "bach/bwv66.6",
    "bach/bwv269",
    "palestrina/Agnus_01.krn",
    "schoenberg/opus19/movement2",
)
# (ABC file of the music21 corpus, tune index): converted with symusic, as the corpus reader does.
ABC_TUNES = (
    ("essenFolksong/altdeu10", 0),
    ("ryansMammoth/7thRegimentReel", 0),
    ("oneills1850/0001-0050", 4),
)


def _write_real_midi(out: Path) -> list[Path]:
    from music21 import corpus

    paths = []
    for work in MUSIC21_WORKS:
        path = out / (work.replace("/", "_") + ".mid")
        corpus.parse(work).write("midi", fp=str(path))
        paths.append(path)
    for work, index in ABC_TUNES:
        path = out / f"{work.replace('/', '_')}_{index}.mid"
        text = Path(corpus.getWork(work)).read_text(encoding="utf-8", errors="replace")
        load_score(split_abc_tunes(text)[index]).dump_midi(str(path))
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def real_midi_paths(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Seven real MIDI files from the music21 corpus (written once per session)."""
    return _write_real_midi(tmp_path_factory.mktemp("real_midi"))


@pytest.fixture(scope="session")
def real_midi_bytes(real_midi_paths: list[Path]) -> list[bytes]:
    return [p.read_bytes() for p in real_midi_paths]


@pytest.fixture
def tokenizer() -> MusicTokenizer:
    """A fresh default MusicTokenizer (REMI+, no BPE); building one takes milliseconds."""
    return MusicTokenizer()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine two threads per process
    oversubscribe the CPU (5-30x slower decoding steps); restored afterwards. Modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
