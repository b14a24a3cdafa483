"""Comparisons mean what they say, on the bundled SmolLM2: prompt length is not a difference.

"The cat sat on the mat" against the same sentence three times says nothing new; "I love this
movie" against "I hate this movie" changes a word.  Before the first (attention-sink) position
was left out and values were aligned, the first pair showed the larger neuron difference (314 for
L11 N1229, against 7.0) and head distance jumped from 3.0 to 9.0 tokens.
"""

from __future__ import annotations

import numpy as np
import pytest

from openmav.analysis import compare
from openmav.analysis.extractor import AttentionExtractor

CAT = "The cat sat on the mat"
REPEAT = [CAT, " ".join([CAT] * 3)]
LOVE_HATE = ["I love this movie", "I hate this movie"]

pytestmark = pytest.mark.smollm2


@pytest.fixture(scope="module")
def ex(smollm2):
    return AttentionExtractor(model=smollm2)


def _top(rows, kind, metric=None):
    return max(r.difference for r in rows if r.kind == kind and (metric is None or r.metric == metric))


def test_repetition_differs_less_than_one_word(ex):
    repeat = compare.differences(compare.compare_prompts(ex, REPEAT), top_k=3)
    changed = compare.differences(compare.compare_prompts(ex, LOVE_HATE), top_k=3)
    assert _top(changed, "neuron") > 1.0  # "love" -> "hate" moves late-layer neurons
    assert _top(repeat, "neuron") < _top(changed, "neuron") / 100
    for metric in compare.HEAD_METRICS:
        assert _top(repeat, "head", metric) < _top(changed, "head", metric), metric


def test_first_position_left_out_even_on_each_prompts_own_positions(ex):
    """With positions="all" the prompts differ for real (copies 2 and 3 are read differently),
    but no longer by hundreds: the sink position's activations (about 2,900) are left out."""
    comparison = compare.compare_prompts(ex, REPEAT, positions="all")
    top = compare.neuron_differences(comparison, top_k=1)[0]
    assert top.difference < 50
    with_sink = compare.compare_prompts(ex, REPEAT, positions="all", skip_first=False)
    assert compare.neuron_differences(with_sink, top_k=1)[0].difference > 100  # the artefact, for the record


def _sink_term(ex, prompt: str) -> np.ndarray:
    """``mean_i A[i, 0] * i`` over rows 1..n-1: what counting the first token's distance would add."""
    att = ex.extract_activations(prompt).attention_array()
    rows = np.arange(1, att.shape[-1])
    return (att[..., rows, 0] * rows).mean(-1)


def test_head_distance_does_not_jump_on_sink_heads(ex):
    short, long = (ex.get_head_stats(p) for p in REPEAT)
    sink_heads = (short["sink"] > 0.9) & (long["sink"] > 0.9)
    assert sink_heads.sum() >= 5
    assert np.abs(long["distance"] - short["distance"])[sink_heads].max() < 1.0
    # counting the first token's |i - 0| as well, the same heads jumped by more than 4 tokens
    old_short, old_long = (stats["distance"] + _sink_term(ex, p) for stats, p in zip((short, long), REPEAT))
    assert np.abs(old_long - old_short)[sink_heads].min() > 4.0
