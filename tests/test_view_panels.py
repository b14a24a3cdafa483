"""Panels drawn into a recording console: exact text on hand-made records (also hybrid and
attention-free ones), scales and legends, the status line, the JSON-lines keys, --threads."""

from __future__ import annotations

import json

import numpy as np
import pytest
from view_fixtures import make_big_record, make_record, render

from openmav.errors import InputError
from openmav.processors.state_processor import StateProcessor
from openmav.view.layout import Dashboard, StatusLine, grid_shape
from openmav.view.main_loop_manager import HELP, SHORT_HELP
from openmav.view.panels.bars import bar, choose_scale, column_chart, scaled, shade
from openmav.view.options import ViewOptions
from openmav.view.panels.panel_base import PanelBase
from openmav.view.panels.registry import BUILTIN, make_panels, needed_captures


def panel(name, **opts):
    m = StateProcessor().process(make_record())
    options = ViewOptions(prompt="The cat sat on", max_bar_length=8, **opts)
    return make_panels([name], None, m, options)[0]


EXPECTED = {
    "generated_text": """\
╭─────────── Generated text ───────────╮
│ The cat sat on the                   │
╰──────────────────────────────────────╯""",
    "top_predictions": """\
╭────────── Top predictions ───────────╮
│   token          prob   logit        │
│ ▶ ␣the          50.0%   -0.69 ███    │
│   ␣on           20.0%   -1.61 █▎     │
│   ␣sat          15.0%   -1.90 ▉      │
│   ␣cat          10.0%   -2.30 ▋      │
│   The            5.0%   -3.00 ▎      │
╰──────────────────────────────────────╯""",
    "output_distribution": """\
╭──────── Output distribution ─────────╮
│ entropy    1.333 nats                │
│ exp(H)       3.8 tokens              │
│ top-1      50.0% ████                │
│ top-5     100.0% ████████            │
│ top-20    100.0% ████████            │
│ chosen    #1 50.0%                   │
╰──────────────────────────────────────╯""",
    "mlp_activations": """\
╭──── MLP output L2 norm · linear ─────╮
│ linear: 0 … 4.00 (L2)                │
│ L0 ██       1.00                     │
│ L1 ████     2.00                     │
│ L2 ████████ 4.00                     │
╰──────────────────────────────────────╯""",
    "attention_entropy": """\
╭─ Attention entropy (nats) · linear ──╮
│ linear: 0 … 0.99 (L1)                │
│ L0 █████▋   0.69                     │
│ L1 ████████ 0.99                     │
│ L2 ███▉     0.47                     │
╰──────────────────────────────────────╯""",
    "residual_stream": """\
╭── Residual stream L2 norm · linear ──╮
│ linear: 0 … 40.0 (L2)                │
│ L0 ██       10.0                     │
│ L1 ████     20.0                     │
│ L2 ████████ 40.0                     │
╰──────────────────────────────────────╯""",
    "logit_lens": """\
╭──── Logit lens (top-1 per layer) ────╮
│ L0 The                         30.0% │
│ L1 ␣on                         60.0% │
│ L2 ␣the                        50.0% │
╰──────────────────────────────────────╯""",
    "attention": """\
╭───── Attention L2 mean of heads ─────╮
│ 3 ␣on            ████▍    0.550      │
│ 0 The            ██▊      0.350      │
│ 1 ␣cat           ▍        0.050      │
│ 2 ␣sat           ▍        0.050      │
╰──────────────────────────────────────╯""",
    "head_entropy": """\
╭────── Head entropy (÷ ln keys) ──────╮
│ ÷ ln keys: 0 ░▒▓█ 1, · n/a           │
│ L0 █░                                │
│ L1 ▓█                                │
│ L2 ░▓                                │
╰──────────────────────────────────────╯""",
}


@pytest.mark.parametrize("name", list(BUILTIN))
def test_panel_exact_text(name):
    assert render(panel(name), width=40).rstrip("\n") == EXPECTED[name]


def test_layers_pack_into_columns_when_short():
    assert render(panel("mlp_activations"), width=40, height=5).rstrip("\n") == """\
╭──── MLP output L2 norm · linear ─────╮
│ linear: 0 … 4.00 (L2)                │
│ L0 ██       1.00   L2 ████████ 4.00  │
│ L1 ████     2.00                     │
╰──────────────────────────────────────╯"""


def test_layers_as_columns_when_rows_do_not_fit():
    """Too short for a row per layer with a readable bar: a vertical bar per layer, numbered."""
    text = render(panel("mlp_activations"), width=16, height=6)
    assert text.rstrip("\n") == """\
╭──── MLP ─────╮
│ linear       │
│     █        │
│ ▄ █ █        │
│ 0   2        │
╰──────────────╯"""


def test_attention_one_head_and_max_abs_title():
    text = render(panel("attention", layer=1, head=1), width=40)
    assert "Attention L1 H1" in text
    assert text.splitlines()[1] == "│ 3 ␣on            ███▎     0.400      │"
    assert "MLP output max |x|" in render(panel("mlp_activations", aggregation="max_abs"))


def test_generated_text_limit_and_whitespace_token():
    rec = make_record()
    m = StateProcessor().process(rec)
    p = make_panels(["generated_text"], None, m, ViewOptions(prompt="The cat sat on", limit_chars=6))[0]
    assert "│ …on the" in render(p, width=30)


class Broken(PanelBase):
    def __init__(self, measurements):
        super().__init__("Broken", "red")
        self.measurements = measurements

    def get_panel_content(self):
        return 1 / 0


def test_panel_error_stays_inside_panel():
    m = StateProcessor().process(make_record())
    text = render(Broken(m), width=70)
    assert "panel error: ZeroDivisionError: division by zero" in text
    assert text.startswith("╭")


def test_unknown_panel_lists_valid_names():
    with pytest.raises(InputError, match="valid panels are generated_text, top_predictions.*head_entropy, Broken"):
        make_panels(["nope"], [Broken])


def test_captures_follow_panels():
    assert needed_captures(make_panels(["generated_text", "mlp_activations"])) == set()
    assert needed_captures(make_panels(["logit_lens"])) == {"logit_lens"}
    assert needed_captures(make_panels(["head_entropy", "generated_text"])) == {"attention"}
    assert needed_captures(make_panels(["generated_text", "Broken"], [Broken])) == {"attention"}


def test_grid_shape_and_small_terminal_note():
    assert grid_shape(6, None, 80, 23) == (3, 2, 6)  # 80x24 less the status line
    assert grid_shape(6, None, 200, 59) == (2, 3, 6)
    assert grid_shape(9, None, 80, 23) == (3, 2, 6)  # the last three do not fit
    assert grid_shape(9, None, 200, 59) == (3, 3, 9)
    assert grid_shape(6, 1, 250, 40) == (1, 6, 6)
    assert grid_shape(6, 1, 150, 40) == (1, 4, 4)  # one row, as asked: 4 panels of 37 cells
    assert grid_shape(6, 2, 50, 11) == (1, 1, 1)
    assert grid_shape(3, None, 20, 4) == (1, 1, 1)  # never nothing
    m = StateProcessor().process(make_record())
    dash = Dashboard(make_panels(None, None, m, ViewOptions()), num_grid_rows=2)
    dash.show(m)
    text = render(dash, width=80, height=13)
    last = text.splitlines()[-1]
    assert "80x13 · hidden: attention, output_distribution" in last
    assert "Generated text" in text and "MLP" in text and "entropy" in text and "Attention L" not in text
    assert len(text.splitlines()) == 13
    assert [p.panel_name() for p in dash.hidden_panels] == ["attention", "output_distribution"]


def test_status_line_reports_the_terminal_size_not_the_region():
    """The live view prints the last frame in a region 3 lines shorter: the size is still the terminal's."""
    import io

    from rich.console import Console

    m = StateProcessor().process(make_record())
    dash = Dashboard(make_panels(["generated_text"], None, m, ViewOptions()))
    dash.show(m)
    console = Console(record=True, width=80, height=24, file=io.StringIO(), color_system=None)
    console.print(dash, height=21)
    assert "80x24" in console.export_text() and "80x21" not in console.export_text()


def test_status_line_fits_by_leaving_parts_out():
    status = StatusLine("mav · a-model-with-a-long-name")
    status.token, status.speed = "token 3/12", "70 ms/token"
    status.help, status.short_help = HELP, SHORT_HELP
    wide = status.render(200, "200x60").plain
    assert wide == f"mav · a-model-with-a-long-name · token 3/12 · 70 ms/token · 200x60 · {HELP}"
    line = status.render(80, "80x24").plain
    assert line == f"token 3/12 · 80x24 · {SHORT_HELP}" and len(line) <= 80
    hidden = ["logit_lens", "output_distribution", "residual_stream", "head_entropy"]
    assert status.render(80, "80x24", hidden).plain == f"token 3/12 · 80x24 · 4 hidden · {SHORT_HELP}"
    assert len(status.render(20, "20x5", hidden).plain) <= 20


def test_hybrid_layers_read_na_and_never_crash():
    """A layer without attention (NaN entropy, zero rows): a dim '·' / 'n/a', never an error."""
    m = StateProcessor().process(make_record(hybrid=True))
    opts = ViewOptions(max_bar_length=8)
    text = {name: render(p, width=40) for name, p in zip(BUILTIN, make_panels(list(BUILTIN), None, m, opts))}
    assert "panel error" not in "".join(text.values())
    assert "│ L1 ·         n/a" in text["attention_entropy"]
    assert "│ L1 ··" in text["head_entropy"]
    assert "Attention L2 mean of heads" in text["attention"]  # the last layer has attention
    chosen = make_panels(["attention"], None, m, ViewOptions(layer=1))[0]
    assert "L1 has no attention (n/a)" in render(chosen, width=60)
    hybrid_last = make_record(hybrid=True)
    hybrid_last.attention[2] = 0.0
    hybrid_last.attention_entropy[2] = np.nan
    default = make_panels(["attention"], None, StateProcessor().process(hybrid_last), ViewOptions())[0]
    assert "Attention L0 mean of heads" in render(default, width=60)  # the last layer that has attention


def test_model_without_attention_says_so():
    m = StateProcessor().process(make_record(attention=False))
    for p in make_panels(["attention_entropy", "attention", "head_entropy"], None, m, ViewOptions()):
        text = render(p, width=60)
        assert "no attention captured" in text and "panel error" not in text


def test_auto_scale_goes_log_when_one_layer_dominates_and_every_layer_shows():
    m = StateProcessor().process(make_big_record())
    mlp = make_panels(["mlp_activations"], None, m, ViewOptions())[0]
    text = render(mlp, width=60, height=40)
    assert "MLP output L2 norm · log" in text and "log scale" in text
    rows = [line for line in text.splitlines() if line.startswith("│ L") or line.startswith("│  L")]
    assert len(rows) == 30
    assert all(any(ch in line for ch in "▏▎▍▌▋▊▉█") for line in rows)  # no layer reads as zero
    linear = make_panels(["mlp_activations"], None, m, ViewOptions(scale="linear"))[0]
    assert "MLP output L2 norm · linear" in render(linear, width=60, height=40)
    flat = make_panels(["residual_stream"], None, m, ViewOptions())[0]
    assert "Residual stream L2 norm · linear" in render(flat, width=60, height=40)  # no dominant layer


def test_scales_and_lowest_marks_are_visible():
    assert shade(0.0) == "░" and shade(1.0) == "█" and shade(float("nan")) == "·"
    assert bar(0.001, 4) == "▏   " and bar(0.0, 4) == "    " and bar(1.0, 2) == "██"
    assert column_chart([0.001, 0.0, float("nan"), 1.0], 2) == ["   █", "▁ ·█"]
    np.testing.assert_allclose(scaled([1.0, 10.0, 100.0], "log"), [0.0, 0.5, 1.0])
    np.testing.assert_allclose(scaled([2.0, 4.0, np.nan], "linear"), [0.5, 1.0, np.nan])
    assert choose_scale([10, 12, 11, 500], "auto") == "log" and choose_scale([10, 12, 11, 50], "auto") == "linear"
    assert choose_scale([10, 12, 11, 500], "minmax") == "minmax"


def test_every_per_layer_panel_has_a_legend_naming_its_scale():
    m = StateProcessor().process(make_big_record())
    for name in ("mlp_activations", "attention_entropy", "residual_stream"):
        for scale in ("auto", "linear", "log", "minmax"):
            p = make_panels([name], None, m, ViewOptions(scale=scale))[0]
            for width, height in ((40, 8), (60, 40)):
                lines = render(p, width=width, height=height).splitlines()
                used = p.scale()
                assert used in lines[0] and used in lines[1], (name, scale, width, lines[:2])
    heads = render(make_panels(["head_entropy"], None, m, ViewOptions())[0], width=40, height=12)
    assert "0 ░▒▓█ 1" in heads.splitlines()[1]


def test_jsonl_lines_have_the_same_keys_and_strict_json():
    """Every line has the keys JSON_KEYS, with or without attention or lens; NaN is null."""
    import json

    from openmav.view.plain import JSON_KEYS, jsonl_line

    full = json.loads(jsonl_line(make_record()))
    hybrid = json.loads(jsonl_line(make_record(hybrid=True)))
    bare_rec = make_record(attention=False)
    bare_rec.lens_ids = bare_rec.lens_probs = bare_rec.lens_tokens = None
    bare = json.loads(jsonl_line(bare_rec))
    assert tuple(full) == tuple(hybrid) == tuple(bare) == JSON_KEYS
    assert hybrid["attention_entropy"][1] is None and hybrid["attention_entropy"][0] == pytest.approx(np.log(2))
    assert bare["attention_entropy"] is None and bare["lens_top1"] is None
    assert full["lens_top1"] == [["The", 0.3], ["␣on", 0.6], ["␣the", 0.5]]
    assert full["mlp_max_abs"] == [0.5, 0.25, 1.0]


def test_jsonl_key_set_is_identical_across_panel_selections(tiny, tmp_path, capsys):
    from openmav.cli import main
    from openmav.view.plain import JSON_KEYS

    lm = tiny("llama")
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    seen = {}
    for panels in (["generated_text"], ["mlp_activations", "logit_lens"], ["attention"], ["all"]):
        assert main(["--model", str(tmp_path), "--prompt", "hello world", "--max-new-tokens", "3", "--format",
                     "jsonl", "--device", "cpu", "--selected-panels", *panels]) == 0
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert len(rows) == 3 and all(tuple(r) == JSON_KEYS for r in rows)
        seen[panels[0]] = rows[0]
    assert seen["generated_text"]["attention_entropy"] is None and seen["generated_text"]["lens_top1"] is None
    assert seen["attention"]["attention_entropy"] is not None and seen["mlp_activations"]["lens_top1"] is not None
    assert seen["all"]["mlp_norms"] == seen["generated_text"]["mlp_norms"]  # computed whatever the panels


def test_short_text_panel_keeps_the_newest_lines():
    m = StateProcessor().process(make_record())
    options = ViewOptions(prompt="one two three four five six seven eight nine ten eleven twelve thirteen")
    text = render(make_panels(["generated_text"], None, m, options)[0], width=24, height=4)
    assert text.splitlines()[2] == "│ twelve thirteen the  │" and "one two" not in text


def test_threads_flag_default_rule_and_restore(tiny, monkeypatch, capsys):
    import torch

    from openmav import mav
    from openmav.cli import main

    assert main(["--threads", "0"]) == 2
    err = capsys.readouterr().err
    assert "--threads: must be a whole number from 1 to 1024, got 0" in err and len(err.strip().splitlines()) == 1
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for cores, expected in ((1, 1), (2, 1), (8, 7)):
        monkeypatch.setattr(mav, "available_cores", lambda cores=cores: cores)
        assert mav.default_threads() == expected
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert mav.default_threads() is None  # the environment rules
    with pytest.raises(InputError, match="threads must be a whole number"):
        mav.MAV(prompt="hi", threads=0)

    seen = []

    class Threads(PanelBase):
        def __init__(self, measurements):
            super().__init__("Threads", "red")
            self.measurements = measurements

        def get_panel_content(self):
            seen.append(torch.get_num_threads())
            return str(seen[-1])

    before = torch.get_num_threads()
    lm = tiny("llama")
    import io

    from rich.console import Console

    mav.MAV(prompt="hello world", max_new_tokens=2, model_obj=lm.model, tokenizer_obj=lm.tokenizer, device="cpu",
            selected_panels=["Threads"], external_panels=[Threads], format="snapshot", threads=1,
            console=Console(file=io.StringIO(), width=80))
    assert seen and set(seen) == {1} and torch.get_num_threads() == before
