"""`music_hf.text_prompt`: a description in words read into generate_music's settings, each word group said, the
unused words said, and what the model cannot do noted instead of set; `generate_music(description=...)` is the same
as the keywords it stands for."""

from __future__ import annotations

import pytest
import torch

from music_hf import MusicConfig, MusicForCausalLM, MusicTokenizer, generate_music
from music_hf.hub import SHIPPED_MODEL
from music_hf.render import DRUMS
from music_hf.text_prompt import settings_from_text


@pytest.fixture(scope="module")
def model(tokenizer_module):
    torch.manual_seed(0)
    config = MusicConfig.from_tokenizer(tokenizer_module, genres=["chorale", "fiddle tune", "folk song", "classical"],
                                        hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=64)
    return MusicForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tokenizer_module():
    return MusicTokenizer()


@pytest.mark.parametrize("text,expected", [
    ("a sparse fiddle tune in D minor for flute, 6/8, 100 bpm",
     dict(genre="fiddle tune", programs=[73], time_signature="6/8", tempo=100.0,
          controls={"key": "D minor", "density": 3})),
    ("A slow four-part chorale in E flat major for strings",
     dict(genre="chorale", programs=[48], tempo=70.0, controls={"key": "Eb major", "polyphony": 4})),
    ("jig on the tin whistle, lively", dict(genre="fiddle tune", programs=[78], time_signature="6/8", tempo=132.0)),
    ("Mozart-style piece for piano in G, allegro, dense, range C3 to C6",
     dict(genre="classical", programs=[0], tempo=132.0,
          controls={"key": "G major", "density": 16, "pitch_range": (48, 84)})),
    ("a waltz in a minor, expressive, solo violin",
     dict(programs=[40], time_signature="3/4", controls={"key": "A minor", "polyphony": 1, "timing": "performed"})),
    ("duet in Db major for cello and bassoon, 12 notes per bar, strict",
     dict(programs=[42, 70], controls={"key": "C# major", "polyphony": 2, "density": 12.0, "timing": "score"})),
    ("drums and electric guitar, 2 voices", dict(programs=[DRUMS, 27], controls={"polyphony": 2})),
])
def test_words_become_generate_music_settings(tokenizer_module, model, text, expected):
    said = settings_from_text(text, tokenizer_module, model)
    assert said.generate_kwargs() == expected, said.summary()
    assert not said.notes, said.notes
    # every setting names the words that made it
    for words, setting in said.understood:
        assert words in text and setting


def test_what_it_cannot_use_is_said_not_set(tokenizer_module, model):
    said = settings_from_text("a dreamy renaissance madrigal in 7/5 with repeats, in a sparse style", tokenizer_module,
                              model)
    # no genre the model lacks, no time signature the tokenizer lacks; "in a sparse style" is no key (lower-case a)
    assert said.genre is None and said.time_signature is None and "key" not in said.controls
    assert said.controls == {"density": 3, "repetition": 0.3}
    assert any("madrigal" in n and "genre" in n for n in said.notes), said.notes
    assert any("7/5" in n for n in said.notes), said.notes
    assert "dreamy" in said.ignored and "renaissance" not in said.ignored and "style" not in said.ignored
    assert "Not used: dreamy" in said.summary()
    # a tokenizer without the repetition control (the shipped model's, made before it) notes it instead
    shipped = MusicTokenizer.from_pretrained(str(SHIPPED_MODEL))
    assert "repetition" not in shipped.control_names
    older = settings_from_text("with repeats", shipped)
    assert older.controls == {} and older.notes == ["'with repeats' asks for a repetition this model has no control "
                                                    "for."]
    assert settings_from_text("a chorale", tokenizer_module).genre is None  # no model: no genres
    empty = settings_from_text("", tokenizer_module, model)
    assert empty.generate_kwargs() == {} and empty.summary() == "Understood: nothing it knows"
    with pytest.raises(TypeError, match="a description is a string"):
        settings_from_text(["a jig"], tokenizer_module, model)


def test_generate_music_with_a_description_is_the_same_as_its_keywords(tokenizer_module, model):
    text = "a sparse jig in D minor for flute, 100 bpm"
    said = settings_from_text(text, tokenizer_module, model)
    by_words = generate_music(model, tokenizer_module, description=text, max_new_tokens=40, seed=1)
    by_keywords = generate_music(model, tokenizer_module, max_new_tokens=40, seed=1, **said.generate_kwargs())
    assert [p.ids for p in by_words] == [p.ids for p in by_keywords]
    # the prompt carries the key and density controls, the jig's 6/8 and 100 bpm
    prompt = tokenizer_module.convert_ids_to_tokens(by_words[0].ids[:by_words[0].prompt_length])
    assert "Key_Dmin" in prompt and "Density_1" in prompt, prompt  # (density 3: the bin from 2 to 4)
    assert any(t.startswith("TimeSig_6/8") for t in prompt) and any(t.startswith("Tempo_") for t in prompt)
    # a keyword beside the description wins over it
    wins = generate_music(model, tokenizer_module, description=text, time_signature="3/4", max_new_tokens=8, seed=1)
    assert any(t.startswith("TimeSig_3/4") for t in tokenizer_module.convert_ids_to_tokens(wins[0].ids))


def test_the_pipeline_reads_a_description_as_generate_music_does(tokenizer_module, model):
    from transformers import pipeline

    pipe = pipeline("music-generation", model=model, tokenizer=tokenizer_module, device="cpu")
    text = "a slow jig in D minor for flute"
    out = pipe(description=text, max_new_tokens=24, seed=2, return_type="ids")[0]
    direct = generate_music(model, tokenizer_module, description=text, max_new_tokens=24, seed=2)[0]
    assert out["token_ids"] == direct.ids


def test_the_command_line_reads_a_description(tokenizer_module, model, tmp_path, capsys):
    import json

    from music_hf.cli import main as cli_main

    model.save_pretrained(tmp_path / "model")
    tokenizer_module.save_pretrained(tmp_path / "model")
    assert cli_main(["generate", "--model", str(tmp_path / "model"), "--describe", "a jig in G for flute, dreamy",
                     "--max_new_tokens", "16", "--out", str(tmp_path / "out")]) == 0
    out, err = capsys.readouterr()
    assert "genre fiddle tune ('jig')" in err and "Not used: dreamy" in err
    written = json.loads(out.strip().splitlines()[-1])
    assert written["genre"] == "fiddle tune" and written["midi"].endswith("fiddle_tune_0_0.mid")
