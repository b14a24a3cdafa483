"""``Dashboard``: the grid of panels, drawn at the terminal's current size.

The panels and the rich ``Layout`` for each grid shape are built once and reused;
each draw only reads the size rich gives it, so a resize is followed on the next
refresh.  When the terminal is too small for the grid, fewer panels are shown and
a note says so.
"""

from __future__ import annotations

import math

from rich.console import Console, ConsoleOptions, RenderResult
from rich.layout import Layout
from rich.text import Text

MIN_PANEL_WIDTH = 24
MIN_PANEL_HEIGHT = 6


def grid_shape(n: int, rows: int | None, width: int, height: int) -> tuple[int, int, int]:
    """``(rows, cols, shown)`` for ``n`` panels in ``rows`` rows (``None``: 1 row up to 3
    panels, else 2) within ``width`` × ``height`` cells, each at least
    ``MIN_PANEL_WIDTH`` × ``MIN_PANEL_HEIGHT``."""
    if n == 0:
        return 1, 1, 0
    rows = rows or (1 if n <= 3 else 2)
    rows = max(1, min(rows, n))
    cols = math.ceil(n / rows)
    max_rows = max(1, height // MIN_PANEL_HEIGHT)
    max_cols = max(1, width // MIN_PANEL_WIDTH)
    if rows <= max_rows and cols <= max_cols:
        return rows, cols, n
    rows, cols = min(rows, max_rows), min(cols, max_cols)
    shown = min(n, rows * cols)
    rows = math.ceil(shown / cols)
    return rows, cols, shown


class StatusLine:
    """The one-line footer: model, token count, speed, keys."""

    def __init__(self, text: str = ""):
        self.text = text

    def render(self, note: str = "") -> Text:
        out = Text(note + "  " if note else "", style="bold red")
        out.append(self.text, style="dim")
        return out


class Dashboard:
    """The whole screen: the panel grid and a status line.

    ``show(measurements)`` only stores a reference; the panels are updated when
    the screen is next drawn (in the Refresher thread), so every panel of one
    frame shows the same token and the producer never waits for drawing.
    """

    def __init__(self, panels, num_grid_rows: int | None = None, status: StatusLine | None = None):
        self.panels = list(panels)
        self.num_grid_rows = num_grid_rows
        self.status = status or StatusLine()
        self._pending = None
        self._layouts: dict[tuple, Layout] = {}
        self.last_shape: tuple[int, int, int] | None = None

    def show(self, measurements) -> None:
        self._pending = measurements

    def _apply_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            for panel in self.panels:
                panel.update(pending)

    def _layout(self, rows: int, cols: int, shown: int) -> Layout:
        key = (rows, cols, shown)
        if key not in self._layouts:
            root = Layout()
            body, foot = Layout(name="body"), Layout(name="status", size=1)
            root.split_column(body, foot)
            row_layouts = []
            for r in range(rows):
                cells = [Layout(p) for p in self.panels[r * cols: min(shown, (r + 1) * cols)]]
                row = Layout()
                row.split_row(*cells)
                row_layouts.append(row)
            body.split_column(*row_layouts)
            self._layouts[key] = root
        return self._layouts[key]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        self._apply_pending()
        width = options.max_width
        height = options.height or console.height
        rows, cols, shown = grid_shape(len(self.panels), self.num_grid_rows, width, max(1, height - 1))
        self.last_shape = (rows, cols, shown)
        layout = self._layout(rows, cols, shown)
        note = ""
        if shown < len(self.panels):
            note = f"{width}x{height} too small: {shown} of {len(self.panels)} panels shown"
        layout["status"].update(self.status.render(note))
        yield from layout.__rich_console__(console, options.update(height=height))
