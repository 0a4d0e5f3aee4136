"""`music-hf train|generate|evaluate|push|bench`: the command line of the package and of the scripts in scripts/.

One parser serves every command: transformers' `HfArgumentParser` over settings dataclasses (`--help` lists each
field with its help), plus `--config FILE.yaml` for the commands that read a run's settings (the file sets the
defaults, the command line overrides them). Each command owns its process: it sets the torch thread count.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser
from transformers.hf_argparser import HfArg

LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def _none_or(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """`convert`, with `none` and `null` giving None."""
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null") else convert(text)
    parse.__name__ = getattr(convert, "__name__", "value")  # argparse names the type in its errors
    return parse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Each option's default after its help; the description as written."""


class Parser(HfArgumentParser):
    """HfArgumentParser without option abbreviations, where `none`/`null` set an optional field to None.

    `defaults` replace the dataclasses' defaults (e.g. a command that leaves sampling to the model's
    generation_config); `parse(argv, defaults_from)` can take further defaults from a first pass (a YAML file).
    """

    def __init__(self, dataclass_types: Sequence[type], prog: str, description: str,
                 defaults: dict[str, Any] | None = None):
        super().__init__(dataclass_types, prog=prog, description=description, allow_abbrev=False,
                         formatter_class=HelpFormatter)
        optional = {name for dtype in self.dataclass_types for name, hint in typing.get_type_hints(dtype).items()
                    if type(None) in typing.get_args(hint)}
        for action in self._actions:
            if action.dest in optional and action.type is not None:
                action.type = _none_or(action.type)
        self.set_defaults(**(defaults or {}))

    def parse(self, argv: Sequence[str] | None,
              defaults_from: Callable[[argparse.Namespace], dict[str, Any]] | None = None) -> list[Any]:
        """The dataclasses (then a namespace of the other arguments, if any), filled from `argv`."""
        argv = sys.argv[1:] if argv is None else list(argv)
        if defaults_from is not None:
            first, _ = self.parse_known_args(argv)
            try:
                self.set_defaults(**defaults_from(first))
            except (ValueError, TypeError, OSError) as e:
                self.error(str(e))
        *outputs, rest = self.parse_args_into_dataclasses(argv, return_remaining_strings=True,
                                                          look_for_args_file=False)
        if rest:
            self.error(f"unrecognized arguments: {' '.join(rest)}")
        return outputs


def set_threads(threads: int | None) -> None:
    """The process's torch thread count (None: torch's choice)."""
    import torch

    if threads:
        torch.set_num_threads(threads)


# ----- train ------------------------------------------------------------------------------------------
def parse_train_args(argv: Sequence[str] | None = None) -> tuple[Any, argparse.Namespace]:
    """The run's TrainConfig (YAML file, then command-line overrides) and the session options."""
    from .training import TrainConfig

    parser = Parser(TrainConfig.argument_types(), "music-hf train",
                    "Train a music model with a plain Accelerate loop (`accelerate launch` runs it on several\n"
                    "processes, GPUs or nodes). The final model lands in output_dir, checkpoints in\n"
                    "output_dir/checkpoint-N.")
    parser.add_argument("--config", default=None,
                        help="YAML file of run settings (scripts/configs/); the command line overrides it")
    parser.add_argument("--stop_after", type=int, default=None,
                        help="end after N optimizer steps with a checkpoint, without changing the schedule")
    parser.add_argument("--resume", nargs="?", const="latest", default=None,
                        help="resume from the latest checkpoint in output_dir, or from PATH")
    *parts, session = parser.parse(argv, lambda ns: TrainConfig.from_yaml(ns.config).flat() if ns.config else {})
    return TrainConfig(*parts), session


def train_command(argv: Sequence[str]) -> int:
    """Train, then print the run's summary as a JSON line (from the main process of a launch)."""
    from .training import train

    cfg, session = parse_train_args(argv)
    main_process = os.environ.get("RANK", "0") == "0"  # accelerate launch numbers its processes
    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING, format=LOG_FORMAT)
    summary = train(cfg, stop_after=session.stop_after, resume=session.resume)
    if main_process:
        print(json.dumps(summary))
    return 0


# ----- generate ---------------------------------------------------------------------------------------
@dataclass
class GenerateArguments:
    """What to generate and where the MIDI files go."""

    model: str = HfArg(help="model folder or Hub repo id")
    out: str = HfArg(default="outputs/samples", help="folder for the MIDI files")
    prompt: str | None = HfArg(default=None, help="MIDI/ABC file to continue")
    prompt_bars: int | None = HfArg(default=None, help="bars of the prompt to keep")
    genre: str | None = HfArg(default=None, help="genre(s) from the model's config (id2genre), comma-separated, "
                                                 "or `all`")
    programs: str | None = HfArg(default=None, help="comma-separated GM programs allowed (128 = drums)")
    time_signature: str | None = HfArg(default=None, help="time signature of a new piece, e.g. 3/4")
    tempo: float | None = HfArg(default=None, help="tempo of a new piece (beats per minute)")
    max_new_tokens: int = HfArg(default=512, help="tokens to generate at most")
    num_return_sequences: int = HfArg(default=1, help="pieces per genre")
    seed: int = HfArg(default=0, help="sampling seed")
    unconstrained: bool = HfArg(default=False, help="turn grammar-constrained decoding off")


def generate(args: GenerateArguments, sampling: Any) -> list[str]:
    """Generate pieces per genre with the model, write them as MIDI files, print a JSON line for each."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import generation

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()  # on the CPU: threads for its size
    set_threads(generation.cpu_threads_for(model.config.hidden_size, args.num_return_sequences,
                                           torch.get_num_threads()))
    known = [g for i, g in sorted(model.config.id2genre.items()) if i > 0]  # id 0 is "unknown"
    genres: list[str | None] = [None]
    if args.genre == "all":
        genres = list(known) or [None]
    elif args.genre:
        genres = [g.strip() for g in args.genre.split(",")]
        for genre in genres:
            model.config.genre_id(genre)  # an unknown name raises ValueError listing the known ones
    programs = [int(x) for x in args.programs.split(",")] if args.programs else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for genre in genres:
        with torch.inference_mode():
            pieces = generation.generate_music(
                model, tokenizer, prompt=args.prompt, genre=genre, max_new_tokens=args.max_new_tokens,
                constrained=not args.unconstrained, prompt_bars=args.prompt_bars, programs=programs,
                time_signature=args.time_signature, tempo=args.tempo, num_return_sequences=args.num_return_sequences,
                seed=args.seed, **dataclasses.asdict(sampling))
        for i, piece in enumerate(pieces):
            path = out / f"{(genre or 'any').replace(' ', '_')}_{args.seed}_{i}.mid"
            piece.score.dump_midi(str(path))
            written.append(str(path))
            print(json.dumps({"genre": genre, "midi": str(path), "notes": piece.score.note_num(),
                              "tokens": len(piece.ids), "prompt_tokens": piece.prompt_length,
                              "seconds": round(piece.score.to("second").end(), 1)}))
    return written


def generate_command(argv: Sequence[str]) -> int:
    from .training import MODEL_SAMPLING, SamplingArguments

    parser = Parser((GenerateArguments, SamplingArguments), "music-hf generate",
                    "Generate music with a trained model (a folder or a Hub repo id) and write MIDI files;\n"
                    "sampling settings left unset come from the model's generation_config.json.",
                    defaults=MODEL_SAMPLING)
    args, sampling = parser.parse(argv)
    try:
        generate(args, sampling)
    except ValueError as e:
        parser.error(str(e))
    return 0


# ----- evaluate and bench -----------------------------------------------------------------------------
def evaluate_command(argv: Sequence[str]) -> int:
    from . import quality
    from .training import TrainConfig

    parser = Parser((quality.EvaluationArguments, *TrainConfig.argument_types()), "music-hf evaluate",
                    quality.__doc__)
    parser.add_argument("--config", default=None, help="YAML file of run settings (none: ablation.yaml with "
                                                       "--ablation, else the model's own training settings)")
    args, *parts, _ = parser.parse(argv, quality.settings_defaults)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    set_threads(args.threads or (1 if args.quick else None))
    quality.run(args, TrainConfig(*parts), command=command_line("scripts/evaluate.py", argv))
    return 0


def bench_command(argv: Sequence[str]) -> int:
    from . import benchmark

    args, = Parser((benchmark.BenchArguments,), "music-hf bench", benchmark.__doc__).parse(argv)
    set_threads(args.threads or (1 if args.quick else None))
    benchmark.run(args, command=command_line("scripts/bench.py", argv))
    return 0


def command_line(script: str, argv: Sequence[str]) -> str:
    """The command as a reader can rerun it, for reports."""
    import shlex

    return " ".join(["python", script, *map(shlex.quote, argv)])


# ----- push -------------------------------------------------------------------------------------------
@dataclass
class PushArguments:
    """A saved model folder and the Hub repo to publish it to."""

    model_dir: str = HfArg(help="folder saved with save_pretrained (model + tokenizer), e.g. a run's output_dir")
    repo_id: str = HfArg(help="namespace/name on the Hub")
    private: bool = HfArg(default=False, help="create the repo private (if it does not exist)")
    token: str | None = HfArg(default=None, help="Hub token (none: HF_TOKEN or the `hf auth login` one)")
    commit_message: str = HfArg(default="Upload music-hf model, tokenizer and model card", help="commit message")


def push_command(argv: Sequence[str]) -> int:
    args, = Parser((PushArguments,), "music-hf push",
                   "Publish a model folder: weights, config, generation config, tokenizer, code and a model card in\n"
                   "one commit; print the URL. Exit code 2 for a folder, repo id or token that is not right, 1 for\n"
                   "a failed upload.").parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    from huggingface_hub.errors import HfHubHTTPError

    from .hub import HubPushError, push_model_dir

    try:
        url = push_model_dir(args.model_dir, args.repo_id, private=args.private, token=args.token,
                             commit_message=args.commit_message)
    except HubPushError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # HfHubHTTPError derives from its HTTP client's base error, which connection failures raise too
    except (HfHubHTTPError, OSError, *HfHubHTTPError.__bases__) as e:
        detail = str(e).splitlines()[0] if str(e) else ""
        print(f"error: push to {args.repo_id} failed: {type(e).__name__}: {detail}", file=sys.stderr)
        return 1
    print(url)
    return 0


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "train": train_command, "generate": generate_command, "evaluate": evaluate_command, "push": push_command,
    "bench": bench_command}


def main(argv: Sequence[str] | None = None) -> int:
    """`music-hf COMMAND [options]`; `music-hf COMMAND --help` lists a command's options."""
    parser = argparse.ArgumentParser(prog="music-hf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("options", nargs=argparse.REMAINDER, help="the command's options (COMMAND --help)")
    args = parser.parse_args(argv)
    return COMMANDS[args.command](args.options)


if __name__ == "__main__":
    sys.exit(main())
