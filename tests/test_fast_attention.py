"""Attention rows through the registered attention function equal eager attention, on every family.

The step loop no longer switches a model to eager attention: ``openmav_rows`` runs the
fast kernel for the output and computes the probability rows beside it (scaling, mask,
sliding window, soft-cap, sinks).  Records made that way must equal records made with
eager attention: attention rows 1e-5, logits 1e-5, in fp32.
"""

from __future__ import annotations

import numpy as np
import pytest

from openmav.capture import CaptureConfig, generate_steps
from openmav.backends.verify import rows_match_eager
from openmav.capture import fast_attention
from openmav.capture.step_loop import attention_rows_implementation

FAMILIES = ["llama", "mistral", "gemma2", "gemma3", "gpt_oss", "deepseek_v3", "gpt2", "gpt_neo", "gpt_neox", "phi",
            "cohere", "olmo2", "opt", "bloom", "falcon", "mixtral", "granite", "jamba", "bert"]
PROMPT = "When Mary and John went to the store, John gave a drink to"


def _records(lm, fast: bool, **capture):
    lm.extra["fast_attention_rows"] = fast
    try:
        return list(generate_steps(lm, PROMPT, 4, stop_at_eos=False, capture=CaptureConfig(**capture)))
    finally:
        lm.extra.pop("fast_attention_rows", None)


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_rows_equal_eager_rows(tiny, family):
    lm = tiny(family)
    assert attention_rows_implementation(lm) == fast_attention.NAME  # checked on the model at first use
    for prompt_attention in (True, False):
        fast = _records(lm, True, prompt_attention=prompt_attention)
        eager = _records(lm, False, prompt_attention=prompt_attention)
        assert [r.token.id for r in fast] == [r.token.id for r in eager]
        for a, b in zip(fast, eager):
            np.testing.assert_allclose(a.attention, b.attention, atol=1e-5, rtol=0)
            np.testing.assert_allclose(a.logits, b.logits, atol=1e-5, rtol=0)
            if prompt_attention and a.step == 0:
                np.testing.assert_allclose(a.prompt_attention, b.prompt_attention, atol=1e-5, rtol=0)


def test_the_model_is_left_as_it_was(tiny):
    lm = tiny("llama")
    before = lm.model.config._attn_implementation
    list(generate_steps(lm, PROMPT, 2))
    assert lm.model.config._attn_implementation == before


def test_a_model_whose_rows_differ_keeps_eager(tiny, monkeypatch):
    lm = tiny("gpt2")
    real = fast_attention.openmav_attention

    def off_by_a_little(*args, **kwargs):
        out, probs = real(*args, **kwargs)
        return out, probs * 0.999

    from transformers import AttentionInterface

    monkeypatch.setitem(AttentionInterface._global_mapping, fast_attention.NAME, off_by_a_little)
    assert not rows_match_eager(lm.model, lm.parts)  # what find_parts records at load
