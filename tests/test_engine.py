"""The capture engine against independent recomputations, for every supported family."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from openmav.capture import CaptureConfig, SamplingConfig, generate_steps
from openmav.capture.hooks import CaptureHooks, attention_implementation
from openmav.testing import FAMILIES

PROMPT = "When Mary and John went to the store, John gave"


def hook_count(lm):
    mods = [*lm.parts.blocks, *lm.parts.attn, *lm.parts.mlp_out, *lm.parts.attn_out]
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in mods)


def full_forward(lm, ids, **kwargs):
    with torch.no_grad(), attention_implementation(lm.model, "eager"):
        return lm.model(input_ids=ids, use_cache=False, **kwargs)


def run(lm, n=6, **kwargs):
    recs = list(generate_steps(lm, PROMPT, n, stop_at_eos=False, **kwargs))
    prompt_ids = lm.tokenizer(PROMPT, return_tensors="pt").input_ids
    gen = torch.tensor([[r.token.id for r in recs]])
    return recs, prompt_ids, torch.cat([prompt_ids, gen], 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_steps_match_one_full_forward(tiny, family):
    lm = tiny(family)
    recs, prompt_ids, all_ids = run(lm)
    P = prompt_ids.shape[1]
    out = full_forward(lm, all_ids[:, :-1], output_attentions=True)
    for r in recs:
        assert r.position == P + r.step - 1
        np.testing.assert_allclose(r.logits, out.logits[0, r.position].numpy(), atol=1e-4, rtol=0)
        expected_att = torch.stack([a[0, :, r.position, : r.position + 1] for a in out.attentions]).numpy()
        np.testing.assert_allclose(r.attention, expected_att, atol=1e-5, rtol=0)
        np.testing.assert_allclose(r.attention.sum(-1), 1.0, atol=1e-5)
        # entropy in nats of each row, recomputed by hand
        p = expected_att.astype(np.float64)
        ent = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0)).sum(-1)
        np.testing.assert_allclose(r.attention_entropy, ent, atol=1e-4)
    # the prompt's full attention at step 0
    first = recs[0].prompt_attention
    expected = torch.stack([a[0, :, :P, :P] for a in out.attentions]).numpy()
    np.testing.assert_allclose(first, expected, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_equals_generate(tiny, family):
    lm = tiny(family)
    recs, prompt_ids, all_ids = run(lm, n=8)
    ref = lm.model.generate(prompt_ids, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                            pad_token_id=lm.tokenizer.pad_token_id)
    assert all_ids.tolist() == ref.tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_hooks_leave_logits_bitwise_equal(tiny, family):
    lm = tiny(family)
    ids = lm.tokenizer(PROMPT, return_tensors="pt").input_ids
    plain = full_forward(lm, ids).logits
    before = hook_count(lm)
    with CaptureHooks(lm.parts, attention=True, last_only=False) as hooks, \
            attention_implementation(lm.model, "eager"), torch.no_grad():
        hooked = lm.model(input_ids=ids, use_cache=False).logits
        assert hooks.stacked("resid").shape[0] == lm.parts.n_layers
    assert torch.equal(plain, hooked)
    assert hook_count(lm) == before  # hooks are gone afterwards


@pytest.mark.parametrize("family", FAMILIES)
def test_last_layer_lens_is_the_model_distribution(tiny, family):
    lm = tiny(family)
    recs, _, _ = run(lm, n=3, capture=CaptureConfig(lens_top_k=10))
    for r in recs:
        probs = r.probs
        top = np.argsort(-probs)[:10]
        assert r.lens_ids[-1].tolist() == top.tolist()
        np.testing.assert_allclose(r.lens_probs[-1], probs[top], atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_lens_and_norms_against_hidden_states(tiny, family):
    """Residual norms equal output_hidden_states; the lens applies the final norm per layer."""
    lm = tiny(family)
    recs, prompt_ids, all_ids = run(lm, n=3)
    out = full_forward(lm, all_ids[:, :-1], output_hidden_states=True)
    hs = out.hidden_states  # embeddings, then after each block (the last one may be normed)
    L = lm.parts.n_layers
    for r in recs:
        for layer in range(L - 1):
            vec = hs[layer + 1][0, r.position]
            assert r.residual_norms[layer] == pytest.approx(float(vec.norm()), rel=1e-4)
            with torch.no_grad():
                lens = lm.parts.unembed(lm.parts.final_norm(vec))
            probs = torch.softmax(lens, -1)
            assert r.lens_ids[layer, 0] == int(probs.argmax())
            assert r.lens_probs[layer, 0] == pytest.approx(float(probs.max()), rel=1e-4)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "gemma3"])
def test_block_outputs_add_up(tiny, family):
    """attn_out + mlp_out = resid_post - resid_pre; the MLP norm is the MLP output's, not the residual's."""
    lm = tiny(family)
    ids = lm.tokenizer(PROMPT, return_tensors="pt").input_ids
    seen = {}
    handles = [m.register_forward_hook(lambda mod, a, o, i=i: seen.__setitem__(i, o[0, -1].clone()))
               for i, m in enumerate(lm.parts.mlp_out)]
    try:
        recs = list(generate_steps(lm, PROMPT, 1))
    finally:
        for h in handles:
            h.remove()
    out = full_forward(lm, ids, output_hidden_states=True)
    r = recs[0]
    for layer in range(lm.parts.n_layers - 1):
        assert r.mlp_norms[layer] == pytest.approx(float(seen[layer].norm()), rel=1e-4)
        assert r.mlp_norms[layer] != pytest.approx(r.residual_norms[layer], rel=1e-3)
        if family == "gpt_neox" and lm.config.use_parallel_residual:
            continue
        diff = out.hidden_states[layer + 1][0, -1] - out.hidden_states[layer][0, -1] - seen[layer]
        assert r.attn_norms[layer] == pytest.approx(float(diff.norm()), rel=1e-3)


def test_sampling_is_seeded_and_uses_the_processors(tiny):
    lm = tiny("llama")
    cfg = SamplingConfig(temperature=1.3, top_k=20, top_p=0.9, seed=7)
    a = [r.token.id for r in generate_steps(lm, PROMPT, 12, sampling=cfg, stop_at_eos=False)]
    b = [r.token.id for r in generate_steps(lm, PROMPT, 12, sampling=cfg, stop_at_eos=False)]
    c = [r.token.id for r in generate_steps(lm, PROMPT, 12, sampling=SamplingConfig(temperature=1.3, top_k=20,
                                                                                     top_p=0.9, seed=8),
                                            stop_at_eos=False)]
    assert a == b and a != c
    # top-k 1 at any temperature is greedy
    greedy = [r.token.id for r in generate_steps(lm, PROMPT, 6, stop_at_eos=False)]
    k1 = [r.token.id for r in generate_steps(lm, PROMPT, 6, sampling=SamplingConfig(temperature=2.0, top_k=1, seed=1),
                                             stop_at_eos=False)]
    assert greedy == k1
    # the shown token is the chosen one, and the raw distribution is untouched by the processors
    recs = list(generate_steps(lm, PROMPT, 3, sampling=cfg, stop_at_eos=False))
    for r in recs:
        assert r.sampled
        assert r.chosen_prob == pytest.approx(float(r.probs[r.token.id]), rel=1e-5)
        assert r.top_probs[0] == pytest.approx(float(r.probs.max()), rel=1e-5)


def test_attention_off_skips_eager(tiny):
    lm = tiny("llama")
    before = lm.model.config._attn_implementation
    recs = list(generate_steps(lm, PROMPT, 2, capture=CaptureConfig(attention=False, logit_lens=False)))
    assert recs[0].attention is None and recs[0].lens_ids is None
    assert lm.model.config._attn_implementation == before


def test_hooks_removed_when_consumer_stops_or_raises(tiny):
    lm = tiny("gpt2")
    before = hook_count(lm)
    gen = generate_steps(lm, PROMPT, 10)
    next(gen)
    assert hook_count(lm) > before
    gen.close()
    assert hook_count(lm) == before
    with pytest.raises(ZeroDivisionError):
        for r in generate_steps(lm, PROMPT, 10):
            1 / 0
    assert hook_count(lm) == before


def test_lens_in_background_gives_the_same_records(tiny):
    lm = tiny("llama")
    inline = list(generate_steps(lm, PROMPT, 5, capture=CaptureConfig(lens_in_background=False), stop_at_eos=False))
    overlap = list(generate_steps(lm, PROMPT, 5, capture=CaptureConfig(lens_in_background=True), stop_at_eos=False))
    assert [r.token.id for r in inline] == [r.token.id for r in overlap]
    for a, b in zip(inline, overlap):
        assert a.lens_ids.tolist() == b.lens_ids.tolist()
        np.testing.assert_allclose(a.lens_probs, b.lens_probs, atol=1e-6)
        np.testing.assert_array_equal(a.attention, b.attention)


def test_an_abandoned_generator_leaves_the_model_clean(tiny):
    import gc

    lm = tiny("llama")
    before_hooks, before_impl = hook_count(lm), lm.model.config._attn_implementation
    gen = generate_steps(lm, PROMPT, 10)
    next(gen)
    assert hook_count(lm) > before_hooks
    del gen  # neither closed nor exhausted
    gc.collect()
    assert hook_count(lm) == before_hooks and lm.model.config._attn_implementation == before_impl
    try:  # abandoned after an exception in the consumer, with the traceback gone too
        for _ in generate_steps(lm, PROMPT, 10):
            raise KeyError("consumer failed")
    except KeyError:
        pass
    gc.collect()
    assert hook_count(lm) == before_hooks and lm.model.config._attn_implementation == before_impl


def test_the_finite_check_is_the_entrywise_one():
    """One reduction decides; a sum that overflows on finite logits is confirmed entry by entry, not refused."""
    from openmav.capture.step_loop import _check_finite
    from openmav.errors import NonFiniteLogitsError

    _check_finite(torch.full((1000,), 3e38), 0)  # finite entries whose sum overflows
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.zeros(1000)
        x[17] = bad
        with pytest.raises(NonFiniteLogitsError):
            _check_finite(x, 3)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_record_numbers_from_the_one_top_k(tiny, family):
    """Top-k, its probabilities, the chosen probability and the greedy token, against the softmax of the
    record's own logits; record 0 keeps its own row of logits, not the prefill's whole [prompt, vocab]."""
    recs, _, _ = run(tiny(family), n=5)
    for r in recs:
        probs = torch.softmax(torch.from_numpy(r.logits), -1)
        top = torch.topk(probs, len(r.top_ids))
        assert r.top_ids.tolist() == top.indices.tolist()
        np.testing.assert_allclose(r.top_probs, top.values.numpy(), rtol=1e-6, atol=0)
        np.testing.assert_array_equal(r.top_logits, r.logits[r.top_ids])
        assert r.token.id == int(np.argmax(r.logits)) and r.chosen_prob == pytest.approx(float(probs.max()), rel=1e-6)
        assert torch.from_numpy(r.logits).untyped_storage().nbytes() == r.logits.nbytes
