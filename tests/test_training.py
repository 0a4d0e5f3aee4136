"""Tests for music_hf.training and `music-hf train` (scripts/train.py): settings parsing, optimizer groups and
schedule, and real training runs (subprocesses on the tiny config): 2 CPU processes through `accelerate launch`,
gradient accumulation, stop/resume and SIGKILL/resume equal to an unbroken run, and the model in output_dir."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import PreTrainedConfig

import music_hf  # noqa: F401  (registers the Auto classes)
from music_hf.cli import main as cli_main
from music_hf.cli import parse_train_args
from music_hf.configuration_music import MusicConfig
from music_hf.tokenization_music import MusicTokenizer
from music_hf.data import MusicDataCollator
from music_hf.modeling_music import MusicForCausalLM
from music_hf.training import (SET_BY_TOKENIZER, EpochSampler, ModelArguments, TrainConfig, build_datasets,
                               build_model, evaluate, lr_scheduler, parameter_groups)

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "scripts" / "train.py"
TINY = REPO / "scripts" / "configs" / "tiny.yaml"
FSDP_CPU = REPO / "scripts" / "configs" / "accelerate" / "fsdp_cpu.yaml"
RUN_TIMEOUT = 480


# ----- settings parsing ---------------------------------------------------------------------------------
def test_command_line_values_are_typed_by_field():
    cfg, _ = parse_train_args([
        "--max_steps", "8", "--learning_rate", "3e-3", "--pack", "true", "--use_genre_embedding=false",
        "--corpus_collections", "bach,essenFolksong", "--max_pieces_per_collection", "none",
        "--output_dir=out/run=1", "--hf_genre_column", "null", "--eval_max_batches", "4", "--overlap=0",
        "--gradient_checkpointing", "1", "--hub_private", "no", "--log_with", "none", "--top_k", "20",
    ])
    assert (cfg.training.max_steps, cfg.training.learning_rate, cfg.data.pack) == (8, 3e-3, True)
    assert type(cfg.training.max_steps) is int and type(cfg.training.learning_rate) is float
    assert cfg.model.settings() == {"use_genre_embedding": False}  # only what was given goes to MusicConfig
    assert cfg.data.corpus_collections == ["bach", "essenFolksong"]
    assert cfg.data.max_pieces_per_collection is None and cfg.data.hf_genre_column is None
    assert (cfg.training.output_dir, cfg.training.eval_max_batches, cfg.data.overlap) == ("out/run=1", 4, 0)
    assert cfg.training.gradient_checkpointing is True and cfg.training.hub_private is False
    assert cfg.training.log_with is None and cfg.sampling.top_k == 20
    assert parse_train_args(["--corpus_collections", "bach", "palestrina"])[0].data.corpus_collections == \
        ["bach", "palestrina"]


@pytest.mark.parametrize("argv, message", [
    (["--max_step", "8"], "unrecognized arguments: --max_step 8"),  # no abbreviations
    (["--max_steps"], "argument --max_steps/--max-steps: expected one argument"),
    (["--pack", "maybe"], "argument --pack: Truthy value expected: got maybe"),
    (["stray"], "unrecognized arguments: stray"),
    (["--max_steps", "eight"], "argument --max_steps/--max-steps: invalid int value: 'eight'"),
    (["--eval_max_batches", "all"], "invalid int value: 'all'"),  # optional: a number or none
    (["--architecture", "gpt3"], "argument --architecture: invalid choice: 'gpt3'"),
])
def test_unknown_and_malformed_options_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_train_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_yaml_config_with_an_unknown_key_names_the_file_and_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_steps: 5\nlearning_rte: 0.1\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: unknown config key\(s\) \['learning_rte'\]"):
        TrainConfig.from_yaml(bad)
    with pytest.raises(SystemExit):
        parse_train_args(["--config", str(bad)])
    assert "unknown config key(s) ['learning_rte']" in capsys.readouterr().err
    bad.write_text("model:\n  hidden_size: 8\n  hidden_sze: 8\n")
    with pytest.raises(ValueError, match=r"unknown model setting\(s\) \['hidden_sze'\] under `model:`; "
                                         r"MusicConfig settings are: .*hidden_size"):
        TrainConfig.from_yaml(bad)
    bad.write_text("hidden_size: 8\n")
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['hidden_size'\] \(model settings go "
                                         r"under `model:`\)"):
        TrainConfig.from_yaml(bad)


def test_command_line_overrides_win_over_the_yaml_file():
    cfg, session = parse_train_args(["--config", str(TINY), "--max_steps", "3", "--stop_after", "2", "--resume",
                                     "--hidden_size", "48"])
    assert (session.stop_after, session.resume) == (2, "latest")
    assert (cfg.training.max_steps, cfg.model.hidden_size) == (3, 48)
    assert cfg.data.corpus_collections == ["bach", "essenFolksong"] and cfg.data.max_length == 128  # the YAML's
    assert cfg.model.num_hidden_layers == 2 and cfg.model.norm_type is None  # YAML `model:`; unset
    _, session = parse_train_args(["--config", str(TINY), "--resume", "ckpt/checkpoint-4"])
    assert session.resume == "ckpt/checkpoint-4"
    assert parse_train_args(["--config", str(TINY)])[0] == TrainConfig.from_yaml(TINY)
    assert TrainConfig.from_dict(TrainConfig.from_yaml(TINY).to_dict()) == TrainConfig.from_yaml(TINY)


def test_model_settings_are_musicconfig_fields_passed_to_from_tokenizer(tokenizer):
    """A MusicConfig field is a model setting (YAML `model:`, command line) without a second edit."""
    inherited = {f.name for f in dataclasses.fields(PreTrainedConfig)}
    own = {f.name for f in dataclasses.fields(MusicConfig)} - inherited
    assert {f.name for f in dataclasses.fields(ModelArguments)} == own - SET_BY_TOKENIZER
    cfg, _ = parse_train_args(["--config", str(TINY), "--norm_eps", "1e-6", "--rope_theta", "500",
                               "--max_bars", "64", "--mlp_bias", "false"])
    config = build_model(cfg, tokenizer, ["unknown", "chorale"]).config
    assert (config.norm_eps, config.rope_theta, config.max_bars, config.mlp_bias) == (1e-6, 500.0, 64, False)
    assert config.hidden_size == 32 and config.id2genre == {0: "unknown", 1: "chorale"}
    # unset settings keep MusicConfig's defaults and from_tokenizer's own choices
    default = MusicConfig.from_tokenizer(tokenizer)
    assert (config.num_positions_in_bar, config.norm_type, config.vocab_size) == \
        (default.num_positions_in_bar, MusicConfig().norm_type, len(tokenizer))


def test_help_lists_every_setting_with_its_help(capsys):
    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for section in TrainConfig.argument_types():
        for f in dataclasses.fields(section):
            assert f"--{f.name}" in text and " ".join(f.metadata["help"].split()) in text, f.name
    for option in ("--config", "--stop_after", "--resume"):
        assert option in text
    assert '[project.scripts]\nmusic-hf = "music_hf.cli:main"' in (REPO / "pyproject.toml").read_text()


def test_schedule_is_transformers_cosine_with_min_lr():
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = lr_scheduler(optimizer, warmup_steps=4, max_steps=12, min_lr_rate=0.1)
    lrs = []
    for _ in range(13):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[:5] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])  # linear warmup
    assert lrs[8] == pytest.approx(0.2 + 1.8 * 0.5) and lrs[12] == pytest.approx(0.2)  # cosine down to 10%
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))


# ----- optimizer groups and sampler ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    return MusicTokenizer()


@pytest.mark.parametrize("norm_type", ["layernorm", "rmsnorm", "batchnorm"])
def test_parameter_groups_decay_only_linear_and_conv_weights(tokenizer, norm_type):
    cfg = TrainConfig.from_yaml(TINY).replace(conv_kernel_size=3, norm_type=norm_type)
    model = build_model(cfg, tokenizer, ["unknown", "chorale"])
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied
    decay, no_decay = parameter_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    ids = [id(p) for p in decay["params"] + no_decay["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))  # each once, the tied head included
    decayed = {id(p) for p in decay["params"]}
    expected = set()
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d)) and module.weight is not model.get_input_embeddings().weight:
            expected.add(id(module.weight))
    assert decayed == expected and expected
    names = {id(p): n for n, p in model.named_parameters()}
    for p in no_decay["params"]:
        name = names[id(p)]
        assert name.endswith("bias") or "norm" in name or "embed" in name, name
    assert any("conv" in names[i] for i in decayed)


def test_parameter_groups_for_the_gpt2_baseline(tokenizer):
    model = build_model(TrainConfig.from_yaml(TINY).replace(architecture="gpt2"), tokenizer, ["unknown"])
    decay, no_decay = parameter_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in decay["params"]} == {
        n for n, p in model.named_parameters() if n.endswith(("attn.c_attn.weight", "attn.c_proj.weight",
                                                               "mlp.c_fc.weight", "mlp.c_proj.weight"))}
    assert {"transformer.wte.weight", "transformer.wpe.weight"} <= {names[id(p)] for p in no_decay["params"]}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_epoch_sampler_is_seeded_and_keeps_whole_global_batches():
    sampler = EpochSampler(113, seed=0, multiple_of=24)
    first = list(sampler)
    assert len(first) == len(sampler) == 96 and len(set(first)) == 96
    assert list(EpochSampler(113, seed=0, multiple_of=24)) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert len(EpochSampler(10, multiple_of=24)) == 0
    assert sorted(EpochSampler(7)) == list(range(7))


class _OtherProcess:
    """An accelerator stand-in for `evaluate(lockstep=True)`: one other process with `batches` evaluation batches
    (`reduce` of the has-a-batch flag adds its own; the final sums are returned as they are)."""

    device = torch.device("cpu")

    def __init__(self, batches: int):
        self.left = batches

    def reduce(self, tensor: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        if tensor.numel() > 1:
            return tensor
        self.left -= 1
        return tensor + float(self.left >= 0)


def test_lockstep_evaluation_joins_the_forward_passes_of_longer_shards(tokenizer):
    """With sharded weights (FSDP) every forward pass is collective: a process whose evaluation shard is shorter
    runs uncounted forward passes while another process still evaluates, then all stop together."""
    model = build_model(TrainConfig.from_yaml(TINY), tokenizer, ["unknown"]).eval()
    shapes = []
    model.register_forward_hook(lambda m, args, kwargs, out: shapes.append(tuple(kwargs["input_ids"].shape)),
                                with_kwargs=True)
    collate = MusicDataCollator(tokenizer.pad_token_id)
    batches = [collate([{"input_ids": list(range(4, 4 + n)), "genre_id": 0} for n in (9, 12)]) for _ in range(2)]
    notes = tokenizer.music_attributes()["note_count"]
    alone = evaluate(model, batches, notes)
    assert shapes == [(2, 12), (2, 12)] and alone["tokens"] == 2 * (8 + 11)
    shapes.clear()
    assert evaluate(model, batches, notes, _OtherProcess(4), lockstep=True) == alone
    assert shapes == [(2, 12)] * 4  # 2 batches, then the last one again twice, uncounted
    shapes.clear()
    assert evaluate(model, batches, notes, _OtherProcess(3), max_batches=1, lockstep=True) == \
        evaluate(model, batches[:1], notes)
    shapes.clear()
    nothing = evaluate(model, [], notes, _OtherProcess(2), lockstep=True)  # no window in this process's shard
    assert shapes == [(1, 1), (1, 1)] and nothing["tokens"] == 0


# ----- training runs ------------------------------------------------------------------------------------
def _launch(command: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_DATASETS_DISABLE_PROGRESS_BARS="1", PYTHONUNBUFFERED="1")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        # its own session, so a failed test can end the whole run (accelerate's workers included)
        return subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                start_new_session=True)


def _free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _finish(proc: subprocess.Popen, log: Path) -> dict:
    """Wait for a run; its final JSON line (the script's summary)."""
    try:
        proc.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    text = log.read_text()
    assert proc.returncode == 0, f"{' '.join(map(str, proc.args))} failed:\n{text[-4000:]}"
    lines = [line for line in text.splitlines() if line.startswith("{")]
    return json.loads(lines[-1])


class Runs:
    """Training runs sharing one corpus folder and Arrow cache; each run is `output_dir/<name>`."""

    def __init__(self, root: Path, corpus_dir: Path):
        self.root, self.corpus_dir = root, corpus_dir
        self.processes: list[subprocess.Popen] = []

    def command(self, name: str, *overrides: str, processes: int = 1, resume: bool = False,
                config: Path | None = None) -> list[str]:
        script = [str(TRAIN), "--config", str(TINY), "--output_dir", str(self.root / name), "--log_with", "none",
                  "--corpus_dir", str(self.corpus_dir), *overrides] + (["--resume"] if resume else [])
        if config is not None:  # an accelerate config file: its distributed type and process count
            return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
                    "--main_process_port", str(_free_port()), *script]
        if processes == 1:
            return [sys.executable, *script]
        # runs started together each need their own rendezvous port (accelerate's default, 29500, is shared)
        return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                str(processes), "--num_machines", "1", "--main_process_port", str(_free_port()),
                "--mixed_precision", "no", "--dynamo_backend", "no", *script]

    def start(self, name: str, *overrides: str, processes: int = 1, resume: bool = False,
              attempt: str = "", config: Path | None = None) -> tuple[subprocess.Popen, Path]:
        log = self.root / f"{name}{attempt}.log"
        proc = _launch(self.command(name, *overrides, processes=processes, resume=resume, config=config), log)
        self.processes.append(proc)
        return proc, log

    def stop_all(self) -> None:
        """End the runs still going (after a failure), each by its own process group."""
        for proc in self.processes:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def run_together(self, jobs: dict[str, tuple]) -> dict[str, dict]:
        """Start runs at once (1 thread each), wait for all; name -> final JSON line."""
        started = {key: self.start(*job[0], **job[1]) for key, job in jobs.items()}
        return {key: _finish(*proc_log) for key, proc_log in started.items()}

    def losses(self, name: str) -> dict[int, float]:
        rows = [json.loads(line) for line in (self.root / name / "train_log.jsonl").read_text().splitlines()]
        return {row["step"]: row["loss"] for row in rows}

    def weights(self, name: str) -> dict[str, torch.Tensor]:
        return load_file(self.root / name / "model.safetensors")


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float) -> None:
    assert a.keys() == b.keys()
    worst = max((x - b[k]).abs().max().item() for k, x in a.items())
    assert worst <= tol, f"weights differ by up to {worst}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The shared corpus (the same folder tests/test_data.py fills) and its Arrow cache, prepared once here so
    runs started together only read them; also the number of training windows."""
    corpus_dir = tmp_path_factory.getbasetemp() / "music_hf_cache" / "corpus"
    cfg = TrainConfig.from_yaml(TINY).replace(corpus_dir=str(corpus_dir))
    _, _, _, summary, windows = build_datasets(cfg, progress=False)
    assert not summary.failed
    r = Runs(tmp_path_factory.mktemp("runs"), corpus_dir)
    r.train_windows = len(windows["train"])
    yield r
    r.stop_all()


def _half_batch(n_windows: int) -> int:
    """A per-device batch b whose runs cross an epoch within 8 steps at global batch 2b, with an odd number of
    b-batches per epoch: where a 2-process or accumulating run would otherwise take a step across epochs."""
    candidates = [b for b in range(4, 40) if 2 <= n_windows // (2 * b) <= 5]
    odd = [b for b in candidates if (n_windows // b) % 2 == 1]
    assert candidates, f"{n_windows} training windows: no batch size crosses an epoch in 8 steps"
    return (odd or candidates)[0]


EQUIVALENCE = ["--max_steps", "8", "--eval_every", "4", "--save_every", "4"]  # tiny.yaml: no dropout
RESUME = ["--max_steps", "24", "--save_every", "4", "--eval_every", "12", "--embedding_dropout", "0.1",
          "--hidden_dropout", "0.1", "--attention_dropout", "0.1", "--pitch_shift", "3", "--velocity_jitter", "1",
          "--duration_jitter", "1", "--position_jitter", "1"]


def _resumed_step(log: Path) -> int:
    found = re.findall(r"resumed from \S+ at step (\d+)", log.read_text())
    assert found, f"the run did not resume:\n{log.read_text()[-3000:]}"
    return int(found[-1])


@pytest.fixture(scope="module")
def trained(runs):
    """All training runs of this module, started together (process start-up, not training, is their cost):

    - equivalence (no dropout, 8 steps): 1 process x batch 2b, 1 process x batch b x accumulation 2,
      2 processes x batch b, and the same 2-process run stopped 1 step into epoch 2 and resumed;
    - resume (dropout and augmentation on, 24 steps): an unbroken run, one stopped with --stop_after 10 then
      resumed, one SIGKILLed after a complete checkpoint then resumed.
    With batch b the runs cross epochs (see _half_batch); the stop lands mid-epoch.
    """
    b = str(_half_batch(runs.train_windows))
    steps_per_epoch = runs.train_windows // (2 * int(b))
    resume = (*RESUME, "--per_device_batch_size", b)
    assert runs.train_windows // int(b) < 12
    started = {
        "single": runs.start("single", *EQUIVALENCE, "--per_device_batch_size", str(2 * int(b))),
        "accum": runs.start("accum", *EQUIVALENCE, "--per_device_batch_size", b, "--gradient_accumulation_steps", "2"),
        "ddp": runs.start("ddp", *EQUIVALENCE, "--per_device_batch_size", b, processes=2),
        "ddp-stopped": runs.start("ddp-stopped", *EQUIVALENCE, "--per_device_batch_size", b, "--stop_after",
                                  str(steps_per_epoch + 1), processes=2),  # 1 step into the second epoch
        "unbroken": runs.start("unbroken", *resume),
        "stopped": runs.start("stopped", *resume, "--stop_after", "10"),
    }
    killed, killed_log = runs.start("killed", *resume)

    # kill a run as soon as it has a complete checkpoint, long before its last step
    marker = runs.root / "killed" / "checkpoint-4" / "checkpoint_complete"
    deadline = time.time() + RUN_TIMEOUT
    while not marker.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert killed.poll() is None, f"the run ended before it could be killed:\n{killed_log.read_text()[-3000:]}"
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert not (runs.root / "killed" / "model.safetensors").exists()
    # what a kill in the middle of a save leaves behind must not be resumed from
    partial = runs.root / "killed" / "checkpoint-20"
    partial.mkdir(parents=True, exist_ok=True)
    (partial / "model.safetensors").write_bytes(b"cut short")

    out = {name: _finish(*proc_log) for name, proc_log in started.items()}
    assert out["stopped"]["step"] == 10 and not (runs.root / "stopped" / "model.safetensors").exists()
    assert out["ddp-stopped"]["step"] == steps_per_epoch + 1
    out |= runs.run_together({
        "ddp-stopped": (("ddp-stopped", *EQUIVALENCE, "--per_device_batch_size", b),
                        {"processes": 2, "resume": True, "attempt": "-resumed"}),
        "stopped": (("stopped", *resume), {"resume": True, "attempt": "-resumed"}),
        "killed": (("killed", *resume), {"resume": True, "attempt": "-resumed"}),
    })
    out["stopped_from"] = _resumed_step(runs.root / "stopped-resumed.log")
    out["ddp_stopped_from"] = _resumed_step(runs.root / "ddp-stopped-resumed.log")
    out["killed_from"] = _resumed_step(runs.root / "killed-resumed.log")
    out["steps_per_epoch"] = steps_per_epoch
    return out


def _assert_same_losses(a: dict[int, float], b: dict[int, float], tol: float) -> None:
    assert list(a) == list(b), (list(a), list(b))
    for step in a:
        assert abs(a[step] - b[step]) <= tol, f"step {step}: {a[step]} vs {b[step]}"


def test_two_cpu_processes_train_like_one_with_twice_the_batch(runs, trained):
    assert trained["steps_per_epoch"] < 8  # the runs cross an epoch boundary
    ddp, single = trained["ddp"], trained["single"]
    assert ddp["processes"] == 2 and single["processes"] == 1
    checkpoint = runs.root / "ddp" / "checkpoint-8"
    assert (checkpoint / "random_states_0.pkl").is_file() and (checkpoint / "random_states_1.pkl").is_file()
    losses = runs.losses("ddp")
    assert list(losses) == list(range(1, 9))
    assert all(math.isfinite(v) for v in losses.values())
    assert losses[7] + losses[8] < losses[1] + losses[2] - 0.1  # it learns
    _assert_same_losses(losses, runs.losses("single"), 1e-5)
    _assert_same_weights(runs.weights("ddp"), runs.weights("single"), 1e-5)
    assert abs(ddp["eval"]["loss"] - single["eval"]["loss"]) < 1e-5  # eval sums gathered over both processes
    assert ddp["eval"]["tokens"] == single["eval"]["tokens"]


def test_two_process_stop_and_resume_equals_the_unbroken_run(runs, trained):
    """Resuming mid-epoch with several processes must give the sampler its epoch through accelerate's
    skip_first_batches wrapper (it did not: the resumed epoch replayed epoch 0's order)."""
    assert trained["ddp_stopped_from"] == trained["steps_per_epoch"] + 1
    assert trained["ddp-stopped"]["processes"] == 2
    _assert_same_losses(runs.losses("ddp-stopped"), runs.losses("ddp"), 1e-6)
    _assert_same_weights(runs.weights("ddp-stopped"), runs.weights("ddp"), 1e-6)


def test_gradient_accumulation_equals_the_larger_batch(runs, trained):
    _assert_same_losses(runs.losses("accum"), runs.losses("single"), 1e-5)
    _assert_same_weights(runs.weights("accum"), runs.weights("single"), 1e-5)


def test_stop_and_resume_equals_an_unbroken_run(runs, trained):
    assert trained["stopped_from"] == 10
    unbroken = runs.losses("unbroken")
    assert list(unbroken) == list(range(1, 25))
    _assert_same_losses(runs.losses("stopped"), unbroken, 1e-6)  # steps 1-10, then 11-24 after the resume
    assert trained["stopped"]["final_train_loss"] == pytest.approx(unbroken[24], abs=1e-6)
    _assert_same_weights(runs.weights("stopped"), runs.weights("unbroken"), 1e-6)
    assert trained["stopped"]["eval"]["loss"] == pytest.approx(trained["unbroken"]["eval"]["loss"],
                                                                   abs=1e-6)


def test_resume_after_sigkill_equals_an_unbroken_run(runs, trained):
    start = trained["killed_from"]
    assert start in (4, 8, 12, 16), start  # a complete checkpoint, not the cut-short checkpoint-20
    killed, unbroken = runs.losses("killed"), runs.losses("unbroken")
    # the log is written step by step: the killed run's steps, then the resumed run's from start + 1 (the steps
    # it redoes replace the killed run's rows, and must equal them)
    assert list(killed) == list(range(1, 25))
    _assert_same_losses(killed, unbroken, 1e-6)
    _assert_same_weights(runs.weights("killed"), runs.weights("unbroken"), 1e-6)
    assert (runs.root / "killed" / "checkpoint-20" / "checkpoint_complete").is_file()  # saved again


def test_output_dir_holds_the_model_tokenizer_generation_config_and_metrics(runs, trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    run_dir = runs.root / "unbroken"
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer_config.json",
                 "miditok_config.json", "training_results.json", "checkpoint-24/checkpoint_complete"):
        assert (run_dir / name).is_file(), name
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-20", "checkpoint-24"]  # 2 kept
    sampling = GenerationConfig.from_pretrained(run_dir)  # the run's sampling defaults, read by generation
    assert (sampling.do_sample, sampling.temperature, sampling.top_k, sampling.top_p) == (True, 1.0, 0, 0.95)
    results = json.loads((run_dir / "training_results.json").read_text())
    for key in ("loss", "perplexity", "accuracy", "nll_per_note"):
        assert math.isfinite(results["eval"][key]), key
    assert results["eval"]["perplexity"] == pytest.approx(math.exp(results["eval"]["loss"]))
    assert 0 <= results["eval"]["accuracy"] <= 1 and results["eval"]["nll_per_note"] > results["eval"]["loss"]
    assert results["steps"] == 24 and results["processes"] == 1 and results["data"]["skipped"] == 0
    assert TrainConfig.from_dict(results["config"]).model.hidden_size == 32
    assert results["eval"] == trained["unbroken"]["eval"]

    model = AutoModelForCausalLM.from_pretrained(run_dir)
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    assert type(model).__name__ == "MusicForCausalLM" and model.config.hidden_size == 32
    _assert_same_weights({k: v for k, v in model.state_dict().items() if k in runs.weights("unbroken")},
                         runs.weights("unbroken"), 0.0)
    ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer.encode_score(str(next(runs.corpus_dir.rglob("*.mid"))))
                         [:30]]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer)) and torch.isfinite(logits).all()


@pytest.mark.slow
def test_two_process_stop_and_resume_with_dropout_equals_an_unbroken_two_process_run(runs):
    """As the 1-process resume tests, with each process restoring its own RNG state (dropout on)."""
    b = _half_batch(runs.train_windows)
    overrides = (*RESUME, "--max_steps", "12", "--per_device_batch_size", str(b))
    first = runs.run_together({
        "unbroken": (("ddp-dropout-unbroken", *overrides), {"processes": 2}),
        "stopped": (("ddp-dropout-stopped", *overrides, "--stop_after", "6"), {"processes": 2}),
    })
    resumed = runs.run_together({"stopped": (("ddp-dropout-stopped", *overrides),
                                             {"processes": 2, "resume": True, "attempt": "-resumed"})})
    assert first["stopped"]["step"] == 6 and _resumed_step(runs.root / "ddp-dropout-stopped-resumed.log") == 6
    assert first["unbroken"]["processes"] == resumed["stopped"]["processes"] == 2
    _assert_same_losses(runs.losses("ddp-dropout-stopped"), runs.losses("ddp-dropout-unbroken"), 1e-6)
    _assert_same_weights(runs.weights("ddp-dropout-stopped"), runs.weights("ddp-dropout-unbroken"), 1e-6)


@pytest.mark.slow
def test_fsdp2_on_two_cpu_processes_resumes_exactly_and_saves_a_loadable_model(runs):
    """scripts/configs/accelerate/fsdp_cpu.yaml: FSDP2 (fully_shard over gloo, switched on by `fsdp_on_cpu`),
    sharded checkpoints (torch.distributed.checkpoint), dropout and augmentation on.

    Stopped after 4 of 6 steps (2 steps after a checkpoint) and resumed, the run ends bit for bit where the unbroken
    one does: the same float operations in the same order, each process's shard of the weights and AdamW state
    and its RNG state restored. The unbroken run equals a DDP run of the same settings to float tolerance only
    (FSDP reduce-scatters gradient shards, DDP all-reduces buckets: other summation orders). The final model is
    gathered from both processes into one safetensors file that MusicForCausalLM loads."""
    args = ("--max_steps", "6", "--save_every", "3", "--eval_every", "3", "--per_device_batch_size", "4",
            "--hidden_dropout", "0.1", "--attention_dropout", "0.1", "--pitch_shift", "3", "--velocity_jitter", "1")
    first = runs.run_together({
        "unbroken": (("fsdp-unbroken", *args), {"config": FSDP_CPU}),
        "stopped": (("fsdp-stopped", *args, "--stop_after", "4"), {"config": FSDP_CPU}),
        "ddp": (("fsdp-ddp", *args), {"processes": 2}),
    })
    resumed = runs.run_together({"stopped": (("fsdp-stopped", *args), {"config": FSDP_CPU, "resume": True,
                                                                      "attempt": "-resumed"})})["stopped"]
    assert "FSDP2 on CPU over gloo: 2 processes" in (runs.root / "fsdp-unbroken.log").read_text()
    assert first["stopped"]["step"] == 4 and _resumed_step(runs.root / "fsdp-stopped-resumed.log") == 4
    assert first["unbroken"]["processes"] == resumed["processes"] == 2
    checkpoint = runs.root / "fsdp-stopped" / "checkpoint-4"  # sharded: FSDP, not DDP
    assert (checkpoint / "pytorch_model_fsdp_0").is_dir() and (checkpoint / "optimizer_0").is_dir()
    assert not (checkpoint / "model.safetensors").exists()

    unbroken = runs.losses("fsdp-unbroken")
    assert list(unbroken) == list(range(1, 7)) and all(math.isfinite(v) for v in unbroken.values())
    _assert_same_losses(runs.losses("fsdp-stopped"), unbroken, 0.0)
    _assert_same_weights(runs.weights("fsdp-stopped"), runs.weights("fsdp-unbroken"), 0.0)
    assert resumed["eval"] == first["unbroken"]["eval"]
    _assert_same_losses(unbroken, runs.losses("fsdp-ddp"), 1e-5)
    _assert_same_weights(runs.weights("fsdp-unbroken"), runs.weights("fsdp-ddp"), 1e-5)
    assert first["unbroken"]["eval"]["tokens"] == first["ddp"]["eval"]["tokens"]
    assert abs(first["unbroken"]["eval"]["loss"] - first["ddp"]["eval"]["loss"]) < 1e-5

    out = runs.root / "fsdp-stopped"
    assert (out / "modeling_music.py").is_file() and not list(out.glob("_fsdp*.py"))  # the model's own code
    model = MusicForCausalLM.from_pretrained(out)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["MusicForCausalLM"]
    saved = runs.weights("fsdp-stopped")
    _assert_same_weights({k: v for k, v in model.state_dict().items() if k in saved}, saved, 0.0)
    ids = torch.tensor([[model.config.bos_token_id, *range(4, 40)]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size) and torch.isfinite(logits).all()


def test_streaming_with_two_processes_trains_resumes_and_saves(runs):
    """--streaming: each of 2 processes streams its own pieces (no Arrow cache), evaluates on its
    validation pieces, stops, resumes from the checkpoint and saves the final model like any run."""
    args = ("--streaming", "true", "--max_steps", "6", "--save_every", "3", "--eval_every", "3",
            "--per_device_batch_size", "4", "--shuffle_buffer", "8")
    first = runs.run_together({"s": (("streaming", *args, "--stop_after", "3"), {"processes": 2})})["s"]
    assert first["step"] == 3 and first["processes"] == 2
    done = runs.run_together({"s": (("streaming", *args), {"processes": 2, "resume": True,
                                                           "attempt": "-resumed"})})["s"]
    assert done["step"] == 6 and _resumed_step(runs.root / "streaming-resumed.log") == 3
    assert done["eval"]["tokens"] > 0 and math.isfinite(done["eval"]["loss"])
    out = runs.root / "streaming"
    assert (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()
    assert json.loads((out / "training_results.json").read_text())["data"] == {"streamed": True}
    losses = runs.losses("streaming")
    assert sorted(losses) == [1, 2, 3, 4, 5, 6] and all(math.isfinite(v) for v in losses.values())
