"""Figures checked by their data: the arrays behind the images equal the numbers they show."""

from __future__ import annotations

import re

import matplotlib
import numpy as np
import pytest

from openmav.analysis import compare
from openmav.analysis.extractor import AttentionExtractor
from openmav.analysis.head_scores import compute_head_scores
from openmav.analysis.visualizer import AttentionVisualizer, NotebookFigure
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
    with pytest.raises(InputError, match=r"are 0\.\.3"):
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
    stats = ex.get_attention_stats(PROMPTS[0])  # {layer: {metric: mean over heads}}
    heads = ex.get_head_stats(PROMPTS[0])       # {metric: [layers, heads]}
    for drawn in (stats, heads):
        fig = viz.plot_layer_statistics(drawn)
        for ax, metric in zip(fig.axes, ("entropy", "max_weight", "sparsity", "distance", "sink")):
            line = ax.lines[0]
            assert list(line.get_xdata()) == list(range(12))  # 0, 1, 2, ..., 11 (never "10" before "2")
            np.testing.assert_allclose(line.get_ydata(), heads[metric].mean(1), rtol=1e-6)
            np.testing.assert_allclose(line.get_ydata(), [stats[layer][metric] for layer in stats], rtol=1e-6)


def test_neuron_plots(setup):
    ex, res, viz = setup
    neurons = ex.get_neuron_activations(PROMPTS[0], 3)
    fig = viz.plot_neuron_activations(neurons, neurons.tokens, top_k=10)
    order = fig.neuron_indices
    assert len(order) == 10
    np.testing.assert_array_equal(np.asarray(fig.axes[0].images[0].get_array()), neurons.mlp[:, order])
    assert set(order) == set(np.argsort(neurons.mlp.var(0))[::-1][:10])
    comparison = compare.compare_prompts(ex, PROMPTS)
    fig = viz.plot_activation_comparison(comparison, layer_idx=3, top_k=5)
    idx = fig.neuron_indices
    m = min(len(r.tokens) for r in comparison)
    for line, r in zip(fig.axes[0].lines, comparison):  # means over positions 1..m-1, as the table's
        want = ex.get_neuron_activations(r.prompt, 3).mlp[1:m, idx].mean(0)
        np.testing.assert_allclose(line.get_ydata(), want, rtol=1e-4, atol=1e-6)
    assert "positions 1.." in fig.axes[0].get_ylabel()


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
    figs = [viz.plot_attention_heatmap(res.attention, res.tokens), viz.plot_all_heads(res.attention, res.tokens),
            viz.plot_layer_statistics(ex.get_attention_stats(PROMPTS[0]))]
    assert plt.get_fignums() == before  # nothing registered with pyplot, nothing shown
    assert matplotlib.get_backend()
    for fig in figs:  # Jupyter shows a figure that ends a cell through _repr_png_, with no magic
        assert isinstance(fig, NotebookFigure) and isinstance(fig, matplotlib.figure.Figure)
        png = fig._repr_png_()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 2000
    assert plt.get_fignums() == before
    comparison = compare.compare_prompts(ex, PROMPTS[:2])
    for obj in (res, ex.get_attention_stats(PROMPTS[1]), ex.compare_prompts(PROMPTS[:2]), comparison):
        html = obj._repr_html_()
        assert "<table>" in html and "http" not in html


def test_text_reprs_are_a_few_lines(setup):
    ex, res, viz = setup
    scores = compute_head_scores(ex, seq_len=6, batch=1)
    comparison = compare.compare_prompts(ex, PROMPTS)
    stats = ex.get_attention_stats(PROMPTS[0])
    for obj in (scores, comparison, stats, stats.heads, stats.heads._stats, res):
        text = repr(obj)
        assert len(text.splitlines()) <= 8 and len(text) < 800, text
        assert "[[" not in text and "array(" not in text  # never array contents
    assert "12 layers x 4 heads" in repr(scores) and "which every prompt has" in repr(comparison)


def test_out_of_range_names_the_valid_range(setup):
    ex, res, viz = setup
    cases = [
        (lambda: viz.plot_all_heads(res.attention, res.tokens, layer_idx=12), r"the 12 layers are 0\.\.11"),
        (lambda: viz.plot_all_heads(res.attention_array(), res.tokens, layer_idx=-13), r"0\.\.11"),
        (lambda: viz.plot_attention_heatmap(res.attention, res.tokens, layer_idx=40), r"0\.\.11"),
        (lambda: viz.plot_attention_heatmap(res.attention, res.tokens, 2, head_idx=4), r"the 4 heads .* 0\.\.3"),
        (lambda: viz.plot_attention_heatmap(res.attention, res.tokens[:3]), "give the tokens of the same prompt"),
        (lambda: viz.plot_neuron_activations(np.zeros((6, 8)), res.tokens, top_k=0), "top_k must be"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            call()
        assert isinstance(info.value, InputError) and len(str(info.value).splitlines()) == 1
    with pytest.raises(IndexError, match=r"0\.\.11"):  # also an IndexError, for code that caught the bare one
        viz.plot_all_heads(res.attention, res.tokens, layer_idx=12)
    comparison = compare.compare_prompts(ex, PROMPTS[:2])
    with pytest.raises(IndexError, match=r"0\.\.11"):
        viz.plot_activation_comparison(comparison, layer_idx=12)


def test_seed_imports_are_the_project_classes():
    """openmav.model_loader / openmav.visualizer: the seed's src.* names over the analysis API's classes."""
    import openmav.model_loader as model_loader
    import openmav.visualizer as visualizer
    from openmav.analysis.extractor import AttentionExtractor as Real

    assert visualizer.AttentionVisualizer is AttentionVisualizer
    assert issubclass(model_loader.AttentionExtractor, Real)
    # only compare_prompts is adapted; everything else is the real class's own
    own = {name for name, value in vars(model_loader.AttentionExtractor).items() if callable(value)}
    assert own == {"compare_prompts"}


def test_seed_compare_then_plot(tmp_path):
    """The seed's two methods side by side: viz.plot_activation_comparison(extractor.compare_prompts([...]))."""
    from openmav.model_loader import AttentionExtractor as SeedExtractor
    from openmav.testing import tiny_model
    from openmav.visualizer import AttentionVisualizer as SeedVisualizer

    lm = tiny_model("llama", n_layers=4)
    extractor, viz = SeedExtractor(model=lm), SeedVisualizer()
    results = extractor.compare_prompts(PROMPTS)
    fig = viz.plot_activation_comparison(results, save_path=tmp_path / "neuron_comparison.png")
    assert (tmp_path / "neuron_comparison.png").stat().st_size > 5000
    idx = fig.neuron_indices
    m = min(len(r.tokens) for r in results)
    plain = AttentionExtractor(model=lm)
    assert len(fig.axes[0].lines) == 3
    for line, (prompt, data) in zip(fig.axes[0].lines, results.items()):
        want = plain.get_neuron_activations(prompt, -1).mlp[1:m, idx].mean(0)  # positions 1..m-1 of the last layer
        np.testing.assert_allclose(line.get_ydata(), want, rtol=1e-4, atol=1e-6)
        assert data["tokens"] == plain.extract_activations(prompt).tokens and len(data["attention_weights"]) == 4
    spread = results.neuron_values[:, -1].max(0) - results.neuron_values[:, -1].min(0)
    assert spread[idx[0]] == spread.max()  # the neuron that differs most comes first
    # the seed's compare_prompts takes what the analysis API's does: one prompt, a one-token prompt
    for prompts in (["The cat sat on the mat"], ["hello", "The cat sat on the mat"]):
        single = extractor.compare_prompts(prompts)
        assert [p for p, _ in single.items()] == prompts and not isinstance(single, compare.PromptComparison)
        with pytest.raises(InputError, match="compare_prompts") as info:
            viz.plot_activation_comparison(single)
        assert len(str(info.value).splitlines()) == 1
    with pytest.raises(InputError, match="prompt 1 is empty"):
        extractor.compare_prompts(["The cat sat", "  "])
