"""Text bars and column packing for the panels (pure functions over numbers and widths)."""

from __future__ import annotations

import math

from rich.text import Text

EIGHTHS = " ▏▎▍▌▋▊▉"
SHADES = " ░▒▓█"


def bar(fraction: float, length: int) -> str:
    """A bar of ``fraction`` (clipped to [0, 1]) of ``length`` cells, in eighths of a cell, padded."""
    length = max(0, int(length))
    if not math.isfinite(fraction):
        fraction = 0.0
    cells = min(max(float(fraction), 0.0), 1.0) * length
    full = int(cells)
    rest = int(round((cells - full) * 8))
    if rest == 8:
        full, rest = full + 1, 0
    out = "█" * full + (EIGHTHS[rest] if rest and full < length else "")
    return out.ljust(length)


def shade(fraction: float) -> str:
    """One of `` ░▒▓█`` for a fraction in [0, 1]."""
    if not math.isfinite(fraction):
        return "?"
    idx = int(round(min(max(fraction, 0.0), 1.0) * (len(SHADES) - 1)))
    return SHADES[idx]


def clip_text(text: str, width: int) -> str:
    """``text`` cut to ``width`` cells with ``…`` when it is longer."""
    if width <= 0:
        return ""
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def pack_columns(cells: list[Text], height: int | None, width: int, gap: int = 2) -> Text:
    """Lay ``cells`` (one line each) out column-major in as many columns as ``height`` needs.

    With ``height=None`` (no limit) there is one column.  Each column is padded to
    ``(width - gaps) // columns`` cells.
    """
    n = len(cells)
    if n == 0:
        return Text("")
    rows = n if not height else max(1, height)
    ncols = math.ceil(n / rows)
    rows = math.ceil(n / ncols)
    colw = max(1, (width - gap * (ncols - 1)) // ncols)
    lines = []
    for r in range(rows):
        line = Text()
        for c in range(ncols):
            i = c * rows + r
            if i >= n:
                break
            cell = cells[i].copy()
            cell.truncate(colw, overflow="crop", pad=c < ncols - 1)
            if c:
                line.append(" " * gap)
            line.append_text(cell)
        lines.append(line)
    return Text("\n").join(lines)


def columns_for(n: int, height: int | None) -> int:
    """How many columns :func:`pack_columns` uses for ``n`` rows at ``height``."""
    if not height or n <= height:
        return 1
    return math.ceil(n / max(1, height))


def layer_bars(values, fractions, width: int, height: int | None, max_bar: int, style: str,
               fmt: str = "{:.2f}", labels: list[str] | None = None) -> Text:
    """One row per layer: ``L{i} <bar> value``, packed into columns when the height is short."""
    n = len(values)
    labels = labels or [f"L{i}" for i in range(n)]
    texts = [fmt.format(float(v)) for v in values]
    lw = max(len(s) for s in labels) if labels else 0
    vw = max(len(s) for s in texts) if texts else 0
    ncols = columns_for(n, height)
    colw = max(1, (width - 2 * (ncols - 1)) // ncols)
    barlen = max(1, min(max_bar, colw - lw - vw - 2))
    cells = []
    for label, frac, text in zip(labels, fractions, texts):
        cell = Text(label.rjust(lw) + " ", style="dim")
        cell.append(bar(float(frac), barlen), style=style)
        cell.append(" " + text.rjust(vw))
        cells.append(cell)
    return pack_columns(cells, height, width)
