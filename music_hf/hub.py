"""Publishing a trained model on the Hugging Face Hub: checks, model card, and a one-commit push.

`push_model_dir(model_dir, "org/name")` uploads what `scripts/train.py` saves in `<output_dir>`
(weights as safetensors, config with `auto_map`, tokenizer, the `*_music.py` files `trust_remote_code`
needs, `training_results.json`) plus a README.md model card built from those files only. `save_pretrained`
writes `auto_map` and the code files (the classes are registered with `register_for_auto_class`); a folder
without them is refused.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import huggingface_hub
from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, filter_repo_objects
from huggingface_hub.utils import validate_repo_id as hf_validate_repo_id

logger = logging.getLogger(__name__)

#: The trained model that ships inside the repository (`scripts/configs/base.yaml`): what `music-hf generate`, the
#: Space and the README use when no model is named. Present in a checkout (and an editable install), not in a wheel.
SHIPPED_MODEL = Path(__file__).resolve().parent.parent / "models" / "music-hf-base"

CONFIG_FILE = "config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
MIDITOK_FILE = "miditok_config.json"
RESULTS_FILE = "training_results.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
CODE_FILES = ("configuration_music.py", "modeling_music.py", "tokenization_music.py")
# what a model folder may publish; anything else (checkpoints/, logs, optimizer .bin/.pkl files) stays home
UPLOAD_PATTERNS = (CONFIG_FILE, "generation_config.json", WEIGHTS_FILE, WEIGHTS_INDEX_FILE,
                   "model-*-of-*.safetensors", TOKENIZER_CONFIG_FILE, MIDITOK_FILE, "special_tokens_map.json",
                   "added_tokens.json", RESULTS_FILE, *CODE_FILES)
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model-*.bin", "pytorch_model.bin.index.json")
# the auto_map entries trust_remote_code users need (a GPT-2 baseline needs only the tokenizer's)
MODEL_AUTO_CLASSES = ("AutoConfig", "AutoModelForCausalLM")
TOKENIZER_AUTO_CLASSES = ("AutoTokenizer",)
CARD_TAGS = ["midi", "music", "symbolic-music", "music-generation", "music-hf"]
MAX_USAGE_TOKENS = 512


class HubPushError(ValueError):
    """A push that cannot go ahead; the message says what to fix."""


class ModelDirError(HubPushError):
    """A model folder that is not ready to publish; the message names the folder and what is missing."""

    def __init__(self, model_dir: str | os.PathLike, problem: str):
        self.model_dir, self.problem = str(model_dir), problem
        super().__init__(f"{model_dir}: {problem}")


class InvalidRepoIdError(HubPushError):
    """A repo id the Hub would refuse, or one without its namespace."""


class MissingTokenError(HubPushError):
    """No Hugging Face token in the arguments, HF_TOKEN or the saved login."""


# ----- checks ---------------------------------------------------------------------------------------------
def validate_model_dir(model_dir: str | os.PathLike) -> Path:
    """The folder as a Path if it holds config, safetensors weights and the tokenizer; else `ModelDirError`."""
    path = Path(model_dir)
    if not path.is_dir():
        raise ModelDirError(path, "no such folder")
    names = {p.name for p in path.iterdir() if p.is_file()}
    pickled = sorted(filter_repo_objects(names, allow_patterns=PICKLED_WEIGHTS))
    if pickled:
        raise ModelDirError(path, f"holds pickled weights ({', '.join(pickled)}); only safetensors are published: "
                                  "save with `model.save_pretrained(dir)` (safe_serialization, the default) and "
                                  "remove the .bin files")
    missing = [n for n in (CONFIG_FILE,) if n not in names]
    if WEIGHTS_FILE not in names and WEIGHTS_INDEX_FILE not in names:
        missing.append(WEIGHTS_FILE)
    if missing:
        checkpoints = sorted(p.name for p in path.glob("checkpoint-*") if p.is_dir())
        hint = (f" (only checkpoints so far: {', '.join(checkpoints)}; training writes the final model into this "
                "folder when it ends)" if checkpoints else "")
        raise ModelDirError(path, f"no model: missing {', '.join(missing)}; save it with "
                                  f"`model.save_pretrained(dir)`{hint}")
    if WEIGHTS_INDEX_FILE in names and WEIGHTS_FILE not in names:
        shards = set(json.loads((path / WEIGHTS_INDEX_FILE).read_text())["weight_map"].values())
        absent = sorted(shards - names)
        if absent:
            raise ModelDirError(path, f"missing weight shards listed in {WEIGHTS_INDEX_FILE}: {', '.join(absent)}")
    missing = [n for n in (TOKENIZER_CONFIG_FILE, MIDITOK_FILE) if n not in names]
    if missing:
        raise ModelDirError(path, f"model saved without its tokenizer: missing {', '.join(missing)}; add it with "
                                  "`tokenizer.save_pretrained(dir)`")
    problems = []
    is_music = json.loads((path / CONFIG_FILE).read_text()).get("model_type") == "music"
    for name, needed in ((CONFIG_FILE, MODEL_AUTO_CLASSES if is_music else ()),
                         (TOKENIZER_CONFIG_FILE, TOKENIZER_AUTO_CLASSES)):
        auto_map = json.loads((path / name).read_text()).get("auto_map") or {}
        absent = [k for k in needed if k not in auto_map]
        if absent:
            problems.append(f"{name} has no auto_map entry for {', '.join(absent)}")
        refs = [r for v in auto_map.values() for r in (v if isinstance(v, list) else [v]) if r and "--" not in r]
        code = {r.split(".")[0] + ".py" for r in refs}  # "--" marks code in another Hub repo
        problems += [f"missing {f} (named in {name}'s auto_map)" for f in sorted(code - names)]
    if problems:
        raise ModelDirError(path, f"not loadable with trust_remote_code: {'; '.join(problems)}; save the model and "
                                  "tokenizer with `save_pretrained(dir)` after `import music_hf` (it writes both)")
    return path


def validate_repo_id(repo_id: str) -> str:
    """`repo_id` if the Hub accepts it and it has the `namespace/name` form; else `InvalidRepoIdError`."""
    form = "use the form namespace/name (your user or organization, then the model name), e.g. my-user/music-model"
    try:
        hf_validate_repo_id(repo_id)
    except HFValidationError as e:
        raise InvalidRepoIdError(f"invalid repo id {repo_id!r}: {str(e).rstrip('.')}; {form}") from None
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise InvalidRepoIdError(f"invalid repo id {repo_id!r}: {form}")
    return repo_id


def resolve_token(token: str | None = None) -> str:
    """The token to push with: `token`, else `huggingface_hub.get_token()` (HF_TOKEN, then the saved login)."""
    token = token or huggingface_hub.get_token()
    if not token:
        raise MissingTokenError("no Hugging Face token: run `hf auth login` or set HF_TOKEN (or pass --token)")
    return token


# ----- model card -----------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _count_parameters(model_dir: Path) -> int:
    """Parameters stored in the safetensors weights (read from the headers, no tensor is loaded)."""
    from safetensors import safe_open

    files = [model_dir / WEIGHTS_FILE] if (model_dir / WEIGHTS_FILE).is_file() else sorted(
        model_dir / f for f in set(json.loads((model_dir / WEIGHTS_INDEX_FILE).read_text())["weight_map"].values()))
    total = 0
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                n = 1
                for d in f.get_slice(name).get_shape():
                    n *= d
                total += n
    return total


def _data_source(cfg: dict[str, Any]) -> tuple[str, str, str]:
    """(dataset type, dataset name, sentence) for the training data named in the training config."""
    if cfg.get("hf_dataset"):
        name = Path(cfg["hf_dataset"]).name
        column = cfg.get("hf_midi_column")
        return "local-dataset", name, f"a local `datasets` dataset (`{name}`, MIDI column `{column}`)"
    if cfg.get("midi_dir"):
        name = Path(cfg["midi_dir"]).name
        return "midi-folder", name, f"a folder of MIDI files (`{name}`)"
    collections = cfg.get("corpus_collections") or []
    per = cfg.get("max_pieces_per_collection")
    limit = f", at most {per} pieces per collection" if per else ""
    named = ", ".join(f"`{c}`" for c in collections)
    return ("music21-corpus", f"music21 corpus ({', '.join(collections)})",
            f"the [music21](https://www.music21.org/) core corpus, collections {named}{limit}, converted to MIDI "
            "(not a Hub dataset)")


EVAL_METRICS = (  # key in training_results["eval"], model-index metric type, label
    ("loss", "loss", "Validation loss (nats per token)"),
    ("perplexity", "perplexity", "Perplexity"),
    ("nll_per_note", "nll_per_note", "NLL per note (nats)"),
    ("accuracy", "accuracy", "Next-token accuracy"),
)


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return f"{x:,}" if isinstance(x, int) and not isinstance(x, bool) else str(x)


def _memorization(path: Path) -> str:
    """What `scripts/evaluate.py` measured of copying from the training pieces (its `evaluation_results.json`),
    as a parenthesis; "" when the folder holds no such measurement."""
    memo = ((_read_json(path / "evaluation_results.json") or {}).get("generation") or {}).get("memorization") or {}
    gen = (memo.get("generated") or {}).get("all") or {}
    if not gen.get("n"):
        return ""
    held = (memo.get("held-out") or {}).get("all") or {}
    floor = f", held-out pieces {held['copied_share']:.0%}" if held.get("n") else ""
    return (f" (measured by `scripts/evaluate.py`: {gen['copied_share']:.0%} of {gen['n']} generations copy more than "
            f"{memo['threshold']} consecutive bars of a training piece{floor}; longest copied span "
            f"{gen['max_longest']} bars)")


def _usage(repo_id: str, config: dict[str, Any], genre: str | None) -> str:
    is_music = config.get("model_type") == "music"
    new_tokens = min(MAX_USAGE_TOKENS, int(config.get("max_position_embeddings") or config.get("n_positions")
                                           or MAX_USAGE_TOKENS + 1) - 1)
    genre_arg = f'genre="{genre}", ' if genre else ""
    parts = ["## Usage", "", "With the `music-hf` package (grammar-constrained sampling, MIDI out):", "",
             "```bash", "pip install music-hf", "```", ""]
    if is_music:
        parts += ["```python", "import music_hf  # registers the music classes with the Auto classes",
                  "from music_hf.generation import generate_midi",
                  "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")',
                  f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
                  f"score = generate_midi(model, tokenizer, {genre_arg}max_new_tokens={new_tokens}, top_k=20, seed=0,",
                  '                      output_path="generated.mid")',
                  'print(score.note_num(), "notes written to generated.mid")',
                  "```", ""]
    else:
        parts += ["```python", "import music_hf  # registers MusicTokenizer with AutoTokenizer",
                  "import torch",
                  "from music_hf.generation import MusicGrammarLogitsProcessor, finish_sequence",
                  "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")',
                  f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
                  "out = model.generate(torch.tensor([[tokenizer.bos_token_id]]), max_new_tokens="
                  f"{new_tokens}, do_sample=True, top_k=20,",
                  "                     logits_processor=[MusicGrammarLogitsProcessor(tokenizer)],"
                  " pad_token_id=tokenizer.pad_token_id)",
                  'score = tokenizer.decode_midi(finish_sequence(tokenizer, out[0, 1:]), "generated.mid")',
                  'print(score.note_num(), "notes written to generated.mid")',
                  "```", ""]
    genre_lines = ([f'genre_ids = torch.tensor([model.config.genre_id("{genre}")])  # id 0 = unconditional']
                   if is_music and genre else [])
    parts += ["Without the package, the code saved in this repository is enough (`trust_remote_code=True`); "
              "sampling is then unconstrained, and tokens that do not fit the grammar are dropped when decoding:", "",
              "```bash", "pip install torch transformers miditok symusic", "```", "",
              "```python", "import torch", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
              f'model = AutoModelForCausalLM.from_pretrained("{repo_id}", trust_remote_code=True)',
              f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}", trust_remote_code=True)',
              "torch.manual_seed(0)", *genre_lines,
              "out = model.generate(torch.tensor([[tokenizer.bos_token_id]]), "
              + ("genre_ids=genre_ids, " if genre_lines else "") + f"max_new_tokens={new_tokens},",
              "                     do_sample=True, top_k=20, pad_token_id=tokenizer.pad_token_id)",
              'score = tokenizer.decode_midi(out[0], "generated.mid")',
              'print(score.note_num(), "notes written to generated.mid")',
              "```", "",
              "To continue a MIDI file, encode it with `tokenizer(\"prompt.mid\")[\"input_ids\"]` and pass those ids "
              "(without the final EOS) instead of the lone BOS."]
    return "\n".join(parts)


def build_model_card(model_dir: str | os.PathLike, repo_id: str) -> ModelCard:
    """A model card (YAML metadata + text) from what the folder holds: config, tokenizer, training results."""
    from . import __version__
    from .tokenization_music import MusicTokenizer

    path = validate_model_dir(model_dir)
    config = _read_json(path / CONFIG_FILE) or {}
    results = _read_json(path / RESULTS_FILE) or {}
    train_cfg = results.get("config") or {}
    tokenizer = MusicTokenizer.from_pretrained(str(path))
    tok = json.loads(tokenizer.to_json_summary())
    is_music = config.get("model_type") == "music"
    name = repo_id.split("/")[-1]
    id2genre = {int(k): v for k, v in (config.get("id2genre") or {}).items()} if is_music else {}
    genres = [g for i, g in sorted(id2genre.items()) if i != 0]
    evals = results.get("eval") or {}
    data = results.get("data") or {}
    pieces = data.get("pieces") or {}
    split = "validation" if pieces.get("validation") else "test"
    dataset_type, dataset_name, data_sentence = _data_source(train_cfg) if train_cfg else ("unknown", "unknown", "")

    eval_results = [EvalResult(task_type="text-generation", task_name="Symbolic music generation (next token)",
                               dataset_type=dataset_type, dataset_name=dataset_name, dataset_split=split,
                               metric_type=metric, metric_name=label, metric_value=float(evals[key]))
                    for key, metric, label in EVAL_METRICS if key in evals]
    card_data = ModelCardData(library_name="transformers", pipeline_tag="text-generation", tags=list(CARD_TAGS),
                              metrics=[m for k, m, _ in EVAL_METRICS if k in evals] or None,
                              model_name=name, eval_results=eval_results or None)

    arch = config.get("architectures", ["?"])[0]
    n_params = _count_parameters(path)
    lines = [f"# {name}", "",
             f"A {n_params / 1e6:.2f}M-parameter `{arch}` that generates symbolic music (MIDI) token by token, "
             f"trained with the `music-hf` toolkit"
             + (f" on {data_sentence}." if data_sentence else "."), "",
             "## Model", "", "| | |", "| --- | --- |",
             f"| architecture | `{arch}` (`model_type: {config.get('model_type')}`) |",
             f"| parameters | {n_params:,} |"]
    if is_music:
        lines += [f"| hidden size / layers / heads | {config['hidden_size']} / {config['num_hidden_layers']} / "
                  f"{config['num_attention_heads']} |",
                  f"| MLP size | {config['intermediate_size']} |",
                  f"| context (tokens) | {config['max_position_embeddings']} |",
                  f"| positions | {config['position_embedding_type']} |",
                  f"| norm | {config['norm_type']} |",
                  f"| causal conv kernel | {config['conv_kernel_size'] or 'off'} |"]
        switches = ", ".join(f"{kind} {'on' if config.get(f'use_{kind}_embedding') else 'off'}"
                             for kind in ("note", "instrument", "temporal", "genre"))
        lines += [f"| music embeddings | {switches} |", "",
                  "The input embedding of each token adds to the token embedding a note embedding (pitch class and "
                  "octave), an instrument embedding (program in force), a temporal embedding (position in the bar, "
                  "bar index) and a genre embedding, each as switched above."]
    else:
        lines += [f"| hidden size / layers / heads | {config.get('n_embd')} / {config.get('n_layer')} / "
                  f"{config.get('n_head')} |", f"| context (tokens) | {config.get('n_positions')} |", "",
                  "A plain GPT-2 baseline over the same music tokens (no music embeddings, no genre conditioning)."]
    lines += ["", "## Tokenizer", "",
              f"`MusicTokenizer` over miditok {tok['tokenization']}"
              + (" (REMI+: all instruments in one stream)" if tok["use_programs"] else "")
              + f": {tok['vocab_size']} tokens, "
              f"BPE {'on' if tok['bpe'] else 'off'}, beat resolution {tok['beat_res']} (beats range: positions per "
              f"beat), {tok['num_velocities']} velocities, programs {'on' if tok['use_programs'] else 'off'}, "
              f"tempos {'on' if tok['use_tempos'] else 'off'}, time signatures "
              f"{'on' if tok['use_time_signatures'] else 'off'}. The full miditok settings are in `{MIDITOK_FILE}`."]
    if genres:
        lines += ["", "## Genres", "",
                  "Generation can be conditioned on a genre (`genre=` in `generate_midi`, `genre_ids` in "
                  "`model.generate`); id 0, `unknown`, means unconditional.", "",
                  "| id | genre |", "| --- | --- |", *(f"| {i} | {g} |" for i, g in sorted(id2genre.items()))]
    if results:
        lines += ["", "## Training data", ""]
        if data_sentence:
            lines.append(f"Trained on {data_sentence}.")
        if pieces:
            tokens = data.get("tokens") or {}
            lines += ["", "| split | pieces | tokens |", "| --- | --- | --- |",
                      *(f"| {s} | {_fmt(n)} | {_fmt(tokens.get(s, '-'))} |" for s, n in pieces.items())]
        if data.get("genres"):
            lines += ["", "Pieces per genre: " + ", ".join(f"{g} {_fmt(n)}" for g, n in data["genres"].items())
                      + "."]
        if data.get("skipped"):
            lines += ["", f"{_fmt(data['skipped'])} files could not be read and were skipped."]
        lines += ["", "## Training", ""]
        if train_cfg:
            procs = results.get("processes") or 1
            batch = train_cfg["per_device_batch_size"] * train_cfg["gradient_accumulation_steps"] * procs
            aug = {k: train_cfg[k] for k in ("pitch_shift", "tempo_shift", "velocity_jitter", "duration_jitter",
                                             "position_jitter", "velocity_dynamics", "program_reassign")
                   if train_cfg.get(k)}
            if aug:  # how often: the chances below 1 (a window augmented at all; its timing jittered)
                aug.update({k: train_cfg[k] for k in ("augment_probability", "timing_noise")
                            if train_cfg.get(k, 1.0) < 1})
            lines += [f"{_fmt(results.get('steps'))} optimizer steps on {procs} process{'es' if procs > 1 else ''}, "
                      f"{batch} windows of at most {train_cfg['max_length']} tokens per step, AdamW at learning rate "
                      f"{train_cfg['learning_rate']} ({train_cfg['warmup_steps']} warmup steps), weight decay "
                      f"{train_cfg['weight_decay']}, mixed precision `{train_cfg['mixed_precision']}`, seed "
                      f"{train_cfg['seed']}. Augmentation: "
                      + (", ".join(f"{k} {v}" for k, v in aug.items()) if aug else "none") + "."]
            if train_cfg.get("init_from"):
                lines += ["", f"Continued from the weights in `{train_cfg['init_from']}` (its own training is that "
                              "model's; the steps above are this run's)."]
            if train_cfg.get("fim_rate"):
                lines += ["", f"Composition training: fill-in-the-middle windows at rate {train_cfg['fim_rate']} "
                              f"in the {train_cfg.get('fim_order', 'psm')} layout"
                              + (f" (at most {train_cfg['fim_max_bars']} bars left out)"
                                 if train_cfg.get("fim_max_bars") else "") + ", control dropout "
                              f"{train_cfg.get('control_dropout')}, genre dropout {train_cfg.get('genre_dropout')}."]
        if results.get("train_loss") is not None:
            lines += ["", f"Final training loss: {_fmt(results['train_loss'])}."]
        if train_cfg:
            lines += ["", "<details><summary>Full training configuration</summary>", "", "```json",
                      json.dumps(train_cfg, indent=2), "```", "", "</details>"]
    if evals:
        lines += ["", "## Evaluation", "",
                  f"On the {split} split ({_fmt(int(evals['tokens'])) if 'tokens' in evals else '?'} tokens, "
                  f"{_fmt(int(evals['notes'])) if 'notes' in evals else '?'} notes"
                  + (f", at most {train_cfg['eval_max_batches']} batches" if train_cfg.get("eval_max_batches") else "")
                  + "):", "", "| metric | value |", "| --- | --- |",
                  *(f"| {label} | {_fmt(float(evals[key]))} |" for key, _, label in EVAL_METRICS if key in evals),
                  "", "NLL per note is the summed negative log-likelihood of the tokens divided by the number of "
                  "notes: it compares models whose tokenizers cut notes into different numbers of tokens."]
    lines += ["", _usage(repo_id, config, genres[0] if genres else None), "",
              "## Limitations", "",
              f"- A small model ({n_params / 1e6:.2f}M parameters, context of "
              f"{config.get('max_position_embeddings') or config.get('n_positions')} tokens)"
              + (f" trained on {_fmt(pieces['train'])} pieces" if pieces.get("train") else "")
              + ": expect short-range coherence, little long-term form, and wrong notes.",
              ("- The music21 corpus is mostly Western classical and folk music (Bach chorales, European folk songs, "
               "fiddle tunes)" if dataset_type == "music21-corpus" else
               "- The model knows only what its training pieces hold; public MIDI collections lean towards Western "
               "classical, folk and popular music")
              + ": other traditions, styles and instruments are absent or rare, and genre labels come from the "
              "collection or label file a piece belongs to.",
              "- Symbolic only: no audio, no lyrics, no expressive performance beyond the tokenizer's velocity and "
              "timing resolution.",
              "- Generated pieces can resemble training pieces" + _memorization(path)
              + "; check before publishing them as original work.",
              "", "## Framework versions", "",
              f"- music-hf {__version__}", f"- transformers {config.get('transformers_version', '?')}",
              f"- miditok tokenization {tok['tokenization']}"]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


# ----- push -----------------------------------------------------------------------------------------------
def upload_operations(model_dir: str | os.PathLike, repo_id: str) -> list[CommitOperationAdd]:
    """The files one push commits: the folder's files that `UPLOAD_PATTERNS` allow, as `upload_folder`'s
    `allow_patterns` would pick them (others are skipped and logged), and README.md, the model card."""
    path = validate_model_dir(model_dir)
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    files = list(filter_repo_objects(entries, allow_patterns=UPLOAD_PATTERNS))
    skipped = [e for e in entries if e not in files]
    if skipped:
        logger.info("not uploading from %s: %s", path, ", ".join(skipped))
    return [*(CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path / name)) for name in files),
            CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(build_model_card(path, repo_id)).encode())]


def push_model_dir(model_dir: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None,
                   commit_message: str = "Upload music-hf model, tokenizer and model card") -> str:
    """Publish a saved model folder to `repo_id` in one commit; returns the repo URL.

    The repo is created if needed (`private` only applies then: an existing repo keeps its visibility).
    """
    validate_repo_id(repo_id)
    validate_model_dir(model_dir)
    token = resolve_token(token)
    operations = upload_operations(model_dir, repo_id)
    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    # not `upload_folder`: it cannot add the generated card, and with hf_xet it may split into several commits
    api.create_commit(repo_id=repo_id, operations=operations, commit_message=commit_message, repo_type="model")
    logger.info("pushed %d files from %s to %s", len(operations), model_dir, url)
    return str(url)


__all__ = ["HubPushError", "ModelDirError", "InvalidRepoIdError", "MissingTokenError", "validate_model_dir",
           "validate_repo_id", "resolve_token", "build_model_card", "upload_operations", "push_model_dir"]
