"""Matplotlib (Agg) draws every piece of text and the colour bar of the maps.

An image is a grid of ``(L + 1)`` rows by ``W`` key positions.  The text of a
column, the lens labels of every layer at that position, the final prediction and
the x-axis label (token and absolute position), never changes from one generated
token to the next (the model is causal), so each column's text is drawn once, by
matplotlib, into an alpha mask: :func:`draw_column_text`.  The y-axis labels and the
colour bar are drawn once per run (:func:`draw_left_panel`, :func:`draw_colorbar`),
titles once per generated token (:class:`TitleDrawer`).  :mod:`openmav.maps.compose`
puts these pieces together with the colours of each token's attention.

Every script is drawn, never as a box: text is set in :data:`PREFERRED_FONTS` that are
installed (DejaVu Sans, which ships with matplotlib, then Noto, the Noto CJK fonts, WenQuanYi,
Droid Sans Fallback, Unifont), matplotlib taking each glyph from the first font that has it.
A character none of them has, and a control or format character, is written as its escaped
code point instead (``猫`` is ``\\u732b`` without a CJK font; see :func:`drawable`).  Text is
never read as mathtext (a ``$`` is a dollar sign).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

FONT_SIZE = 7.0
DPI = 100
# fonts tried in order for each glyph (matplotlib's per-glyph fallback); missing ones are skipped
PREFERRED_FONTS = ("DejaVu Sans", "Noto Sans", "Noto Sans CJK JP", "Noto Sans CJK SC", "WenQuanYi Zen Hei",
                   "Droid Sans Fallback", "Unifont")


@dataclass(frozen=True)
class Layout:
    """Pixel geometry of one image: cells, margins and how many rows (layers + 1)."""

    n_rows: int
    cell_w: int = 44
    cell_h: int = 16
    left: int = 40
    right: int = 70
    top: int = 30
    bottom: int = 86
    label_chars: int = 7
    axis_chars: int = 12

    @property
    def grid_h(self) -> int:
        return self.n_rows * self.cell_h

    @property
    def height(self) -> int:
        return self.top + self.grid_h + self.bottom

    def width(self, n_cols: int) -> int:
        return self.left + n_cols * self.cell_w + self.right


def _mpl():
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    return Figure, FigureCanvasAgg


@lru_cache(maxsize=1)
def font_families() -> tuple[str, ...]:
    """The preferred fonts that matplotlib finds here (DejaVu Sans ships with matplotlib)."""
    from matplotlib import font_manager

    names = {f.name for f in font_manager.fontManager.ttflist}
    return tuple(n for n in PREFERRED_FONTS if n in names) or ("DejaVu Sans",)


@lru_cache(maxsize=1)
def _covered() -> frozenset[int]:
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    codes: set[int] = set()
    for name in font_families():
        path = font_manager.findfont(font_manager.FontProperties(family=name), fallback_to_default=False)
        codes.update(FT2Font(path).get_charmap().keys())
    return frozenset(codes)


def escaped(ch: str) -> str:
    """A character as Python writes it in ``ascii()``: ``\\x0c``, ``\\u732b``, ``\\U0001f600``."""
    return ascii(ch)[1:-1]


def _units(text: str) -> list[str]:
    """Per character of ``text``: itself when a font draws it (spaces and line breaks kept), else escaped."""
    covered = _covered()
    return [ch if ch in " \n" or (ord(ch) in covered and unicodedata.category(ch) not in ("Cc", "Cf"))
            else escaped(ch) for ch in text]


def drawable(text: str) -> str:
    """``text`` with each control or format character, and each character no available font has,
    written as its escaped code point (:func:`escaped`), so nothing is drawn as a box.

    Spaces and line breaks (a two-line title) are kept.
    """
    return "".join(_units(text))


def shorten(text: str, limit: int) -> str:
    """At most ``limit`` characters; longer text keeps its start and ends with ``…``."""
    return text if len(text) <= limit else text[: max(1, limit - 1)] + "…"


def label(text: str, limit: int) -> str:
    """:func:`drawable` ``text`` in at most ``limit`` characters, cut between characters (never inside an
    escape unless the first one alone is too long), ``…`` marking a cut."""
    units = _units(text)
    if sum(len(u) for u in units) <= limit:
        return "".join(units)
    out, used = [], 0
    for unit in units:
        if used + len(unit) > limit - 1:
            break
        out.append(unit)
        used += len(unit)
    return "".join(out) + "…" if out else shorten(units[0], limit)


def _figure(width_px: int, height_px: int):
    Figure, Canvas = _mpl()
    fig = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI)
    fig.patch.set_alpha(0.0)
    Canvas(fig)
    return fig


def _pixels(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba()).copy()


class ColumnTextDrawer:
    """Draws the text of one column (cell labels and axis label); one figure, reused."""

    def __init__(self, layout: Layout):
        self.layout = lay = layout
        self.fig = _figure(lay.cell_w, lay.grid_h + lay.bottom)
        h = lay.grid_h + lay.bottom
        kw = dict(ha="center", va="center", fontsize=FONT_SIZE, family=list(font_families()), color="black",
                  parse_math=False)
        self.cells = [self.fig.text(0.5, 1 - (r + 0.5) * lay.cell_h / h, "", **kw) for r in range(lay.n_rows)]
        self.token = self.fig.text(0.5, (lay.bottom - 16) / h, "", rotation=90, ha="center", va="top",
                                   fontsize=FONT_SIZE, family=list(font_families()), parse_math=False)
        self.position = self.fig.text(0.5, 1 - (lay.grid_h + 7) / h, "", ha="center", va="center",
                                      fontsize=FONT_SIZE - 0.5, color="#444444")

    def draw(self, labels: list[str], token: str, position: int) -> np.ndarray:
        """Alpha mask ``[grid_h + bottom, cell_w]`` (uint8) of this column's text."""
        lay = self.layout
        for artist, text in zip(self.cells, labels):
            artist.set_text(label(text, lay.label_chars))
        self.token.set_text(label(token, lay.axis_chars))
        self.position.set_text(str(position))
        return _pixels(self.fig)[..., 3]


def draw_left_panel(layout: Layout) -> np.ndarray:
    """RGB ``[grid_h, left]``: the row names ``L0 .. L{n-1}`` and ``out``."""
    lay = layout
    fig = _figure(lay.left, lay.grid_h)
    fig.patch.set_alpha(1.0)
    fig.patch.set_facecolor("white")
    for r in range(lay.n_rows):
        name = "out" if r == lay.n_rows - 1 else f"L{r}"
        fig.text(1 - 4 / lay.left, 1 - (r + 0.5) / lay.n_rows, name, ha="right", va="center",
                 fontsize=FONT_SIZE, fontweight="bold" if name == "out" else "normal")
    return _pixels(fig)[..., :3]


def draw_colorbar(layout: Layout, cmap_name: str) -> np.ndarray:
    """RGB ``[grid_h, right]``: a 0–1 colour bar (the fixed scale of every image)."""
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    lay = layout
    fig = _figure(lay.right, lay.grid_h)
    fig.patch.set_alpha(1.0)
    fig.patch.set_facecolor("white")
    cax = fig.add_axes([10 / lay.right, 0.02, 12 / lay.right, 0.96])
    bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), matplotlib.colormaps[cmap_name]), cax=cax)
    bar.ax.tick_params(labelsize=FONT_SIZE)
    bar.set_label("attention", fontsize=FONT_SIZE)
    return _pixels(fig)[..., :3]


def colormap_lut(cmap_name: str) -> np.ndarray:
    """``[256, 3]`` uint8 colours of a matplotlib colour map (value ``v`` -> ``lut[round(255 v)]``)."""
    import matplotlib

    return (matplotlib.colormaps[cmap_name](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


class TitleDrawer:
    """Draws title strips ``[top, width]`` (RGB); one figure per image width, reused."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self.figs: dict[int, tuple] = {}

    def draw(self, text: str, width: int) -> np.ndarray:
        """RGB title strip for ``text`` (up to two lines) at ``width`` pixels."""
        lay = self.layout
        if width not in self.figs:
            fig = _figure(width, lay.top)
            fig.patch.set_alpha(1.0)
            fig.patch.set_facecolor("white")
            artist = fig.text(6 / width, 0.5, "", ha="left", va="center", fontsize=FONT_SIZE + 0.5,
                              family=list(font_families()), linespacing=1.3, parse_math=False)
            self.figs[width] = (fig, artist)
        fig, artist = self.figs[width]
        artist.set_text(drawable(text))
        return _pixels(fig)[..., :3]
