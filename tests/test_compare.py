"""`mav compare` end to end on a tiny model directory, and the difference table against recomputation."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from openmav.analysis import compare
from openmav.analysis.extractor import AttentionExtractor
from openmav.cli import main

PROMPTS = ["The cat sat on the mat", "A cat was sitting on a mat", "I love this movie, it is wonderful!"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from openmav.testing import tiny_model

    lm = tiny_model("gpt2", n_layers=3)
    path = tmp_path_factory.mktemp("tiny-gpt2")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path


def test_differences_against_recomputation(tiny):
    ex = AttentionExtractor(model=tiny("llama", n_layers=3))
    comparison = ex.compare_prompts(PROMPTS)
    rows = compare.head_differences(comparison, "sink", top_k=3)
    sinks = np.stack([ex.get_attention_stats(p)["sink"] for p in PROMPTS])  # prompts run alone
    spread = sinks.max(0) - sinks.min(0)
    assert rows[0].difference == pytest.approx(spread.max(), abs=1e-5)
    assert (rows[0].layer, rows[0].index) == np.unravel_index(spread.argmax(), spread.shape)
    assert [r.difference for r in rows] == sorted((r.difference for r in rows), reverse=True)
    neurons = compare.neuron_differences(comparison, top_k=2)
    top = neurons[0]
    means = [ex.get_neuron_activations(p, top.layer).mlp[:, top.index].mean() for p in PROMPTS]
    np.testing.assert_allclose(top.values, means, rtol=1e-4, atol=1e-5)
    assert top.difference == pytest.approx(max(means) - min(means), rel=1e-4)


def test_compare_custom_end_to_end(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["compare", "--mode", "custom", "--model", str(model_dir), "--output-dir", str(out),
                 "--prompt1", PROMPTS[0], "--prompt2", PROMPTS[1], "--prompts", PROMPTS[2], "--top-k", "3"])
    assert code == 0
    folder = out / "custom"
    names = {p.name for p in folder.iterdir()}
    assert {"attention_0.png", "attention_2.png", "all_heads_1.png", "neuron_comparison.png",
            "layer_stats.png", "differences.csv"} <= names
    with (folder / "differences.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 * 3 + 3 and rows[0]["kind"] == "head" and rows[-1]["kind"] == "neuron"
    values = [float(rows[0][f"prompt_{i}"]) for i in range(3)]
    assert float(rows[0]["difference"]) == pytest.approx(max(values) - min(values), rel=1e-4)
    printed = capsys.readouterr().out
    assert "largest differences" in printed and "p2" in printed


def test_compare_interactive(model_dir, tmp_path):
    code = main(["compare", "--mode", "interactive", "--model", str(model_dir), "--output-dir", str(tmp_path)])
    assert code == 0
    html = (tmp_path / "interactive" / "interactive_attention.html").read_text()
    assert "plotly" in html.lower() and len(html) > 1_000_000


@pytest.mark.parametrize("argv,message", [
    (["--mode", "custom", "--prompt1", "only one"], "at least 2"),
    (["--mode", "custom"], "needs prompts"),
    (["--mode", "simple", "--layer", "7"], "valid indices are 0..2"),
    (["--mode", "custom", "--prompts", "a b", "   "], "prompt 1 is empty"),
])
def test_compare_bad_input(model_dir, tmp_path, capsys, argv, message):
    code = main(["compare", "--model", str(model_dir), "--output-dir", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
