"""Composition with control: controls and classifier-free guidance, bar infilling, accompaniment.

The guarantees come from decoding, so they must hold for any model: every test runs a tiny UNTRAINED model (its
choices among the allowed tokens are close to random, the hardest case for the constraints) on real corpus pieces.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import symusic
import torch

from music_hf import MusicConfig, MusicForCausalLM, MusicTokenizer, accompany, infill_music
from music_hf.cli import main as cli_main
from music_hf.cli import parse_controls
from music_hf.composition import accompany_piece, infill_piece
from music_hf.generation import MusicGrammarLogitsProcessor, composition_mask, cut_bars, generate_music, prompt_ids
from music_hf.tokenization_music import KIND_INDEX, EmptyMusicError, MusicFileError, default_miditok_config

EXCERPT_BARS = 8
STRINGS = (73, 40, 41, 42)  # flute, violin, viola, cello: a chorale's four parts as four instruments


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tok() -> MusicTokenizer:
    return MusicTokenizer()


def tiny_model(tok: MusicTokenizer, **overrides) -> MusicForCausalLM:
    torch.manual_seed(0)
    config = MusicConfig.from_tokenizer(tok, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=64, **overrides)
    return MusicForCausalLM(config).eval()


@pytest.fixture(scope="module")
def model(tok: MusicTokenizer) -> MusicForCausalLM:
    return tiny_model(tok)


@pytest.fixture(scope="module")
def excerpts(tok: MusicTokenizer, real_midi_paths: list[Path]) -> list[symusic.Score]:
    """The first bars of each real piece, as a Score (keeps the tests fast; the pieces stay real music)."""
    return [tok.decode_midi(cut_bars(tok, tok.encode_score(p), EXCERPT_BARS)) for p in real_midi_paths]


@pytest.fixture(scope="module")
def quartet(tok: MusicTokenizer, real_midi_paths: list[Path]) -> symusic.Score:
    """A chorale excerpt with its four parts on four instruments."""
    score = symusic.Score.from_file(str(real_midi_paths[0]))
    for track, program in zip(score.tracks, STRINGS):
        track.program = program
    return tok.decode_midi(cut_bars(tok, tok.encode_score(score), EXCERPT_BARS))


def note_set(score: symusic.Score) -> Counter:
    return Counter((t.program, t.is_drum, n.time, n.duration, n.pitch, n.velocity)
                   for t in score.tracks for n in t.notes)


def bar_notes(tok: MusicTokenizer, ids: list[int]) -> list[Counter]:
    """The decoded notes that start in each bar (absolute ticks): notes of the first b + 1 bars less the first b."""
    bars = sum(tok.token_table.kind[i] == KIND_INDEX["Bar"] for i in ids)
    upto = [note_set(tok.decode_midi(cut_bars(tok, ids, b))) for b in range(bars + 1)]
    return [upto[b + 1] - upto[b] for b in range(bars)]


def kinds(tok: MusicTokenizer, ids: list[int], kind: str) -> list[int]:
    return [i for i in ids if tok.token_table.kind[i] == KIND_INDEX[kind]]


# ----- infilling ---------------------------------------------------------------------------------------------
def test_infill_keeps_every_bar_outside_the_range(tok, model, excerpts):
    """Several pieces, seeds and ranges (first bar, last bar, middle, whole piece): the output has the input's bars,
    note for note outside the range (as the tokenizer reads the input), every bar of the range has new notes, the
    ids are grammatical, and no tempo or time signature is the model's own."""
    cases = 0
    for n, score in enumerate(excerpts):
        original = tok.encode_score(score)
        before = bar_notes(tok, original)
        bars = len(before)
        for seed, (start, end) in enumerate([(0, 2), (bars - 2, bars), (2, 5), (0, bars)][: 2 + n % 3]):
            piece = infill_piece(model, tok, score, (start, end), seed=seed)
            assert tok.grammar_errors(piece.ids) == 0
            after = bar_notes(tok, piece.ids)
            assert len(after) == bars, (n, start, end)
            for b in range(bars):
                if start <= b < end:
                    assert sum(after[b].values()) > 0, f"bar {b} of piece {n} left empty"
                else:
                    assert after[b] == before[b], f"bar {b} of piece {n} changed (infill {start}-{end})"
            # the gap's own time signatures, the suffix keeps its timing, the piece its tempo map
            span = piece.ids[piece.span[0]: piece.span[1]]
            gap = cut_bars(tok, original, end)[len(cut_bars(tok, original, start)):]
            assert kinds(tok, span, "TimeSig") == kinds(tok, gap, "TimeSig")
            assert len(kinds(tok, span, "Tempo")) <= 1
            decoded = tok.decode_midi(original)
            assert [(t.time, t.numerator, t.denominator) for t in piece.score.time_signatures] == \
                [(t.time, t.numerator, t.denominator) for t in decoded.time_signatures]
            assert [(t.time, round(t.qpm, 2)) for t in piece.score.tempos] == \
                [(t.time, round(t.qpm, 2)) for t in decoded.tempos]
            cases += 1
    assert cases >= 15


def test_infill_music_returns_the_score_and_reads_paths(tok, model, real_midi_paths):
    path = real_midi_paths[4]  # a folk tune, whole
    original = tok.encode_score(path)
    score = infill_music(model, tok, path, bars=(1, 3), seed=3, top_k=20)
    assert isinstance(score, symusic.Score)
    ids = tok.encode_score(score)
    assert len(bar_notes(tok, ids)) == len(bar_notes(tok, original))
    assert note_set(tok.decode_midi(cut_bars(tok, original, 1))) == note_set(tok.decode_midi(cut_bars(tok, ids, 1)))


def test_infill_programs_keeps_the_other_programs(tok, model, quartet):
    """Regenerating one instrument in bars 2-5 keeps the three others there, and every note outside the range."""
    original = tok.encode_score(quartet)
    before = bar_notes(tok, original)
    for seed, programs in enumerate(([40], [73, 42])):
        piece = infill_piece(model, tok, quartet, (2, 5), programs=programs, seed=seed)
        assert tok.grammar_errors(piece.ids) == 0
        after = bar_notes(tok, piece.ids)
        assert len(after) == len(before)
        for b, (old, new) in enumerate(zip(before, after)):
            if 2 <= b < 5:
                keep = Counter({n: c for n, c in old.items() if n[0] not in programs})
                assert Counter({n: c for n, c in new.items() if n[0] not in programs}) == keep
            else:
                assert new == old
        new_notes = sum(after[2:5], Counter()) - sum(before[2:5], Counter())
        assert new_notes and all(n[0] in programs for n in new_notes)


def test_infill_windows_a_long_piece_into_a_short_context(tok, real_midi_paths):
    """A model with 256 learned positions infills the middle of a whole chorale (hundreds of tokens longer)."""
    short = tiny_model(tok, max_position_embeddings=256)
    original = tok.encode_score(real_midi_paths[0])
    assert len(original) > 2 * 256
    before = bar_notes(tok, original)
    piece = infill_piece(short, tok, real_midi_paths[0], (4, 5), seed=0)
    assert len(piece.prompt) + (piece.span[1] - piece.span[0]) < 256
    after = bar_notes(tok, piece.ids)
    assert [a for b, a in enumerate(after) if b != 4] == [a for b, a in enumerate(before) if b != 4]


@pytest.mark.parametrize("context", [1024, 256])
def test_infill_in_the_spm_layout_of_a_model_trained_with_it(tok, excerpts, real_midi_paths, context):
    """A model whose config says infill_order "spm" is prompted in that layout (placeholders for the bars before
    the suffix, suffix, Infill_Start, prefix: the gap continues the prefix), the rest of the piece kept note for
    note, with all programs or some, in a long context or windowed into a short one."""
    spm = tiny_model(tok, infill_order="spm", max_position_embeddings=context)
    infill = tok.infill_ids
    pieces = [(excerpts[1], (2, 4), None), (excerpts[3], (0, 1), None), (real_midi_paths[0], (4, 6), None),
              (excerpts[0], (1, 3), [0])]
    for seed, (score, (start, end), programs) in enumerate(pieces):
        original = tok.encode_score(score)
        piece = infill_piece(spm, tok, score, (start, end), programs=programs, seed=seed)
        prompt = piece.prompt
        at = prompt.index(infill["start"])
        first = prompt.index(infill["bar"])
        placeholders = prompt[first:at].index(next(t for t in prompt[first:at] if t != infill["bar"])) \
            if any(t != infill["bar"] for t in prompt[first:at]) else at - first
        prefix = prompt[at + 1:]
        own = {"timing": "score", "repetition": tok.measure_controls(original)["repetition"]}
        assert prompt[:first] == [tok.bos_token_id] + tok.control_ids(own)  # the piece's timing and repeats
        # the prefix is the piece's bars right before the gap (a windowed one restates the tempo in force)
        no_tempo = set(tok.kind_ids("Tempo").tolist())
        plain = [t for t in prefix if t not in no_tempo]
        before_gap = [t for t in piece.ids[:piece.span[0]] if t not in no_tempo]
        assert plain == before_gap[len(before_gap) - len(plain):] and (start == 0) == (not plain)
        assert placeholders == len(kinds(tok, prefix, "Bar")) + (end - start)
        assert len(prompt) + (piece.span[1] - piece.span[0]) < context
        before, after = bar_notes(tok, original), bar_notes(tok, piece.ids)
        assert len(after) == len(before) and tok.grammar_errors(piece.ids) == 0
        assert [a for b, a in enumerate(after) if not start <= b < end] == \
            [a for b, a in enumerate(before) if not start <= b < end]


# ----- accompaniment -----------------------------------------------------------------------------------------
def test_accompany_keeps_every_given_note(tok, model, excerpts, quartet):
    """Every given note comes back exactly; every new note is in the target program (an instrument or drums)."""
    for n, (score, program) in enumerate(zip([*excerpts, quartet], [40, 128, 0, 33, 24, 71, 128, 0])):
        given = note_set(tok.decode_midi(tok.encode_score(score)))
        given_kept = Counter({k: c for k, c in given.items() if k[0] != program or k[1] != (program == 128)})
        piece = accompany_piece(model, tok, score, program, seed=n)
        assert tok.grammar_errors(piece.ids) == 0
        notes = note_set(piece.score)
        new = notes - given_kept
        assert notes - new == given_kept, f"piece {n}: a given note changed"
        assert new and all(k[1] if program == 128 else (k[0] == program and not k[1]) for k in new), n
        assert len(bar_notes(tok, piece.ids)) == len(bar_notes(tok, tok.encode_score(score)))


def test_accompany_in_groups_of_bars_for_a_short_context(tok, real_midi_paths):
    short = tiny_model(tok, max_position_embeddings=256)
    path = real_midi_paths[0]
    given = note_set(tok.decode_midi(tok.encode_score(path)))
    score = accompany(short, tok, path, 40, seed=1)
    notes = note_set(score)
    new = notes - given
    assert notes - new == given and new and all(k[0] == 40 for k in new)


# ----- controls and guidance ---------------------------------------------------------------------------------
def test_controls_go_after_bos_and_guidance_runs(tok, model):
    controls = {"key": "D minor", "density": 8, "polyphony": 2, "pitch_range": (48, 84)}
    control = tok.control_ids(controls)
    assert prompt_ids(tok, controls=controls, time_signature="3/4") == \
        [tok.bos_token_id] + control + tok.opening_ids("3/4")
    assert prompt_ids(tok, controls={"tempo": 100}) == [tok.bos_token_id] + tok.opening_ids(tempo=100)
    plain = generate_music(model, tok, max_new_tokens=48, seed=0)[0]
    steered = generate_music(model, tok, max_new_tokens=48, seed=0, controls=controls)[0]
    guided, guided_too = generate_music(model, tok, max_new_tokens=48, seed=0, controls=controls, guidance_scale=3.0,
                                        num_return_sequences=2)
    assert steered.ids[: 1 + len(control)] == [tok.bos_token_id] + control
    with torch.no_grad():  # the controls change what the model reads (an untrained model may still sample alike)
        after_plain, after_steered = (model(torch.tensor([p.ids[:p.prompt_length]])).logits[0, -1]
                                      for p in (plain, steered))
    assert not torch.allclose(after_plain, after_steered)
    assert guided.ids[: 1 + len(control)] == steered.ids[: 1 + len(control)] and guided.ids != steered.ids
    composition = set(composition_mask(tok).nonzero()[0].tolist())
    for piece in (plain, steered, guided, guided_too):
        assert tok.grammar_errors(piece.ids) == 0 and piece.score.note_num() > 0
        assert not composition & set(piece.ids[piece.prompt_length:])


def test_guidance_through_generate(tok, model):
    """transformers' own `generate(guidance_scale=..., negative_prompt_ids=...)` with the grammar processor: the
    unconditional branch reads the prompt without controls (and genre 0); control and infill ids never come."""
    conditional = prompt_ids(tok, controls={"key": "G major", "density": 4}, time_signature="4/4")
    unconditional = prompt_ids(tok, time_signature="4/4")
    torch.manual_seed(0)
    out = model.generate(torch.tensor([conditional] * 2), guidance_scale=2.0,
                         negative_prompt_ids=torch.tensor([unconditional] * 2), max_new_tokens=40, do_sample=True,
                         logits_processor=[MusicGrammarLogitsProcessor(tok)], pad_token_id=tok.pad_token_id)
    composition = composition_mask(tok)
    for row in out.tolist():
        assert tok.grammar_errors(row) == 0 and not composition[row[len(conditional):]].any()
    processor = MusicGrammarLogitsProcessor(tok)
    after_controls = processor.allowed_mask(torch.tensor([conditional[:3]]))[0]
    assert after_controls.nonzero().flatten().tolist() == [tok.token_id("Bar")]  # a piece starts after controls


def test_composition_takes_controls_and_guidance(tok, model, excerpts):
    controls = {"key": "d", "pitch_range": (60, 84)}
    piece = infill_piece(model, tok, excerpts[0], (2, 4), controls=controls, guidance_scale=2.0, seed=0)
    control = tok.control_ids(controls)
    assert len(control) == 3 and piece.prompt[: 4] == [tok.bos_token_id] + control
    assert tok.grammar_errors(piece.ids) == 0 and len(bar_notes(tok, piece.ids)) == EXCERPT_BARS
    given = note_set(tok.decode_midi(tok.encode_score(excerpts[1])))
    score = accompany(model, tok, excerpts[1], 40, controls={"density": 12}, guidance_scale=1.5, seed=0)
    assert note_set(score) - given and not given - note_set(score)


# ----- bad input ---------------------------------------------------------------------------------------------
def test_bad_input_is_a_clear_error(tok, model, excerpts, real_midi_paths, tmp_path):
    path = real_midi_paths[4]
    bars = len(bar_notes(tok, tok.encode_score(path)))
    with pytest.raises(MusicFileError, match=rf"^{path}: bars {bars + 2}-{bars + 4} requested, the piece has {bars}$"):
        infill_music(model, tok, path, bars=(bars + 2, bars + 4))
    with pytest.raises(MusicFileError, match=r"bars 3-3 is an empty range"):
        infill_music(model, tok, path, bars=(3, 3))
    with pytest.raises(MusicFileError, match=r"bars -1-2 requested"):
        infill_music(model, tok, path, bars=(-1, 2))
    with pytest.raises(ValueError, match=r"bars must be \(start, end\)"):
        infill_music(model, tok, path, bars=3)
    for program in (200, -1):
        with pytest.raises(MusicFileError, match=rf"^{path}: program {program} is outside 0-127"):
            accompany(model, tok, path, program)
    with pytest.raises(MusicFileError, match=r"no notes of program 128"):
        infill_music(model, tok, path, bars=(0, 1), programs=[128])
    no_drums = MusicTokenizer(miditok_config={"programs": list(range(128))})
    with pytest.raises(MusicFileError, match=r"program 128 \(drums\): this tokenizer's vocabulary has no drum"):
        accompany(model, no_drums, path, 128)
    empty = tmp_path / "empty.mid"
    symusic.Score(480).dump_midi(str(empty))
    with pytest.raises(EmptyMusicError, match=rf"^{empty}: no notes"):
        accompany(model, tok, empty, 40)
    with pytest.raises(EmptyMusicError, match=r"^<Score\w*>: no notes"):
        infill_music(model, tok, symusic.Score(480), bars=(0, 1))
    with pytest.raises(MusicFileError, match=rf"^{path}: unknown control 'mood'"):
        infill_music(model, tok, path, bars=(0, 1), controls={"mood": "sad"})
    with pytest.raises(MusicFileError, match=r"^<Score\w*>: key must be a tonic"):
        accompany(model, tok, excerpts[0], 40, controls={"key": "H major"})
    with pytest.raises(MusicFileError, match=r"tempo is not a control when infilling"):
        infill_music(model, tok, path, bars=(0, 1), controls={"tempo": 90})
    with pytest.raises(ValueError, match=r"unknown control 'mood'"):
        generate_music(model, tok, controls={"mood": "sad"})
    with pytest.raises(ValueError, match=r"guidance_scale needs something to guide toward"):
        generate_music(model, tok, guidance_scale=2.0, max_new_tokens=4, controls={"timing": None,
                                                                                   "repetition": None})
    with pytest.raises(ValueError, match=r"REMI tokens; this tokenizer is TSD"):
        infill_music(model, MusicTokenizer(tokenization="TSD"), path, bars=(0, 1))
    old = MusicTokenizer(miditok_config={"special_tokens": ["PAD", "BOS", "EOS", "MASK"]})
    with pytest.raises(ValueError, match=r"without the composition tokens"):
        accompany(tiny_model(old), old, path, 40)
    with pytest.raises(ValueError, match=r"the model's vocabulary has 510 ids, the tokenizer's 578"):
        accompany(tiny_model(old), tok, path, 40)
    with pytest.raises(ValueError, match=r"writes one piece per call"):
        accompany(model, tok, path, 40, num_return_sequences=2)
    assert "Infill_Bar" in default_miditok_config().special_tokens  # (the vocabulary these tests run on)


# ----- command line ------------------------------------------------------------------------------------------
def test_cli_infill_and_accompany(tok, model, real_midi_paths, tmp_path, capsys):
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    path = str(real_midi_paths[6])
    common = ["--model", str(tmp_path / "model"), "--prompt", path, "--out", str(tmp_path / "out")]
    assert cli_main(["generate", *common, "--infill_bars", "1", "3", "--controls", "key=D minor", "density=8",
                     "--guidance_scale", "1.5"]) == 0
    assert cli_main(["generate", *common, "--accompany_program", "40", "--num_return_sequences", "2"]) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["accompany_40_any_0.mid", "accompany_40_any_1.mid", "infill_1-3_any_0.mid"]
    assert capsys.readouterr().out.count('"midi"') == 3
    assert parse_controls(["key=D minor", "pitch_range=48-84", "tempo=96"]) == \
        {"key": "D minor", "pitch_range": (48, 84), "tempo": 96.0}
    with pytest.raises(SystemExit):
        cli_main(["generate", *common, "--infill_bars", "90", "99"])
    assert "bars 90-99 requested" in capsys.readouterr().err
