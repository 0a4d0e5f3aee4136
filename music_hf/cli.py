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

from .hub import SHIPPED_MODEL

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

    model: str = HfArg(default=str(SHIPPED_MODEL), help="model folder or Hub repo id (default: the shipped "
                                                         "models/music-hf-base)")
    adapter: str | None = HfArg(default=None, help="LoRA adapter folder or Hub repo fine-tuned from --model "
                                                   "(`music-hf train --init_from MODEL --lora_r R`), merged into it")
    out: str = HfArg(default="outputs/samples", help="folder for the MIDI files")
    prompt: str | None = HfArg(default=None, help="MIDI/ABC file to continue")
    prompt_bars: int | None = HfArg(default=None, help="bars of the prompt to keep")
    no_prompt_mapping: bool = HfArg(default=False, help="continue --prompt as it is: no dropping of drums and no "
                                                        "mapping of programs, velocities and tempos the model never "
                                                        "learned (the JSON's prompt_changes lists what mapping did)")
    genre: str | None = HfArg(default=None, help="genre(s) from the model's config (id2genre), comma-separated, "
                                                 "or `all`")
    programs: str | None = HfArg(default=None, help="comma-separated GM programs allowed (128 = drums), or 'any'; "
                                                    "default: the prompt's and the genre's usual instruments")
    time_signature: str | None = HfArg(default=None, help="time signature of a new piece, e.g. 3/4")
    tempo: float | None = HfArg(default=None, help="tempo of a new piece (beats per minute)")
    max_new_tokens: int = HfArg(default=512, help="tokens to generate at most")
    num_return_sequences: int = HfArg(default=1, help="pieces per genre")
    seed: int = HfArg(default=0, help="sampling seed")
    unconstrained: bool = HfArg(default=False, help="turn grammar-constrained decoding off")
    infill_bars: list[int] | None = HfArg(default=None, help="START END: regenerate bars START to END-1 of the "
                                                             "--prompt piece (bars from 0), keeping the others")
    infill_programs: str | None = HfArg(default=None, help="comma-separated programs: with --infill_bars, regenerate "
                                                           "only their notes there (128 = drums)")
    accompany_program: int | None = HfArg(default=None, help="write a new part for this program (0-127, 128 = "
                                                             "drums) along the whole --prompt piece")
    controls: list[str] | None = HfArg(default=None, help='key=value pairs: key="D minor" density=8 (notes per '
                                                          'bar) polyphony=2 pitch_range=48-84 tempo=96 '
                                                          'timing=score|performed (default: the prompt\'s; a new '
                                                          'piece: score) repetition=0.3 (share of bars repeating '
                                                          'an earlier one, 0-1; default: the prompt\'s; a new '
                                                          'piece: the model\'s choice)')
    guidance_scale: float | None = HfArg(default=None, help="classifier-free guidance toward the controls and the "
                                                            "genre (> 1 pulls harder; none or 1: off)")
    repeat_bias: float | None = HfArg(default=None, help="repeat completion (new pieces and continuations): logit "
                                                         "added to carry on a bar that began as an earlier bar "
                                                         "began (0: off; none: generate_music's default, "
                                                         "REPEAT_BIAS)")
    describe: str | None = HfArg(default=None, help='the settings in words: "a sparse jig in D minor for flute, '
                                                    '100 bpm" (genre, instruments, time signature, tempo, key, '
                                                    'density, polyphony, range, timing; music_hf.text_prompt); '
                                                    'the other options win over it. What it read goes to stderr')
    backend: str = HfArg(default="torch", help="decoding backend: torch, or onnx / onnx-int8 (ONNX Runtime on the "
                                               "CPU, same tokens / int8, faster; pip install 'music-hf[fast]')")


CONTROL_NUMBERS = ("density", "polyphony", "tempo", "repetition")


def parse_controls(pairs: Sequence[str] | None) -> dict[str, Any] | None:
    """`key=value` pairs into generation controls: numbers for density, polyphony, tempo and repetition, (low, high)
    for pitch_range ("48-84" or "48,84"), text for key and timing; the tokenizer checks names and values."""
    if not pairs:
        return None
    controls: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name, value = name.strip().lower(), value.strip().strip("'\"")
        if not sep or not name or not value:
            raise ValueError(f"--controls takes key=value pairs (key=\"D minor\" density=8), got {pair!r}")
        try:
            if name in CONTROL_NUMBERS:
                controls[name] = float(value)
            elif name == "pitch_range":
                low, high = value.replace(",", "-").split("-")
                controls[name] = (int(low), int(high))
            else:
                controls[name] = value
        except ValueError:
            raise ValueError(f"--controls {name}: cannot read {value!r}"
                             f"{' (LOW-HIGH MIDI pitches)' if name == 'pitch_range' else ' (a number)'}") from None
    return controls


def compose(args: GenerateArguments, sampling: Any, model: Any, tokenizer: Any, genres: list[str | None],
            controls: dict[str, Any] | None, out: Path) -> list[str]:
    """Infill bars of, or add a part to, the --prompt piece: one MIDI file per genre and variation."""
    from . import composition

    if not args.prompt:
        raise ValueError("--infill_bars and --accompany_program work on a piece: pass it as --prompt")
    if args.infill_bars is not None and args.accompany_program is not None:
        raise ValueError("choose one of --infill_bars and --accompany_program")
    if args.repeat_bias is not None:
        raise ValueError("--repeat_bias is for new pieces and continuations; --infill_bars and --accompany_program "
                         "do not use repeat completion")
    if args.infill_bars is not None and len(args.infill_bars) != 2:
        raise ValueError(f"--infill_bars takes START END, got {' '.join(map(str, args.infill_bars))}")
    if args.infill_programs and args.infill_bars is None:
        raise ValueError("--infill_programs goes with --infill_bars")
    programs = [int(x) for x in args.infill_programs.split(",")] if args.infill_programs else None
    kwargs = dict(controls=controls, guidance_scale=args.guidance_scale, max_new_tokens=args.max_new_tokens,
                  backend=args.backend, **dataclasses.asdict(sampling))
    written = []
    for genre in genres:
        for i in range(args.num_return_sequences):
            seed = args.seed + i
            if args.infill_bars is not None:
                start, end = args.infill_bars
                piece = composition.infill_piece(model, tokenizer, args.prompt, (start, end), programs, genre=genre,
                                                seed=seed, **kwargs)
                name = f"infill_{start}-{end}"
            else:
                piece = composition.accompany_piece(model, tokenizer, args.prompt, args.accompany_program,
                                                   genre=genre, seed=seed, **kwargs)
                name = f"accompany_{args.accompany_program}"
            path = out / f"{name}_{(genre or 'any').replace(' ', '_')}_{seed}.mid"
            piece.score.dump_midi(str(path))
            written.append(str(path))
            print(json.dumps({"genre": genre, "midi": str(path), "notes": piece.score.note_num(),
                              "tokens": len(piece.ids), "new_tokens": piece.span[1] - piece.span[0],
                              "seconds": round(piece.score.to("second").end(), 1)}))
    return written


def generate(args: GenerateArguments, sampling: Any) -> list[str]:
    """Generate pieces per genre with the model (or infill bars of / accompany the --prompt piece), write them as
    MIDI files, print a JSON line for each."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import generation

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()  # on the CPU: threads for its size
    if args.adapter:
        from .adapters import load_adapter
        model = load_adapter(model, args.adapter)
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
    programs = (args.programs if args.programs == "any" else [int(x) for x in args.programs.split(",")]
                if args.programs else None)
    controls = parse_controls(args.controls)
    if args.describe is not None:
        from .text_prompt import settings_from_text

        said = settings_from_text(args.describe, tokenizer, model)
        print(said.summary(), file=sys.stderr)
        if genres == [None] and said.genre is not None:
            genres = [said.genre]
        controls = said.merged(controls=controls)["controls"]  # (generate_music reads the rest itself)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.infill_bars is not None or args.accompany_program is not None:
        with torch.inference_mode():
            return compose(args, sampling, model, tokenizer, genres, controls, out)
    written = []
    for genre in genres:
        with torch.inference_mode():
            pieces = generation.generate_music(
                model, tokenizer, prompt=args.prompt, genre=genre, max_new_tokens=args.max_new_tokens,
                constrained=not args.unconstrained, prompt_bars=args.prompt_bars, programs=programs,
                time_signature=args.time_signature, tempo=args.tempo, num_return_sequences=args.num_return_sequences,
                seed=args.seed, controls=controls, guidance_scale=args.guidance_scale, backend=args.backend,
                prompt_mapping=not args.no_prompt_mapping, description=args.describe,
                **({} if args.repeat_bias is None else {"repeat_bias": args.repeat_bias}),
                **dataclasses.asdict(sampling))
        for i, piece in enumerate(pieces):
            path = out / f"{(genre or 'any').replace(' ', '_')}_{args.seed}_{i}.mid"
            piece.score.dump_midi(str(path))
            written.append(str(path))
            print(json.dumps({"genre": genre, "midi": str(path), "notes": piece.score.note_num(),
                              "tokens": len(piece.ids), "prompt_tokens": piece.prompt_length,
                              "prompt_changes": piece.prompt_changes,
                              "seconds": round(piece.score.to("second").end(), 1)}))
    return written


def generate_command(argv: Sequence[str]) -> int:
    from .training import MODEL_SAMPLING, SamplingArguments

    parser = Parser((GenerateArguments, SamplingArguments), "music-hf generate",
                    "Generate music with a trained model (a folder or a Hub repo id) and write MIDI files;\n"
                    "sampling settings left unset come from the model's generation_config.json. With --prompt,\n"
                    "--infill_bars START END regenerates those bars and --accompany_program P adds a part;\n"
                    "--controls key=value... and --guidance_scale steer any of them.",
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
    card_only: bool = HfArg(default=False, help="only write the model card the push would upload, as model_dir/"
                                                "README.md (the shipped models/music-hf-base has one); push nothing")


def push_command(argv: Sequence[str]) -> int:
    args, = Parser((PushArguments,), "music-hf push",
                   "Publish a model folder: weights, config, generation config, tokenizer, code and a model card in\n"
                   "one commit; print the URL. Exit code 2 for a folder, repo id or token that is not right, 1 for\n"
                   "a failed upload.").parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    from huggingface_hub.errors import HfHubHTTPError

    from .hub import HubPushError, build_model_card, push_model_dir

    if args.card_only:
        try:
            path = Path(args.model_dir) / "README.md"
            build_model_card(args.model_dir, args.repo_id).save(str(path))
        except HubPushError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(path)
        return 0
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
