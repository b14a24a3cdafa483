"""Put the drawn pieces together into one PNG per window (numpy; PNG written by Pillow).

For generated token ``i`` the whole strip of its ``S_i`` key positions is built once:
attention colours from the colour map's look-up table, one cell per (row, position),
the column text masks (drawn once per run by :mod:`openmav.maps.render`) laid over
them in black or white, whichever reads better on that colour.  Every window image
is then a slice of that strip between the row names and the colour bar, under the
token's title.  Files are written under a temporary name and renamed, so an
interrupted run never leaves a half-written PNG.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .render import Layout, TitleDrawer

FINAL_ROW_GREY = 236
QUERY_OUTLINE = np.array([220, 30, 30], dtype=np.uint8)


@dataclass
class Sheet:
    """What every image of a run shares: geometry, colours, row names, colour bar, column text."""

    layout: Layout
    lut: np.ndarray          # [256, 3] uint8
    left: np.ndarray         # [grid_h, left, 3]
    colorbar: np.ndarray     # [grid_h, right, 3]
    text: np.ndarray         # [grid_h + bottom, N * cell_w] uint8 alpha: every position's text


def cell_colors(values: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """``[L, S]`` attention in [0, 1] -> ``[L + 1, S, 3]`` colours; the last (output) row is grey."""
    idx = np.clip(np.rint(values * 255), 0, 255).astype(np.intp)
    colors = np.empty((values.shape[0] + 1, values.shape[1], 3), dtype=np.uint8)
    colors[:-1] = lut[idx]
    colors[-1] = FINAL_ROW_GREY
    return colors


def token_strip(sheet: Sheet, values: np.ndarray) -> np.ndarray:
    """RGB ``[grid_h + bottom, S * cell_w]`` of one generated token over all its keys."""
    lay = sheet.layout
    n_keys = values.shape[1]
    colors = cell_colors(values, sheet.lut)
    luminance = colors @ np.array([0.299, 0.587, 0.114])
    white_text = (luminance < 128).astype(np.uint16) * 255  # [L + 1, S]
    bg = np.repeat(np.repeat(colors, lay.cell_h, 0), lay.cell_w, 1).astype(np.uint16)
    bg[lay.cell_h - 1::lay.cell_h] = 255  # thin white lines between cells
    bg[:, lay.cell_w - 1::lay.cell_w] = 255
    fg = np.repeat(np.repeat(white_text, lay.cell_h, 0), lay.cell_w, 1)[..., None]
    alpha = sheet.text[: lay.grid_h, : n_keys * lay.cell_w, None].astype(np.uint16)
    grid = (bg * (255 - alpha) + fg * alpha + 127) // 255
    x0 = (n_keys - 1) * lay.cell_w  # outline the query's own column
    grid[:, x0:x0 + 2] = QUERY_OUTLINE
    grid[:, x0 + lay.cell_w - 3:x0 + lay.cell_w - 1] = QUERY_OUTLINE
    axis = 255 - sheet.text[lay.grid_h:, : n_keys * lay.cell_w]  # black axis text on white
    strip = np.empty((lay.grid_h + lay.bottom, n_keys * lay.cell_w, 3), dtype=np.uint8)
    strip[: lay.grid_h] = grid
    strip[lay.grid_h:] = axis[..., None]
    return strip


def window_image(sheet: Sheet, strip: np.ndarray, start: int, end: int, title: np.ndarray) -> np.ndarray:
    """RGB image of keys ``[start, end)``: title, row names, cells and axis, colour bar."""
    lay = sheet.layout
    width = lay.width(end - start)
    img = np.full((lay.height, width, 3), 255, dtype=np.uint8)
    img[: lay.top] = title
    img[lay.top:lay.top + lay.grid_h, : lay.left] = sheet.left
    img[lay.top:, lay.left:lay.left + (end - start) * lay.cell_w] = strip[:, start * lay.cell_w:end * lay.cell_w]
    img[lay.top:lay.top + lay.grid_h, width - lay.right:] = sheet.colorbar
    return img


def save_png(image: np.ndarray, path: str) -> None:
    """Write ``image`` as PNG at ``path`` atomically (temporary name, then rename)."""
    from PIL import Image

    tmp = f"{path}.part"
    Image.fromarray(image).save(tmp, format="PNG", compress_level=1)
    os.replace(tmp, path)


def write_token(sheet: Sheet, titles: TitleDrawer, values: np.ndarray, title: str,
                windows: list[tuple[int, int, str]], out_dir: str) -> list[str]:
    """Write every window image of one generated token; returns the file names written."""
    strip = token_strip(sheet, values)
    written = []
    title_cache: dict[int, np.ndarray] = {}
    for start, end, name in windows:
        width = sheet.layout.width(end - start)
        if width not in title_cache:
            title_cache[width] = titles.draw(title, width)
        save_png(window_image(sheet, strip, start, end, title_cache[width]), os.path.join(out_dir, name))
        written.append(name)
    return written
