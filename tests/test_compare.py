"""`mav compare` end to end on a tiny model directory, and the difference table against recomputation."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from openmav.analysis import compare
from openmav.analysis.extractor import AttentionExtractor
from openmav.analysis.visualizer import AttentionVisualizer
from openmav.cli import main
from openmav.errors import InputError

PROMPTS = ["The cat sat on the mat", "A cat was sitting on a mat", "I love this movie, it is wonderful!"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from openmav.testing import tiny_model

    lm = tiny_model("gpt2", n_layers=3)
    path = tmp_path_factory.mktemp("tiny-gpt2")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path


def _direct_sink(att: np.ndarray, rows: range) -> np.ndarray:
    """Mean over query rows of A[l, h, i, 0], by loops: [L, H]."""
    L, H = att.shape[:2]
    return np.array([[np.mean([att[layer, h, i, 0] for i in rows]) for h in range(H)] for layer in range(L)])


def test_differences_against_recomputation(tiny):
    ex = AttentionExtractor(model=tiny("llama", n_layers=3))
    comparison = compare.compare_prompts(ex, PROMPTS)
    alone = [ex.extract_activations(p) for p in PROMPTS]  # each prompt run alone
    m = min(len(r.tokens) for r in alone)
    assert [list(s) for s in comparison.spans] == [list(range(1, m))] * 3  # aligned, first position left out
    rows = compare.head_differences(comparison, "sink", top_k=3)
    sinks = np.stack([_direct_sink(r.attention_array(), range(1, m)) for r in alone])
    spread = sinks.max(0) - sinks.min(0)
    assert rows[0].difference == pytest.approx(spread.max(), abs=1e-5)
    assert (rows[0].layer, rows[0].index) == np.unravel_index(spread.argmax(), spread.shape)
    assert [r.difference for r in rows] == sorted((r.difference for r in rows), reverse=True)
    top = compare.neuron_differences(comparison, top_k=2)[0]
    means = [ex.get_neuron_activations(p, top.layer).mlp[1:m, top.index].mean() for p in PROMPTS]
    np.testing.assert_allclose(top.values, means, rtol=1e-4, atol=1e-5)
    assert top.difference == pytest.approx(max(means) - min(means), rel=1e-4, abs=1e-6)


def test_all_positions_and_first_included(tiny):
    ex = AttentionExtractor(model=tiny("llama", n_layers=3))
    own = compare.compare_prompts(ex, PROMPTS, positions="all")
    lengths = [len(r.tokens) for r in own]
    assert [(s.start, s.stop) for s in own.spans] == [(1, n) for n in lengths]
    top = compare.neuron_differences(own, top_k=1)[0]
    means = [ex.get_neuron_activations(p, top.layer).mlp[1:, top.index].mean() for p in PROMPTS]
    np.testing.assert_allclose(top.values, means, rtol=1e-4, atol=1e-5)
    first = compare.compare_prompts(ex, PROMPTS, skip_first=False)
    assert first.spans[0].start == 0
    layer, unit = top.layer, top.index
    means = [ex.get_neuron_activations(p, layer).mlp[:min(lengths), unit].mean() for p in PROMPTS]
    np.testing.assert_allclose(first.neuron_values[:, layer, unit], means, rtol=1e-4, atol=1e-5)


def test_appended_text_changes_nothing_on_aligned_positions(tiny):
    """A causal model reads a prompt's positions the same whatever follows: aligned values are equal."""
    ex = AttentionExtractor(model=tiny("llama", n_layers=3))
    comparison = compare.compare_prompts(ex, [PROMPTS[0], " ".join([PROMPTS[0]] * 3)])
    rows = compare.differences(comparison, top_k=3)
    assert max(r.difference for r in rows) < 1e-4
    assert "only positions 1..5, which all of them have" in comparison.note()


def test_plain_comparison(tiny):
    ex = AttentionExtractor(model=tiny("llama", n_layers=3))
    plain, full = ex.compare_prompts(PROMPTS), compare.compare_prompts(ex, PROMPTS)
    for metric in compare.HEAD_METRICS:
        a = compare.head_differences(plain, metric, top_k=4)
        b = compare.head_differences(full, metric, top_k=4)
        assert [(r.layer, r.index) for r in a] == [(r.layer, r.index) for r in b]
        np.testing.assert_allclose([r.difference for r in a], [r.difference for r in b], atol=1e-6)
    assert {r.kind for r in compare.differences(plain, top_k=2)} == {"head"}
    with pytest.raises(ValueError, match="compare_prompts"):
        compare.neuron_differences(plain)
    with pytest.raises(ValueError, match="compare_prompts"):
        AttentionVisualizer().plot_activation_comparison(plain)


def test_bad_input_in_the_api(tiny):
    ex = AttentionExtractor(model=tiny("llama", n_layers=3))
    cases = [
        (dict(prompts=["a", PROMPTS[0]]), r"prompt 0 \('a'\) is 1 token"),
        (dict(prompts=[PROMPTS[0]]), "at least 2 prompts, got 1"),
        (dict(prompts=PROMPTS[0]), "got one string"),
        (dict(prompts=PROMPTS, positions="middle"), "positions must be one of aligned, all"),
        (dict(prompts=[PROMPTS[0], " "]), "prompt 1 is empty"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InputError, match=message) as info:
            compare.compare_prompts(ex, **kwargs)
        assert len(str(info.value).splitlines()) == 1
    comparison = compare.compare_prompts(ex, PROMPTS[:2])
    with pytest.raises(ValueError, match="top_k must be an integer >= 1"):
        compare.head_differences(comparison, top_k=0)
    with pytest.raises(ValueError, match="unknown head statistic 'mean'"):
        compare.head_differences(comparison, "mean")


def test_layer_statistics_show_every_prompt(tiny, tmp_path):
    ex = AttentionExtractor(model=tiny("llama", n_layers=4))
    comparison = compare.compare_prompts(ex, PROMPTS)
    fig = AttentionVisualizer().plot_layer_statistics(comparison, tmp_path / "s.png", note="a note")
    stats = comparison.head_stats()
    for ax, metric in zip(fig.axes, ("entropy", "max_weight", "sparsity", "distance", "sink")):
        assert len(ax.lines) == 3
        for line, st in zip(ax.lines, stats):
            assert list(line.get_xdata()) == [0, 1, 2, 3]
            np.testing.assert_allclose(line.get_ydata(), st[metric].mean(1), rtol=1e-6)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["p0: The cat sat on the mat", "p1: A cat was sitting on a mat",
                      "p2: I love this movie, it is wonderful!"]
    np.testing.assert_allclose(stats[1]["sink"], comparison.head_values("sink")[1])


def test_compare_custom_end_to_end(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    prompts = [PROMPTS[0], 'A "cat", sitting;\non a mat', PROMPTS[2]]
    code = main(["compare", "--mode", "custom", "--model", str(model_dir), "--output-dir", str(out),
                 "--prompt1", prompts[0], "--prompt2", prompts[1], "--prompts", prompts[2], "--top-k", "3"])
    assert code == 0
    folder = out / "custom"
    names = {p.name for p in folder.iterdir()}
    assert {"attention_0.png", "attention_2.png", "all_heads_1.png", "neuron_comparison.png",
            "layer_stats.png", "differences.csv"} <= names
    with (folder / "differences.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    described = {r["metric"]: [r[f"prompt_{i}"] for i in range(3)] for r in rows if r["kind"] == "prompt"}
    assert described["text"] == prompts  # quoted by the csv module: commas, quotes and newlines survive
    tokens = [int(n) for n in described["tokens"]]
    assert described["positions"] == [f"1..{min(tokens) - 1}"] * 3
    values_rows = [r for r in rows if r["kind"] != "prompt"]
    assert len(values_rows) == 3 * 3 + 3 and values_rows[0]["kind"] == "head" and values_rows[-1]["kind"] == "neuron"
    values = [float(values_rows[0][f"prompt_{i}"]) for i in range(3)]
    assert float(values_rows[0]["difference"]) == pytest.approx(max(values) - min(values), rel=1e-4, abs=1e-5)
    printed = capsys.readouterr().out
    assert "largest differences" in printed and "p2" in printed and "which every prompt has" in printed


def test_compare_interactive(model_dir, tmp_path):
    code = main(["compare", "--mode", "interactive", "--model", str(model_dir), "--output-dir", str(tmp_path)])
    assert code == 0
    html = (tmp_path / "interactive" / "interactive_attention.html").read_text()
    assert "plotly" in html.lower() and len(html) > 1_000_000


def test_compare_lengths_differ_one_note(model_dir, tmp_path, capsys):
    long = " ".join(["The cat sat on the mat"] * 4)
    code = main(["compare", "--mode", "custom", "--model", str(model_dir), "--output-dir", str(tmp_path),
                 "--prompt1", "The cat", "--prompt2", long, "--top-k", "2"])
    captured = capsys.readouterr()
    assert code == 0 and "Traceback" not in captured.err
    notes = [line for line in captured.out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "2 to 24 tokens" in notes[0] and "--positions all" in notes[0]
    code = main(["compare", "--mode", "custom", "--model", str(model_dir), "--output-dir", str(tmp_path), "--force",
                 "--prompt1", "The cat", "--prompt2", long, "--top-k", "2", "--positions", "all"])
    assert code == 0 and "note:" not in capsys.readouterr().out
    with (tmp_path / "custom" / "differences.csv").open(newline="") as fh:
        positions = next(r for r in csv.DictReader(fh) if r["metric"] == "positions")
    assert (positions["prompt_0"], positions["prompt_1"]) == ("1..1", "1..23")


@pytest.mark.parametrize("argv,message", [
    (["--mode", "custom", "--prompt1", "only one"], "at least 2"),
    (["--mode", "custom"], "needs prompts"),
    (["--mode", "simple", "--layer", "7"], "valid indices are 0..2"),
    (["--mode", "custom", "--prompts", "a b", "   "], "prompt 1 is empty"),
    (["--mode", "custom", "--prompts", "a b", ""], "prompt 1 is empty"),
    (["--mode", "custom", "--prompts", "a", "The cat sat"], "prompt 0 ('a') is 1 token"),
    (["--mode", "all", "--prompts", "The cat sat", "b"], "prompt 1 ('b') is 1 token"),
    (["--mode", "custom", "--prompts", "a b", "c d", "--positions", "middle"], "invalid choice"),
])
def test_compare_bad_input(model_dir, tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    code = main(["compare", "--model", str(model_dir), "--output-dir", str(out), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() or not any(out.rglob("*.*"))  # refused before any file was written
