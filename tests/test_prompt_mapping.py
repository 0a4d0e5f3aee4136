"""Prompt mapping (`music_hf.prompt_mapping`) and the real-world evaluation (`music_hf.real_world`) on real files:
a miditok test MIDI with drums (from `.cache/eval-midi`, fetched by scripts/fetch_eval_midi.py; skipped when
absent) and a corpus chorale with one part moved to an instrument the model never learned. The model is a tiny
random one taught, through its tied embeddings, to play piano and choir only, at velocities 63-79 and tempos near
115-121 BPM, as a model trained on the corpus does."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import symusic
import torch

from music_hf import MusicConfig, MusicForCausalLM, MusicTokenizer
from music_hf.generation import generate_music
from music_hf.prompt_mapping import (ModelKnowledge, gm_family, learned_programs, map_prompt, model_knowledge,
                                     nearest_program)
from music_hf.real_world import real_world_files, real_world_quality, real_world_section, scoring_windows
from music_hf.reports import Report

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
EVAL_MIDI = REPO / ".cache" / "eval-midi"
LEARNED_PROGRAMS = (0, 52)  # piano, choir
LEARNED_VELOCITIES = (63, 71, 79)
LEARNED_TEMPOS = (114.52, 121.29)


def teach(model: MusicForCausalLM, tokenizer: MusicTokenizer, kind: str, learned: tuple[float, ...]) -> None:
    """Make the `kind` tokens with a value in `learned` likely and the others unlikely: one hidden unit after the
    final norm is a constant, and each token's (tied) embedding on that unit is high or low."""
    ids = tokenizer.kind_ids(kind)
    with torch.no_grad():
        for i, value in zip(ids, tokenizer.token_table.value[ids]):
            model.get_input_embeddings().weight[i, 0] = 2.5 if any(abs(value - v) < 0.01 for v in learned) else -2.5


@pytest.fixture(scope="module")
def tok() -> MusicTokenizer:
    return MusicTokenizer()


@pytest.fixture(scope="module")
def model(tok) -> MusicForCausalLM:
    config = MusicConfig.from_tokenizer(tok, genres=["chorale", "folk song"], hidden_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=256)
    torch.manual_seed(0)
    model = MusicForCausalLM(config).eval()
    with torch.no_grad():
        model.model.norm.norm.weight[0], model.model.norm.norm.bias[0] = 0.0, 2.5
    teach(model, tok, "Program", LEARNED_PROGRAMS)
    teach(model, tok, "Velocity", LEARNED_VELOCITIES)
    teach(model, tok, "Tempo", LEARNED_TEMPOS)
    return model


@pytest.fixture(scope="module")
def untrained(tok, model) -> MusicForCausalLM:
    torch.manual_seed(0)
    return MusicForCausalLM(model.config).eval()


@pytest.fixture(scope="module")
def drum_midi() -> Path:
    """A miditok test MIDI with drums and instruments the corpus never has (pop: bass, guitars, synths)."""
    files = sorted((EVAL_MIDI / "multitrack").glob("*.mid")) if EVAL_MIDI.is_dir() else []
    for path in files:
        score = symusic.Score(str(path))
        if any(t.is_drum and len(t.notes) for t in score.tracks) and any(
                not t.is_drum and t.program not in LEARNED_PROGRAMS for t in score.tracks):
            return path
    pytest.skip("no real-world MIDI with drums: run `python scripts/fetch_eval_midi.py`")


@pytest.fixture(scope="module")
def chorale_with_violin(real_midi_paths) -> symusic.Score:
    """A corpus chorale (bwv66.6) whose first part is played by a violin (program 40), which the model never
    learned."""
    score = symusic.Score(str(real_midi_paths[0]))
    parts = [t for t in score.tracks if len(t.notes)]
    assert len(parts) >= 2 and all(not t.is_drum for t in parts)
    parts[0].program = 40
    return score


def programs_of(score: symusic.Score) -> set[int]:
    return {128 if t.is_drum else int(t.program) for t in score.tracks if len(t.notes)}


# ----- what the model learned --------------------------------------------------------------------------------

def test_knowledge_is_measured_from_the_model(tok, model, untrained):
    k = model_knowledge(model, tok)
    assert sorted(k.programs) == list(LEARNED_PROGRAMS) and not k.drums
    assert k.velocity_range == (min(LEARNED_VELOCITIES), max(LEARNED_VELOCITIES))
    assert k.tempo_range == (min(LEARNED_TEMPOS), max(LEARNED_TEMPOS))
    assert learned_programs(model, tok) == list(LEARNED_PROGRAMS)
    nothing = model_knowledge(untrained, tok)  # every share near chance: no evidence of anything
    assert nothing == ModelKnowledge()


def test_nearest_program_stays_in_the_general_midi_family():
    assert gm_family(30) == "Guitar" and gm_family(128) == "Drums"
    assert nearest_program(30, [0, 27, 52]) == (27, "family")  # distortion guitar -> clean electric guitar
    assert nearest_program(40, [42, 0]) == (42, "family")  # violin -> cello
    assert nearest_program(40, [52, 0]) == (0, "piano")  # no strings learned: the piano
    assert nearest_program(40, [52, 73]) == (52, "favourite")  # nor the piano: the best-liked learned program
    assert nearest_program(40, [128]) is None


# ----- mapping real files ------------------------------------------------------------------------------------

def test_a_pop_song_with_drums_is_mapped_into_what_the_model_knows(tok, model, drum_midi):
    original = symusic.Score(str(drum_midi))
    mapped, changes = map_prompt(str(drum_midi), model, tok)
    assert programs_of(mapped) <= set(LEARNED_PROGRAMS)  # drums dropped, every other part on piano or choir
    drum_notes = sum(len(t.notes) for t in original.tracks if t.is_drum)
    assert f"Dropped the drums ({drum_notes} notes)" in changes[0]
    assert any(line.startswith("Acoustic Grand Piano plays the part") for line in changes)
    melodic = sum(len(t.notes) for t in original.tracks if not t.is_drum)
    assert mapped.note_num() == melodic  # only the drums' notes are gone
    ids = tok.encode_score(mapped)
    table = tok.token_table
    velocities = table.value[[i for i in ids if tok.convert_ids_to_tokens(i).startswith("Velocity_")]]
    assert velocities.min() >= min(LEARNED_VELOCITIES) and velocities.max() <= max(LEARNED_VELOCITIES)
    tempos = table.value[[i for i in ids if tok.convert_ids_to_tokens(i).startswith("Tempo_")]]
    assert tempos.min() >= min(LEARNED_TEMPOS) and tempos.max() <= max(LEARNED_TEMPOS)
    if any(t.qpm > 125 or t.qpm < 110 for t in original.tempos):
        assert any(line.startswith("Tempo ") for line in changes)
    assert programs_of(symusic.Score(str(drum_midi))) == programs_of(original)  # the file is untouched


def test_a_corpus_piece_with_an_unlearned_instrument(tok, model, chorale_with_violin):
    before = [(t.program, len(t.notes)) for t in chorale_with_violin.tracks]
    mapped, changes = map_prompt(chorale_with_violin, model, tok)
    assert [(t.program, len(t.notes)) for t in chorale_with_violin.tracks] == before  # the input is not modified
    assert 40 not in programs_of(mapped) and programs_of(mapped) <= set(LEARNED_PROGRAMS)
    assert changes[0] == ("Acoustic Grand Piano plays the part of Violin: the model never learned it; no "
                          "instrument of their family was learned.")
    # a model that learned the cello: the violin goes to the nearest instrument of its family
    cello = ModelKnowledge(programs=[0, 42])
    mapped, changes = map_prompt(chorale_with_violin, model, tok, knowledge=cello)
    assert 42 in programs_of(mapped) and 40 not in programs_of(mapped)
    assert "Cello plays the part of Violin" in changes[0] and "same family" in changes[0]
    # a prompt the model knows is left as it is
    known, none = map_prompt(mapped, model, tok, knowledge=ModelKnowledge(programs=[0, 42]))
    assert none == [] and tok.encode_score(known) == tok.encode_score(mapped)


def test_drums_alone_are_kept_and_an_untrained_model_changes_nothing(tok, model, untrained, chorale_with_violin):
    drums = symusic.Score(480)
    track = symusic.Track("drums", 0, True)
    for n in range(8):
        track.notes.append(symusic.Note(n * 240, 120, 36 + (n % 2) * 2, 100))
    drums.tracks.append(track)
    mapped, changes = map_prompt(drums, model, tok)
    assert programs_of(mapped) == {128} and changes[0].startswith("Kept the drums (8 notes)")
    assert map_prompt(chorale_with_violin, untrained, tok)[1] == []


def test_generation_maps_a_prompt_unless_told_not_to(tok, model, drum_midi):
    piece = generate_music(model, tok, prompt=str(drum_midi), prompt_bars=2, max_new_tokens=8, seed=0)[0]
    assert piece.prompt_changes and "Dropped the drums" in piece.prompt_changes[0]
    prompt = tok.decode_midi(piece.ids[: piece.prompt_length])
    assert prompt.note_num() and programs_of(prompt) <= set(LEARNED_PROGRAMS)
    raw = generate_music(model, tok, prompt=str(drum_midi), prompt_bars=2, max_new_tokens=8, seed=0,
                         prompt_mapping=False)[0]
    assert raw.prompt_changes == [] and 128 in programs_of(tok.decode_midi(raw.ids[: raw.prompt_length]))
    ids = generate_music(model, tok, prompt=tok.encode_score(str(drum_midi))[:40], max_new_tokens=4, seed=0)[0]
    assert ids.prompt_changes == []  # token ids are taken as they are


def test_a_new_piece_plays_the_genres_usual_instruments_unless_told_otherwise(tok, model, untrained,
                                                                             chorale_with_violin):
    """Without `programs`, a grammar-constrained generation may use the prompt's instruments and those the model
    opens the genre with (`usual_programs`, measured from the model); "any" lifts that; an untrained model has no
    usual instruments, so any goes; a bad value is refused."""
    from music_hf.prompt_mapping import USUAL_SHARE, kind_shares, opening_contexts, usual_programs

    usual = usual_programs(model, tok, "chorale")
    assert sorted(usual) == sorted(LEARNED_PROGRAMS)  # the taught ones, and only they, get USUAL_SHARE or more
    opening = dict((g, ids) for ids, g in opening_contexts(model, tok))["chorale"]
    shares = kind_shares(model, tok, "Program", [(opening, "chorale")])
    assert all(shares[p] >= USUAL_SHARE for p in usual) and shares[usual[0]] == max(shares.values())
    assert usual_programs(untrained, tok, "chorale") == [] and usual_programs(model, tok, None) == usual

    piece = generate_music(model, tok, genre="chorale", max_new_tokens=64, seed=0)[0]
    assert piece.programs == usual and programs_of(piece.score) <= set(usual)
    free = generate_music(model, tok, genre="chorale", max_new_tokens=64, seed=0, programs="any")[0]
    assert free.programs is None
    chosen = generate_music(model, tok, genre="chorale", max_new_tokens=64, seed=0, programs=[40])[0]
    assert chosen.programs == [40] and programs_of(chosen.score) <= {40}
    assert generate_music(untrained, tok, genre="chorale", max_new_tokens=16, seed=0)[0].programs is None
    assert generate_music(model, tok, genre="chorale", max_new_tokens=16, seed=0,
                          constrained=False)[0].programs is None  # nothing restricts an unconstrained decode
    # a prompt's own instruments stay allowed, the usual ones join them
    cont = generate_music(model, tok, prompt=chorale_with_violin, prompt_bars=1, prompt_mapping=False,
                          genre="chorale", max_new_tokens=32, seed=0)[0]
    assert cont.programs == sorted(programs_of(chorale_with_violin)) + [p for p in usual
                                                                         if p not in programs_of(chorale_with_violin)]
    with pytest.raises(ValueError, match=r"programs must be program numbers .* or 'any', got 'all'"):
        generate_music(model, tok, genre="chorale", max_new_tokens=4, programs="all")


def test_the_pipeline_maps_a_prompt_and_says_what_changed(tok, model, drum_midi):
    """`pipeline("music-generation")` brings a music prompt to what the model learned, as generate_music does: its
    records carry the changes (a new piece has none to carry); prompt_mapping=False keeps the prompt."""
    from transformers import pipeline

    pipe = pipeline("music-generation", model=model, tokenizer=tok, device="cpu")
    out = pipe(str(drum_midi), prompt_bars=2, max_new_tokens=8, seed=0, return_type="ids")[0]
    direct = generate_music(model, tok, prompt=str(drum_midi), prompt_bars=2, max_new_tokens=8, seed=0)[0]
    assert out["prompt_changes"] == direct.prompt_changes and "Dropped the drums" in out["prompt_changes"][0]
    assert out["token_ids"] == direct.ids  # the same mapped prompt, the same continuation
    raw = pipe(str(drum_midi), prompt_bars=2, max_new_tokens=8, seed=0, return_type="ids", prompt_mapping=False)[0]
    assert raw["prompt_changes"] == [] and 128 in programs_of(tok.decode_midi(raw["token_ids"]))
    assert set(pipe(max_new_tokens=4, seed=0)[0]) == {"score"}  # a new piece: nothing was mapped


def test_the_command_line_prints_the_changes(tok, model, drum_midi, tmp_path, capsys):
    import json

    from music_hf.cli import main as cli_main

    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    common = ["generate", "--model", str(tmp_path / "model"), "--prompt", str(drum_midi), "--prompt_bars", "1",
              "--max_new_tokens", "4", "--out", str(tmp_path / "out")]
    assert cli_main(common) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "Dropped the drums" in line["prompt_changes"][0]
    assert cli_main([*common, "--no_prompt_mapping"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["prompt_changes"] == []


def test_the_space_fits_a_prompt_and_says_so(tok, model, chorale_with_violin):
    pytest.importorskip("gradio")
    spec = importlib.util.spec_from_file_location("music_hf_space_app_mapping", REPO / "space" / "app.py")
    app = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = app
    spec.loader.exec_module(app)
    studio = app.Studio.__new__(app.Studio)  # only what fit_to_model reads
    studio.model, studio.tokenizer, studio.knowledge = model, tok, model_knowledge(model, tok)
    ids = tok.encode_score(chorale_with_violin)
    fitted, changes = studio.fit_to_model(ids)
    assert 40 not in programs_of(tok.decode_midi(fitted)) and "Violin" in changes[0]
    assert studio.fit_to_model(fitted) == (fitted, [])
    step = {"pieces": [{}], "seconds": 1.0, "tokens": 8, "stopped": "", "warnings": [], "prompt_changes": changes}
    message = app.step_message(step)
    assert message.startswith("✅") and "🔀 Prompt fitted to what the model learned: Acoustic Grand Piano plays" \
        in message


# ----- real-world evaluation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("length, window", [(1, 8), (7, 8), (8, 8), (9, 8), (100, 8), (513, 64)])
def test_scoring_windows_predict_every_token_once(length, window):
    rng = np.random.default_rng(length)
    for flags in (rng.random(length) < 0.1, np.zeros(length, dtype=bool)):
        spans = scoring_windows(flags, length, window)
        scored = [i for _, first, end in spans for i in range(first, end)]
        assert scored == list(range(1, length))
        for start, first, end in spans:
            assert end - start <= window and start < first  # each scored token has context in its window


def test_real_world_nll_per_token_kind(tok, model, drum_midi, real_midi_paths, tmp_path):
    for folder, path in (("multitrack", drum_midi), ("one_track", real_midi_paths[0])):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / path.name).write_bytes(path.read_bytes())
    (tmp_path / "one_track" / "empty.mid").write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x00\x01\xe0")
    assert {k: len(v) for k, v in real_world_files(tmp_path).items()} == {"multitrack": 1, "one_track": 2}
    rw = real_world_quality(model, tok, tmp_path, window=64, max_windows_per_file=3)
    assert rw["left_out"] == [["one_track/empty.mid", "no notes"]]
    assert rw["chance"] == pytest.approx(math.log(len(tok)))
    raw, mapped = rw["raw"], rw["mapped"]
    assert raw["overall"]["tokens"] == sum(s["tokens"] for s in raw["by_set"].values())
    assert raw["overall"]["tokens"] <= 2 * 3 * 63  # at most 3 windows per file, 63 predicted tokens each
    for mode in (raw, mapped):
        kinds = mode["overall"]["by_kind"]
        assert sum(k["share"] for k in kinds.values()) == pytest.approx(1.0)
        assert sum(k["tokens"] for k in kinds.values()) == mode["overall"]["tokens"]
        assert all(np.isfinite(k["nll"]) and k["nll"] > 0 for k in kinds.values())
    assert "Drum pitch" in raw["overall"]["by_kind"] and "Drum pitch" not in mapped["overall"]["by_kind"]
    assert {"Bar", "Position", "Pitch", "Velocity", "Duration", "Program"} <= set(raw["overall"]["by_kind"])
    assert "Dropped the drums" in rw["changes"][f"multitrack/{drum_midi.name}"][0]
    report = Report("test", "cpu")
    real_world_section(report, rw)
    text = "\n".join(report.lines)
    assert "### Real-world MIDI" in text and "| Drum pitch |" in text and "left out: one_track/empty.mid" in text
    assert f"log(vocabulary size {len(tok)})" in text


def test_evaluate_finds_the_real_world_folder(tmp_path):
    from music_hf.quality import EvaluationArguments, real_world_folder
    from music_hf.real_world import DEFAULT_REAL_WORLD_DIR

    assert real_world_folder(EvaluationArguments(real_world_dir="none")) is None
    assert real_world_folder(EvaluationArguments(real_world_dir=str(tmp_path))) == tmp_path
    assert real_world_folder(EvaluationArguments(real_world_dir="auto", quick=True)) is None  # smoke runs skip it
    assert real_world_folder(EvaluationArguments()) == (DEFAULT_REAL_WORLD_DIR if DEFAULT_REAL_WORLD_DIR.is_dir()
                                                        else None)
    with pytest.raises(SystemExit, match="fetch_eval_midi.py"):
        real_world_folder(EvaluationArguments(real_world_dir=str(tmp_path / "missing")))
