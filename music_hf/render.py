"""Seeing and hearing a `symusic.Score`: a piano-roll image (matplotlib) and audio (a General MIDI soundfont).

Both work headless and need nothing from apt: audio comes from midirenderer (rustysynth in a PyPI wheel) with the
TimGM6mb.sf2 soundfont that the pretty-midi wheel ships; the `fluidsynth` program is an option (`backend=`). When
audio cannot be made, `render_audio` returns None and `audio_available()` says why, so callers carry on without it.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import math
import os
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import symusic
from miditok.constants import MIDI_INSTRUMENTS
from miditok.utils import get_bars_ticks

logger = logging.getLogger(__name__)

DRUMS = 128  # the program number the package uses for drums

# miditok's General MIDI names (the first of the sound effects it lists together), then the drum program
GM_PROGRAM_NAMES: list[str] = [instrument["name"].split(",")[0] for instrument in MIDI_INSTRUMENTS] + ["Drums"]

SOUNDFONT_ENV = "MUSIC_HF_SOUNDFONT"
AUDIO_BACKENDS = ("midirenderer", "fluidsynth")  # a PyPI wheel (the default), or the `fluidsynth` program (apt)
PEAK = 0.89  # rendered audio is scaled so its loudest sample sits here (fraction of full scale)

# Instrument colours: distinct, readable on white, colour-blind friendly first (Okabe-Ito), then tab10.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#8C564B", "#7F7F7F",
           "#BCBD22", "#17BECF", "#9467BD", "#2CA02C")
DRUM_COLOR = "#333333"
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def program_name(program: int, is_drum: bool = False) -> str:
    """General MIDI name of a program number (0-127), "Drums" for drums or program 128."""
    if is_drum or program == DRUMS:
        return GM_PROGRAM_NAMES[DRUMS]
    return GM_PROGRAM_NAMES[program] if 0 <= program < 128 else f"Program {program}"


def pitch_name(pitch: int) -> str:
    """Scientific pitch name (60 -> C4)."""
    return f"{NOTE_NAMES[pitch % 12]}{pitch // 12 - 1}"


def _as_ticks(score: symusic.Score) -> symusic.Score:
    return score if "Tick" in str(score.ttype) else score.to("tick")


def bar_starts(score: symusic.Score, end: int | None = None) -> list[int]:
    """Tick of every bar start up to `end` (default: the score's end), following its time signatures
    (4/4 before the first one); a time signature change starts a new bar."""
    score = _as_ticks(score)
    end = score.end() if end is None else end
    frame = symusic.Score(score.ticks_per_quarter)  # the time signatures, and a silent note making `end` the end
    frame.time_signatures = score.time_signatures.copy()
    if not len(frame.time_signatures) or frame.time_signatures[0].time > 0:  # else miditok skips the first one
        frame.time_signatures.insert(0, symusic.TimeSignature(0, 4, 4))
    track = symusic.Track()
    track.notes.append(symusic.Note(end, 1, 0, 0))
    frame.tracks.append(track)
    return [t for t in get_bars_ticks(frame) if t <= end]


def bar_end_tick(score: symusic.Score, bars: int) -> int:
    """Tick where bar number `bars` ends (the start of bar `bars` + 1), extrapolated past the last note."""
    score = _as_ticks(score)
    tpq = score.ticks_per_quarter
    limit = max(score.end(), 1) + tpq * 4 * 16 * max(bars, 1)  # room for `bars` bars of up to 16/4
    starts = bar_starts(score, end=limit)
    return starts[bars] if bars < len(starts) else starts[-1]


def _track_labels(tracks: Sequence[Any]) -> list[str]:
    """GM name per track; tracks sharing a program are told apart by their name (or a number)."""
    names = [program_name(int(t.program), bool(t.is_drum)) for t in tracks]
    labels = []
    for i, (track, name) in enumerate(zip(tracks, names)):
        if names.count(name) == 1:
            labels.append(name)
        elif track.name and track.name.strip() and track.name.strip() != name:
            labels.append(f"{name} ({track.name.strip()})")
        else:
            labels.append(f"{name} {names[: i + 1].count(name)}")
    return labels


def piano_roll(score: symusic.Score, prompt_end_tick: int | None = None, path: str | os.PathLike | None = None,
               title: str | None = None, width: int = 1000, height: int = 400, dpi: int = 100) -> Any:
    """Draw `score` as a piano roll: one colour per instrument (legend with General MIDI names), bar lines
    from its time signatures, and the prompt (ticks before `prompt_end_tick`) shaded and labelled.

    Returns a PIL image, or the PNG's path (as str) when `path` is given.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PatchCollection
    from matplotlib.colors import to_rgba
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    score = _as_ticks(score)
    tpq = score.ticks_per_quarter
    end = max(score.end(), prompt_end_tick or 0, tpq * 4)
    bars = bar_starts(score, end=end)
    if bars[-1] < end:  # close the last bar
        bars = bar_starts(score, end=end + tpq * 16)
        bars = [b for b in bars if b < end] + [next(b for b in bars if b >= end)]
    x_end = bars[-1] if bars[-1] >= end else end
    to_bar = 1.0 / (tpq * 4)  # x axis in whole notes, labelled with bar numbers at bar lines

    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    tracks = [t for t in score.tracks if len(t.notes)]
    labels = _track_labels(tracks)
    # legend above the plot: as many columns as fit in a line of ~150 characters, at most two rows
    # (the instruments with most notes; the rest are counted in a "+N more" entry)
    ncol = max(1, min(len(labels), 6, (width * 150 // 1000) // (max(map(len, labels), default=1) + 5)))
    max_entries = 2 * ncol
    rows = min(2, -(-len(labels) // ncol)) if labels else 0
    row_h = 15 / height  # one legend row, in figure fraction
    top = 1.0 - (36 / height if title else 8 / height) - max(rows, 1) * row_h - 8 / height
    ax = fig.add_axes((0.065, 0.13, 0.925, top - 0.13))
    ax.set_facecolor("#FBFBFD")

    pitches = np.concatenate([t.notes.numpy()["pitch"] for t in tracks]) if tracks else np.array([48, 72])
    lo, hi = int(pitches.min()), int(pitches.max())
    if hi - lo < 24:
        mid = (lo + hi) // 2
        lo, hi = mid - 12, mid + 12
    lo, hi = lo - 2, hi + (5 if prompt_end_tick else 2)  # headroom for the prompt/generated labels

    # black-key rows, as on a piano
    for p in range(lo, hi + 1):
        if p % 12 in (1, 3, 6, 8, 10):
            ax.axhspan(p - 0.5, p + 0.5, color="#EEF0F4", lw=0, zorder=0)
    # prompt region
    if prompt_end_tick:
        x_prompt = prompt_end_tick * to_bar
        ax.axvspan(0, x_prompt, color="#D9DEE8", alpha=0.7, lw=0, zorder=0.5)
        ax.axvline(x_prompt, color="#4A5568", lw=1.6, ls=(0, (4, 2)), zorder=3)
        label_box = dict(boxstyle="round,pad=0.2", facecolor="white", edgecolor="none", alpha=0.85)
        ax.text(x_prompt, 0.985, "prompt \u2190 ", transform=ax.get_xaxis_transform(), ha="right", va="top",
                fontsize=9, color="#4A5568", fontweight="bold", zorder=4, bbox=label_box)
        if x_prompt < x_end * to_bar * 0.9:
            ax.text(x_prompt, 0.985, " \u2192 generated", transform=ax.get_xaxis_transform(), ha="left", va="top",
                    fontsize=9, color="#2D3748", fontweight="bold", zorder=4, bbox=label_box)
    # bar lines (and beats when there is room)
    for b in bars:
        ax.axvline(b * to_bar, color="#A0AEC0", lw=0.8, zorder=1)
    if len(bars) <= 24:
        for beat in range(0, int(x_end) + 1, tpq):
            if beat not in bars:
                ax.axvline(beat * to_bar, color="#E2E8F0", lw=0.5, zorder=0.8)

    handles = []
    color_index = 0
    for track, label in zip(tracks, labels):
        notes = track.notes.numpy()
        x = notes["time"] * to_bar
        velocity = np.clip(notes["velocity"], 1, 127) / 127.0
        if track.is_drum:
            color = DRUM_COLOR
            ax.scatter(x, notes["pitch"], marker="D", s=14, color=color, alpha=0.85, lw=0, zorder=2.5)
            handles.append(Line2D([], [], marker="D", ls="", color=color, label=label))
            continue
        color = PALETTE[color_index % len(PALETTE)]
        color_index += 1
        w = np.maximum(notes["duration"] * to_bar, 1 / 64)
        rects = [Rectangle((xi, p - 0.42), wi, 0.84) for xi, p, wi in zip(x, notes["pitch"], w)]
        rgba = np.tile(np.array(to_rgba(color)), (len(rects), 1))
        rgba[:, 3] = 0.55 + 0.45 * velocity  # louder notes are more opaque
        ax.add_collection(PatchCollection(rects, facecolors=rgba, edgecolor="white", linewidth=0.4, zorder=2))
        handles.append(Patch(facecolor=color, label=label))

    ax.set_xlim(0, x_end * to_bar)
    ax.set_ylim(lo - 0.5, hi + 0.5)
    step = 1 if len(bars) <= 20 else (2 if len(bars) <= 40 else (4 if len(bars) <= 80 else 8))
    shown = bars[:-1] if bars[-1] >= end and len(bars) > 1 else bars
    ticks = [(b * to_bar, str(i + 1)) for i, b in enumerate(shown) if i % step == 0]
    ax.set_xticks([t for t, _ in ticks], [s for _, s in ticks], fontsize=8)
    ax.set_xlabel("bar", fontsize=9, color="#4A5568")
    c_rows = [p for p in range(lo, hi + 1) if p % 12 == 0]
    ax.set_yticks(c_rows, [pitch_name(p) for p in c_rows], fontsize=8)
    ax.tick_params(colors="#4A5568", length=2)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color("#A0AEC0")

    if title:
        fig.text(0.065, 1.0 - 20 / height, title, ha="left", va="center", fontsize=11.5, fontweight="bold",
                 color="#1A202C")
    if len(handles) > max_entries:
        by_size = sorted(range(len(handles)), key=lambda i: -len(tracks[i].notes))
        keep = sorted(by_size[: max_entries - 1])
        more = Patch(facecolor="none", edgecolor="none", label=f"+{len(handles) - len(keep)} more instruments")
        handles = [handles[i] for i in keep] + [more]
    if handles:
        fig.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.06, top + 6 / height),
                   ncol=ncol, frameon=False, fontsize=8.5, handlelength=1.2, columnspacing=1.4,
                   borderaxespad=0)
    else:
        ax.text(0.5, 0.5, "no notes", transform=ax.transAxes, ha="center", va="center", fontsize=14,
                color="#A0AEC0")

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
        return str(path)
    from PIL import Image

    return Image.open(io.BytesIO(data))


# ----- audio -------------------------------------------------------------------------------------

def find_soundfont(soundfont: str | os.PathLike | None = None) -> str | None:
    """The soundfont to use: `soundfont`, else $MUSIC_HF_SOUNDFONT, else pretty-midi's General MIDI TimGM6mb.sf2."""
    spec = importlib.util.find_spec("pretty_midi")  # found, not imported
    bundled = Path(spec.origin).parent / "TimGM6mb.sf2" if spec and spec.origin else None
    for candidate in (soundfont, os.environ.get(SOUNDFONT_ENV), bundled):
        if candidate and Path(candidate).is_file():
            return str(Path(candidate).resolve())
    return None


def audio_available(soundfont: str | os.PathLike | None = None, backend: str = "midirenderer") -> tuple[bool, str]:
    """(True, soundfont path) when audio can be rendered, else (False, what is missing and how to get it)."""
    if backend not in AUDIO_BACKENDS:
        raise ValueError(f"unknown audio backend {backend!r}; use one of {', '.join(AUDIO_BACKENDS)}")
    if backend == "midirenderer" and importlib.util.find_spec("midirenderer") is None:
        return False, "midirenderer is not installed (pip install midirenderer, or music-hf[space])"
    if backend == "fluidsynth" and shutil.which("fluidsynth") is None:
        return False, "the `fluidsynth` program is not installed (Debian/Ubuntu: apt-get install fluidsynth)"
    explicit = soundfont or os.environ.get(SOUNDFONT_ENV)
    if explicit and not Path(explicit).is_file():
        return False, f"soundfont {explicit} not found"
    found = find_soundfont(soundfont)
    if found is None:
        return False, (f"no soundfont: pip install pretty-midi (its wheel ships a General MIDI soundfont) or set "
                       f"{SOUNDFONT_ENV} to an .sf2 file")
    return True, found


def _read_wav(file: str | io.BytesIO) -> tuple[np.ndarray, int]:
    """A 16-bit WAV as float32 samples, shape (channels, samples), and its sample rate."""
    with wave.open(file, "rb") as w:
        if w.getsampwidth() != 2:
            raise wave.Error(f"expected 16-bit samples, got {8 * w.getsampwidth()}-bit")
        channels, rate, frames = w.getnchannels(), w.getframerate(), w.readframes(w.getnframes())
    return (np.frombuffer(frames, dtype="<i2").reshape(-1, channels).T / 32768.0).astype(np.float32), rate


def _fluidsynth(score: symusic.Score, soundfont: str, sample_rate: int, timeout: float) -> tuple[np.ndarray, int]:
    with tempfile.TemporaryDirectory(prefix="music_hf_audio_") as tmp:
        midi, wav = os.path.join(tmp, "in.mid"), os.path.join(tmp, "out.wav")
        score.dump_midi(midi)
        cmd = ["fluidsynth", "-ni", "-q", "-r", str(sample_rate), "-T", "wav", "-F", wav, soundfont, midi]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"fluidsynth took longer than {timeout:.0f} s") from None
        if proc.returncode != 0 or not os.path.isfile(wav):
            raise RuntimeError(f"fluidsynth failed (exit {proc.returncode}): "
                               f"{(proc.stderr or proc.stdout).strip()[-500:]}")
        return _read_wav(wav)


def synthesize(score: symusic.Score, soundfont: str | os.PathLike | None = None, sample_rate: int = 22050,
               backend: str = "midirenderer", timeout: float = 120.0) -> np.ndarray:
    """`score` as float32 stereo audio at `sample_rate`, shape (2, samples), with a General MIDI soundfont.

    Raises RuntimeError (saying why) when no audio can be made; `timeout` applies to the fluidsynth backend.
    """
    ok, found = audio_available(soundfont, backend)
    if not ok:
        raise RuntimeError(found)
    if score.end() == 0:  # nothing at all, not even a rest (midirenderer cannot read such a file)
        return np.zeros((2, 0), dtype=np.float32)
    if backend == "fluidsynth":
        audio, rate = _fluidsynth(score, found, int(sample_rate), timeout)
    else:
        import midirenderer

        audio, rate = _read_wav(io.BytesIO(midirenderer.render_wave_from(Path(found).read_bytes(),
                                                                         score.dumps_midi())))
    return _resample(audio, rate, int(sample_rate)) if rate != sample_rate else audio  # midirenderer: 48 kHz


def _resample(audio: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    """Band-limited resampling through the FFT, zero-padded to lengths whose FFTs are fast."""
    g = math.gcd(rate, new_rate)
    size = rate // g << max(0, math.ceil(math.log2(max(audio.shape[1], 1) * g / rate)))
    out = np.fft.irfft(np.fft.rfft(audio, size, axis=1), size // (rate // g) * (new_rate // g), axis=1)
    return (out[:, : round(audio.shape[1] * new_rate / rate)] * (new_rate / rate)).astype(np.float32)


def render_audio(score: symusic.Score, path: str | os.PathLike | None = None,
                 soundfont: str | os.PathLike | None = None, sample_rate: int = 22050,
                 timeout: float = 120.0, backend: str = "midirenderer") -> str | None:
    """Synthesize `score` (see `synthesize`) to a 16-bit stereo WAV, scaled to a peak of `PEAK`; returns its path.

    Returns None (and logs why) when no audio can be made: audio is a bonus, never a crash.
    """
    try:
        audio = synthesize(score, soundfont, sample_rate, backend, timeout)
    except (RuntimeError, ValueError, OSError, wave.Error) as e:
        logger.warning("no audio: %s", e)
        return None
    loudest = float(np.abs(audio).max()) if audio.size else 0.0
    if loudest > 1e-3:  # louder than dither
        audio = audio * (PEAK / loudest)
    if path is None:
        fd, path = tempfile.mkstemp(suffix=".wav", prefix="music_hf_")
        os.close(fd)
    symusic.dump_wav(str(path), np.asfortranarray(audio, dtype=np.float32), int(sample_rate), use_int16=True)
    return str(path)


def wav_peak(path: str | os.PathLike) -> float:
    """Loudest sample of a 16-bit WAV as a fraction of full scale (0.0 = silence); for checks and tests."""
    with wave.open(str(path), "rb") as w:
        frames = w.readframes(w.getnframes())
        width = w.getsampwidth()
    if width != 2 or not frames:
        return 0.0
    return float(np.abs(np.frombuffer(frames, dtype="<i2").astype(np.float32)).max() / 32768.0)


def describe_instruments(programs: Sequence[int]) -> str:
    """"Violin, Cello and Drums" for a list of program numbers (128 = drums)."""
    names = [program_name(int(p)) for p in programs]
    if len(names) <= 1:
        return names[0] if names else "any instrument"
    return ", ".join(names[:-1]) + " and " + names[-1]


__all__ = ["GM_PROGRAM_NAMES", "DRUMS", "AUDIO_BACKENDS", "piano_roll", "synthesize", "render_audio",
           "audio_available", "find_soundfont", "program_name", "pitch_name", "bar_starts", "bar_end_tick",
           "wav_peak", "describe_instruments"]
