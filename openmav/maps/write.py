"""Write every window image of a run, in parallel, with a progress bar.

Two rounds of work go to a process pool (matplotlib Agg in each worker):

1. the text of every column, drawn once per position into one alpha mask;
2. one task per generated token: its strip of colours and text, cut into windows,
   each written as a PNG (:func:`openmav.maps.compose.write_token`).

With ``workers=0`` everything runs in this process (tests, debugging).  Workers
ignore Ctrl-C; the parent cancels what has not started, lets running tokens finish
their files, and raises :class:`ImagesInterrupted` with the names written so far.

The drawn pieces go to the workers through ``openmav-maps-XXXXXXXX/`` in the system's
temporary folder: removed when the images are written, however the run ends if it runs
code at all, and swept by the next run if a killed one left it
(:mod:`openmav.capture.tempfiles`).
"""

from __future__ import annotations

import os
import re
import signal
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..capture import tempfiles
from .collect import MapsData, reduce_heads
from .compose import Sheet, write_token
from .render import ColumnTextDrawer, Layout, TitleDrawer, colormap_lut, draw_colorbar, draw_left_panel
from .windows import windows_for

CMAP = "viridis"
COLUMN_CHUNK = 24
SHEET_DIR = re.compile(r"openmav-maps-[a-z0-9_]{8}")  # tempfile.mkdtemp(prefix="openmav-maps-")
_STATE: dict = {}  # per-process caches: drawers and the loaded sheet


class ImagesInterrupted(KeyboardInterrupt):
    """Ctrl-C while images were written; ``written`` holds the file names finished."""

    def __init__(self, written: list[str]):
        super().__init__(f"{len(written)} images written")
        self.written = written


@dataclass
class ImagePlan:
    """The images of one generated token: its reduced attention ``[L, S]`` and windows."""

    index: int
    title: str
    values: np.ndarray
    windows: list[tuple[int, int, str]]


def plan_images(data: MapsData, reduce: str, head: int | None, window: int, stride: int) -> list[ImagePlan]:
    """One :class:`ImagePlan` per generated token, in order."""
    how = {"max": f"max over {data.n_heads} heads", "mean": f"mean over {data.n_heads} heads"}.get(
        reduce, f"head {head}")
    plans = []
    for i, att in enumerate(data.attention):
        seq = data.seq_len(i)
        tok = data.generated_token(i)
        title = (f"token {i} = “{tok.display}” (p {data.chosen_probs[i]:.2f}) · {data.model_name}\n"
                 f"attention from position {seq - 1}, {how}; text: logit-lens top-1")
        wins = [(w.start, w.end, w.filename(i)) for w in windows_for(seq, window, stride)]
        plans.append(ImagePlan(i, title, reduce_heads(att, reduce, head).astype(np.float32), wins))
    return plans


def column_labels(data: MapsData) -> tuple[list[list[str]], list[str]]:
    """Per read position: the lens top-1 of each layer then the final top-1; and the axis tokens."""
    voc = data.vocab
    n = data.lens_ids.shape[0]
    cells = [[voc[int(t)].display for t in data.lens_ids[k, :, 0]] + [voc[int(data.final_ids[k, 0])].display]
             for k in range(n)]
    return cells, [data.tokens[k].display for k in range(n)]


def _quiet_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _draw_columns(layout: Layout, first: int, cells: list[list[str]], axis: list[str]) -> tuple[int, np.ndarray]:
    key = ("columns", layout)
    if key not in _STATE:
        _STATE[key] = ColumnTextDrawer(layout)
    drawer = _STATE[key]
    return first, np.concatenate([drawer.draw(c, a, first + j) for j, (c, a) in enumerate(zip(cells, axis))], 1)


def _write_plan(sheet_path: str, plan: ImagePlan, out_dir: str) -> list[str]:
    if _STATE.get("sheet_path") != sheet_path:
        with np.load(sheet_path) as z:
            layout = Layout(*[int(v) for v in z["layout"]])
            _STATE["sheet"] = Sheet(layout, z["lut"], z["left"], z["colorbar"], z["text"])
        _STATE["titles"] = TitleDrawer(layout)
        _STATE["sheet_path"] = sheet_path
    return write_token(_STATE["sheet"], _STATE["titles"], plan.values, plan.title, plan.windows, out_dir)


def _pool(workers: int):
    import multiprocessing as mp

    method = "fork" if "fork" in mp.get_all_start_methods() else None
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method), initializer=_quiet_worker)


def write_images(data: MapsData, plans: list[ImagePlan], out_dir: str, workers: int,
                 advance: Callable[[int], None] | None = None) -> list[str]:
    """Write the PNGs of ``plans`` into ``out_dir``; ``advance(n)`` after each token's ``n`` images."""
    layout = Layout(n_rows=data.n_layers + 1)
    cells, axis = column_labels(data)
    chunks = [(layout, a, cells[a:a + COLUMN_CHUNK], axis[a:a + COLUMN_CHUNK])
              for a in range(0, len(cells), COLUMN_CHUNK)]
    written: list[str] = []
    ColumnTextDrawer(layout)  # import matplotlib and find fonts once, before the workers fork
    tempfiles.sweep(tempfile.gettempdir(), SHEET_DIR)  # what killed runs left
    tmp = tempfile.mkdtemp(prefix="openmav-maps-")
    tempfiles.hold(tmp)  # before the pool forks: the workers hold it too while they live
    pool = None
    sheet_path = os.path.join(tmp, "sheet.npz")
    try:
        pool = _pool(workers) if workers > 0 else None
        if pool:
            parts = dict(pool.map(_draw_columns, *zip(*chunks)))
        else:
            parts = dict(_draw_columns(*c) for c in chunks)
        text = np.concatenate([parts[a] for a in sorted(parts)], 1)
        np.savez(sheet_path, layout=np.array([getattr(layout, f) for f in Layout.__dataclass_fields__]),
                 lut=colormap_lut(CMAP), left=draw_left_panel(layout), colorbar=draw_colorbar(layout, CMAP),
                 text=text)
        if pool is None:
            for plan in plans:
                written += _write_plan(sheet_path, plan, out_dir)
                if advance:
                    advance(len(plan.windows))
            return written
        futures = [pool.submit(_write_plan, sheet_path, plan, out_dir) for plan in plans]
        for fut in as_completed(futures):
            names = fut.result()
            written += names
            if advance:
                advance(len(names))
        return written
    except KeyboardInterrupt:
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
            pool = None
        expected = {name for plan in plans for _, _, name in plan.windows}
        raise ImagesInterrupted(sorted(n for n in os.listdir(out_dir) if n in expected)) from None
    finally:
        try:
            if pool:
                pool.shutdown(wait=True)
        finally:
            tempfiles.release(tmp)
