"""MusicForCausalLM / MusicForSequenceClassification on real music (music21 corpus pieces written to MIDI).

Tiny models (hidden 32-64, 2 layers) keep the whole file fast on a CPU. Dropout is 0 everywhere, so
train-mode outputs are deterministic while batch norm still uses batch statistics.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import symusic
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from music_hf import MusicConfig, MusicForCausalLM, MusicForSequenceClassification, MusicTokenizer
from music_hf.modeling_music import NUM_OCTAVES, CausalBatchNorm

NORMS = ("layernorm", "rmsnorm", "batchnorm")
CONVS = (0, 3)
POSITIONS = ("learned", "rotary")
COMBOS = list(itertools.product(NORMS, CONVS, POSITIONS))
COMBO_IDS = [f"{n}-conv{c}-{p}" for n, c, p in COMBOS]
GENRES = ["chorale", "renaissance", "band"]


# ----- fixtures: real pieces ------------------------------------------------------------------------
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pieces(tmp_path_factory) -> dict[str, str]:
    """Three corpus pieces as MIDI: a Bach chorale, a Palestrina mass movement, and a second chorale
    re-orchestrated (flute, strings, a drum track, piano) so program changes and drums occur."""
    music21 = pytest.importorskip("music21")
    root = tmp_path_factory.mktemp("midi")
    paths = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, work in (("chorale", "bach/bwv66.6"), ("palestrina", "palestrina/agnus_01"),
                           ("band", "bach/bwv7.7")):
            path = root / f"{name}.mid"
            music21.corpus.parse(work).write("midi", fp=str(path))
            paths[name] = str(path)
    score = symusic.Score(paths["band"])
    for track, program in zip(score.tracks, (73, 40, 0, 0)):
        track.program = program
    score.tracks[2].is_drum = True
    score.dump_midi(paths["band"])
    return paths


@pytest.fixture(scope="module")
def tokenizer() -> MusicTokenizer:
    return MusicTokenizer()


@pytest.fixture(scope="module")
def piece_ids(pieces, tokenizer) -> dict[str, list[int]]:
    """Token ids of each piece (with BOS/EOS)."""
    return {name: tokenizer(path)["input_ids"] for name, path in pieces.items()}


# ----- helpers --------------------------------------------------------------------------------------
def tiny_config(tokenizer: MusicTokenizer, **overrides) -> MusicConfig:
    params = dict(genres=GENRES, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  max_position_embeddings=512, embedding_dropout=0.0, hidden_dropout=0.0, attention_dropout=0.0,
                  classifier_dropout=0.0)
    params.update(overrides)
    return MusicConfig.from_tokenizer(tokenizer, **params)


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 1) -> nn.Module:
    """Make every part matter: larger embeddings (music ones included), non-trivial norm affine parameters
    and batch-norm running statistics (which start as the identity)."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * 0.5)
        elif isinstance(module, (nn.LayerNorm, nn.RMSNorm, CausalBatchNorm)):
            module.weight.copy_(1 + 0.3 * torch.randn(module.weight.shape, generator=gen))
            if getattr(module, "bias", None) is not None:
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
            if isinstance(module, CausalBatchNorm):
                module.running_mean.copy_(0.3 * torch.randn(module.running_mean.shape, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=gen) * 1.5)
    return model


def make_lm(tokenizer: MusicTokenizer, norm: str = "layernorm", conv: int = 0, position: str = "learned",
            seed: int = 0, **overrides) -> MusicForCausalLM:
    torch.manual_seed(seed)
    config = tiny_config(tokenizer, norm_type=norm, conv_kernel_size=conv, position_embedding_type=position,
                         **overrides)
    return randomize_(MusicForCausalLM(config)).eval()


def window_batch(piece_ids: dict[str, list[int]], length: int) -> torch.Tensor:
    """Two real sequences of equal length: the re-orchestrated chorale (with drums) and the Palestrina."""
    a, b = piece_ids["band"], piece_ids["palestrina"]
    return torch.tensor([a[:length], b[40:40 + length]])


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded ids, attention mask and position ids counted from each sequence's first real token."""
    width = max(map(len, seqs))
    ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in seqs])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1))


# ----- 1. causality ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("norm,conv,position", COMBOS, ids=COMBO_IDS)
def test_changing_token_t_changes_nothing_before_t(tokenizer, piece_ids, norm, conv, position, mode):
    model = make_lm(tokenizer, norm, conv, position)
    model.train(mode == "train")
    ids = window_batch(piece_ids, 48)
    vocab = model.config.vocab_size
    with torch.no_grad():
        base = model(ids, use_cache=False).logits
        for t in (1, 20, 47):
            changed = ids.clone()
            changed[0, t] = (changed[0, t] + 37) % (vocab - 1) + 1  # another real (non-pad) token
            logits = model(changed, use_cache=False).logits
            # no position before t may move, in either sequence (batch norm shares statistics across the batch)
            torch.testing.assert_close(logits[:, :t], base[:, :t], atol=1e-6, rtol=0,
                                       msg=f"{norm}/{conv}/{position}/{mode}: position < {t} saw token {t}")
            assert (logits[0, t:] - base[0, t:]).abs().max() > 1e-4, f"changing token {t} changed nothing after it"
            if mode == "train" and norm == "batchnorm":  # batch statistics at >= t now include the changed token
                assert (logits[1, t:] - base[1, t:]).abs().max() > 0


def test_train_mode_batch_norm_ignores_padding(tokenizer, piece_ids):
    """Masked (padded) positions contribute nothing to the cumulative batch statistics."""
    model = make_lm(tokenizer, "batchnorm", 3, "learned").train()
    ids = window_batch(piece_ids, 40)
    mask = torch.ones_like(ids)
    mask[1, 25:] = 0
    with torch.no_grad():
        base = model(ids, attention_mask=mask, use_cache=False).logits
        junk = ids.clone()
        junk[1, 25:] = torch.randint(1, model.config.vocab_size, (15,), generator=torch.Generator().manual_seed(0))
        logits = model(junk, attention_mask=mask, use_cache=False).logits
    torch.testing.assert_close(logits[0], base[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(logits[1, :25], base[1, :25], atol=1e-6, rtol=0)


# ----- 2. cache -------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm,conv,position", COMBOS, ids=COMBO_IDS)
def test_cached_forward_equals_full_forward(tokenizer, piece_ids, norm, conv, position):
    model = make_lm(tokenizer, norm, conv, position)
    ids = window_batch(piece_ids, 40)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        first = model(ids[:, :17], use_cache=True)
        rest = model(ids[:, 17:], cache=first.cache, use_cache=True)
        torch.testing.assert_close(torch.cat([first.logits, rest.logits], 1), full, atol=1e-5, rtol=1e-5)
        cache, steps = None, []
        for t in range(ids.shape[1]):
            out = model(ids[:, t:t + 1], cache=cache, use_cache=True)
            cache = out.cache
            steps.append(out.logits)
        torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
        assert cache.get_seq_length() == ids.shape[1]


def _stepped_logits(model: MusicForCausalLM, ids: torch.Tensor, prefill: int = 9) -> torch.Tensor:
    """Logits of a prefill, then of one token per call on its cache (the decoding step's route)."""
    with torch.no_grad():
        out = model(ids[:, :prefill], use_cache=True)
        steps = [out.logits]
        for t in range(prefill, ids.shape[1]):
            steps.append(model(ids[:, t:t + 1], cache=out.cache, use_cache=True).logits)
    return torch.cat(steps, 1)


@pytest.mark.parametrize("norm,position", [("rmsnorm", "rotary"), ("layernorm", "learned"), ("batchnorm", "rotary")])
def test_decoding_step_equals_forward_at_batch_one_with_adapters_quantized_layers_and_new_weights(
        tokenizer, piece_ids, norm, position):
    """The decoding step's route (matrix-vector products for one row, the RMSNorm folded into the layer after it,
    q and k rotated from tables, the note embeddings summed once per generate) gives forward's logits: for a plain
    model, with LoRA adapters (called as modules), with int8 dynamically quantized linear layers, after the weights
    change between two generate calls, and with a hook on a linear layer (the hook runs at each step)."""
    ids = torch.tensor([piece_ids["band"][:40]])
    model = make_lm(tokenizer, norm, 3, position)
    with torch.no_grad():
        torch.testing.assert_close(_stepped_logits(model, ids), model(ids).logits, atol=1e-5, rtol=1e-5)
        for p in model.parameters():  # new weights (as a training step between two generate calls): a new plan
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
        torch.testing.assert_close(_stepped_logits(model, ids), model(ids).logits, atol=1e-5, rtol=1e-5)
    calls = []
    hook = model.model.layers[0].mlp.fc_in.register_forward_hook(lambda *_: calls.append(1))
    try:
        torch.testing.assert_close(_stepped_logits(model, ids), model(ids).logits, atol=1e-5, rtol=1e-5)
    finally:
        hook.remove()
    assert len(calls) == 2 + (ids.shape[1] - 9), "a hooked linear layer was skipped by the decoding step"
    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(make_lm(tokenizer, norm, 3, position),
                               peft.LoraConfig(r=4, target_modules=["qkv_proj", "fc_in", "fc_out"])).eval()
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:  # (LoRA starts as the identity: make it count)
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
    base_logits = make_lm(tokenizer, norm, 3, position)(ids).logits
    with torch.no_grad():
        adapted = lora(ids).logits
    assert (adapted - base_logits).abs().max() > 1e-3
    torch.testing.assert_close(_stepped_logits(lora, ids), adapted, atol=1e-5, rtol=1e-5)
    # int8 layers quantize each call's activations, so a step is compared with a step of `forward` (the route is
    # off while a module it goes around has a hook)
    quantized = torch.ao.quantization.quantize_dynamic(make_lm(tokenizer, norm, 3, position), {nn.Linear},
                                                       dtype=torch.qint8)
    routed = _stepped_logits(quantized, ids)
    hook = quantized.model.embeddings.register_forward_hook(lambda *_: None)
    try:
        torch.testing.assert_close(routed, _stepped_logits(quantized, ids), atol=1e-5, rtol=1e-5)
    finally:
        hook.remove()


@pytest.mark.parametrize("norm,conv,position", COMBOS, ids=COMBO_IDS)
def test_left_padded_batch_equals_single_sequences(tokenizer, piece_ids, norm, conv, position):
    """Forward and greedy generate on a left-padded batch give what each sequence gives alone;
    generate with and without the cache gives identical tokens."""
    model = make_lm(tokenizer, norm, conv, position)
    seqs = [piece_ids["band"][:30], piece_ids["palestrina"][:19]]
    ids, mask, pos = left_pad(seqs, tokenizer.pad_token_id)
    genre = torch.tensor([3, 2])
    with torch.no_grad():
        batch_logits = model(ids, attention_mask=mask, position_ids=pos, genre_ids=genre).logits
        for row, seq in enumerate(seqs):
            alone = model(torch.tensor([seq]), genre_ids=genre[row:row + 1]).logits[0]
            torch.testing.assert_close(batch_logits[row, -len(seq):], alone, atol=1e-5, rtol=1e-5)
        kwargs = dict(attention_mask=mask, genre_ids=genre, max_new_tokens=12, do_sample=False,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
        cached = model.generate(ids, use_cache=True, **kwargs)
        uncached = model.generate(ids, use_cache=False, **kwargs)
        assert torch.equal(cached, uncached)
        for row, seq in enumerate(seqs):
            alone = model.generate(torch.tensor([seq]), genre_ids=genre[row:row + 1], max_new_tokens=12,
                                   do_sample=False, eos_token_id=None)
            assert cached[row, -12:].tolist() == alone[0, -12:].tolist()


# ----- 3. generate strategies and genre conditioning ------------------------------------------------
STRATEGIES = {
    "greedy": dict(do_sample=False),
    "sampling": dict(do_sample=True, temperature=0.9, top_k=20, top_p=0.9, num_return_sequences=2),
    "beam": dict(num_beams=3, do_sample=False, num_return_sequences=2),
}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_generate_strategies_pass_genre_ids_through(tokenizer, piece_ids, strategy):
    model = make_lm(tokenizer, "layernorm", 3, "rotary")
    kwargs = dict(STRATEGIES[strategy], max_new_tokens=8, eos_token_id=None, pad_token_id=tokenizer.pad_token_id,
                  output_logits=True, return_dict_in_generate=True)
    prompt = window_batch(piece_ids, 24)
    per_row = kwargs.get("num_beams", kwargs.get("num_return_sequences", 1))
    first_logits = {}
    for genres in ([1, 3], [2, 2]):
        genre_ids = torch.tensor(genres)
        torch.manual_seed(0)
        out = model.generate(prompt, genre_ids=genre_ids, **kwargs)
        n = prompt.shape[0] * kwargs.get("num_return_sequences", 1)
        assert out.sequences.shape == (n, 24 + 8)
        assert torch.equal(out.sequences[:, :24], prompt.repeat_interleave(n // 2, 0))
        assert int(out.sequences.min()) >= 0 and int(out.sequences.max()) < model.config.vocab_size
        # the first step's logits are exactly those of a forward pass with these genres (expanded per beam/sample)
        with torch.no_grad():
            expected = model(prompt, genre_ids=genre_ids).logits[:, -1].repeat_interleave(per_row, 0)
        torch.testing.assert_close(out.logits[0], expected, atol=1e-5, rtol=1e-5)
        first_logits[tuple(genres)] = out.logits[0]
    # same prompt, different genre for the first row only: its logits change, the other's (genre 3 vs 2) too
    diff = (first_logits[(1, 3)] - first_logits[(2, 2)]).abs().amax(-1)
    assert (diff > 1e-3).all(), "genre_ids did not reach the model inside generate"


def test_beam_search_with_cache_equals_without(tokenizer, piece_ids):
    """Beam reordering also reorders the token history and conv inputs kept in the cache."""
    model = make_lm(tokenizer, "batchnorm", 3, "learned")
    prompt = window_batch(piece_ids, 20)
    kwargs = dict(num_beams=3, num_return_sequences=3, max_new_tokens=10, do_sample=False, eos_token_id=None,
                  genre_ids=torch.tensor([1, 2]), pad_token_id=tokenizer.pad_token_id)
    assert torch.equal(model.generate(prompt, use_cache=True, **kwargs), model.generate(prompt, use_cache=False,
                                                                                           **kwargs))


# ----- 4. save / load -------------------------------------------------------------------------------
@pytest.mark.parametrize("norm,conv,position", [("layernorm", 0, "learned"), ("batchnorm", 3, "rotary")])
def test_save_pretrained_and_auto_load_round_trip(tokenizer, piece_ids, tmp_path, norm, conv, position):
    model = make_lm(tokenizer, norm, conv, position)
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"model.safetensors", "config.json", "modeling_music.py", "configuration_music.py"} <= files
    assert not any(f.endswith(".bin") for f in files)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoConfig"] == "configuration_music.MusicConfig"
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_music.MusicForCausalLM"

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is MusicForCausalLM
    assert loaded.config.id2genre == model.config.id2genre
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embeddings.token.weight.data_ptr()
    for name in ("pitch", "program_set", "position_set", "bar_count"):  # non-persistent: rebuilt from the config
        table = getattr(loaded.model.embeddings, name + "_table")
        assert torch.equal(table, getattr(model.model.embeddings, name + "_table"))
        assert (table >= 0).any() and table.shape == (model.config.vocab_size,)
    for key, value in model.state_dict().items():  # batch-norm running statistics included
        assert torch.equal(loaded.state_dict()[key], value), key
    ids = window_batch(piece_ids, 32)
    genre = torch.tensor([1, 2])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, genre_ids=genre).logits, model(ids, genre_ids=genre).logits,
                                   atol=0, rtol=0)


# ----- 5. trust_remote_code without music_hf --------------------------------------------------------
REMOTE_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.modules["music_hf"] = None  # the package cannot be imported here: only the files next to the weights
    try:
        import music_hf
    except ImportError:
        pass
    else:
        raise SystemExit("music_hf is importable in the subprocess")
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    expected = json.load(open("expected.json"))
    lm = AutoModelForCausalLM.from_pretrained("lm", trust_remote_code=True).eval()
    assert type(lm).__module__.startswith("transformers_modules"), type(lm).__module__
    prompt, genre = torch.tensor(expected["prompt"]), torch.tensor(expected["genre_ids"])
    out = lm.generate(prompt, genre_ids=genre, max_new_tokens=16, do_sample=False, eos_token_id=None)
    assert out.tolist() == expected["greedy"], (out.tolist(), expected["greedy"])
    clf = AutoModelForSequenceClassification.from_pretrained("clf", trust_remote_code=True).eval()
    assert type(clf).__module__.startswith("transformers_modules"), type(clf).__module__
    with torch.no_grad():
        logits = clf(prompt, genre_ids=genre).logits
    assert torch.allclose(logits, torch.tensor(expected["clf_logits"]), atol=1e-5), logits
    print("REMOTE OK")
""")


def test_trust_remote_code_loads_without_music_hf(tokenizer, piece_ids, tmp_path):
    model = make_lm(tokenizer, "rmsnorm", 3, "learned")
    model.save_pretrained(tmp_path / "lm")
    torch.manual_seed(0)
    clf = randomize_(MusicForSequenceClassification(tiny_config(tokenizer, num_labels=3, conv_kernel_size=3))).eval()
    clf.save_pretrained(tmp_path / "clf")
    prompt = window_batch(piece_ids, 24)
    genre = torch.tensor([1, 2])
    with torch.no_grad():
        greedy = model.generate(prompt, genre_ids=genre, max_new_tokens=16, do_sample=False, eos_token_id=None)
        clf_logits = clf(prompt, genre_ids=genre).logits
    (tmp_path / "expected.json").write_text(json.dumps({
        "prompt": prompt.tolist(), "genre_ids": genre.tolist(), "greedy": greedy.tolist(),
        "clf_logits": clf_logits.tolist()}))
    (tmp_path / "remote.py").write_text(REMOTE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "remote.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0 and "REMOTE OK" in proc.stdout, proc.stdout + proc.stderr


# ----- 6. embedding switches ------------------------------------------------------------------------
SWITCHES = {
    "use_note_embedding": ("pitch_class", "octave"),
    "use_instrument_embedding": ("instrument",),
    "use_temporal_embedding": ("bar_position", "bar_index"),
    "use_genre_embedding": ("genre",),
}


@pytest.mark.parametrize("switch", list(SWITCHES))
def test_each_embedding_switch_adds_or_removes_its_embedding(tokenizer, piece_ids, switch):
    modules = SWITCHES[switch]
    on = make_lm(tokenizer, seed=0)
    off = make_lm(tokenizer, seed=0, **{switch: False})
    ids, genre = window_batch(piece_ids, 48), torch.tensor([1, 2])
    for name in modules:
        assert hasattr(on.model.embeddings, name) and not hasattr(off.model.embeddings, name)
    with torch.no_grad():
        base = on(ids, genre_ids=genre).logits
        assert not torch.allclose(off(ids, genre_ids=genre).logits, base, atol=1e-4)
        # off == on with those embeddings zeroed: the switch removes exactly that term of the sum
        missing, unexpected = off.load_state_dict(on.state_dict(), strict=False)
        assert not missing and {k.split(".")[2] for k in unexpected} == set(modules)
        saved = {name: getattr(on.model.embeddings, name).weight.clone() for name in modules}
        for name in modules:
            getattr(on.model.embeddings, name).weight.zero_()
        torch.testing.assert_close(on(ids, genre_ids=genre).logits, off(ids, genre_ids=genre).logits,
                                   atol=1e-5, rtol=1e-5)
        # ... and when on, each of its tables matters
        for name in modules:
            for other in modules:
                getattr(on.model.embeddings, other).weight.copy_(saved[other])
            getattr(on.model.embeddings, name).weight.add_(torch.randn_like(saved[name]))
            assert not torch.allclose(on(ids, genre_ids=genre).logits, base, atol=1e-4), name
        if switch == "use_genre_embedding":  # genre ids matter only when the genre embedding is on
            assert not torch.allclose(on(ids, genre_ids=torch.tensor([0, 0])).logits,
                                      on(ids, genre_ids=genre).logits, atol=1e-4)
            torch.testing.assert_close(off(ids, genre_ids=torch.tensor([0, 0])).logits,
                                       off(ids, genre_ids=genre).logits, atol=0, rtol=0)


def test_position_embedding_types(tokenizer, piece_ids):
    """Learned: an absolute position table (shifting positions changes logits). Rotary: no table, relative
    only (shifting all positions leaves logits unchanged), and its frequencies matter."""
    learned = make_lm(tokenizer, position="learned")
    rotary = make_lm(tokenizer, position="rotary")
    assert hasattr(learned.model.embeddings, "position") and learned.model.rotary is None
    assert not hasattr(rotary.model.embeddings, "position") and rotary.model.rotary is not None
    ids = window_batch(piece_ids, 40)
    pos = torch.arange(40)[None].expand(2, -1)
    with torch.no_grad():
        assert not torch.allclose(learned(ids, position_ids=pos + 7).logits, learned(ids, position_ids=pos).logits,
                                  atol=1e-4)
        base = rotary(ids, position_ids=pos).logits
        torch.testing.assert_close(rotary(ids, position_ids=pos + 7).logits, base, atol=1e-4, rtol=1e-4)
        rotary.model.rotary.inv_freq.mul_(3.0)
        assert not torch.allclose(rotary(ids, position_ids=pos).logits, base, atol=1e-4)


# ----- 7. carried attributes against a slow reference -----------------------------------------------
def reference_attributes(tokens: list[str], config: MusicConfig) -> dict[str, list[int]]:
    """A plain loop over token strings: program in force, position in bar, bar index, pitch."""
    out: dict[str, list[int]] = {k: [] for k in ("pitch_class", "octave", "instrument", "bar_position", "bar_index")}
    program, position, bars = None, None, 0
    for token in tokens:
        kind, _, value = token.partition("_")
        pitch = None
        if kind == "Program":
            program = 128 if int(value) == -1 else int(value)
        elif kind == "Bar":
            bars, position = bars + 1, 0
        elif kind == "Position":
            position = int(value)
        elif kind == "Pitch":
            pitch = int(value)
        out["instrument"].append(0 if program is None else program + 1)
        out["bar_position"].append(0 if position is None else min(position + 1, config.num_positions_in_bar))
        out["bar_index"].append(min(max(bars - 1, 0), config.max_bars - 1))
        out["pitch_class"].append(0 if pitch is None else pitch % 12 + 1)
        out["octave"].append(0 if pitch is None else min(pitch // 12, NUM_OCTAVES - 1) + 1)
    return out


@pytest.mark.parametrize("limits", [{}, {"max_bars": 6, "num_positions_in_bar": 12}], ids=["default", "clamped"])
def test_music_attributes_match_slow_reference(tokenizer, piece_ids, limits):
    embeddings = make_lm(tokenizer, **limits).model.embeddings
    config = embeddings.config
    refs = {}
    for name, ids in piece_ids.items():
        attrs = embeddings.music_attributes(torch.tensor([ids]))
        refs[name] = reference_attributes(tokenizer.convert_ids_to_tokens(ids), config)
        for key, expected in refs[name].items():
            assert attrs[key][0].tolist() == expected, f"{name}: {key}"
    # the pieces exercise what they should: several programs, drums, many bars and positions, pitches
    instruments = set(refs["band"]["instrument"]) | set(refs["palestrina"]["instrument"])
    assert {129, 74, 41, 1, 54} <= instruments
    assert max(refs["palestrina"]["bar_index"]) >= min(config.max_bars - 1, 20)
    assert len(set(refs["chorale"]["bar_position"])) > 4 and len(set(refs["chorale"]["octave"])) > 2

    # a batch with right and with left padding gives the same attributes at the real positions
    seqs = [piece_ids["band"][:300], piece_ids["chorale"][:171], piece_ids["palestrina"][:250]]
    width = 300
    pad = tokenizer.pad_token_id
    for side in ("right", "left"):
        rows = [s + [pad] * (width - len(s)) if side == "right" else [pad] * (width - len(s)) + s for s in seqs]
        attrs = embeddings.music_attributes(torch.tensor(rows))
        for row, seq in enumerate(seqs):
            real = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
            expected = reference_attributes(tokenizer.convert_ids_to_tokens(seq), config)
            for key in expected:
                assert attrs[key][row, real].tolist() == expected[key], f"{side} padding, row {row}: {key}"


def test_embeddings_with_cache_equal_full_history(tokenizer, piece_ids):
    """The embedding layer's output (carried attributes included) is the same token by token with the cache."""
    model = make_lm(tokenizer, "layernorm", 3, "learned")
    ids = window_batch(piece_ids, 60)
    captured = []
    hook = model.model.embeddings.register_forward_hook(lambda mod, args, out: captured.append(out[0]))
    try:
        with torch.no_grad():
            model(ids, use_cache=False)
            full = captured.pop()
            cache = None
            for t in range(ids.shape[1]):
                cache = model(ids[:, t:t + 1], cache=cache, use_cache=True).cache
    finally:
        hook.remove()
    torch.testing.assert_close(torch.cat(captured, 1), full, atol=1e-6, rtol=0)


# ----- 8. classification and piece embeddings -------------------------------------------------------
def test_sequence_classification_on_padded_batch(tokenizer, piece_ids):
    torch.manual_seed(0)
    model = MusicForSequenceClassification(tiny_config(tokenizer, num_labels=3, conv_kernel_size=3)).eval()
    seqs = [piece_ids["chorale"][:64], piece_ids["palestrina"][:40], piece_ids["band"][:25]]
    pad = tokenizer.pad_token_id
    ids = torch.tensor([s + [pad] * (64 - len(s)) for s in seqs])
    mask = (ids != pad).long()
    labels = torch.tensor([0, 2, 1])
    out = model(ids, attention_mask=mask, labels=labels, genre_ids=torch.tensor([1, 2, 3]))
    assert out.logits.shape == (3, 3) and torch.isfinite(out.loss) and out.loss.ndim == 0
    out.loss.backward()
    assert model.score.weight.grad is not None and model.score.weight.grad.abs().sum() > 0
    with torch.no_grad():  # pooled at the last real token: a padded row equals the sequence alone
        alone = model(torch.tensor([seqs[2]]), genre_ids=torch.tensor([3])).logits
    torch.testing.assert_close(out.logits[2:3].detach(), alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head", ["causal_lm", "classifier"])
def test_embed_piece_returns_unit_vectors(tokenizer, piece_ids, head):
    if head == "causal_lm":
        model = make_lm(tokenizer, "batchnorm", 3, "rotary")
    else:
        torch.manual_seed(0)
        model = randomize_(MusicForSequenceClassification(tiny_config(tokenizer, num_labels=3))).eval()
    pad = tokenizer.pad_token_id
    a, b = piece_ids["chorale"][:64], piece_ids["palestrina"][:50]
    ids = torch.tensor([a, b + [pad] * 14, a])
    mask = (ids != pad).long()
    emb = model.embed_piece(ids, attention_mask=mask)
    assert emb.shape == (3, model.config.hidden_size)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=0)
    assert cosine(emb[0], emb[2]) == pytest.approx(1.0, abs=1e-6)
    assert cosine(emb[0], emb[1]) < 0.999
    torch.testing.assert_close(model.embed_piece(torch.tensor([b]))[0], emb[1], atol=1e-5, rtol=0)


# ----- 9. gradient checkpointing --------------------------------------------------------------------
@pytest.mark.parametrize("norm,conv,position", [("layernorm", 0, "learned"), ("batchnorm", 3, "rotary")])
def test_gradient_checkpointing_gives_same_gradients(tokenizer, piece_ids, norm, conv, position):
    model = make_lm(tokenizer, norm, conv, position).train()
    ids = window_batch(piece_ids, 48)
    calls = []
    model.model.layers[0].attn.register_forward_hook(lambda *args: calls.append(1))

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        calls.clear()
        model(ids, labels=ids, genre_ids=torch.tensor([1, 2])).loss.backward()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    assert len(calls) == 1
    # transformers 5.24 renames it activation_checkpointing_enable (the old name warns)
    getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    checkpointed = gradients()
    assert len(calls) == 2, "the layer was not recomputed in backward: checkpointing is not active"
    assert plain.keys() == checkpointed.keys() and len(plain) == len(list(model.parameters()))
    for key in plain:
        torch.testing.assert_close(checkpointed[key], plain[key], atol=1e-6, rtol=1e-5, msg=key)


# ----- 10. overfit real pieces ----------------------------------------------------------------------
def test_tiny_model_overfits_real_pieces_and_generates_music(tokenizer, piece_ids):
    torch.manual_seed(0)
    config = tiny_config(tokenizer, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                         conv_kernel_size=3, max_position_embeddings=256)
    model = MusicForCausalLM(config).train()
    length = 128
    windows, genres = [], []
    for genre, name in enumerate(("chorale", "palestrina"), start=1):
        ids = piece_ids[name][:640]
        for start in range(0, len(ids) - length + 1, 64):
            windows.append(ids[start:start + length])
            genres.append(genre)
    data, genre_data = torch.tensor(windows), torch.tensor(genres)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(250):  # (150 left one initialisation in eight a token off the piece, and greedy then drifts)
        pick = torch.randint(0, len(data), (8,), generator=gen)
        loss = model(data[pick], labels=data[pick], genre_ids=genre_data[pick]).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    start, end = losses[0], sum(losses[-10:]) / 10
    assert end < 0.4 * start, f"loss {start:.3f} -> {end:.3f}"

    model.eval()
    prompt = torch.tensor([piece_ids["chorale"][:64]])
    out = model.generate(prompt, genre_ids=torch.tensor([1]), max_new_tokens=64, do_sample=False,
                         eos_token_id=None)
    prompt_notes = tokenizer.decode_midi(prompt[0]).note_num()
    score = tokenizer.decode_midi(out[0])
    assert isinstance(score, symusic.Score) and score.note_num() > prompt_notes > 0
    # it learned the piece: the greedy continuation follows the chorale for most tokens
    truth = piece_ids["chorale"][64:128]
    agree = sum(int(x == y) for x, y in zip(out[0, 64:].tolist(), truth)) / len(truth)
    assert agree > 0.5, f"greedy continuation agrees with the piece on {agree:.0%} of tokens"
    # and its grammar-constrained samples decode whole: notes, no ill-placed token, nothing dropped
    from music_hf.generation import generate_music
    for piece in generate_music(model, tokenizer, genre=1, max_new_tokens=96, num_return_sequences=2, seed=0):
        body = piece.ids[1:]
        notes = sum(tokenizer.music_attributes()["note_count"][i] for i in body)
        assert piece.score.note_num() == notes > 0
        assert tokenizer.grammar_errors(body) == 0.0


# ----- 10. the transformers contract: what users of from_pretrained, generate, Trainer and PEFT rely on --------
def test_past_key_values_name_is_accepted_with_a_deprecation_warning(tokenizer, piece_ids):
    """`past_key_values=` (the pre-5.24 name in most user code) is the cache, with a FutureWarning; never ignored."""
    model = make_lm(tokenizer, conv=3)
    ids = window_batch(piece_ids, 40)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        first = model(ids[:, :17], use_cache=True)
        with pytest.warns(FutureWarning, match="past_key_values"):
            rest = model(ids[:, 17:], past_key_values=first.cache, use_cache=True)
    torch.testing.assert_close(rest.logits, full[:, 17:], atol=1e-5, rtol=1e-5)


def test_attention_weights_in_every_output_and_in_assisted_decoding(tokenizer, piece_ids):
    model = make_lm(tokenizer, conv=3)
    model.set_attn_implementation("eager")
    ids = window_batch(piece_ids, 24)
    with torch.no_grad():
        out = model(ids, output_attentions=True)
        base = model.model(ids, output_attentions=True)
        clf = MusicForSequenceClassification(model.config).eval()
        clf.set_attn_implementation("eager")
        clf_out = clf(ids, output_attentions=True)
    for attentions in (out.attentions, base.attentions, clf_out.attentions):
        assert len(attentions) == model.config.num_hidden_layers
        assert attentions[0].shape == (2, model.config.num_attention_heads, 24, 24)
        torch.testing.assert_close(attentions[0].sum(-1), torch.ones(2, model.config.num_attention_heads, 24))
        assert torch.all(attentions[0].triu(1) == 0)  # causal
    assistant = make_lm(tokenizer, seed=5)
    assistant.set_attn_implementation("eager")
    prompt = ids[:1, :12]
    for extra in ({"assistant_model": assistant}, {"prompt_lookup_num_tokens": 3}):
        gen = model.generate(prompt, max_new_tokens=10, do_sample=False, output_attentions=True,
                             return_dict_in_generate=True, pad_token_id=0, **extra)
        plain = model.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=0)
        assert torch.equal(gen.sequences, plain), extra  # drafts verified: the same greedy tokens
        assert gen.attentions and gen.attentions[0][0].shape[1] == model.config.num_attention_heads


def test_config_output_hidden_states_and_return_dict(tokenizer, piece_ids):
    model = make_lm(tokenizer)
    ids = window_batch(piece_ids, 16)
    with torch.no_grad():
        model.config.output_hidden_states = True
        out = model(ids)
        assert len(out.hidden_states) == model.config.num_hidden_layers + 1
        torch.testing.assert_close(out.hidden_states[-1], model.model(ids).last_hidden_state)
        model.config.output_hidden_states = False
        assert model(ids).hidden_states is None
        model.config.return_dict = False
        as_tuple = model(ids)
        assert isinstance(as_tuple, tuple)
        torch.testing.assert_close(as_tuple[0], out.logits)
        clf = MusicForSequenceClassification(model.config).eval()
        assert isinstance(clf(ids), tuple)  # the classifier head too
        model.config.return_dict = True
        assert isinstance(model(ids, return_dict=False), tuple)


def test_added_special_token_and_resize_round_trip(tokenizer, piece_ids, tmp_path):
    """A token added to the tokenizer, the model resized (padded to a multiple of 64): the new id runs, gets neutral
    attributes, and model + tokenizer save and reload consistently."""
    tok = MusicTokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<infill>"]})
    new_id = tok.convert_tokens_to_ids("<infill>")
    assert new_id == len(tokenizer)
    model = make_lm(tokenizer)
    model.resize_token_embeddings(len(tok), pad_to_multiple_of=64)
    size = model.config.vocab_size
    assert size % 64 == 0 and size > new_id
    for name in ("kind", "pitch", "program_set", "position_set", "bar_count", "note_count"):
        table = getattr(model.config, "token_" + name)
        assert len(table) == size and table[:len(tokenizer)] == getattr(make_lm(tokenizer).config, "token_" + name)
    assert model.config.token_pitch[new_id] == -1 and model.config.token_bar_count[new_id] == 0
    ids = torch.tensor([piece_ids["chorale"][:20] + [new_id] + piece_ids["chorale"][20:30]])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, 31, size)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    reloaded_tok = MusicTokenizer.from_pretrained(tmp_path)
    assert reloaded_tok.convert_tokens_to_ids("<infill>") == new_id
    assert reloaded_tok(" ".join(tok.convert_ids_to_tokens(ids[0].tolist())))["input_ids"][1:-1] == ids[0].tolist()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, logits)
    assert MusicConfig.from_tokenizer(tok).vocab_size == len(tok)  # a config for the grown tokenizer too


def test_inputs_embeds_with_attribute_ids_in_forward_and_generate(tokenizer, piece_ids):
    model = make_lm(tokenizer, conv=3)
    ids = window_batch(piece_ids, 20)
    embeds = model.get_input_embeddings()(ids)
    with torch.no_grad():
        expected = model(ids).logits
        torch.testing.assert_close(model(inputs_embeds=embeds, attribute_ids=ids).logits, expected)
        torch.testing.assert_close(model(input_ids=ids, inputs_embeds=embeds).logits, expected)
        with pytest.raises(ValueError, match="attribute_ids"):
            model(inputs_embeds=embeds)
    plain = model.generate(ids[:1], max_new_tokens=8, do_sample=False, pad_token_id=0)
    from_embeds = model.generate(inputs_embeds=embeds[:1], attribute_ids=ids[:1], max_new_tokens=8,
                                 do_sample=False, pad_token_id=0)
    assert from_embeds[0].tolist() == plain[0, ids.shape[1]:].tolist()
    # soft prompts (PEFT prompt tuning) come first and carry no attributes: attribute_ids align to the right
    soft = torch.randn(2, 4, model.config.hidden_size)
    with torch.no_grad():
        with_soft = model(inputs_embeds=torch.cat([soft, embeds], 1), attribute_ids=ids).logits
        padded = torch.cat([torch.full((2, 4), tokenizer.pad_token_id), ids], 1)
        torch.testing.assert_close(with_soft, model(inputs_embeds=torch.cat([soft, embeds], 1),
                                                    attribute_ids=padded).logits)


def test_peft_prompt_tuning_trains_with_attribute_ids(tokenizer, piece_ids):
    peft = pytest.importorskip("peft")
    model = make_lm(tokenizer)
    tuned = peft.get_peft_model(model, peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    ids = window_batch(piece_ids, 32)
    optimizer = torch.optim.AdamW([p for p in tuned.parameters() if p.requires_grad], lr=0.05)
    tuned.train()
    losses = []
    for _ in range(5):
        loss = tuned(input_ids=ids, labels=ids, attribute_ids=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("conv", [0, 3])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_sequences_restart_carried_attributes(tokenizer, piece_ids, conv, attn):
    """Padding-free packing (DataCollatorWithFlattening: pieces concatenated, position_ids restarting at 0): the
    second piece's logits are exactly those it gets alone: no instrument, bar position, bar index, conv input or
    attention leaks across the boundary. (As in transformers, packing is a cache-free, training-time format.)"""
    from transformers import DataCollatorWithFlattening

    model = make_lm(tokenizer, conv=conv)
    model.set_attn_implementation(attn)
    first, second = piece_ids["band"][:50], piece_ids["palestrina"][60:100]  # the second starts mid-piece
    batch = DataCollatorWithFlattening()([{"input_ids": first}, {"input_ids": second}])
    assert batch["position_ids"][0, len(first)] == 0
    with torch.no_grad():
        packed = model(batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        alone = [model(torch.tensor([seq])).logits for seq in (first, second)]
    torch.testing.assert_close(packed[:, :len(first)], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[:, len(first):], alone[1], atol=1e-5, rtol=1e-5)
    attrs = model.model.embeddings.music_attributes(batch["input_ids"], restart=batch["position_ids"] == 0)
    alone_attrs = model.model.embeddings.music_attributes(torch.tensor([second]))
    for key, value in alone_attrs.items():
        assert attrs[key][0, len(first):].tolist() == value[0].tolist(), key


def test_shift_labels_replace_labels_in_the_loss(tokenizer, piece_ids):
    model = make_lm(tokenizer)
    ids = window_batch(piece_ids, 30)
    labels = ids.clone()
    labels[:, :5] = -100
    shift = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:].contiguous()
    with torch.no_grad():
        expected = model(ids, labels=labels).loss
        torch.testing.assert_close(model(ids, shift_labels=shift).loss, expected)
        other = shift.clone()
        other[:, :10] = -100
        assert not torch.allclose(model(ids, labels=labels, shift_labels=other).loss, expected)


def test_cache_holds_fixed_size_state_per_layer(tokenizer, piece_ids):
    """One cache layer per block; the carried attributes and conv inputs keep the same size however long the
    history (only the attention keys/values grow)."""
    from transformers import DynamicCache

    model = make_lm(tokenizer, conv=3)
    ids = window_batch(piece_ids, 60)
    with torch.no_grad():
        cache = model(ids[:, :10], use_cache=True).cache
        shapes = [{i: tuple(s.shape) for i, s in layer.conv_states.items() if s is not None} for layer in cache.layers]
        for t in range(10, 60):
            cache = model(ids[:, t:t + 1], cache=cache, use_cache=True).cache
    assert len(cache) == model.config.num_hidden_layers
    assert [{i: tuple(s.shape) for i, s in layer.conv_states.items() if s is not None} for layer in cache.layers] \
        == shapes
    assert shapes[0] == {0: (2, 32, 2), 1: (2, 3, 1)} and shapes[1] == {0: (2, 32, 2)}
    assert cache.get_seq_length() == 60
    # an empty DynamicCache() made without the config (as tutorials do) works too
    with torch.no_grad():
        full = model(ids[:, :20], use_cache=False).logits
        user_cache = DynamicCache()
        model(ids[:, :12], cache=user_cache, use_cache=True)
        rest = model(ids[:, 12:20], cache=user_cache, use_cache=True).logits
    torch.testing.assert_close(rest, full[:, 12:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("conv", [0, 3])
def test_greedy_tokens_agree_cached_uncached_static_and_compiled(tokenizer, piece_ids, conv):
    from transformers import CompileConfig

    model = make_lm(tokenizer, conv=conv, position="rotary" if conv else "learned")
    prompt = torch.tensor([piece_ids["chorale"][:40]])
    kwargs = dict(max_new_tokens=24, do_sample=False, pad_token_id=0)
    dynamic = model.generate(prompt, **kwargs)
    assert torch.equal(model.generate(prompt, use_cache=False, **kwargs), dynamic)
    assert torch.equal(model.generate(prompt, cache_implementation="static", **kwargs), dynamic)
    compile_config = CompileConfig(fullgraph=True)
    compile_config._compile_all_devices = True  # generate compiles on accelerators only unless told
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = model.generate(prompt, cache_implementation="static", compile_config=compile_config, **kwargs)
    # the decoding steps ran compiled, all through one graph: the cache's shapes do not grow with the history
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert torch.equal(compiled, dynamic)


def test_genres_by_name_list_or_mapping_and_clear_errors(tokenizer, piece_ids):
    by_list = MusicConfig.from_tokenizer(tokenizer, genres=["chorale", "folk"])
    by_map = MusicConfig.from_tokenizer(tokenizer, id2genre={0: "unknown", 1: "chorale", 2: "folk"})
    assert by_list.id2genre == by_map.id2genre == {0: "unknown", 1: "chorale", 2: "folk"}
    with pytest.raises(ValueError, match=r"unknown genre 'jazz'.*chorale"):
        by_list.genre_id("jazz")
    with pytest.raises(ValueError, match="genre id 7"):
        by_list.genre_id(7)
    model = make_lm(tokenizer)
    ids = window_batch(piece_ids, 10)
    with pytest.raises(ValueError, match=r"genre_ids \[9\] outside this model's genres"):
        model(ids, genre_ids=torch.tensor([1, 9]))


# ----- 10. fill-in-the-middle: carried attributes at Infill_Start ------------------------------------------------
def first_bars(tokenizer: MusicTokenizer, ids: list[int], n: int, skip: int = 0) -> list[int]:
    """Bars skip..skip+n-1 of a piece (whole bars; from BOS when skip is 0)."""
    starts = [i for i, t in enumerate(ids) if tokenizer.token_table.bar_count[t]] + [len(ids)]
    return ids[0 if skip == 0 else starts[skip]:starts[skip + n]]


def fim_parts(tokenizer: MusicTokenizer, fim: list[int]) -> tuple[int, int]:
    """Positions of Infill_Start and Infill_End in a FIM sequence."""
    return fim.index(tokenizer.infill_ids["start"]), fim.index(tokenizer.infill_ids["end"])


@pytest.mark.parametrize("name,middle", [("band", (2, 4)), ("band", (0, 1)), ("band", (3, 6)),
                                         ("palestrina", (1, 5))])
def test_fim_middle_bars_get_the_attributes_of_the_original_order(tokenizer, piece_ids, name, middle):
    """Infill_Start takes the bar count, the program and the position back: the middle bars, placed after the
    suffix, get exactly the pitch class, octave, instrument, bar position and bar index they have in place; alone,
    packed after another piece (restart), and split at Infill_Start through the cache state."""
    from music_hf.data import fim_arrange

    embeddings = make_lm(tokenizer).model.embeddings
    original = first_bars(tokenizer, piece_ids[name], 6, skip=0 if name == "band" else 3)
    fim = fim_arrange(original, tokenizer, bars=middle)
    start, end = fim_parts(tokenizer, fim)
    bar_starts = [i for i, t in enumerate(original) if tokenizer.token_table.bar_count[t]] + [len(original)]
    a, b = bar_starts[middle[0]], bar_starts[middle[1]]
    assert fim[start + 1:end] == original[a:b]
    expected = embeddings.music_attributes(torch.tensor([original]))
    programs = {p for p in expected["instrument"][0, a:b].tolist()}
    assert name != "band" or len(programs) >= 3, "the middle should change instrument"
    alone = embeddings.music_attributes(torch.tensor([fim]))
    other = piece_ids["chorale"][:37]
    packed_ids = torch.tensor([other + fim])
    restart = torch.zeros_like(packed_ids, dtype=torch.bool)
    restart[0, len(other)] = True
    packed = embeddings.music_attributes(packed_ids, restart=restart)
    head = torch.tensor([fim[:start + 1]])
    state = torch.stack(embeddings.carried(head), dim=1)[..., -1]
    cached = embeddings.music_attributes(torch.tensor([fim[start + 1:]]), state=state)
    for key, value in expected.items():
        want = value[0, a:b].tolist()
        assert alone[key][0, start + 1:end].tolist() == want, key
        assert packed[key][0, len(other) + start + 1:len(other) + end].tolist() == want, f"packed: {key}"
        assert cached[key][0, :end - start - 1].tolist() == want, f"cached: {key}"
    # the suffix keeps its bar indices (a placeholder counts as a bar), and the placeholders take the middle's
    k = middle[1] - middle[0]
    suffix = slice(a + k, start)
    assert alone["bar_index"][0, suffix].tolist() == expected["bar_index"][0, b:].tolist()
    assert alone["bar_index"][0, a:a + k].tolist() == list(range(middle[0], middle[1]))
    assert alone["bar_position"][0, start] == 0  # no position at Infill_Start


@pytest.mark.parametrize("name,middle", [("band", (2, 4)), ("band", (0, 1)), ("palestrina", (1, 5))])
def test_spm_prefix_middle_and_suffix_get_the_attributes_of_the_original_order(tokenizer, piece_ids, name, middle):
    """The spm layout (placeholders for every bar before the suffix, suffix, Infill_Start, prefix, middle): the same
    carry rule gives the prefix and the middle bars exactly their attributes in place, alone and through the cache
    state, and the suffix its bar indices, positions and pitches; only the instrument of the suffix's tokens
    before its first Program token differs (what comes before it is not yet in the sequence)."""
    from music_hf.data import fim_arrange

    embeddings = make_lm(tokenizer).model.embeddings
    original = first_bars(tokenizer, piece_ids[name], 6, skip=0 if name == "band" else 3)
    fim = fim_arrange(original, tokenizer, bars=middle, order="spm")
    start, end = fim_parts(tokenizer, fim)
    bar_starts = [i for i, t in enumerate(original) if tokenizer.token_table.bar_count[t]] + [len(original)]
    h, b = bar_starts[0], bar_starts[middle[1]]
    assert fim[:h] == original[:h] and fim[h:h + middle[1]] == [tokenizer.infill_ids["bar"]] * middle[1]
    assert fim[start + 1:end] == original[h:b] and fim[h + middle[1]:start] == original[b:]
    expected = embeddings.music_attributes(torch.tensor([original]))
    alone = embeddings.music_attributes(torch.tensor([fim]))
    state = torch.stack(embeddings.carried(torch.tensor([fim[:start + 1]])), dim=1)[..., -1]
    cached = embeddings.music_attributes(torch.tensor([fim[start + 1:]]), state=state)
    for key, value in expected.items():
        want = value[0, h:b].tolist()
        assert alone[key][0, start + 1:end].tolist() == want, key
        assert cached[key][0, :end - start - 1].tolist() == want, f"cached: {key}"
        got, kept = alone[key][0, h + middle[1]:start], value[0, b:]
        if key == "instrument":
            first_program = next(i for i, t in enumerate(original[b:]) if tokenizer.token_table.program_set[t] >= 0)
            got, kept = got[first_program:], kept[first_program:]
        assert got.tolist() == kept.tolist(), f"suffix: {key}"


@pytest.mark.parametrize("norm,conv,position", [("layernorm", 3, "learned"), ("batchnorm", 0, "rotary")],
                         ids=["layernorm-conv3-learned", "batchnorm-conv0-rotary"])
def test_fim_sequences_stay_causal(tokenizer, piece_ids, norm, conv, position):
    """Changing token t of a FIM sequence (into or out of an infill token) changes nothing before t."""
    from music_hf.data import fim_arrange

    model = make_lm(tokenizer, norm, conv, position).train()
    infill = tokenizer.infill_ids
    rows = [fim_arrange(first_bars(tokenizer, piece_ids["band"], 3), tokenizer, bars=(1, 2)),
            fim_arrange(first_bars(tokenizer, piece_ids["palestrina"], 4, skip=2), tokenizer, bars=(0, 2))]
    width = min(len(r) for r in rows)
    ids = torch.tensor([r[:width] for r in rows])
    start, _ = fim_parts(tokenizer, rows[0])
    placeholder = rows[0].index(infill["bar"])
    assert start < width
    with torch.no_grad():
        base = model(ids, use_cache=False).logits
        for t, new in ((placeholder, infill["start"]), (placeholder, ids[0, placeholder + 3]),
                       (start, infill["bar"]), (start - 5, infill["start"]), (start + 2, infill["end"])):
            changed = ids.clone()
            changed[0, t] = new
            logits = model(changed, use_cache=False).logits
            torch.testing.assert_close(logits[:, :t], base[:, :t], atol=1e-6, rtol=0,
                                       msg=f"position < {t} saw token {t}")
            assert (logits[0, t:] - base[0, t:]).abs().max() > 1e-4


@pytest.mark.parametrize("norm,conv,position", [("layernorm", 3, "learned"), ("rmsnorm", 0, "rotary")],
                         ids=["layernorm-conv3-learned", "rmsnorm-conv0-rotary"])
def test_fim_cached_logits_equal_uncached(tokenizer, piece_ids, norm, conv, position):
    """One prefill through Infill_Start, then the middle bars token by token through the cache: the same logits as
    the whole FIM sequence in one forward."""
    from music_hf.data import fim_arrange

    model = make_lm(tokenizer, norm, conv, position)
    fim = fim_arrange(first_bars(tokenizer, piece_ids["band"], 4), tokenizer, bars=(1, 3))
    start, end = fim_parts(tokenizer, fim)
    ids = torch.tensor([fim])
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        out = model(ids[:, :start + 1], use_cache=True)
        steps, cache = [out.logits], out.cache
        for t in range(start + 1, end + 1):
            out = model(ids[:, t:t + 1], cache=cache, use_cache=True)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full[:, :end + 1], atol=1e-5, rtol=1e-5)
