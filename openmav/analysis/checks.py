"""Argument checks of the extraction and plotting API, by the rule objects the command line uses.

Each public method of :class:`~openmav.analysis.extractor.AttentionExtractor` and
:class:`~openmav.analysis.visualizer.AttentionVisualizer` calls one of these first, so a bad
argument is one :class:`~openmav.analysis.stats.AnalysisValueError` (an
:class:`~openmav.errors.InputError` and a ``ValueError``) naming the argument, the valid range and
the value, before a prompt is encoded, a forward runs or a figure is drawn.  The rules are
:mod:`openmav.rules`; this module only says which argument passes which rule, and turns the
rules' ``InputError`` into the analysis API's own class.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from ..errors import InputError
from ..rules import BATCH_SIZE, Choice, Device, Flag, Number, check_model_name, check_save_path, check_text, shown
from .stats import AnalysisValueError

DTYPE_NAMES = ("float32", "float16", "bfloat16")
DPI = Number(float, 1.0, 600.0, why="dots per inch; a larger figure would take gigabytes")
# what Figure.savefig writes (matplotlib's backends, Agg's raster formats included)
FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".svgz", ".jpg", ".jpeg", ".eps", ".ps", ".tif", ".tiff", ".webp",
                   ".raw", ".rgba", ".pgf")


@contextmanager
def analysis_errors():
    """Raise the rules' :class:`InputError` as the analysis API's :class:`AnalysisValueError` (also a ValueError)."""
    try:
        yield
    except AnalysisValueError:
        raise
    except InputError as exc:
        raise AnalysisValueError(str(exc)) from None


def check_prompt(prompt, flag: str = "prompt") -> None:
    """One prompt: text of valid UTF-8 (emptiness and length are the encoder's to say, with the context)."""
    with analysis_errors():
        check_text(flag, prompt)


def check_prompts(prompts, flag: str = "prompts") -> None:
    """A list (or tuple) of prompts, or one prompt as text."""
    if isinstance(prompts, str):
        return check_prompt(prompts, flag)
    if not isinstance(prompts, (list, tuple)):
        raise AnalysisValueError(f"{flag} must be a list of text prompts, got {shown(prompts)}")
    if not prompts:
        raise AnalysisValueError(f"{flag} is empty: give at least one prompt")
    for i, prompt in enumerate(prompts):
        check_prompt(prompt, f"{flag}[{i}]")


def check_extractor(model_name, device, dtype, reverify) -> None:
    """:class:`AttentionExtractor`'s own arguments: ``""`` names no model, a device and dtype as ``--device``
    and ``--dtype`` take them (or a ``torch.device``/``torch.dtype``)."""
    with analysis_errors():
        if model_name is not None:
            check_model_name("model_name", model_name)
        if device is not None and type(device).__name__ != "device":
            Device().check("device", device)
        if type(dtype).__name__ != "dtype":
            Choice(DTYPE_NAMES).check("dtype", dtype)
        Flag().check("reverify", reverify)


def check_batch(batch_size, padding_side, **flags) -> None:
    """A padded batch run's settings; ``flags`` are ``True``/``False`` arguments by name."""
    with analysis_errors():
        BATCH_SIZE.check("batch_size", batch_size)
        Choice(("left", "right")).check("padding_side", padding_side)
        for name, value in flags.items():
            Flag().check(name, value)


def check_flag(name: str, value) -> None:
    with analysis_errors():
        Flag().check(name, value)


def check_cmap(cmap) -> None:
    """A matplotlib colormap: a registered name or a ``Colormap`` object."""
    import matplotlib
    from matplotlib.colors import Colormap

    if isinstance(cmap, Colormap):
        return
    if not isinstance(cmap, str) or cmap not in matplotlib.colormaps:
        raise AnalysisValueError(f"cmap must be a matplotlib colormap name (e.g. viridis, magma, Blues), got "
                                 f"{shown(cmap)}")


def check_dpi(dpi) -> None:
    with analysis_errors():
        DPI.check("dpi", dpi)


def check_figure_path(save_path, html: bool = False) -> None:
    """``save_path``: ``None``/``""`` (not saved) or a file name a figure can be written to: not a folder, a
    format matplotlib writes (any name for the interactive HTML), a folder that exists or can be made."""
    if save_path is None or (isinstance(save_path, str) and save_path == ""):
        return
    with analysis_errors():
        check_save_path("save_path", save_path, None if html else FIGURE_SUFFIXES)


def check_labels(flag: str, labels, optional: bool = False) -> None:
    """Token or prompt labels: a list (or tuple) of text."""
    if labels is None and optional:
        return
    if isinstance(labels, str) or not isinstance(labels, (list, tuple, np.ndarray)):
        raise AnalysisValueError(f"{flag} must be a list of text labels, got {shown(labels)}")
    for i, label in enumerate(labels):
        if not isinstance(label, str):
            raise AnalysisValueError(f"{flag}[{i}] must be text, got {shown(label)}")
