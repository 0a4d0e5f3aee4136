"""The music21 corpus catalogue: which collections exist, their genre labels, and their score files."""

from __future__ import annotations

import os

#: music21 corpus folder -> genre label.  Unlisted folders get :data:`OTHER_GENRE`.
COLLECTION_GENRES: dict[str, str] = {
    # Bach's four-part chorales (the folder is almost entirely chorales)
    "bach": "chorale",
    # Renaissance polyphony
    "palestrina": "renaissance",
    "josquin": "renaissance",
    "monteverdi": "renaissance",
    "lusitano": "renaissance",
    # Medieval / ars nova
    "trecento": "medieval",
    "ciconia": "medieval",
    "luca": "medieval",
    # Folk songs (sung melodies)
    "essenFolksong": "folk song",
    "miscFolk": "folk song",
    # Fiddle / dance tune books
    "ryansMammoth": "fiddle tune",
    "oneills1850": "fiddle tune",
    "airdsAirs": "fiddle tune",
    "nottingham-dataset": "fiddle tune",
    # Baroque
    "handel": "baroque",
    "corelli": "baroque",
    "cpebach": "baroque",
    # Classical
    "beethoven": "classical",
    "mozart": "classical",
    "haydn": "classical",
    "schubert": "classical",
    # Romantic (19th century)
    "chopin": "romantic",
    "schumann": "romantic",
    "schumann_clara": "romantic",
    "schumann_robert": "romantic",
    "verdi": "romantic",
    "beach": "romantic",
    "weber": "romantic",
    "liliuokalani": "romantic",
    # 20th century
    "webern": "modern",
    "schoenberg": "modern",
    "joplin": "modern",
    "johnson_j_r": "modern",
}

#: Genre of a collection missing from :data:`COLLECTION_GENRES`.
OTHER_GENRE = "other"

#: Folders of music21 test/demo material, left out unless asked for by name.
DEFAULT_EXCLUDED_COLLECTIONS: frozenset[str] = frozenset({"demos", "theoryExercises"})

#: ABC collections whose ``X:`` blocks are the voices of ONE piece (merged into one MIDI).
ABC_MULTIPART_COLLECTIONS: frozenset[str] = frozenset({"josquin"})

#: Score formats converted, in order of preference when one piece exists in several.
SOURCE_EXTENSIONS: tuple[str, ...] = (".mxl", ".musicxml", ".xml", ".krn", ".abc")

_SKIP_DIRS = {"__pycache__", "_metadataCache"}


def music21_corpus_dir() -> str:
    """Folder of the corpus shipped inside the installed music21 package."""
    import music21

    return os.path.join(os.path.dirname(music21.__file__), "corpus")


def genre_for_collection(collection: str) -> str:
    """Genre label of a corpus collection folder (:data:`OTHER_GENRE` when unknown)."""
    return COLLECTION_GENRES.get(collection, OTHER_GENRE)


def list_collections(corpus_dir: str | None = None, include_excluded: bool = False) -> list[str]:
    """Sorted collection folders of the corpus that hold at least one score file."""
    corpus_dir = corpus_dir or music21_corpus_dir()
    names = []
    for name in sorted(os.listdir(corpus_dir)):
        if name in _SKIP_DIRS or name.startswith((".", "_")):
            continue
        if not include_excluded and name in DEFAULT_EXCLUDED_COLLECTIONS:
            continue
        if os.path.isdir(os.path.join(corpus_dir, name)) and score_files(corpus_dir, name):
            names.append(name)
    return names


def score_files(corpus_dir: str, collection: str) -> list[str]:
    """Corpus-relative score files of a collection, sorted, one format per piece.

    The same piece sometimes exists twice (``bwv277.mxl`` and ``bwv277.krn``); the
    format earliest in :data:`SOURCE_EXTENSIONS` wins so no piece is duplicated.
    """
    best: dict[tuple[str, str], tuple[int, str]] = {}
    top = os.path.join(corpus_dir, collection)
    for root, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        for name in files:
            stem, ext = os.path.splitext(name)
            ext = ext.lower()
            if ext not in SOURCE_EXTENSIONS:
                continue
            rel = os.path.relpath(os.path.join(root, name), corpus_dir).replace(os.sep, "/")
            key = (os.path.dirname(rel), stem)
            rank = SOURCE_EXTENSIONS.index(ext)
            if key not in best or rank < best[key][0]:
                best[key] = (rank, rel)
    return sorted(rel for _, rel in best.values())
