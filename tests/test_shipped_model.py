"""The model that ships in the repository (models/music-hf-base): what it is made of, that it loads the ways users
load models, and that the defaults (generate command, Space) use it and make music with it at once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from music_hf import MusicTokenizer
from music_hf.hub import SHIPPED_MODEL, build_model_card
from music_hf.training import TrainConfig

REPO = Path(__file__).resolve().parents[1]
BASE_CONFIG = REPO / "scripts" / "configs" / "base.yaml"
STAGE2_CONFIG = REPO / "scripts" / "configs" / "base_infill.yaml"
MAX_MB = 25

pytestmark = pytest.mark.skipif(not (SHIPPED_MODEL / "config.json").is_file(),
                                reason="models/music-hf-base is not in this checkout")


@pytest.fixture(scope="module")
def base():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    return (AutoModelForCausalLM.from_pretrained(str(SHIPPED_MODEL)).eval(),
            AutoTokenizer.from_pretrained(str(SHIPPED_MODEL)))


def test_the_folder_is_small_safetensors_only_and_complete():
    files = {p.name: p.stat().st_size for p in SHIPPED_MODEL.rglob("*") if p.is_file()}
    assert sum(files.values()) <= MAX_MB * 1024 * 1024, files
    assert "model.safetensors" in files
    assert not [n for n in files if n.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]  # nothing to unpickle
    for name in ("config.json", "generation_config.json", "tokenizer_config.json", "training_results.json",
                 "README.md", "modeling_music.py", "configuration_music.py", "tokenization_music.py"):
        assert name in files, name
    assert not [p for p in SHIPPED_MODEL.iterdir() if p.is_dir()]  # no checkpoints or logs


def test_it_is_the_committed_two_stage_recipe_on_the_whole_corpus():
    """Stage 2 (base_infill.yaml) trained the shipped weights from stage 1's (base.yaml); the two configs differ only
    in the infilling layout, rate and gap length, the timing noise (stage 2 adds the timing control's tokens), the
    schedule and the folders, so the held-out split is the same."""
    results = json.loads((SHIPPED_MODEL / "training_results.json").read_text())
    trained = TrainConfig.from_dict(results["config"])
    stage1, stage2 = TrainConfig.from_yaml(BASE_CONFIG), TrainConfig.from_yaml(STAGE2_CONFIG)
    assert trained.model.settings() == stage2.model.settings() == stage1.model.settings()
    assert trained.data == stage2.data  # the whole corpus, the augmentation and composition settings
    assert {k for k, v in stage1.flat().items() if stage2.flat()[k] != v} == {
        "fim_rate", "fim_order", "fim_max_bars", "init_from", "learning_rate", "warmup_steps", "max_steps", "output_dir",
        "timing_noise", "add_composition_tokens"}
    assert stage2.data.timing_noise == 0.5 and stage2.training.add_composition_tokens
    # the shipped vocabulary is this version's less the repetition control's four tokens (the weights were trained
    # before them; add_composition_tokens adds them when stage 2 is rerun): every other composition token
    shipped = MusicTokenizer.from_pretrained(SHIPPED_MODEL)
    assert shipped.with_composition_tokens().get_vocab() == MusicTokenizer().get_vocab()
    assert len(MusicTokenizer()) - len(shipped) == 4
    assert shipped.control_names == ("key", "density", "polyphony", "pitch_range", "timing")
    assert trained.training.max_steps == stage2.training.max_steps and trained.training.seed == stage2.training.seed
    assert Path(trained.training.init_from).name == Path(stage2.training.init_from).name == "music-hf-base"
    assert json.loads((SHIPPED_MODEL / "config.json").read_text())["infill_order"] == stage2.data.fim_order == "spm"
    config = json.loads((SHIPPED_MODEL / "config.json").read_text())
    genres = set(config["id2genre"].values())
    assert {"chorale", "renaissance", "medieval", "folk song", "fiddle tune", "baroque", "classical", "romantic",
            "modern"} <= genres  # every genre label of the corpus


def test_it_loads_as_users_load_models_and_generates_a_valid_piece(base):
    from music_hf.generation import generate_music

    model, tokenizer = base
    assert isinstance(tokenizer, MusicTokenizer)
    piece = generate_music(model, tokenizer, genre="chorale", max_new_tokens=96, seed=0)[0]
    assert piece.score.note_num() > 0
    assert tokenizer.grammar_errors(piece.ids) == 0
    # and through trust_remote_code, without the package's classes (the folder carries its code)
    from transformers import AutoModelForCausalLM
    remote = AutoModelForCausalLM.from_pretrained(str(SHIPPED_MODEL), trust_remote_code=True).eval()
    ids = torch.tensor([piece.ids[:64]])
    with torch.no_grad():
        assert torch.allclose(remote(ids).logits, model(ids).logits, atol=1e-5)


def test_composition_works_with_it(base):
    from music_hf import infill_music
    from music_hf.composition import check_composition_setup
    from music_hf.generation import generate_music

    model, tokenizer = base
    check_composition_setup(model, tokenizer)
    piece = generate_music(model, tokenizer, genre="fiddle tune", max_new_tokens=200, seed=1)[0].score
    out = infill_music(model, tokenizer, piece, bars=(1, 2), seed=0, max_new_tokens=200)
    assert out.note_num() > 0


def test_the_model_card_is_the_one_a_push_would_upload():
    card = (SHIPPED_MODEL / "README.md").read_text()
    rebuilt = build_model_card(SHIPPED_MODEL, "music-hf/music-hf-base")
    assert card.strip() == str(rebuilt).strip()


def test_the_generate_command_uses_it_by_default(tmp_path):
    out = subprocess.run([sys.executable, "-m", "music_hf.cli", "generate", "--genre", "folk song",
                          "--max_new_tokens", "64", "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert line["notes"] > 0 and Path(line["midi"]).is_file()


def test_the_space_composes_with_it_on_a_fresh_checkout(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("music_hf_space_app_shipped", REPO / "space" / "app.py")
    app = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = app
    spec.loader.exec_module(app)
    assert Path(app.DEFAULT_MODEL) == SHIPPED_MODEL
    studio = app.Studio(None, corpus_dir=str(tmp_path / "no-corpus"), output_dir=str(tmp_path / "out"),
                        cache_dir=str(tmp_path / "cache"))
    assert len(studio.programs) > 2  # trained with instruments of every General MIDI family: more than piano and choir
    history = studio.generate([], settings=studio.settings(genre="chorale", max_new_tokens=96))
    piece = history[-1]["pieces"][0]
    assert piece["notes"] > 0 and piece["valid"] == 1.0 and Path(piece["midi"]).is_file()
