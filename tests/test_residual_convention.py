"""One residual convention in the extraction API (issue 13, item 8).

``hidden_states[l + 1]`` and ``residual[l]`` are the output of block ``l`` for every layer, the last
included, before any norm the model applies after its blocks; that norm's output is ``final_norm``.
Expected values come from the model itself, never from the extractor's own hooks: transformers'
``output_hidden_states`` for the layers before the last (and, for these families, its last entry,
which is the normed one), a forward hook on the last block written here from each family's module
tree, and the final norm and head modules named here, applied by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from openmav.analysis.extractor import AttentionExtractor
from openmav.analysis.results import Activations
from openmav.capture.hooks import attention_implementation
from test_encoders import build  # the tiny encoders of their real config classes

PROMPTS = ["The cat sat on the mat", "hello", "When Mary and John went to the store, John gave a drink to"]

# per family: the block list, the final norm and the head, as paths in the causal-LM object
LAYOUT = {
    "llama": ("model.layers", "model.norm", "lm_head"),
    "gpt2": ("transformer.h", "transformer.ln_f", "lm_head"),
    "gemma2": ("model.layers", "model.norm", "lm_head"),
    "gemma3_text": ("model.layers", "model.norm", "lm_head"),
    "falcon": ("transformer.h", "transformer.ln_f", "lm_head"),
    "gpt_neox": ("gpt_neox.layers", "gpt_neox.final_layer_norm", "lm_head"),
}
FAMILIES = list(LAYOUT)


def direct(model, blocks_path: str, ids: torch.Tensor):
    """An eager forward of ``ids`` with hidden states, and the last block's own output (by a hook here)."""
    last = model.get_submodule(blocks_path)[-1]
    seen = []

    def keep(module, args, output):
        seen.append((output[0] if isinstance(output, tuple) else output).detach().clone())

    handle = last.register_forward_hook(keep)
    try:
        with torch.no_grad(), attention_implementation(model, "eager"):
            out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
    finally:
        handle.remove()
    assert len(seen) == 1
    return out, seen[0]


def head(model, family: str, x: torch.Tensor) -> torch.Tensor:
    """The model's logits from the final norm's output ``x``: the head, then the family's soft-cap."""
    logits = model.get_submodule(LAYOUT[family][2])(x)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:  # Gemma 2 (Gemma 3's tiny config has none)
        logits = torch.tanh(logits / cap) * cap
    return logits


@pytest.mark.parametrize("family", FAMILIES)
def test_causal_hidden_states_are_pre_norm_and_final_norm_is_separate(tiny, family):
    lm = tiny(family)
    model = lm.model
    blocks_path, norm_path, _ = LAYOUT[family]
    n_layers = len(model.get_submodule(blocks_path))
    ex = AttentionExtractor(model=lm)
    for prompt in PROMPTS[::2]:
        res = ex.extract_activations(prompt)
        ids = torch.tensor([res.token_ids.tolist()])
        out, last_block = direct(model, blocks_path, ids)
        seq = ids.shape[1]
        assert len(res.hidden_states) == n_layers + 1 == len(out.hidden_states)
        # (a) every entry but the last as transformers gives it; the last is the last block's output
        for i in range(n_layers):
            np.testing.assert_allclose(res.hidden_states[i], out.hidden_states[i].numpy(), atol=1e-5)
        last = res.hidden_states[n_layers]
        assert last.shape == (1, seq, 64)
        np.testing.assert_allclose(last, last_block.numpy(), atol=1e-5)
        # (b) final_norm is the final norm of that last state, which is transformers' last hidden state
        assert res.final_norm is not None and res.final_norm.shape == (1, seq, 64)
        with torch.no_grad():
            normed = model.get_submodule(norm_path)(torch.from_numpy(last))
        np.testing.assert_allclose(res.final_norm, normed.numpy(), atol=1e-5)
        np.testing.assert_allclose(res.final_norm, out.hidden_states[-1].numpy(), atol=1e-5)
        # the model's logits are its head applied to final_norm, and also what the extractor returns
        with torch.no_grad():
            logits = head(model, family, torch.from_numpy(res.final_norm))
        np.testing.assert_allclose(logits.numpy(), out.logits.numpy(), atol=1e-4)
        np.testing.assert_allclose(res.logits, out.logits.numpy(), atol=1e-4)
        # the two differ on these models (random norm weights): the test can tell them apart
        assert np.abs(last - res.final_norm).max() > 0.1
        assert np.abs(last - out.hidden_states[-1].numpy()).max() > 0.1
        # (c) the residual of every layer is the matching hidden state, the last layer included
        for layer in range(n_layers):
            got = ex.get_neuron_activations(prompt, layer, residual=True).residual
            np.testing.assert_array_equal(got, res.hidden_states[layer + 1][0])
        np.testing.assert_array_equal(ex.get_neuron_activations(prompt, -1, residual=True).residual, last[0])


@pytest.mark.parametrize("family,side", [("llama", "left"), ("gpt2", "right"), ("gemma2", "left")])
def test_batched_hidden_states_and_final_norm_equal_one_at_a_time(tiny, family, side):
    ex = AttentionExtractor(model=tiny(family))
    batched = ex.compare_prompts(PROMPTS, batch_size=3, padding_side=side, hidden_states=True, neurons=False)
    for prompt, res in zip(PROMPTS, batched):
        alone = ex.extract_activations(prompt)
        assert len(res.hidden_states) == len(alone.hidden_states) == ex.n_layers + 1
        for a, b in zip(res.hidden_states, alone.hidden_states):
            assert a.shape == b.shape == (1, len(alone.tokens), 64)
            np.testing.assert_allclose(a, b, atol=1e-4)
        np.testing.assert_allclose(res.final_norm, alone.final_norm, atol=1e-4)


def test_no_hidden_states_no_final_norm(tiny):
    ex = AttentionExtractor(model=tiny("llama"))
    res = ex.compare_prompts(PROMPTS[:2], hidden_states=False)[0]
    assert res.hidden_states == [] and res.final_norm is None
    assert ex.extract_activations(PROMPTS[0]).final_norm is not None


def test_fields_and_reprs_name_final_norm(tiny):
    res = AttentionExtractor(model=tiny("llama")).extract_activations(PROMPTS[0])
    assert "final_norm" in res.keys() and res["final_norm"] is res.final_norm
    n = len(res.tokens)
    assert f"final_norm: [1, {n}, 64]" in repr(res) and "before any final norm" in repr(res)
    assert "final_norm" in res._repr_html_()
    bare = Activations(prompt="x", tokens=["x"], token_ids=np.arange(1), attention=[])
    assert bare.final_norm is None and "final_norm" not in repr(bare)


# -- encoders: built from their real config classes, 2 layers (ALBERT: 2 x 2 shared), width 64 ------

ENCODERS = {  # family: (the layer list, the norm after the last layer or None)
    "bert": ("encoder.layer", None),
    "albert": (None, None),
    "modernbert": ("layers", "final_norm"),
}


@pytest.mark.parametrize("family", list(ENCODERS))
def test_encoder_hidden_states_are_block_outputs(family):
    model, tok = build(family)
    ex = AttentionExtractor(model=model, tokenizer=tok, model_name=f"tiny-{family}")
    blocks_path, norm_path = ENCODERS[family]
    for prompt in PROMPTS:
        res = ex.extract_activations(prompt)
        ids = torch.tensor([tok(prompt)["input_ids"]])
        if blocks_path is None:  # ALBERT: shared layers, no final norm; transformers' states are block outputs
            with torch.no_grad(), attention_implementation(model, "eager"):
                out = model(input_ids=ids, output_hidden_states=True)
            last = out.hidden_states[-1]
        else:
            out, last = direct(model, blocks_path, ids)
        assert len(res.hidden_states) == ex.n_layers + 1 == len(out.hidden_states)
        for i in range(ex.n_layers):
            np.testing.assert_allclose(res.hidden_states[i], out.hidden_states[i].numpy(), atol=1e-5)
        np.testing.assert_allclose(res.hidden_states[-1], last.numpy(), atol=1e-5)
        np.testing.assert_array_equal(ex.get_neuron_activations(prompt, -1, residual=True).residual,
                                      res.hidden_states[-1][0])
        if norm_path is None:  # BERT-style post-LayerNorm blocks: nothing after the last block
            assert res.final_norm is None
            np.testing.assert_allclose(res.hidden_states[-1], out.hidden_states[-1].numpy(), atol=1e-5)
        else:  # ModernBERT: transformers' last hidden state is the final norm's output
            with torch.no_grad():
                normed = model.get_submodule(norm_path)(torch.from_numpy(res.hidden_states[-1]))
            np.testing.assert_allclose(res.final_norm, normed.numpy(), atol=1e-5)
            np.testing.assert_allclose(res.final_norm, out.hidden_states[-1].numpy(), atol=1e-5)
            assert np.abs(res.hidden_states[-1] - res.final_norm).max() > 0.1
