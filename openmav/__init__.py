"""OpenMAV: watch a language model think.

One capture engine (:mod:`openmav.capture`) feeds every view: the live terminal
view (``mav``), logit-lens attention maps (``mav maps``), the extraction API and
plots (:class:`AttentionExtractor`, :class:`AttentionVisualizer`, ``mav compare``)
and the web explorer (``mav serve``).
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "AttentionExtractor": ("openmav.analysis.extractor", "AttentionExtractor"),
    "AttentionVisualizer": ("openmav.analysis.visualizer", "AttentionVisualizer"),
    "MAV": ("openmav.mav", "MAV"),
    "load_model": ("openmav.backends.loading", "load_model"),
    "generate_steps": ("openmav.capture.step_loop", "generate_steps"),
    "scan": ("openmav.scan", None),  # the module, callable: openmav.scan(...) and openmav.scan.open(DIR)
}


def __getattr__(name: str):
    # Heavy imports (torch, transformers, matplotlib) only when asked for, so that
    # `mav --help` and `mav --version` answer at once.
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        found = importlib.import_module(module)
        return found if attr is None else getattr(found, attr)
    raise AttributeError(f"module 'openmav' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
