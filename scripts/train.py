#!/usr/bin/env python
"""Train a music model with a plain Accelerate loop: the same script on a laptop CPU, one GPU, many GPUs or
nodes (DDP, FSDP, DeepSpeed through `accelerate launch --config_file`).

    accelerate launch scripts/train.py --config scripts/configs/small.yaml --output_dir outputs/small \
        [--max_steps N] [--stop_after N] [--resume [PATH]] [--push_to_hub org/name] [--<config key> value ...]
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

import music_hf  # noqa: F401  (registers the Auto classes)
from music_hf.training import (EpochSampler, build_datasets, build_model, config_from_args, evaluate, l1_norm,
                               lr_lambda, model_inputs, parameter_groups, train_collator)
from music_hf.data import MusicDataCollator

logger = logging.getLogger("music_hf.train")


class TrainState:
    """Step and epoch counters saved with every checkpoint (accelerate's `register_for_checkpointing`)."""

    def __init__(self) -> None:
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]


CHECKPOINT_DONE = "checkpoint_complete"  # written once every process has saved: a folder without it was cut short


def checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a run killed while saving leaves a folder that is skipped)."""
    found = [p for p in (output_dir / "checkpoints").glob("step_*") if (p / CHECKPOINT_DONE).is_file()]
    return sorted(found, key=lambda p: int(re.sub(r"\D", "", p.name)))


def main(argv: list[str] | None = None) -> dict[str, float]:
    args, cfg = config_from_args(argv, __doc__)
    out = Path(cfg.output_dir)
    accelerator = Accelerator(
        mixed_precision=None if os.environ.get("ACCELERATE_MIXED_PRECISION") else cfg.mixed_precision,
        step_scheduler_with_optimizer=False,  # the schedule counts optimizer steps, whatever the process count
        log_with=cfg.log_with, project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s")
    set_seed(cfg.seed)

    # data: the main process prepares the corpus and the Arrow cache first, the others then read them
    with accelerator.main_process_first():
        tokenizer, genres, _, summary, windows = build_datasets(cfg, progress=accelerator.is_main_process)
    logger.info("data:\n%s", summary)
    if "train" not in windows:
        raise SystemExit("no training pieces: check the data settings")
    train_windows = windows["train"]
    eval_windows = windows.get("validation") or windows.get("test")

    model = build_model(cfg, tokenizer, genres)
    if cfg.gradient_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("model: %s, %.2fM parameters; %d training windows", cfg.architecture, n_params / 1e6,
                len(train_windows))

    collator = train_collator(cfg, tokenizer)
    sampler = EpochSampler(len(train_windows), cfg.seed, multiple_of=cfg.per_device_batch_size *
                           accelerator.num_processes * cfg.gradient_accumulation_steps)
    train_loader = DataLoader(train_windows, batch_size=cfg.per_device_batch_size, sampler=sampler,
                              collate_fn=collator, drop_last=True,
                              # its own generator: creating an iterator then draws nothing from the global RNG,
                              # so dropout after a resume sees the same random stream as an unbroken run
                              generator=torch.Generator().manual_seed(cfg.seed))
    if len(train_loader) < accelerator.num_processes * cfg.gradient_accumulation_steps:
        raise SystemExit(f"too few training windows ({len(train_windows)}) for batch size "
                         f"{cfg.per_device_batch_size} x {accelerator.num_processes} processes")
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg.weight_decay), lr=cfg.learning_rate,
                                  betas=(cfg.adam_beta1, cfg.adam_beta2))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.warmup_steps, cfg.max_steps))
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    state = TrainState()
    accelerator.register_for_checkpointing(state)

    # evaluation: each process takes every n-th window, sums are reduced across processes
    eval_loader = None
    if eval_windows is not None and len(eval_windows):
        shard = Subset(eval_windows, range(accelerator.process_index, len(eval_windows), accelerator.num_processes))
        eval_loader = DataLoader(shard, batch_size=cfg.per_device_batch_size,
                                 collate_fn=MusicDataCollator(tokenizer.pad_token_id))
    note_counts = tokenizer.music_attributes()["note_count"]

    if args.resume:
        path = checkpoints(out)[-1] if args.resume == "latest" and checkpoints(out) else None
        path = Path(args.resume) if args.resume != "latest" else path
        if path is None:
            logger.warning("--resume: no checkpoint in %s, starting from scratch", out / "checkpoints")
        else:
            accelerator.load_state(str(path))
            logger.info("resumed from %s at step %d", path, state.step)

    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    if cfg.log_with:
        accelerator.init_trackers("music-hf", {k: v for k, v in cfg.to_dict().items()
                                               if isinstance(v, (int, float, str, bool))})

    def save_checkpoint() -> None:
        path = out / "checkpoints" / f"step_{state.step}"
        if accelerator.is_main_process:
            (path / CHECKPOINT_DONE).unlink(missing_ok=True)  # overwriting: incomplete until saved again
        accelerator.save_state(str(path))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (path / CHECKPOINT_DONE).touch()
            for old in checkpoints(out)[: -cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)

    last_step = cfg.max_steps if args.stop_after is None else min(cfg.max_steps, state.step + args.stop_after)
    decay_params = [p for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]]
    accum = cfg.gradient_accumulation_steps
    progress = tqdm(total=cfg.max_steps, initial=state.step, disable=not accelerator.is_local_main_process,
                    desc="training", mininterval=0.5 if sys.stderr.isatty() else 30.0)  # a log file gets a line / 30 s
    history: list[dict[str, float]] = []
    metrics: dict[str, float] = {}
    model.train()
    t0, tokens_seen = time.time(), 0

    def batches():
        """Micro-batches from where the run stands, across epochs, in the same order as an unbroken run."""
        while True:
            loader = accelerator.skip_first_batches(train_loader, state.batch_in_epoch) \
                if state.batch_in_epoch else train_loader
            loader.set_epoch(state.epoch)  # accelerate passes it on to the EpochSampler at each iteration...
            sampler.set_epoch(state.epoch)  # ...except through skip_first_batches' wrapper with several processes
            collator.epoch = state.epoch
            for batch in loader:
                state.batch_in_epoch += 1
                yield batch
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0

    stream = batches()
    while state.step < last_step:
        micro = [next(stream) for _ in range(accum)]
        # the loss is a sum over tokens divided by the tokens of the whole step, over all micro-batches and
        # processes; DDP averages gradients over processes, hence the factor num_processes
        local_tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
        step_tokens = accelerator.reduce(torch.tensor(local_tokens, device=accelerator.device), "sum").item()
        step_loss = 0.0
        for i, batch in enumerate(micro):
            sync = accelerator.no_sync(model) if i < accum - 1 else contextlib.nullcontext()
            with sync:
                with accelerator.autocast():
                    outputs = model(**model_inputs(model, batch), num_items_in_batch=step_tokens)
                loss = outputs.loss * accelerator.num_processes
                if cfg.l1_penalty:
                    loss = loss + cfg.l1_penalty * l1_norm(decay_params) / accum
                accelerator.backward(loss)
                step_loss += outputs.loss.detach().float().item()
        if cfg.max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        tokens_seen += step_tokens
        step_loss = accelerator.reduce(torch.tensor(step_loss, device=accelerator.device), "sum").item()
        progress.update(1)
        progress.set_postfix(loss=f"{step_loss:.3f}")
        history.append({"step": state.step, "loss": step_loss})
        if accelerator.is_main_process:  # written as it happens, so a killed run keeps its log (a resume
            with (out / "train_log.jsonl").open("a") as f:  # appends the steps it redoes again)
                f.write(json.dumps(history[-1]) + "\n")
        if state.step % cfg.log_every == 0 or state.step == 1:
            accelerator.log({"train/loss": step_loss, "train/lr": scheduler.get_last_lr()[0],
                             "train/tokens_per_s": tokens_seen / max(time.time() - t0, 1e-9)}, step=state.step)
        if eval_loader is not None and (state.step % cfg.eval_every == 0 or state.step == cfg.max_steps):
            metrics = evaluate(model, eval_loader, note_counts, accelerator, cfg.eval_max_batches)
            accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=state.step)
            logger.info("step %d eval %s", state.step, {k: round(v, 4) for k, v in metrics.items()})
        if state.step % cfg.save_every == 0 or state.step == last_step:
            save_checkpoint()
    progress.close()

    accelerator.wait_for_everyone()
    if state.step >= cfg.max_steps:
        final = out / "final"
        unwrapped = accelerator.unwrap_model(model)
        if accelerator.is_main_process:
            unwrapped.save_pretrained(final)
            tokenizer.save_pretrained(final)
            (final / "training_results.json").write_text(json.dumps({
                "eval": metrics, "steps": state.step, "train_loss": history[-1]["loss"] if history else None,
                "data": {"pieces": summary.pieces, "tokens": summary.tokens, "genres": summary.genres,
                         "skipped": len(summary.failed)},
                "config": cfg.to_dict(), "parameters": sum(p.numel() for p in unwrapped.parameters()),
                "processes": accelerator.num_processes}, indent=2))
            logger.info("model and tokenizer saved to %s", final)
            if cfg.push_to_hub:
                from music_hf.hub import push_model_dir
                url = push_model_dir(final, cfg.push_to_hub, private=cfg.hub_private)
                logger.info("pushed to %s", url)
    else:
        logger.info("stopped after step %d of %d (resume with --resume)", state.step, cfg.max_steps)
    accelerator.end_training()
    if accelerator.is_main_process:
        print(json.dumps({"step": state.step, "final_train_loss": history[-1]["loss"] if history else None,
                          "eval": metrics, "processes": accelerator.num_processes}))
    return metrics


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
