"""Composition with control by decoding: bar infilling (`infill_music`) and accompaniment (`accompany`).

Composition works by decoding, so its guarantees hold for any causal model over the tokenizer's vocabulary (an
untrained one included); what the model learned only decides which of the allowed tokens come:

- Bar infilling (`infill_music`) prompts fill-in-the-middle: BOS, controls, the bars before the gap, one
  Infill_Bar placeholder per missing bar, the bars after it, Infill_Start; the model then writes the missing bars
  up to Infill_End (`InfillLogitsProcessor` guarantees exactly that many bars, each opened by Bar and the gap's
  own time signature, with notes, no Tempo/TimeSig of its own, and the end in time), and the piece is put back
  together around them: every bar outside the gap is the input's own tokens.
- Accompaniment (`accompany`, and infilling with `programs=`) decodes interleaved: the given piece's tokens
  (without the target program's notes) are forced in time order, and at each point where a note may start the
  model may instead insert a note of the target program at the current position, or open a new Position between
  the current one and the next given event, inside the bar (`InterleaveLogitsProcessor`, whose per-row state
  advances with each generated token). Every given token comes out unchanged and in place, so the given notes are
  kept exactly. Anticipation (Thickstun et al., 2023, "Anticipatory Music Transformer") would let the model see
  the given events ahead of time, but only a model trained on sequences with the anticipated events interleaved
  can read them; forced interleaving works with any causal model over this vocabulary, at the price of no
  look-ahead: the new part hears what came before, not what comes next (with `programs=` infilling it does see the
  bars after the gap, through the fill-in-the-middle prompt).

The two composition processors keep per-row state and are made for one `generate` call with sampling or greedy
search (no beam search, which reorders rows).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import symusic
import torch
from transformers import LogitsProcessor

from .generation import MusicGrammarLogitsProcessor, _context_room, _control_split, _sample, with_default_controls
from .tokenization_music import DRUM_PROGRAM, KIND_INDEX, MusicFileError, MusicTokenizer, _source_name

class _ComposeProcessor(LogitsProcessor):
    """Shared by the composition processors: the tokenizer's tables, and per-row state advanced from the tokens
    generated since the previous call (each step reads one new token per row, never the whole history)."""

    def __init__(self, tokenizer: MusicTokenizer, max_new_tokens: int, end_id: int):
        if tokenizer.miditok.is_trained:
            raise ValueError("infilling and accompaniment need a tokenizer without BPE")
        t = tokenizer.token_table
        grammar = MusicGrammarLogitsProcessor(tokenizer, allow_eos=False)
        self.rows = grammar.allowed  # (kinds, V): what the grammar allows after each kind (no specials, no EOS)
        self.vocab, self.kind, self.value = len(t), t.kind, t.value
        self.program_set, self.bar_positions = t.program_set, t.bar_positions
        self.default_bar_positions = grammar.default_bar_positions
        kinds = torch.as_tensor(t.kind)
        self.is_kind = {name: kinds == KIND_INDEX[name] for name in ("Bar", "Position", "Program", "Tempo", "TimeSig")}
        self.is_pitched, self.is_drum = grammar.is_pitched, grammar.is_drum
        self.position_value = torch.where(self.is_kind["Position"], torch.as_tensor(t.value), torch.tensor(-1.0))
        # a note's tokens: Program, Pitch, then what miditok's grammar chains after it (Velocity, Duration)
        graph = tokenizer.miditok.tokens_types_graph
        chain = ["Program", "Pitch"]
        while nxt := [k for k in ("Velocity", "Duration") if k in graph.get(chain[-1], ()) and k not in chain]:
            chain.append(nxt[0])
        self.note_length = len(chain)
        self.pending = {KIND_INDEX[k]: len(chain) - 1 - i for i, k in enumerate(chain[:-1])}  # tokens still to come
        self.pending[KIND_INDEX["PitchDrum"]] = self.pending[KIND_INDEX["Pitch"]]
        self.note_end = KIND_INDEX[chain[-1]]
        self.end_id, self.max_new_tokens = end_id, max_new_tokens
        self.bar_id = tokenizer.token_id("Bar")
        self.states: list[Any] | None = None
        self._seen = self._prompt_length = 0

    def _start(self) -> Any:
        raise NotImplementedError

    def _advance(self, state: Any, token: int) -> None:
        """Update a row's state (with a `done` flag) by one generated token other than the end token."""
        raise NotImplementedError

    def _allowed(self, state: Any, remaining: int) -> torch.Tensor:
        raise NotImplementedError

    def _only(self, *ids: int) -> torch.Tensor:
        mask = torch.zeros(self.vocab, dtype=torch.bool)
        mask[list(ids)] = True
        return mask

    def _note_step(self, last_kind: int, program: int) -> torch.Tensor:
        """Within a note: what the grammar allows next (drum pitches for drums, pitches for instruments)."""
        row = self.rows[last_kind].clone()
        if last_kind == KIND_INDEX["Program"]:
            row &= ~self.is_pitched if program == DRUM_PROGRAM else ~self.is_drum
        return row

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        batch, length = input_ids.shape
        if self.states is None or length < self._seen or len(self.states) != batch:  # a new generate call
            self._prompt_length = self._seen = length
            self.states = [self._start() for _ in range(batch)]
        new = input_ids[:, self._seen:].tolist()
        self._seen = length
        remaining = self.max_new_tokens - (length - self._prompt_length)
        mask = torch.zeros(batch, scores.shape[-1], dtype=torch.bool)
        width = min(self.vocab, scores.shape[-1])  # ids past the tokenizer's (a padded head): never generated
        for row, (state, tokens) in enumerate(zip(self.states, new)):
            for token in tokens:  # a row is done at its end token: nothing after it counts
                if state.done:
                    break
                if token == self.end_id:
                    state.done = True
                    break
                self._advance(state, int(token))
            allowed = self._allowed(state, remaining)
            if not allowed.any():  # cannot happen with a budget the caller checked; end rather than fail
                allowed = self._only(self.end_id)
            mask[row, :width] = allowed[:width]
        return scores.masked_fill(~mask.to(scores.device), float("-inf"))


@dataclass
class _InfillState:
    bars: int = 0  # bars opened
    has_note: bool = True  # a note started in the current bar (nothing to fill before the first Bar)
    last: int = -1  # kind of the last token (-1: the prompt's Infill_Start)
    low: int = 0  # lowest Position allowed next
    bar_length: int = 0  # positions in the current bar
    program: int = -1
    at_position: bool = False  # a Position was set in the current bar (notes follow a Position)
    forced: list[int] = field(default_factory=list)  # header tokens of the bar still to come
    done: bool = False


class InfillLogitsProcessor(_ComposeProcessor):
    """Writes exactly `len(bar_headers)` bars after a fill-in-the-middle prompt, then `end_id` (Infill_End).

    Each bar opens with a Bar token and its header (`bar_headers[i]`: the gap's own TimeSig token there), keeps its
    positions inside `bar_lengths[i]`, and holds at least one note; no Tempo or TimeSig is chosen freely, no
    control, infill or EOS id comes before the end, and the end comes where the next Bar would once all the bars
    are written. The budget is kept: an event starts only when the tokens left (of `max_new_tokens`) still let
    every missing bar get its Bar, header and a note, and the end; `max_new_tokens` must be at least
    `min_new_tokens()` (None: set the attribute before generating).
    """

    def __init__(self, tokenizer: MusicTokenizer, bar_headers: Sequence[Sequence[int]], bar_lengths: Sequence[int],
                 max_new_tokens: int | None, end_id: int):
        super().__init__(tokenizer, max_new_tokens, end_id)
        self.headers = [list(h) for h in bar_headers]
        self.bar_lengths = list(bar_lengths)
        self.bar_cost = 1 + max((len(h) for h in self.headers), default=0) + 1 + self.note_length
        if max_new_tokens is not None and max_new_tokens < self.min_new_tokens():
            raise ValueError(f"{len(self.headers)} bars need max_new_tokens >= {self.min_new_tokens()}")

    def min_new_tokens(self) -> int:
        return len(self.headers) * self.bar_cost + 1

    def _start(self) -> _InfillState:
        return _InfillState()

    def _advance(self, s: _InfillState, token: int) -> None:
        kind = int(self.kind[token])
        s.last = kind
        if kind == KIND_INDEX["Bar"]:
            s.bars += 1
            s.has_note, s.low, s.at_position = False, 0, False
            s.forced = list(self.headers[s.bars - 1])
            s.bar_length = self.bar_lengths[s.bars - 1]
            return
        if s.forced and token == s.forced[0]:
            s.forced.pop(0)
        if kind == KIND_INDEX["Position"]:
            s.low, s.at_position = int(self.value[token]) + 1, True
        elif kind == KIND_INDEX["Program"]:
            s.program, s.has_note = int(self.program_set[token]), True

    def _need(self, bars_left: int, has_note: bool, last: int, forced: int) -> int:
        """Tokens still needed at least: the current note, a note in the bar, the bars left, the end."""
        position = last == KIND_INDEX["Position"]
        pending = self.note_length if position else self.pending.get(last, 0)
        note = 0 if has_note or position else 1 + self.note_length
        return forced + pending + note + bars_left * self.bar_cost + 1

    def _allowed(self, s: _InfillState, remaining: int) -> torch.Tensor:
        if s.done:
            return self._only(self.end_id)
        if s.bars == 0:
            return self._only(self.bar_id)
        if s.forced:
            return self._only(s.forced[0])
        if s.last in self.pending:  # inside a note: its grammar
            return self._note_step(s.last, s.program)
        row = self.rows[s.last].clone()
        row &= ~(self.is_kind["Tempo"] | self.is_kind["TimeSig"] | self.is_kind["Bar"])
        pos = self.is_kind["Position"]
        row &= ~pos | ((self.position_value >= s.low) & (self.position_value < s.bar_length))
        bars_left = len(self.headers) - s.bars
        if not s.at_position or remaining < 1 + self._need(bars_left, True, KIND_INDEX["Program"], 0):
            row &= ~self.is_kind["Program"]
        if remaining < 1 + self._need(bars_left, s.has_note, KIND_INDEX["Position"], 0):
            row &= ~pos
        bar_next = bool(self.rows[s.last][self.bar_id]) and s.has_note  # where the grammar lets a bar end
        if bar_next and bars_left > 0:
            header = len(self.headers[s.bars])
            row[self.bar_id] = remaining >= 1 + self._need(bars_left - 1, False, KIND_INDEX["Bar"], header)
        if bar_next and bars_left == 0:
            row[self.end_id] = True
        return row


@dataclass
class _InterleaveState:
    j: int = 0  # index of the next given token
    last: int = -1  # kind of the last token
    low: int = 0
    bar_length: int = 0
    at_position: bool = False  # a Position was set in the current bar
    program: int = -1
    own_position: bool = False  # the last token is a Position opened for a new note
    own_note: bool = False  # a new note is being written
    done: bool = False


class InterleaveLogitsProcessor(_ComposeProcessor):
    """Forces `given` (a REMI token stream) in order, letting the model insert notes of `programs` between them.

    At each point where a note may start (after a Position, a Tempo or a complete note, and before a given note, a
    given Position or a Bar) the model may write a note of one of `programs` at the current position; where the
    next given event is a Position (or the bar's end) it may also open a Position of its own between the current
    one and that one, which a new note then follows. After the last given token it may still add notes in the
    last bar, then `end_id` (EOS, or Infill_End in a fill-in-the-middle span). Insertions stop when the tokens
    left (of `max_new_tokens`, at least `len(given) + 1`) are needed for the rest of `given` and the end.
    `bar_positions`: positions per bar in force before `given` (its own TimeSig tokens change it).
    """

    def __init__(self, tokenizer: MusicTokenizer, given: Sequence[int], programs: Sequence[int],
                 max_new_tokens: int, end_id: int, bar_positions: int | None = None):
        super().__init__(tokenizer, max_new_tokens, end_id)
        self.given = [int(i) for i in given]
        if max_new_tokens < len(self.given) + 1:
            raise ValueError(f"max_new_tokens must be at least {len(self.given) + 1} (the given tokens and the end)")
        self.targets = torch.isin(torch.as_tensor(self.program_set), torch.tensor([int(p) for p in programs]))
        self.targets &= self.is_kind["Program"]
        self.initial_bar_positions = bar_positions or self.default_bar_positions
        k = KIND_INDEX
        self.note_here_after = {self.note_end, k["Position"], k["Tempo"]}
        self.new_position_after = {self.note_end, k["Tempo"], k["TimeSig"]}
        self.before_note = {k["Program"], k["Position"], k["Bar"], None}
        self.before_position = {k["Position"], k["Bar"], None}

    def _start(self) -> _InterleaveState:
        return _InterleaveState(bar_length=self.initial_bar_positions)  # nothing may come before given[0]

    def _advance(self, s: _InterleaveState, token: int) -> None:
        kind = int(self.kind[token])
        if s.own_position:  # the new note's Program
            s.own_position, s.own_note = False, True
        elif s.own_note:
            s.own_note = kind != self.note_end
        elif s.j < len(self.given) and token == self.given[s.j]:
            s.j += 1
        elif kind == KIND_INDEX["Position"]:
            s.own_position = True
        elif kind == KIND_INDEX["Program"]:
            s.own_note = True
        s.last = kind
        if kind == KIND_INDEX["Bar"]:
            s.low, s.at_position = 0, False
        elif kind == KIND_INDEX["TimeSig"]:
            s.bar_length = int(self.bar_positions[token])
        elif kind == KIND_INDEX["Position"]:
            s.low, s.at_position = int(self.value[token]) + 1, True
        elif kind == KIND_INDEX["Program"]:
            s.program = int(self.program_set[token])

    def _allowed(self, s: _InterleaveState, remaining: int) -> torch.Tensor:
        if s.done:
            return self._only(self.end_id)
        if s.own_position:
            return self.targets.clone()
        if s.own_note:
            return self._note_step(s.last, s.program)
        left = len(self.given) - s.j
        following = self.given[s.j] if left else None
        mask = self._only(following if left else self.end_id)
        next_kind = None if following is None else int(self.kind[following])
        if (s.at_position and s.last in self.note_here_after and next_kind in self.before_note
                and remaining >= self.note_length + left + 1):
            mask |= self.targets
        if (s.last in self.new_position_after and next_kind in self.before_position
                and remaining >= 1 + self.note_length + left + 1):
            high = self.value[following] if next_kind == KIND_INDEX["Position"] else s.bar_length
            mask |= (self.position_value >= s.low) & (self.position_value < float(high))
        return mask


@dataclass
class ComposedPiece:
    """The result of `infill_piece` / `accompany_piece`: the whole piece's ids (no BOS/EOS), its Score, the span of
    ids the model wrote or changed (start, end), and the prompt of the (last) generation."""

    ids: list[int]
    score: symusic.Score
    span: tuple[int, int]
    prompt: list[int]


def _bar_starts(tokenizer: MusicTokenizer, ids: Sequence[int]) -> list[int]:
    kind = tokenizer.token_table.kind
    return [n for n, i in enumerate(ids) if kind[i] == KIND_INDEX["Bar"]]


def _bars(tokenizer: MusicTokenizer, ids: Sequence[int]) -> list[list[int]]:
    """`ids` cut into bars (each from its Bar token; REMI starts with a Bar)."""
    bounds = _bar_starts(tokenizer, ids) + [len(ids)]
    return [list(ids[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def _last_of_kind(tokenizer: MusicTokenizer, ids: Sequence[int], kind: str) -> int | None:
    kinds = tokenizer.token_table.kind
    return next((int(i) for i in reversed(ids) if kinds[i] == KIND_INDEX[kind]), None)


def _header_length(tokenizer: MusicTokenizer, bar: Sequence[int]) -> int:
    """Bar token plus its TimeSig (if any)."""
    return 2 if len(bar) > 1 and tokenizer.token_table.kind[bar[1]] == KIND_INDEX["TimeSig"] else 1


def _opening_tempo(tokenizer: MusicTokenizer, bar: Sequence[int]) -> int | None:
    """The Tempo id at position 0 of a bar (Bar, TimeSig, Position_0, Tempo), if it has one."""
    t, h = tokenizer.token_table, _header_length(tokenizer, bar)
    if len(bar) > h + 1 and t.kind[bar[h]] == KIND_INDEX["Position"] and t.value[bar[h]] == 0 \
            and t.kind[bar[h + 1]] == KIND_INDEX["Tempo"]:
        return int(bar[h + 1])
    return None


def _with_tempo(tokenizer: MusicTokenizer, bar: Sequence[int], tempo_id: int) -> list[int]:
    """`bar` with `tempo_id` set at its position 0 (after Bar and TimeSig: Position_0 Tempo)."""
    t, h, bar = tokenizer.token_table, _header_length(tokenizer, bar), list(bar)
    if len(bar) > h and t.kind[bar[h]] == KIND_INDEX["Position"] and t.value[bar[h]] == 0:
        if len(bar) > h + 1 and t.kind[bar[h + 1]] == KIND_INDEX["Tempo"]:
            bar[h + 1] = tempo_id
        else:
            bar.insert(h + 1, tempo_id)
        return bar
    return bar[:h] + [tokenizer.token_id("Position", 0), tempo_id] + bar[h:]


def _drop_programs(tokenizer: MusicTokenizer, ids: Sequence[int], programs: Sequence[int]) -> list[int]:
    """`ids` without the notes of `programs` (Program and the note's tokens after it), and without the Positions
    this leaves with nothing after them."""
    t = tokenizer.token_table
    note_kinds = {KIND_INDEX[k] for k in ("Pitch", "PitchDrum", "Velocity", "Duration")}
    wanted = set(int(p) for p in programs)
    kept: list[int] = []
    n = 0
    while n < len(ids):
        i = ids[n]
        if t.kind[i] == KIND_INDEX["Program"] and int(t.program_set[i]) in wanted:
            n += 1
            while n < len(ids) and t.kind[ids[n]] in note_kinds and t.kind[ids[n - 1]] != KIND_INDEX["Duration"]:
                n += 1
            continue
        kept.append(int(i))
        n += 1
    position = KIND_INDEX["Position"]
    out = []
    for n, i in enumerate(kept):
        following = kept[n + 1] if n + 1 < len(kept) else None
        if t.kind[i] == position and (following is None or t.kind[following] in (position, KIND_INDEX["Bar"])):
            continue
        out.append(i)
    return out


def _programs_of(tokenizer: MusicTokenizer, ids: Sequence[int]) -> set[int]:
    t = tokenizer.token_table
    return {int(t.program_set[i]) for i in ids if t.kind[i] == KIND_INDEX["Program"]}


def check_composition_setup(model: Any, tokenizer: MusicTokenizer) -> dict[str, int]:
    """The infill ids, after checking that the tokenizer and the model can compose."""
    if tokenizer.tokenization != "REMI":
        raise ValueError(f"infilling and accompaniment work bar by bar over REMI tokens; this tokenizer is "
                         f"{tokenizer.tokenization}")
    if tokenizer.miditok.is_trained:
        raise ValueError("infilling and accompaniment need a tokenizer without BPE")
    config = tokenizer.miditok.config
    if not config.use_programs or config.program_changes:
        raise ValueError("infilling and accompaniment need a Program token before each note (miditok use_programs "
                         "without program_changes, as the default configuration)")
    infill = tokenizer.infill_ids  # a ValueError for a tokenizer built without the composition tokens
    vocab = getattr(model.config, "vocab_size", None)
    if vocab is not None and vocab < len(tokenizer):
        raise ValueError(f"the model's vocabulary has {vocab} ids, the tokenizer's {len(tokenizer)}: the model was "
                         "made before the composition (infill and control) tokens and cannot write them")
    return infill


def _check_program(tokenizer: MusicTokenizer, program: Any, source: str) -> int:
    if isinstance(program, bool) or not isinstance(program, (int, np.integer)):
        raise MusicFileError(source, f"program {program!r} is not a General MIDI program number (0-127, 128 = drums)")
    program = int(program)
    if not 0 <= program <= DRUM_PROGRAM:
        raise MusicFileError(source, f"program {program} is outside 0-127 (128 = drums)")
    has_program = bool(np.any(tokenizer.token_table.program_set[tokenizer.kind_ids("Program")] == program))
    if program == DRUM_PROGRAM and not (has_program and len(tokenizer.kind_ids("PitchDrum"))):
        raise MusicFileError(source, "program 128 (drums): this tokenizer's vocabulary has no drum tokens")
    if not has_program:
        raise MusicFileError(source, f"program {program} is not in this tokenizer's vocabulary")
    return program


def _check_bars(bars: Any, count: int, source: str) -> tuple[int, int]:
    ok = isinstance(bars, (tuple, list)) and len(bars) == 2 and all(
        isinstance(b, (int, np.integer)) and not isinstance(b, bool) for b in bars)
    if not ok:
        raise MusicFileError(source, f"bars must be (start, end): bar numbers from 0, the end exclusive; got {bars!r}")
    start, end = (int(b) for b in bars)
    if start >= end:
        raise MusicFileError(source, f"bars {start}-{end} is an empty range (bars count from 0, the end is exclusive)")
    if start < 0 or end > count:
        raise MusicFileError(source, f"bars {start}-{end} requested, the piece has {count}")
    return start, end


def _single(sampling: dict[str, Any], what: str) -> None:
    if sampling.get("num_return_sequences", 1) not in (None, 1):
        raise ValueError(f"{what} writes one piece per call; call it again (another seed) for variations")
    if sampling.get("num_beams", 1) not in (None, 1):
        raise ValueError(f"{what} samples or decodes greedily; beam search (num_beams > 1) is not supported")
    sampling.pop("num_return_sequences", None)


def _window(prefix: list[list[int]], suffix: list[list[int]], room: int | None) -> tuple[list[int], list[int]]:
    """As many whole bars of context as fit in `room` tokens, nearest the gap first (all of them for None)."""
    if room is None:
        return [i for bar in prefix for i in bar], [i for bar in suffix for i in bar]
    before: list[list[int]] = []
    after: list[list[int]] = []
    used, p, s = 0, len(prefix) - 1, 0
    while p >= 0 or s < len(suffix):
        took = False
        if p >= 0 and used + len(prefix[p]) <= room:
            before.insert(0, prefix[p])
            used, p, took = used + len(prefix[p]), p - 1, True
        if s < len(suffix) and used + len(suffix[s]) <= room:
            after.append(suffix[s])
            used, s, took = used + len(suffix[s]), s + 1, True
        if not took:
            break
    return [i for bar in before for i in bar], [i for bar in after for i in bar]


def _restate_tempo(tokenizer: MusicTokenizer, context: list[int], window: list[int]) -> list[int]:
    """`window` (whole bars cut from a piece after `context`) with the tempo in force at its start stated."""
    tempo = _last_of_kind(tokenizer, context, "Tempo")
    if tempo is None or not window or _opening_tempo(tokenizer, _bars(tokenizer, window)[0]) is not None:
        return window
    first, *rest = _bars(tokenizer, window)
    return _with_tempo(tokenizer, first, tempo) + [i for bar in rest for i in bar]


def infill_piece(model: Any, tokenizer: MusicTokenizer, piece: Any, bars: tuple[int, int],
                 programs: Sequence[int] | None = None, controls: Mapping[str, Any] | None = None, *,
                 genre: str | int | None = None, max_new_tokens: int | None = None,
                 guidance_scale: float | None = None, **sampling: Any) -> ComposedPiece:
    """`infill_music` with the ids: regenerate bars [start, end) of `piece` (all of them, or only the notes of
    `programs` there), everything else kept as it is."""
    source = _source_name(piece)
    infill = check_composition_setup(model, tokenizer)
    control, tempo = _control_split(tokenizer, controls, source)
    if tempo is not None:
        raise MusicFileError(source, "controls: tempo is not a control when infilling (the piece keeps its own)")
    if programs is not None:
        if isinstance(programs, (int, np.integer)):
            programs = [programs]
        programs = [_check_program(tokenizer, p, source) for p in programs]
        if not programs:
            raise MusicFileError(source, "programs=[] names no program to regenerate (None regenerates them all)")
    _single(sampling, "infill_music")
    ids = tokenizer.encode_score(piece)
    pieces_bars = _bars(tokenizer, ids)
    start, end = _check_bars(bars, len(pieces_bars), source)
    if programs is not None:
        missing = sorted(set(programs) - _programs_of(tokenizer, ids))
        if missing:
            raise MusicFileError(source, f"the piece has no notes of program {', '.join(map(str, missing))} to "
                                         "regenerate (accompany adds a new part)")
    prefix = [i for bar in pieces_bars[:start] for i in bar]
    gap = [i for bar in pieces_bars[start:end] for i in bar]
    suffix = pieces_bars[end:]
    k = end - start
    t = tokenizer.token_table
    in_force = _last_of_kind(tokenizer, prefix, "TimeSig")
    default_positions = 4 * int(tokenizer.miditok.config.max_num_pos_per_beat)
    positions = int(t.bar_positions[in_force]) if in_force is not None else default_positions
    # the piece's timing and repeats (`with_default_controls`)
    head = with_default_controls(model, tokenizer, [tokenizer.bos_token_id] + control, controls, ids, genre)
    room = _context_room(model)
    if programs is None:
        # the missing bars keep their own Bar + TimeSig header (the grid of the piece stays), nothing else
        headers, lengths = [], []
        for bar in pieces_bars[start:end]:
            headers.append(bar[1:_header_length(tokenizer, bar)])
            if len(headers[-1]):
                positions = int(t.bar_positions[headers[-1][0]])
            lengths.append(positions)
        gap_tempo = _opening_tempo(tokenizer, pieces_bars[start]) or _last_of_kind(tokenizer, prefix, "Tempo")
        tempo_before_suffix = _last_of_kind(tokenizer, prefix + gap, "Tempo")
        if suffix and tempo_before_suffix is not None and tempo_before_suffix != gap_tempo \
                and _opening_tempo(tokenizer, suffix[0]) is None:  # the gap changed the tempo: the suffix says so
            suffix = [_with_tempo(tokenizer, suffix[0], tempo_before_suffix)] + suffix[1:]
        processor = InfillLogitsProcessor(tokenizer, headers, lengths, None, infill["end"])
        least = processor.min_new_tokens()
        budget = max_new_tokens or max(2 * len(gap), 16 * k, least)
    else:
        given = _drop_programs(tokenizer, gap, programs)
        least = len(given) + 1
        budget = least + (max_new_tokens or max(2 * (len(gap) - len(given)), 32 * k))
    if budget < least:
        raise MusicFileError(source, f"max_new_tokens={max_new_tokens} is too few for bars {start}-{end}: they need "
                                     f"{least} at least")
    spm = getattr(getattr(model, "config", None), "infill_order", "psm") == "spm"
    # BOS, controls, placeholders (spm: one per bar before the suffix, at most all of the prefix's), Infill_Start
    fixed = len(head) + (end if spm else k) + 1
    if room is not None:  # learned positions: the new tokens first (up to half the room), then context around
        budget = min(budget, max(least, (room - fixed) // 2))
        if fixed + budget > room:
            raise MusicFileError(source, f"bars {start}-{end} need {least} new tokens at least; with the prompt this "
                                         f"is more than the {room} positions of this model")
    if programs is None:
        processor.max_new_tokens = budget
    else:
        processor = InterleaveLogitsProcessor(tokenizer, given, programs, budget, infill["end"], positions)
    before, after = _window(pieces_bars[:start], suffix, None if room is None else room - fixed - budget - 2)
    before = _restate_tempo(tokenizer, prefix[: len(prefix) - len(before)], before)
    if spm:  # the model's layout (see data.fim_arrange): the suffix first, the prefix right before the gap
        context = [infill["bar"]] * (len(_bar_starts(tokenizer, before)) + k) + after + [infill["start"]] + before
    else:
        context = before + [infill["bar"]] * k + after + [infill["start"]]
    prompt = head + context
    row = _sample(model, tokenizer, prompt, uncond=[tokenizer.bos_token_id] + context, genre=genre,
                  processors=[processor], max_new_tokens=budget, eos_token_id=infill["end"],
                  guidance_scale=guidance_scale, **sampling)[0]
    written = row[len(prompt):]
    if infill["end"] not in written:
        raise RuntimeError(f"{source}: the infilled bars did not end within {budget} tokens")
    written = written[: written.index(infill["end"])]
    if programs is None and gap_tempo is not None and gap_tempo != _last_of_kind(tokenizer, prefix, "Tempo"):
        first, *rest = _bars(tokenizer, written)
        written = _with_tempo(tokenizer, first, gap_tempo) + [i for bar in rest for i in bar]
    if len(_bar_starts(tokenizer, written)) != k or (programs is not None and
                                                    _drop_programs(tokenizer, written, programs) != given):
        raise RuntimeError(f"{source}: the infilled bars broke their constraints (a bug)")
    out = prefix + written + [i for bar in suffix for i in bar]
    return ComposedPiece(ids=out, score=tokenizer.decode_midi(out), span=(len(prefix), len(prefix) + len(written)),
                         prompt=prompt)


def infill_music(model: Any, tokenizer: MusicTokenizer, piece: Any, bars: tuple[int, int],
                 programs: Sequence[int] | None = None, controls: Mapping[str, Any] | None = None,
                 **sampling: Any) -> symusic.Score:
    """Regenerate bars [start, end) of `piece` (a path, bytes or Score; bars count from 0, the end exclusive).

    programs=None: the bars are written anew by fill-in-the-middle (the model sees the bars before and after
    them): exactly end - start bars in the gap's own time signatures, with notes, and no tempo or time-signature
    change of their own. programs=[...]: only those programs' notes in the range are written anew; every other note
    there stays (interleaved decoding, see `accompany`). Every bar outside the range comes back note for note as
    the tokenizer reads the input. `controls` as in `generate_music` (no tempo: the piece keeps its own);
    sampling keywords: genre, max_new_tokens (the new tokens at most: for programs, those of the new notes),
    guidance_scale, temperature, top_k, top_p, do_sample, seed.
    """
    return infill_piece(model, tokenizer, piece, bars, programs, controls, **sampling).score


def accompany_piece(model: Any, tokenizer: MusicTokenizer, piece: Any, program: int,
                    controls: Mapping[str, Any] | None = None, *, genre: str | int | None = None,
                    max_new_tokens: int | None = None, guidance_scale: float | None = None,
                    **sampling: Any) -> ComposedPiece:
    """`accompany` with the ids."""
    source = _source_name(piece)
    check_composition_setup(model, tokenizer)
    control, tempo = _control_split(tokenizer, controls, source)
    if tempo is not None:
        raise MusicFileError(source, "controls: tempo is not a control when accompanying (the piece keeps its own)")
    program = _check_program(tokenizer, program, source)
    _single(sampling, "accompany")
    given = _drop_programs(tokenizer, tokenizer.encode_score(piece), [program])
    # the piece's timing and repeats (`with_default_controls`)
    head = with_default_controls(model, tokenizer, [tokenizer.bos_token_id] + control, controls, given, genre)
    extra = max_new_tokens or max(64, len(given))  # tokens of the new part at most
    room = _context_room(model)
    # one pass where it fits, else passes over groups of bars, each prompted with the bars written before it
    groups, group = [], []
    limit = None if room is None else (room - len(head)) * 3 // 4
    for bar in _bars(tokenizer, given):
        cost = len(bar) + math.ceil(extra * len(bar) / max(len(given), 1)) + 1
        if limit is not None and cost > limit:
            raise MusicFileError(source, f"a bar of {len(bar)} tokens (with room for its new notes) does not fit the "
                                         f"{room} positions of this model")
        if group and limit is not None and sum(map(len, group)) + cost + \
                math.ceil(extra * sum(map(len, group)) / max(len(given), 1)) > limit:
            groups.append(group)
            group = []
        group.append(bar)
    groups.append(group)
    out: list[int] = []
    prompt = head
    for group in groups:
        part = [i for bar in group for i in bar]
        budget = len(part) + 1 + math.ceil(extra * len(part) / max(len(given), 1))
        context = out
        if room is not None:
            context = _window(_bars(tokenizer, out), [], room - len(head) - budget - 2)[0]  # 2: a restated tempo
            context = _restate_tempo(tokenizer, out[: len(out) - len(context)], context)
        prompt = head + context
        signature = _last_of_kind(tokenizer, out, "TimeSig")
        processor = InterleaveLogitsProcessor(tokenizer, part, [program], budget, tokenizer.eos_token_id,
                                              None if signature is None else int(tokenizer.token_table.bar_positions[
                                                  signature]))
        row = _sample(model, tokenizer, prompt, uncond=[tokenizer.bos_token_id] + context, genre=genre,
                      processors=[processor], max_new_tokens=budget, guidance_scale=guidance_scale, **sampling)[0]
        written = row[len(prompt):]
        if tokenizer.eos_token_id not in written:
            raise RuntimeError(f"{source}: the accompaniment did not end within {budget} tokens")
        out += written[: written.index(tokenizer.eos_token_id)]
    if _drop_programs(tokenizer, out, [program]) != given:
        raise RuntimeError(f"{source}: the accompaniment changed the given notes (a bug)")
    return ComposedPiece(ids=out, score=tokenizer.decode_midi(out), span=(0, len(out)), prompt=prompt)


def accompany(model: Any, tokenizer: MusicTokenizer, piece: Any, program: int,
              controls: Mapping[str, Any] | None = None, **sampling: Any) -> symusic.Score:
    """A new part for `program` (0-127, 128 = drums) that fits `piece` (a path, bytes or Score) from its first bar
    to its last; every given note is kept exactly (as the tokenizer reads it), notes of `program` already there
    are replaced.

    Interleaved decoding: the piece's tokens are forced in time order, and wherever a note may start the model may
    insert notes of `program` at the current position or open a new position before the next given event (see
    the module docstring: any causal model can do this, with no look-ahead). Longer pieces than a model with
    learned positions can hold go in groups of bars, each prompted with the bars written before it. `controls` as
    in `generate_music` (no tempo); sampling keywords: genre, max_new_tokens (tokens of the new part at most;
    default as many as the piece's), guidance_scale, temperature, top_k, top_p, do_sample, seed.
    """
    return accompany_piece(model, tokenizer, piece, program, controls, **sampling).score


__all__ = ["InfillLogitsProcessor", "InterleaveLogitsProcessor", "ComposedPiece", "check_composition_setup",
           "infill_music", "infill_piece", "accompany", "accompany_piece"]
