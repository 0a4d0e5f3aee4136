"""Seeing and hearing a `symusic.Score`: a piano-roll image (matplotlib) and audio (FluidSynth).

Both work headless. Audio needs the `fluidsynth` program and a General MIDI soundfont (Debian:
`apt-get install fluidsynth fluid-soundfont-gm`); without them `render_audio` returns None and
`audio_available()` says what is missing, so callers can carry on without sound.
"""

from __future__ import annotations

import io
import logging
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

logger = logging.getLogger(__name__)

DRUMS = 128  # the program number the package uses for drums

GM_PROGRAM_NAMES: list[str] = [
    # Piano
    "Acoustic Grand Piano", "Bright Acoustic Piano", "Electric Grand Piano", "Honky-tonk Piano",
    "Electric Piano 1", "Electric Piano 2", "Harpsichord", "Clavinet",
    # Chromatic percussion
    "Celesta", "Glockenspiel", "Music Box", "Vibraphone", "Marimba", "Xylophone", "Tubular Bells", "Dulcimer",
    # Organ
    "Drawbar Organ", "Percussive Organ", "Rock Organ", "Church Organ", "Reed Organ", "Accordion", "Harmonica",
    "Tango Accordion",
    # Guitar
    "Acoustic Guitar (nylon)", "Acoustic Guitar (steel)", "Electric Guitar (jazz)", "Electric Guitar (clean)",
    "Electric Guitar (muted)", "Overdriven Guitar", "Distortion Guitar", "Guitar Harmonics",
    # Bass
    "Acoustic Bass", "Electric Bass (finger)", "Electric Bass (pick)", "Fretless Bass", "Slap Bass 1",
    "Slap Bass 2", "Synth Bass 1", "Synth Bass 2",
    # Strings
    "Violin", "Viola", "Cello", "Contrabass", "Tremolo Strings", "Pizzicato Strings", "Orchestral Harp",
    "Timpani",
    # Ensemble
    "String Ensemble 1", "String Ensemble 2", "Synth Strings 1", "Synth Strings 2", "Choir Aahs", "Voice Oohs",
    "Synth Voice", "Orchestra Hit",
    # Brass
    "Trumpet", "Trombone", "Tuba", "Muted Trumpet", "French Horn", "Brass Section", "Synth Brass 1",
    "Synth Brass 2",
    # Reed
    "Soprano Sax", "Alto Sax", "Tenor Sax", "Baritone Sax", "Oboe", "English Horn", "Bassoon", "Clarinet",
    # Pipe
    "Piccolo", "Flute", "Recorder", "Pan Flute", "Blown Bottle", "Shakuhachi", "Whistle", "Ocarina",
    # Synth lead
    "Lead 1 (square)", "Lead 2 (sawtooth)", "Lead 3 (calliope)", "Lead 4 (chiff)", "Lead 5 (charang)",
    "Lead 6 (voice)", "Lead 7 (fifths)", "Lead 8 (bass + lead)",
    # Synth pad
    "Pad 1 (new age)", "Pad 2 (warm)", "Pad 3 (polysynth)", "Pad 4 (choir)", "Pad 5 (bowed)", "Pad 6 (metallic)",
    "Pad 7 (halo)", "Pad 8 (sweep)",
    # Synth effects
    "FX 1 (rain)", "FX 2 (soundtrack)", "FX 3 (crystal)", "FX 4 (atmosphere)", "FX 5 (brightness)",
    "FX 6 (goblins)", "FX 7 (echoes)", "FX 8 (sci-fi)",
    # Ethnic
    "Sitar", "Banjo", "Shamisen", "Koto", "Kalimba", "Bagpipe", "Fiddle", "Shanai",
    # Percussive
    "Tinkle Bell", "Agogo", "Steel Drums", "Woodblock", "Taiko Drum", "Melodic Tom", "Synth Drum",
    "Reverse Cymbal",
    # Sound effects
    "Guitar Fret Noise", "Breath Noise", "Seashore", "Bird Tweet", "Telephone Ring", "Helicopter", "Applause",
    "Gunshot",
    # index 128: the package's drum program
    "Drums",
]
assert len(GM_PROGRAM_NAMES) == 129

SOUNDFONT_ENV = "MUSIC_HF_SOUNDFONT"
SOUNDFONT_PATHS = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",  # Debian/Ubuntu fluid-soundfont-gm
    "/usr/share/sounds/sf2/TimGM6mb.sf2",  # Debian/Ubuntu timgm6mb-soundfont
    "/usr/share/sounds/sf2/default-GM.sf2",  # Debian alternatives link
    "/usr/share/soundfonts/FluidR3_GM.sf2",  # Fedora, Arch
    "/usr/share/soundfonts/default.sf2",
    "/opt/homebrew/share/soundfonts/default.sf2",  # macOS Homebrew
)

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
    tpq = score.ticks_per_quarter
    changes = sorted((int(ts.time), int(ts.numerator), int(ts.denominator)) for ts in score.time_signatures)
    if not changes or changes[0][0] > 0:
        changes.insert(0, (0, 4, 4))
    starts: list[int] = []
    for i, (time, num, den) in enumerate(changes):
        stop = changes[i + 1][0] if i + 1 < len(changes) else max(end, time) + 1
        bar_len = max(1, round(tpq * 4 * num / max(den, 1)))
        t = time
        while t < stop and t <= end:
            if not starts or t > starts[-1]:
                starts.append(t)
            t += bar_len
    return starts or [0]


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
    """The soundfont to use: `soundfont`, else $MUSIC_HF_SOUNDFONT, else the first standard GM path present."""
    for candidate in (soundfont, os.environ.get(SOUNDFONT_ENV), *SOUNDFONT_PATHS):
        if candidate and Path(candidate).is_file():
            return str(Path(candidate).resolve())
    return None


def audio_available(soundfont: str | os.PathLike | None = None) -> tuple[bool, str]:
    """(True, soundfont path) when audio can be rendered, else (False, what is missing and how to get it)."""
    if shutil.which("fluidsynth") is None:
        return False, ("the `fluidsynth` program is not installed "
                       "(Debian/Ubuntu: apt-get install fluidsynth fluid-soundfont-gm)")
    explicit = soundfont or os.environ.get(SOUNDFONT_ENV)
    if explicit and not Path(explicit).is_file():
        return False, f"soundfont {explicit} not found"
    found = find_soundfont(soundfont)
    if found is None:
        return False, ("no General MIDI soundfont found (apt-get install fluid-soundfont-gm, or set "
                       f"{SOUNDFONT_ENV} to an .sf2 file); looked in {', '.join(SOUNDFONT_PATHS)}")
    return True, found


def _normalize_wav(path: str, peak: float = 0.89) -> bool:
    """Scale a 16-bit WAV so its loudest sample sits at `peak` of full scale; False if it is silent."""
    with wave.open(path, "rb") as w:
        params = w.getparams()
        frames = w.readframes(params.nframes)
    if params.sampwidth != 2:
        return True
    samples = np.frombuffer(frames, dtype="<i2").astype(np.float32)
    loudest = float(np.abs(samples).max()) if samples.size else 0.0
    if loudest < 1.0:
        return False
    scaled = np.clip(samples * (peak * 32767.0 / loudest), -32768, 32767).astype("<i2")
    with wave.open(path, "wb") as w:
        w.setparams(params)
        w.writeframes(scaled.tobytes())
    return True


def render_audio(score: symusic.Score, path: str | os.PathLike | None = None,
                 soundfont: str | os.PathLike | None = None, sample_rate: int = 22050,
                 timeout: float = 120.0) -> str | None:
    """Synthesize `score` to a WAV file with FluidSynth and a General MIDI soundfont; returns its path.

    Returns None (and logs why) when FluidSynth or a soundfont is missing, the score has no notes, or
    rendering fails: audio is a bonus, never a crash.
    """
    ok, found = audio_available(soundfont)
    if not ok:
        logger.warning("no audio: %s", found)
        return None
    if score.note_num() == 0:
        logger.warning("no audio: the score has no notes")
        return None
    if path is None:
        fd, path = tempfile.mkstemp(suffix=".wav", prefix="music_hf_")
        os.close(fd)
    path = str(path)
    with tempfile.TemporaryDirectory(prefix="music_hf_audio_") as tmp:
        midi = os.path.join(tmp, "in.mid")
        score.dump_midi(midi)
        cmd = ["fluidsynth", "-ni", "-q", "-g", "0.5", "-r", str(int(sample_rate)), "-T", "wav", "-F", path,
               found, midi]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            logger.warning("no audio: fluidsynth took longer than %.0f s", timeout)
            return None
        except OSError as e:
            logger.warning("no audio: could not run fluidsynth (%s)", e)
            return None
    if proc.returncode != 0 or not os.path.isfile(path) or os.path.getsize(path) <= 44:
        logger.warning("no audio: fluidsynth failed (exit %s): %s", proc.returncode,
                       (proc.stderr or proc.stdout).strip()[-500:])
        return None
    try:
        _normalize_wav(path)
    except (wave.Error, EOFError) as e:  # keep fluidsynth's file as it is
        logger.warning("could not normalize %s: %s", path, e)
    return path


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


__all__ = ["GM_PROGRAM_NAMES", "DRUMS", "piano_roll", "render_audio", "audio_available", "find_soundfont",
           "program_name", "pitch_name", "bar_starts", "bar_end_tick", "wav_peak", "describe_instruments"]
