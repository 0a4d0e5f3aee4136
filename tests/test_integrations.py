"""What HF users expect around the model: `Trainer` trains both heads on real corpus windows and its saved model
reloads through the Auto classes; a PEFT LoRA adapter trains, saves alone and reloads onto a fresh base; and
`pipeline("music-generation")` generates Scores or MIDI bytes from a saved folder, continues prompts and
rejects bad arguments clearly.

Tiny models (hidden 32, 2 layers) on the seven real pieces of `real_midi_paths`, cut into 64-token windows by
`music_hf.data`, batched by its collator; a few optimizer steps each on the CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import symusic
import torch
from safetensors.torch import load_file
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, Trainer, TrainingArguments,
                          pipeline)
from transformers.pipelines import PIPELINE_REGISTRY

import music_hf
from music_hf import MusicConfig, MusicForCausalLM, MusicForSequenceClassification, MusicTokenizer
from music_hf.data import MusicDataCollator, make_windows, pieces_from_entries, tokenize_pieces
from music_hf.generation import cut_bars, default_repetition
from music_hf.pipelines import MusicGenerationPipeline

GENRES = ["chorale", "renaissance", "piano", "folk"]
MAX_LENGTH = 64


def _genre_of(path: Path) -> str:
    name = path.name
    return ("chorale" if name.startswith("bach") else "renaissance" if name.startswith("palestrina")
            else "piano" if name.startswith("schoenberg") else "folk")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer() -> MusicTokenizer:
    return MusicTokenizer()


@pytest.fixture(scope="module")
def windows(real_midi_paths, tokenizer):
    """Bar-aligned windows (input_ids, genre_id, source, idx) of the seven real pieces, all in one split."""
    class Entry:
        def __init__(self, path: Path):
            self.path, self.genre, self.source = path, _genre_of(path), path.name

    pieces = pieces_from_entries([Entry(p) for p in real_midi_paths])
    ds, summary = tokenize_pieces(pieces, tokenizer, ["unknown"] + GENRES, validation_fraction=0.0,
                                  test_fraction=0.0)
    assert summary.pieces["train"] == len(real_midi_paths) and not summary.failed, str(summary)
    out = make_windows(ds["train"], tokenizer, MAX_LENGTH, overlap=8)
    assert len(out) >= 32 and len(set(out["genre_id"])) == len(GENRES)
    return out


def tiny_config(tokenizer: MusicTokenizer, **overrides) -> MusicConfig:
    params = dict(genres=GENRES, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  max_position_embeddings=256, embedding_dropout=0.0, hidden_dropout=0.0, attention_dropout=0.0,
                  classifier_dropout=0.0)
    params.update(overrides)
    return MusicConfig.from_tokenizer(tokenizer, **params)


def training_args(output_dir: Path, max_steps: int, learning_rate: float = 3e-3, **overrides) -> TrainingArguments:
    params = dict(output_dir=str(output_dir), max_steps=max_steps, learning_rate=learning_rate,
                  per_device_train_batch_size=8, per_device_eval_batch_size=16, warmup_steps=0,
                  lr_scheduler_type="constant", weight_decay=0.0, logging_steps=1, save_strategy="no",
                  eval_strategy="no", report_to="none", use_cpu=True, seed=0, data_seed=0,
                  dataloader_num_workers=0, prediction_loss_only=True, disable_tqdm=True,
                  # the windows carry genre_id and idx, which the collator turns into genre_ids (and uses to
                  # seed augmentation): the forward signature does not name them, so keep every column
                  remove_unused_columns=False)
    params.update(overrides)
    return TrainingArguments(**params)


class GenreLabelCollator(MusicDataCollator):
    """The package collator with the window's genre as the label (and no genre_ids: that would give it away)."""

    def __call__(self, examples):
        batch = super().__call__(examples)
        batch["labels"] = batch.pop("genre_ids")
        return batch


def eval_batch(windows, collator, n: int = 8) -> dict[str, torch.Tensor]:
    return collator([windows[i] for i in range(n)])


def train_losses(trainer: Trainer) -> list[float]:
    return [log["loss"] for log in trainer.state.log_history if "loss" in log]


# ----- Trainer ----------------------------------------------------------------------------------------
def test_trainer_trains_causal_lm_and_saved_model_reloads_with_auto_class(windows, tokenizer, tmp_path):
    torch.manual_seed(0)
    model = MusicForCausalLM(tiny_config(tokenizer))
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    collator = MusicDataCollator(tokenizer.pad_token_id)
    trainer = Trainer(model=model, args=training_args(tmp_path / "run", max_steps=20), train_dataset=windows,
                      eval_dataset=windows, data_collator=collator, processing_class=tokenizer)
    init_loss = trainer.evaluate()["eval_loss"]
    result = trainer.train()
    final_loss = trainer.evaluate()["eval_loss"]

    losses = train_losses(trainer)
    assert result.global_step == 20 and len(losses) == 20
    assert torch.isfinite(torch.tensor([init_loss, final_loss, *losses])).all()
    assert final_loss < init_loss - 1.0, (init_loss, final_loss)  # ln(vocab) ~ 6.3 at init
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    after = model.state_dict()
    assert not torch.equal(before["model.embeddings.token.weight"], after["model.embeddings.token.weight"])
    assert not torch.equal(before["model.layers.1.mlp.fc_out.weight"], after["model.layers.1.mlp.fc_out.weight"])
    assert model.lm_head.weight.data_ptr() == model.model.embeddings.token.weight.data_ptr()  # still tied

    out = tmp_path / "saved"
    trainer.save_model(str(out))
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(reloaded) is MusicForCausalLM
    assert type(music_hf.MusicTokenizer.from_pretrained(out)) is MusicTokenizer  # processing_class saved too
    batch = eval_batch(windows, collator)
    model.eval()
    with torch.no_grad():
        expected = model(**batch)
        got = reloaded(**batch)
    torch.testing.assert_close(got.logits, expected.logits)
    torch.testing.assert_close(got.loss, expected.loss)
    assert abs(got.loss.item() - final_loss) < 0.5  # the same model Trainer evaluated


def test_trainer_trains_sequence_classifier_on_genres(windows, tokenizer, tmp_path):
    torch.manual_seed(0)
    model = MusicForSequenceClassification(tiny_config(tokenizer, num_labels=len(GENRES) + 1))
    collator = GenreLabelCollator(tokenizer.pad_token_id)
    trainer = Trainer(model=model, args=training_args(tmp_path / "run", max_steps=20, learning_rate=1e-2),
                      train_dataset=windows, eval_dataset=windows, data_collator=collator)
    init_loss = trainer.evaluate()["eval_loss"]
    trainer.train()
    final_loss = trainer.evaluate()["eval_loss"]
    assert torch.isfinite(torch.tensor([init_loss, final_loss])).all()
    assert final_loss < init_loss - 0.2, (init_loss, final_loss)

    out = tmp_path / "saved"
    trainer.save_model(str(out))
    reloaded = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert type(reloaded) is MusicForSequenceClassification
    batch = eval_batch(windows, collator)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits)


# ----- PEFT -------------------------------------------------------------------------------------------
LORA_TARGETS = ["qkv_proj", "o_proj", "fc_in", "fc_out"]


def test_lora_adapter_trains_saves_alone_and_reloads_onto_a_fresh_base(windows, tokenizer, tmp_path):
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base_dir = tmp_path / "base"
    MusicForCausalLM(tiny_config(tokenizer)).save_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    frozen = {k: v.detach().clone() for k, v in base.state_dict().items()}

    lora = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    model = peft.get_peft_model(base, lora)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".")[-3] for n in trainable} == {"lora_A", "lora_B"}  # ...qkv_proj.lora_A.default.weight
    assert {n.split(".lora_")[0].split(".")[-1] for n in trainable} == set(LORA_TARGETS)

    collator = MusicDataCollator(tokenizer.pad_token_id)
    trainer = Trainer(model=model, args=training_args(tmp_path / "run", max_steps=10, learning_rate=1e-2),
                      train_dataset=windows, eval_dataset=windows, data_collator=collator)
    init_loss = trainer.evaluate()["eval_loss"]
    trainer.train()
    final_loss = trainer.evaluate()["eval_loss"]
    assert final_loss < init_loss, (init_loss, final_loss)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert all(p.abs().sum() > 0 for p in lora_b)  # lora_B starts at zero: every adapter was trained
    for k, v in model.get_base_model().state_dict().items():  # the base weights did not move
        key = k.replace(".base_layer", "")
        if "lora_" not in k:
            assert torch.equal(v, frozen[key]), k

    adapter_dir = tmp_path / "adapter"
    model.save_pretrained(adapter_dir)
    files = {p.name for p in adapter_dir.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= files
    assert not files & {"model.safetensors", "pytorch_model.bin", "config.json"}, files
    saved = load_file(adapter_dir / "adapter_model.safetensors")
    assert saved and all("lora_" in k for k in saved), sorted(saved)[:5]
    n_params = sum(v.numel() for v in saved.values())
    assert n_params < 0.2 * sum(v.numel() for v in frozen.values())

    fresh = AutoModelForCausalLM.from_pretrained(base_dir)
    reloaded = peft.PeftModel.from_pretrained(fresh, adapter_dir).eval()
    model.eval()
    batch = eval_batch(windows, collator)
    with torch.no_grad():
        expected = model(**batch).logits
        torch.testing.assert_close(reloaded(**batch).logits, expected)
        assert not torch.allclose(AutoModelForCausalLM.from_pretrained(base_dir)(**batch).logits, expected)
        merged = reloaded.merge_and_unload()
        assert type(merged) is MusicForCausalLM
        torch.testing.assert_close(merged(**batch).logits, expected, rtol=1e-4, atol=1e-4)


# ----- pipeline ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_model_dir(tokenizer, tmp_path_factory) -> Path:
    """A tiny random (untrained) model and its tokenizer saved together, as a Hub repo would hold them."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("music_generation_model")
    MusicForCausalLM(tiny_config(tokenizer)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def pipe(saved_model_dir) -> MusicGenerationPipeline:
    return pipeline("music-generation", model=str(saved_model_dir), device="cpu")


def note_tuples(score: symusic.Score) -> Counter:
    return Counter((n.time, n.duration, n.pitch, t.program, t.is_drum) for t in score.tracks for n in t.notes)


def test_music_generation_is_registered_and_loads_from_a_saved_folder(pipe):
    assert "music-generation" in PIPELINE_REGISTRY.get_supported_tasks()
    assert isinstance(pipe, MusicGenerationPipeline) and music_hf.MusicGenerationPipeline is MusicGenerationPipeline
    assert type(pipe.model) is MusicForCausalLM and type(pipe.tokenizer) is MusicTokenizer


def test_pipeline_generates_a_new_piece_as_score_or_midi_bytes(pipe):
    out = pipe(max_new_tokens=96, seed=0)  # no input: a new piece
    assert isinstance(out, list) and len(out) == 1 and set(out[0]) == {"score"}
    score = out[0]["score"]
    assert isinstance(score, symusic.Score) and score.note_num() > 0
    assert note_tuples(pipe("", max_new_tokens=96, seed=0)[0]["score"]) == note_tuples(score)  # "" is None too

    midi = pipe(max_new_tokens=96, seed=0, return_type="midi")
    assert set(midi[0]) == {"midi"} and isinstance(midi[0]["midi"], bytes)
    parsed = symusic.Score.from_midi(midi[0]["midi"])
    assert parsed.note_num() == score.note_num() > 0
    assert note_tuples(parsed.resample(score.tpq, min_dur=1)) == note_tuples(score)

    ids = pipe(max_new_tokens=96, seed=0, return_type="ids")[0]["token_ids"]
    assert ids[0] == pipe.tokenizer.bos_token_id and pipe.tokenizer.decode_midi(ids).note_num() == score.note_num()


def test_pipeline_sequences_genres_and_lists_of_inputs(pipe):
    several = pipe(max_new_tokens=48, num_return_sequences=3, seed=1, genre="folk", top_k=20, temperature=0.9)
    assert len(several) == 3 and all(r["score"].note_num() > 0 for r in several)
    batch = pipe([None, ""], max_new_tokens=48, seed=1)  # a list of inputs: a list of result lists
    assert len(batch) == 2 and all(len(r) == 1 for r in batch)
    assert note_tuples(batch[0][0]["score"]) == note_tuples(batch[1][0]["score"])
    # constructor keywords are the defaults for every call
    custom = pipeline("music-generation", model=pipe.model, tokenizer=pipe.tokenizer, device="cpu",
                      return_type="midi", max_new_tokens=32, seed=1)
    assert isinstance(custom()[0]["midi"], bytes)


def test_pipeline_continues_a_prompt_given_as_path_bytes_or_score(pipe, real_midi_paths):
    path = real_midi_paths[0]
    tok = pipe.tokenizer
    prompt_score = tok.decode_midi(cut_bars(tok, tok.encode_score(path), 2))
    expected = note_tuples(prompt_score)
    assert expected
    results = pipe([str(path), path.read_bytes(), symusic.Score(str(path))], prompt_bars=2, max_new_tokens=48,
                   seed=2)
    assert len(results) == 3
    first = note_tuples(results[0][0]["score"])
    for result in results:
        got = note_tuples(result[0]["score"])
        assert got == first  # the same prompt however it is given, the same seed
        assert not expected - got, "the prompt's notes are not all in the output"
        assert sum(got.values()) > sum(expected.values()), "nothing was added to the prompt"
        last_prompt_onset = max(t for t, *_ in expected)
        assert all(t >= last_prompt_onset for t, *_ in (got - expected)), "new notes start before the prompt ends"
    ids = pipe(str(path), prompt_bars=2, max_new_tokens=16, seed=2, return_type="ids")[0]["token_ids"]
    prompt_ids = cut_bars(tok, tok.encode_score(path), 2)
    # BOS, the prompt's timing (generate_music's default: the chorale is written on the grid), the repetition (two
    # bars say too little: the model's most likely one after BOS and the timing), the prompt; each control once
    head = [tok.bos_token_id, *tok.control_ids({"timing": "score"})]
    repetition = default_repetition(pipe.model, tok, None, prompt_ids, head)
    assert len(repetition) == 1 and tok.convert_ids_to_tokens(repetition[0]).startswith("Repetition_")
    assert ids[: 3 + len(prompt_ids)] == [*head, *repetition, *prompt_ids]


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(return_type="wav"), ValueError, r"return_type must be one of \('score', 'midi', 'ids'\)"),
    (dict(genre="jazz"), ValueError, r"unknown genre 'jazz'.*'chorale'"),
    (dict(genre=42), ValueError, "genre id 42"),
    (dict(max_new_tokens=0), ValueError, "max_new_tokens must be a positive integer"),
    (dict(num_return_sequences=-1), ValueError, "num_return_sequences must be a positive integer"),
    (dict(temperature=0.0), ValueError, "temperature must be a positive number"),
    (dict(prompt_bars=0), ValueError, "prompt_bars must be a positive integer"),
    (dict(time_signature="11/7"), ValueError, "time signature 11/7 is not in this tokenizer's vocabulary"),
    (dict(no_such_option=1), ValueError, "no_such_option"),
    (dict(batch_size=4), ValueError, "one input at a time"),
])
def test_pipeline_bad_arguments_raise_clear_errors(pipe, kwargs, error, match):
    with pytest.raises(error, match=match):
        pipe(**{"max_new_tokens": 4, **kwargs})


def test_pipeline_bad_prompt_names_the_file(pipe, tmp_path):
    with pytest.raises(music_hf.MusicFileError, match="no such file"):
        pipe(str(tmp_path / "missing.mid"))
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"not midi")
    with pytest.raises(music_hf.MusicFileError, match="bad.mid: not a MIDI file"):
        pipe(str(bad))


def test_pipeline_needs_a_music_tokenizer(pipe):
    with pytest.raises(ValueError, match="needs a MusicTokenizer"):
        MusicGenerationPipeline(model=pipe.model, tokenizer=None, device="cpu")


REMOTE_PIPELINE_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.modules["music_hf"] = None  # the package cannot be imported here: only the files saved with the pipeline
    try:
        import music_hf
    except ImportError:
        pass
    else:
        raise SystemExit("music_hf is importable in the subprocess")
    from transformers import pipeline
    pipe = pipeline(model="saved", device="cpu", trust_remote_code=True)  # the task comes from the config
    assert type(pipe).__name__ == "MusicGenerationPipeline", type(pipe)
    assert type(pipe).__module__.startswith("transformers_modules"), type(pipe).__module__
    ids = pipe(max_new_tokens=32, seed=3, return_type="ids")[0]["token_ids"]
    assert ids == json.load(open("expected.json")), ids
    assert pipe(max_new_tokens=32, seed=3)[0]["score"].note_num() > 0
    print("REMOTE PIPELINE OK")
""")


def test_saved_pipeline_loads_with_trust_remote_code_without_music_hf(tokenizer, tmp_path):
    torch.manual_seed(0)
    model = MusicForCausalLM(tiny_config(tokenizer))
    pipe = pipeline("music-generation", model=model, tokenizer=tokenizer, device="cpu")
    pipe.save_pretrained(tmp_path / "saved")  # model, tokenizer, config.custom_pipelines and the code
    assert {"pipelines.py", "generation.py", "modeling_music.py", "tokenization_music.py"} <= \
        {p.name for p in (tmp_path / "saved").iterdir()}
    expected = pipe(max_new_tokens=32, seed=3, return_type="ids")[0]["token_ids"]
    (tmp_path / "expected.json").write_text(json.dumps(expected))
    (tmp_path / "remote.py").write_text(REMOTE_PIPELINE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "remote.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0 and "REMOTE PIPELINE OK" in proc.stdout, proc.stdout + proc.stderr[-3000:]
