"""Ablation studies: the greedy search checked against plain single-forward recomputation."""

from __future__ import annotations

import threading

import pytest
import torch

from openmav.errors import InputError
from openmav.interventions.ablation import HeadAblation, ablated_logits
from openmav.interventions.studies import generic_study, logit_diff_study, target_margin, targeted_study
from openmav.metrics import kl_divergence
from openmav.testing import tiny_model

PROMPT = "When Mary and John went to the store, John gave a drink to"
LOUD = [(0, 1), (1, 3)]


@pytest.fixture(scope="module")
def loud():
    """A tiny llama (3 layers) whose heads (0, 1) and (1, 3) are amplified so they decide the top token."""
    lm = tiny_model("llama", seed=5, n_layers=3)
    d = lm.parts.head_dim
    with torch.no_grad():
        for layer, head in LOUD:
            lm.parts.o_proj[layer].weight[:, head * d:(head + 1) * d] *= 40.0
    return lm


def logits_with(lm, ids, heads):
    return ablated_logits(lm, ids, [HeadAblation(layer, head) for layer, head in heads])


def test_targeted_succeeds_and_stops_as_soon_as_target_leads(loud):
    lm = loud
    ids = lm.tokenizer(PROMPT, return_tensors="pt").input_ids
    base_top = int(logits_with(lm, ids, []).argmax())
    target = int(logits_with(lm, ids, LOUD).argmax())
    assert target != base_top, "the constructed case needs the loud heads to decide the top token"
    events = []
    res = targeted_study(lm, ids, target, max_heads=6, candidates=12, progress=events.append, batch_size=5)
    assert res.success and res.after["ids"][0] == target and res.before["ids"][0] == base_top
    # independent check: the set found makes the target lead; the set without its last head does not
    assert int(logits_with(lm, ids, res.heads).argmax()) == target
    assert int(logits_with(lm, ids, res.heads[:-1]).argmax()) != target
    greedy = [e for e in events if e["phase"] == "greedy"]
    assert [e["heads"] for e in greedy][-1] == [list(h) for h in res.heads]
    assert all(e["metric"] <= 0 for e in greedy[:-1]) and greedy[-1]["metric"] > 0
    assert len(greedy) == len(res.heads) and events[-1]["phase"] == "done"
    assert any(e["phase"] == "rank" for e in events)
    margin = float(target_margin(logits_with(lm, ids, res.heads), target))
    assert greedy[-1]["metric"] == pytest.approx(margin, abs=1e-4)
    assert res.kl == pytest.approx(float(kl_divergence(logits_with(lm, ids, []), logits_with(lm, ids, res.heads))),
                                   abs=1e-5)


def test_targeted_target_already_top_and_bad_target(loud):
    ids = loud.tokenizer(PROMPT, return_tensors="pt").input_ids
    top = int(logits_with(loud, ids, []).argmax())
    res = targeted_study(loud, ids, top)
    assert res.success and res.heads == [] and res.forwards == 0
    with pytest.raises(InputError, match="valid ids are 0.."):
        targeted_study(loud, ids, 10**6)


def test_generic_greedy_choices_are_the_best(tiny):
    lm = tiny("llama")
    ids = lm.tokenizer(PROMPT, return_tensors="pt").input_ids
    base = logits_with(lm, ids, [])
    heads = [(layer, head) for layer in range(2) for head in range(4)]

    def kl_of(hs):
        return float(kl_divergence(base, logits_with(lm, ids, hs)))

    res = generic_study(lm, ids, max_heads=3, candidates=5, batch_size=3)
    singles = sorted(heads, key=lambda h: -kl_of([h]))
    candidates = singles[:5]
    assert res.heads[0] == singles[0]
    assert set(res.heads) <= set(candidates) and len(res.heads) == len(set(res.heads))
    second = max((h for h in candidates if h != res.heads[0]), key=lambda h: kl_of([res.heads[0], h]))
    assert len(res.heads) < 2 or res.heads[1] == second
    assert res.kl == pytest.approx(kl_of(res.heads), rel=1e-4, abs=1e-7)
    kls = [step["metric"] for step in res.steps if step["phase"] == "greedy"]
    assert kls == sorted(kls) and res.success is None
    assert set(res.to_dict()) >= {"heads", "before", "after", "kl", "steps", "cancelled", "search"}


def test_cancel_returns_a_flagged_result(tiny):
    lm = tiny("llama")
    ids = lm.tokenizer(PROMPT, return_tensors="pt").input_ids
    stop = threading.Event()
    res = generic_study(lm, ids, batch_size=2, progress=lambda e: stop.set(), cancel=stop)
    assert res.cancelled and res.heads == [] and res.forwards == 1


def test_logit_difference_study_greedy_choices_are_the_best(tiny):
    lm = tiny("llama")
    ids = lm.tokenizer(PROMPT, return_tensors="pt").input_ids
    a, b = 17, 250
    heads = [(layer, head) for layer in range(2) for head in range(4)]

    def ld(hs):
        logits = logits_with(lm, ids, hs)
        return float(logits[a] - logits[b])

    events = []
    res = logit_diff_study(lm, ids, a, b, max_heads=3, candidates=5, batch_size=3, progress=events.append)
    singles = sorted(heads, key=lambda h: ld([h]))  # the lowest difference first
    assert res.heads[0] == singles[0]
    second = min((h for h in singles[:5] if h != res.heads[0]), key=lambda h: ld([res.heads[0], h]))
    assert len(res.heads) < 2 or res.heads[1] == second
    assert res.metric_name == "logit_diff" and res.tokens == (a, b) and res.success is None
    assert res.metric_before == pytest.approx(ld([]), abs=1e-5)
    assert res.metric_after == pytest.approx(ld(res.heads), abs=1e-4)
    greedy = [e["metric"] for e in events if e["phase"] == "greedy"]
    assert greedy == sorted(greedy, reverse=True) and greedy[-1] == pytest.approx(res.metric_after, abs=1e-4)
    assert events[-1]["phase"] == "done" and events[-1]["metric"] == pytest.approx(res.metric_after)
    d = res.to_dict()
    assert d["tokens"] == [a, b] and d["metric_after"] == res.metric_after
    with pytest.raises(InputError, match="same token"):
        logit_diff_study(lm, ids, a, a)
    with pytest.raises(InputError, match="valid ids are 0..399"):
        logit_diff_study(lm, ids, a, 999)


def test_every_study_reports_its_score_before_and_after(loud):
    ids = loud.tokenizer(PROMPT, return_tensors="pt").input_ids
    target = int(logits_with(loud, ids, LOUD).argmax())
    res = targeted_study(loud, ids, target, max_heads=6, candidates=12, batch_size=5)
    assert res.metric_name == "target_margin" and res.metric_before < 0 < res.metric_after
    assert res.metric_after == pytest.approx(float(target_margin(logits_with(loud, ids, res.heads), target)), abs=1e-4)
    gen = generic_study(loud, ids, max_heads=2, candidates=4, batch_size=5)
    assert gen.metric_name == "kl" and gen.metric_before == 0 and gen.metric_after == gen.kl
