"""A description in words mapped to generation settings: "a sparse fiddle tune in D minor for flute, 6/8, 100 bpm".

The first step toward text prompts that the field's users ask for (SkyTNT midi-model #16): no language model, a
fixed vocabulary of musical words read by patterns, each mapped to a setting `generate_music` already has (genre,
instruments, time signature, tempo, and the controls key, density, polyphony, pitch range, timing, repetition).
What it read and what it left unread are both said (`TextSettings.understood`, `TextSettings.ignored`), so a user sees
at once which words had an effect. The musical result comes from the model and its controls; this only fills them.

    from music_hf.text_prompt import settings_from_text
    d = settings_from_text("a sparse fiddle tune in D minor for flute, 6/8, 100 bpm", tokenizer, model)
    pieces = generate_music(model, tokenizer, **d.generate_kwargs())
    print(d.summary())   # Understood: ... key D minor ('D minor') · genre fiddle tune ('fiddle tune') · ...

or in one call: `generate_music(model, tokenizer, description="a sparse fiddle tune in D minor")` (keywords given
beside it win over what the description sets).

Words and what they set (case does not matter, except "in D" for a major key, which needs the capital letter so
that "in a sparse style" is not A major):

- genre: the model's genre names and a few synonyms ("reel", "jig", "hornpipe" -> fiddle tune; "hymn" -> chorale;
  "folk" -> folk song; "madrigal", "Palestrina" -> renaissance; "Mozart" -> classical; ...), only genres the model has;
- key: "D minor", "F# major", "Bb minor", "E flat major", "in G" (major);
- tempo: "100 bpm", or a tempo word (largo 50, adagio 70, andante 90, moderato 108, allegro 132, presto 176, slow 70,
  fast 144, ...);
- time signature: "6/8" (those the tokenizer has), or waltz / minuet (3/4), march (2/4), jig (6/8), slip jig (9/8),
  reel / hornpipe / common time (4/4), cut time / alla breve (2/2);
- instruments: General MIDI names and common ones ("violin", "flute", "piano", "strings", "choir", "organ", "drums"
  ...), plurals too; several make a list;
- density: "N notes per bar", or very sparse (1), sparse / simple (3), moderate (7), dense / busy (16), very dense (28)
  notes per bar;
- polyphony: "two voices", "four-part", solo / monophonic (1), duet (2), trio (3), quartet / SATB (4);
- pitch range: "from C3 to C5" / "range C3-C5" (C4 = 60), "low register" (C2-C4), "high register" (C5-C7);
- timing: expressive / performed / rubato / humanized -> "performed"; strict / quantized / mechanical -> "score";
- repetition (where the model has the control): repetitive / with repeats -> 0.3; no repeats / through-composed -> 0.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .render import DRUMS, GM_PROGRAM_NAMES
from .tokenization_music import KEY_TONICS, MusicTokenizer

_NATURALS = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}
_NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "single": 1}
# synonyms of the corpus's genre labels; a label itself always counts (only those the model has are used)
GENRE_WORDS = {
    "chorale": ("chorales", "hymn", "hymns", "bach chorale", "bach chorales", "bach"),
    "fiddle tune": ("fiddle tunes", "reel", "reels", "jig", "jigs", "slip jig", "hornpipe", "hornpipes",
                    "irish", "scottish", "fiddle music"),
    "folk song": ("folk songs", "folksong", "folksongs", "folk", "folk tune", "folk melody", "lied"),
    "baroque": ("handel", "vivaldi", "corelli"),
    "classical": ("mozart", "haydn", "beethoven", "classical era"),
    "romantic": ("chopin", "schumann", "brahms", "schubert", "romantic era"),
    "renaissance": ("madrigal", "madrigals", "palestrina", "josquin", "monteverdi", "motet", "motets"),
    "medieval": ("trecento", "gregorian", "middle ages", "machaut"),
    "modern": ("20th century", "twentieth century", "contemporary"),
}
TEMPO_WORDS = {"very slow": 50, "grave": 40, "largo": 50, "lento": 55, "adagio": 70, "slow": 70, "andante": 90,
               "moderato": 108, "allegretto": 116, "allegro": 132, "lively": 132, "fast": 144, "quick": 144,
               "vivace": 160, "very fast": 176, "presto": 176}
METER_WORDS = {"slip jig": "9/8", "waltz": "3/4", "minuet": "3/4", "menuet": "3/4", "mazurka": "3/4", "march": "2/4",
               "jig": "6/8", "reel": "4/4", "hornpipe": "4/4", "common time": "4/4", "cut time": "2/2",
               "alla breve": "2/2"}
DENSITY_WORDS = {"very sparse": 1, "very dense": 28, "very busy": 28, "sparse": 3, "sparsely": 3, "simple": 3,
                 "spare": 3, "moderate": 7, "dense": 16, "busy": 16, "many notes": 16, "virtuosic": 28}
POLYPHONY_WORDS = {"monophonic": 1, "solo": 1, "unaccompanied": 1, "single line": 1, "duet": 2, "trio": 3,
                   "quartet": 4, "satb": 4, "quintet": 5, "sextet": 6}
TIMING_WORDS = {"expressive": "performed", "expressively": "performed", "performed": "performed",
                "rubato": "performed", "humanized": "performed", "humanised": "performed", "human feel": "performed",
                "strict": "score", "strict time": "score", "quantized": "score", "quantised": "score",
                "mechanical": "score", "on the grid": "score"}
REPETITION_WORDS = {"no repeats": 0.0, "through-composed": 0.0, "through composed": 0.0, "repetitive": 0.3,
                    "with repeats": 0.3, "repeating": 0.3, "repeated phrases": 0.3}
RANGE_WORDS = {"low register": (36, 60), "low-pitched": (36, 60), "high register": (72, 96), "high-pitched": (72, 96)}
# everyday instrument names -> General MIDI programs (the GM names themselves are added below)
INSTRUMENT_WORDS = {"piano": 0, "grand piano": 0, "electric piano": 4, "organ": 19, "church organ": 19,
                    "guitar": 24, "acoustic guitar": 24, "classical guitar": 24, "electric guitar": 27, "bass": 32,
                    "double bass": 43, "string bass": 43, "strings": 48, "string ensemble": 48,
                    "string orchestra": 48, "string quartet": 48, "choir": 52, "chorus": 52, "voice": 53,
                    "horn": 60, "french horn": 60, "brass": 61, "brass section": 61, "sax": 65, "saxophone": 65,
                    "alto sax": 65, "tenor sax": 66, "drums": DRUMS, "drum kit": DRUMS, "percussion": DRUMS,
                    "fiddle": 40, "whistle": 78, "tin whistle": 78, "pipes": 109, "bagpipes": 109, "lute": 24}
STOPWORDS = frozenset(("a", "an", "the", "in", "with", "for", "and", "of", "on", "by", "to", "at", "as", "some",
                       "please", "me", "write", "compose", "make", "generate", "play", "played", "playing", "style",
                       "like", "something", "that", "is", "it", "its", "i", "want", "give", "time", "key", "tempo",
                       "around", "about", "piece", "music", "tune", "song", "bar", "bars", "or", "but", "very",
                       "little", "bit", "quite", "rather", "mood", "feel", "sound", "sounding", "voices", "parts",
                       "instrument", "instruments"))


@dataclass
class TextSettings:
    """What a description set: `generate_music`'s genre, programs, time signature, tempo and controls (None / empty:
    left to the model), what it read (`understood`: (words, setting)), the words it did not use (`ignored`) and what
    it recognised but could not apply (`notes`, e.g. a genre the model does not have)."""

    text: str
    genre: str | None = None
    programs: list[int] | None = None
    time_signature: str | None = None
    tempo: float | None = None
    controls: dict[str, Any] = field(default_factory=dict)
    understood: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def generate_kwargs(self) -> dict[str, Any]:
        """The keywords for `generate_music` (or `generate_midi`) of what was set; nothing for what was not."""
        out: dict[str, Any] = {}
        for name in ("genre", "programs", "time_signature", "tempo"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.controls:
            out["controls"] = dict(self.controls)
        return out

    def merged(self, genre: Any = None, programs: Any = None, time_signature: str | None = None,
               tempo: float | None = None, controls: dict[str, Any] | None = None) -> dict[str, Any]:
        """These settings with the caller's own winning: each keyword given (not None) over the description's, and
        the caller's controls over the description's control by control."""
        return {"genre": self.genre if genre is None else genre,
                "programs": self.programs if programs is None else programs,
                "time_signature": self.time_signature if time_signature is None else time_signature,
                "tempo": self.tempo if tempo is None else tempo,
                "controls": {**self.controls, **(controls or {})} if self.controls else controls}

    def summary(self) -> str:
        """One line: what each group of words set, then the unused words and the notes."""
        parts = [f"{setting} ('{words}')" for words, setting in self.understood] or ["nothing it knows"]
        text = "Understood: " + " · ".join(parts)
        if self.ignored:
            text += f". Not used: {', '.join(self.ignored)}"
        if self.notes:
            text += ". " + " ".join(self.notes)
        return text


def _instrument_names() -> list[tuple[str, int]]:
    """(name, program) pairs, longest names first, so "acoustic grand piano" wins over "piano"."""
    names = {n.lower(): p for p, n in enumerate(GM_PROGRAM_NAMES[:128])}
    names.update({re.sub(r"\s*\(.*\)", "", n.lower()): p for p, n in enumerate(GM_PROGRAM_NAMES[:128])
                  if "(" in n and re.sub(r"\s*\(.*\)", "", n.lower()) not in names})
    names.update(INSTRUMENT_WORDS)
    return sorted(names.items(), key=lambda item: -len(item[0]))


def _phrase(words: str) -> str:
    """A regex for `words` as whole words, a plural "s" allowed on the last one, spaces or hyphens between them."""
    return r"(?<![\w/])" + r"[\s-]+".join(map(re.escape, words.split())) + r"s?(?![\w/])"


def _note_number(name: str) -> int | None:
    """MIDI number of a note name like "C4" (60), "F#3", "Bb5"; None for anything else."""
    match = re.fullmatch(r"([a-g])([#b]?)(-?\d)", name.strip().lower())
    if not match:
        return None
    shift = {"#": 1, "b": -1, "": 0}[match.group(2)]
    return 12 * (int(match.group(3)) + 1) + _NATURALS[match.group(1)] + shift


class _Reader:
    """Finds phrases in the text one kind at a time; what a kind takes, later kinds cannot take again."""

    def __init__(self, text: str):
        self.text = text
        self.lower = text.lower()
        self.taken = [False] * len(text)

    def find(self, pattern: str, case_sensitive: bool = False) -> list[re.Match]:
        found = []
        for match in re.finditer(pattern, self.text if case_sensitive else self.lower):
            if not any(self.taken[match.start():match.end()]):
                found.append(match)
                self.taken[match.start():match.end()] = [True] * (match.end() - match.start())
        return found

    def words(self, table: Sequence[str]) -> list[tuple[str, str]]:
        """(table word, text found) for each word of `table` (longest first) present in the text."""
        found = []
        for word in sorted(table, key=len, reverse=True):
            for match in self.find(_phrase(word)):
                found.append((word, self.text[match.start():match.end()]))
        return found

    def rest(self) -> list[str]:
        """The words no phrase took, stopwords and punctuation left out."""
        kept = "".join(c if not t else " " for c, t in zip(self.text, self.taken))
        return [w for w in re.findall(r"[\w#'/-]+", kept) if w.lower().strip("-'") not in STOPWORDS
                and w.strip("-'")]


def settings_from_text(text: str, tokenizer: MusicTokenizer, model: Any = None) -> TextSettings:
    """The settings `text` describes, for `generate_music(model, tokenizer, **settings_from_text(...).generate_kwargs())`.

    `model` (a MusicForCausalLM, or its config) gives the genres it knows; without it no genre is set. Controls the
    tokenizer has no tokens for are noted, not set. Raises TypeError for a text that is not a string."""
    if not isinstance(text, str):
        raise TypeError(f"a description is a string, not {type(text).__name__}")
    out = TextSettings(text=text)
    reader = _Reader(text)
    config = getattr(model, "config", model)
    # the model's genres ("other", a catch-all label, is no description)
    genres = [g for i, g in sorted(getattr(config, "id2genre", {}).items())
              if i != 0 and g != "other"] if config is not None else []
    controls = set(tokenizer.control_names)

    def control(name: str, value: Any, words: str, shown: str) -> None:
        if name not in controls:
            out.notes.append(f"'{words}' asks for a {name.replace('_', ' ')} this model has no control for.")
            return
        out.controls[name] = value
        out.understood.append((words, shown))

    # numbers with units first (they hold digits other patterns could misread)
    for match in reader.find(r"(?<!\w)(\d{2,3})\s*(?:bpm|beats per minute)(?!\w)"):
        out.tempo = float(match.group(1))
        out.understood.append((text[match.start():match.end()], f"tempo {match.group(1)} bpm"))
    for match in reader.find(r"(?<![\w/])(\d{1,2})\s*/\s*(\d{1,2})(?![\w/])"):
        signature = f"{int(match.group(1))}/{int(match.group(2))}"
        if signature in tokenizer.time_signatures():
            out.time_signature = signature
            out.understood.append((text[match.start():match.end()], f"time signature {signature}"))
        else:
            out.notes.append(f"The time signature {signature} is not in the tokenizer's "
                             f"({', '.join(tokenizer.time_signatures())}).")
    for match in reader.find(r"(?<!\w)(\d+(?:\.\d+)?)\s*notes?\s*(?:per|a|each|in a)\s*bar(?!\w)"):
        control("density", float(match.group(1)), text[match.start():match.end()],
                f"density {float(match.group(1)):g} notes per bar")
    note = r"[a-g][#b]?-?\d"
    for match in reader.find(rf"(?<!\w)(?:range|from)\s+({note})\s*(?:-|to|–)\s*({note})(?!\w)"):
        low, high = sorted((_note_number(match.group(1)), _note_number(match.group(2))))
        control("pitch_range", (low, high), text[match.start():match.end()], f"pitch range {low}-{high}")
    # keys: a tonic with a mode word; "in D" (capital letter) for a major key
    accidental = r"(#|♯|b|♭|\s*-?\s*sharp|\s*-?\s*flat)?"
    for match in reader.find(rf"(?<!\w)([a-g]){accidental}\s*(major|minor|maj|min)(?!\w)"):
        _key(out, control, match, text)
    for match in reader.find(rf"(?<!\w)in ([A-G]){accidental}(?![\w/#♯♭])", case_sensitive=True):
        _key(out, control, match, text)
    # polyphony: "two voices", "4-part", then the ensemble words
    for match in reader.find(r"(?<!\w)(one|two|three|four|five|six|single|[1-6])[\s-]*(?:voices?|parts?|voiced)"
                             r"(?!\w)"):
        count = _NUMBERS.get(match.group(1), None) or int(match.group(1))
        control("polyphony", count, text[match.start():match.end()], f"polyphony {count}")
    for word, found in reader.words(POLYPHONY_WORDS):
        control("polyphony", POLYPHONY_WORDS[word], found, f"polyphony {POLYPHONY_WORDS[word]}")
    # genres before the meters and instruments that share their words (a jig is a fiddle tune in 6/8)
    meter_of_genre = []
    for genre in genres:
        for word, found in reader.words((genre, *GENRE_WORDS.get(genre, ()))):
            if out.genre is None:
                out.genre = genre
                out.understood.append((found, f"genre {genre}"))
            if word in METER_WORDS:
                meter_of_genre.append((word, found))
    unknown = [g for g in GENRE_WORDS if g not in genres]
    for word, found in reader.words([w for g in unknown for w in (g, *GENRE_WORDS[g])]):
        out.notes.append(f"'{found}' names a genre this model does not have.")
    for word, found in meter_of_genre + reader.words(METER_WORDS):
        if out.time_signature is None and METER_WORDS[word] in tokenizer.time_signatures():
            out.time_signature = METER_WORDS[word]
            out.understood.append((found, f"time signature {METER_WORDS[word]}"))
    if out.tempo is None:
        for word, found in reader.words(TEMPO_WORDS):
            if out.tempo is None:
                out.tempo = float(TEMPO_WORDS[word])
                out.understood.append((found, f"tempo {TEMPO_WORDS[word]} bpm"))
    for table, name, shown in ((DENSITY_WORDS, "density", "density {} notes per bar"),
                               (TIMING_WORDS, "timing", "timing {}"),
                               (REPETITION_WORDS, "repetition", "repeated bars {}"),
                               (RANGE_WORDS, "pitch_range", "pitch range {0[0]}-{0[1]}")):
        for word, found in reader.words(table):
            if name not in out.controls:
                control(name, table[word], found, shown.format(table[word]))
    found = []  # (where, program, words): the instruments in the order the text names them
    for name, program in _instrument_names():
        found += [(match.start(), program, text[match.start():match.end()]) for match in reader.find(_phrase(name))]
    programs = []
    for _, program, words in sorted(found):
        if program not in programs:
            programs.append(program)
            out.understood.append((words, f"instrument {GM_PROGRAM_NAMES[program]}"))
    out.programs = programs or None
    out.understood.sort(key=lambda item: text.find(item[0]))  # said in the text's order
    out.ignored = reader.rest()
    return out


def _key(out: TextSettings, control: Any, match: re.Match, text: str) -> None:
    sign = (match.group(2) or "").replace(" ", "").replace("-", "")
    shift = 1 if sign in ("#", "♯", "sharp") else -1 if sign in ("b", "♭", "flat") else 0
    mode = "minor" if (match.group(3) if match.lastindex and match.lastindex >= 3 else "major") in ("minor", "min") \
        else "major"
    # the tokenizer's spelling of the tonic (Db -> C#, A# -> Bb), as the key controls and the Space name keys
    name = f"{KEY_TONICS[(_NATURALS[match.group(1).lower()] + shift) % 12]} {mode}"
    control("key", name, text[match.start():match.end()], f"key {name}")


__all__ = ["TextSettings", "settings_from_text", "GENRE_WORDS", "TEMPO_WORDS", "METER_WORDS", "DENSITY_WORDS",
           "POLYPHONY_WORDS", "TIMING_WORDS", "REPETITION_WORDS", "RANGE_WORDS", "INSTRUMENT_WORDS"]
