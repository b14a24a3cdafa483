"""``Dashboard``: the grid of panels, drawn at the terminal's current size.

The panels and the rich ``Layout`` for each grid shape are built once and reused;
each draw only reads the size rich gives it, so a resize is followed on the next
refresh.

How the grid is chosen (:func:`grid_shape`): every panel gets at least
:data:`MIN_PANEL_WIDTH` × :data:`MIN_PANEL_HEIGHT` cells.  Among the grids that give
every panel that much, the one whose panels are closest to a comfortable
:data:`COMFORT` size wins (at 80x24 the six default panels sit 2 across and 3
down, at 200x60 3 across and 2 down).  When no grid holds every panel, panels are
dropped from the end of the list, which is their priority order (the built-in
order: ``generated_text``, ``top_predictions``, ``mlp_activations``,
``attention_entropy``, ``attention``, ``logit_lens``, ``output_distribution``,
``residual_stream``, ``head_entropy``; with ``--selected-panels`` the order given),
and the status line names them.  The status line always says the terminal's size.
"""

from __future__ import annotations

import math

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.layout import Layout
from rich.text import Text

MIN_PANEL_WIDTH = 36
MIN_PANEL_HEIGHT = 6
COMFORT = (40, 12)  # a panel this size shows every built-in panel's content in full


def _candidates(shown: int, rows: int | None):
    if rows:
        for r in range(min(rows, shown), 0, -1):
            yield r
    else:
        yield from range(1, shown + 1)


def grid_shape(n: int, rows: int | None, width: int, height: int) -> tuple[int, int, int]:
    """``(rows, cols, shown)`` for ``n`` panels within ``width`` × ``height`` cells.

    ``rows`` fixes the number of rows (fewer when they would not fit); ``None`` picks
    the grid whose smaller side, relative to :data:`COMFORT`, is largest.  Panels
    beyond ``shown`` (the last of the list) do not fit.  When not even one panel gets
    the minimum size, the first is shown anyway.
    """
    if n == 0:
        return 1, 1, 0
    for shown in range(n, 0, -1):
        best, best_key = None, None
        for r in _candidates(shown, rows):
            c = math.ceil(shown / r)
            r = math.ceil(shown / c)  # no empty row
            w, h = width // c, height // r
            if w < MIN_PANEL_WIDTH or h < MIN_PANEL_HEIGHT:
                continue
            if rows:  # the first that fits is the closest to what was asked
                return r, c, shown
            key = (min(w / COMFORT[0], h / COMFORT[1]), -(r * c - shown))
            if best_key is None or key > best_key:
                best, best_key = (r, c, shown), key
        if best is not None:
            return best
    return 1, 1, 1


class StatusLine:
    """The one-line footer: model, token, time per token, terminal size, hidden panels, keys.

    :meth:`render` fits it to the width: it leaves out, in this order, the long form of
    the keys' help, the model name, the time per token, then counts hidden panels
    instead of naming them, and as a last resort cuts the line with ``…``.
    """

    def __init__(self, text: str = ""):
        self.text = text  # the title (``mav · model``)
        self.token = ""
        self.speed = ""
        self.help = ""
        self.short_help = ""

    def render(self, width: int | None = None, size: str = "", hidden: list[str] | None = None) -> Text:
        hidden = hidden or []
        note = "hidden: " + ", ".join(hidden) if hidden else ""
        count = f"{len(hidden)} hidden" if hidden else ""
        tries = [
            (self.text, self.token, self.speed, size, note, self.help),
            (self.text, self.token, self.speed, size, note, self.short_help),
            (self.token, self.speed, size, note, self.short_help),
            (self.token, size, note, self.short_help),
            (self.token, size, count, self.short_help),
            (self.token, size, note),
            (self.token, size, count),
            (size, count),
        ]
        for parts in tries:
            line = " · ".join(p for p in parts if p)
            if width is None or cell_len(line) <= width:
                break
        out = Text()
        for i, part in enumerate(p for p in parts if p):
            if i:
                out.append(" · ", style="dim")
            out.append(part, style="bold red" if part in (note, count) else "dim")
        if width is not None:
            out.truncate(width, overflow="ellipsis")
        out.no_wrap = True
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
        self.last_size: tuple[int, int] | None = None

    @property
    def shown_panels(self) -> list:
        """The panels of the last draw (all of them before the first)."""
        return self.panels if self.last_shape is None else self.panels[: self.last_shape[2]]

    @property
    def hidden_panels(self) -> list:
        return [] if self.last_shape is None else self.panels[self.last_shape[2]:]

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
        self.last_size = (console.width, console.height)  # the terminal's, whatever region is drawn
        layout = self._layout(rows, cols, shown)
        hidden = [_name(p) for p in self.panels[shown:]]
        size = f"{console.width}x{console.height}"
        layout["status"].update(self.status.render(width, size, hidden))
        yield from layout.__rich_console__(console, options.update(height=height))


def _name(panel) -> str:
    name = getattr(panel, "panel_name", None)
    return name() if callable(name) else type(panel).__name__
