"""scripts/showcase.py (`music_hf.showcase`) on a tiny random model: one piece per genre, MIDI, piano roll and the
Markdown snippet; and the stopping rule that ends a piece after its bars."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import symusic
import torch

from music_hf import MusicConfig, MusicForCausalLM, MusicTokenizer
from music_hf.showcase import BarsReached, markdown, model_genres, showcase

pytest.importorskip("matplotlib")
pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = Path(__file__).resolve().parents[1]
GENRES = ["chorale", "folk song"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tok = MusicTokenizer()
    config = MusicConfig.from_tokenizer(tok, genres=GENRES, hidden_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=256)
    torch.manual_seed(0)
    model = MusicForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("tiny-showcase-model")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok, path


def test_bars_reached_stops_a_row_once_the_next_bar_begins(tiny):
    _, tok, _ = tiny
    bar, pos = tok.token_id("Bar"), tok.token_id("Position", 0)
    stop = BarsReached(tok, 2)
    rows = torch.tensor([[tok.bos_token_id, bar, pos, bar, pos], [tok.bos_token_id, bar, pos, bar, bar]])
    assert stop(rows, None).tolist() == [False, True]


def test_showcase_writes_a_piece_a_roll_and_the_snippet_per_genre(tiny, tmp_path):
    model, tok, _ = tiny
    assert model_genres(model) == GENRES
    out = tmp_path / "docs" / "showcase"
    pieces, snippet = showcase(model, tok, out, bars=2, seed=0, tries=2, max_new_tokens=48, model_name="tiny",
                               link_prefix="docs/showcase/", temperature=1.0)
    assert [p.genre for p in pieces] == GENRES
    for p in pieces:
        score = symusic.Score(str(out / p.midi))
        assert score.note_num() == p.notes and 0 <= p.bars <= 2
        assert (out / p.image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"[{p.slug}.mid](docs/showcase/{p.midi})" in snippet and f"(docs/showcase/{p.image})" in snippet
    readme = (out / "README.md").read_text()
    assert "(folk-song.png)" in readme and "| chorale |" in readme and "`tiny`" in readme
    again, _ = showcase(model, tok, tmp_path / "again", bars=2, seed=0, tries=2, max_new_tokens=48, temperature=1.0)
    assert [(p.notes, p.seed, p.bars) for p in again] == [(p.notes, p.seed, p.bars) for p in pieces]  # seeded
    assert markdown([], "", "m", "s").count("|") == 14  # the table's header alone


def test_the_script_runs(tiny, tmp_path):
    _, _, path = tiny
    out = tmp_path / "show"
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "showcase.py"), "--model", str(path), "--out",
                          str(out), "--bars", "1", "--max_new_tokens", "24", "--genres", "chorale", "--threads", "1"],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (out / "chorale.mid").is_file() and (out / "chorale.png").is_file() and (out / "README.md").is_file()
    assert '"genre": "chorale"' in run.stdout and f"]({out}/chorale.png)" in run.stdout
