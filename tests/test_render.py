"""music_hf.render on real corpus pieces: General MIDI names, bar lines, the piano roll, and audio that is real
(the piece's length, sound above a floor, the notes' pitches) from PyPI packages alone, or from FluidSynth."""

from __future__ import annotations

import shutil
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import symusic
from miditok.constants import MIDI_INSTRUMENTS

from music_hf.render import (AUDIO_BACKENDS, GM_PROGRAM_NAMES, audio_available, bar_end_tick, bar_starts,
                             piano_roll, program_name, render_audio, synthesize, wav_peak)

pytest.importorskip("matplotlib")
RMS_FLOOR = 0.02  # of full scale, in the normalized WAV (real pieces sit near 0.15)


def read_wav(path: str) -> tuple[np.ndarray, int]:
    with wave.open(path, "rb") as w:
        rate, channels = w.getframerate(), w.getnchannels()
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, channels)
    return samples.T / 32768.0, rate


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio)))) if audio.size else 0.0


def loudest_pitch_class_is_sounding(score: symusic.Score, audio: np.ndarray, rate: int) -> float:
    """Fraction of quarter-second windows whose loudest frequency is the pitch class of a note sounding then."""
    seconds = score.to("second")
    notes = [(n.time, n.end, n.pitch % 12) for track in seconds.tracks for n in track.notes]
    mono, window, hits, total = audio.mean(axis=0), rate // 4, 0, 0
    freqs = np.fft.rfftfreq(window, 1 / rate)
    for start in range(0, mono.size - window, window):
        spectrum = np.abs(np.fft.rfft(mono[start:start + window] * np.hanning(window)))
        spectrum[freqs < 60] = 0
        pitch_class = round(69 + 12 * np.log2(freqs[spectrum.argmax()] / 440)) % 12
        middle = (start + window / 2) / rate
        sounding = {pc for begin, end, pc in notes if begin <= middle < end}
        if sounding:
            total, hits = total + 1, hits + (pitch_class in sounding)
    return hits / total


@pytest.fixture(scope="module")
def chorale(real_midi_paths: list[Path]) -> symusic.Score:
    return symusic.Score(str(real_midi_paths[0]))  # bach/bwv66.6


# ----- names, bars, piano roll ---------------------------------------------------------------------------

def test_gm_names_are_miditoks_and_drums():
    assert len(GM_PROGRAM_NAMES) == 129
    assert GM_PROGRAM_NAMES[:128] == [i["name"].split(",")[0] for i in MIDI_INSTRUMENTS]
    assert program_name(0) == "Acoustic Grand Piano" and program_name(40) == "Violin"
    assert program_name(127) == "Gunshot"  # the first of the sound effects miditok lists together
    assert program_name(128) == program_name(5, is_drum=True) == "Drums"


def test_bar_starts_follow_time_signature_changes():
    score = symusic.Score(480)
    score.time_signatures.append(symusic.TimeSignature(0, 3, 4))
    score.time_signatures.append(symusic.TimeSignature(3 * 480 * 2, 6, 8))
    track = symusic.Track("piano", 0, False)
    track.notes.append(symusic.Note(0, 480 * 12, 60, 80))
    score.tracks.append(track)
    assert bar_starts(score) == [0, 1440, 2880, 4320, 5760]
    assert bar_end_tick(score, 2) == 2880 and bar_end_tick(score, 6) == 8640  # past the last note
    late = symusic.Score(480)  # 4/4 until the first time signature, which still counts
    late.time_signatures.append(symusic.TimeSignature(960, 3, 4))
    late.tracks.append(track)
    assert bar_starts(late) == [0, 960, 2400, 3840, 5280]


def test_piano_roll_is_a_readable_image_with_the_prompt_marked(chorale, tmp_path):
    image = piano_roll(chorale, prompt_end_tick=bar_end_tick(chorale, 2), title="bwv66.6")
    assert image.size == (1000, 400)
    rgb = image.convert("RGB")
    # the prompt part is shaded darker than the generated part's background, at mid height
    prompt_px, later_px = rgb.getpixel((100, 300)), rgb.getpixel((900, 300))
    assert sum(prompt_px) < sum(later_px)
    path = piano_roll(symusic.Score(480), path=tmp_path / "empty.png")  # no notes: still an image
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----- audio ----------------------------------------------------------------------------------------------

def test_default_audio_needs_nothing_from_apt(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no fluidsynth program
    monkeypatch.delenv("MUSIC_HF_SOUNDFONT", raising=False)
    ok, soundfont = audio_available()
    assert ok, soundfont
    assert Path(soundfont).name == "TimGM6mb.sf2" and Path(soundfont).parent.name == "pretty_midi"


def test_real_pieces_render_to_their_length_with_sound(real_midi_paths, tmp_path, monkeypatch):
    monkeypatch.delenv("MUSIC_HF_SOUNDFONT", raising=False)
    for midi in real_midi_paths:
        score = symusic.Score(str(midi))
        path = render_audio(score, tmp_path / f"{midi.stem}.wav")
        audio, rate = read_wav(path)
        assert rate == 22050 and audio.shape[0] == 2
        assert abs(audio.shape[1] / rate - score.to("second").end()) < 0.05, midi.name
        assert rms(audio) > RMS_FLOOR, midi.name
        assert wav_peak(path) == pytest.approx(0.89, abs=0.01)  # normalized


def test_rendered_chorale_plays_the_notes_of_the_score(chorale, monkeypatch):
    monkeypatch.delenv("MUSIC_HF_SOUNDFONT", raising=False)
    audio = synthesize(chorale, sample_rate=22050)
    assert loudest_pitch_class_is_sounding(chorale, audio, 22050) > 0.8


def test_a_piece_without_notes_gives_silence_of_its_length(chorale, tmp_path, monkeypatch):
    monkeypatch.delenv("MUSIC_HF_SOUNDFONT", raising=False)
    rests = chorale.copy()
    for track in rests.tracks:
        track.notes.clear()
    rests.markers.append(symusic.TextMeta(chorale.end(), "end"))  # keeps the piece's length, as rests
    assert rests.note_num() == 0
    audio = synthesize(rests, sample_rate=22050)
    assert abs(audio.shape[1] / 22050 - chorale.to("second").end()) < 0.05
    assert not np.any(audio)
    assert wav_peak(render_audio(rests, tmp_path / "rests.wav")) == 0.0
    assert wav_peak(render_audio(symusic.Score(480), tmp_path / "nothing.wav")) == 0.0


def test_without_the_synthesizer_or_soundfont_audio_is_none_and_says_why(chorale, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "midirenderer", None)  # as if not installed
        ok, reason = audio_available()
        assert not ok and "pip install midirenderer" in reason
        assert render_audio(chorale) is None
    monkeypatch.setenv("MUSIC_HF_SOUNDFONT", "/nonexistent/font.sf2")
    ok, reason = audio_available()
    assert not ok and "font.sf2" in reason
    assert render_audio(chorale) is None
    with pytest.raises(ValueError, match="unknown audio backend"):
        audio_available(backend="timidity")
    assert AUDIO_BACKENDS == ("midirenderer", "fluidsynth")


def test_fluidsynth_backend_says_when_the_program_is_missing(chorale, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    ok, reason = audio_available(backend="fluidsynth")
    assert not ok and "apt-get install fluidsynth" in reason
    assert render_audio(chorale, backend="fluidsynth") is None


@pytest.mark.skipif(shutil.which("fluidsynth") is None, reason="no fluidsynth program (optional backend)")
def test_fluidsynth_backend_renders_the_same_piece(chorale, tmp_path, monkeypatch):
    monkeypatch.delenv("MUSIC_HF_SOUNDFONT", raising=False)
    audio, rate = read_wav(render_audio(chorale, tmp_path / "fluidsynth.wav", backend="fluidsynth"))
    assert rate == 22050 and audio.shape[1] / rate >= chorale.to("second").end() - 0.05  # plus the release tail
    assert rms(audio) > RMS_FLOOR
    assert loudest_pitch_class_is_sounding(chorale, audio, rate) > 0.8
