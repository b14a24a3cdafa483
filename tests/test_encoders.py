"""Encoders in the extraction API, one tiny random-weight model per family, against direct forwards.

Each model is built with ``AutoModel.from_config`` from its real config class (2 layers,
width 64, 4 heads, 128 MLP neurons; ALBERT with two shared layers per group, ModernBERT with
a local window short enough to matter) and run with the project's tiny byte-level BPE tokenizer.  Expected values come
from the model itself: ``output_attentions`` / ``output_hidden_states`` of a direct eager
forward, and forward hooks on the MLP down projections named below (written here from each
family's module tree, not taken from :mod:`openmav.analysis.models`).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as tf

from openmav.analysis import models
from openmav.analysis.extractor import AttentionExtractor
from openmav.capture.hooks import attention_implementation
from openmav.errors import InputError
from openmav.testing import tiny_model, tiny_tokenizer

PROMPTS = ["The cat sat on the mat", "hello",
           "When Mary and John went to the store, John gave a drink to Mary."]
FAMILIES = ["bert", "roberta", "distilbert", "albert", "electra", "deberta-v2", "modernbert", "xlm-roberta", "mpnet"]
SIZES = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
             max_position_embeddings=512)
CONFIGS = {  # beyond SIZES, per family
    "distilbert": dict(dim=64, n_layers=2, n_heads=4, hidden_dim=128),
    "albert": dict(embedding_size=32, num_hidden_groups=1, inner_group_num=2),  # 2 x 2 layers, all one group
    "electra": dict(embedding_size=32),
    "modernbert": dict(local_attention=6),  # layer 1 is local: 3 tokens each side
}


def down_projections(model, family: str) -> list[torch.nn.Module]:
    """The MLP output projections of ``model``, once each (shared ALBERT layers: once in all)."""
    if family == "distilbert":
        return [layer.ffn.lin2 for layer in model.transformer.layer]
    if family == "albert":
        return [layer.ffn_output for group in model.encoder.albert_layer_groups for layer in group.albert_layers]
    if family == "modernbert":
        return [layer.mlp.Wo for layer in model.layers]
    return [layer.output.dense for layer in model.encoder.layer]


def tiny_config(family: str, vocab_size: int):
    """A config of the real class of ``family``: 2 layers, width 64, 4 heads, 128 MLP neurons."""
    config = tf.AutoConfig.for_model(family, vocab_size=vocab_size, **{**SIZES, **CONFIGS.get(family, {})})
    for attr in ("pad_token_id", "bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value >= vocab_size:  # ModernBERT's ids are beyond a tiny vocabulary
            setattr(config, attr, 0)
    return config


def build(family: str, seed: int = 0):
    tok = tiny_tokenizer()
    config = tiny_config(family, len(tok))
    torch.manual_seed(seed)
    model = tf.AutoModel.from_config(config)
    with torch.no_grad():  # random norm weights, so a missing norm cannot hide behind ones
        for name, param in model.named_parameters():
            if "norm" in name.lower():
                param.add_(0.1 * torch.randn_like(param))
    return model.eval(), tok


@pytest.fixture(scope="module")
def encoder():
    cache = {}

    def make(family: str):
        if family not in cache:
            model, tok = build(family)
            cache[family] = (model, tok, AttentionExtractor(model=model, tokenizer=tok, model_name=f"tiny-{family}"))
        return cache[family]

    return make


def direct(model, tok, prompt: str):
    """A plain eager forward of one prompt, and the input of every MLP down projection in call order."""
    ids = torch.tensor([tok(prompt)["input_ids"]])
    calls: list[torch.Tensor] = []
    family = model.config.model_type
    handles = [m.register_forward_pre_hook(lambda mod, args: calls.append(args[0][0].detach().clone()))
               for m in down_projections(model, family)]
    try:
        with torch.no_grad(), attention_implementation(model, "eager"):
            out = model(input_ids=ids, output_attentions=True, output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    return ids, out, calls


def expected_layers(model) -> int:
    cfg = model.config
    return cfg.num_hidden_layers * getattr(cfg, "inner_group_num", 1) if cfg.model_type == "albert" \
        else cfg.num_hidden_layers


@pytest.mark.parametrize("family", FAMILIES)
def test_matches_direct_forward(encoder, family):
    model, tok, ex = encoder(family)
    implementation = model.config._attn_implementation
    assert ex.is_encoder and ex.n_layers == expected_layers(model)
    for prompt in PROMPTS:
        res = ex.extract_activations(prompt)
        ids, out, _ = direct(model, tok, prompt)
        seq = ids.shape[1]
        assert res.token_ids.tolist() == ids[0].tolist() and len(res.tokens) == seq
        assert res.logits is None and res.last_logits is None and not res.causal
        assert len(res.attention) == len(out.attentions) == ex.n_layers
        for got, want in zip(res.attention, out.attentions):
            assert got.shape == (1, 4, seq, seq)
            np.testing.assert_allclose(got, want.numpy(), atol=1e-6)
            np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
        assert len(res.hidden_states) == ex.n_layers + 1
        # every entry is a block's output; transformers' last one has a final norm applied where the
        # model has one (ModernBERT), which the extractor keeps as its own field
        final = getattr(model, "final_norm", None)
        for got, want in zip(res.hidden_states[:-1], out.hidden_states[:-1]):
            np.testing.assert_allclose(got, want.numpy(), atol=1e-5)
        if final is None:
            assert res.final_norm is None
            np.testing.assert_allclose(res.hidden_states[-1], out.hidden_states[-1].numpy(), atol=1e-5)
        else:
            np.testing.assert_allclose(res.final_norm, out.hidden_states[-1].numpy(), atol=1e-5)
            assert not np.allclose(res.hidden_states[-1], res.final_norm, atol=1e-2)
    assert model.config._attn_implementation == implementation  # switched back after the forward
    # bidirectional: the first query attends to later keys
    assert res.attention[0][0, :, 0, 1:].sum() > 0.1


@pytest.mark.parametrize("family", FAMILIES)
def test_neurons_are_down_projection_input(encoder, family):
    model, tok, ex = encoder(family)
    prompt = PROMPTS[2]
    ids, out, calls = direct(model, tok, prompt)
    assert len(calls) == ex.n_layers  # one call per layer, shared modules included
    for layer in range(ex.n_layers):
        got = ex.get_neuron_activations(prompt, layer, residual=True)
        assert got.shape == (ids.shape[1], 128) == tuple(calls[layer].shape)
        np.testing.assert_allclose(got.mlp, calls[layer].numpy(), atol=1e-5)
        if layer < ex.n_layers - 1:  # transformers' last hidden state may have a final norm applied
            np.testing.assert_allclose(got.residual, out.hidden_states[layer + 1][0].numpy(), atol=1e-5)
        np.testing.assert_allclose(got.residual, ex.extract_activations(prompt).hidden_states[layer + 1][0], atol=1e-5)
    info = ex.get_model_info()
    assert info["kind"] == "encoder" and info["has_logits"] is False and info["mlp_size"] == 128
    assert info["num_layers"] == ex.n_layers and info["num_heads"] == 4 and info["hidden_size"] == 64


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_equals_one_at_a_time(encoder, family):
    model, tok, ex = encoder(family)
    for side in ("right", "left"):  # encoders are padded on the right whatever is asked
        batched = ex.compare_prompts(PROMPTS, batch_size=3, padding_side=side)
        for prompt, res in zip(PROMPTS, batched):
            alone = ex.extract_activations(prompt)
            _, _, calls = direct(model, tok, prompt)
            assert res.tokens == alone.tokens
            for a, b in zip(res.attention, alone.attention):
                np.testing.assert_allclose(a, b, atol=2e-6)
                np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5)  # no weight left on the padding
            for layer in range(ex.n_layers):
                np.testing.assert_allclose(res.mlp_mean[layer], calls[layer].mean(0).numpy(), atol=1e-5)


def test_residual_of_last_layer_is_block_output(encoder):
    """ModernBERT's last hidden state has its final norm applied; the residual is the block's output."""
    model, tok, ex = encoder("modernbert")
    ids, out, _ = direct(model, tok, PROMPTS[0])
    got = ex.get_neuron_activations(PROMPTS[0], -1, residual=True).residual
    np.testing.assert_allclose(model.final_norm(torch.from_numpy(got)).detach().numpy(),
                               out.hidden_states[-1][0].numpy(), atol=1e-5)


def test_encoder_or_causal():
    tok = tiny_tokenizer()
    bert = tiny_config("bert", len(tok))
    assert models.is_encoder_model(tf.AutoModel.from_config(bert))
    masked = tf.AutoModelForMaskedLM.from_config(bert).eval()
    assert models.is_encoder_model(masked)  # an LM head, but not used causally
    decoder_config = tiny_config("bert", len(tok))
    decoder_config.is_decoder = True
    assert not models.is_encoder_model(tf.BertLMHeadModel(decoder_config))
    assert not models.is_encoder_model(tiny_model("llama").model)
    # the masked LM runs as an encoder: its base model's attention, no logits
    ex = AttentionExtractor(model=masked, tokenizer=tok)
    res = ex.extract_activations(PROMPTS[0])
    _, out, _ = direct(masked.bert, tok, PROMPTS[0])
    assert ex.is_encoder and res.logits is None
    for got, want in zip(res.attention, out.attentions):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-6)


def test_causal_objects_go_to_wrap_model(monkeypatch):
    tok = tiny_tokenizer()
    seen = []

    def fake_wrap(model, tokenizer, name="model", device=None):
        seen.append(model)
        raise RuntimeError("wrapped")

    monkeypatch.setattr(models, "wrap_model", fake_wrap)
    config = tiny_config("bert", len(tok))
    config.is_decoder = True
    for model in (tf.BertLMHeadModel(config),
                  tiny_model("llama").model):
        with pytest.raises(RuntimeError, match="wrapped"):
            AttentionExtractor(model=model, tokenizer=tok)
        assert seen[-1] is model


def test_directory_loads_as_encoder(encoder, tmp_path):
    model, tok, ex = encoder("electra")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = AttentionExtractor(str(tmp_path))
    assert loaded.is_encoder and type(loaded.model).__name__ == "ElectraModel"
    a, b = loaded.extract_activations(PROMPTS[0]), ex.extract_activations(PROMPTS[0])
    for x, y in zip(a.attention, b.attention):
        np.testing.assert_allclose(x, y, atol=1e-6)


def test_roberta_context_counts_the_position_offset(encoder):
    """RoBERTa-style positions start at pad_token_id + 1: 512 positions hold 510 tokens."""
    model, tok, ex = encoder("roberta")
    limit = ex.handle.context_length
    assert limit == model.config.max_position_embeddings - model.config.pad_token_id - 1
    text = "one two three four five six seven eight nine ten " * 60
    ids = tok(text)["input_ids"]
    fits = tok.decode(ids[:limit])
    assert len(tok(fits)["input_ids"]) == limit
    assert len(ex.extract_activations(fits).tokens) == limit
    with pytest.raises(InputError, match=f"valid prompt lengths are 1..{limit}"):
        ex.extract_activations(text)
