"""Quality of music models on the held-out TEST split of their corpus, an ablation of the music embeddings, the
quality of generated music (grammar errors, pitch-class profile and note density per genre, genre control, the
objective music metrics of the literature and of structure against held-out pieces, memorization of training
pieces), and composition with control (control adherence with and without guidance against chance, bar infilling,
accompaniment).

Results go to BENCHMARKS.md (section "Quality"), a JSON file, and `evaluation_results.json` in every evaluated
model folder (next to `training_results.json`).

    python scripts/evaluate.py --model outputs/small                              # one trained model
    python scripts/evaluate.py --ablation --config scripts/configs/ablation.yaml  # train + compare baselines
    python scripts/evaluate.py --quick --ablation --output_dir /tmp/q --output /tmp/q.md   # smoke run

`--ablation` trains, with the same data, steps and (roughly) parameter count: the music model, GPT-2 without
music embeddings, and the music model with each music embedding switched off in turn. A finished run with the
same configuration in the output folder is reused (`--retrain` trains again). Run settings (`--max_steps`,
`--hidden_size`, ...) override the configuration; `--output_dir` holds the ablation runs and the JSON results.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM
from transformers.hf_argparser import HfArg

from .configuration_music import MusicConfig
from .data import AugmentationConfig, MusicDataCollator, TokenAugmenter
from .evaluation import (ACCOMPANIMENT_PROGRAMS, COPY_THRESHOLD, GUIDANCE_SCALE, MUSIC_METRICS, BarIndex,
                         _music_body, accompaniment_quality, bar_notes, classification_scores, classify_genres,
                         composition_unsupported, control_adherence, fmt, generate_per_genre, grammar_error_rate,
                         histogram_distance, infill_quality, mean_finite, memorization, music_metrics,
                         markdown_table, notes_per_bar, pooled_pitch_class_histogram, train_genre_classifier)
from .generation import REPEAT_BIAS, REPEAT_MIN_NOTES
from .real_world import DEFAULT_REAL_WORLD_DIR, real_world_quality, real_world_section
from .reports import Report
from .tokenization_music import MusicTokenizer
from .training import MODEL_SAMPLING, TrainConfig, build_datasets, build_model, evaluate, train

logger = logging.getLogger("music_hf.evaluate")
REPO = Path(__file__).resolve().parents[1]
ABLATION_CONFIG = REPO / "scripts" / "configs" / "ablation.yaml"
TINY_CONFIG = REPO / "scripts" / "configs" / "tiny.yaml"
RESULTS_FILE = "evaluation_results.json"
# --quick: the tiny config on a few more pieces (so both genres have test pieces), a handful of steps
QUICK_OVERRIDES: dict[str, Any] = {"max_pieces_per_collection": 12, "validation_fraction": 0.1, "test_fraction": 0.2,
                                   "max_steps": 20, "warmup_steps": 4, "eval_every": 20, "save_every": 20,
                                   "eval_max_batches": 2, "log_with": None, "pitch_shift": 0, "velocity_jitter": 0}
# (name, label, setting changes); every variant but the first gets the MLP width that matches its parameter count;
# the last one differs from the first only by its seed (initialization and data order): how much rows differ by chance
VARIANTS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("music", "music model (all embeddings)", {}),
    ("gpt2", "GPT-2 (no music embeddings)", {"architecture": "gpt2"}),
    ("no_note", "music model, note embedding off", {"use_note_embedding": False}),
    ("no_instrument", "music model, instrument embedding off", {"use_instrument_embedding": False}),
    ("no_temporal", "music model, temporal embedding off", {"use_temporal_embedding": False}),
    ("no_genre", "music model, genre embedding off", {"use_genre_embedding": False}),
    ("music_seed1", "music model, another seed (noise reference)", {"seed": 1}),
)
TEST_METRICS = (("loss", "NLL/token"), ("perplexity", "perplexity"), ("nll_per_note", "NLL/note"),
                ("accuracy", "next-token acc."))
DATA_KEYS = ("corpus_collections", "max_pieces_per_collection", "midi_dir", "hf_dataset", "seed",
             "validation_fraction", "test_fraction", "max_length", "overlap")


@dataclass
class EvaluationArguments:
    """What to evaluate and where the results go."""

    _argument_group_name = "evaluation"

    model: str | None = HfArg(default=None, help="a trained model folder (a run's output_dir)")
    compare: list[str] = HfArg(default_factory=list, help="other trained model folders (e.g. a GPT-2 of the same "
                                                          "size trained by the same config with --architecture "
                                                          "gpt2) whose test-split metrics are reported beside "
                                                          "--model's, on the same pieces")
    ablation: bool = HfArg(default=False, help="train and compare GPT-2 and single-embedding-off variants")
    quick: bool = HfArg(default=False, help="smoke settings: tiny config, few steps and generations, 1 thread")
    output: str = HfArg(default="BENCHMARKS.md", help="Markdown report (its section 'Quality' is rewritten)")
    json: str | None = HfArg(default=None, help="JSON results (none: <output_dir>/evaluation.json)")
    retrain: bool = HfArg(default=False, help="train ablation variants even if a finished run exists")
    generations: int | None = HfArg(default=None, help="pieces per genre and mode (default 16, quick 2)")
    max_new_tokens: int | None = HfArg(default=None, help="default: the model's context - 1 (quick 48)")
    classifier_steps: int | None = HfArg(default=None, help="genre classifier steps (default 400, quick 20)")
    generation_seed: int = HfArg(default=0, help="seed of the generations and the genre classifier")
    no_generation: bool = HfArg(default=False, help="only the test-split metrics")
    no_composition: bool = HfArg(default=False, help="skip composition with control (control adherence, infilling, "
                                                     "accompaniment)")
    composition_samples: int | None = HfArg(default=None, help="requests per control, infills and accompaniments "
                                                                "(default 16, quick 2)")
    guidance_scale: float = HfArg(default=GUIDANCE_SCALE, help="classifier-free guidance scale of the guided "
                                                               "control-adherence generations (1: none)")
    real_world_dir: str = HfArg(default="auto", help="real-world MIDI files (evaluation only) to score the model on, "
                                                     "raw and after prompt mapping (`python scripts/fetch_eval_midi.py`"
                                                     " fetches them); auto: .cache/eval-midi when it exists (not with "
                                                     "--quick); none: skip")
    device: str = HfArg(default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    threads: int | None = HfArg(default=None, help="torch CPU threads (none: torch's choice; quick: 1)")


def settings_defaults(namespace: argparse.Namespace) -> dict[str, Any]:
    """Run settings before the command line's: `--config`, else ablation.yaml (tiny.yaml with --quick) for
    --ablation, else the given model's training settings (so its test split stays held out)."""
    if not namespace.model and not namespace.ablation:
        raise ValueError("give --model DIR, --ablation, or both")
    if namespace.model and not (Path(namespace.model) / "config.json").is_file():
        raise ValueError(f"{namespace.model}: not a model folder (no config.json)")
    config = namespace.config or (TINY_CONFIG if namespace.quick and namespace.ablation else
                                  ABLATION_CONFIG if namespace.ablation else None)
    trained = Path(namespace.model) / "training_results.json" if namespace.model else None
    from_model = config is None and trained is not None and trained.is_file()
    if config is not None:
        cfg = TrainConfig.from_yaml(config)
    elif from_model:
        cfg = TrainConfig.from_dict(json.loads(trained.read_text()).get("config") or {}, str(trained))
    else:
        logger.warning("%s has no training_results.json: the data settings are the defaults", namespace.model)
        cfg = TrainConfig()
    if namespace.quick and not from_model:
        cfg = cfg.replace(**QUICK_OVERRIDES)
    values = cfg.flat() | {"output_dir": str(REPO / "outputs" / ("evaluation_quick" if namespace.quick
                                                                  else "evaluation"))}
    return values if namespace.ablation else values | MODEL_SAMPLING  # a given model samples as it was saved to


# ----- models ----------------------------------------------------------------------------------------------
def count_parameters(cfg: TrainConfig, tokenizer: MusicTokenizer, genres: list[str]) -> int:
    return sum(p.numel() for p in build_model(cfg, tokenizer, genres).parameters())


def mlp_size(config: Any) -> int:
    """The MLP width of a music or GPT-2 config."""
    return getattr(config, "intermediate_size", None) or config.n_inner


def match_parameters(cfg: TrainConfig, tokenizer: MusicTokenizer, genres: list[str], target: int) -> TrainConfig:
    """`cfg` with the MLP width (intermediate_size) whose parameter count comes closest to `target`: a variant
    without music embedding tables gets their parameters back as MLP units (the count is linear in the width)."""
    model = build_model(cfg, tokenizer, genres)
    width = mlp_size(model.config)
    base = sum(p.numel() for p in model.parameters())
    per_unit = count_parameters(cfg.replace(intermediate_size=width + 1), tokenizer, genres) - base
    return cfg.replace(intermediate_size=max(1, width + round((target - base) / per_unit)))


def train_variant(cfg: TrainConfig, retrain: bool) -> tuple[Path, float | None, bool]:
    """Train one ablation variant, or reuse a finished run of the same configuration.

    Returns the model folder, the training wall time (seconds) and whether the run was reused.
    """
    run_dir = Path(cfg.training.output_dir)
    done, timing = run_dir / "training_results.json", run_dir / "ablation_run.json"
    wanted = json.loads(json.dumps(cfg.to_dict()))
    if not retrain and done.is_file() and json.loads(done.read_text()).get("config") == wanted:
        seconds = json.loads(timing.read_text()).get("train_seconds") if timing.is_file() else None
        logger.info("reusing %s (same configuration; --retrain trains again)", run_dir)
        return run_dir, seconds, True
    if (run_dir / "train_config.json").is_file():  # an earlier run with other settings: start clean
        shutil.rmtree(run_dir)
    start = time.perf_counter()
    train(cfg)
    seconds = time.perf_counter() - start
    if not done.is_file():
        raise SystemExit(f"{run_dir}: training ended without a final model (see the log above)")
    timing.write_text(json.dumps({"train_seconds": seconds}))
    return run_dir, seconds, False


def load_model(model_dir: Path, device: str) -> tuple[Any, MusicTokenizer]:
    tokenizer = MusicTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).to(device).eval()
    return model, tokenizer


def held_out_metrics(model: Any, tokenizer: MusicTokenizer, windows: Any, batch_size: int) -> dict[str, float]:
    """NLL per token, perplexity, NLL per note and next-token accuracy over every test window."""
    loader = DataLoader(windows, batch_size=batch_size, collate_fn=MusicDataCollator(tokenizer.pad_token_id))
    return evaluate(model, loader, tokenizer.music_attributes()["note_count"])


def compare_on_test_split(cfg: TrainConfig, model_dirs: list[str | Path], batch_size: int = 16
                          ) -> list[dict[str, Any]]:
    """Held-out metrics of saved music models on the test split of one run's data settings (`cfg`): the same
    windows for every model, each read with its own tokenizer and genre ids (how the quickstart compares its
    model with the shipped one). A folder that does not exist is left out."""
    rows = []
    for folder in map(Path, model_dirs):
        if not (folder / "config.json").is_file():
            continue
        model, tok = load_model(folder, "cpu")
        windows = build_datasets(cfg.replace(init_from=str(folder)), tokenizer=tok, progress=False)[-1]
        rows.append({"model": str(folder), "parameters": sum(p.numel() for p in model.parameters()),
                     **held_out_metrics(model, tok, windows["test"], batch_size)})
    return rows


# ----- generation quality ----------------------------------------------------------------------------------
def generation_quality(model: Any, tokenizer: MusicTokenizer, genres: list[str], pieces: Any, windows: Any,
                       settings: dict[str, Any], max_length: int, device: str,
                       augmentation: AugmentationConfig | None = None) -> dict[str, Any]:
    """Generate per genre with and without grammar-constrained decoding, and compare with the test split.

    The genre classifier trains on windows augmented as the model's training was (`augmentation`, None: plain
    windows), so that what augmentation taught the generator (performed velocities, reassigned instruments) is no
    genre cue."""
    model_genres = [g for i, g in sorted(model.config.id2genre.items()) if i != 0 and g in genres]
    seed, sampling = settings["seed"], settings["sampling"]
    t0 = time.perf_counter()
    generated = {mode: generate_per_genre(model, tokenizer, model_genres, settings["per_genre"],
                                          settings["max_new_tokens"], constrained=(mode == "constrained"), seed=seed,
                                          **sampling)
                 for mode in ("constrained", "unconstrained")}
    generation_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    augmenter = TokenAugmenter(tokenizer, augmentation) if augmentation is not None else None
    classifier = train_genre_classifier(windows["train"], tokenizer, genres, steps=settings["classifier_steps"],
                                        seed=seed, device=device, max_length=max_length, augmenter=augmenter)
    classifier_seconds = time.perf_counter() - t0
    test_windows = windows["test"].filter(lambda g: g > 0, input_columns="genre_id")
    real = classification_scores(classify_genres(classifier, test_windows["input_ids"], tokenizer.pad_token_id),
                                 test_windows["genre_id"])
    recognised = {}
    for mode, by_genre in generated.items():
        seqs = [s for g in model_genres for s in by_genre[g]]
        true = [genres.index(g) for g in model_genres for _ in by_genre[g]]
        recognised[mode] = classification_scores(classify_genres(classifier, seqs, tokenizer.pad_token_id), true)

    def of_genre(split: str, genre: str) -> list[list[int]]:
        gid = genres.index(genre)
        return [ids for ids, g in zip(pieces[split]["input_ids"], pieces[split]["genre_id"]) if g == gid]

    per_genre = {}
    for genre in model_genres:
        gid = genres.index(genre)
        test, train_pieces = of_genre("test", genre), of_genre("train", genre)
        gen = generated["constrained"][genre]
        test_hist = pooled_pitch_class_histogram(test, tokenizer)
        gen_hist = pooled_pitch_class_histogram(gen, tokenizer)
        train_hist = pooled_pitch_class_histogram(train_pieces, tokenizer)
        per_genre[genre] = {
            "test_pieces": len(test), "generated": len(gen),
            "generated_tokens": int(sum(len(s) - 1 for s in gen)),
            "grammar_error_rate": {m: grammar_error_rate(generated[m][genre], tokenizer) for m in generated},
            "pitch_class_js": histogram_distance(gen_hist, test_hist, "js"),
            "pitch_class_l1": histogram_distance(gen_hist, test_hist, "l1"),
            "pitch_class_js_train_vs_test": histogram_distance(train_hist, test_hist, "js"),
            "notes_per_bar_generated": mean_finite([notes_per_bar(s, tokenizer) for s in gen]),
            "notes_per_bar_test": mean_finite([notes_per_bar(s, tokenizer) for s in test]),
            "classifier_recall": {m: recognised[m]["recall"].get(gid, float("nan")) for m in recognised},
        }
    all_gen = {m: [s for g in model_genres for s in generated[m][g]] for m in generated}
    t0 = time.perf_counter()
    structure = music_quality(tokenizer, model_genres, genres, generated["constrained"], pieces,
                              settings["max_new_tokens"], seed)
    music_seconds = time.perf_counter() - t0
    return {
        "genres": model_genres, "genre_ids": {g: genres.index(g) for g in model_genres},
        "per_genre": per_genre, **structure,
        "grammar_error_rate": {m: grammar_error_rate(all_gen[m], tokenizer) for m in all_gen},
        "classifier": {"test_windows": real, "generated": recognised, "steps": settings["classifier_steps"],
                       "augmentation": dataclasses.asdict(augmentation) if augmentation is not None else None},
        "settings": {"per_genre": settings["per_genre"], "max_new_tokens": settings["max_new_tokens"], **sampling,
                     "seed": seed},
        "seconds": {"generation": generation_seconds, "classifier": classifier_seconds,
                    "music_metrics": music_seconds},
    }


MAX_REFERENCE_PIECES = 200  # training pieces per genre (a seeded sample) whose metrics make the floor


def _music_means(scores: list[Any]) -> dict[str, float]:
    rows = [music_metrics(s) for s in scores]
    return {key: mean_finite([r[key] for r in rows]) for key, _ in MUSIC_METRICS}


def music_reference(tokenizer: MusicTokenizer, model_genres: list[str], genres: list[str], pieces: Any,
                    max_new_tokens: int, seed: int = 0, max_reference: int = MAX_REFERENCE_PIECES) -> dict[str, Any]:
    """What `music_quality` compares generations with, computed once for any number of them: per genre the music
    metrics of the held-out pieces and of at most `max_reference` training pieces (drawn with `seed`), each cut to
    its first `max_new_tokens` tokens, the held-out pieces' bars, and the bars of every training piece, whole
    (`BarIndex`, where memorization looks for copies)."""
    def opening(ids: list[int]) -> list[int]:
        return _music_body(tokenizer, ids)[:max_new_tokens]

    rng = np.random.default_rng(seed)
    ids = {split: pieces[split]["input_ids"] if split in pieces else [] for split in ("train", "test")}
    genre_of = {split: np.asarray(pieces[split]["genre_id"] if split in pieces else [], dtype=np.int64)
                for split in ("train", "test")}
    per_genre: dict[str, Any] = {}
    held_out_bars: dict[str, list] = {}
    for genre in model_genres:
        gid = genres.index(genre)
        train_rows = np.flatnonzero(genre_of["train"] == gid)
        if len(train_rows) > max_reference:
            train_rows = np.sort(rng.choice(train_rows, max_reference, replace=False))
        sets = {"test": [tokenizer.decode_midi(opening(ids["test"][int(r)]))
                         for r in np.flatnonzero(genre_of["test"] == gid)],
                "train": [tokenizer.decode_midi(opening(ids["train"][int(r)])) for r in train_rows]}
        per_genre[genre] = {"n": {k: len(v) for k, v in sets.items()},
                            **{k: _music_means(v) for k, v in sets.items()}}
        held_out_bars[genre] = [bar_notes(s) for s in sets["test"]]
    return {"per_genre": per_genre, "held_out_bars": held_out_bars, "max_new_tokens": max_new_tokens,
            "max_reference": max_reference, "training_pieces": len(ids["train"]),
            "index": BarIndex([bar_notes(tokenizer.decode_midi(x)) for x in ids["train"]])}


def music_quality(tokenizer: MusicTokenizer, model_genres: list[str], genres: list[str],
                  generated: dict[str, list[list[int]]], pieces: Any, max_new_tokens: int, seed: int = 0,
                  max_reference: int = MAX_REFERENCE_PIECES, reference: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """The objective music metrics (`music_metrics`) per genre of the generations, of held-out pieces and of
    training pieces, and the memorization of the generations (and, as the floor, of the held-out pieces).

    Held-out and training pieces are cut to their first `max_new_tokens` tokens, as long as a generation at most:
    repeated bars, groove consistency and the longest copied span grow with a piece's length. The metrics' training
    column takes at most `max_reference` training pieces per genre (drawn with `seed`); memorization looks for
    copies in every training piece, whole, of every genre (`BarIndex`). `reference`: `music_reference`'s result for
    the same pieces and settings, computed once where several sets of generations are compared.
    """
    reference = reference or music_reference(tokenizer, model_genres, genres, pieces, max_new_tokens, seed,
                                             max_reference)
    index = reference["index"]
    metrics: dict[str, Any] = {}
    bars: dict[str, dict[str, list]] = {"generated": {}, "held-out": {}}
    for genre in model_genres:
        scores = [tokenizer.decode_midi(s) for s in generated[genre]]
        ref = reference["per_genre"][genre]
        metrics[genre] = {"n": {"generated": len(scores), **ref["n"]}, "generated": _music_means(scores),
                          "test": ref["test"], "train": ref["train"]}
        bars["generated"][genre] = [bar_notes(s) for s in scores]
        bars["held-out"][genre] = reference["held_out_bars"][genre]
    memorized = {kind: {"per_genre": {g: memorization(b, index) for g, b in by_genre.items()},
                        "all": memorization([x for b in by_genre.values() for x in b], index)}
                 for kind, by_genre in bars.items()}
    return {"music_metrics": {"per_genre": metrics, "max_new_tokens": max_new_tokens,
                              "max_reference": reference["max_reference"],
                              "training_pieces": reference["training_pieces"]},
            "memorization": {**memorized, "threshold": COPY_THRESHOLD, "training_pieces": index.pieces,
                             "distinct_training_bars": len(index.where)}}


REPEAT_METRICS = ("repeated_bars", "pitch_class_entropy", "groove_consistency", "notes_per_bar", "simultaneous_voices",
                  "dissonance_rate")  # structure and what copying could cost


def repeat_completion_quality(model: Any, tokenizer: MusicTokenizer, genres: list[str], pieces: Any,
                              biases: list[float], per_genre: int, max_new_tokens: int, seed: int = 0,
                              **sampling: Any) -> dict[str, Any]:
    """Repeat completion measured side by side: for each `repeat_bias` in `biases` (0: off), `per_genre` unprompted
    grammar-constrained generations per genre (the same seeds for every bias) and their music metrics
    (`music_quality`: repeated bars, pitch-class entropy, groove consistency, notes per bar, simultaneous voices,
    dissonant intervals; memorization), with the
    held-out and training pieces' (cut to `max_new_tokens` tokens) as the reference and the floor."""
    model_genres = [g for i, g in sorted(model.config.id2genre.items()) if i != 0 and g in genres]
    shared = music_reference(tokenizer, model_genres, genres, pieces, max_new_tokens, seed)
    runs: dict[str, Any] = {}
    reference = None
    for bias in biases:
        t0 = time.perf_counter()
        generated = generate_per_genre(model, tokenizer, model_genres, per_genre, max_new_tokens, constrained=True,
                                       seed=seed, repeat_bias=bias, **sampling)
        seconds = time.perf_counter() - t0
        quality = music_quality(tokenizer, model_genres, genres, generated, pieces, max_new_tokens, seed,
                                reference=shared)
        per = quality["music_metrics"]["per_genre"]
        if reference is None:
            reference = {"per_genre": {g: {"n": per[g]["n"], "test": per[g]["test"], "train": per[g]["train"]}
                                       for g in per},
                         "memorization": quality["memorization"]["held-out"]["all"]}
        runs[str(bias)] = {"bias": bias, "generation_seconds": seconds,
                           "per_genre": {g: {k: per[g]["generated"][k] for k in REPEAT_METRICS} for g in per},
                           "memorization": quality["memorization"]["generated"]["all"]}
    return {"genres": model_genres, "biases": list(biases), "runs": runs, "reference": reference,
            "settings": {"per_genre": per_genre, "max_new_tokens": max_new_tokens, "seed": seed, **sampling}}


REPEAT_SUMMARY_MIN_PIECES = 10  # genres with at least this many held-out pieces make the summary rows


def repeat_section(results: dict[str, Any], command: str, machine: str, seconds: float) -> str:
    """BENCHMARKS.md's "Repeats" section from `repeat_completion_quality`'s results."""
    runs, ref = results["runs"], results["reference"]
    biases = [str(b) for b in results["biases"]]
    st = results["settings"]
    names = dict(MUSIC_METRICS)
    head = ["genre", "metric", "held-out", "training", *(f"bias {float(b):g}" for b in biases)]
    rows = []
    for genre in results["genres"]:
        r = ref["per_genre"][genre]
        rows.append([genre, "pieces", r["n"]["test"], r["n"]["train"], *(r["n"]["generated"] for _ in biases)])
        for key in REPEAT_METRICS:
            rows.append([genre, names[key], r["test"][key], r["train"][key],
                         *(runs[b]["per_genre"][genre][key] for b in biases)])
    summary_genres = [g for g in results["genres"] if ref["per_genre"][g]["n"]["test"] >= REPEAT_SUMMARY_MIN_PIECES]
    summary = []
    for key in REPEAT_METRICS:
        floor = mean_finite([abs(ref["per_genre"][g]["train"][key] - ref["per_genre"][g]["test"][key])
                             for g in summary_genres])
        summary.append([names[key], floor, *(mean_finite([abs(runs[b]["per_genre"][g][key]
                                                             - ref["per_genre"][g]["test"][key])
                                                         for g in summary_genres]) for b in biases)])
    memo = [["held-out pieces", ref["memorization"]["copied_share"], ref["memorization"]["max_longest"]]]
    memo += [[f"bias {float(b):g}", runs[b]["memorization"]["copied_share"], runs[b]["memorization"]["max_longest"]]
             for b in biases]
    return "\n\n".join([
        f"Produced by `{command}` in {seconds / 60:.1f} min. {machine}",
        f"Repeat completion (`generate_music(repeat_bias=...)`, `MusicRepeatLogitsProcessor`): once a bar has "
        f"begun as an earlier bar of the piece began, for {REPEAT_MIN_NOTES} notes, the tokens that carry on such a "
        f"bar get `repeat_bias` more logit (0: off). Side by side in one run: {st['per_genre']} unprompted "
        f"grammar-constrained generations per genre and bias, at most {st['max_new_tokens']} new tokens, the same "
        f"seeds for every bias (seed {st['seed']}), sampling "
        + ", ".join(f"{k} {v}" for k, v in st.items() if k not in ("per_genre", "max_new_tokens", "seed"))
        + "; the metrics as in Quality's music metrics, the held-out (test) and training pieces cut to their first "
        f"{st['max_new_tokens']} tokens (training: at most {MAX_REFERENCE_PIECES} pieces per genre).",
        markdown_table(head, rows),
        f"Mean distance to the held-out pieces over the genres with at least {REPEAT_SUMMARY_MIN_PIECES} held-out "
        f"pieces ({', '.join(summary_genres)}); the floor is the training pieces' distance. `generate_music`'s "
        f"default (`REPEAT_BIAS`) is {REPEAT_BIAS:g}:",
        markdown_table(["metric", "floor: training vs held-out", *(f"bias {float(b):g}" for b in biases)], summary),
        f"Memorization (copies of training pieces, whole): share of pieces copying more than {COPY_THRESHOLD} "
        "consecutive bars, and the longest copy in bars:",
        markdown_table(["pieces", f"copy > {COPY_THRESHOLD} bars", "longest copy (bars)"], memo),
    ])


# ----- composition with control ----------------------------------------------------------------------------
COMPOSITION_SETTINGS = ("fim_rate", "fim_order", "fim_max_bars", "control_dropout", "genre_dropout")


def trained_settings(model_dir: Path) -> dict[str, Any] | None:
    """The flat training settings a model folder records (its training_results.json's "config"); None where the
    folder has no such file."""
    done = Path(model_dir) / "training_results.json"
    if not done.is_file():
        return None
    return json.loads(done.read_text()).get("config") or {}


def trained_augmentation(model_dir: Path) -> AugmentationConfig | None:
    """The augmentation a model was trained with (`trained_settings`); None where the folder does not say or it
    trained without augmentation."""
    config = trained_settings(model_dir)
    if config is None:
        return None
    known = TrainConfig().flat()
    aug = TrainConfig.from_dict({k: v for k, v in config.items() if k in known}).data.augmentation()
    return aug if aug.enabled else None


def trained_composition(model_dir: Path) -> dict[str, Any] | None:
    """The composition settings a model was trained with (COMPOSITION_SETTINGS, from `trained_settings`); None where
    the folder does not say."""
    config = trained_settings(model_dir)
    if config is None:
        return None
    defaults = TrainConfig().flat()
    return {k: config.get(k, defaults[k]) for k in COMPOSITION_SETTINGS}


def composition_quality(model: Any, tokenizer: MusicTokenizer, references: Any, settings: dict[str, Any],
                        trained: dict[str, Any] | None = None) -> dict[str, Any]:
    """Control adherence (with and without guidance, against chance), bar infilling (NLL given both sides vs the
    left side, exact bar count, grammar) and accompaniment (given notes kept, new notes in the target program) on
    the held-out pieces `references` (token ids); {"skipped": why} for a model or tokenizer that cannot compose."""
    reason = composition_unsupported(model, tokenizer)
    if reason is None and not len(references):
        reason = "no held-out pieces"
    if reason is not None:
        return {"skipped": reason, "trained_with": trained}
    n, seed, sampling = settings["samples"], settings["seed"], settings["sampling"]
    t0 = time.perf_counter()
    controls = control_adherence(model, tokenizer, references, samples=n, max_new_tokens=settings["max_new_tokens"],
                                 guidance_scale=settings["guidance_scale"], seed=seed, **sampling)
    t1 = time.perf_counter()
    # windows no longer than the training windows: a fill-in-the-middle prompt puts the gap's tokens last, and with
    # learned positions a longer window scores them at positions training never saw (measured: NLL 0.92 vs 0.65)
    infill = infill_quality(model, tokenizer, references, samples=n, seed=seed,
                            max_tokens=settings.get("window", 1024), **sampling)
    t2 = time.perf_counter()
    accompaniment = accompaniment_quality(model, tokenizer, references, samples=n, seed=seed, **sampling)
    t3 = time.perf_counter()
    return {"controls": controls, "infill": infill, "accompaniment": accompaniment, "trained_with": trained,
            "settings": {"samples": n, "max_new_tokens": settings["max_new_tokens"], **sampling, "seed": seed,
                         "guidance_scale": settings["guidance_scale"]},
            "seconds": {"controls": t1 - t0, "infill": t2 - t1, "accompaniment": t3 - t2}}


def composition_section(report: Report, comp: dict[str, Any] | None) -> None:
    """The subsection "Composition with control" of the report (nothing when it was not asked for)."""
    if comp is None:
        return
    report.heading("Composition with control")
    if comp.get("skipped"):
        report.text(f"Not evaluated: {comp['skipped']}.")
        return
    trained = comp.get("trained_with")
    if trained is None:
        how = "Its training settings are unknown (no training_results.json)."
    else:
        how = (f"Training settings: fim_rate {trained['fim_rate']} ({trained.get('fim_order', 'psm')} layout"
               + (f", at most {trained['fim_max_bars']} bars left out" if trained.get("fim_max_bars") else "") + "), "
               f"control_dropout {trained['control_dropout']}, genre_dropout {trained['genre_dropout']}.")
        unseen = [what for what, missing in (
            ("without control prefixes (control_dropout none): it never saw a control token, so the control rows "
             "are a baseline", trained["control_dropout"] is None),
            ("without fill-in-the-middle windows (fim_rate 0): it never saw an infill token, so the infilling rows "
             "are a baseline", not trained["fim_rate"])) if missing]
        if unseen:
            how += " It was trained " + "; and ".join(unseen) + "."
    c, inf, acc, st = comp["controls"], comp["infill"], comp["accompaniment"], comp["settings"]
    guided = c["guidance_scale"]
    report.text(f"Model: {comp.get('model', 'the evaluated model')}. {how} Held-out (test split) pieces, sampling with "
                f"temperature {st['temperature']}, top-p {st['top_p']}, top-k {st['top_k']}, seed {st['seed']}.")
    report.text(f"Control adherence: {c['samples']} requests per control, each the value measured on the opening "
                f"(first {c['max_new_tokens']} tokens) of one of {c['references']} held-out pieces in turn (timing: "
                "score and performed in turn, as the held-out openings are almost all score; repetition: each of its "
                "bins in turn); each "
                f"control asked alone, unprompted, grammar-constrained, at most {c['max_new_tokens']} new tokens, "
                "once without guidance and once with classifier-free guidance"
                + (f" (scale {guided:g})" if guided else " (not run: guidance scale 1)") + ". Matched: share of "
                "the pieces whose measured value falls in the requested bin (key: the Krumhansl-Kessler key of the "
                "output equals the requested key; density: notes per bar over the bars before the last, in the same "
                "Density bin; polyphony: the same Polyphony bin; pitch range: the same lowest and highest octaves; "
                "timing: more than a quarter of the onsets off the quarter-beat grid or not, as asked; repetition: "
                "the share of the non-empty bars before the last that repeat an earlier bar, in the same Repetition "
                "bin). "
                "Chance: the share of the held-out openings in the requested bin (what a model that ignores the "
                "control and writes like the held-out pieces would score), and 1 / the number of bins.")
    report.table(["control", "requests", "chance (held-out share in bin)", "chance (uniform)", "matched, no guidance",
                  "matched, guidance" + (f" {guided:g}" if guided else ""), "matched no guidance / held-out chance"],
                 [[name, e["n"], e["chance"], e["uniform_chance"], e["adherence"].get("unguided"),
                   e["adherence"].get("guided"),
                   e["adherence"].get("unguided", float("nan")) / e["chance"] if e["chance"] else float("nan")]
                  for name, e in c["controls"].items()])
    report.text(f"Infilling: {inf['n']} gaps of 1 to {inf['max_gap']} bars (bars on both sides) in the openings of "
                "held-out pieces (whole bars that fit the model's context"
                + (f"; {inf['skipped']} held-out piece{'s' if inf['skipped'] != 1 else ''} left out, fewer than "
                   "three of their bars fit" if inf["skipped"] else "")
                + "). NLL per token (nats) of the gap's own "
                f"{inf['tokens']} tokens given both sides (the fill-in-the-middle prompt in the model's layout, "
                + ("spm: one Infill_Bar per bar before the suffix, suffix, Infill_Start, prefix"
                   if inf.get("order") == "spm" else "psm: prefix, one Infill_Bar per missing bar, suffix, Infill_Start")
                + ") and given the left side only (plain continuation); both sides "
                "lower: share of the gaps where the fill-in-the-middle prompt gives the lower NLL. Exact bars: share "
                "of sampled infills (`infill_piece`) with exactly the requested bars in the gap and the piece's bar "
                "count; grammar errors: share of the infilled pieces' tokens the grammar check rejects.")
    report.table(["gaps", "gap tokens", "NLL/token both sides", "NLL/token left only", "both sides lower",
                  "exact bars", "grammar errors", "failed calls"],
                 [[inf["n"], inf["tokens"], inf["nll_fim"], inf["nll_left"], inf["fim_better"], inf["exact_bars"],
                   inf["grammar_error_rate"], len(inf["failures"])]])
    if "ratio_ci" in inf:
        ci, music_ci = inf["ratio_ci"], inf["ratio_music_ci"]
        report.text(f"How sure, gap by gap: the gaps' NLL given both sides over given the left side only is "
                    f"{fmt(inf['ratio'])} (95 % bootstrap interval over the gaps {fmt(ci[0])} to {fmt(ci[1])}); "
                    f"without the bar lines, which `infill_music` fixes, {fmt(inf['ratio_music'])} "
                    f"({fmt(music_ci[0])} to {fmt(music_ci[1])}). Sign test of both sides lower in more gaps than "
                    f"chance: one-sided p = {fmt(inf['sign_p'])}.")
    if inf.get("by_kind"):
        kinds = inf["by_kind"]
        report.text("The gap's tokens apart: its bar lines (the Bar token that opens each of its bars, where the "
                    "model decides whether the gap goes on; `infill_music` fixes the bar count, so sampling never "
                    "takes that decision) and the rest (the notes, positions and durations).")
        report.table(["gap tokens", "tokens", "NLL/token both sides", "NLL/token left only", "both sides / left"],
                     [[label, count, kinds["fim"][key], kinds["left"][key], kinds["fim"][key] / kinds["left"][key]]
                      for label, count, key in (("bar lines", inf["bar_tokens"], "bar_tokens"),
                                                ("everything else", inf["tokens"] - inf["bar_tokens"],
                                                 "other_tokens"))])
    programs = ", ".join(f"{p} ({n})" for p, n in acc["programs"].items()) or "-"
    report.text(f"Accompaniment: `accompany_piece` on {acc['n']} held-out openings (whole bars, a third of the "
                "context at most), a new part for the first of programs "
                f"{', '.join(map(str, ACCOMPANIMENT_PROGRAMS))} the excerpt lacks. Given "
                "kept: share of the pieces whose given notes all come back exactly (onset, duration, pitch, velocity, "
                "program) and nothing else in their programs; in target: share of the new notes in the target "
                "program.")
    report.table(["pieces", "target programs (pieces)", "given notes kept", "new notes in target program",
                  "new notes", "new notes/bar", "pieces with new notes", "failed calls"],
                 [[acc["n"], programs, acc["given_kept"], acc["new_in_target"], acc["new_notes"],
                   acc["new_notes_per_bar"], acc["with_new_notes"], len(acc["failures"])]])


# ----- report ----------------------------------------------------------------------------------------------
def recognition_section(report: Report, gen: dict[str, Any]) -> None:
    """Genre recognition per genre against chance (1/genres): the generations' recall next to the real test
    windows' recall of the same classifier."""
    c = gen["classifier"]
    chance = c["generated"]["constrained"]["uniform_chance"]
    real = c["test_windows"]["recall"]
    report.text("Per genre: share of the generations of each genre the classifier assigns to it (its recall), and "
                "its recall on the real test windows of the genre, against chance (1/genres).")
    rows = []
    for genre, g in gen["per_genre"].items():
        gid = gen.get("genre_ids", {}).get(genre)
        recall = g["classifier_recall"]
        rows.append([genre, g["generated"], recall["constrained"], recall["unconstrained"],
                     real.get(gid, real.get(str(gid), float("nan"))) if gid is not None else float("nan"), chance,
                     recall["constrained"] / chance])
    report.table(["genre", "generated", "recognised (constrained)", "recognised (unconstrained)",
                  "recall on real test windows", "chance (1/genres)", "recognised (constrained) / chance"], rows)


def music_metrics_section(report: Report, gen: dict[str, Any]) -> None:
    """The tables "Music metrics" (per genre: generations, held-out and training pieces, and the training-vs-held-out
    gap as the floor) and "Memorization"."""
    mm, mem = gen.get("music_metrics"), gen.get("memorization")
    if not mm or not mem:
        return
    report.heading("Music metrics")
    report.text(
        "Objective metrics of the literature, per piece then averaged per genre (pieces where a metric is undefined "
        "left out, n/a where none has it): constrained generations, held-out (test) pieces and at most "
        f"{mm['max_reference']} training pieces per genre, the real pieces cut to their first {mm['max_new_tokens']} "
        "tokens, as long as a generation at most. From muspy: pitch-class entropy (bits; 12-bin histogram of the "
        "notes), scale consistency (largest share of notes in one major or minor scale), groove consistency (1 - "
        "mean Hamming distance of neighbouring bars' onset patterns), polyphony (mean pitches on over the ticks "
        "where any is on), empty-beat rate (share of quarter-note beats where no note sounds). Ours: notes per bar; "
        "repeated bars (share of the non-empty bars whose notes, relative to the bar start, equal an earlier bar's); "
        "simultaneous voices (mean notes sounding at an onset); dissonant intervals (share of the pitch pairs "
        "formed at onsets a minor second, tritone or major seventh apart, in any octave; n/a for melodies). "
        "Floor: the gap between training and held-out pieces of the genre, what two samples of real music differ by; "
        "a generation gap near or below it is as close to the held-out pieces as the training pieces are.")
    rows = []
    for genre, m in mm["per_genre"].items():
        rows.append([genre, "pieces", m["n"]["generated"], m["n"]["test"], m["n"]["train"], "-", "-"])
        for key, label in MUSIC_METRICS:
            g, t, tr = m["generated"][key], m["test"][key], m["train"][key]
            rows.append([genre, label, g, t, tr, abs(g - t), abs(tr - t)])
    report.table(["genre", "metric", "generated", "held-out", "training", "gap generated vs held-out",
                  "floor: gap training vs held-out"], rows)
    report.heading("Memorization")
    threshold = mem["threshold"]
    report.text(
        f"For each piece, the longest span of consecutive bars that equals consecutive bars of one training piece "
        f"(all {mem['training_pieces']} training pieces, whole, every genre; {mem['distinct_training_bars']} distinct "
        "non-empty bars in a hash index). A bar is its notes as (onset relative to the bar start, pitch, duration), "
        "all parts pooled: a copy must have the same pitches (not transposed) and rhythm; empty bars never match. "
        f"Copying: a longest span of more than {threshold} bars. Held-out pieces (cut as above) are the floor: how "
        "much real pieces of the corpus share with the training pieces.")
    rows = []
    for kind in ("generated", "held-out"):
        for genre, r in [*mem[kind]["per_genre"].items(), ("all genres", mem[kind]["all"])]:
            rows.append([kind, genre, r["n"], r["mean_longest"], r["max_longest"], r["copied_share"]])
    report.table(["pieces", "genre", "n", "mean longest copied span (bars)", "longest copied span (bars)",
                  f"share copying > {threshold} bars"], rows)


def quality_section(report: Report, results: dict[str, Any]) -> None:
    """The tables of the section "Quality", each with the settings it was measured with."""
    models, gen, s, sec = results["models"], results.get("generation"), results["settings"], results["seconds"]
    trained = [m["train_seconds"] for m in models.values() if m.get("train_seconds")]
    reused = any(m.get("reused") for m in models.values())
    report.text(f"Wall time: data preparation {sec['data'] / 60:.1f} min (corpus conversion and tokenization, or "
                "their cache), "
                + (f"training {sum(trained) / 60:.1f} min ({len(trained)} runs"
                   + (", timed when an earlier call trained them" if reused else "") + "), " if trained else "")
                + f"evaluation {sec['evaluation'] / 60:.1f} min.",
                f"Data: {s['data']}. Test split: {s['test_windows']} windows of at most {s['max_length']} tokens "
                f"({s['test_tokens']} predicted tokens) from {s['test_pieces']} held-out pieces.")
    report.heading("Next-token prediction on the test split")
    report.table(["model", "parameters", "MLP size", *(label for _, label in TEST_METRICS), "train min"],
                 [[m["label"], m["parameters"], m.get("intermediate_size", "-"),
                   *(m["test"][k] for k, _ in TEST_METRICS),
                   f"{m['train_seconds'] / 60:.1f}" if m.get("train_seconds") else "-"] for m in models.values()],
                 digits=4)
    if results.get("ablation"):
        a = results["ablation"]
        noise = (f" The two seeds of the full music model differ by "
                 f"{abs(models['music']['test']['loss'] - models['music_seed1']['test']['loss']):.4f} NLL/token."
                 if "music_seed1" in models else "")
        report.text(f"All variants: {a['steps']} steps of {a['batch']} windows ({a['tokens_per_step']} tokens at most "
                    f"per step), seed {a['seed']}, except the noise reference, which differs from the full music "
                    f"model only by its seed.{noise} Variants without an embedding table get its parameters back as "
                    "MLP width (column MLP size). NLL in nats; NLL/note: the summed NLL over the notes predicted.")
    if gen:
        st, c = gen["settings"], gen["classifier"]
        report.heading("Generated music")
        report.text(f"Model: {gen['model']}. {st['per_genre']} unprompted pieces per genre, at most "
                    f"{st['max_new_tokens']} new tokens, sampling with temperature {st['temperature']}, top-p "
                    f"{st['top_p']}, top-k {st['top_k']}, seed {st['seed']}; once with grammar-constrained decoding "
                    "and once without. Grammar errors: share of the generated tokens (up to the first EOS, a "
                    "trailing unfinished note dropped) that the tokenizer's grammar check rejects. JSD: "
                    "Jensen-Shannon divergence in bits between pooled 12-bin pitch-class histograms (constrained "
                    "generations or training pieces against the genre's test pieces). Genre recognised: share of "
                    "the pieces the genre classifier below assigns to the requested genre.")
        per = gen["per_genre"].values()
        rows = [[genre, g["test_pieces"], g["generated"], g["grammar_error_rate"]["constrained"],
                 g["grammar_error_rate"]["unconstrained"], g["pitch_class_js"], g["pitch_class_js_train_vs_test"],
                 g["notes_per_bar_generated"], g["notes_per_bar_test"], g["classifier_recall"]["constrained"],
                 g["classifier_recall"]["unconstrained"]] for genre, g in gen["per_genre"].items()]
        rows.append(["all genres", sum(g["test_pieces"] for g in per), sum(g["generated"] for g in per),
                     gen["grammar_error_rate"]["constrained"], gen["grammar_error_rate"]["unconstrained"],
                     *(mean_finite([g[k] for g in per]) for k in ("pitch_class_js", "pitch_class_js_train_vs_test",
                                                                  "notes_per_bar_generated", "notes_per_bar_test")),
                     c["generated"]["constrained"]["accuracy"], c["generated"]["unconstrained"]["accuracy"]])
        report.table(["genre", "test pieces", "generated", "grammar errors (constrained)",
                      "grammar errors (unconstrained)", "pitch-class JSD gen vs test", "JSD train vs test",
                      "notes/bar gen", "notes/bar test", "genre recognised (constrained)",
                      "genre recognised (unconstrained)"], rows)
        report.heading("Genre control")
        report.text(f"Classifier: `MusicForSequenceClassification`, 2 layers of width 64, no genre embedding, "
                    f"{c['steps']} steps on training windows in genre-balanced batches, reading the first "
                    f"{s['max_length']} tokens of a piece. Balanced accuracy: mean recall per genre. "
                    + ("Its training windows are augmented as the model's were ("
                       + ", ".join(f"{k} {v}" for k, v in c["augmentation"].items()) + "): what augmentation "
                       "taught the generator (performed velocities, other instruments) is no genre cue, and the "
                       "real test windows it is scored on are not augmented." if c.get("augmentation") else
                       "Its training windows are not augmented (the model trained without augmentation)."))
        report.table(["pieces classified", "n", "accuracy", "balanced accuracy", "chance (1/genres)",
                      "majority-class rate", "balanced accuracy / chance"],
                     [[label, r["n"], r["accuracy"], r["balanced_accuracy"], r["uniform_chance"], r["majority_rate"],
                       r["balanced_accuracy"] / r["uniform_chance"]]
                      for label, r in (("real test windows", c["test_windows"]),
                                       ("generated, constrained", c["generated"]["constrained"]))])
        recognition_section(report, gen)
        music_metrics_section(report, gen)
    elif results.get("generation_skipped"):
        report.text(f"Generated music: not evaluated ({results['generation_skipped']}).")
    composition_section(report, results.get("composition"))
    real_world_section(report, results.get("real_world"))
    report.heading("Commands")
    report.bullets([
        "the ablation: `python scripts/evaluate.py --ablation --config scripts/configs/ablation.yaml` "
        "(`--threads N` sets torch's CPU threads)",
        "a trained model: `python scripts/evaluate.py --model outputs/small` (its training settings pick the test "
        "split)",
        "a GPU-sized model: `accelerate launch scripts/train.py --config scripts/configs/gpu.yaml`, then "
        "`python scripts/evaluate.py --model outputs/gpu --generations 32 --max_new_tokens 1024`",
        "smoke run: `python scripts/evaluate.py --quick --ablation --output_dir /tmp/quick --output /tmp/quick.md`",
        "composition with control: on by default for the evaluated music model (`--composition_samples N`, "
        "`--guidance_scale G`; `--no_composition` skips it)",
        "real-world MIDI: `python scripts/fetch_eval_midi.py` once (into `.cache/eval-midi`, never training data); "
        "evaluate then scores the evaluated model on it (`--real_world_dir DIR` for other files, `none` to skip)"])


# ----- the run ---------------------------------------------------------------------------------------------
def real_world_folder(args: EvaluationArguments) -> Path | None:
    """The folder of real-world MIDI files to score (`--real_world_dir`), None for none."""
    value = (args.real_world_dir or "none").strip()
    if value.lower() == "none":
        return None
    if value.lower() == "auto":
        return DEFAULT_REAL_WORLD_DIR if DEFAULT_REAL_WORLD_DIR.is_dir() and not args.quick else None
    if not Path(value).is_dir():
        raise SystemExit(f"--real_world_dir {value}: no such folder (`python scripts/fetch_eval_midi.py` fetches "
                         f"the real-world MIDI files into {DEFAULT_REAL_WORLD_DIR})")
    return Path(value)


def run(args: EvaluationArguments, cfg: TrainConfig, command: str) -> dict[str, Any]:
    """Evaluate (and with `--ablation`, first train) the models; write the report, the JSON and each model's
    `evaluation_results.json`."""
    if not args.no_generation and importlib.util.find_spec("muspy") is None:
        raise SystemExit("the music metrics of the generations need muspy: pip install 'music-hf[eval]' "
                         "(or pass --no_generation)")
    report = Report(command, args.device)
    out_dir = Path(cfg.training.output_dir)
    json_path = Path(args.json) if args.json else out_dir / "evaluation.json"
    t0 = time.perf_counter()
    tokenizer, genres, pieces, summary, windows = build_datasets(cfg, progress=False)
    data_seconds = time.perf_counter() - t0
    if "test" not in windows:
        raise SystemExit("the test split is empty: raise test_fraction or add pieces")
    models: dict[str, dict[str, Any]] = {}

    ablation = None
    if args.ablation:
        full = count_parameters(cfg, tokenizer, genres)
        for name, label, change in VARIANTS:
            vcfg = cfg.replace(**change, output_dir=str(out_dir / "ablation" / name))
            if name != "music":
                vcfg = match_parameters(vcfg, tokenizer, genres, full)
            folder, seconds, reused = train_variant(vcfg, args.retrain)
            models[name] = {"label": label, "dir": str(folder), "train_seconds": seconds, "reused": reused}
        run_cfg = cfg.training
        batch = run_cfg.per_device_batch_size * run_cfg.gradient_accumulation_steps
        ablation = {"steps": run_cfg.max_steps, "batch": batch, "tokens_per_step": batch * cfg.data.max_length,
                    "seed": run_cfg.seed, "target_parameters": full}
    if args.model:
        models["model"] = {"label": f"`{args.model}`", "dir": str(args.model)}
    for i, folder in enumerate(args.compare):
        if not (Path(folder) / "config.json").is_file():
            raise ValueError(f"--compare {folder}: not a model folder (no config.json)")
        models[f"compare{i}"] = {"label": f"`{folder}`", "dir": str(folder)}

    flat = cfg.flat()
    data_for: dict[str, tuple] = {}  # windows per tokenizer (a given model may bring its own)
    gen_name = "model" if args.model else "music"
    generation, generation_skipped, composition = None, None, None
    real_world_dir = real_world_folder(args)
    real_world = None
    for name, entry in models.items():
        model, tok = load_model(Path(entry["dir"]), args.device)
        # a given music model reads the data with its own genre ids (its genres first, as a fine-tuning run would)
        own = name == "model" and getattr(model.config, "model_type", "") == MusicConfig.model_type
        data_cfg = cfg.replace(init_from=entry["dir"]) if own else cfg
        key = tok.to_json_summary() + str(tok.vocab_size) + (entry["dir"] if own else "")
        if key not in data_for:
            data_for[key] = (tok, *build_datasets(data_cfg, tokenizer=tok, progress=False)[1:])
        tok, genres_m, pieces_m, _, windows_m = data_for[key]
        entry["parameters"] = sum(p.numel() for p in model.parameters())
        entry["intermediate_size"] = mlp_size(model.config)
        entry["test"] = held_out_metrics(model, tok, windows_m["test"], cfg.training.per_device_batch_size)
        logger.info("%s: test %s", name, {k: round(v, 4) for k, v in entry["test"].items()})
        per_model: dict[str, Any] = {"split": "test", "test": entry["test"], "parameters": entry["parameters"],
                                     "data": {k: flat[k] for k in DATA_KEYS}, "command": command,
                                     "date": report.machine["date"]}
        if name == gen_name and not args.no_generation:
            if getattr(model.config, "model_type", "") != "music":
                generation_skipped = "generation quality needs a music model, which conditions on genres"
            else:
                settings = {
                    "per_genre": args.generations or (2 if args.quick else 16),
                    "max_new_tokens": args.max_new_tokens or (48 if args.quick else
                                                              model.config.max_position_embeddings - 1),
                    "classifier_steps": args.classifier_steps or (20 if args.quick else 400),
                    "seed": args.generation_seed,
                    "sampling": {k: getattr(model.generation_config, k, None) if v is None else v
                                 for k, v in dataclasses.asdict(cfg.sampling).items()}}
                generation = generation_quality(model, tok, genres_m, pieces_m, windows_m, settings,
                                                cfg.data.max_length, args.device,
                                                trained_augmentation(Path(entry["dir"])))
                generation["model"] = entry["label"]
                per_model["generation"] = generation
                if not args.no_composition:
                    composition = composition_quality(
                        model, tok, pieces_m["test"]["input_ids"],
                        {"samples": args.composition_samples or (2 if args.quick else 16),
                         "max_new_tokens": settings["max_new_tokens"], "seed": args.generation_seed,
                         "guidance_scale": args.guidance_scale, "sampling": settings["sampling"],
                         "window": cfg.data.max_length + 5},  # + Infill_Start/End and up to 3 placeholders
                        trained_composition(Path(entry["dir"])))
                    composition["model"] = entry["label"]
                    per_model["composition"] = composition
        if name == gen_name and real_world_dir is not None:
            real_world = real_world_quality(model, tok, real_world_dir, window=cfg.data.max_length,
                                            batch_size=cfg.training.per_device_batch_size,
                                            max_windows_per_file=2 if args.quick else None)
            real_world.update(model=entry["label"], test_nll=entry["test"]["loss"])
            per_model["real_world"] = real_world
        (Path(entry["dir"]) / RESULTS_FILE).write_text(json.dumps(per_model, indent=2))

    data = cfg.data
    results = {
        "command": command, "machine": report.machine, "models": models, "ablation": ablation,
        "generation": generation, "generation_skipped": generation_skipped, "composition": composition,
        "real_world": real_world,
        "settings": {"quick": args.quick, "config": cfg.to_dict(), "max_length": data.max_length,
                     "data": f"{', '.join(data.corpus_collections)} (music21 corpus, at most "
                             f"{data.max_pieces_per_collection} pieces each)" if not (data.midi_dir or data.hf_dataset)
                     else (data.midi_dir or data.hf_dataset),
                     "test_pieces": summary.pieces.get("test", 0), "test_windows": len(windows["test"]),
                     "test_tokens": int(next(iter(models.values()))["test"]["tokens"]) if models else 0},
    }
    total = report.seconds
    results["seconds"] = {"total": total, "data": data_seconds,
                          "evaluation": total - data_seconds - sum(m.get("train_seconds") or 0 for m in models.values()
                                                                   if not m.get("reused"))}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2, default=float))
    quality_section(report, results)
    report.write(args.output, "Quality", "smoke settings, `--quick`" if args.quick else "full settings")
    logger.info("wrote %s (section Quality) and %s in %.0f s", args.output, json_path, report.seconds)
    return results


__all__ = ["EvaluationArguments", "settings_defaults", "match_parameters", "train_variant", "generation_quality",
           "trained_composition", "composition_quality", "composition_section", "quality_section", "run"]
