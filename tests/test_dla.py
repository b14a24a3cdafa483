"""Direct logit attribution: the parts sum to the logit, and a head's share equals a hand computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from openmav.errors import InputError
from openmav.interventions.attribution import FrozenNorm, direct_logit_attribution

PROMPT = "When Mary and John went to the store, John gave a drink to"


def ids_of(lm, text=PROMPT):
    return lm.tokenizer(text, return_tensors="pt").input_ids


def model_logits(lm, ids):
    with torch.no_grad():
        return lm.model(input_ids=ids, use_cache=False).logits[0].double()


def head_inputs(lm, ids):
    """The model's logits, and (by the test's own hooks) each layer's o_proj input ``{layer: [pos, H*d]}`` and
    the final norm's input ``"x"``, in double."""
    p, seen = lm.parts, {}
    hooks = [p.o_proj[i].register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, a[0][0].double()))
             for i in range(p.n_layers)]
    hooks.append(p.final_norm.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0][0].double())))
    try:
        logits = model_logits(lm, ids)
    finally:
        for h in hooks:
            h.remove()
    return seen, logits


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3", "gpt_neox", "qwen2"])
def test_heads_and_other_parts_sum_to_the_logit(tiny, family):
    """llama and qwen2 (RMSNorm), gpt2 (LayerNorm, Conv1D projections, biases), gemma3 (a norm after o_proj),
    gpt_neox (parallel attention and MLP): every head plus every other part is the model's logit, 1e-4."""
    lm = tiny(family)
    ids = ids_of(lm)
    logits = model_logits(lm, ids)
    for position in (ids.shape[1] - 1, 4):
        for token in (int(logits[position].argmax()), 7, 311):
            dla = direct_logit_attribution(lm, ids, token, position)
            assert dla.logit == pytest.approx(float(logits[position, token]), abs=1e-6)
            assert abs(dla.total - float(logits[position, token])) < 1e-4
            assert dla.error < 1e-4
            assert np.isfinite(dla.heads).all() and np.abs(dla.heads).max() > 1e-4
            kinds = {c["kind"] for c in dla.components}
            assert {"embedding", "mlp", "attention_bias", "final_bias"} <= kinds
            n_mlp = sum(c["kind"] == "mlp" for c in dla.components)
            assert n_mlp == lm.parts.n_layers


def test_a_head_share_by_hand_llama(tiny):
    """Llama: W_U[t] . (g / rms(x) * (W_O[:, head] z_head)), the final RMSNorm's scale from the clean run."""
    lm = tiny("llama")
    ids = ids_of(lm)
    p, d = lm.parts, lm.parts.head_dim
    seen, logits = head_inputs(lm, ids)
    pos, token = ids.shape[1] - 1, 42
    x = seen["x"][pos]
    rms = torch.sqrt(x.pow(2).mean() + p.final_norm.variance_epsilon)
    gain = p.final_norm.weight.detach().double() / rms
    w_u = lm.model.lm_head.weight[token].detach().double()
    dla = direct_logit_attribution(lm, ids, token, pos)
    for layer in range(p.n_layers):
        for head in range(p.n_heads):
            cols = slice(head * d, (head + 1) * d)
            out = p.o_proj[layer].weight.detach().double()[:, cols] @ seen[layer][pos, cols]
            assert dla.heads[layer, head] == pytest.approx(float(w_u @ (gain * out)), abs=1e-6)
    assert dla.total == pytest.approx(float(logits[pos, token]), abs=1e-5)


def test_a_head_share_by_hand_gpt2(tiny):
    """GPT-2: W_U[t] . (g / sigma * center(c_proj slice of z)); LayerNorm centres, the frozen sigma from the run."""
    lm = tiny("gpt2")
    ids = ids_of(lm)
    p, d = lm.parts, lm.parts.head_dim
    seen, logits = head_inputs(lm, ids)
    pos, token = 6, 99
    x = seen["x"][pos]
    sigma = torch.sqrt(x.var(unbiased=False) + p.final_norm.eps)
    w_u = lm.model.lm_head.weight[token].detach().double()
    dla = direct_logit_attribution(lm, ids, token, pos)
    for layer in range(p.n_layers):
        w_o = p.o_proj[layer].weight.detach().double()  # Conv1D: [in, out]
        for head in range(p.n_heads):
            out = seen[layer][pos, head * d:(head + 1) * d] @ w_o[head * d:(head + 1) * d]
            want = float(w_u @ (p.final_norm.weight.detach().double() * (out - out.mean()) / sigma))
            assert dla.heads[layer, head] == pytest.approx(want, abs=1e-6)
    bias = next(c for c in dla.components if c["kind"] == "final_bias")["value"]
    assert bias == pytest.approx(float(w_u @ p.final_norm.bias.detach().double()), abs=1e-6)  # lm_head has no bias
    assert dla.total == pytest.approx(float(logits[pos, token]), abs=1e-5)


def test_hybrid_layers_are_one_part_and_their_heads_nan(tiny):
    """A hybrid (Jamba: one attention layer, one Mamba layer): the mixer is a part of its own, its heads NaN."""
    lm = tiny("jamba")
    parts = lm.parts
    assert 0 < len(parts.attention_layers) < parts.n_layers
    ids = ids_of(lm)
    logits = model_logits(lm, ids)
    dla = direct_logit_attribution(lm, ids, 5)
    assert abs(dla.total - float(logits[-1, 5])) < 1e-4
    for layer in range(parts.n_layers):
        assert np.isnan(dla.heads[layer]).all() == (layer not in parts.attention_layers)
    assert any(c["kind"] == "mixer" for c in dla.components)
    assert all(v is None for layer in range(parts.n_layers) if layer not in parts.attention_layers
               for v in dla.to_dict()["heads"][layer])


def test_smollm2_sums_to_the_logit(smollm2):
    lm = smollm2
    ids = ids_of(lm)
    mary = lm.tokenizer(" Mary", add_special_tokens=False).input_ids[0]
    dla = direct_logit_attribution(lm, ids, mary)
    assert dla.error < 1e-4 and dla.logit > 5
    assert abs(dla.total - dla.logit) < 1e-4


def test_frozen_norm_fits_layernorm_and_rmsnorm():
    torch.manual_seed(0)
    x = torch.randn(16, dtype=torch.float64)
    ln = torch.nn.LayerNorm(16).double()
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-1, 1)
    frozen = FrozenNorm.fit(ln, x, ln(x).detach(), "a LayerNorm")
    assert frozen.centered
    parts = torch.randn(3, 16, dtype=torch.float64)
    parts[2] = x - parts[:2].sum(0)
    torch.testing.assert_close(frozen.linear(parts).sum(0) + frozen.bias, ln(x).detach())
    rms = torch.nn.RMSNorm(16, eps=1e-6).double()
    with torch.no_grad():
        rms.weight.uniform_(0.5, 1.5)
    frozen = FrozenNorm.fit(rms, x, rms(x).detach(), "an RMSNorm")
    assert not frozen.centered and float(frozen.bias.abs().max()) == 0
    torch.testing.assert_close(frozen.linear(parts).sum(0), rms(x).detach())
    with pytest.raises(InputError, match="neither an RMS norm nor a LayerNorm"):
        FrozenNorm.fit(torch.nn.Tanh(), x, torch.tanh(x), "a tanh")


def test_bad_input_is_one_line(tiny):
    lm = tiny("llama")
    ids = ids_of(lm)
    with pytest.raises(InputError, match="position 99 is out of range"):
        direct_logit_attribution(lm, ids, 3, 99)
    with pytest.raises(InputError, match="valid token ids are 0-399"):
        direct_logit_attribution(lm, ids, 400)
    bert = tiny("bert")
    with pytest.raises(InputError, match="norm the residual after each sub-block"):
        direct_logit_attribution(bert, ids_of(bert, "hello world"), 3)
