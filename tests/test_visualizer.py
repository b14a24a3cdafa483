"""Figures checked by their data: the arrays behind the images equal the numbers they show."""

from __future__ import annotations

import re

import matplotlib
import numpy as np
import pytest

from openmav.analysis.extractor import AttentionExtractor
from openmav.analysis.head_scores import compute_head_scores
from openmav.analysis.visualizer import AttentionVisualizer
from openmav.errors import InputError

PROMPTS = ["The cat sat on the mat", "A cat was sitting on a mat", "I love this movie"]


@pytest.fixture(scope="module")
def setup():
    from openmav.testing import tiny_model

    ex = AttentionExtractor(model=tiny_model("llama", n_layers=12))
    return ex, ex.extract_activations(PROMPTS[0]), AttentionVisualizer()


def test_heatmap_data_is_the_attention(setup, tmp_path):
    ex, res, viz = setup
    fig = viz.plot_attention_heatmap(res.attention, res.tokens, layer_idx=10, head_idx=3,
                                     save_path=tmp_path / "h.png")
    ax = fig.axes[0]
    np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), res.attention[10][0, 3])
    assert [t.get_text() for t in ax.get_xticklabels()] == res.tokens
    assert (tmp_path / "h.png").stat().st_size > 1000
    # the original project's call: one layer's [1, h, s, s]
    fig2 = viz.plot_attention_heatmap(res["attention_weights"][0], res["tokens"], layer_idx=0, head_idx=1)
    np.testing.assert_array_equal(np.asarray(fig2.axes[0].images[0].get_array()), res.attention[0][0, 1])
    with pytest.raises(InputError, match=r"valid 0\.\.3"):
        viz.plot_attention_heatmap(res.attention, res.tokens, layer_idx=0, head_idx=4)


def test_all_heads_share_one_scale(setup):
    ex, res, viz = setup
    fig = viz.plot_all_heads(res.attention, res.tokens, layer_idx=5)
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 4
    for h, im in enumerate(images):
        np.testing.assert_array_equal(np.asarray(im.get_array()), res.attention[5][0, h])
    assert len({im.get_clim() for im in images}) == 1
    assert images[0].get_clim()[1] == pytest.approx(res.attention[5].max())
    own = viz.plot_all_heads(res.attention, res.tokens, layer_idx=5, shared_scale=False)
    clims = [ax.images[0].get_clim()[1] for ax in own.axes if ax.images]
    np.testing.assert_allclose(clims, res.attention[5][0].max(axis=(1, 2)))


def test_layer_statistics_numeric_order(setup):
    ex, res, viz = setup
    stats = ex.get_attention_stats(PROMPTS[0])
    fig = viz.plot_layer_statistics(stats)
    for ax, metric in zip(fig.axes, ("entropy", "max_weight", "sparsity", "distance", "sink")):
        line = ax.lines[0]
        assert list(line.get_xdata()) == list(range(12))  # 0, 1, 2, ..., 11 (never "10" before "2")
        np.testing.assert_allclose(line.get_ydata(), stats[metric].mean(1), rtol=1e-6)


def test_neuron_plots(setup):
    ex, res, viz = setup
    neurons = ex.get_neuron_activations(PROMPTS[0], 3)
    fig = viz.plot_neuron_activations(neurons, neurons.tokens, top_k=10)
    order = fig.neuron_indices
    assert len(order) == 10
    np.testing.assert_array_equal(np.asarray(fig.axes[0].images[0].get_array()), neurons.mlp[:, order])
    assert set(order) == set(np.argsort(neurons.mlp.var(0))[::-1][:10])
    comparison = ex.compare_prompts(PROMPTS)
    fig = viz.plot_activation_comparison(comparison, layer_idx=3, top_k=5)
    idx = fig.neuron_indices
    for line, r in zip(fig.axes[0].lines, comparison):
        np.testing.assert_allclose(line.get_ydata(), r.mlp_mean[3][idx], rtol=1e-6)


def test_head_scores_plot(setup, tmp_path):
    ex, res, viz = setup
    scores = compute_head_scores(ex.handle.lm, seq_len=6, batch=1)
    fig = viz.plot_head_scores(scores, save_path=tmp_path / "s.png")
    for ax, name in zip(fig.axes, ("previous_token", "duplicate_token", "induction")):
        np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), scores.get(name))
    assert (tmp_path / "s.png").exists()


def test_interactive_is_offline(setup, tmp_path):
    ex, res, viz = setup
    path = tmp_path / "i.html"
    fig = viz.plot_interactive_attention(res, save_path=path, layers=[0, 11])
    assert len(fig.data) == 2 * 4 and fig.data[0].visible and not fig.data[1].visible
    np.testing.assert_allclose(np.asarray(fig.data[5].z), res.attention[11][0, 1], atol=1e-5)
    html = path.read_text()
    assert not re.search(r"<script[^>]*\ssrc=", html) and len(html) > 1_000_000  # plotly.js inside, no CDN
    snippet = fig._repr_html_()
    assert not re.search(r"<script[^>]*\ssrc=", snippet) and len(snippet) > 1_000_000


def test_no_pyplot_state_and_notebook_reprs(setup):
    import matplotlib.pyplot as plt

    ex, res, viz = setup
    before = plt.get_fignums()
    viz.plot_attention_heatmap(res.attention, res.tokens)
    viz.plot_all_heads(res.attention, res.tokens)
    assert plt.get_fignums() == before  # nothing registered with pyplot, nothing shown
    assert matplotlib.get_backend()
    for obj in (res, ex.get_attention_stats(PROMPTS[1]), ex.compare_prompts(PROMPTS[:2])):
        html = obj._repr_html_()
        assert "<table>" in html and "http" not in html
