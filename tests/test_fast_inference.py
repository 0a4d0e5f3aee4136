"""The fast CPU backends of `music_hf.fast_inference`: ONNX Runtime gives the same greedy tokens as PyTorch (and
the same samples for a seed), int8 changes the NLL of held-out windows by under 1 %, both work through
`generate_music` with the grammar constraint, and an unknown backend name is a clear error. Speed is measured by
`scripts/bench.py`, not here."""

from __future__ import annotations

import pytest
import torch

from music_hf import MusicConfig, MusicForCausalLM, MusicTokenizer
from music_hf.fast_inference import BACKENDS, available_backends, check_backend, default_backend, fast_model
from music_hf.generation import MusicGrammarLogitsProcessor, generate_music

pytestmark = pytest.mark.usefixtures("one_torch_thread")
needs_onnx = pytest.mark.skipif("onnx" not in available_backends(),
                                reason="onnxruntime and onnx not installed (pip install 'music-hf[fast]')")


def tiny_model(tokenizer: MusicTokenizer, seed: int = 0, **settings) -> MusicForCausalLM:
    torch.manual_seed(seed)
    settings = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                "conv_kernel_size": 4, "max_position_embeddings": 256, **settings}
    config = MusicConfig.from_tokenizer(tokenizer, genres=["chorale", "folk"], **settings)
    return MusicForCausalLM(config).eval()


def test_unknown_backend_is_a_clear_error(tokenizer):
    with pytest.raises(ValueError, match=r"unknown backend 'tensorrt': choose one of 'torch', 'onnx'"):
        check_backend("tensorrt")
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        generate_music(tiny_model(tokenizer), tokenizer, max_new_tokens=4, backend="gpu")
    assert check_backend("torch") == "torch" and "torch" in available_backends() and "torch" in BACKENDS


@pytest.mark.parametrize("norm,conv,position", [("layernorm", 4, "learned"), ("rmsnorm", 4, "rotary"),
                                                ("batchnorm", 1, "learned")])
def test_torch_backend_lean_loop_gives_model_generate_tokens(tokenizer, piece_ids, norm, conv, position):
    """backend "torch" (generate_music's default): the PyTorch model's step in the lean loop, the same tokens as
    transformers' loop (`model.generate`) greedy and sampled, with the grammar, two rows, guidance and a returned
    cache; what the loop does not cover (beams, a hook on the model, other model inputs) goes to transformers'."""
    model = tiny_model(tokenizer, seed=4, norm_type=norm, conv_kernel_size=conv, position_embedding_type=position)
    lean = fast_model(model, "torch")
    assert lean is fast_model(model, "torch") and lean is not model and type(lean).__name__ == "FastMusicForCausalLM"
    # a generation config assigned later is the copy's too
    model.generation_config = type(model.generation_config)(**model.generation_config.to_dict())
    assert fast_model(model, "torch").generation_config is model.generation_config
    prompt = torch.tensor([piece_ids[0][:20]])
    kwargs = dict(attention_mask=torch.ones_like(prompt), genre_ids=torch.tensor([1]), max_new_tokens=64,
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                  logits_processor=[MusicGrammarLogitsProcessor(tokenizer)])
    steps = []
    original = type(model.model)._decode_step

    def counted(self, *args, **kw):
        steps.append(1)
        return original(self, *args, **kw)
    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(model.model), "_decode_step", counted)
        assert torch.equal(lean.generate(prompt, do_sample=False, **kwargs),
                           model.generate(prompt, do_sample=False, **kwargs))
        assert len(steps) >= 2 * 60  # both loops ran the short step (transformers' through forward)
        for seed in (0, 1):
            torch.manual_seed(seed)
            sampled = lean.generate(prompt, do_sample=True, top_p=0.9, num_return_sequences=2, **kwargs)
            torch.manual_seed(seed)
            assert torch.equal(sampled, model.generate(prompt, do_sample=True, top_p=0.9, num_return_sequences=2,
                                                       **kwargs))
        out = lean.generate(prompt, do_sample=False, return_dict_in_generate=True, output_scores=True, **kwargs)
        assert out.cache.get_seq_length() == out.sequences.shape[1] - 1 and len(out.scores) == 64
        # a hook on the model (the lean loop would go around its forward): transformers' loop, the hook runs
        calls = []
        hook = model.register_forward_hook(lambda *_: calls.append(1))
        try:
            assert torch.equal(lean.generate(prompt, do_sample=False, **kwargs), out.sequences)
        finally:
            hook.remove()
        assert len(calls) == 64
    # through generate_music, with classifier-free guidance (its unconditional rows: the model itself)
    settings = dict(seed=3, guidance_scale=2.0, genre="folk", max_new_tokens=48)
    lean_pieces = generate_music(model, tokenizer, **settings)
    with pytest.MonkeyPatch.context() as patch:  # transformers' loop: the model as it is
        patch.setattr("music_hf.fast_inference.fast_model", lambda m, backend="torch": m)
        plain_pieces = generate_music(model, tokenizer, **settings)
    assert [p.ids for p in lean_pieces] == [p.ids for p in plain_pieces]
    assert len(lean_pieces[0].ids) > lean_pieces[0].prompt_length


@needs_onnx
@pytest.mark.parametrize("norm,conv,position", [("layernorm", 4, "learned"), ("rmsnorm", 0, "rotary"),
                                                ("batchnorm", 1, "learned")])
def test_onnx_greedy_tokens_equal_torch(tokenizer, piece_ids, norm, conv, position):
    model = tiny_model(tokenizer, norm_type=norm, conv_kernel_size=conv, position_embedding_type=position)
    fast = fast_model(model, "onnx")
    assert fast is fast_model(model, "onnx")  # one export per model and weights
    prompt = torch.tensor([piece_ids[0][:20]])
    kwargs = dict(attention_mask=torch.ones_like(prompt), genre_ids=torch.tensor([1]), max_new_tokens=80,
                  min_new_tokens=80, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        expected = model.generate(prompt, **kwargs)
        assert torch.equal(fast.generate(prompt, **kwargs), expected)
        # two rows decode together; beam search falls back to the PyTorch loop
        two = dict(kwargs, attention_mask=torch.ones(2, prompt.shape[1], dtype=torch.long),
                   genre_ids=torch.tensor([1, 0]))
        assert torch.equal(fast.generate(prompt.repeat(2, 1), **two), model.generate(prompt.repeat(2, 1), **two))
        beams = dict(kwargs, num_beams=2, max_new_tokens=12, min_new_tokens=12)
        assert torch.equal(fast.generate(prompt, **beams), model.generate(prompt, **beams))


@needs_onnx
def test_onnx_through_generate_music_with_grammar(tokenizer):
    model = tiny_model(tokenizer, seed=1)
    settings = dict(genre="folk", max_new_tokens=96)
    greedy = {b: generate_music(model, tokenizer, do_sample=False, backend=b, **settings) for b in ("torch", "onnx")}
    sampled = {b: generate_music(model, tokenizer, seed=7, temperature=1.0, top_p=0.95, num_return_sequences=2,
                                 backend=b, **settings) for b in ("torch", "onnx")}
    # classifier-free guidance: transformers' processor runs the unconditional rows through the model itself
    guided = {b: generate_music(model, tokenizer, seed=3, guidance_scale=2.0, backend=b, **settings)
              for b in ("torch", "onnx")}
    for pieces in (greedy, sampled, guided):
        assert [p.ids for p in pieces["onnx"]] == [p.ids for p in pieces["torch"]]
    grammar = MusicGrammarLogitsProcessor(tokenizer)
    for piece in greedy["onnx"] + sampled["onnx"]:  # every generated token was allowed by the grammar
        ids = torch.tensor([piece.ids])
        for t in range(piece.prompt_length, len(piece.ids)):
            assert grammar.allowed_mask(ids[:, :t])[0, piece.ids[t]], (t, tokenizer.convert_ids_to_tokens(piece.ids))
    assert default_backend(model) == "onnx"
    # a forward hook on the model: the session would skip it, so the PyTorch loop runs (and the hook with it)
    calls = []
    hook = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        hooked = generate_music(model, tokenizer, do_sample=False, backend="onnx", **settings)
    finally:
        hook.remove()
    assert len(calls) >= len(hooked[0].ids) - hooked[0].prompt_length - 1
    assert [p.ids for p in hooked] == [p.ids for p in greedy["torch"]]


@needs_onnx
def test_int8_nll_change_on_held_out_windows_under_one_percent(tokenizer, piece_ids):
    from music_hf.fast_inference import sequence_nll

    model = tiny_model(tokenizer, seed=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)  # a few steps: probabilities far from uniform
    batch = torch.tensor([ids[:96] for ids in piece_ids[:2]])
    model.train()
    for _ in range(30):
        model(batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    windows = [ids[96:224] for ids in piece_ids[2:4]]  # windows the model did not train on
    windows = [[tokenizer.bos_token_id] + w for w in windows]
    with torch.no_grad():
        exact = [sequence_nll(model, w, "torch") for w in windows]
        onnx = [sequence_nll(model, w, "onnx") for w in windows]
        int8 = [sequence_nll(model, w, "onnx-int8") for w in windows]
    for e, o, q in zip(exact, onnx, int8):
        assert abs(o - e) < 1e-4 * e, (e, o)
        assert abs(q - e) < 0.01 * e, (e, q)
    # the weights changed after the first export: a new session follows them
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)
        assert abs(sequence_nll(model, windows[0], "onnx") - sequence_nll(model, windows[0], "torch")) < 1e-3


@pytest.fixture(scope="module")
def piece_ids(real_midi_paths) -> list[list[int]]:
    tokenizer = MusicTokenizer()
    pieces = [tokenizer(p)["input_ids"] for p in real_midi_paths]
    return [ids for ids in pieces if len(ids) >= 240]


def test_one_row_stopping_checks_agree_with_transformers_criteria():
    """The lean loop's Python checks for one row (`_python_stops`) say what StoppingCriteriaList says, for the
    criteria generate builds (length, EOS ids, time); any other criterion keeps transformers' call."""
    import time

    from transformers.generation.stopping_criteria import (EosTokenCriteria, MaxLengthCriteria, MaxTimeCriteria,
                                                            StoppingCriteria, StoppingCriteriaList)

    from music_hf.fast_inference import _python_stops

    criteria = StoppingCriteriaList([MaxLengthCriteria(12), EosTokenCriteria([2, 5]),
                                     MaxTimeCriteria(60.0)])
    stop = _python_stops(criteria)
    for length in (3, 11, 12, 13):
        for token in (1, 2, 5, 7):
            ids = torch.tensor([[9] * (length - 1) + [token]])
            assert stop(length, token) == bool(criteria(ids, None)[0]), (length, token)
    late = StoppingCriteriaList([MaxTimeCriteria(0.5, initial_timestamp=time.time() - 1)])
    assert _python_stops(late)(3, 1) and bool(late(torch.tensor([[1, 1, 1]]), None)[0])

    class Custom(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.zeros(len(input_ids), dtype=torch.bool)
    assert _python_stops(StoppingCriteriaList([MaxLengthCriteria(12), Custom()])) is None
