"""The Gradio Space: handlers as plain functions on real corpus pieces with a tiny random model, the app served on
localhost and driven by gradio_client, and (marked `browser`) the page in headless Chromium. The renderers are
tested in tests/test_render.py."""

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
from music_hf.render import audio_available, wav_peak  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "space" / "app.py"
AUDIO_OK = audio_available()[0]
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


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    import torch

    from music_hf import MusicConfig, MusicForCausalLM, MusicTokenizer

    tokenizer = MusicTokenizer()
    config = MusicConfig.from_tokenizer(tokenizer, genres=["chorale", "folk song"], hidden_size=32,
                                        num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-model")
    MusicForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


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


# ----- handlers as plain functions -----------------------------------------------------------------------

def test_generate_from_nothing_honours_instruments_time_signature_and_tempo(studio):
    settings = quick(studio, instruments=["Violin", "Drums"], time_signature="3/4", tempo=90, variations=2)
    history = studio.generate([], "new", settings=settings)
    assert len(history) == 1 and len(history[0]["pieces"]) == 2
    assert "3/4" in history[0]["label"] and "Violin and Drums" in history[0]["label"]
    notes = 0
    for piece in history[0]["pieces"]:
        score = symusic.Score(piece["midi"])
        notes += score.note_num()
        assert programs_of(score) <= {40, 128}
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


def test_the_page_builds(app, studio):
    demo = app.build_demo(studio)
    apis = {fn.api_name for fn in demo.fns.values()}
    assert {"generate", "continue", "undo", "find_similar"} <= apis


# ----- the app served on localhost -----------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_app(tiny_model, corpus_dir, tmp_path_factory):
    """`python space/app.py` on a free port, as a visitor would start it; yields its URL."""
    port = _free_port()
    tmp = tmp_path_factory.mktemp("served")
    env = dict(os.environ, MODEL_ID=tiny_model, CORPUS_DIR=corpus_dir, GRADIO_SERVER_PORT=str(port),
               GRADIO_SERVER_NAME="127.0.0.1", GRADIO_ANALYTICS_ENABLED="False", MUSIC_HF_CACHE=str(tmp / "cache"),
               GRADIO_TEMP_DIR=str(tmp / "gradio"), MAX_NEW_TOKENS="256")
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
    return {"status": [v for v in result if isinstance(v, str) and v.startswith(("✅", "↩"))],
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

            page.locator("input[type=file]").first.set_input_files(chorale_midi)
            expect(page.get_by_text("Prompt: bwv66.6.mid (first 4 bars)")).to_be_visible(timeout=60_000)
            generate.click()
            expect(page.get_by_text("well-formed tokens").first).to_be_visible(timeout=120_000)
            expect(page.locator("img[src*='roll_1']").first).to_be_visible(timeout=30_000)
            if AUDIO_OK:
                expect(page.get_by_test_id("waveform-Listen 1")).to_be_visible(timeout=30_000)
            page.get_by_role("button", name=re.compile("Find similar")).click()
            expect(page.get_by_text("Nearest corpus pieces")).to_be_visible(timeout=60_000)
            expect(page.get_by_text("bach · bwv").first).to_be_visible()
            page.wait_for_timeout(1000)  # let images and waveforms finish drawing
            page.screenshot(path=str(artifacts / "space.png"), full_page=True)

            page.get_by_role("button", name="Clear").first.click()  # empty the upload box, then a broken file
            expect(page.get_by_text("Upload a MIDI file.")).to_be_visible(timeout=30_000)
            page.locator("input[type=file]").first.set_input_files(str(bad))
            expect(page.get_by_text("corrupt or truncated MIDI").first).to_be_visible(timeout=60_000)
        finally:
            browser.close()
