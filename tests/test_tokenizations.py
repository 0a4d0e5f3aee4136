"""Every single-stream miditok tokenization (REMI, TSD, MIDILike, Structured), plain and with BPE, end to end:
real pieces round trip as miditok alone gives them, the per-id table matches a slow reading of the token strings,
a tiny model runs, and grammar-constrained generation decodes to notes with no grammar error."""

from __future__ import annotations

from collections import Counter
from fractions import Fraction

import miditok
import numpy as np
import pytest
import torch
from symusic import Score

from music_hf import MusicConfig, MusicForCausalLM, MusicTokenizer
from music_hf.data import AugmentationConfig, TokenAugmenter
from music_hf.generation import MusicGrammarLogitsProcessor, finish_sequence, generate_music
from music_hf.tokenization_music import TOKEN_KINDS, TOKENIZATIONS, default_miditok_config

SCHEMES = TOKENIZATIONS  # REMI, TSD, MIDILike, Structured
BPE_EXTRA = 150  # learned ids on top of the base vocabulary: small, so training takes milliseconds
CASES = [(scheme, bpe) for scheme in SCHEMES for bpe in (False, True)]


def case_id(case: tuple[str, bool]) -> str:
    return case[0] + ("-bpe" if case[1] else "")


@pytest.fixture(scope="module", params=CASES, ids=case_id)
def case(request, real_midi_paths) -> tuple[str, bool, MusicTokenizer]:
    scheme, bpe = request.param
    tok = MusicTokenizer(tokenization=scheme)
    if bpe:
        tok.train_bpe(vocab_size=len(tok) + BPE_EXTRA, files=real_midi_paths)
        assert tok.miditok.is_trained and len(tok) == len(tok.token_table)
    return scheme, bpe, tok


def notes_of(score: Score) -> Counter:
    """(pitch, program (-1 drums), onset, duration) of every note, times in exact quarter notes."""
    q = score.tpq
    return Counter((n.pitch, -1 if t.is_drum else t.program, Fraction(n.time, q), Fraction(n.duration, q))
                   for t in score.tracks for n in t.notes)


# ----- the slow reference: the token strings, read one by one ---------------------------------------------------
def number(value: str) -> float:
    if value.count(".") == 2:  # Duration / TimeShift / Rest: beats.steps.resolution
        beats, steps, res = (int(v) for v in value.split("."))
        return beats + steps / res
    return float(value)


def reference_facts(base: list[str]) -> dict[str, int]:
    """pitch (last Pitch/NoteOn/NoteOff), notes started, bars, position set (Bar: 0) of one id's base tokens."""
    facts = {"pitch": -1, "note_count": 0, "bar_count": 0, "position_set": -1}
    for token in base:
        kind, value = token.split("_")
        if kind in ("Pitch", "NoteOn", "NoteOff"):
            facts["pitch"] = int(value)
        facts["note_count"] += kind in ("Pitch", "PitchDrum", "NoteOn", "DrumOn")
        if kind == "Bar":
            facts["bar_count"] += 1
            facts["position_set"] = 0
        elif kind == "Position":
            facts["position_set"] = int(value)
    return facts


def reference_bar_positions(tok: MusicTokenizer, ids: list[int]) -> list[int]:
    """Position in the bar after each id of a piece, walking the base token strings."""
    out, position = [], -1
    for i in ids:
        for base in tok.base_tokens(i):
            kind, value = base.split("_")
            position = 0 if kind == "Bar" else int(value) if kind == "Position" else position
        out.append(position)
    return out


# ----- the tests ------------------------------------------------------------------------------------------------
def test_real_pieces_round_trip_as_miditok_alone_gives_them(case, real_midi_paths):
    scheme, _, tok = case
    alone = getattr(miditok, scheme)(default_miditok_config())
    for path in real_midi_paths:
        ids = tok(path, add_special_tokens=False)["input_ids"]
        expected = notes_of(alone.decode(alone.encode(Score(str(path)))))
        decoded = tok.decode_midi(ids)
        assert decoded.note_num() > 0 and notes_of(decoded) == expected, path.name
        assert tok.grammar_errors(ids) == 0.0
        # the table counts every note a piece holds, BPE ids included
        assert int(tok.token_table.note_count[ids].sum()) == decoded.note_num()


COMPOSITION_KINDS = ("Infill", "Key", "Density", "Polyphony", "PitchLow", "PitchHigh", "Timing", "Repetition")


def test_the_table_matches_the_token_strings(case):
    scheme, bpe, tok = case
    table = tok.token_table
    attrs = tok.music_attributes()
    assert {len(v) for v in attrs.values()} == {len(tok)}
    for i in range(tok.vocab_size):
        base = tok.base_tokens(i)
        if base and base[0].split("_")[0] in COMPOSITION_KINDS:
            continue  # infill and control tokens: their rows are tested in test_tokenizer / test_composition_data
        expected = reference_facts(base)
        for name, value in expected.items():
            assert attrs[name][i] == value, (tok.convert_ids_to_tokens(i), name)
        if base:
            kind, value = base[0].split("_")
            assert TOKEN_KINDS[table.kind[i]] == ("special" if value == "None" and kind in ("PAD", "BOS", "EOS", "MASK")
                                                  else kind)
            if len(base) == 1 and kind in ("Pitch", "NoteOn", "NoteOff", "Velocity", "Position", "Tempo",
                                           "Duration", "TimeShift", "Rest"):
                assert table.value[i] == pytest.approx(number(value))
    kinds = {TOKEN_KINDS[k] for k in table.kind}
    pitched = {"REMI": "Pitch", "TSD": "Pitch", "Structured": "Pitch", "MIDILike": "NoteOn"}[scheme]
    assert pitched in kinds and max(attrs["pitch"]) > 0 and max(attrs["note_count"]) >= (2 if bpe else 1)
    if scheme == "REMI":
        assert tok.max_position_in_bar == 96 and "Position" in kinds
    else:  # no Position tokens: the table sets no bar position (time moves by TimeShift)
        assert tok.max_position_in_bar == 0 and "TimeShift" in kinds


def test_bar_positions_along_real_pieces(case, real_midi_paths):
    scheme, _, tok = case
    from music_hf.modeling_music import carry_forward
    for path in real_midi_paths[:3]:
        ids = tok(path, add_special_tokens=False)["input_ids"]
        carried = carry_forward(torch.as_tensor(tok.token_table.position_set[ids])[None])[0].tolist()
        assert carried == reference_bar_positions(tok, ids)
        assert (max(carried) > 0) == (scheme == "REMI")


def test_tiny_model_runs_and_constrained_generation_decodes(case, real_midi_paths):
    scheme, bpe, tok = case
    torch.manual_seed(0)
    config = MusicConfig.from_tokenizer(tok, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=64)
    model = MusicForCausalLM(config).eval()
    ids = torch.tensor([tok(real_midi_paths[0])["input_ids"][:128]])
    with torch.no_grad():
        out = model(ids, labels=ids)
    assert out.logits.shape == (1, ids.shape[1], len(tok)) and torch.isfinite(out.loss)
    piece = generate_music(model, tok, max_new_tokens=64, seed=0)[0]
    body = piece.ids[1:]
    assert piece.score.note_num() > 0, tok.convert_ids_to_tokens(body)
    assert tok.grammar_errors(body) == 0.0, tok.convert_ids_to_tokens(body)


@pytest.mark.parametrize("name", ["BEAT", "CPWord", "MMM", "NoSuchScheme"])
def test_other_tokenizations_are_refused_by_name(name):
    with pytest.raises(ValueError, match=f"{name}.*supports REMI, TSD, MIDILike, Structured"):
        MusicTokenizer(tokenization=name)


# ----- MIDILike specifics: NoteOff closes a sounding note ------------------------------------------------------
@pytest.fixture(scope="module")
def midilike() -> MusicTokenizer:
    return MusicTokenizer(tokenization="MIDILike")


def test_note_off_is_allowed_only_for_a_sounding_note(midilike):
    tok = midilike
    processor = MusicGrammarLogitsProcessor(tok)
    prefix = ["BOS_None", "Program_0", "NoteOn_60", "Velocity_95", "Program_0", "NoteOn_64", "Velocity_95",
              "TimeShift_1.0.8"]
    mask = processor.allowed_mask(torch.tensor([tok.convert_tokens_to_ids(prefix)]))[0]
    offs = {t for t in tok.get_vocab() if t.startswith(("NoteOff_", "DrumOff_")) and mask[tok.convert_tokens_to_ids(t)]}
    assert offs == {"NoteOff_60", "NoteOff_64"}  # program 0 in force: no DrumOff, no other pitch
    closed = prefix + ["Program_0", "NoteOff_60"]
    mask = processor.allowed_mask(torch.tensor([tok.convert_tokens_to_ids(closed)]))[0]
    assert not mask[tok.convert_tokens_to_ids("NoteOff_60")] and mask[tok.convert_tokens_to_ids("NoteOff_64")]


def test_finish_sequence_ends_sounding_notes(midilike):
    tok = midilike
    tokens = ["Program_0", "NoteOn_60", "Velocity_95", "TimeShift_1.0.8", "Program_-1", "DrumOn_36",
              "Velocity_95", "Program_0", "NoteOn_67"]
    ids = tok.convert_tokens_to_ids(tokens)
    assert tok.decode_midi(ids).note_num() == 0 and tok.grammar_errors(ids) > 0  # miditok drops open notes
    done = finish_sequence(tok, ids)
    assert done[:7] == ids[:7]  # the unfinished NoteOn_67 is dropped, the rest kept, then closed
    assert tok.grammar_errors(done) == 0.0
    assert sorted((n.pitch, t.is_drum) for t in tok.decode_midi(done).tracks for n in t.notes) == [
        (36, True), (60, False)]


def test_transposition_moves_note_on_and_note_off_together(midilike, real_midi_paths):
    tok = midilike
    ids = tok(real_midi_paths[4], add_special_tokens=False)["input_ids"]
    augmenter = TokenAugmenter(tok, AugmentationConfig(pitch_shift=3))
    before = notes_of(tok.decode_midi(ids))
    shifts = set()
    for seed in range(4):
        out = augmenter(ids, np.random.default_rng(seed))
        assert tok.grammar_errors(out) == 0.0
        after = notes_of(tok.decode_midi(out))
        shift = min(p for p, *_ in after) - min(p for p, *_ in before)
        assert after == Counter({(p + shift, *rest): n for (p, *rest), n in before.items()})
        shifts.add(shift)
    assert len(shifts) > 1
