"""The Gradio Space: handlers as plain functions on real corpus pieces with a tiny random model (taught to play
piano and choir only, like a model trained on the corpus), the app served on localhost and driven by
gradio_client, and (marked `browser`) the page in headless Chromium. The renderers are tested in
tests/test_render.py, the composition functions (infilling, accompaniment, controls) in tests/test_composition.py:
here, that the page reaches them and says what they refuse."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio")
pytest.importorskip("matplotlib")
import symusic  # noqa: E402

from music_hf.generation import cut_bars  # noqa: E402
from music_hf.render import GM_PROGRAM_NAMES, audio_available, bar_end_tick, wav_peak  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "space" / "app.py"
AUDIO_OK = audio_available()[0]
LEARNED = {0: "Acoustic Grand Piano", 52: "Choir Aahs"}  # the corpus's instruments: ~85 % piano, ~15 % choir
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage",
                "--disable-extensions", "--no-first-run"]


def load_app():
    """space/app.py as a module (it is a script folder, not a package)."""
    spec = importlib.util.spec_from_file_location("music_hf_space_app", APP)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def app():
    return load_app()


def save_tiny_model(path: Path, tokenizer=None, long_pieces: bool = False, **config_overrides) -> str:
    """A random model (one layer, 32 wide unless overridden) that plays only the LEARNED programs, as one trained on
    the corpus does: one hidden unit after the final norm is a constant, and every Program token's (tied) embedding
    on that unit is high for those programs and low for the others, so their logits sit about 6 above or below the
    other tokens'. `long_pieces`: EOS's logit sits as low, so a piece goes on for the length asked (a random model
    otherwise ends most long pieces early, at one of the hundreds of note ends where EOS is allowed)."""
    import torch

    from music_hf import MusicConfig, MusicForCausalLM, MusicTokenizer

    tokenizer = tokenizer or MusicTokenizer()
    sizes = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    config = MusicConfig.from_tokenizer(tokenizer, genres=["chorale", "folk song"], **sizes | config_overrides)
    torch.manual_seed(0)
    model = MusicForCausalLM(config)
    program_ids = tokenizer.kind_ids("Program")
    with torch.no_grad():
        model.model.norm.norm.weight[0], model.model.norm.norm.bias[0] = 0.0, 2.5
        for i, program in zip(program_ids, tokenizer.token_table.value[program_ids]):
            model.get_input_embeddings().weight[i, 0] = 2.5 if int(program) in LEARNED else -2.5
        if long_pieces:
            model.get_input_embeddings().weight[tokenizer.eos_token_id, 0] = -2.5
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> str:
    from music_hf.corpus import prepare_corpus

    out = tmp_path_factory.mktemp("corpus")
    summary = prepare_corpus(str(out), collections=["bach", "essenFolksong"], max_pieces_per_collection=2,
                             num_workers=1, progress=False)
    assert len(summary.entries) == 4, summary.report()
    return str(out)


@pytest.fixture(scope="module")
def chorale_midi(tmp_path_factory) -> str:
    import music21

    path = tmp_path_factory.mktemp("midi") / "bwv66.6.mid"
    music21.corpus.parse("bach/bwv66.6").write("midi", fp=str(path))
    return str(path)


@pytest.fixture(scope="module")
def studio(app, tiny_model, corpus_dir, tmp_path_factory):
    return app.Studio(tiny_model, corpus_dir=corpus_dir, output_dir=str(tmp_path_factory.mktemp("outputs")),
                      cache_dir=str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def demo(app, studio):
    return app.build_demo(studio)


def component(demo, label: str):
    """The component of the page with this label."""
    return next(b for b in demo.blocks.values() if getattr(b, "label", None) == label)


def handler(demo, name: str):
    """The function an event of the page runs, by its name (on_upload...)."""
    return next(f.fn for f in demo.fns.values() if f.name == name)


@pytest.fixture
def quiet_studio(studio, monkeypatch):
    """The studio without audio rendering, for tests about something else (rendering audio takes seconds)."""
    monkeypatch.setattr(studio, "audio_ok", False)
    return studio


def quick(studio, **overrides):
    """Settings that keep the tiny model fast."""
    values = dict(genre="chorale", max_new_tokens=40, seed=0, variations=1)
    values.update(overrides)
    return studio.settings(**values)


def programs_of(score: symusic.Score) -> set[int]:
    return {128 if t.is_drum else int(t.program) for t in score.tracks if len(t.notes)}


def notes_of(score: symusic.Score) -> list[tuple[int, int, int]]:
    """(onset tick, program, pitch) of every note, sorted."""
    return sorted((int(n.time), 128 if t.is_drum else int(t.program), int(n.pitch)) for t in score.tracks
                  for n in t.notes)


def full_notes(score: symusic.Score) -> list[tuple[int, int, int, int, int]]:
    """(onset tick, program, pitch, duration, velocity) of every note, sorted."""
    return sorted((int(n.time), 128 if t.is_drum else int(t.program), int(n.pitch), int(n.duration),
                   int(n.velocity)) for t in score.tracks for n in t.notes)


def outside(notes: list[tuple], start_tick: int, end_tick: int) -> list[tuple]:
    """The notes that start before `start_tick` or at `end_tick` and later."""
    return [n for n in notes if not start_tick <= n[0] < end_tick]


# ----- handlers as plain functions -----------------------------------------------------------------------

def test_generate_from_nothing_honours_instruments_time_signature_and_tempo(studio):
    settings = quick(studio, instruments=list(LEARNED.values()), time_signature="3/4", tempo=90, variations=2)
    history = studio.generate([], "new", settings=settings)
    assert len(history) == 1 and len(history[0]["pieces"]) == 2
    assert "3/4" in history[0]["label"] and "Acoustic Grand Piano and Choir Aahs" in history[0]["label"]
    notes = 0
    for piece in history[0]["pieces"]:
        score = symusic.Score(piece["midi"])
        notes += score.note_num()
        assert programs_of(score) <= set(LEARNED)
        assert (score.time_signatures[0].numerator, score.time_signatures[0].denominator) == (3, 4)
        assert piece["prompt_bars"] == 0
        assert Path(piece["image"]).read_bytes()[:4] == b"\x89PNG"
        assert (piece["audio"] is not None) == AUDIO_OK
        assert "seed 0" in piece["info"]
    assert notes > 0


def test_generate_from_an_upload_keeps_the_chosen_bars(quiet_studio, chorale_midi):
    history = quiet_studio.generate([], "upload", chorale_midi, bars=2, settings=quick(quiet_studio))
    piece = history[-1]["pieces"][0]
    kept = cut_bars(quiet_studio.tokenizer, quiet_studio.tokenizer.encode_score(chorale_midi), 2)
    assert piece["ids"][: len(kept) + 1] == [quiet_studio.tokenizer.bos_token_id] + kept
    assert piece["prompt_bars"] == 2 and "bwv66.6.mid (first 2 bars)" in history[-1]["label"]
    prompt = quiet_studio.tokenizer.decode_midi(kept)
    assert symusic.Score(piece["midi"]).note_num() >= prompt.note_num() > 0


def test_a_corpus_example_is_a_prompt_too(quiet_studio):
    example = quiet_studio.examples[-1]
    history = quiet_studio.generate([], "example", example=example.source, bars=3, settings=quick(quiet_studio))
    assert example.name in history[-1]["label"] and history[-1]["pieces"][0]["prompt_bars"] <= 3


def test_continue_extends_the_chosen_variation_and_undo_goes_back(quiet_studio, chorale_midi):
    history = quiet_studio.generate([], "upload", chorale_midi, bars=1, settings=quick(quiet_studio, variations=2))
    chosen = history[-1]["pieces"][1]["ids"]
    longer = quiet_studio.continue_piece(history, 2, quick(quiet_studio, max_new_tokens=24))
    assert len(longer) == 2 and "variation 2" in longer[-1]["label"]
    piece = longer[-1]["pieces"][0]
    assert piece["ids"][: len(chosen)] == chosen and len(piece["ids"]) >= len(chosen)
    assert piece["prompt_bars"] == sum(quiet_studio.tokenizer.music_attributes()["bar_count"][i] for i in chosen)
    assert quiet_studio.undo(longer) == history
    assert quiet_studio.undo(quiet_studio.undo(longer)) == []
    with pytest.raises(gr.Error, match="Nothing to undo"):
        quiet_studio.undo([])
    with pytest.raises(gr.Error, match="Generate something first"):
        quiet_studio.continue_piece([], 1)
    with pytest.raises(gr.Error, match="no variation 3"):
        quiet_studio.continue_piece(history, 3)


def test_find_similar_ranks_a_corpus_piece_first_for_itself(studio):
    piece = studio.corpus[0]
    ids = [studio.tokenizer.bos_token_id] + studio.tokenizer.encode_score(piece.path)
    rows = studio.similar(ids, k=3)
    assert rows[0][1] == piece.name and rows[0][3] == pytest.approx(1.0, abs=1e-3)
    assert [r[0] for r in rows] == [1, 2, 3]
    assert [r[3] for r in rows] == sorted((r[3] for r in rows), reverse=True)
    assert {r[2] for r in rows} <= {"chorale", "folk song"}


def test_find_similar_on_a_generated_piece_uses_the_cached_index(quiet_studio, app, tiny_model, corpus_dir):
    history = quiet_studio.generate([], "new", settings=quick(quiet_studio))
    rows = quiet_studio.find_similar(history, 1)
    assert len(rows) == len(quiet_studio.corpus) == 4
    assert all(-1.0 <= r[3] <= 1.0 for r in rows)
    cache = quiet_studio._index_cache_path()
    assert cache.is_file()
    again = app.Studio(tiny_model, corpus_dir=corpus_dir, output_dir=str(quiet_studio.output_root),
                       cache_dir=str(quiet_studio.cache_dir))
    assert again.find_similar(history, 1) == rows


def test_generation_works_without_audio(studio, monkeypatch):
    monkeypatch.setattr(studio, "audio_ok", False)
    history = studio.generate([], "new", settings=quick(studio))
    assert history[0]["pieces"][0]["audio"] is None and history[0]["pieces"][0]["image"]


def test_generation_stops_at_the_time_limit_and_on_request(quiet_studio, app, monkeypatch):
    monkeypatch.setattr(app, "GENERATION_TIMEOUT_S", 0.0)
    step = quiet_studio.generate([], "new", settings=quick(quiet_studio, max_new_tokens=200))[-1]
    assert "time limit" in step["stopped"] and len(step["pieces"][0]["ids"]) <= 1 + 4 + 2  # BOS, start, 1-2 new
    monkeypatch.setattr(app, "GENERATION_TIMEOUT_S", 60.0)
    tracker = app.GenerationProgress(200)
    tracker.cancel.set()
    step = quiet_studio.generate([], "new", settings=quick(quiet_studio, max_new_tokens=200), progress=tracker)[-1]
    assert step["stopped"] == "stopped by request" and tracker.done == 1


def test_settings_are_clamped_and_unknown_names_refused(studio):
    s = studio.settings(genre="chorale", max_new_tokens=10**6, variations=99, temperature=0, top_p=5, seed=-1)
    assert s.max_new_tokens == studio.max_new_tokens and s.variations == 4 and s.seed >= 0
    assert 0 < s.temperature and s.top_p == 1.0
    with pytest.raises(gr.Error, match="Unknown genre"):
        studio.settings(genre="polka")
    with pytest.raises(gr.Error, match="Unknown instrument"):
        studio.settings(instruments=["Kazoo"])
    with pytest.raises(gr.Error, match="Time signature 11/16"):
        studio.settings(time_signature="11/16")


def _bad_file(kind: str, chorale_midi: str) -> bytes:
    data = Path(chorale_midi).read_bytes()
    if kind == "truncated":
        return data[: len(data) // 2]
    if kind == "no notes":
        score = symusic.Score(480)
        score.tracks.append(symusic.Track("empty", 0, False))
        return score.dumps_midi()
    return {"empty": b"", "text": b"hello, not music", "huge": b"MThd" + bytes(3 * 2**20), "txt": data}[kind]


@pytest.mark.parametrize("kind, name, message", [
    ("empty", "empty.mid", "empty file"),
    ("text", "hello.mid", "not a MIDI file"),
    ("truncated", "half.mid", "corrupt or truncated MIDI"),
    ("no notes", "silence.mid", "no notes"),
    ("huge", "huge.mid", "the limit is 2 MB"),
    ("txt", "notes.txt", "not a MIDI file"),
])
def test_bad_uploads_raise_a_readable_gradio_error(quiet_studio, chorale_midi, tmp_path, kind, name, message):
    path = tmp_path / name
    path.write_bytes(_bad_file(kind, chorale_midi))
    for action in (lambda: quiet_studio.generate([], "upload", str(path), settings=quick(quiet_studio)),
                   lambda: quiet_studio.preview("upload", str(path), None, 4)):
        with pytest.raises(gr.Error) as err:
            action()
        assert message in err.value.message and name in err.value.message
        assert "Traceback" not in err.value.message
    with pytest.raises(gr.Error, match="Upload a MIDI file first"):
        quiet_studio.generate([], "upload", None, settings=quick(quiet_studio))


def test_a_prompt_without_notes_in_the_kept_bars_is_refused(studio, tmp_path):
    score = symusic.Score(480)
    track = symusic.Track("late", 0, False)
    track.notes.append(symusic.Note(480 * 4 * 3, 480, 60, 80))  # the only note is in bar 4
    score.tracks.append(track)
    path = tmp_path / "late.mid"
    score.dump_midi(str(path))
    with pytest.raises(gr.Error, match="hold no notes"):
        studio.read_prompt("upload", str(path), None, 2)
    assert studio.read_prompt("upload", str(path), None, 4).ids


def test_missing_model_says_what_to_run(app, tmp_path):
    with pytest.raises(app.ModelUnavailable, match="MODEL_ID"):
        app.Studio(str(tmp_path / "no-model-here"))
    if not (REPO / app.DEFAULT_MODEL).exists():
        with pytest.raises(app.ModelUnavailable, match="scripts/train.py"):
            app.load_model(app.DEFAULT_MODEL)


def test_the_page_builds(demo):
    apis = {fn.api_name for fn in demo.fns.values()}
    assert {"generate", "continue", "regenerate_bars", "add_part", "stop", "undo", "find_similar"} <= apis


# ----- what a visitor hit in the browser ---------------------------------------------------------------------

def test_only_the_instruments_the_model_learned_are_offered(app, studio, demo):
    import torch

    from music_hf import MusicForCausalLM

    assert studio.programs == sorted(LEARNED)  # measured from the model's Program-token probabilities
    torch.manual_seed(0)
    untrained = MusicForCausalLM(studio.model.config).eval()  # every program near chance: none counts as learned
    assert app.learned_programs(untrained, studio.tokenizer, studio._program_contexts()) == []
    assert [value for _, value in component(demo, "Instruments").choices] == list(LEARNED.values())
    assert "instruments it learned: Acoustic Grand Piano, Choir Aahs" in studio.summary()
    with pytest.raises(gr.Error, match="never learned to play Violin: it would write silence. It plays "
                                       "Acoustic Grand Piano, Choir Aahs") as err:
        studio.settings(instruments=["Violin"])
    assert err.value.title == "Instrument not learned"


def test_every_offered_instrument_plays_notes_of_its_own(quiet_studio, demo, chorale_midi):
    offered = [value for _, value in component(demo, "Instruments").choices]
    assert offered
    for name in offered:  # from nothing: every note is in the chosen program, and there are notes
        history = quiet_studio.generate([], "new", settings=quick(quiet_studio, instruments=[name], max_new_tokens=64))
        score = symusic.Score(history[-1]["pieces"][0]["midi"])
        assert score.note_num() > 0 and programs_of(score) == {GM_PROGRAM_NAMES.index(name)}, name
    # a piano chorale continued by the choir: the choir's notes are new ones
    prompt = quiet_studio.tokenizer.decode_midi(cut_bars(quiet_studio.tokenizer,
                                                         quiet_studio.tokenizer.encode_score(chorale_midi), 2))
    history = quiet_studio.generate([], "upload", chorale_midi, bars=2,
                                    settings=quick(quiet_studio, instruments=["Choir Aahs"], max_new_tokens=64))
    assert 52 not in programs_of(prompt) and 52 in programs_of(symusic.Score(history[-1]["pieces"][0]["midi"]))


def test_a_rejected_upload_is_said_and_generate_refuses_it(quiet_studio, demo, chorale_midi, tmp_path):
    bad = tmp_path / "broken.mid"
    bad.write_bytes(Path(chorale_midi).read_bytes()[:60])
    source, image, text = handler(demo, "on_upload")("new", str(bad), None, 4)
    assert source == "upload"  # "Start from" follows the upload, so Generate uses it
    assert "Unreadable MIDI" in text and "corrupt or truncated" in text and "Generate will refuse it" in text
    with pytest.raises(gr.Error, match="corrupt or truncated"):
        quiet_studio.generate([], source, str(bad), settings=quick(quiet_studio))


def test_the_prompt_marker_sits_where_generation_began(quiet_studio, app, chorale_midi, monkeypatch):
    drawn = []  # the marker of every piano roll
    real_piano_roll = app.piano_roll

    def spy(score, prompt_end_tick=None, **kwargs):
        drawn.append(prompt_end_tick)
        return real_piano_roll(score, prompt_end_tick=prompt_end_tick, **kwargs)

    monkeypatch.setattr(app, "piano_roll", spy)
    first = quiet_studio.generate([], "upload", chorale_midi, bars=2, settings=quick(quiet_studio, max_new_tokens=48))
    longer = quiet_studio.continue_piece(first, 1, quick(quiet_studio, max_new_tokens=96))
    cases = [(cut_bars(quiet_studio.tokenizer, quiet_studio.tokenizer.encode_score(chorale_midi), 2), first, drawn[0]),
             (first[-1]["pieces"][0]["ids"][1:], longer, drawn[1])]  # the second: a piece that stops mid-bar
    for prompt, history, marker in cases:
        before = notes_of(quiet_studio.tokenizer.decode_midi(prompt))
        after = notes_of(symusic.Score(history[-1]["pieces"][0]["midi"]))
        assert before and len(after) > len(before) and marker is not None
        assert max(t for t, _, _ in before) <= marker  # every prompt note starts in the shaded part
        assert [n for n in after if n[0] < marker] == [n for n in before if n[0] < marker]  # no new note does


def test_input_errors_name_the_field(demo):
    with pytest.raises(gr.Error) as err:
        component(demo, "Variations").preprocess(0)
    assert err.value.message == "Variations — Value 0 is less than minimum value 1."
    with pytest.raises(gr.Error) as err:
        component(demo, "Instruments").preprocess(["Violin"])
    assert err.value.message.startswith("Instruments — ") and "Violin" in err.value.message


def test_a_prompt_cut_to_fit_the_context_is_said(app, corpus_dir, chorale_midi, tmp_path):
    studio = app.Studio(save_tiny_model(tmp_path / "short", max_position_embeddings=160), corpus_dir=corpus_dir,
                        output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
    studio.audio_ok = False
    prompt = studio.read_prompt("upload", chorale_midi, None, 8).ids
    assert len(prompt) > 160
    step = studio.generate([], "upload", chorale_midi, bars=8, settings=quick(studio, max_new_tokens=100))[-1]
    message = app.step_message(step)
    assert f"it saw only the last 57 of the prompt's {len(prompt)}" in message  # 160 - BOS - timing - repeats - 100
    assert "keep fewer bars" in message
    step = studio.generate([], "upload", chorale_midi, bars=1, settings=quick(studio, max_new_tokens=48))[-1]
    assert step["warnings"] == [] and "⚠️" not in app.step_message(step)


def test_genres_without_a_corpus_example_are_named(app, tiny_model, corpus_dir, tmp_path):
    import json

    from music_hf.corpus import MANIFEST_NAME, load_manifest

    chorales = tmp_path / "corpus"
    chorales.mkdir()
    rows = [dict(path=e.path, genre=e.genre, collection=e.collection, source=e.source)
            for e in load_manifest(corpus_dir).entries if e.genre == "chorale"]
    (chorales / MANIFEST_NAME).write_text("".join(json.dumps(r) + "\n" for r in rows))
    studio = app.Studio(tiny_model, corpus_dir=str(chorales), output_dir=str(tmp_path / "out"),
                        cache_dir=str(tmp_path / "cache"))
    assert studio.missing_genres == ["folk song"]
    assert "no piece of the genre folk song" in studio.summary()
    assert "(none of folk song)" in component(app.build_demo(studio), "Corpus example").info


def test_the_key_is_a_control_token_of_the_prompt(quiet_studio, app, demo, monkeypatch):
    calls = []
    real_generate_music = app.generate_music

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_generate_music(*args, **kwargs)

    monkeypatch.setattr(app, "generate_music", spy)
    keys = [value for _, value in component(demo, "Key").choices]
    assert keys[0] == "any" and "D minor" in keys and "Eb major" in keys and len(keys) == 25
    step = quiet_studio.generate([], "new", settings=quick(quiet_studio, key="D minor"))[-1]
    assert calls[-1]["controls"] == {"key": "D minor"} and "D minor" in step["label"]
    assert symusic.Score(step["pieces"][0]["midi"]).note_num() > 0
    quiet_studio.generate([], "new", settings=quick(quiet_studio, key="any"))
    assert calls[-1]["controls"] is None
    with pytest.raises(gr.Error, match="Unknown key 'H major'"):
        quiet_studio.settings(key="H major")


def test_stop_keeps_what_was_made_and_the_roll_draws_while_tokens_stream_in(quiet_studio, app, demo):
    from types import SimpleNamespace

    visitor = SimpleNamespace(session_hash="visitor")  # what Gradio passes as the gr.Request
    slow = quiet_studio.model.register_forward_pre_hook(lambda *_: time.sleep(0.005))  # 1008 tokens: over 5 s
    try:
        run = handler(demo, "on_generate")(
            hist=[], prompt_source="new", prompt_bars=4, genre="chorale", instruments=[], key="any", tempo=120,
            time_signature="4/4", length=1008, temperature=1.0, top_k=0, top_p=1.0, seed=0, variations=1,
            constrained=True, request=visitor)
        for values in run:  # progress lines, then a piano roll of what is written so far
            live = [v for v in values if isinstance(v, str) and v.endswith("live_1.png")]
            if live:
                break
        assert live and Path(live[0]).read_bytes()[:4] == b"\x89PNG"
        assert handler(demo, "on_stop")(visitor).startswith("⏹ Stopping")
        *_, values = run
    finally:
        slow.remove()
    history, status = values[0], values[1]
    piece = history[-1]["pieces"][0]
    assert status.startswith("⏹ Stopped: kept the variation as far as it got")
    assert history[-1]["stopped"] == "stopped by request"
    assert app.LIVE_ROLL_EVERY <= piece["new_tokens"] < 1008, status
    assert symusic.Score(piece["midi"]).note_num() > 0 and f"({piece['new_tokens']} of 1008 new tokens" in status


# ----- composing: regenerate bars, add a part, controls ----------------------------------------------------

def _bar_lines(png: str) -> list[int]:
    """Pixel columns of the bar lines of a piano roll (the renderer's grey, down much of the plot)."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    grey = (np.abs(pixels - np.array([160, 174, 192])).sum(-1) < 40).sum(0)
    columns = np.flatnonzero(grey > 0.3 * grey.max())
    return [int(c) for n, c in enumerate(columns) if n == 0 or c > columns[n - 1] + 1]  # one per line


def test_regenerate_bars_keeps_every_other_bar_and_marks_the_range(quiet_studio, app, chorale_midi):
    import numpy as np
    from PIL import Image

    decode = quiet_studio.tokenizer.decode_midi  # the scores drawn (a MIDI file merges overlapping equal notes)
    history = quiet_studio.generate([], "upload", chorale_midi, bars=3, settings=quick(quiet_studio,
                                                                                        max_new_tokens=16))
    before = decode(history[-1]["pieces"][0]["ids"])
    longer = quiet_studio.regenerate_bars(history, 1, 1, 2, settings=quick(quiet_studio, max_new_tokens=64))
    assert len(longer) == 2 and longer[:1] == history
    step = longer[-1]
    assert step["label"].startswith("Regenerated bars 1-2 of variation 1 of step 1")
    assert app.step_message(step).startswith("✅ Regenerated bars 1-2") and "every other bar is unchanged" in \
        app.step_message(step)
    piece = step["pieces"][0]
    after = decode(piece["ids"])
    assert notes_of(symusic.Score(piece["midi"])) == notes_of(after)  # the file the page offers for download
    start, end = app.bar_end_tick(before, 1), app.bar_end_tick(before, 2)
    assert outside(full_notes(after), start, end) == outside(full_notes(before), start, end)  # note for note
    assert [n for n in full_notes(after) if start <= n[0] < end]  # the range has notes, new ones
    assert [n for n in full_notes(after) if start <= n[0] < end] != [n for n in full_notes(before)
                                                                     if start <= n[0] < end]
    assert "bars 1-2 new" in piece["info"] and piece["ids"][0] == quiet_studio.tokenizer.bos_token_id
    # the roll marks the range: its background changes between the lines of bars 1 and 2 (the roll's "2" and "3")
    plain = app.piano_roll(after, path=str(Path(piece["image"]).with_name("plain.png")),
                           title="Variation 1 · chorale · bars 1-2 regenerated")
    marked, unmarked = (np.asarray(Image.open(f).convert("RGB")).astype(int) for f in (piece["image"], plain))
    changed = np.flatnonzero(np.abs(marked - unmarked).sum(-1).any(0))
    lines = _bar_lines(plain)
    assert abs(changed.min() - lines[1]) <= 3 and abs(changed.max() - lines[2]) <= 3, (changed, lines)


def test_add_a_part_keeps_every_given_note_and_plays_the_new_instrument(quiet_studio, app, chorale_midi):
    history = quiet_studio.generate([], "upload", chorale_midi, bars=1,
                                    settings=quick(quiet_studio, instruments=["Acoustic Grand Piano"],
                                                   max_new_tokens=16))
    before = quiet_studio.tokenizer.decode_midi(history[-1]["pieces"][0]["ids"])
    assert programs_of(before) == {0}
    longer = quiet_studio.add_part(history, 1, "Choir Aahs", quick(quiet_studio, max_new_tokens=32))
    step = longer[-1]
    assert len(longer) == 2 and step["label"].startswith("Added Choir Aahs to variation 1 of step 1")
    assert "every given note is kept" in app.step_message(step)
    after = quiet_studio.tokenizer.decode_midi(step["pieces"][0]["ids"])
    assert notes_of(symusic.Score(step["pieces"][0]["midi"])) == notes_of(after)  # the download
    added = [n for n in full_notes(after) if n[1] == 52]
    assert added and programs_of(after) == {0, 52}
    assert [n for n in full_notes(after) if n[1] != 52] == full_notes(before)  # every given note, exactly
    assert f"+{len(added)} notes of Choir Aahs" in step["pieces"][0]["info"]
    with pytest.raises(gr.Error, match="never learned to play Violin") as err:
        quiet_studio.add_part(history, 1, "Violin", quick(quiet_studio))
    assert err.value.title == "Instrument not learned"


def test_controls_and_guidance_reach_the_library(quiet_studio, app, chorale_midi, monkeypatch):
    calls = {}

    class Called(Exception):
        pass

    def spy(name, real=None):
        def function(*args, **kwargs):
            calls[name] = kwargs
            if real is None:
                raise Called(name)  # what it was asked is all this test needs
            return real(*args, **kwargs)
        return function

    monkeypatch.setattr(app, "generate_music", spy("generate", app.generate_music))
    monkeypatch.setattr(app, "infill_piece", spy("infill"))
    monkeypatch.setattr(app, "accompany_piece", spy("accompany"))
    settings = quick(quiet_studio, key="D minor", density="8", polyphony="3", pitch_low="48", pitch_high="83",
                     guidance=2.0, timing="score", repetition="0.2")
    wanted = {"key": "D minor", "density": 8, "polyphony": 3, "pitch_range": (48, 83), "timing": "score",
              "repetition": 0.2}
    history = quiet_studio.generate([], "upload", chorale_midi, bars=1, settings=settings)
    assert calls["generate"]["controls"] == wanted and calls["generate"]["guidance_scale"] == 2.0
    assert "D minor · 8 notes per bar · 3 at once · pitches C3–B5 · written timing · repeats: some (20-40 %) · " \
        "guidance 2" in history[-1]["label"]
    for name, action in (("infill", lambda: quiet_studio.regenerate_bars(history, 1, 0, 1, settings=settings)),
                         ("accompany", lambda: quiet_studio.add_part(history, 1, "Choir Aahs", settings))):
        with pytest.raises(Called):
            action()
        assert calls[name]["controls"] == wanted and calls[name]["guidance_scale"] == 2.0
        assert calls[name]["genre"] == "chorale" and calls[name]["max_new_tokens"] == 40
    # "any" leaves a control out (timing "auto": the prompt's, as the library does); guidance 1 or 0 is off
    for off in (1, 0):
        s = quick(quiet_studio, density="any", polyphony=None, pitch_low="any", pitch_high="any", guidance=off,
                  timing="auto", repetition="auto")
        assert s.controls is None and s.guidance_scale is None and s.timing is None and s.repetition is None
    assert quick(quiet_studio, timing="performed").controls == {"timing": "performed"}
    # every Repeats choice is a Repetition bin of its own, by its lower edge; "none" is 0
    choices = [value for _, value in app.REPETITION_CHOICES[1:]]
    assert [quick(quiet_studio, repetition=v).controls for v in choices[:2]] == [{"repetition": 0.0},
                                                                                 {"repetition": 0.05}]
    assert [quiet_studio.tokenizer.control_ids({"repetition": float(v)}) for v in choices] == \
        [[quiet_studio.tokenizer.convert_tokens_to_ids(f"Repetition_{k}")] for k in range(4)]
    assert [label for label, _ in app.REPETITION_CHOICES[1:]] == ["none (<5 %)", "few (5-20 %)", "some (20-40 %)",
                                                                    "many (40 % or more)"]
    # what the tokenizer refuses is its message, titled by the field
    for values, title, message in [
        (dict(density="-3"), "Notes per bar", "density must be a number of notes per bar >= 0, got -3"),
        (dict(polyphony="lots"), "Notes at once", "polyphony must be a mean number of notes sounding"),
        (dict(pitch_low="90", pitch_high="60"), "Pitch range", "low <= high; got (90, 60)"),
        (dict(pitch_low="48"), "Pitch range", "Set both the lowest and the highest pitch"),
        (dict(timing="swing"), "Timing", "timing must be one of 'score', 'performed'"),
        (dict(repetition="lots"), "Repeats", "repetition must be a share of repeated bars, a number from 0 to 1"),
        (dict(repetition="1.5"), "Repeats", "repetition must be a share of repeated bars, a number from 0 to 1"),
    ]:
        with pytest.raises(gr.Error) as err:
            quick(quiet_studio, **values)
        assert err.value.title == title and message in err.value.message and err.value.message.startswith(title)
    # with no control set and no genre, guidance pulls toward the timing the library asks for (a new piece: score)
    calls.clear()
    quiet_studio.generate([], "new", settings=quick(quiet_studio, genre="unknown", guidance=3))
    assert calls["generate"]["controls"] is None and calls["generate"]["guidance_scale"] == 3


def test_undo_goes_back_step_by_step_across_every_action(quiet_studio, chorale_midi):
    settings = quick(quiet_studio, max_new_tokens=16)
    steps = [quiet_studio.generate([], "upload", chorale_midi, bars=2, settings=settings)]
    steps.append(quiet_studio.continue_piece(steps[-1], 1, settings))
    steps.append(quiet_studio.regenerate_bars(steps[-1], 1, 0, 1, ["Acoustic Grand Piano"], settings))
    steps.append(quiet_studio.add_part(steps[-1], 1, "Choir Aahs", settings))
    labels = [step["label"] for step in steps[-1]]
    assert [label.split(" · ")[0] for label in labels] == [
        "From bwv66.6.mid (first 2 bars)", "Continued variation 1 of step 1",
        "Regenerated bars 0-1 of Acoustic Grand Piano of variation 1 of step 2",
        "Added Choir Aahs to variation 1 of step 3"]
    history = steps[-1]
    for expected in reversed(steps[:-1]):
        history = quiet_studio.undo(history)
        assert history == expected
    assert quiet_studio.undo(history) == []


def test_a_description_sets_the_controls_it_names(studio, demo):
    values, line = studio.read_description("a slow four-part chorale in E flat major for choir and violin, 3/4, dense"
                                           ", from C3 to C5, expressive, dreamy")
    assert values == {"genre": "chorale", "key": "Eb major", "polyphony": "4", "time_signature": "3/4",
                      "tempo": 70.0, "instruments": ["Choir Aahs"], "density": "16", "pitch_low": "48",
                      "pitch_high": "72", "timing": "performed"}
    assert line.startswith("Understood: tempo 70 bpm ('slow') · polyphony 4 ('four-part') · genre chorale")
    assert "Not used: dreamy" in line and "did not learn Violin" in line  # the tiny model plays piano and choir
    # through the page's handler: the components it names get the values, the others stay as they are
    updates = handler(demo, "on_describe")("a folk song, 200 bpm")
    assert updates[0]["value"] == "folk song" and updates[-1].startswith("Understood: genre folk song")
    assert "value" not in updates[1]  # the key: not named, left as it is
    assert studio.read_description("") == ({}, "Understood: nothing it knows")


def test_bad_bar_ranges_and_no_piece_say_what_is_wrong(quiet_studio, chorale_midi):
    for action in (lambda: quiet_studio.regenerate_bars([], 1, 0, 1),
                   lambda: quiet_studio.add_part([], 1, "Choir Aahs")):
        with pytest.raises(gr.Error, match="Generate something first") as err:
            action()
        assert err.value.title == "No piece yet"
    history = quiet_studio.generate([], "upload", chorale_midi, bars=2,
                                    settings=quick(quiet_studio, instruments=["Acoustic Grand Piano"],
                                                   max_new_tokens=8))
    bars = quiet_studio._bars(history[-1]["pieces"][0]["ids"])
    for (start, end), title, message in [
        ((10, 12), "Bar range", f"bars 10-12 requested, the piece has {bars}"),  # the library's words
        ((1, 1), "Bar range", "bars 1-1 is an empty range (bars count from 0, the end is exclusive)"),
        ((-1, 1), "Bar range", f"bars -1-1 requested, the piece has {bars}"),
        ((None, 1), "From bar", "Give a bar number"),
    ]:
        with pytest.raises(gr.Error) as err:
            quiet_studio.regenerate_bars(history, 1, start, end, settings=quick(quiet_studio))
        assert err.value.title == title and err.value.message.startswith(f"{title} — {message}"), err.value.message
    with pytest.raises(gr.Error, match="the piece has no notes of program 52 to regenerate"):
        quiet_studio.regenerate_bars(history, 1, 0, 1, ["Choir Aahs"], quick(quiet_studio))
    with pytest.raises(gr.Error, match="no variation 2"):
        quiet_studio.regenerate_bars(history, 2, 0, 1)


def test_stop_before_a_regeneration_is_complete_keeps_the_piece(quiet_studio, app, chorale_midi):
    history = quiet_studio.generate([], "upload", chorale_midi, bars=1, settings=quick(quiet_studio,
                                                                                        max_new_tokens=8))
    tracker = app.GenerationProgress(64)
    tracker.cancel.set()
    with pytest.raises(app.Unchanged) as stopped:
        quiet_studio.regenerate_bars(history, 1, 0, 1, settings=quick(quiet_studio), progress=tracker)
    assert stopped.value.history == history and "the piece is unchanged" in stopped.value.message
    assert tracker.so_far() == []  # nothing is drawn while bars are rewritten


def test_a_model_without_control_tokens_hides_them_and_says_so(app, corpus_dir, tmp_path):
    from music_hf import MusicTokenizer

    old = MusicTokenizer(miditok_config={"special_tokens": ["PAD", "BOS", "EOS", "MASK"]})
    studio = app.Studio(save_tiny_model(tmp_path / "old", tokenizer=old), corpus_dir=corpus_dir,
                        output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
    assert studio.control_names == [] and studio.keys == [] and not studio.can_compose
    assert "no control tokens" in studio.controls_note and "without the composition tokens" in \
        studio.composition_note
    demo = app.build_demo(studio)
    for label in ("Key", "Timing", "Repeats", "Notes per bar", "Notes at once", "Lowest pitch", "Highest pitch"):
        assert component(demo, label).visible is False, label
    assert component(demo, "Guidance (1 or 0 = off)").visible is not False  # guidance toward the genre still works
    notes = [b.value for b in demo.blocks.values() if isinstance(b, gr.Markdown) and isinstance(b.value, str)]
    assert any("no control tokens" in n for n in notes) and any("Regenerate bars and Add a part are unavailable"
                                                                  in n for n in notes)
    with pytest.raises(gr.Error, match="this tokenizer has no Density token") as err:
        studio.settings(density="8")
    assert err.value.title == "Notes per bar"
    with pytest.raises(gr.Error, match="no control tokens") as err:
        studio.settings(timing="score")
    assert err.value.title == "Timing"
    with pytest.raises(gr.Error, match="no control tokens") as err:
        studio.settings(repetition="0.2")
    assert err.value.title == "Repeats"
    studio.audio_ok = False
    with pytest.raises(gr.Error, match="guidance_scale needs something to guide toward") as err:
        studio.generate([], "new", settings=studio.settings(genre="unknown", guidance=3, max_new_tokens=8))
    assert err.value.title == "Guidance"
    history = studio.generate([], "new", settings=studio.settings(genre="chorale", max_new_tokens=8, seed=0))
    with pytest.raises(gr.Error, match="unavailable with this model"):
        studio.regenerate_bars(history, 1, 0, 1, settings=studio.settings(genre="chorale"))


def test_a_model_made_before_the_repetition_control_offers_the_others(app, corpus_dir, tmp_path):
    """As the shipped model (saved with the timing control, before repetition): no Repeats, the rest offered."""
    from music_hf import MusicTokenizer
    from music_hf.tokenization_music import COMPOSITION_TOKENS

    specials = ["PAD", "BOS", "EOS", "MASK", *(t for t in COMPOSITION_TOKENS if not t.startswith("Repetition_"))]
    before = MusicTokenizer(miditok_config={"special_tokens": specials})
    studio = app.Studio(save_tiny_model(tmp_path / "before", tokenizer=before), corpus_dir=corpus_dir,
                        output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
    assert studio.control_names == ["key", "density", "polyphony", "pitch_range", "timing"]
    assert "no control tokens for repeats" in studio.controls_note and "that control is not offered" in \
        studio.controls_note
    demo = app.build_demo(studio)
    assert component(demo, "Repeats").visible is False and component(demo, "Timing").visible is not False
    with pytest.raises(gr.Error, match="no control tokens for repeats") as err:
        studio.settings(repetition="0.2")
    assert err.value.title == "Repeats"


# ----- the app served on localhost -----------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_app(corpus_dir, tmp_path_factory):
    """`python space/app.py` on a free port, as a visitor would start it; yields its URL. Its model is wider and
    deeper than the handlers' (a few ms a token) and writes the length asked for (no early EOS), so that a visitor
    can press Stop while it writes."""
    port = _free_port()
    tmp = tmp_path_factory.mktemp("served")
    model = save_tiny_model(tmp / "model", long_pieces=True, hidden_size=256, num_hidden_layers=4,
                            num_attention_heads=4, intermediate_size=512)
    env = dict(os.environ, MODEL_ID=model, CORPUS_DIR=corpus_dir, GRADIO_SERVER_PORT=str(port),
               GRADIO_SERVER_NAME="127.0.0.1", GRADIO_ANALYTICS_ENABLED="False", MUSIC_HF_CACHE=str(tmp / "cache"),
               GRADIO_TEMP_DIR=str(tmp / "gradio"), MAX_NEW_TOKENS="1024")
    log_path = tmp / "app.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, str(APP)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                cwd=str(REPO))
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the app exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"the app did not answer within 180 s:\n{log_path.read_text()[-3000:]}")
        time.sleep(1)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def _outputs(result) -> dict[str, list]:
    """The generate/continue/undo outputs, grouped by what they are."""
    files = [v for v in result if isinstance(v, str) and os.path.isfile(v)]
    return {"status": [v for v in result if isinstance(v, str) and v.startswith(("✅", "↩", "⏹"))],
            "midi": [f for f in files if f.endswith(".mid")], "image": [f for f in files if f.endswith(".png")],
            "audio": [f for f in files if f.endswith(".wav")]}


def test_served_app_generates_continues_and_undoes(served_app, chorale_midi, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(served_app, verbose=False)
    settings = dict(genre="chorale", instruments=[], tempo=120, time_signature="4/4", length=48, temperature=1.0,
                    top_k=0, top_p=0.95, seed=0, variations=1, constrained=True)
    result = client.predict(prompt_source="upload", midi_file=handle_file(chorale_midi), corpus_example=None,
                            prompt_bars=2, api_name="/generate", **settings)
    out = _outputs(result)
    assert out["status"] and len(out["midi"]) == len(out["image"]) == 1
    assert symusic.Score(out["midi"][0]).note_num() > 0
    assert Path(out["image"][0]).read_bytes()[:4] == b"\x89PNG"
    if AUDIO_OK:
        assert len(out["audio"]) == 1 and wav_peak(out["audio"][0]) > 0.1
    first_notes = symusic.Score(out["midi"][0]).note_num()

    # the same client session keeps its history: continue, find similar, undo
    result = client.predict(variation="1", api_name="/continue", **{**settings, "length": 32})
    assert "2. Continued variation 1" in " ".join(v for v in result if isinstance(v, str))
    assert symusic.Score(_outputs(result)["midi"][0]).note_num() >= first_notes
    table = client.predict(variation="1", api_name="/find_similar")
    rows = table.get("value", table)["data"]  # a Dataframe update: {"visible": True, "value": {"data": ...}}
    assert len(rows) == 4 and {r[2] for r in rows} <= {"chorale", "folk song"}
    result = client.predict(api_name="/undo")
    assert "Back one step" in " ".join(v for v in result if isinstance(v, str))

    bad = tmp_path / "broken.mid"
    bad.write_bytes(Path(chorale_midi).read_bytes()[:60])
    with pytest.raises(AppError, match="corrupt or truncated"):
        client.predict(prompt_source="upload", midi_file=handle_file(str(bad)), corpus_example=None, prompt_bars=2,
                       api_name="/generate", **settings)


def test_every_endpoint_is_callable_with_its_defaults_and_names_its_outputs(served_app):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(served_app, verbose=False)
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/generate", "/continue", "/regenerate_bars", "/add_part", "/stop", "/undo", "/find_similar"} <= set(api)
    for name, endpoint in api.items():
        assert [p["parameter_name"] for p in endpoint["parameters"] if not p["parameter_has_default"]] == [], name
        assert [r["label"] for r in endpoint["returns"] if re.fullmatch(r"value_\d+", r["label"] or "")] == [], name
    labels = [r["label"] for r in api["/generate"]["returns"]]
    assert labels[:3] == ["Status", "History", "Variation"] and "Piano roll 1" in labels and "MIDI 1" in labels
    for name in ("/regenerate_bars", "/add_part"):  # no piece yet
        with pytest.raises(AppError, match="No piece yet — Generate something first"):
            client.predict(api_name=name)
    out = dict(zip(labels, client.predict(api_name="/generate")))  # a new piece, every setting at its default
    assert out["Status"].startswith("✅") and symusic.Score(out["MIDI 1"]).note_num() > 0
    # edit it: bar 0 regenerated, then a part added (the defaults: the model's last learned instrument)
    before = symusic.Score(out["MIDI 1"])
    assert [r["label"] for r in api["/regenerate_bars"]["returns"]] == labels
    out = dict(zip(labels, client.predict(api_name="/regenerate_bars")))
    assert out["Status"].startswith("✅ Regenerated bars 0-1") and "2. Regenerated bars 0-1" in out["History"]
    after = symusic.Score(out["MIDI 1"])
    assert notes_of(after) and [n for n in notes_of(after) if n[0] >= bar_end_tick(after, 1)] == \
        [n for n in notes_of(before) if n[0] >= bar_end_tick(before, 1)]
    out = dict(zip(labels, client.predict(api_name="/add_part")))
    assert out["Status"].startswith("✅ Added a part for Choir Aahs") and "3. Added Choir Aahs" in out["History"]
    assert 52 in programs_of(symusic.Score(out["MIDI 1"]))
    with pytest.raises(AppError, match="Bar range — bars 10-12 requested, the piece has"):
        client.predict(from_bar=10, to_bar=12, api_name="/regenerate_bars")
    with pytest.raises(AppError, match="Notes per bar — density must be a number of notes per bar >= 0, got -3"):
        client.predict(density="-3", api_name="/add_part")
    client.predict(api_name="/stop")  # nothing under way: nothing to stop, and no error
    described = dict(zip([r["label"] for r in api["/describe"]["returns"]],
                         client.predict(text="a folk song in G", api_name="/describe")))
    # (updates: a component the words do not name keeps its value)
    assert described["Genre"]["value"] == "folk song" and described["Key"]["value"] == "G major"
    assert "value" not in described["Instruments"]
    assert described["What the words set"].startswith("Understood: genre folk song")
    with pytest.raises(AppError, match="Variations — Value 0 is less than minimum value 1"):
        client.predict(variations=0, api_name="/generate")


# ----- a real browser ----------------------------------------------------------------------------------

@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian chromium (apt-get install chromium)")
def test_the_page_in_a_real_browser(served_app, chorale_midi, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    bad = tmp_path / "broken.mid"
    bad.write_bytes(Path(chorale_midi).read_bytes()[:60])
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(served_app, wait_until="load")
            generate = page.get_by_role("button", name=re.compile("Generate"))
            expect(generate).to_be_visible(timeout=60_000)
            expect(page.get_by_text("instruments it learned: Acoustic Grand Piano, Choir Aahs")).to_be_visible()
            page.get_by_label("Instruments").click()  # only what the model learned is offered
            expect(page.get_by_role("option")).to_have_count(len(LEARNED))
            page.get_by_role("heading", name=re.compile("music-hf Studio")).click()

            page.locator("input[type=file]").first.set_input_files(chorale_midi)
            expect(page.get_by_text("Prompt: bwv66.6.mid (first 4 bars)")).to_be_visible(timeout=60_000)
            length = page.get_by_label("number input for Length (new tokens)")
            length.fill("1008")
            length.press("Enter")
            generate.click()  # the piano roll draws while the tokens come, and Stop keeps what was made
            expect(page.locator("img[src*='live_1']").first).to_be_visible(timeout=120_000)
            page.get_by_role("button", name=re.compile("Stop")).click()
            expect(page.get_by_text("Stopped: kept the 2 variations as far as they got")).to_be_visible(timeout=120_000)
            expect(page.get_by_text("it saw only the last")).to_be_visible()  # 4 bars + 1008 tokens > the context
            expect(page.get_by_text("well-formed tokens").first).to_be_visible(timeout=30_000)
            expect(page.locator("img[src*='roll_1']").first).to_be_visible(timeout=30_000)
            if AUDIO_OK:
                expect(page.get_by_test_id("waveform-Listen 1")).to_be_visible(timeout=30_000)
            page.get_by_role("button", name=re.compile("Find similar")).click()
            expect(page.get_by_text("Nearest corpus pieces")).to_be_visible(timeout=60_000)
            expect(page.get_by_text("bach · bwv").first).to_be_visible()
            page.wait_for_timeout(1000)  # let images and waveforms finish drawing
            page.screenshot(path=str(artifacts / "space.png"), full_page=True)

            # a rejected upload is said at once, "Start from" follows it, and Generate refuses it with its title
            page.get_by_role("button", name="Clear").first.click()
            expect(page.get_by_text("Upload a MIDI file.")).to_be_visible(timeout=30_000)
            page.locator("input[type=file]").first.set_input_files(str(bad))
            expect(page.get_by_text("This prompt cannot be used").first).to_be_visible(timeout=60_000)
            expect(page.get_by_label("My MIDI file")).to_be_checked()
            generate.click()
            toast = page.get_by_test_id("toast-body")
            expect(toast.get_by_text("Unreadable MIDI — Could not use broken.mid")).to_be_visible(timeout=60_000)
            expect(page.get_by_text("⚠️ Unreadable MIDI — Could not use broken.mid").first).to_be_visible()
            expect(page.get_by_text("From bwv66.6.mid (first 4 bars)")).to_have_count(1)  # no new step
            badges = page.locator("[data-testid=status-tracker]:not(.hide)").get_by_text("Error", exact=True)
            expect(badges).to_have_count(0)
            page.screenshot(path=str(artifacts / "space-rejected-upload.png"), full_page=True)

            # edit variation 1: a control the tokenizer refuses, then bar 1 regenerated with density 8 (every other
            # bar of the downloaded MIDI stays), a bar range outside the piece, a choir part added, undo twice
            length.fill("64")
            length.press("Enter")
            page.get_by_role("button", name=re.compile("^Sampling")).click()
            page.get_by_label("number input for Variations").fill("1")
            page.get_by_label("number input for Variations").press("Enter")
            original = download_midi(page, "MIDI 1")
            density = page.get_by_label("Notes per bar")
            density.fill("-3")
            density.press("Enter")
            page.get_by_label("From bar").fill("1")
            page.get_by_label("To bar (not included)").fill("2")
            regenerate = page.get_by_role("button", name=re.compile("Regenerate bars"))
            regenerate.click()
            expect(toast.get_by_text("Notes per bar — density must be a number of notes per bar >= 0, got -3")
                   ).to_be_visible(timeout=60_000)
            density.fill("8")
            density.press("Enter")
            regenerate.click()
            expect(page.get_by_text("✅ Regenerated bars 1-2").first).to_be_visible(timeout=120_000)
            expect(page.get_by_text("8 notes per bar").first).to_be_visible()  # the control reached the step
            regenerated = download_midi(page, "MIDI 1")
            start, end = bar_end_tick(original, 1), bar_end_tick(original, 2)
            assert outside(notes_of(regenerated), start, end) == outside(notes_of(original), start, end)
            assert [n for n in notes_of(regenerated) if start <= n[0] < end]
            for close in page.get_by_test_id("toast-close").all():
                close.click()
            page.wait_for_timeout(500)
            page.screenshot(path=str(artifacts / "space-regenerated.png"), full_page=True)
            page.get_by_role("button", name=re.compile("Add part")).click()  # the default: Choir Aahs
            expect(page.get_by_text("✅ Added a part for Choir Aahs").first).to_be_visible(timeout=120_000)
            accompanied = download_midi(page, "MIDI 1")
            assert [n for n in notes_of(accompanied) if n[1] != 52] == [n for n in notes_of(regenerated)
                                                                          if n[1] != 52]
            assert [n for n in notes_of(accompanied) if n[1] == 52]
            page.get_by_label("From bar").fill("10")
            page.get_by_label("To bar (not included)").fill("12")
            regenerate.click()
            expect(toast.get_by_text("Bar range — bars 10-12 requested, the piece has")).to_be_visible(
                timeout=60_000)
            undo = page.get_by_role("button", name=re.compile("Undo"))
            undo.click()
            expect(page.get_by_text("Added Choir Aahs")).to_have_count(0, timeout=30_000)
            undo.click()
            expect(page.get_by_text("Regenerated bars 1-2")).to_have_count(0, timeout=30_000)
            assert notes_of(download_midi(page, "MIDI 1")) == notes_of(original)

            # a description in words sets the controls it names, and says what it read and what not
            description = page.get_by_label("Describe it (optional)")
            description.fill("a slow four-part chorale in E flat major for choir and violin, 3/4, dreamy")
            description.press("Enter")
            expect(page.get_by_text(re.compile(r"Understood: .*genre chorale \('chorale'\)")).first).to_be_visible(
                timeout=30_000)
            expect(page.get_by_text("Not used: dreamy").first).to_be_visible()
            expect(page.get_by_label("Key")).to_have_value("Eb major")
            expect(page.get_by_label("Notes at once")).to_have_value("4")
            expect(page.get_by_label("Time signature (new pieces)")).to_have_value("3/4")
            expect(page.get_by_label("number input for Tempo (BPM, new pieces)")).to_have_value("70")
            page.screenshot(path=str(artifacts / "space-described.png"), full_page=True)
        finally:
            browser.close()


def download_midi(page, label: str) -> symusic.Score:
    """The MIDI file the page offers under `label`, fetched as a visitor's download would."""
    link = page.locator(".block", has=page.get_by_text(label, exact=True)).locator("a[download]").first
    response = page.request.get(link.get_attribute("href"))
    assert response.ok, response.status
    return symusic.Score.from_midi(response.body())
