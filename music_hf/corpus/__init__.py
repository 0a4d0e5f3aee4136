"""Genre-labelled MIDI corpus built from the music21 corpus (plus any MIDI folder).

The music21 PyPI package ships a few thousand public-domain scores (Bach chorales, Palestrina masses, Essen
folk songs, fiddle-tune books, ...) in MusicXML, Humdrum and ABC. Training a MIDI model needs them as
``.mid`` files with a genre label, so they are converted once into a cache folder listed by a JSON-lines
manifest; a second call is near instant, and a piece that fails is recorded, never fatal.

One module per job:

* ``catalogue``: the collections, their genre labels and score files;
* ``convert``: one score file to MIDI (ABC with symusic, the rest with music21);
* ``pool``: worker processes with per-piece time limits, surviving crashed workers;
* ``manifest``: metadata.jsonl / failures.jsonl, MIDI folders with labels files, ``DataSummary``;
* ``prepare``: ``prepare_corpus``, which plans, converts what the manifest lacks and records the rest.
"""

from ..tokenization_music import split_abc_tunes
from .catalogue import (COLLECTION_GENRES, DEFAULT_EXCLUDED_COLLECTIONS, genre_for_collection, list_collections,
                        music21_corpus_dir)
from .convert import DEFAULT_TIMEOUT, convert_piece
from .manifest import (CACHE_ENV, FAILURES_NAME, MANIFEST_NAME, CorpusEntry, DataSummary, default_cache_dir,
                       default_output_dir, load_manifest, read_midi_folder)
from .prepare import prepare_corpus

__all__ = [
    "CACHE_ENV",
    "COLLECTION_GENRES",
    "DEFAULT_EXCLUDED_COLLECTIONS",
    "DEFAULT_TIMEOUT",
    "FAILURES_NAME",
    "MANIFEST_NAME",
    "CorpusEntry",
    "DataSummary",
    "convert_piece",
    "default_cache_dir",
    "default_output_dir",
    "genre_for_collection",
    "list_collections",
    "load_manifest",
    "music21_corpus_dir",
    "prepare_corpus",
    "read_midi_folder",
    "split_abc_tunes",
]
