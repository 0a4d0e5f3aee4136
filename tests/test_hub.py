"""Publishing to the Hub, offline: the real push code runs with HfApi's network methods patched to record what
they get; the recorded files are then loaded back, from a folder and by repo id (from an HF cache laid out as a
download leaves it, with HF_HUB_OFFLINE=1), in fresh processes with and without the music_hf package.

The model is real: the tiny config trained for 10 steps by scripts/train.py (with --push_to_hub, so the same
run proves that training ends with `push_model_dir`). A live test (`-m hub`, MUSIC_HF_LIVE_HUB=1 and HF_TOKEN)
pushes to a private repo, loads it back and deletes it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
from huggingface_hub import HfApi, ModelCard, RepoUrl

import music_hf
from music_hf.hub import (CODE_FILES, InvalidRepoIdError, MissingTokenError, ModelDirError, build_model_card,
                          push_model_dir, resolve_token, upload_operations, validate_model_dir, validate_repo_id)

ROOT = Path(__file__).resolve().parents[1]
REPO_ID = "music-hf-tests/tiny-music"
EXPECTED_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer_config.json",
                  "miditok_config.json", "configuration_music.py", "modeling_music.py", "tokenization_music.py",
                  "training_results.json", "README.md"}
JUNK = ("train_log.jsonl", "optimizer.bin", "random_states_0.pkl", "checkpoints/step_10/model.safetensors",
        "logs/events.out.tfevents.1")

# scripts/train.py, run as a script, with the two HfApi calls a push makes replaced by recorders
TRAIN_WITH_RECORDED_HUB = r"""
import json, runpy, sys
from huggingface_hub import HfApi, RepoUrl
record, calls = sys.argv[1], []
def save():
    with open(record, "w") as f:
        json.dump(calls, f)
def create_repo(self, repo_id, **kwargs):
    calls.append({"call": "create_repo", "repo_id": repo_id, "private": kwargs.get("private"),
                  "exist_ok": kwargs.get("exist_ok")})
    save()
    return RepoUrl(f"https://huggingface.co/{repo_id}")
def create_commit(self, repo_id, operations, **kwargs):
    calls.append({"call": "create_commit", "repo_id": repo_id, "files": sorted(op.path_in_repo for op in operations)})
    save()
HfApi.create_repo, HfApi.create_commit = create_repo, create_commit
sys.argv = ["scripts/train.py", *sys.argv[2:]]
runpy.run_path("scripts/train.py", run_name="__main__")
"""

# greedy continuation of a fixed MIDI prompt: run here on the original model and in the fresh processes
GREEDY = r"""
def greedy(model, tokenizer, midi_path, new_tokens=24):
    import torch
    ids = tokenizer(str(midi_path))["input_ids"]
    prompt = torch.tensor([ids[:-1]])  # BOS + the piece, without EOS
    out = model.eval().generate(prompt, attention_mask=torch.ones_like(prompt), genre_ids=torch.tensor([1]),
                                do_sample=False, max_new_tokens=new_tokens, pad_token_id=tokenizer.pad_token_id)
    return {"encoded": ids, "tokens": out[0].tolist()}
"""
exec(GREEDY)

# a fresh interpreter: loads the published files from a folder and by repo id, then runs a README snippet
LOAD_AND_GENERATE = GREEDY + r"""
import json, sys
mode, folder, repo_id, midi, snippet, result_file = sys.argv[1:]
result = {}
if mode == "remote":  # the package cannot be imported: only the code in the repository can serve
    sys.modules["music_hf"] = None
    try:
        import music_hf
        result["music_hf_blocked"] = False
    except ImportError:
        result["music_hf_blocked"] = True
else:
    import music_hf  # registers the Auto classes, as the README's first snippet does
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.set_num_threads(1)
kwargs = {"trust_remote_code": True} if mode == "remote" else {}
for key, source in (("folder", folder), ("repo_id", repo_id)):
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    result[key] = greedy(model, tokenizer, midi)
    result[key]["classes"] = [type(model).__module__, type(tokenizer).__module__]
with open(snippet) as f:
    exec(compile(f.read(), "README.md snippet", "exec"), {"__name__": "__main__"})
with open(result_file, "w") as f:
    json.dump(result, f)
"""


def write_prompt_midi(path: Path) -> Path:
    import symusic

    score = symusic.Score(480)
    track = symusic.Track(program=0)
    for i, pitch in enumerate([60, 62, 64, 65, 67, 65, 64, 62]):
        track.notes.append(symusic.Note(i * 240, 240, pitch, 80))
    score.tracks.append(track)
    score.dump_midi(str(path))
    return path


def operation_bytes(op) -> bytes:
    content = op.path_or_fileobj
    return content if isinstance(content, bytes) else Path(content).read_bytes()


def place_in_hub_cache(cache: Path, repo_id: str, files: dict[str, bytes]) -> str:
    """Lay `files` out as `hf_hub_download` leaves a downloaded repo: refs/main -> snapshots/<revision>/."""
    revision = hashlib.sha1(b"".join(files[name] for name in sorted(files))).hexdigest()
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(revision)
    return revision


class RecordedHub:
    """Replaces HfApi.create_repo / create_commit (on the class) with recorders; nothing leaves the machine."""

    def __init__(self, mp: pytest.MonkeyPatch):
        self.calls: list[tuple[str, str, dict]] = []
        hub = self

        def create_repo(self, repo_id, **kwargs):
            hub.calls.append(("create_repo", repo_id, kwargs))
            return RepoUrl(f"https://huggingface.co/{repo_id}")

        def create_commit(self, repo_id, operations, **kwargs):
            hub.calls.append(("create_commit", repo_id, {**kwargs, "operations": list(operations)}))

        mp.setattr(HfApi, "create_repo", create_repo)
        mp.setattr(HfApi, "create_commit", create_commit)

    @property
    def commits(self) -> list[dict]:
        return [kwargs for call, _, kwargs in self.calls if call == "create_commit"]


# ----- fixtures -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """scripts/train.py with the tiny config, 10 steps, `--push_to_hub` against the recording HfApi."""
    out = tmp_path_factory.mktemp("hub_train")
    record = out / "hub_calls.json"
    env = {**os.environ, "HF_TOKEN": "hf_test_token_not_real"}
    proc = subprocess.run(
        [sys.executable, "-c", TRAIN_WITH_RECORDED_HUB, str(record), "--config", "scripts/configs/tiny.yaml",
         "--output_dir", str(out / "run"), "--log_with", "none", "--max_steps", "10",
         "--push_to_hub", REPO_ID, "--hub_private", "true"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    final = out / "run"
    assert (final / "config.json").is_file(), proc.stdout[-2000:] + proc.stderr[-4000:]
    calls = json.loads(record.read_text()) if record.is_file() else None
    return SimpleNamespace(final=final, run=out / "run", proc=proc, calls=calls)


@pytest.fixture(scope="module")
def pushed(trained: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """One `push_model_dir` of the trained folder plus junk, recorded; its files written out as a folder
    and as an HF cache entry for REPO_ID."""
    tmp = tmp_path_factory.mktemp("hub_push")
    model_dir = tmp / "model"
    shutil.copytree(trained.final, model_dir)
    for junk in JUNK:
        (model_dir / junk).parent.mkdir(parents=True, exist_ok=True)
        (model_dir / junk).write_bytes(b"junk")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_TOKEN", "hf_test_token_not_real")
        hub = RecordedHub(mp)
        url = push_model_dir(model_dir, REPO_ID)
    operations = hub.commits[0]["operations"]
    files = {op.path_in_repo: operation_bytes(op) for op in operations}
    folder = tmp / "downloaded"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    cache = tmp / "hf_cache"
    place_in_hub_cache(cache, REPO_ID, files)
    return SimpleNamespace(model_dir=model_dir, url=url, calls=hub.calls, operations=operations, files=files,
                           folder=folder, cache=cache, card=ModelCard(files["README.md"].decode()))


@pytest.fixture(scope="module")
def prompt_midi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_prompt_midi(tmp_path_factory.mktemp("hub_prompt") / "prompt.mid")


@pytest.fixture(scope="module")
def reference(trained: SimpleNamespace, prompt_midi: Path) -> dict:
    """Greedy tokens of the model as train.py saved it, loaded here with the package."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return greedy(AutoModelForCausalLM.from_pretrained(trained.final), AutoTokenizer.from_pretrained(trained.final),
                  prompt_midi)


def readme_snippets(card: ModelCard) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card.text, flags=re.S)


@pytest.fixture(scope="module")
def loaded(pushed: SimpleNamespace, prompt_midi: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Both fresh processes (with the package / without it, trust_remote_code), run side by side."""
    tmp = tmp_path_factory.mktemp("hub_load")
    snippets = readme_snippets(pushed.card)
    assert len(snippets) == 2, pushed.card.text
    procs = {}
    for mode, snippet in (("package", snippets[0]), ("remote", snippets[1])):
        workdir = tmp / mode
        workdir.mkdir()
        (workdir / "snippet.py").write_text(snippet)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp / "hf_home"), HF_HUB_CACHE=str(pushed.cache),
                   HF_MODULES_CACHE=str(workdir / "modules"), OMP_NUM_THREADS="1")
        procs[mode] = (workdir, subprocess.Popen(
            [sys.executable, "-c", LOAD_AND_GENERATE, mode, str(pushed.folder), REPO_ID, str(prompt_midi),
             str(workdir / "snippet.py"), str(workdir / "result.json")],
            cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    results = {}
    for mode, (workdir, proc) in procs.items():
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{mode} process failed:\n{output[-5000:]}"
        results[mode] = {**json.loads((workdir / "result.json").read_text()), "workdir": workdir, "output": output}
    return results


@pytest.fixture
def recorded_hub(monkeypatch: pytest.MonkeyPatch) -> RecordedHub:
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_not_real")
    return RecordedHub(monkeypatch)


@pytest.fixture
def model_copy(trained: SimpleNamespace, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained.final, tmp_path / "model"))


# ----- the push -------------------------------------------------------------------------------------------
def test_push_creates_repo_then_uploads_exactly_the_model_files_in_one_commit(pushed: SimpleNamespace) -> None:
    assert pushed.url == f"https://huggingface.co/{REPO_ID}"
    assert [(call, repo) for call, repo, _ in pushed.calls] == [("create_repo", REPO_ID), ("create_commit", REPO_ID)]
    create_kwargs = pushed.calls[0][2]
    assert create_kwargs["exist_ok"] is True and create_kwargs["private"] is False
    assert {op.path_in_repo for op in pushed.operations} == EXPECTED_FILES  # no checkpoints, logs, .bin, .pkl
    assert len(pushed.operations) == len(EXPECTED_FILES)
    for name in EXPECTED_FILES - {"README.md"}:  # the folder's own files, byte for byte
        assert pushed.files[name] == (pushed.model_dir / name).read_bytes(), name


def test_uploaded_config_and_tokenizer_map_the_auto_classes_to_the_uploaded_code(pushed: SimpleNamespace) -> None:
    config = json.loads(pushed.files["config.json"])
    assert config["auto_map"] == {"AutoConfig": "configuration_music.MusicConfig",
                                  "AutoModelForCausalLM": "modeling_music.MusicForCausalLM"}
    tok = json.loads(pushed.files["tokenizer_config.json"])
    assert tok["auto_map"]["AutoTokenizer"][0] == "tokenization_music.MusicTokenizer"
    assert all(name in pushed.files for name in CODE_FILES)


def test_card_metadata_has_library_tags_pipeline_and_the_saved_eval_results(pushed: SimpleNamespace,
                                                                            trained: SimpleNamespace) -> None:
    data = pushed.card.data
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "text-generation"
    assert {"midi", "music", "symbolic-music", "music-generation", "music-hf"} <= set(data.tags)
    saved = json.loads((trained.final / "training_results.json").read_text())["eval"]
    results = {r.metric_type: r for r in data.eval_results}
    assert {k: r.metric_value for k, r in results.items()} == {
        "loss": saved["loss"], "perplexity": saved["perplexity"], "nll_per_note": saved["nll_per_note"],
        "accuracy": saved["accuracy"]}
    assert all(r.task_type == "text-generation" and r.dataset_split == "validation" for r in results.values())
    model_index = data.to_dict()["model-index"]
    assert model_index[0]["name"] == REPO_ID.split("/")[1]


def test_card_text_describes_model_tokenizer_genres_data_and_usage(pushed: SimpleNamespace,
                                                                  trained: SimpleNamespace) -> None:
    text = pushed.card.text
    config = json.loads((trained.final / "config.json").read_text())
    results = json.loads((trained.final / "training_results.json").read_text())
    assert f"| hidden size / layers / heads | {config['hidden_size']} / {config['num_hidden_layers']} / " \
           f"{config['num_attention_heads']} |" in text
    assert f"| parameters | {results['parameters']:,} |" in text  # counted from the safetensors file
    assert "note on, instrument on, temporal on, genre on" in text
    assert f"{config['vocab_size']} tokens, BPE off" in text
    for i, genre in config["id2genre"].items():
        assert f"| {i} | {genre} |" in text
    assert "music21" in text and "`bach`, `essenFolksong`" in text
    assert f"| train | {results['data']['pieces']['train']} |" in text
    assert f"{results['steps']} optimizer steps" in text
    assert "## Limitations" in text and "Western classical and folk" in text and "no lyrics" in text
    package, remote = readme_snippets(pushed.card)
    assert "import music_hf" in package and "generate_midi(" in package
    assert f'AutoModelForCausalLM.from_pretrained("{REPO_ID}")' in package
    assert f'AutoTokenizer.from_pretrained("{REPO_ID}")' in package
    assert "music_hf" not in remote
    assert f'AutoModelForCausalLM.from_pretrained("{REPO_ID}", trust_remote_code=True)' in remote


# ----- loading what was pushed ----------------------------------------------------------------------------
def test_pushed_files_load_with_the_package_from_folder_and_repo_id_and_generate_the_same(
        loaded: dict, reference: dict) -> None:
    result = loaded["package"]
    for source in ("folder", "repo_id"):
        assert result[source]["classes"] == ["music_hf.modeling_music", "music_hf.tokenization_music"]
        assert result[source]["encoded"] == reference["encoded"]
        assert result[source]["tokens"] == reference["tokens"], source
    assert len(reference["tokens"]) > len(reference["encoded"]) - 1  # it did generate


def test_pushed_files_load_without_the_package_through_trust_remote_code(loaded: dict, reference: dict) -> None:
    result = loaded["remote"]
    assert result["music_hf_blocked"] is True
    for source in ("folder", "repo_id"):
        model_module, tokenizer_module = result[source]["classes"]
        assert model_module.startswith("transformers_modules.") and model_module.endswith(".modeling_music")
        assert tokenizer_module.startswith("transformers_modules.")
        assert result[source]["encoded"] == reference["encoded"]
        assert result[source]["tokens"] == reference["tokens"], source


def test_readme_usage_snippets_run_as_pasted(loaded: dict) -> None:
    import symusic

    for mode in ("package", "remote"):
        midi = loaded[mode]["workdir"] / "generated.mid"
        assert midi.is_file() and midi.stat().st_size > 0, loaded[mode]["output"][-3000:]
        symusic.Score(str(midi))  # a readable MIDI file
        assert "notes written to generated.mid" in loaded[mode]["output"]


# ----- scripts/train.py --push_to_hub ---------------------------------------------------------------------
def test_train_push_to_hub_pushes_the_final_folder(trained: SimpleNamespace) -> None:
    assert trained.proc.returncode == 0, trained.proc.stderr[-4000:]
    assert trained.calls == [
        {"call": "create_repo", "repo_id": REPO_ID, "private": True, "exist_ok": True},
        {"call": "create_commit", "repo_id": REPO_ID, "files": sorted(EXPECTED_FILES)},
    ]


# ----- what is uploaded, case by case ---------------------------------------------------------------------
def test_folder_without_the_code_or_auto_map_save_pretrained_writes_is_refused(model_copy: Path,
                                                                               recorded_hub: RecordedHub) -> None:
    (model_copy / "tokenization_music.py").unlink()
    with pytest.raises(ModelDirError, match=r"missing tokenization_music\.py \(named in tokenizer_config\.json"):
        push_model_dir(model_copy, REPO_ID)
    config = json.loads((model_copy / "config.json").read_text())
    del config["auto_map"]
    (model_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match=r"config\.json has no auto_map entry for AutoConfig, "
                                            r"AutoModelForCausalLM.*save_pretrained.*import music_hf"):
        upload_operations(model_copy, REPO_ID)
    assert recorded_hub.calls == []


def test_card_without_training_results_has_no_invented_numbers(model_copy: Path) -> None:
    (model_copy / "training_results.json").unlink()
    card = build_model_card(model_copy, REPO_ID)
    assert not card.data.eval_results and "model-index" not in card.data.to_dict()
    assert "## Evaluation" not in card.text and "## Training data" not in card.text
    assert "## Usage" in card.text and "## Genres" in card.text


def test_card_says_what_a_run_continued_from_and_its_composition_training(model_copy: Path) -> None:
    results = json.loads((model_copy / "training_results.json").read_text())
    card = build_model_card(model_copy, REPO_ID)
    assert "Continued from" not in card.text and "Composition training" not in card.text  # a run from scratch
    results["config"].update(init_from="outputs/stage-one", fim_rate=0.5, fim_order="spm", control_dropout=0.5,
                             genre_dropout=0.1)
    (model_copy / "training_results.json").write_text(json.dumps(results))
    card = build_model_card(model_copy, REPO_ID)
    assert "Continued from the weights in `outputs/stage-one`" in card.text
    assert ("fill-in-the-middle windows at rate 0.5 in the spm layout, control dropout 0.5, genre dropout 0.1"
            in card.text)
    results["config"].update(fim_max_bars=8)
    (model_copy / "training_results.json").write_text(json.dumps(results))
    assert ("fill-in-the-middle windows at rate 0.5 in the spm layout (at most 8 bars left out), control dropout 0.5"
            in build_model_card(model_copy, REPO_ID).text)


def test_gpt2_baseline_folder_is_published_with_the_tokenizer_code(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = music_hf.MusicTokenizer()
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=16, n_layer=1, n_head=2))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    files = {op.path_in_repo: operation_bytes(op) for op in upload_operations(tmp_path, REPO_ID)}
    assert "tokenization_music.py" in files and "auto_map" not in json.loads(files["config.json"])
    assert "modeling_music.py" not in files  # only the code that save_pretrained wrote: the tokenizer's
    card = ModelCard(files["README.md"].decode())
    assert "GPT2LMHeadModel" in card.text and "genre_ids" not in card.text


# ----- clear errors ---------------------------------------------------------------------------------------
def test_missing_token_says_how_to_log_in(monkeypatch: pytest.MonkeyPatch, trained: SimpleNamespace) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    hub = RecordedHub(monkeypatch)
    with pytest.raises(MissingTokenError, match=r"hf auth login.*HF_TOKEN"):
        resolve_token()
    with pytest.raises(MissingTokenError):
        push_model_dir(trained.final, REPO_ID)
    assert hub.calls == []


def test_token_comes_from_argument_then_env_then_saved_login(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    (tmp_path / "token").write_text("hf_saved")  # what `hf auth login` saves
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    assert resolve_token() == "hf_saved"
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    assert resolve_token() == "hf_env"
    assert resolve_token("hf_arg") == "hf_arg"


@pytest.mark.parametrize("repo_id", ["no slash", "noslash", "bad//id", "x" * 200, "org/na--me", "org/name.git",
                                     "a/b/c", ""])
def test_invalid_repo_ids_are_refused_before_any_upload(repo_id: str, recorded_hub: RecordedHub,
                                                        trained: SimpleNamespace) -> None:
    with pytest.raises(InvalidRepoIdError, match="invalid repo id"):
        validate_repo_id(repo_id)
    with pytest.raises(InvalidRepoIdError):
        push_model_dir(trained.final, repo_id)
    assert recorded_hub.calls == []


def test_valid_repo_id_passes() -> None:
    assert validate_repo_id("my-user/music.model_v2") == "my-user/music.model_v2"


def test_model_saved_without_tokenizer_is_refused(model_copy: Path, recorded_hub: RecordedHub) -> None:
    (model_copy / "tokenizer_config.json").unlink()
    (model_copy / "miditok_config.json").unlink()
    missing = r"without its tokenizer.*tokenizer_config\.json, miditok_config\.json"
    with pytest.raises(ModelDirError, match=missing) as e:
        push_model_dir(model_copy, REPO_ID)
    assert str(model_copy) in str(e.value)
    assert recorded_hub.calls == []


def test_pickled_weights_are_refused(model_copy: Path, recorded_hub: RecordedHub) -> None:
    (model_copy / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelDirError, match=r"pickled weights \(pytorch_model\.bin\).*safetensors"):
        push_model_dir(model_copy, REPO_ID)
    assert recorded_hub.calls == []


def test_folder_without_weights_or_config_is_refused(model_copy: Path, trained: SimpleNamespace) -> None:
    (model_copy / "model.safetensors").unlink()
    with pytest.raises(ModelDirError, match=r"no model: missing model\.safetensors"):
        validate_model_dir(model_copy)
    (model_copy / "config.json").unlink()
    with pytest.raises(ModelDirError, match=r"missing config\.json, model\.safetensors"):
        validate_model_dir(model_copy)
    run = model_copy.parent / "unfinished_run"
    (run / "checkpoint-10").mkdir(parents=True)
    with pytest.raises(ModelDirError, match=r"only checkpoints so far: checkpoint-10"):
        validate_model_dir(run)  # a run that has not finished: no final model in its output folder yet
    with pytest.raises(ModelDirError, match="no such folder"):
        validate_model_dir(model_copy / "nope")


# ----- scripts/push_to_hub.py -----------------------------------------------------------------------------
def load_push_script():
    spec = importlib.util.spec_from_file_location("push_to_hub_script", ROOT / "scripts" / "push_to_hub.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_push_script_prints_the_url(trained: SimpleNamespace, recorded_hub: RecordedHub,
                                    capsys: pytest.CaptureFixture) -> None:
    code = load_push_script().main(["--model_dir", str(trained.final), "--repo_id", REPO_ID, "--private"])
    assert code == 0
    assert capsys.readouterr().out.strip() == f"https://huggingface.co/{REPO_ID}"
    assert recorded_hub.calls[0][2]["private"] is True and len(recorded_hub.commits) == 1


@pytest.mark.parametrize("case", ["repo_id", "token", "tokenizer"])
def test_push_script_errors_are_one_line_with_exit_code_2(case: str, model_copy: Path, recorded_hub: RecordedHub,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    repo_id = "not a repo" if case == "repo_id" else REPO_ID
    if case == "token":
        monkeypatch.delenv("HF_TOKEN")
        monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    if case == "tokenizer":
        (model_copy / "miditok_config.json").unlink()
    code = load_push_script().main(["--model_dir", str(model_copy), "--repo_id", repo_id])
    err = capsys.readouterr().err.strip()
    assert code == 2 and recorded_hub.calls == []
    assert err.startswith("error: ") and "\n" not in err
    assert {"repo_id": "namespace/name", "token": "hf auth login", "tokenizer": "miditok_config.json"}[case] in err


# ----- the live Hub (opt-in) ------------------------------------------------------------------------------
@pytest.mark.hub
@pytest.mark.skipif(os.environ.get("MUSIC_HF_LIVE_HUB") != "1" or not os.environ.get("HF_TOKEN"),
                    reason="live Hub test: set MUSIC_HF_LIVE_HUB=1 and HF_TOKEN")
def test_live_push_to_private_repo_and_load_back(trained: SimpleNamespace, reference: dict, prompt_midi: Path,
                                                 tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    api = HfApi(token=os.environ["HF_TOKEN"])
    repo_id = f"{api.whoami()['name']}/music-hf-test-{uuid.uuid4().hex[:8]}"
    try:
        url = push_model_dir(trained.final, repo_id, private=True)
        assert url.endswith(repo_id)
        assert api.repo_info(repo_id).private
        assert EXPECTED_FILES <= set(api.list_repo_files(repo_id))
        model = AutoModelForCausalLM.from_pretrained(repo_id, cache_dir=tmp_path)
        tokenizer = AutoTokenizer.from_pretrained(repo_id, cache_dir=tmp_path)
        assert greedy(model, tokenizer, prompt_midi) == reference
        card = ModelCard.load(repo_id, token=os.environ["HF_TOKEN"])
        assert card.data.library_name == "transformers"
    finally:
        api.delete_repo(repo_id, missing_ok=True)

