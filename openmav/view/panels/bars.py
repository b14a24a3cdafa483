"""Text bars, shades, column charts and column packing (pure functions over numbers and widths).

Every helper here returns lines that are exactly as wide as it was asked for (or
narrower), measured in terminal cells, so a panel built from them never wraps.
"""

from __future__ import annotations

import math

import numpy as np
from rich.cells import cell_len, set_cell_size
from rich.text import Text

EIGHTHS = " ▏▎▍▌▋▊▉"
LEVELS = " ▁▂▃▄▅▆▇█"  # vertical eighths, for column charts
SHADES = "░▒▓█"  # the lowest shade is visible: a low value never reads as "nothing"
MISSING = "·"  # a value that does not exist (e.g. a layer without attention)
MIN_BAR = 6  # a horizontal bar shorter than this reads as noise: the layout changes instead


def bar(fraction: float, length: int) -> str:
    """A bar of ``fraction`` (clipped to [0, 1]) of ``length`` cells, in eighths of a cell, padded.

    A finite fraction above 0 always shows at least one eighth, so a small value is
    visible; 0 and non-finite values are blank.
    """
    length = max(0, int(length))
    if not math.isfinite(fraction) or length == 0:
        return " " * length
    eighths = int(round(min(max(float(fraction), 0.0), 1.0) * length * 8))
    if fraction > 0:
        eighths = max(1, eighths)
    full, rest = divmod(eighths, 8)
    out = "█" * full + (EIGHTHS[rest] if rest and full < length else "")
    return out.ljust(length)


def shade(fraction: float) -> str:
    """One of ``░▒▓█`` for a fraction in [0, 1] (quarters; 0 is ``░``, still visible);
    ``·`` for a missing (non-finite) value."""
    if not math.isfinite(fraction):
        return MISSING
    idx = int(min(max(fraction, 0.0), 1.0) * len(SHADES))
    return SHADES[min(idx, len(SHADES) - 1)]


def shade_legend(low: str = "0", high: str = "1") -> str:
    """``0 ░▒▓█ 1``: the legend of :func:`shade`."""
    return f"{low} {SHADES} {high}"


def fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` terminal cells (``…`` marks a cut) and padded to exactly ``width``."""
    if width <= 0:
        return ""
    if cell_len(text) > width:
        text = set_cell_size(text, width - 1) + "…"
    return set_cell_size(text, width)


def clip_text(text: str, width: int) -> str:
    """``text`` cut to ``width`` cells with ``…`` when it is longer (not padded)."""
    if width <= 0:
        return ""
    return text if cell_len(text) <= width else set_cell_size(text, width - 1) + "…"


def styled_runs(chars: str, style: str, missing_style: str = "dim") -> Text:
    """``chars`` in ``style``, with each :data:`MISSING` mark in ``missing_style`` (one span per run)."""
    out = Text()
    start = 0
    for i in range(1, len(chars) + 1):
        if i == len(chars) or (chars[i] == MISSING) != (chars[start] == MISSING):
            out.append(chars[start:i], style=missing_style if chars[start] == MISSING else style)
            start = i
    return out


def lines_text(lines: list[Text]) -> Text:
    """One ``Text`` of ``lines``, which never wraps (a line longer than the panel is cropped)."""
    out = Text("\n").join(lines) if lines else Text("")
    out.no_wrap = True
    out.overflow = "crop"
    return out


def column_major(cells: list[Text], ncols: int, gap: int = 2, width: int | None = None) -> list[Text]:
    """``cells`` (one line each) in ``ncols`` columns filled top to bottom, ``gap`` spaces apart.

    With ``width`` each cell is cut or padded to that many cells (the last column is only
    cut); without it the cells are taken as they are (the caller made them equally wide)."""
    n = len(cells)
    rows = math.ceil(n / max(1, ncols))
    lines = []
    for r in range(rows):
        line = Text()
        for c in range(ncols):
            i = c * rows + r
            if i >= n:
                break
            cell = cells[i]
            if width is not None:
                cell = cell.copy()
                cell.truncate(width, overflow="crop", pad=c < ncols - 1)
            if c:
                line.append(" " * gap)
            line.append_text(cell)
        lines.append(line)
    return lines


def pack_columns(cells: list[Text], height: int | None, width: int, gap: int = 2) -> Text:
    """Lay ``cells`` (one line each) out column-major in as many columns as ``height`` needs.

    With ``height=None`` (no limit) there is one column.  Each column is cut or padded
    to ``(width - gaps) // columns`` cells.
    """
    n = len(cells)
    if n == 0:
        return Text("")
    ncols = columns_for(n, height)
    colw = max(1, (width - gap * (ncols - 1)) // ncols)
    lines = column_major(cells, ncols, gap, colw)
    return lines_text(lines)


def columns_for(n: int, height: int | None) -> int:
    """How many columns :func:`pack_columns` uses for ``n`` rows at ``height``."""
    if not height or n <= height:
        return 1
    return math.ceil(n / max(1, height))


def finite_max(values) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(np.max(np.abs(v))) if v.size else 0.0


def choose_scale(values, scale: str) -> str:
    """The scale a per-layer panel draws with: ``scale`` itself, or for ``auto`` ``log``
    when the largest finite value is more than 10 times the median (one dominant layer
    would make the rest read as zero on a linear scale), else ``linear``."""
    if scale != "auto":
        return scale
    v = np.abs(np.asarray(values, dtype=np.float64))
    v = v[np.isfinite(v)]
    if v.size < 2:
        return "linear"
    median, top = float(np.median(v)), float(np.max(v))
    return "log" if top > 10 * median else "linear"


def log_range(values) -> tuple[float, float]:
    """``(low, high)`` of the ``log`` scale: the smallest and largest positive finite |value|,
    at least a factor of 10 apart (so values close together do not look far apart)."""
    v = np.abs(np.asarray(values, dtype=np.float64))
    v = v[np.isfinite(v) & (v > 0)]
    if not v.size:
        return 0.0, 0.0
    high = float(v.max())
    return min(float(v.min()), high / 10), high


def scaled(values, scale: str) -> np.ndarray:
    """``values`` mapped to [0, 1] on ``scale``; NaN stays NaN.

    ``linear``: |v| / max; ``log``: log(|v| / low) / log(high / low) with ``low, high``
    from :func:`log_range` (0 and below map to 0); ``minmax``: (v - min) / (max - min).
    """
    v = np.asarray(values, dtype=np.float64)
    out = np.full(v.shape, np.nan)
    ok = np.isfinite(v)
    if not ok.any():
        return out
    x = v[ok]
    if scale == "log":
        low, high = log_range(x)
        if high > 0:
            with np.errstate(divide="ignore"):
                out[ok] = np.clip(np.log(np.abs(x) / low) / np.log(high / low), 0.0, 1.0)
        else:
            out[ok] = 0.0
    elif scale == "minmax":
        lo, hi = x.min(), x.max()
        out[ok] = (x - lo) / (hi - lo) if hi > lo else 0.0
    else:
        top = np.max(np.abs(x))
        out[ok] = np.abs(x) / top if top > 0 else 0.0
    return out


def column_chart(fractions, rows: int, spacing: int = 0) -> list[str]:
    """A vertical bar per value, ``rows`` lines high, in eighths of a line (top line first).

    A finite value above 0 shows at least ``▁``; a missing (NaN) value is ``·`` on the
    bottom line.  ``spacing`` blank cells separate the columns.
    """
    rows = max(1, rows)
    heights = []
    for f in fractions:
        if not math.isfinite(f):
            heights.append(None)
            continue
        units = int(round(min(max(float(f), 0.0), 1.0) * rows * 8))
        heights.append(max(1, units) if f > 0 else 0)
    lines = []
    gap = " " * spacing
    for r in range(rows - 1, -1, -1):
        cells = []
        for h in heights:
            if h is None:
                cells.append(MISSING if r == 0 else " ")
            else:
                cells.append(LEVELS[min(max(h - r * 8, 0), 8)])
        lines.append(gap.join(cells))
    return lines


def axis_labels(n: int, step: int, width: int, group: int = 1) -> str:
    """Layer numbers under a column chart of ``ceil(n / group)`` columns ``step`` cells apart.

    A label is written where its column starts when it does not touch the previous one
    and fits in ``width``; the last layer is labelled when there is room.
    """
    ncols = math.ceil(n / group)
    line = [" "] * width
    end = -2
    every = max(1, math.ceil(5 / step))  # a label at most every 5 cells
    for c in list(range(0, ncols, every)) + [ncols - 1]:
        label = str(c * group)
        pos = c * step
        if pos <= end + 1 or pos + len(label) > width:
            continue
        line[pos:pos + len(label)] = label
        end = pos + len(label) - 1
    return "".join(line).rstrip()
