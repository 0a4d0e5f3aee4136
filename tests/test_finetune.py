"""Fine-tuning a saved model on a folder of your own MIDI files (`music-hf train --init_from`), all weights or a
LoRA adapter (`--lora_r`): the data's genres the model does not know get new genre-embedding rows (the old rows kept
exactly, data genre ids mapped to the model's), both runs train and save; a LoRA run (stopped and resumed from its
checkpoint) saves only its adapter, which reloads onto the base with PEFT to the trained model's logits and generates
through `generate_midi(adapter=...)`, `music-hf generate --adapter` and the Space's ADAPTER setting.

A tiny random base model (hidden 32, 2 layers, genres chorale and folk); the seven real pieces of `real_midi_paths`
in a MIDI folder with a labels file that adds the genre "renaissance"; 3 optimizer steps per run, in-process.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
import symusic
import torch
from safetensors.torch import load_file

import music_hf  # noqa: F401  (registers the Auto classes)
from music_hf import MusicConfig, MusicForCausalLM, MusicTokenizer, generate_midi
from music_hf.adapters import GENRES_FILE, add_genres, load_adapter
from music_hf.cli import main as cli_main
from music_hf.data import MusicDataCollator
from music_hf.training import TrainConfig, build_datasets, load_init_model, lora_model, train

peft = pytest.importorskip("peft")

REPO = Path(__file__).resolve().parents[1]
BASE_GENRES = ["unknown", "chorale", "folk"]
NEW_GENRE = "renaissance"
SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             max_position_embeddings=256, embedding_dropout=0.0, hidden_dropout=0.0, attention_dropout=0.0)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _genre_of(name: str) -> str | None:
    """bach: chorale, palestrina: the new genre, schoenberg: unlabelled (unknown), the tunes: folk."""
    return ("chorale" if name.startswith("bach") else NEW_GENRE if name.startswith("palestrina")
            else None if name.startswith("schoenberg") else "folk")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """A saved model folder as a run leaves it: random tiny model, tokenizer, generation config."""
    path = tmp_path_factory.mktemp("base")
    tokenizer = MusicTokenizer()
    torch.manual_seed(0)
    model = MusicForCausalLM(MusicConfig.from_tokenizer(tokenizer, genres=BASE_GENRES, **SIZES))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    assert (path / "generation_config.json").is_file()
    return path


@pytest.fixture(scope="module")
def midi_dir(real_midi_paths, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("my_midis")
    rows = ["path,genre"]
    for source in real_midi_paths:
        shutil.copy(source, path / source.name)
        if _genre_of(source.name):
            rows.append(f"{source.name},{_genre_of(source.name)}")
    (path / "labels.csv").write_text("\n".join(rows) + "\n")
    return path


def finetune_config(base_dir: Path, midi_dir: Path, output_dir: Path | None = None, **changes) -> TrainConfig:
    settings = dict(midi_dir=str(midi_dir), labels_file=str(midi_dir / "labels.csv"), init_from=str(base_dir),
                    validation_fraction=0.0, test_fraction=0.0, max_length=64, overlap=8, num_proc=1,
                    max_steps=3, warmup_steps=0, learning_rate=1e-2, per_device_batch_size=4, save_every=2,
                    log_every=1, log_with=None, output_dir=str(output_dir or base_dir.parent / "unused"))
    return TrainConfig().replace(**settings | changes)


def _batch(tokenizer: MusicTokenizer, midi_dir: Path, genre_id: int) -> dict[str, torch.Tensor]:
    ids = [tokenizer.bos_token_id] + tokenizer.encode_score(str(midi_dir / "bach_bwv66.6.mid"))[:47]
    batch = MusicDataCollator(tokenizer.pad_token_id)([{"input_ids": ids, "genre_id": genre_id},
                                                       {"input_ids": ids[:40], "genre_id": 0}])
    return {k: v for k, v in batch.items() if k != "labels"}


# ----- the model to fine-tune ---------------------------------------------------------------------------
def test_new_genres_get_new_rows_after_the_kept_ones(base_dir, midi_dir):
    cfg = finetune_config(base_dir, midi_dir)
    tokenizer, genres, ds, _, windows = build_datasets(cfg, progress=False)
    assert genres == BASE_GENRES + [NEW_GENRE]  # the model's ids first, the new genre after them
    assert len(tokenizer) == MusicConfig.from_pretrained(base_dir).vocab_size  # the tokenizer of init_from
    expected = {s: genres.index(_genre_of(Path(s).name) or "unknown") for s in ds["train"]["source"]}
    assert {s: g for s, g in zip(ds["train"]["source"], ds["train"]["genre_id"])} == expected
    assert set(windows["train"]["genre_id"]) == {0, 1, 2, 3}

    model = load_init_model(cfg, tokenizer, genres)
    base = MusicForCausalLM.from_pretrained(base_dir)
    assert model.config.id2genre == dict(enumerate(BASE_GENRES + [NEW_GENRE]))
    table, old = model.model.embeddings.genre.weight, base.model.embeddings.genre.weight
    assert table.shape == (4, 32) and table.requires_grad
    assert torch.equal(table[:3], old)  # the old rows, exactly
    assert torch.equal(table[3], old[0])  # the new one starts as "unknown"
    before = base.state_dict()
    for name, value in model.state_dict().items():  # nothing else moved
        if name != "model.embeddings.genre.weight":
            assert torch.equal(value, before[name]), name
    batch = _batch(tokenizer, midi_dir, genre_id=2)
    with torch.no_grad():  # the known genres' outputs are the saved model's
        torch.testing.assert_close(model.eval()(**batch).logits, base(**batch).logits, rtol=0, atol=0)


def test_model_settings_that_resize_are_ignored_and_dropouts_apply(base_dir, midi_dir, caplog):
    cfg = finetune_config(base_dir, midi_dir, hidden_size=64, num_hidden_layers=2, hidden_dropout=0.2)
    tokenizer = MusicTokenizer.from_pretrained(base_dir)
    with caplog.at_level(logging.WARNING, logger="music_hf.train"):
        model = load_init_model(cfg, tokenizer, BASE_GENRES)
    assert (model.config.hidden_size, model.config.hidden_dropout) == (32, 0.2)
    assert model.model.embeddings.genre.weight.shape[0] == 3  # no new genre: no new row
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "ignoring model settings {'hidden_size': 64}" in warned and "num_hidden_layers" not in warned


def test_a_tokenizer_that_does_not_match_the_model_is_refused(base_dir, midi_dir, tmp_path):
    other = MusicTokenizer.from_pretrained(base_dir)
    other.add_tokens(["<extra>"])
    other.save_pretrained(tmp_path / "tok")
    cfg = finetune_config(base_dir, midi_dir, tokenizer_path=str(tmp_path / "tok"))
    with pytest.raises(ValueError, match=rf"tokenizer_path {tmp_path / 'tok'} has 579 ids but the model in "
                                         rf"init_from {base_dir} has vocab_size 578"):
        load_init_model(cfg, MusicTokenizer.from_pretrained(tmp_path / "tok"), BASE_GENRES)


def test_init_from_must_be_a_music_model(base_dir, midi_dir, tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"init_from .*: not a music model \(model_type 'gpt2'\)"):
        build_datasets(finetune_config(tmp_path, midi_dir), progress=False)


def test_lora_needs_init_from_and_saves_no_whole_model_to_push(base_dir, midi_dir):
    with pytest.raises(ValueError, match="lora_r trains an adapter of a saved model: pass init_from"):
        train(finetune_config(base_dir, midi_dir, init_from=None, lora_r=4))
    with pytest.raises(ValueError, match="push_to_hub publishes a whole model"):
        train(finetune_config(base_dir, midi_dir, lora_r=4, push_to_hub="me/adapter"))


# ----- fine-tuning runs ----------------------------------------------------------------------------------
def test_full_fine_tuning_trains_every_weight_and_keeps_the_genre_ids(base_dir, midi_dir, tmp_path):
    out = tmp_path / "full"
    summary = train(finetune_config(base_dir, midi_dir, out))
    assert summary["step"] == 3 and summary["final_train_loss"] is not None
    tuned, base = MusicForCausalLM.from_pretrained(out), MusicForCausalLM.from_pretrained(base_dir)
    assert tuned.config.id2genre == dict(enumerate(BASE_GENRES + [NEW_GENRE]))
    assert (tuned.config.hidden_size, tuned.config.num_hidden_layers) == (32, 2)
    assert tuned.model.embeddings.genre.weight.shape == (4, 32)
    before = base.state_dict()
    moved = {k for k, v in tuned.state_dict().items() if k in before and not torch.equal(v, before[k])}
    assert {"model.embeddings.token.weight", "model.embeddings.genre.weight", "model.layers.1.attn.qkv_proj.weight",
            "model.layers.1.mlp.fc_out.weight", "model.norm.norm.weight"} <= moved, sorted(moved)
    assert json.loads((out / "train_config.json").read_text())["init_from"] == str(base_dir)


@pytest.fixture(scope="module")
def lora_run(base_dir, midi_dir, tmp_path_factory) -> Path:
    """A LoRA run (rank 4) stopped after 2 steps and resumed from its checkpoint to the end (step 3)."""
    out = tmp_path_factory.mktemp("lora")
    cfg = finetune_config(base_dir, midi_dir, out, lora_r=4)
    assert train(cfg, stop_after=2)["step"] == 2
    assert not (out / "adapter_model.safetensors").exists()
    assert train(cfg, resume="latest")["step"] == 3
    return out


def test_lora_run_stopped_and_resumed_equals_an_unbroken_one(lora_run, base_dir, midi_dir, tmp_path):
    """...with gradient checkpointing on in the unbroken run: the adapters still get their gradients."""
    out = tmp_path / "unbroken"
    train(finetune_config(base_dir, midi_dir, out, lora_r=4, gradient_checkpointing=True))
    unbroken, resumed = load_file(out / "adapter_model.safetensors"), load_file(lora_run / "adapter_model.safetensors")
    assert unbroken.keys() == resumed.keys()
    for name, value in unbroken.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-5, atol=1e-6, msg=name)
    losses = [json.loads(line)["loss"] for line in (lora_run / "train_log.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and losses == pytest.approx(
        [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()], rel=1e-5)


def test_lora_run_saves_only_the_adapter_and_what_makes_the_folder_usable(lora_run):
    files = {p.name for p in lora_run.iterdir() if p.is_file()}
    assert {"adapter_model.safetensors", "adapter_config.json", "generation_config.json", GENRES_FILE,
            "tokenizer_config.json"} <= files, files
    assert not files & {"model.safetensors", "pytorch_model.bin"}, files
    saved = load_file(lora_run / "adapter_model.safetensors")
    assert all("lora_" in k or "embeddings.genre" in k for k in saved), sorted(saved)
    assert saved["base_model.model.model.embeddings.genre.weight"].shape == (4, 32)  # the new row travels
    adapter_config = json.loads((lora_run / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4 and adapter_config["lora_alpha"] == 8
    assert set(adapter_config["target_modules"]) == {"qkv_proj", "o_proj", "fc_in", "fc_out"}
    assert json.loads((lora_run / GENRES_FILE).read_text())["id2genre"] == \
        {str(i): g for i, g in enumerate(BASE_GENRES + [NEW_GENRE])}


def test_lora_adapter_reloads_with_peft_to_the_trained_logits(lora_run, base_dir, midi_dir):
    tokenizer = MusicTokenizer.from_pretrained(lora_run)
    base = MusicForCausalLM.from_pretrained(base_dir)
    assert add_genres(base, BASE_GENRES + [NEW_GENRE]) == [NEW_GENRE]
    reloaded = peft.PeftModel.from_pretrained(base, lora_run).eval()
    # the trained model: the run's last checkpoint (step 3) holds its whole state
    trained_state = load_file(lora_run / "checkpoint-3" / "model.safetensors")
    state = reloaded.state_dict()
    assert set(trained_state) <= set(state)
    for name, value in trained_state.items():
        assert torch.equal(state[name], value), name
    lora_b = [v for k, v in trained_state.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # every adapter trained (lora_B starts at 0)
    genre = trained_state["base_model.model.model.embeddings.genre.modules_to_save.default.weight"]
    assert not torch.equal(genre[3], genre[0])  # the new genre's row trained

    # the trained model rebuilt as the run built it, with the checkpoint's state: the same logits, exactly
    cfg = finetune_config(base_dir, midi_dir, lora_r=4)
    trained = lora_model(load_init_model(cfg, tokenizer, BASE_GENRES + [NEW_GENRE]), cfg.training, True)
    missing, unexpected = trained.load_state_dict(trained_state, strict=False)
    assert missing == ["base_model.model.lm_head.weight"] and not unexpected  # tied to the token embedding
    batch = _batch(tokenizer, midi_dir, genre_id=3)
    with torch.no_grad():
        expected = trained.eval()(**batch).logits
        torch.testing.assert_close(reloaded(**batch).logits, expected, rtol=0, atol=0)
        untuned = MusicForCausalLM.from_pretrained(base_dir)
        add_genres(untuned, BASE_GENRES + [NEW_GENRE])
        assert not torch.allclose(untuned.eval()(**batch).logits, expected)
        merged = load_adapter(MusicForCausalLM.from_pretrained(base_dir), lora_run)  # genres added by itself
        assert type(merged) is MusicForCausalLM and merged.config.genre_id(NEW_GENRE) == 3
        torch.testing.assert_close(merged(**batch).logits, expected, rtol=1e-4, atol=1e-4)


def test_lora_adapter_without_new_genres_is_a_plain_peft_adapter(base_dir, midi_dir, tmp_path):
    out = tmp_path / "lora-no-labels"
    train(finetune_config(base_dir, midi_dir, out, labels_file=None, lora_r=2, max_steps=1))  # genres: all unknown
    saved = load_file(out / "adapter_model.safetensors")
    assert saved and all("lora_" in k for k in saved), sorted(saved)
    assert json.loads((out / GENRES_FILE).read_text())["id2genre"] == {str(i): g for i, g in enumerate(BASE_GENRES)}
    reloaded = peft.PeftModel.from_pretrained(MusicForCausalLM.from_pretrained(base_dir), out)
    assert reloaded.config.num_genres == 3


def test_generate_with_the_adapter(lora_run, base_dir, tmp_path, monkeypatch):
    base = MusicForCausalLM.from_pretrained(base_dir).eval()
    tokenizer = MusicTokenizer.from_pretrained(base_dir)
    score = generate_midi(base, tokenizer, genre=NEW_GENRE, max_new_tokens=8, adapter=lora_run, seed=0)
    assert isinstance(score, symusic.Score)
    assert base.config.num_genres == 3 and not any("lora" in n for n, _ in base.named_modules())  # untouched

    out = tmp_path / "samples"
    assert cli_main(["generate", "--model", str(base_dir), "--adapter", str(lora_run), "--genre", NEW_GENRE,
                     "--max_new_tokens", "8", "--out", str(out)]) == 0
    assert len(list(out.glob("*.mid"))) == 1
    with pytest.raises(SystemExit):  # the base alone does not know the genre
        cli_main(["generate", "--model", str(base_dir), "--genre", NEW_GENRE, "--max_new_tokens", "8",
                  "--out", str(out)])


def test_the_space_loads_the_adapter(lora_run, base_dir):
    pytest.importorskip("gradio")
    spec = importlib.util.spec_from_file_location("music_hf_space_app", REPO / "space" / "app.py")
    app = sys.modules.get(spec.name)
    if app is None:
        app = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = app
        spec.loader.exec_module(app)
    model, _ = app.load_model(str(base_dir), str(lora_run))
    assert type(model) is MusicForCausalLM and model.config.genre_id(NEW_GENRE) == 3 and not model.training
    with pytest.raises(app.ModelUnavailable, match="Could not load the adapter"):
        app.load_model(str(base_dir), str(base_dir))  # a model folder is no adapter
