"""Panels drawn into a recording console: exact text on hand-made records."""

from __future__ import annotations

import pytest
from view_fixtures import make_record, render

from openmav.errors import InputError
from openmav.processors.state_processor import StateProcessor
from openmav.view.layout import Dashboard, grid_shape
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
╭───────── MLP output L2 norm ─────────╮
│ L0 ██       1.00                     │
│ L1 ████     2.00                     │
│ L2 ████████ 4.00                     │
╰──────────────────────────────────────╯""",
    "attention_entropy": """\
╭────── Attention entropy (nats) ──────╮
│ L0 █████▋   0.69                     │
│ L1 ████████ 0.99                     │
│ L2 ███▉     0.47                     │
╰──────────────────────────────────────╯""",
    "residual_stream": """\
╭────── Residual stream L2 norm ───────╮
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
│  H 0..1  low ░▒▓█ high               │
│ L0 █                                 │
│ L1 ▒█                                │
│ L2  ▓                                │
╰──────────────────────────────────────╯""",
}


@pytest.mark.parametrize("name", list(BUILTIN))
def test_panel_exact_text(name):
    assert render(panel(name), width=40).rstrip("\n") == EXPECTED[name]


def test_layers_pack_into_columns_when_short():
    assert render(panel("mlp_activations"), width=40, height=4).rstrip("\n") == """\
╭───────── MLP output L2 norm ─────────╮
│ L0 ██       1.00   L2 ████████ 4.00  │
│ L1 ████     2.00                     │
╰──────────────────────────────────────╯"""


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
    assert grid_shape(6, None, 150, 40) == (2, 3, 6)
    assert grid_shape(6, 1, 150, 40) == (1, 6, 6)
    assert grid_shape(6, 2, 50, 11) == (1, 2, 2)
    m = StateProcessor().process(make_record())
    dash = Dashboard(make_panels(None, None, m, ViewOptions()), num_grid_rows=2)
    dash.show(m)
    text = render(dash, width=50, height=12)
    assert "50x12 too small: 2 of 6 panels shown" in text
    assert "Generated text" in text and "Top predictions" in text and "MLP" not in text
    assert len(text.splitlines()) == 12
