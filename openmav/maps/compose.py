"""Put the drawn pieces together into one PNG per window (numpy; PNG written by Pillow).

For generated token ``i`` the whole strip of its ``S_i`` key positions is built once:
attention colours from the colour map's look-up table (in LEVELS steps), one cell per
(row, position), the column text masks (drawn once per run by :mod:`openmav.maps.render`)
laid over them in black or white, whichever reads better on that colour.  Every window image
is then a slice of that strip between the row names and the colour bar, under the
token's title.  Files are written under a temporary name and renamed, so an
interrupted run never leaves a half-written PNG.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..capture.trace import replacing
from .render import Layout, TitleDrawer

FINAL_ROW_GREY = 236
QUERY_OUTLINE = np.array([220, 30, 30], dtype=np.uint8)

# The images are written as 8-bit palette PNGs, composed directly as palette indices: Pillow
# encodes them about six times faster than RGB (the writing must keep up with generation).
# Palette: 16 greys (text on white), then for each of LEVELS attention colours three shades
# (the cell colour, and 1/3 and 2/3 of the way to its text colour), the output row's grey in
# three shades, and the query outline.
GRAYS = 16
LEVELS = 48
BLEND = 3
GREY_BASE = GRAYS + LEVELS * BLEND
OUTLINE = GREY_BASE + BLEND
WHITE, BLACK = GRAYS - 1, 0


@dataclass
class Sheet:
    """What every image of a run shares: geometry, colours, row names, colour bar, column text."""

    layout: Layout
    lut: np.ndarray          # [256, 3] uint8
    left: np.ndarray         # [grid_h, left, 3]
    colorbar: np.ndarray     # [grid_h, right, 3]
    text: np.ndarray         # [grid_h + bottom, N * cell_w] uint8 alpha: every position's text

    def __post_init__(self):
        self.palette, self.text_index = build_palette(self.lut)
        self.left_index = nearest_index(self.left, self.palette)
        self.colorbar_index = nearest_index(self.colorbar, self.palette)


def level_of(values: np.ndarray) -> np.ndarray:
    """Attention in [0, 1] -> colour level ``round(v * (LEVELS - 1))``."""
    return np.clip(np.rint(values * (LEVELS - 1)), 0, LEVELS - 1).astype(np.int16)


def level_colors(lut: np.ndarray) -> np.ndarray:
    """``[LEVELS, 3]`` the colour of each level: ``lut[round(255 * level / (LEVELS - 1))]``."""
    return lut[np.rint(np.arange(LEVELS) * 255 / (LEVELS - 1)).astype(np.intp)]


def build_palette(lut: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 256-colour palette and, per level (and the output row last), its text colour's index."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    pal[:GRAYS] = np.rint(np.arange(GRAYS) * 255 / (GRAYS - 1)).astype(np.uint8)[:, None]
    base = np.vstack([level_colors(lut), [[FINAL_ROW_GREY] * 3]]).astype(np.float64)
    dark = base @ np.array([0.299, 0.587, 0.114]) < 128  # white text on dark cells, black on light
    fg = np.where(dark, 255.0, 0.0)[:, None]
    for step in range(BLEND):
        shade = np.rint(base * (1 - step / BLEND) + fg * step / BLEND).astype(np.uint8)
        pal[GRAYS + np.arange(LEVELS) * BLEND + step] = shade[:LEVELS]
        pal[GREY_BASE + step] = shade[LEVELS]
    pal[OUTLINE] = QUERY_OUTLINE
    return pal, np.where(dark, WHITE, BLACK).astype(np.uint8)


def nearest_index(rgb: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Palette index of the nearest colour for every pixel of ``rgb [h, w, 3]`` (done once per run)."""
    flat = rgb.reshape(-1, 3).astype(np.int32)
    pal = palette.astype(np.int32)
    out = np.empty(len(flat), dtype=np.uint8)
    for a in range(0, len(flat), 65536):
        d = ((flat[a:a + 65536, None, :] - pal[None]) ** 2).sum(-1)
        out[a:a + 65536] = d.argmin(1)
    return out.reshape(rgb.shape[:2])


def grey_index(ink: np.ndarray) -> np.ndarray:
    """Black text of opacity ``ink`` (uint8) on white -> grey palette index."""
    return (WHITE - (ink.astype(np.uint16) * (GRAYS - 1) + 127) // 255).astype(np.uint8)


def token_strip(sheet: Sheet, values: np.ndarray) -> np.ndarray:
    """Palette indices ``[grid_h + bottom, S * cell_w]`` of one generated token over all its keys."""
    lay = sheet.layout
    n_keys = values.shape[1]
    levels = level_of(values)
    base = np.empty((values.shape[0] + 1, n_keys), dtype=np.uint8)
    base[:-1] = GRAYS + levels * BLEND
    base[-1] = GREY_BASE
    ink = np.empty_like(base)
    ink[:-1] = sheet.text_index[levels]
    ink[-1] = sheet.text_index[LEVELS]
    bg = np.repeat(np.repeat(base, lay.cell_h, 0), lay.cell_w, 1)
    fg = np.repeat(np.repeat(ink, lay.cell_h, 0), lay.cell_w, 1)
    step = (sheet.text[: lay.grid_h, : n_keys * lay.cell_w].astype(np.uint16) * BLEND + 127) // 255
    grid = np.where(step >= BLEND, fg, bg + step.astype(np.uint8))
    grid[lay.cell_h - 1::lay.cell_h] = WHITE  # thin white lines between cells
    grid[:, lay.cell_w - 1::lay.cell_w] = WHITE
    x0 = (n_keys - 1) * lay.cell_w  # outline the query's own column
    grid[:, x0:x0 + 2] = OUTLINE
    grid[:, x0 + lay.cell_w - 3:x0 + lay.cell_w - 1] = OUTLINE
    strip = np.empty((lay.grid_h + lay.bottom, n_keys * lay.cell_w), dtype=np.uint8)
    strip[: lay.grid_h] = grid
    strip[lay.grid_h:] = grey_index(sheet.text[lay.grid_h:, : n_keys * lay.cell_w])
    return strip


def window_image(sheet: Sheet, strip: np.ndarray, start: int, end: int, title: np.ndarray) -> np.ndarray:
    """Palette indices of keys ``[start, end)``: title, row names, cells and axis, colour bar."""
    lay = sheet.layout
    width = lay.width(end - start)
    img = np.full((lay.height, width), WHITE, dtype=np.uint8)
    img[: lay.top] = title
    img[lay.top:lay.top + lay.grid_h, : lay.left] = sheet.left_index
    img[lay.top:, lay.left:lay.left + (end - start) * lay.cell_w] = strip[:, start * lay.cell_w:end * lay.cell_w]
    img[lay.top:lay.top + lay.grid_h, width - lay.right:] = sheet.colorbar_index
    return img


def save_png(image: np.ndarray, path: str, palette: np.ndarray | None = None) -> None:
    """Write ``image`` (RGB, or palette indices with ``palette``) as PNG at ``path``, atomically."""
    from PIL import Image

    picture = Image.fromarray(image)
    if palette is not None:
        picture.putpalette(palette.tobytes())
    with replacing(path, sweep=False) as tmp:
        picture.save(tmp, format="PNG", compress_level=1)


def write_token(sheet: Sheet, titles: TitleDrawer, values: np.ndarray, title: str,
                windows: list[tuple[int, int, str]], out_dir: str) -> list[str]:
    """Write every window image of one generated token; returns the file names written."""
    strip = token_strip(sheet, values)
    written = []
    title_cache: dict[int, np.ndarray] = {}
    for start, end, name in windows:
        width = sheet.layout.width(end - start)
        if width not in title_cache:
            rgb = titles.draw(title, width)
            title_cache[width] = grey_index(255 - rgb.min(-1))
        save_png(window_image(sheet, strip, start, end, title_cache[width]), os.path.join(out_dir, name),
                 sheet.palette)
        written.append(name)
    return written
