"""The `music-generation` pipeline: `pipeline("music-generation", model=...)` over `generate_music`.

Importing `music_hf` registers it with transformers' `PIPELINE_REGISTRY`, so a saved folder (model and
tokenizer saved together) or a Hub repo id loads like any other task:

    pipe = pipeline("music-generation", model="outputs/small")
    pipe(genre="chorale", max_new_tokens=256, seed=0)[0]["score"]  # a symusic.Score

Each input (None or "" for a new piece, or a prompt: a MIDI/ABC path, MIDI bytes, ABC text or a
`symusic.Score`) gives a list with one dict per generated sequence (`num_return_sequences`): `{"score": Score}`
by default, `{"midi": bytes}` with `return_type="midi"`, `{"token_ids": [...]}` with `return_type="ids"`.
A list of inputs gives a list of such lists. Generation is `music_hf.generation.generate_music` (grammar-
constrained by default), so its keywords (genre, max_new_tokens, temperature, top_k, top_p, seed, programs,
constrained, prompt_bars, time_signature, tempo, ...) pass through; other keywords go on to `model.generate()`.

A music prompt is first brought to what the model learned, as `generate_music` brings it
(`music_hf.prompt_mapping.map_prompt`: unlearned drums dropped, unlearned programs to the nearest learned one,
velocities and tempos into the learned range; `prompt_mapping=False` keeps it as it is): its records carry
`"prompt_changes"`, one line per change (an empty list when nothing changed).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Pipeline

from .generation import generate_music, prompt_for_model
from .tokenization_music import is_music_input

TASK = "music-generation"
RETURN_TYPES = ("score", "midi", "ids")
RETURN_KEYS = {"score": "score", "midi": "midi", "ids": "token_ids"}
PREPROCESS_KEYS = ("prompt_bars", "time_signature", "tempo", "prompt_mapping")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class MusicGenerationPipeline(Pipeline):
    """Generates symbolic music with a `MusicForCausalLM` and its `MusicTokenizer` (see the module docstring).

    Keywords (at construction or per call): `return_type` ("score", "midi" or "ids"); `genre` (a name or id of
    `model.config.id2genre`); `prompt_bars`, `time_signature`, `tempo` (how the prompt or the opening bar is
    made), `prompt_mapping` (bring a music prompt to what the model learned; default True); `description` (the
    settings in words, `music_hf.text_prompt`; the keywords above win over it); `max_new_tokens`,
    `num_return_sequences`, `temperature`, `top_k`, `top_p`, `do_sample`, `seed`, `programs`, `constrained` and any
    other `generate()` keyword.
    """

    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.tokenizer is None or not hasattr(self.tokenizer, "decode_midi"):
            raise ValueError(f"the {TASK} pipeline needs a MusicTokenizer (got {type(self.tokenizer).__name__}); "
                             "save it next to the model or pass tokenizer=")
        if not self.model.can_generate():
            raise ValueError(f"the {TASK} pipeline needs a model that can generate (a MusicForCausalLM), got "
                             f"{type(self.model).__name__}")

    def __call__(self, inputs: Any = None, **kwargs: Any) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        """Generate from `inputs`: None or "" (a new piece), a prompt, or a list of those (one result list each)."""
        batch_size = kwargs.get("batch_size") or self._batch_size or 1
        if batch_size != 1:
            raise ValueError(f"the {TASK} pipeline generates one input at a time (batch_size=1, got {batch_size}); "
                             "use num_return_sequences for several pieces from one input")
        if isinstance(inputs, tuple):
            inputs = list(inputs)
        if isinstance(inputs, list) and not inputs:
            return []
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(self, return_type: str | None = None, genre: str | int | None = None,
                             max_new_tokens: int | None = None, num_return_sequences: int | None = None,
                             **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        preprocess_params = {k: kwargs.pop(k) for k in PREPROCESS_KEYS if k in kwargs}
        description = kwargs.pop("description", None)
        if description is not None:  # the settings in words (generate_music's `description`); keywords win
            from .text_prompt import settings_from_text

            settings = settings_from_text(description, self.tokenizer, self.model).merged(
                genre, kwargs.get("programs"), preprocess_params.get("time_signature"), preprocess_params.get("tempo"),
                kwargs.get("controls"))
            genre = settings.pop("genre")
            for key in ("time_signature", "tempo"):  # they open a new piece: preprocess's
                if settings[key] is not None:
                    preprocess_params[key] = settings[key]
            kwargs.update({k: settings[k] for k in ("programs", "controls") if settings[k] is not None})
        if preprocess_params.get("prompt_bars") is not None:
            _positive_int("prompt_bars", preprocess_params["prompt_bars"])
        forward_params = dict(kwargs)
        if genre is not None:
            forward_params["genre"] = self.model.config.genre_id(genre)  # an unknown name or id raises ValueError
        if max_new_tokens is not None:
            forward_params["max_new_tokens"] = _positive_int("max_new_tokens", max_new_tokens)
        if num_return_sequences is not None:
            forward_params["num_return_sequences"] = _positive_int("num_return_sequences", num_return_sequences)
        temperature = forward_params.get("temperature")
        if temperature is not None and not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        postprocess_params = {}
        if return_type is not None:
            if return_type not in RETURN_TYPES:
                raise ValueError(f"return_type must be one of {RETURN_TYPES}, got {return_type!r}")
            postprocess_params["return_type"] = return_type
        return preprocess_params, forward_params, postprocess_params

    def preprocess(self, inputs: Any, prompt_bars: int | None = None, time_signature: str | None = None,
                   tempo: float | None = None, prompt_mapping: bool = True) -> dict[str, Any]:
        prompt = None if (inputs is None or (isinstance(inputs, str) and not inputs.strip())) else inputs
        # BOS first; no control yet: generate_music in _forward adds them (the timing and the repetition measured on
        # the prompt, or the model's repetition for its genre, too)
        head, body, changes = prompt_for_model(self.model, self.tokenizer, prompt, prompt_bars, time_signature, tempo,
                                               controls={"timing": None, "repetition": None},
                                               prompt_mapping=prompt_mapping)
        return {"input_ids": torch.tensor([head + body], dtype=torch.long),
                "prompt_changes": changes if prompt is not None and is_music_input(prompt) else None}

    def _forward(self, model_inputs: dict[str, Any], **generate_kwargs: Any) -> dict[str, Any]:
        ids = model_inputs["input_ids"][0].tolist()
        # the prompt is already mapped, cut and opened (prompt_bars, time_signature, tempo applied in preprocess)
        pieces = generate_music(self.model, self.tokenizer, prompt=ids, **generate_kwargs)
        return {"pieces": pieces, "prompt_changes": model_inputs["prompt_changes"]}

    def postprocess(self, model_outputs: dict[str, Any], return_type: str = "score") -> list[dict[str, Any]]:
        key = RETURN_KEYS[return_type]
        changes = model_outputs.get("prompt_changes")
        records = []
        for piece in model_outputs["pieces"]:
            if return_type == "score":
                value: Any = piece.score
            elif return_type == "midi":
                value = piece.score.dumps_midi()
            else:
                value = list(piece.ids)
            records.append({key: value} if changes is None else {key: value, "prompt_changes": list(changes)})
        return records


def register_pipeline() -> None:
    """Register `music-generation` (idempotent) so that `transformers.pipeline` finds it."""
    from transformers import AutoModelForCausalLM
    from transformers.pipelines import PIPELINE_REGISTRY

    if PIPELINE_REGISTRY.supported_tasks.get(TASK, {}).get("impl") is MusicGenerationPipeline:
        return
    PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=MusicGenerationPipeline, pt_model=AutoModelForCausalLM)


__all__ = ["MusicGenerationPipeline", "register_pipeline", "TASK", "RETURN_TYPES"]
