#!/usr/bin/env python
"""Generate music with a trained model (a local folder or a Hub repo id) and write MIDI files.

    python scripts/generate.py --model outputs/small/final --genre chorale --max_new_tokens 512 --out outputs/samples
    python scripts/generate.py --model outputs/small/final --prompt piece.mid --prompt_bars 4
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import music_hf  # noqa: F401  (registers the Auto classes)
from music_hf.generation import generate_music


def main(argv: list[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model folder or Hub repo id")
    p.add_argument("--out", default="outputs/samples", help="folder for the MIDI files")
    p.add_argument("--prompt", default=None, help="MIDI/ABC file to continue")
    p.add_argument("--prompt_bars", type=int, default=None, help="bars of the prompt to keep")
    p.add_argument("--genre", default=None,
                   help="genre(s) from the model's config (id2genre), comma-separated, or 'all'")
    p.add_argument("--programs", default=None, help="comma-separated GM programs allowed (128 = drums)")
    p.add_argument("--time_signature", default=None)
    p.add_argument("--tempo", type=float, default=None)
    p.add_argument("--max_new_tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top_k", type=int, default=None)
    p.add_argument("--top_p", type=float, default=0.95)
    p.add_argument("--num_return_sequences", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--unconstrained", action="store_true", help="turn grammar-constrained decoding off")
    args = p.parse_args(argv)

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    known = [g for g in model.config.id2genre.values() if g != "unknown"]
    genres: list[str | None] = [None]
    if args.genre == "all":
        genres = list(known) or [None]
    elif args.genre:
        genres = [g.strip() for g in args.genre.split(",")]
        unknown = [g for g in genres if g not in known]
        if unknown:
            p.error(f"unknown genre(s) {unknown}; this model knows: {', '.join(known) or 'none'}")
    programs = [int(x) for x in args.programs.split(",")] if args.programs else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for genre in genres:
        with torch.inference_mode():
            pieces = generate_music(model, tokenizer, prompt=args.prompt, genre=genre,
                                    max_new_tokens=args.max_new_tokens, constrained=not args.unconstrained,
                                    prompt_bars=args.prompt_bars, programs=programs,
                                    time_signature=args.time_signature, tempo=args.tempo,
                                    temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                    num_return_sequences=args.num_return_sequences, seed=args.seed)
        for i, piece in enumerate(pieces):
            path = out / f"{(genre or 'any').replace(' ', '_')}_{args.seed}_{i}.mid"
            piece.score.dump_midi(str(path))
            written.append(str(path))
            print(json.dumps({"genre": genre, "midi": str(path), "notes": piece.score.note_num(),
                              "tokens": len(piece.ids), "prompt_tokens": piece.prompt_length,
                              "seconds": round(piece.score.to("second").end(), 1)}))
    return written


if __name__ == "__main__":
    main()
