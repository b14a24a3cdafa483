"""Batched all-heads evaluation equals one forward per head (KL, Δp of the top token, Δ logit difference)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from openmav.errors import InputError
from openmav.interventions.ablation import HeadAblation, ablated_logits
from openmav.interventions.evaluate import AblationSpec, Cancelled, evaluate_all_heads, run_head_sets

PROMPT = "When Mary and John went to the store, John gave a drink to"


def one_at_a_time(lm, ids, kind):
    """KL(baseline || ablated) and the top token's probability change, one plain forward per head."""
    base = ablated_logits(lm, ids, [])
    p0 = torch.softmax(base.double(), -1)
    top = int(p0.argmax())
    kl = np.zeros((lm.parts.n_layers, lm.parts.n_heads))
    dtop = np.zeros_like(kl)
    rows = []
    for layer in range(lm.parts.n_layers):
        for head in range(lm.parts.n_heads):
            logits = ablated_logits(lm, ids, [HeadAblation(layer, head, kind)])
            rows.append(logits)
            p1 = torch.softmax(logits.double(), -1)
            kl[layer, head] = float((p0 * (p0.log() - p1.log())).sum())
            dtop[layer, head] = float(p1[top] - p0[top])
    return kl, dtop, torch.stack(rows)


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma3", "gpt_neox"])
@pytest.mark.parametrize("kind", ["zero", "mean", "permute"])
def test_batched_equals_one_at_a_time(tiny, family, kind):
    lm = tiny(family)
    ids = lm.tokenizer(PROMPT, return_tensors="pt").input_ids
    kl, dtop, rows = one_at_a_time(lm, ids, kind)
    for share_prefix in (True, False):
        eff = evaluate_all_heads(lm, ids, kind, batch_size=3, share_prefix=share_prefix)
        assert kl.max() > 1e-5, "the ablations should matter"
        np.testing.assert_allclose(eff.kl, kl, atol=1e-5, rtol=1e-4)
        np.testing.assert_allclose(eff.delta_top_prob, dtop, atol=1e-5)
    heads = [[(layer, head)] for layer in range(2) for head in range(4)]
    torch.testing.assert_close(run_head_sets(lm, ids, heads, AblationSpec(kind), batch_size=5), rows, atol=1e-5, rtol=1e-5)


def test_sets_of_heads_per_row(tiny):
    lm = tiny("llama")
    ids = lm.tokenizer(PROMPT, return_tensors="pt").input_ids
    sets = [[(0, 1), (1, 2)], [], [(1, 0), (1, 3), (0, 0)], [(0, 1)]]
    want = torch.stack([ablated_logits(lm, ids, [HeadAblation(*h) for h in s]) for s in sets])
    torch.testing.assert_close(run_head_sets(lm, ids, sets, batch_size=2), want, atol=1e-5, rtol=1e-5)


def test_smollm2_batched_equals_single(smollm2):
    lm = smollm2
    ids = lm.tokenizer(PROMPT, return_tensors="pt").input_ids
    heads = [(0, 0), (3, 8), (9, 4), (15, 2), (22, 7), (29, 5)]
    want = torch.stack([ablated_logits(lm, ids, [HeadAblation(*h)]) for h in heads])
    got = run_head_sets(lm, ids, [[h] for h in heads], batch_size=4)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


def test_cancel_and_dict(tiny):
    lm = tiny("llama")
    ids = lm.tokenizer(PROMPT, return_tensors="pt").input_ids
    stop = threading.Event()
    calls = []

    def on_batch(done, total):
        calls.append((done, total))
        stop.set()

    with pytest.raises(Cancelled):
        evaluate_all_heads(lm, ids, batch_size=3, cancel=stop, on_batch=on_batch)
    assert calls == [(3, 8)]
    d = evaluate_all_heads(lm, ids, batch_size=8).to_dict()
    assert (d["n_layers"], d["n_heads"]) == (2, 4) and len(d["kl"]) == 2 and len(d["kl"][0]) == 4


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_logit_difference_equals_one_at_a_time(tiny, family):
    lm = tiny(family)
    ids = lm.tokenizer(PROMPT, return_tensors="pt").input_ids
    base = ablated_logits(lm, ids, [])
    a, b = 17, 250
    want = np.zeros((lm.parts.n_layers, lm.parts.n_heads))
    for layer, head in lm.parts.heads():
        logits = ablated_logits(lm, ids, [HeadAblation(layer, head)])
        want[layer, head] = float(logits[a] - logits[b]) - float(base[a] - base[b])
    eff = evaluate_all_heads(lm, ids, batch_size=3, tokens=(a, b))
    np.testing.assert_allclose(eff.delta_logit_diff, want, atol=1e-5)
    assert np.abs(want).max() > 1e-3 and eff.logit_diff_tokens == (a, b)
    assert eff.baseline_logit_diff == pytest.approx(float(base[a] - base[b]), abs=1e-6)
    ranked = eff.ranked("delta_logit_diff")
    np.testing.assert_allclose([abs(v) for _, _, v in ranked], sorted(np.abs(want).ravel(), reverse=True), atol=1e-5)
    d = eff.to_dict()
    assert d["logit_diff_tokens"] == [a, b] and np.allclose(d["delta_logit_diff"], eff.delta_logit_diff)
    # by default: the baseline's two most likely tokens
    top2 = base.topk(2).indices.tolist()
    assert evaluate_all_heads(lm, ids, batch_size=8).logit_diff_tokens == tuple(top2)


def test_logit_difference_tokens_are_checked(tiny):
    lm = tiny("llama")
    ids = lm.tokenizer(PROMPT, return_tensors="pt").input_ids
    with pytest.raises(InputError, match="valid ids are 0..399"):
        evaluate_all_heads(lm, ids, tokens=(3, 400))
    with pytest.raises(InputError, match="two different tokens"):
        evaluate_all_heads(lm, ids, tokens=(3, 3))
    with pytest.raises(InputError, match="unknown metric"):
        evaluate_all_heads(lm, ids, batch_size=8).ranked("entropy")
