#!/usr/bin/env python
"""Quality of music models on the held-out TEST split of their corpus, an ablation of the music embeddings, and
the quality of generated music (grammar errors, pitch-class profile and note density per genre, genre control).

Results go to BENCHMARKS.md (section "Quality"), a JSON file, and `evaluation_results.json` in every evaluated
model folder (next to `training_results.json`).

    python scripts/evaluate.py --model outputs/small/final                        # one trained model
    python scripts/evaluate.py --ablation --config scripts/configs/ablation.yaml  # train + compare baselines
    python scripts/evaluate.py --quick --ablation --output_dir /tmp/q --output /tmp/q.md   # smoke run (seconds)

`--ablation` trains, with scripts/train.py and the same data, steps and (roughly) parameter count: the music
model, GPT-2 without music embeddings, and the music model with each music embedding switched off in turn.
A finished run with the same configuration in the output folder is reused (`--retrain` trains again).
Any `--<config key> value` (as for train.py) overrides the configuration.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM

import music_hf  # noqa: F401  (registers the Auto classes)
from music_hf.data import MusicDataCollator
from music_hf.evaluation import (classification_scores, classify_genres, generate_per_genre,
                                 grammar_error_rate, histogram_distance, machine_description, machine_line,
                                 markdown_table, mean_finite, notes_per_bar, pooled_pitch_class_histogram,
                                 train_genre_classifier, update_markdown_section)
from music_hf.tokenization_music import MusicTokenizer
from music_hf.training import TrainConfig, build_datasets, build_model, evaluate, parse_overrides

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import main as train_main  # noqa: E402  (scripts/train.py: the ablation trains exactly as users do)

logger = logging.getLogger("music_hf.evaluate")
REPO = Path(__file__).resolve().parents[1]
ABLATION_CONFIG = REPO / "scripts" / "configs" / "ablation.yaml"
TINY_CONFIG = REPO / "scripts" / "configs" / "tiny.yaml"
RESULTS_FILE = "evaluation_results.json"
# --quick: the tiny config on a few more pieces (so both genres have test pieces), a handful of steps
QUICK_OVERRIDES: dict[str, Any] = {"max_pieces_per_collection": 12, "validation_fraction": 0.1, "test_fraction": 0.2,
                                   "max_steps": 20, "warmup_steps": 4, "eval_every": 20, "save_every": 20,
                                   "eval_max_batches": 2, "log_with": None, "pitch_shift": 0, "velocity_jitter": 0}
# (name, label, TrainConfig changes); every variant but the first gets the MLP width that matches its parameter count;
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


# ----- models ----------------------------------------------------------------------------------------------
def count_parameters(cfg: TrainConfig, tokenizer: MusicTokenizer, genres: list[str]) -> int:
    return sum(p.numel() for p in build_model(cfg, tokenizer, genres).parameters())


def match_parameters(cfg: TrainConfig, tokenizer: MusicTokenizer, genres: list[str], target: int) -> TrainConfig:
    """`cfg` with the MLP width (intermediate_size) whose parameter count comes closest to `target`: a variant
    without music embedding tables gets their parameters back as MLP units (the count is linear in the width)."""
    base = count_parameters(cfg, tokenizer, genres)
    per_unit = count_parameters(dataclasses.replace(cfg, intermediate_size=cfg.intermediate_size + 1),
                                tokenizer, genres) - base
    return dataclasses.replace(cfg, intermediate_size=max(1, cfg.intermediate_size + round((target - base) / per_unit)))


def train_variant(cfg: TrainConfig, retrain: bool) -> tuple[Path, float | None, bool]:
    """Train one ablation variant with scripts/train.py, or reuse a finished run of the same configuration.

    Returns the final model folder, the training wall time (seconds) and whether the run was reused.
    """
    run_dir = Path(cfg.output_dir)
    final, timing = run_dir / "final", run_dir / "ablation_run.json"
    done = final / "training_results.json"
    wanted = json.loads(json.dumps(cfg.to_dict()))
    if not retrain and done.is_file() and json.loads(done.read_text()).get("config") == wanted:
        seconds = json.loads(timing.read_text()).get("train_seconds") if timing.is_file() else None
        logger.info("reusing %s (same configuration; --retrain trains again)", final)
        return final, seconds, True
    if (run_dir / "train_config.json").is_file():  # an earlier run with other settings: start clean
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file = run_dir / "ablation_config.yaml"
    config_file.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    start = time.perf_counter()
    train_main(["--config", str(config_file)])
    seconds = time.perf_counter() - start
    if not done.is_file():
        raise SystemExit(f"{run_dir}: training ended without a final model (see the log above)")
    timing.write_text(json.dumps({"train_seconds": seconds}))
    return final, seconds, False


def load_model(model_dir: Path, device: str) -> tuple[Any, MusicTokenizer]:
    tokenizer = MusicTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).to(device).eval()
    return model, tokenizer


def held_out_metrics(model: Any, tokenizer: MusicTokenizer, windows: Any, batch_size: int) -> dict[str, float]:
    """NLL per token, perplexity, NLL per note and next-token accuracy over every test window."""
    loader = DataLoader(windows, batch_size=batch_size, collate_fn=MusicDataCollator(tokenizer.pad_token_id))
    return evaluate(model, loader, tokenizer.music_attributes()["note_count"])


# ----- generation quality ----------------------------------------------------------------------------------
def generation_quality(model: Any, tokenizer: MusicTokenizer, genres: list[str], pieces: Any, windows: Any,
                       args: argparse.Namespace, max_length: int, device: str) -> dict[str, Any]:
    """Generate per genre with and without grammar-constrained decoding, and compare with the test split."""
    model_genres = [g for i, g in sorted(model.config.id2genre.items()) if i != 0 and g in genres]
    sampling = {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k}
    t0 = time.perf_counter()
    generated = {mode: generate_per_genre(model, tokenizer, model_genres, args.generations, args.max_new_tokens,
                                          constrained=(mode == "constrained"), seed=args.seed, **sampling)
                 for mode in ("constrained", "unconstrained")}
    generation_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    classifier = train_genre_classifier(windows["train"], tokenizer, genres, steps=args.classifier_steps,
                                        seed=args.seed, device=device, max_length=max_length)
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
        test, train = of_genre("test", genre), of_genre("train", genre)
        gen = generated["constrained"][genre]
        test_hist = pooled_pitch_class_histogram(test, tokenizer)
        gen_hist = pooled_pitch_class_histogram(gen, tokenizer)
        train_hist = pooled_pitch_class_histogram(train, tokenizer)
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
    return {
        "genres": model_genres, "per_genre": per_genre,
        "grammar_error_rate": {m: grammar_error_rate(all_gen[m], tokenizer) for m in all_gen},
        "classifier": {"test_windows": real, "generated": recognised, "steps": args.classifier_steps},
        "settings": {"per_genre": args.generations, "max_new_tokens": args.max_new_tokens, **sampling,
                     "seed": args.seed},
        "seconds": {"generation": generation_seconds, "classifier": classifier_seconds},
    }


# ----- report ----------------------------------------------------------------------------------------------
def quality_section(results: dict[str, Any]) -> str:
    models, gen = results["models"], results.get("generation")
    s = results["settings"]
    trained = [m["train_seconds"] for m in models.values() if m.get("train_seconds")]
    reused = any(m.get("reused") for m in models.values())
    timing = (f"training {sum(trained) / 60:.1f} min ({len(trained)} runs"
              + (", timed when they were trained by an earlier call" if reused else "") + "), " if trained else "")
    kind = "smoke settings: the numbers show that the pipeline works, not model quality" if s["quick"] else \
        "full settings"
    sec = results["seconds"]
    lines = [f"Produced by `{results['command']}`: data preparation {sec['data'] / 60:.1f} min (corpus conversion "
             f"and tokenization, or loading them from the cache), {timing}evaluation {sec['evaluation'] / 60:.1f} min, "
             f"{sec['total'] / 60:.1f} min in all ({kind}). Machine: {machine_line(results['machine'])} The machine "
             "was shared with other jobs while this ran, so wall times are noisy; the metrics themselves do not "
             "depend on it.", "",
             f"Data: {s['data']}. Test split: {s['test_windows']} windows of at most {s['max_length']} tokens "
             f"({s['test_tokens']} predicted tokens) from {s['test_pieces']} held-out pieces, never seen in training.",
             "", "### Next-token prediction on the test split", ""]
    rows = [[m["label"], m["parameters"], m.get("intermediate_size", "-"),
             *(m["test"][k] for k, _ in TEST_METRICS),
             f"{m['train_seconds'] / 60:.1f}" if m.get("train_seconds") else "-"] for m in models.values()]
    lines.append(markdown_table(["model", "parameters", "MLP size", *(label for _, label in TEST_METRICS),
                                 "train min"], rows, digits=4))
    if results.get("ablation"):
        a = results["ablation"]
        noise = ""
        if "music_seed1" in models:
            gap = abs(models["music"]["test"]["loss"] - models["music_seed1"]["test"]["loss"])
            noise = (f" The two seeds of the full music model differ by {gap:.4f} nats per token: differences between "
                     "rows of that order are chance, not the embedding.")
        lines += ["", f"All variants: {a['steps']} steps of {a['batch']} windows ({a['tokens_per_step']} tokens max "
                  f"per step), seed {a['seed']} (initialization and data order), except the noise reference, which "
                  f"differs from the full music model only by its seed.{noise} Parameter counts are matched "
                  "roughly, not exactly: GPT-2 and the variants with an embedding off lack those embedding tables "
                  "(cheap lookups), so each gets the missing parameters back as MLP width (column MLP size), which "
                  "gives it slightly more compute per token than the full music model. NLL is in nats; NLL/note "
                  "divides the summed NLL by the notes predicted."]
    if gen:
        st = gen["settings"]
        lines += ["", "### Generated music", "",
                  f"Model: {gen['model']}. {st['per_genre']} unprompted pieces per genre, conditioned on the genre, "
                  f"at most {st['max_new_tokens']} new tokens (sampling: temperature {st['temperature']}, top-p "
                  f"{st['top_p']}, top-k {st['top_k']}, seed {st['seed']}), once with grammar-constrained decoding "
                  "and once without, with the same seeds (so both modes draw the same tokens until the constraint "
                  "first changes a choice). Grammar errors: share of generated tokens (up to the first EOS, a trailing "
                  "unfinished note dropped) that the tokenizer's grammar check rejects. Pitch-class distance: "
                  "Jensen-Shannon divergence (bits; 0 = same profile, 1 = disjoint) between the pooled 12-bin "
                  "pitch-class histograms of the constrained generations and the genre's test pieces; the "
                  "train-vs-test column is the same distance between real pieces, the floor to compare with. Note "
                  "density: notes per bar. Classifier: share of pieces in which a genre "
                  "classifier (below) recognises the requested genre.", ""]
        rows = []
        for genre, g in gen["per_genre"].items():
            rows.append([genre, g["test_pieces"], g["generated"], g["grammar_error_rate"]["constrained"],
                         g["grammar_error_rate"]["unconstrained"], g["pitch_class_js"],
                         g["pitch_class_js_train_vs_test"], g["notes_per_bar_generated"], g["notes_per_bar_test"],
                         g["classifier_recall"]["constrained"], g["classifier_recall"]["unconstrained"]])
        c = gen["classifier"]
        rows.append(["all genres", sum(g["test_pieces"] for g in gen["per_genre"].values()),
                     sum(g["generated"] for g in gen["per_genre"].values()),
                     gen["grammar_error_rate"]["constrained"], gen["grammar_error_rate"]["unconstrained"],
                     mean_finite([g["pitch_class_js"] for g in gen["per_genre"].values()]),
                     mean_finite([g["pitch_class_js_train_vs_test"] for g in gen["per_genre"].values()]),
                     mean_finite([g["notes_per_bar_generated"] for g in gen["per_genre"].values()]),
                     mean_finite([g["notes_per_bar_test"] for g in gen["per_genre"].values()]),
                     c["generated"]["constrained"]["accuracy"], c["generated"]["unconstrained"]["accuracy"]])
        lines.append(markdown_table(
            ["genre", "test pieces", "generated", "grammar errors (constrained)", "grammar errors (unconstrained)",
             "pitch-class JSD gen vs test", "JSD train vs test", "notes/bar gen", "notes/bar test",
             "genre recognised (constrained)", "genre recognised (unconstrained)"], rows))
        real, con = c["test_windows"], c["generated"]["constrained"]
        lines += ["", "### Genre control", "",
                  f"A genre classifier (`MusicForSequenceClassification`, 2 layers of width 64, no genre embedding, "
                  f"{c['steps']} steps on training windows with genre-balanced batches) reads the first "
                  f"{s['max_length']} tokens of a piece.", "",
                  markdown_table(["pieces classified", "n", "accuracy", "balanced accuracy", "chance (1/genres)",
                                  "majority-class rate", "balanced accuracy / chance"],
                                 [["real test windows", real["n"], real["accuracy"], real["balanced_accuracy"],
                                   real["uniform_chance"], real["majority_rate"],
                                   real["balanced_accuracy"] / real["uniform_chance"]],
                                  ["generated, constrained", con["n"], con["accuracy"], con["balanced_accuracy"],
                                   con["uniform_chance"], con["majority_rate"],
                                   con["balanced_accuracy"] / con["uniform_chance"]]]),
                  "", "Generated pieces are balanced over genres, so their chance level is 1/genres; the test "
                  "windows are not, hence the balanced accuracy (mean recall per genre) next to the majority-class "
                  "rate. The classifier's accuracy on real test windows bounds how far its verdict on generated "
                  "pieces can be trusted."]
        if real["balanced_accuracy"] >= 0.95:
            lines[-1] += (" Here it is near perfect on real windows: these genres differ plainly (texture, metre, "
                          "note density), so recognising the requested genre shows that generations carry the "
                          "genre's coarse traits, not that they are convincing in style.")
    elif results.get("generation_skipped"):
        lines += ["", f"Generated music: not evaluated ({results['generation_skipped']})."]
    lines += ["", "### Commands", "",
              "- this table on a 2-core CPU (under an hour, corpus preparation included):",
              "  `python scripts/evaluate.py --ablation --config scripts/configs/ablation.yaml` (add `--threads 1` "
              "on a machine shared with other jobs: two torch threads competing for busy cores can be ten times "
              "slower than one)",
              "- any trained model: `python scripts/evaluate.py --model outputs/small/final` (its training data "
              "settings pick the test split)",
              "- on a GPU the same commands use it (training through Accelerate, evaluation on `cuda`); a GPU-sized "
              "model: `accelerate launch scripts/train.py --config scripts/configs/gpu.yaml` then "
              "`python scripts/evaluate.py --model outputs/gpu/final --generations 32 --max_new_tokens 1024`",
              "- smoke run (CI, about a minute): `python scripts/evaluate.py --quick --ablation --output_dir "
              "/tmp/quick --output /tmp/quick.md`"]
    return "\n".join(lines)


# ----- main ------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, TrainConfig]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="a trained model folder (scripts/train.py's final/)")
    p.add_argument("--ablation", action="store_true", help="train and compare GPT-2 and single-embedding-off variants")
    p.add_argument("--config", default=None, help="TrainConfig YAML (default: ablation.yaml with --ablation, "
                                                  "else the model's own training settings)")
    p.add_argument("--quick", action="store_true", help="smoke settings: tiny config, few steps and generations")
    p.add_argument("--output", default="BENCHMARKS.md", help="Markdown report (its section 'Quality' is rewritten)")
    p.add_argument("--output_dir", type=Path, default=None,
                   help="ablation runs and the JSON results (default outputs/evaluation, outputs/evaluation_quick)")
    p.add_argument("--json", type=Path, default=None, help="JSON results (default <output_dir>/evaluation.json)")
    p.add_argument("--retrain", action="store_true", help="train ablation variants even if a finished run exists")
    p.add_argument("--generations", type=int, default=None, help="pieces per genre and mode (default 16, quick 2)")
    p.add_argument("--max_new_tokens", type=int, default=None, help="default: the model's context - 1 (quick 48)")
    p.add_argument("--classifier_steps", type=int, default=None, help="default 400 (quick 20)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top_p", type=float, default=0.95)
    p.add_argument("--top_k", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no_generation", action="store_true", help="only the test-split metrics")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; --quick: 1). On a machine shared with "
                        "other jobs, 1 avoids threads waiting on each other and is often much faster")
    args, rest = p.parse_known_args(argv)
    if not args.model and not args.ablation:
        p.error("give --model DIR, --ablation, or both")
    if args.model and not (args.model / "config.json").is_file():
        p.error(f"{args.model}: not a model folder (no config.json)")
    try:
        overrides = parse_overrides(rest)
    except ValueError as e:
        p.error(str(e))
    args.threads = args.threads or (1 if args.quick else None)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.generations = args.generations or (2 if args.quick else 16)
    args.classifier_steps = args.classifier_steps or (20 if args.quick else 400)
    args.output_dir = args.output_dir or REPO / "outputs" / ("evaluation_quick" if args.quick else "evaluation")
    args.json = args.json or args.output_dir / "evaluation.json"

    config = args.config or (TINY_CONFIG if args.quick and args.ablation else ABLATION_CONFIG if args.ablation
                             else None)
    trained = args.model / "training_results.json" if args.model else None
    from_model = config is None and trained is not None and trained.is_file()
    if args.quick and not from_model:  # a given model keeps its own data settings: its test split stays held out
        overrides = {**QUICK_OVERRIDES, **overrides}
    if from_model:
        saved = json.loads(trained.read_text()).get("config") or {}
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        cfg = TrainConfig(**{**{k: v for k, v in saved.items() if k in known}, **overrides})
    else:
        if config is None:
            logger.warning("%s has no training_results.json: the data settings are the defaults", args.model)
        try:
            cfg = TrainConfig.from_yaml(config, overrides)
        except (ValueError, TypeError, OSError) as e:
            p.error(str(e))
    return args, cfg


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    start = time.perf_counter()
    args, cfg = parse_args(argv)
    machine = machine_description(args.device)
    command = "python scripts/evaluate.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                                 else sys.argv[1:]))
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
            vcfg = dataclasses.replace(cfg, **change, output_dir=str(args.output_dir / "ablation" / name))
            if name != "music":
                vcfg = match_parameters(vcfg, tokenizer, genres, full)
            final, seconds, reused = train_variant(vcfg, args.retrain)
            models[name] = {"label": label, "dir": str(final), "intermediate_size": vcfg.intermediate_size,
                            "train_seconds": seconds, "reused": reused}
        ablation = {"steps": cfg.max_steps, "batch": cfg.per_device_batch_size * cfg.gradient_accumulation_steps,
                    "tokens_per_step": cfg.per_device_batch_size * cfg.gradient_accumulation_steps * cfg.max_length,
                    "seed": cfg.seed, "target_parameters": full}
    if args.model:
        models["model"] = {"label": f"`{args.model}`", "dir": str(args.model)}

    data_for: dict[str, tuple] = {}  # windows per tokenizer (a given model may bring its own)
    gen_name = "model" if args.model else "music"
    generation, generation_skipped = None, None
    for name, entry in models.items():
        model, tok = load_model(Path(entry["dir"]), args.device)
        key = tok.to_json_summary() + str(tok.vocab_size)
        if key not in data_for:
            data_for[key] = (tok, *build_datasets(cfg, tokenizer=tok, progress=False)[1:])
        tok, genres_m, pieces_m, _, windows_m = data_for[key]
        entry["parameters"] = sum(p.numel() for p in model.parameters())
        entry.setdefault("intermediate_size", getattr(model.config, "intermediate_size", None)
                         or getattr(model.config, "n_inner", None))
        entry["test"] = held_out_metrics(model, tok, windows_m["test"], cfg.per_device_batch_size)
        logger.info("%s: test %s", name, {k: round(v, 4) for k, v in entry["test"].items()})
        per_model: dict[str, Any] = {"split": "test", "test": entry["test"], "parameters": entry["parameters"],
                                     "data": {k: getattr(cfg, k) for k in ("corpus_collections",
                                              "max_pieces_per_collection", "midi_dir", "hf_dataset", "seed",
                                              "validation_fraction", "test_fraction", "max_length", "overlap")},
                                     "command": command, "date": machine["date"]}
        if name == gen_name and not args.no_generation:
            if getattr(model.config, "model_type", "") != "music":
                generation_skipped = "generation quality needs a music model, which conditions on genres"
            else:
                args.max_new_tokens = args.max_new_tokens or (48 if args.quick else
                                                              model.config.max_position_embeddings - 1)
                generation = generation_quality(model, tok, genres_m, pieces_m, windows_m, args, cfg.max_length,
                                                args.device)
                generation["model"] = entry["label"]
                per_model["generation"] = generation
        (Path(entry["dir"]) / RESULTS_FILE).write_text(json.dumps(per_model, indent=2))

    test = windows["test"]
    results = {
        "command": command, "machine": machine, "models": models, "ablation": ablation, "generation": generation,
        "generation_skipped": generation_skipped,
        "settings": {"quick": args.quick, "config": cfg.to_dict(), "max_length": cfg.max_length,
                     "data": f"{', '.join(cfg.corpus_collections)} (music21 corpus, at most "
                             f"{cfg.max_pieces_per_collection} pieces each)" if not (cfg.midi_dir or cfg.hf_dataset)
                     else (cfg.midi_dir or cfg.hf_dataset),
                     "test_pieces": summary.pieces.get("test", 0), "test_windows": len(test),
                     "test_tokens": int(next(iter(models.values()))["test"]["tokens"]) if models else 0},
    }
    total = time.perf_counter() - start
    results["seconds"] = {"total": total, "data": data_seconds,
                          "evaluation": total - data_seconds - sum(m.get("train_seconds") or 0 for m in models.values()
                                                                   if not m.get("reused"))}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=float))
    update_markdown_section(args.output, "Quality", quality_section(results))
    logger.info("wrote %s (section Quality) and %s in %.0f s", args.output, args.json, results["seconds"]["total"])
    return results


if __name__ == "__main__":
    main()
