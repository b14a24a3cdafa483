"""The load-time verification cannot be fooled by scale, and models deeper than two layers read as they compute.

Each test recomputes what the engine reports from the model's own forward (its hidden states, or the
decoder layer's own arithmetic redone by hand from hooked module outputs), or breaks a verified row on
purpose and expects the one-line refusal that names what is wrong.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from openmav.backends.find import _advice
from openmav.backends.loading import wrap_model
from openmav.backends.parts import ModelParts
from openmav.backends.verify import verify_parts
from openmav.capture import generate_steps
from openmav.errors import UnsupportedModelError
from openmav.support import check_invariants
from openmav.testing import tiny_causal_lm, tiny_model, tiny_tokenizer
from openmav.tiny_configs import REAL_DEPTH, REAL_SETTINGS, tiny_config_for_type

PROMPT = "When Mary and John went to the store, John gave"


def build(model_type: str, depth: int = 2, spread: bool = True, real: bool = False, **settings):
    config = tiny_config_for_type(model_type, len(tiny_tokenizer()), depth, real=real)
    for key, value in settings.items():
        setattr(config, key, value)
    return tiny_causal_lm(config, spread=spread)


def ids_of(text: str = PROMPT) -> torch.Tensor:
    return tiny_tokenizer()(text, return_tensors="pt").input_ids


def first_record(lm, ids):
    return next(iter(generate_steps(lm, input_ids=ids, max_new_tokens=1, stop_at_eos=False)))


# --- the tiny models' weights are spread as trained ones are ------------------------------------------------------

@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3", "gpt_neox", "mixtral", "falcon_h1"])
def test_tiny_models_attend_sharply_and_their_parts_are_of_comparable_size(family):
    lm = tiny_model(family)
    rec = first_record(lm, ids_of())
    layers = list(lm.parts.attention_layers)
    keys = rec.attention.shape[-1]
    # far from uniform: the mean entropy of a row is well below the uniform row's log(keys)
    assert np.nanmean(rec.attention_entropy[layers]) < 0.6 * math.log(keys)
    assert np.nanmean(rec.attention[layers].max(-1)) > 0.4
    # every part adds a share of comparable size: no share below a tenth of another, none below a tenth of the stream
    shares = np.concatenate([rec.attn_norms, rec.mlp_norms])
    assert shares.min() > 0.1 * shares.max()
    assert shares.min() > 0.1 * rec.residual_norms.max()


def test_transformers_initialisation_is_what_the_spread_replaces():
    """At transformers' initialisation (std 0.02) attention rows are nearly uniform: the spread is what
    makes the suite test what trained checkpoints do."""
    lm = wrap_model(tiny_causal_lm(tiny_model("llama").model.config, spread=False), tiny_tokenizer())
    rec = first_record(lm, ids_of())
    assert np.nanmean(rec.attention_entropy) > 0.95 * math.log(rec.attention.shape[-1])


# --- Falcon-H1: the parallel mixer beside the attention, at its own multiplier -------------------------------------

def falcon_h1_by_hand(model, ids):
    """Per layer, at the last position: (attention share, MLP share, residual after the block), from the decoder
    layer's own arithmetic: attn * attention_out_multiplier + mamba * ssm_out_multiplier, then the MLP."""
    seen, handles = {}, []
    for i, layer in enumerate(model.model.layers):
        for name in ("self_attn", "mamba", "feed_forward"):
            handles.append(getattr(layer, name).register_forward_hook(
                lambda m, a, o, i=i, name=name: seen.__setitem__((i, name), (o[0] if isinstance(o, tuple) else o))))
    try:
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    c = model.config
    rows = []
    for i in range(c.num_hidden_layers):
        attn = (seen[(i, "self_attn")][0, -1] * c.attention_out_multiplier
                + seen[(i, "mamba")][0, -1] * c.ssm_out_multiplier)
        rows.append((float(attn.norm()), float(seen[(i, "feed_forward")][0, -1].norm()),
                     float(out.hidden_states[i + 1][0, -1].norm()) if i + 1 < c.num_hidden_layers else None))
    return rows, out.logits[0, -1]


@pytest.mark.parametrize("spread", [False, True], ids=["transformers-init", "spread"])
def test_falcon_h1_mixer_joins_beside_attention_at_its_own_multiplier(spread):
    """At transformers' initialisation the mixer adds about 1e-6 of the block: it is still read at 0.7,
    beside the attention (it joins the residual before the MLP runs)."""
    model = build("falcon_h1", spread=spread, ssm_out_multiplier=0.7)
    lm = wrap_model(model, tiny_tokenizer())
    parts = lm.parts
    assert [type(m[0]).__name__ for m in parts.attn_extra] == ["FalconH1Mixer"] * parts.n_layers
    assert all(not e for e in parts.mlp_extra)
    assert [parts.share_scale("attn_extra", i, 0) for i in range(parts.n_layers)] == [0.7] * parts.n_layers
    ids = ids_of()
    rec = first_record(lm, ids)
    want, _ = falcon_h1_by_hand(model, ids)
    np.testing.assert_allclose(rec.attn_norms, [w[0] for w in want], rtol=1e-5)
    np.testing.assert_allclose(rec.mlp_norms, [w[1] for w in want], rtol=1e-5)


def test_falcon_h1_with_its_checkpoints_multipliers_reads_correctly_at_four_layers():
    model = build("falcon_h1", REAL_DEPTH, real=True)
    lm = wrap_model(model, tiny_tokenizer())
    parts, c = lm.parts, model.config
    assert parts.residual_scale == pytest.approx(c.attention_out_multiplier)
    assert parts.share_scale("attn_extra", 3, 0) == pytest.approx(c.ssm_out_multiplier)
    assert parts.logit_scale == pytest.approx(c.lm_head_multiplier)
    ids = ids_of()
    rec = first_record(lm, ids)
    want, logits = falcon_h1_by_hand(model, ids)
    np.testing.assert_allclose(rec.attn_norms, [w[0] for w in want], rtol=1e-5)
    np.testing.assert_allclose(rec.mlp_norms, [w[1] for w in want], rtol=1e-5)
    np.testing.assert_allclose(rec.residual_norms[:-1], [w[2] for w in want[:-1]], rtol=1e-5)
    np.testing.assert_allclose(rec.logits, logits.numpy(), rtol=1e-5, atol=1e-5)
    check_invariants(lm)


# --- RWKV: the stream halved between blocks --------------------------------------------------------------------

def test_rwkv_residual_is_what_the_next_block_receives_at_any_depth():
    model = build("rwkv", REAL_DEPTH, real=True)
    assert model.config.rescale_every == 2
    lm = wrap_model(model, tiny_tokenizer())
    assert lm.parts.stream_scales == (1.0, 0.5, 1.0, 0.5)
    ids = ids_of()
    rec = first_record(lm, ids)
    seen = {}
    handles = [b.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, a[0][0, -1].clone()))
               for i, b in enumerate(model.rwkv.blocks)]
    handles.append(model.rwkv.ln_out.register_forward_pre_hook(lambda m, a: seen.__setitem__("final", a[0][0, -1])))
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    received = [seen[i] for i in range(1, 4)] + [seen["final"]]  # what each next block, then the final norm, receives
    np.testing.assert_allclose(rec.residual_norms, [float(x.norm()) for x in received], rtol=1e-5)
    check_invariants(lm)


# --- a row that is wrong is refused, whatever the size of the part it gets wrong -----------------------------------

def test_a_wrong_multiplier_on_a_tiny_share_is_refused():
    model = build("falcon_h1", spread=False, ssm_out_multiplier=0.7)  # the mixer adds ~1e-6 of the block
    parts = wrap_model(model, tiny_tokenizer()).parts
    wrong = ModelParts.resolve(model, replace(parts.adapter, extra_scales=(1.0,)), inferred=True)
    with pytest.raises(UnsupportedModelError, match=r"FalconH1Mixer beside the attention \(it joins at 0.7"):
        verify_parts(model, wrong)


def test_a_row_that_misses_a_tiny_part_is_refused():
    """A mixer that adds below the reference check's tolerance (a multiplier of 0.05 at transformers'
    initialisation) is still found: pushing it moves the block's output by the size of the push."""
    model = build("falcon_h1", spread=False, ssm_out_multiplier=0.05)
    parts = wrap_model(model, tiny_tokenizer()).parts
    assert parts.share_scale("attn_extra", 0, 0) == pytest.approx(0.05)
    missing = ModelParts.resolve(model, replace(parts.adapter, attn_extra=(), extra_scales=()), inferred=True)
    with pytest.raises(UnsupportedModelError, match=r"FalconH1Mixer, which the row does not read, joins the "
                                                    r"residual stream \(at 0.05\)"):
        verify_parts(model, missing)


def test_a_stream_rescaled_between_blocks_and_not_described_is_refused():
    model = build("rwkv", REAL_DEPTH, real=True)
    parts = wrap_model(model, tiny_tokenizer()).parts
    plain = ModelParts.resolve(model, replace(parts.adapter, stream_scales=()), inferred=True)
    with pytest.raises(UnsupportedModelError, match="rescales the residual stream by 0.5 between block 1 and block 2"):
        verify_parts(model, plain)


# --- refusals say what the model does, and nothing about dtype unless dtype is the cause ---------------------------

def test_several_residual_streams_are_refused_saying_so_without_dtype_advice():
    with pytest.raises(UnsupportedModelError) as err:
        wrap_model(build("hy_v4"), tiny_tokenizer())
    text = str(err.value)
    assert "residual streams" in text and "hyper-connections" in text
    assert "dtype" not in text and "float32" not in text


def test_float32_is_advised_only_where_half_precision_numbers_failed():
    numeric = ["layer 0: attention + MLP outputs do not add up (relative error 3.1e-02)"]
    structural = ["no list of transformer blocks found in the module tree"]
    fp32 = tiny_model("llama").model
    bf16 = tiny_model("llama", dtype=torch.bfloat16).model
    assert "float32" not in _advice(fp32, numeric)
    assert "float32" not in _advice(bf16, structural)
    assert "try --dtype float32" in _advice(bf16, numeric) and "bfloat16" in _advice(bf16, numeric)


# --- the 4-layer builds use real checkpoints' settings --------------------------------------------------------------

@pytest.mark.parametrize("model_type", sorted(REAL_SETTINGS))
def test_real_settings_name_attributes_the_config_has(model_type):
    config = tiny_config_for_type(model_type, 400, REAL_DEPTH, real=True)
    for key, value in REAL_SETTINGS[model_type].items():
        want = value(REAL_DEPTH) if callable(value) else value
        assert getattr(config, key) == want, key
        assert key in type(config)().to_dict(), f"{key} is not a setting of {type(config).__name__}"


# --- direct logit attribution reads each share at its own multiplier, and refuses a stream that is not a sum ------

def test_logit_attribution_sums_to_the_logit_with_per_share_multipliers():
    from openmav.interventions.attribution import direct_logit_attribution

    lm = wrap_model(build("falcon_h1", REAL_DEPTH, real=True), tiny_tokenizer())
    ids = ids_of()
    with torch.no_grad():
        logits = lm.model(input_ids=ids, use_cache=False).logits[0].float()
    token = int(logits[-1].argmax())
    dla = direct_logit_attribution(lm, ids, token)
    assert abs(dla.total - float(logits[-1, token])) < 1e-4 * max(1.0, abs(float(logits[-1, token])))
    assert sum(c["kind"] == "attention_extra" for c in dla.components) == lm.parts.n_layers  # the mixers


def test_logit_attribution_refuses_a_stream_rescaled_between_blocks():
    from openmav.errors import InputError
    from openmav.interventions.attribution import direct_logit_attribution

    lm = wrap_model(build("rwkv", REAL_DEPTH, real=True), tiny_tokenizer())
    assert not lm.parts.residual_is_sum
    with pytest.raises(InputError, match="sum of its parts"):
        direct_logit_attribution(lm, ids_of(), 5)
