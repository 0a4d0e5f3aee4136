"""What scripts/evaluate.py and scripts/bench.py share: music metrics for generated pieces (pitch-class histograms
and their distances, note density, grammar error rate), a small genre classifier to check genre control, and the
report helpers (machine description, Markdown tables, one section of BENCHMARKS.md rewritten at a time)."""

from __future__ import annotations

import datetime
import math
import os
import platform
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import symusic
import torch

from .configuration_music import MusicConfig
from .data import MusicDataCollator
from .generation import generate_music
from .modeling_music import MusicForSequenceClassification
from .tokenization_music import MusicTokenizer, load_score
from .training import lr_scheduler

PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


# ----- music metrics -------------------------------------------------------------------------------------
def pitch_class_histogram(music: Any, normalize: bool = True) -> np.ndarray:
    """12-bin histogram of note onsets by pitch class (C = 0), drum tracks left out.

    `music` is a `symusic.Score` or anything `load_score` reads (path, MIDI bytes, ABC). Normalized to sum 1
    unless there are no pitched notes (then all zeros).
    """
    score = music if isinstance(music, symusic.Score) else load_score(music)
    counts = np.zeros(12)
    for track in score.tracks:
        if track.is_drum or len(track.notes) == 0:
            continue
        counts += np.bincount(track.notes.numpy()["pitch"].astype(np.int64) % 12, minlength=12)
    total = counts.sum()
    return counts / total if normalize and total > 0 else counts


def histogram_distance(p: np.ndarray, q: np.ndarray, metric: str = "js") -> float:
    """Distance between two histograms, each normalized first: "js" is the Jensen-Shannon divergence in bits
    (0 = identical, 1 = disjoint), "l1" the L1 distance (0 to 2). NaN if either histogram is empty."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return float("nan")
    p, q = p / p.sum(), q / q.sum()
    if metric == "l1":
        return float(np.abs(p - q).sum())
    if metric != "js":
        raise ValueError(f"metric must be 'js' or 'l1', got {metric!r}")
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float((a[nz] * np.log2(a[nz] / m[nz])).sum())

    return max(0.0, 0.5 * kl(p) + 0.5 * kl(q))


def notes_per_bar(ids: Sequence[int], tokenizer: MusicTokenizer) -> float:
    """Note density of a token sequence: notes (Pitch/PitchDrum) over bars (Bar tokens), from the tokenizer's
    per-id tables, so BPE ids count every note and bar they hold. NaN for a sequence without any bar."""
    table = tokenizer.token_table
    ids = np.asarray(ids, dtype=np.int64)
    notes, bars = table.note_count[ids].sum(), table.bar_count[ids].sum()
    return float(notes / bars) if bars > 0 else float("nan")


def grammar_error_rate(sequences: Sequence[Sequence[int]], tokenizer: MusicTokenizer) -> float:
    """Share of generated tokens the tokenizer's grammar check rejects, over all sequences (token-weighted).

    A leading BOS and a final EOS are not counted; any other special id (PAD, BOS, MASK, or EOS before the end)
    is an error, since it cannot be decoded into music.
    """
    special = set(tokenizer.all_special_ids)
    errors = total = 0.0
    for seq in sequences:
        seq = [int(i) for i in seq]
        if seq and seq[0] == tokenizer.bos_token_id:
            seq = seq[1:]
        if seq and seq[-1] == tokenizer.eos_token_id:
            seq = seq[:-1]
        if not seq:
            continue
        misplaced = sum(i in special for i in seq)
        clean = len(seq) - misplaced
        errors += misplaced + (tokenizer.grammar_errors(seq) * clean if clean else 0.0)
        total += len(seq)
    return errors / total if total else float("nan")


def pooled_pitch_class_histogram(sequences: Sequence[Sequence[int]], tokenizer: MusicTokenizer) -> np.ndarray:
    """Pitch-class counts (not normalized) of a set of token sequences, each decoded to a Score: a genre's profile."""
    return sum((pitch_class_histogram(tokenizer.decode_midi(s), normalize=False) for s in sequences), np.zeros(12))


def mean_finite(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


# ----- generation per genre ------------------------------------------------------------------------------
def generate_per_genre(model: Any, tokenizer: MusicTokenizer, genres: Sequence[str], per_genre: int,
                       max_new_tokens: int, constrained: bool, seed: int = 0, **sampling: Any
                       ) -> dict[str, list[list[int]]]:
    """`per_genre` unprompted generations (ids with the leading BOS, cut at EOS) for each genre, in one batch each."""
    out = {}
    for i, genre in enumerate(genres):
        pieces = generate_music(model, tokenizer, genre=genre, max_new_tokens=max_new_tokens,
                                constrained=constrained, num_return_sequences=per_genre, seed=seed + i, **sampling)
        out[genre] = [p.ids for p in pieces]
    return out


# ----- genre classifier ----------------------------------------------------------------------------------
def train_genre_classifier(windows: Any, tokenizer: MusicTokenizer, genres: Sequence[str], steps: int = 300,
                           batch_size: int = 16, learning_rate: float = 1e-3, seed: int = 0,
                           device: str | torch.device = "cpu", hidden_size: int = 64, num_hidden_layers: int = 2,
                           num_attention_heads: int = 2, max_length: int = 256) -> MusicForSequenceClassification:
    """A small `MusicForSequenceClassification` that tells the genres apart from token windows.

    `windows` has `input_ids` and `genre_id` (0 = unknown, left out); `genres[0]` is "unknown", so label k is
    genre id k + 1. Batches draw genres uniformly, so a genre with many windows does not swamp the others.
    No genre embedding: the label must come from the music.
    """
    genre_ids = np.asarray(windows["genre_id"])
    by_genre = [np.flatnonzero(genre_ids == g) for g in range(1, len(genres))]
    present = [i for i, rows in enumerate(by_genre) if len(rows)]
    if len(present) < 2:
        raise ValueError(f"a genre classifier needs windows of at least two genres, got {len(present)}")
    names = list(genres[1:])
    config = MusicConfig.from_tokenizer(
        tokenizer, genres=list(genres), num_labels=len(names), id2label=dict(enumerate(names)),
        label2id={g: i for i, g in enumerate(names)}, use_genre_embedding=False, hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
        intermediate_size=4 * hidden_size, max_position_embeddings=max_length, embedding_dropout=0.1,
        hidden_dropout=0.1)
    torch.manual_seed(seed)
    model = MusicForSequenceClassification(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    scheduler = lr_scheduler(optimizer, max(1, steps // 10), steps)
    collator = MusicDataCollator(tokenizer.pad_token_id)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(steps):
        labels = rng.choice(present, size=batch_size)
        rows = [int(rng.choice(by_genre[label])) for label in labels]
        batch = collator([{"input_ids": windows[r]["input_ids"][:max_length]} for r in rows])
        loss = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                     labels=torch.as_tensor(labels, device=device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return model.eval()


@torch.no_grad()
def classify_genres(model: MusicForSequenceClassification, sequences: Sequence[Sequence[int]],
                    pad_token_id: int, batch_size: int = 32) -> list[int]:
    """Predicted genre id (label + 1, as in `genres`) of each sequence, read from its first max_length tokens."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    limit = model.config.max_position_embeddings
    collator = MusicDataCollator(pad_token_id)
    out: list[int] = []
    for start in range(0, len(sequences), batch_size):
        batch = collator([{"input_ids": list(s)[:limit]} for s in sequences[start: start + batch_size]])
        logits = model(input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device)).logits
        out += (logits.argmax(-1) + 1).tolist()
    model.train(was_training)
    return out


def classification_scores(predicted: Sequence[int], true: Sequence[int]) -> dict[str, Any]:
    """Accuracy, balanced accuracy (mean recall over genres present), per-genre recall, and the two chance
    levels to compare with: 1/number of genres present and the majority genre's share."""
    predicted, true = np.asarray(predicted), np.asarray(true)
    if len(true) == 0:
        return {"n": 0, "accuracy": float("nan"), "balanced_accuracy": float("nan"), "recall": {},
                "uniform_chance": float("nan"), "majority_rate": float("nan")}
    labels, counts = np.unique(true, return_counts=True)
    recall = {int(g): float((predicted[true == g] == g).mean()) for g in labels}
    return {"n": int(len(true)), "accuracy": float((predicted == true).mean()),
            "balanced_accuracy": float(np.mean(list(recall.values()))), "recall": recall,
            "uniform_chance": 1.0 / len(labels), "majority_rate": float(counts.max() / len(true))}


# ----- reports -------------------------------------------------------------------------------------------
REPORT_PREAMBLE = """# Benchmarks

Every number below is written by a script: `scripts/bench.py` rewrites the section "Speed",
`scripts/evaluate.py` the section "Quality" (each leaves the other alone). Do not edit the numbers by hand;
re-run the command given in each section instead.
"""


def machine_description(device: str | torch.device = "cpu") -> dict[str, Any]:
    """CPU model, cores, accelerator, library versions and the load at the time (reports say how noisy they are)."""
    import transformers

    cpu = platform.processor() or platform.machine()
    with_cpuinfo = Path("/proc/cpuinfo")
    if with_cpuinfo.is_file():
        names = re.findall(r"^model name\s*:\s*(.+)$", with_cpuinfo.read_text(), re.MULTILINE)
        cpu = names[0].strip() if names else cpu
    info: dict[str, Any] = {
        "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "device": str(device), "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    if hasattr(os, "getloadavg"):
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    return info


def machine_line(info: Mapping[str, Any]) -> str:
    parts = [f"CPU {info['cpu']} ({info['cores']} cores, torch uses {info['torch_threads']} threads)"]
    if "gpu" in info:
        parts.append(f"GPU {info['gpu']}")
    parts += [f"device `{info['device']}`", f"torch {info['torch']}", f"transformers {info['transformers']}",
              f"Python {info['python']}"]
    if "load_average_1min" in info:
        parts.append(f"1-min load average at start {info['load_average_1min']}")
    return "; ".join(parts) + f"; {info['date']}."


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: numbers with `digits` significant digits (n/a for NaN/None), other values as text."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v, digits) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def update_markdown_section(path: str | os.PathLike, title: str, body: str) -> None:
    """Replace the section `## {title}` of a Markdown file (up to the next `## ` heading) with `body`, adding it
    at the end if absent and the file with the report preamble if missing; other sections stay as they are."""
    path = Path(path)
    text = path.read_text() if path.is_file() else REPORT_PREAMBLE
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}[ \t]*\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


__all__ = ["PITCH_CLASSES", "pitch_class_histogram", "histogram_distance", "notes_per_bar", "grammar_error_rate",
           "pooled_pitch_class_histogram", "mean_finite", "generate_per_genre", "train_genre_classifier",
           "classify_genres", "classification_scores", "REPORT_PREAMBLE", "machine_description", "machine_line", "fmt",
           "markdown_table", "update_markdown_section"]
