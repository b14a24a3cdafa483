"""The whole dashboard drawn into rich's recording console at terminal sizes: 80x24 (the default
terminal), 120x40 and 200x60.  No line is wider than the terminal, the screen is exactly its
height, every shown panel's title is whole, the status line says the real size."""

from __future__ import annotations

import io

import pytest
from rich.cells import cell_len
from rich.console import Console
from view_fixtures import make_big_record

from openmav.processors.state_processor import StateProcessor
from openmav.view.main_loop_manager import MainLoopManager
from openmav.view.options import ViewOptions
from openmav.view.panels.registry import BUILTIN, DEFAULT_PANELS, make_panels

SIZES = [(80, 24), (120, 40), (200, 60)]
SELECTIONS = {"default": None, "all": ["all"]}


def draw(width: int, height: int, selected=None, record=None, **opts):
    options = ViewOptions(prompt="Once upon a time, in a small village by the sea,", **opts)
    manager = MainLoopManager(make_panels(selected, None, None, options), options=options,
                              title="mav · smollm2-135m")
    console = manager.snapshot(StateProcessor().process(record or make_big_record()), width=width, height=height)
    return manager, console.export_text().rstrip("\n").split("\n")


@pytest.mark.parametrize("width,height", SIZES)
@pytest.mark.parametrize("selection", list(SELECTIONS))
@pytest.mark.parametrize("hybrid", [0, 3])
def test_screen_fits_and_titles_are_whole(width, height, selection, hybrid):
    manager, lines = draw(width, height, SELECTIONS[selection], make_big_record(hybrid_every=hybrid))
    text = "\n".join(lines)
    assert len(lines) == height
    assert max(cell_len(line) for line in lines) <= width
    assert "panel error" not in text
    shown = manager.dashboard.shown_panels
    for panel in shown:
        full = panel.get_titles()[0]
        assert panel.shown_title == full, (panel.shown_title, full)  # the long form fits at these sizes
        assert f"─ {full} ─" in text, full  # whole, with border on both sides
    status = lines[-1]
    assert f"{width}x{height}" in status
    hidden = manager.dashboard.hidden_panels
    if hidden:
        assert "hidden" in status and all(p.panel_name() in status for p in hidden)
    if selection == "default":
        assert not hidden  # the six default panels fit at 80x24


def test_80x24_layout_is_two_across_three_down_and_all_drops_from_the_end():
    manager, lines = draw(80, 24)
    assert manager.dashboard.last_shape == (3, 2, 6)
    manager, lines = draw(80, 24, ["all"])
    assert [p.panel_name() for p in manager.dashboard.shown_panels] == list(BUILTIN)[:6]
    assert lines[-1].rstrip().endswith("hidden: output_distribution, residual_stream, head_entropy")
    manager, _ = draw(200, 60)
    assert manager.dashboard.last_shape == (2, 3, 6)


def test_per_layer_panels_never_get_one_cell_per_layer():
    """At 80x24 the 30 layers of the MLP panel are a vertical bar each (not 1-cell bars in
    3 columns); at 200x60 each layer has a row with a bar of at least 6 cells."""
    _, lines = draw(80, 24)
    start = next(i for i, line in enumerate(lines) if "MLP output L2 norm · log" in line)
    column = lines[start].index("╭")
    block = [line[column: column + 40] for line in lines[start + 1:]]
    block = block[: next(i for i, line in enumerate(block) if line.startswith("╰"))]
    assert "log scale" in block[0] or "log:" in block[0]
    assert block[-1].startswith("│ 0    5    10   15   20   25  29")  # one column per layer, numbered
    assert len(block[-2].strip("│ ")) == 30  # the bottom line: every layer shows, none reads as zero
    _, lines = draw(200, 60)
    rows = [line for line in lines if "L29 " in line and "500.00" in line]
    assert rows and "██████" in rows[0]


def test_panels_follow_their_priority_when_the_terminal_shrinks():
    names = [p for p in DEFAULT_PANELS]
    for width, height, shown in ((80, 24, 6), (80, 13, 4), (60, 14, 2), (40, 10, 1)):
        manager, lines = draw(width, height)
        assert [p.panel_name() for p in manager.dashboard.shown_panels] == names[:shown], (width, height)
        assert len(lines) == height and max(cell_len(line) for line in lines) <= width


def test_the_live_loop_draws_at_the_console_size():
    """MainLoopManager.run on a terminal console: the last frame is the terminal's size."""
    out = io.StringIO()
    console = Console(file=out, width=80, height=24, force_terminal=True, color_system=None, record=True)
    options = ViewOptions(prompt="Once")
    manager = MainLoopManager(make_panels(None, None, None, options), console, refresh_rate=50, options=options)
    measurements = [StateProcessor().process(make_big_record(seed=s)) for s in range(3)]
    assert manager.run(iter(measurements)) == measurements
    assert manager.dashboard.last_size == (80, 24) and manager.dashboard.last_shape == (3, 2, 6)
