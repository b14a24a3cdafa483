"""Head ablation against a hand-written recomputation.

The reference run uses no library hook: a forward hook on ``o_proj`` takes the
projection's real input, edits the head's columns by hand, applies the projection's
weights by hand (``x @ W.T + b`` for Linear, ``x @ W + b`` for GPT-2's Conv1D) and
returns that as the projection's output.  The rest of the forward is the model's own.
"""

from __future__ import annotations

import pytest
import torch

from openmav.errors import InputError
from openmav.interventions.ablation import HeadAblation, ablate_heads, ablated_logits, validate_ablations

PROMPT = "When Mary and John went to the store, John gave a drink to"


def manual_proj(module, x):
    if isinstance(module, torch.nn.Linear):
        out = x @ module.weight.T
    else:  # transformers' Conv1D (GPT-2): weight is [in, out]
        out = x @ module.weight
    return out if module.bias is None else out + module.bias


def clean_inputs(lm, ids):
    """The o_proj input of every layer in a clean forward."""
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, i=i: seen.__setitem__(i, inp[0].detach().clone()))
             for i, m in enumerate(lm.parts.o_proj)]
    try:
        with torch.no_grad():
            lm.model(input_ids=ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return seen


def by_hand(lm, ids, edits):
    """Final logits with ``edits[layer](x) -> x'`` applied to the o_proj input, projection done by hand."""
    def hook(layer):
        def fwd(module, inp, out):
            return manual_proj(module, edits[layer](inp[0].clone()))
        return fwd

    hooks = [lm.parts.o_proj[layer].register_forward_hook(hook(layer)) for layer in edits]
    try:
        with torch.no_grad():
            return lm.model(input_ids=ids, use_cache=False).logits[0, -1].float()
    finally:
        for h in hooks:
            h.remove()


def cols(lm, head):
    d = lm.parts.head_dim
    return slice(head * d, (head + 1) * d)


def ids_of(lm, text=PROMPT):
    return lm.tokenizer(text, return_tensors="pt").input_ids


def manual_edit(lm, kind, head, clean_x, positions=None, factor=0.5, threshold=0.3, seed=3):
    c = cols(lm, head)

    def edit(x):
        seq = x.shape[1]
        pos = list(range(seq)) if positions is None else list(positions)
        for p_i, p in enumerate(pos):
            v = x[0, p, c]
            if kind == "zero":
                x[0, p, c] = 0.0
            elif kind == "scale":
                x[0, p, c] = v * factor
            elif kind == "sparsify":
                x[0, p, c] = torch.where(v.abs() < threshold, torch.zeros_like(v), v)
            elif kind == "mean":
                x[0, p, c] = clean_x[0, :, c].mean(dim=0)
        if kind == "permute":
            perm = torch.randperm(len(pos), generator=torch.Generator().manual_seed(seed))
            rows = x[0, pos, c].clone()
            for dst, src in enumerate(perm.tolist()):
                x[0, pos[dst], c] = rows[src]
        return x

    return edit


@pytest.mark.parametrize("kind", ["zero", "mean", "scale", "permute", "sparsify"])
@pytest.mark.parametrize("positions", [None, (1, 4, 7)])
def test_each_kind_equals_hand_recomputation_llama(tiny, kind, positions):
    lm = tiny("llama")
    ids = ids_of(lm)
    layer, head = (1 if positions is None else 0), 2  # a later position only reaches the last one via layer 1
    clean = clean_inputs(lm, ids)
    a = HeadAblation(layer, head, kind, factor=0.5, threshold=0.3, positions=positions, seed=3)
    got = ablated_logits(lm, ids, [a])
    want = by_hand(lm, ids, {layer: manual_edit(lm, kind, head, clean[layer], positions)})
    base = by_hand(lm, ids, {})
    assert (want - base).abs().max() > 1e-4, "the ablation should change the logits at all"
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_zero_two_layers_at_once(tiny, family):
    lm = tiny(family)
    ids = ids_of(lm)
    got = ablated_logits(lm, ids, [HeadAblation(0, 1), HeadAblation(1, 3)])
    want = by_hand(lm, ids, {0: manual_edit(lm, "zero", 1, None), 1: manual_edit(lm, "zero", 3, None)})
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_gpt2_zero_and_mean(tiny):
    lm = tiny("gpt2")
    ids = ids_of(lm)
    clean = clean_inputs(lm, ids)
    for kind in ("zero", "mean"):
        got = ablated_logits(lm, ids, [HeadAblation(1, 0, kind)])
        want = by_hand(lm, ids, {1: manual_edit(lm, kind, 0, clean[1])})
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_smollm2_zero(smollm2):
    lm = smollm2
    ids = ids_of(lm)
    got = ablated_logits(lm, ids, [HeadAblation(9, 4, "zero")])
    want = by_hand(lm, ids, {9: manual_edit(lm, "zero", 4, None)})
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    assert (got - by_hand(lm, ids, {})).abs().max() > 1e-3


def test_mean_over_reference_prompt(tiny):
    lm = tiny("llama")
    ids, ref = ids_of(lm), ids_of(lm, "The key to the cabinets is on the table")
    ref_x = clean_inputs(lm, ref)[0]
    got = ablated_logits(lm, ids, [HeadAblation(0, 1, "mean")], reference_ids=ref)
    want = by_hand(lm, ids, {0: manual_edit(lm, "mean", 1, ref_x)})
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_hooks_removed_after_exception(tiny):
    lm = tiny("llama")
    ids = ids_of(lm)
    base = ablated_logits(lm, ids, [])
    with pytest.raises(RuntimeError, match="boom"):
        with ablate_heads(lm, [HeadAblation(0, 0), HeadAblation(1, 1)]):
            assert all(len(m._forward_pre_hooks) == 1 for m in lm.parts.o_proj)
            raise RuntimeError("boom")
    assert all(len(m._forward_pre_hooks) == 0 for m in lm.parts.o_proj)
    # an error raised inside a hook, during the forward, also leaves nothing behind
    with pytest.raises(InputError, match="valid positions are 0.."):
        ablated_logits(lm, ids, [HeadAblation(1, 1, positions=(500,))])
    assert all(len(m._forward_pre_hooks) == 0 for m in lm.parts.o_proj)
    torch.testing.assert_close(ablated_logits(lm, ids, []), base, atol=0, rtol=0)


@pytest.mark.parametrize("bad, message", [
    (HeadAblation(2, 0), "valid layers are 0..1"),
    (HeadAblation(-1, 0), "valid layers are 0..1"),
    (HeadAblation(0, 4), "valid heads are 0..3"),
    (HeadAblation(0, 0, "erase"), "zero, mean, scale, permute, sparsify"),
    (HeadAblation(0, 0, "sparsify", threshold=-1), "threshold"),
    (HeadAblation(0, 0, positions=()), "positions"),
])
def test_validation_names_the_valid_range(tiny, bad, message):
    with pytest.raises(InputError, match=message):
        validate_ablations(tiny("llama"), [bad])
