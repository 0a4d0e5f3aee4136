"""How well a model predicts music people actually have: NLL per token on real-world MIDI files (evaluation only,
never training data), overall, per file set and per token kind, as the files are and after `map_prompt` brought
them to what the model knows.

The files: `scripts/fetch_eval_midi.py` unpacks the test MIDIs of miditok's source distribution into
`.cache/eval-midi/` (`multitrack/`: pop songs with drums; `one_track/`: expressive piano and other one-track
pieces). `scripts/evaluate.py --model DIR --real_world_dir .cache/eval-midi` writes the table into BENCHMARKS.md.

Each file is read as a training piece is (BOS, its tokens, EOS) and cut into windows of the model's training
length that start at a bar where one fits (else one token before the previous window's end), so that each
token is predicted once, with up to a window of context, and the first token of each window only serves as
context (as in training). The files have no genre: the model is asked with genre 0 ("unknown").
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .prompt_mapping import ModelKnowledge, map_prompt, model_knowledge
from .tokenization_music import TOKEN_KINDS, MusicFileError, MusicTokenizer

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REAL_WORLD_DIR = REPO / ".cache" / "eval-midi"
SET_LABELS = {"multitrack": "pop songs, multitrack (miditok tests/MIDIs_multitrack)",
              "one_track": "one track: MAESTRO, POP909, piano etudes (miditok tests/MIDIs_one_track)"}
KIND_LABELS = {"special": "EOS", "PitchDrum": "Drum pitch", "DrumOn": "Drum on", "DrumOff": "Drum off"}
KIND_ORDER = ("Bar", "TimeSig", "Tempo", "Position", "TimeShift", "Rest", "Program", "Pitch", "NoteOn", "NoteOff",
              "PitchDrum", "DrumOn", "DrumOff", "Velocity", "Duration", "special", "other")
MIDI_SUFFIXES = (".mid", ".midi")


def real_world_files(root: str | Path) -> dict[str, list[Path]]:
    """The MIDI files under `root` by set: one set per subfolder (files directly in `root`: the set "files")."""
    root = Path(root)
    sets: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in MIDI_SUFFIXES:
            rel = path.relative_to(root)
            sets.setdefault(rel.parts[0] if len(rel.parts) > 1 else "files", []).append(path)
    return sets


def scoring_windows(bar_flags: np.ndarray, length: int, window: int) -> list[tuple[int, int, int]]:
    """(start, first scored index, end) of each window over a sequence of `length` ids: windows of at most `window`
    ids, each starting at the last bar start that leaves no token unscored (else one id before the previous end),
    each scoring the ids after the previous window's end."""
    out, start, scored_to = [], 0, 1  # id 0 (BOS) is never predicted
    bars = np.flatnonzero(bar_flags)
    while scored_to < length:
        end = min(start + window, length)
        out.append((start, scored_to, end))
        scored_to = end
        if end >= length:
            break
        fitting = bars[(bars > start) & (bars <= end - 1)]  # the next window repeats at least one id as context
        start = int(fitting[-1]) if len(fitting) else end - 1
    return out


def _kind_labels(tokenizer: MusicTokenizer) -> np.ndarray:
    """The row label of each id: its token kind (drum pitches apart), specials as EOS."""
    return np.array([KIND_LABELS.get(TOKEN_KINDS[k], TOKEN_KINDS[k]) for k in tokenizer.token_table.kind])


def token_nll(model: Any, tokenizer: MusicTokenizer, ids: Sequence[int], window: int, batch_size: int = 8,
              max_windows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(target ids, NLL of each in nats) of a whole sequence (BOS first) scored in `scoring_windows`, at most
    `max_windows` of them."""
    ids_arr = np.asarray(ids)
    bar_flags = np.asarray(tokenizer.music_attributes()["bar_count"])[ids_arr] > 0
    spans = scoring_windows(bar_flags, len(ids_arr), window)[:max_windows]
    device = next(model.parameters()).device
    music = getattr(model.config, "model_type", "") == "music"
    targets, nlls = [], []
    for b in range(0, len(spans), batch_size):
        chunk = spans[b: b + batch_size]
        width = max(end - start for start, _, end in chunk)
        input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for row, (start, _, end) in enumerate(chunk):
            input_ids[row, : end - start] = torch.as_tensor(ids_arr[start:end])
            mask[row, : end - start] = 1
        extra = {"genre_ids": torch.zeros(len(chunk), dtype=torch.long, device=device)} if music else {}
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), **extra).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        for row, (start, first, end) in enumerate(chunk):
            positions = torch.arange(first - start - 1, end - start - 1, device=device)  # predicting first..end-1
            target = input_ids[row, first - start: end - start].to(device)
            nlls.append(-logp[row, positions, target].cpu().numpy())
            targets.append(target.cpu().numpy())
    if not targets:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    return np.concatenate(targets), np.concatenate(nlls).astype(np.float64)


def _summary(targets: np.ndarray, nll: np.ndarray, labels: np.ndarray, notes: np.ndarray) -> dict[str, Any]:
    n = len(targets)
    by_kind = {}
    for kind in np.unique(labels[targets]) if n else []:
        picked = labels[targets] == kind
        by_kind[str(kind)] = {"tokens": int(picked.sum()), "nll": float(nll[picked].mean()),
                              "share": float(picked.mean())}
    note_count = float(notes[targets].sum()) if n else 0.0
    return {"tokens": n, "nll": float(nll.mean()) if n else float("nan"),
            "perplexity": math.exp(min(float(nll.mean()), 50.0)) if n else float("nan"),
            "notes": note_count, "nll_per_note": float(nll.sum() / note_count) if note_count else float("nan"),
            "by_kind": by_kind}


def real_world_quality(model: Any, tokenizer: MusicTokenizer, root: str | Path, window: int,
                       batch_size: int = 8, max_windows_per_file: int | None = None,
                       knowledge: ModelKnowledge | None = None) -> dict[str, Any]:
    """NLL per token of the model on the MIDI files under `root` (`real_world_files`), as they are ("raw") and
    after `map_prompt` ("mapped"): overall, per set and per token kind, with the chance reference log(vocabulary
    size) and, per kind, log(the number of ids of that kind). {"skipped": why} when there are no files."""
    t0 = time.perf_counter()
    sets = real_world_files(root)
    if not sets:
        return {"skipped": f"no MIDI files under {root} (run `python scripts/fetch_eval_midi.py`)"}
    was_training = model.training
    model.eval()
    knowledge = knowledge or model_knowledge(model, tokenizer)
    labels = _kind_labels(tokenizer)
    notes = np.asarray(tokenizer.music_attributes()["note_count"], dtype=np.float64)
    collected: dict[str, dict[str, list]] = {m: {} for m in ("raw", "mapped")}
    left_out: list[list[str]] = []
    changes: dict[str, list[str]] = {}
    try:
        for set_name, files in sets.items():
            for path in files:
                name = f"{set_name}/{path.name}"
                try:
                    mapped, changes[name] = map_prompt(path, model, tokenizer, knowledge)
                    pieces = {"raw": tokenizer.encode_score(path), "mapped": tokenizer.encode_score(mapped)}
                except MusicFileError as e:
                    left_out.append([name, e.problem])
                    changes.pop(name, None)
                    continue
                for mode, ids in pieces.items():
                    seq = [tokenizer.bos_token_id] + ids + [tokenizer.eos_token_id]
                    targets, nll = token_nll(model, tokenizer, seq, window, batch_size, max_windows_per_file)
                    collected[mode].setdefault(set_name, []).append((targets, nll))
    finally:
        model.train(was_training)
    results: dict[str, Any] = {}
    for mode, by_set in collected.items():
        every = [pair for pairs in by_set.values() for pair in pairs]
        cat = (lambda pairs, i: np.concatenate([p[i] for p in pairs]) if pairs else np.zeros(0, dtype=np.int64))
        results[mode] = {"overall": _summary(cat(every, 0), cat(every, 1), labels, notes),
                         "by_set": {s: _summary(cat(p, 0), cat(p, 1), labels, notes) for s, p in by_set.items()}}
    kind_sizes = {}
    for label in np.unique(labels):
        if label != KIND_LABELS["special"]:  # EOS: one token among the specials, no kind of its own
            kind_sizes[str(label)] = int(((labels == label) & (tokenizer.token_table.length == 1)).sum())
    return {"dir": str(root), "window": window, "vocab_size": len(tokenizer),
            "chance": math.log(len(tokenizer)), "kind_chance": {k: math.log(v) for k, v in kind_sizes.items() if v},
            "files": {s: len(f) for s, f in sets.items()}, "left_out": left_out,
            "max_windows_per_file": max_windows_per_file,
            "knowledge": {"programs": knowledge.programs, "velocity_range": knowledge.velocity_range,
                          "tempo_range": knowledge.tempo_range},
            "changes": changes, **results, "seconds": time.perf_counter() - t0}


def _kind_sort_key(label: str) -> int:
    names = [KIND_LABELS.get(k, k) for k in KIND_ORDER]
    return names.index(label) if label in names else len(names)


def real_world_section(report: Any, rw: dict[str, Any] | None) -> None:
    """The subsection "Real-world MIDI" of the report (nothing when it was not asked for)."""
    if rw is None:
        return
    test_nll = rw.get("test_nll")
    report.heading("Real-world MIDI (evaluation only)")
    if rw.get("skipped"):
        report.text(f"Not evaluated: {rw['skipped']}.")
        return
    k = rw["knowledge"]
    programs = ", ".join(map(str, k["programs"])) or "none above the threshold"
    fmt = (lambda r, unit="": f"{r[0]:.0f}–{r[1]:.0f}{unit}" if r else "no evidence, kept")
    files = sum(rw["files"].values()) - len(rw["left_out"])
    left_out = "; ".join(f"{name}: {why}" for name, why in rw["left_out"])
    limit = (f", at most {rw['max_windows_per_file']} windows per file" if rw.get("max_windows_per_file") else "")
    report.text(
        f"Model: {rw.get('model', 'the evaluated model')}. {files} MIDI files from `{rw['dir']}` (`python "
        "scripts/fetch_eval_midi.py`: the test MIDIs of miditok's source distribution, never training data)"
        + (f"; left out: {left_out}" if left_out else "") + ". Each file is read as a training piece (BOS, tokens, "
        f"EOS) and scored in windows of {rw['window']} tokens (the training length{limit}), every token predicted "
        "once, genre \"unknown\". NLL in nats per token. Raw: the files as they are; mapped: after `map_prompt` "
        f"(learned programs {programs}; learned velocities {fmt(k['velocity_range'])}; learned tempos "
        f"{fmt(k['tempo_range'], ' BPM')}: unlearned drums dropped, unlearned programs to the nearest learned one of "
        "their General MIDI family or the piano, velocities and tempos clamped into the learned range). Chance: "
        f"log(vocabulary size {rw['vocab_size']}) = {rw['chance']:.3f}; per kind, log(the number of tokens of that "
        "kind)." + (f" For comparison, the NLL per token on the test split of the training corpus: {test_nll:.3f}."
                    if test_nll is not None else ""))
    rows = []
    for set_name in rw["raw"]["by_set"]:
        raw, mapped = rw["raw"]["by_set"][set_name], rw["mapped"]["by_set"].get(set_name, {})
        n = rw["files"][set_name] - sum(name.startswith(f"{set_name}/") for name, _ in rw["left_out"])
        rows.append([SET_LABELS.get(set_name, set_name), n, raw["tokens"], raw["nll"],
                     raw["nll_per_note"], mapped.get("tokens"), mapped.get("nll"), mapped.get("nll_per_note")])
    raw, mapped = rw["raw"]["overall"], rw["mapped"]["overall"]
    rows.append(["all files", files, raw["tokens"], raw["nll"], raw["nll_per_note"], mapped["tokens"], mapped["nll"],
                 mapped["nll_per_note"]])
    report.table(["files", "n", "tokens (raw)", "NLL/token raw", "NLL/note raw", "tokens (mapped)",
                  "NLL/token mapped", "NLL/note mapped"], rows)
    kinds = sorted(set(raw["by_kind"]) | set(mapped["by_kind"]), key=_kind_sort_key)
    none: dict[str, Any] = {}
    report.table(["token kind", "share of tokens (raw)", "NLL raw", "share (mapped)", "NLL mapped",
                  "chance within kind", "chance (vocabulary)"],
                 [[kind, raw["by_kind"].get(kind, none).get("share", 0.0), raw["by_kind"].get(kind, none).get("nll"),
                   mapped["by_kind"].get(kind, none).get("share", 0.0), mapped["by_kind"].get(kind, none).get("nll"),
                   rw["kind_chance"].get(kind), rw["chance"]] for kind in kinds])


__all__ = ["DEFAULT_REAL_WORLD_DIR", "real_world_files", "scoring_windows", "token_nll", "real_world_quality",
           "real_world_section"]
