"""Composition training end to end: a tiny model trained by the package's own loop (`music_hf.training.train`, whose
`MusicDataCollator` gives the windows control prefixes with condition dropout and fill-in-the-middle arrangements)
on real corpus pieces learns its controls: asking for a higher density, a higher pitch range, more polyphony or
another key moves what it writes that way, with and without classifier-free guidance.

About 1500 steps of a 2-layer model of width 64 (context 256): density, pitch range and polyphony are learned within
300-600 steps, the key (a mapping from the Key token to a pitch-class set, under +-6 semitone transposition) only
later (at 1000 steps it was not reliably there). Each comparison takes 32 generations per side and asks for the
difference in means to clear both a fixed effect size and 4 standard errors; the measured differences are 22 to 90
standard errors (run with -s to see them). Marked slow (70-95 s on two busy cores); run with `pytest -m slow`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from music_hf import MusicTokenizer
from music_hf.evaluation import composition_measure
from music_hf.generation import generate_music
from music_hf.tokenization_music import KEY_TONICS, KIND_INDEX, load_score, split_abc_tunes
from music_hf.training import TrainConfig, train

pytestmark = pytest.mark.slow

# besides the session's seven pieces: dense four-part chorales and sparse folk songs in 4/4, so that density,
# polyphony and range vary within one time signature
EXTRA_CHORALES = ("bach/bwv1.6", "bach/bwv2.6", "bach/bwv3.6", "bach/bwv4.8", "bach/bwv10.7")
EXTRA_TUNES = ("essenFolksong/altdeu10", range(1, 9))  # (ABC file of the music21 corpus, tune indices)
SAMPLES = 32  # generations per side of each comparison
NEW_TOKENS = 160
GUIDANCE = 3.0
MAJOR, MINOR = (0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 10)


@pytest.fixture(scope="module")
def corpus_folder(real_midi_paths: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The training pieces: the session's seven and the extra chorales and tunes, as MIDI files."""
    from music21 import corpus

    folder = tmp_path_factory.mktemp("composition_corpus")
    for path in real_midi_paths:
        shutil.copy(path, folder / path.name)
    for work in EXTRA_CHORALES:
        corpus.parse(work).write("midi", fp=str(folder / (work.replace("/", "_") + ".mid")))
    work, indices = EXTRA_TUNES
    tunes = split_abc_tunes(Path(corpus.getWork(work)).read_text(encoding="utf-8", errors="replace"))
    for i in indices:
        load_score(tunes[i]).dump_midi(str(folder / f"{work.replace('/', '_')}_{i}.mid"))
    return folder


@pytest.fixture(scope="module")
def trained(corpus_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    """(model, tokenizer) trained by `train(TrainConfig)` with fim_rate, control_dropout and transposition."""
    folder = corpus_folder
    out = tmp_path_factory.mktemp("composition_run")
    cfg = TrainConfig().replace(
        midi_dir=str(folder), validation_fraction=0.0, test_fraction=0.0, num_proc=1, max_length=192, overlap=64,
        pitch_shift=6, fim_rate=0.3, control_dropout=0.3, genre_dropout=0.0,
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
        max_position_embeddings=256, embedding_dropout=0.0, hidden_dropout=0.0,
        learning_rate=3e-3, warmup_steps=20, max_steps=1500, per_device_batch_size=8, seed=0,
        eval_every=10**6, save_every=10**6, log_every=100, log_with=None, keep_checkpoints=1, output_dir=str(out))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model gains nothing from intra-op threads on a busy machine
    try:
        result = train(cfg)
        assert result["step"] == 1500
        from transformers import AutoModelForCausalLM
        tokenizer = MusicTokenizer.from_pretrained(str(out))
        model = AutoModelForCausalLM.from_pretrained(str(out)).eval()
        yield model, tokenizer
    finally:
        torch.set_num_threads(threads)


def generate(trained, controls: dict, seed: int, guided: bool) -> list[list[int]]:
    model, tokenizer = trained
    pieces = generate_music(model, tokenizer, controls=controls, max_new_tokens=NEW_TOKENS, time_signature="4/4",
                            num_return_sequences=SAMPLES, seed=seed, guidance_scale=GUIDANCE if guided else None)
    return [p.ids for p in pieces]


def pitches(tokenizer: MusicTokenizer, ids: list[int]) -> np.ndarray:
    t = tokenizer.token_table
    return np.array([t.pitch[i] for i in ids if t.kind[i] == KIND_INDEX["Pitch"]], dtype=np.int64)


def assert_shift(low: list[float], high: list[float], min_effect: float, what: str) -> None:
    """The mean of `high` exceeds the mean of `low` by `min_effect` at least and by 4 standard errors."""
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    low, high = low[np.isfinite(low)], high[np.isfinite(high)]
    assert len(low) >= SAMPLES // 2 and len(high) >= SAMPLES // 2, what
    diff = high.mean() - low.mean()
    se = np.sqrt(low.var(ddof=1) / len(low) + high.var(ddof=1) / len(high))
    print(f"{what}: {low.mean():.3f} -> {high.mean():.3f} (difference {diff:.3f}, {diff / se:.1f} standard errors)")
    assert diff > min_effect and diff > 4 * se, \
        f"{what}: {low.mean():.3f} vs {high.mean():.3f}, difference {diff:.3f} (standard error {se:.3f})"


@pytest.mark.parametrize("guided", [False, True], ids=["no guidance", "guidance"])
def test_density_control_moves_notes_per_bar(trained, guided):
    _, tok = trained
    measure = [[composition_measure(tok, ids)["density"] for ids in generate(trained, {"density": value}, seed,
                                                                             guided)]
               for value, seed in ((2, 1), (20, 2))]
    assert_shift(*measure, min_effect=6.0, what=f"notes per bar, density 2 -> 20{', guided' if guided else ''}")


@pytest.mark.parametrize("guided", [False, True], ids=["no guidance", "guidance"])
def test_pitch_range_control_moves_the_mean_pitch(trained, guided):
    _, tok = trained
    measure = [[pitches(tok, ids).mean() if len(pitches(tok, ids)) else np.nan
                for ids in generate(trained, {"pitch_range": value}, seed, guided)]
               for value, seed in (((40, 64), 3), ((64, 88), 4))]
    assert_shift(*measure, min_effect=6.0, what=f"mean pitch, range (40, 64) -> (64, 88)"
                                                f"{', guided' if guided else ''}")


@pytest.mark.parametrize("guided", [False, True], ids=["no guidance", "guidance"])
def test_polyphony_control_moves_the_notes_sounding_together(trained, guided):
    _, tok = trained
    measure = [[tok.measure_controls(ids)["polyphony"] or np.nan
                for ids in generate(trained, {"polyphony": value}, seed, guided)]
               for value, seed in ((1, 5), (4, 6))]
    assert_shift(*measure, min_effect=1.0, what=f"polyphony 1 -> 4{', guided' if guided else ''}")


@pytest.mark.parametrize("guided", [False, True], ids=["no guidance", "guidance"])
def test_key_control_raises_the_share_of_notes_in_its_scale(trained, guided):
    """C major and F# major share two pitch classes of seven: for each, the share of the notes in its scale is
    higher when it is asked for than when the other one is."""
    _, tok = trained

    def in_scale(ids: list[int], key: str) -> float:
        tonic, mode = key.split()
        scale = [(KEY_TONICS.index(tonic) + s) % 12 for s in (MAJOR if mode == "major" else MINOR)]
        p = pitches(tok, ids)
        return float(np.isin(p % 12, scale).mean()) if len(p) else np.nan

    keys = ("C major", "F# major")
    asked = {key: generate(trained, {"key": key}, seed, guided) for key, seed in zip(keys, (7, 8))}
    other = dict(zip(keys, reversed(keys)))
    own = [in_scale(ids, key) for key in keys for ids in asked[key]]
    not_asked = [in_scale(ids, key) for key in keys for ids in asked[other[key]]]
    assert_shift(not_asked, own, min_effect=0.15, what=f"share of notes in the key's scale, other key -> asked"
                                                       f"{', guided' if guided else ''}")

