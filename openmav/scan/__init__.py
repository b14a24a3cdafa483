"""Corpus scans: what every neuron and head does across a dataset, in this process or on a Ray cluster.

``openmav.scan(model, data, out, ...)`` (or ``mav scan``) reads a corpus through a model and writes a scan
folder (:mod:`openmav.scan.store`); ``openmav.scan.open(DIR)`` answers questions about it
(:class:`~openmav.scan.query.Scan`).  The parts: :mod:`~openmav.scan.data` (the corpus, streamed),
:mod:`~openmav.scan.windows` (tokens packed into windows, batches, shards), :mod:`~openmav.scan.reduce`
(hooks that reduce each layer while the forward runs), :mod:`~openmav.scan.merge` (partial results that
merge exactly in any order), :mod:`~openmav.scan.runner` (in-process or Ray), :mod:`~openmav.scan.tables`
(Parquet), :mod:`~openmav.scan.run` (the whole scan).

This package imports nothing heavy until a scan runs or a folder is opened.
"""

from __future__ import annotations

import sys
import types


def scan(*args, **kwargs):
    """Run a scan: see :func:`openmav.scan.run.scan` for the arguments."""
    from .run import scan as run_scan

    return run_scan(*args, **kwargs)


def open(folder):  # noqa: A001 - openmav.scan.open(DIR), as the API reads
    """The finished scan in ``folder`` (:class:`openmav.scan.query.Scan`)."""
    from .query import Scan

    return Scan(folder)


class _CallableModule(types.ModuleType):
    """``openmav.scan(...)`` runs a scan while ``openmav.scan.open(...)`` opens one: the module is callable."""

    def __call__(self, *args, **kwargs):
        return scan(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["scan", "open"]
