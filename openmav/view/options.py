"""``ViewOptions``: what the user chose about how the live view draws (never about the model)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ViewOptions:
    """Drawing settings shared by the built-in panels.

    ``layer`` and ``head`` select what the ``attention`` panel shows: ``layer`` is
    0-based (negative counts from the last layer, as in Python), ``head=None`` means
    the mean over heads.  Interactive mode changes them with keys.
    """

    max_bar_length: int = 35
    limit_chars: int = 400
    scale: str = "linear"
    aggregation: str = "l2"
    layer: int = -1
    head: int | None = None
    prompt: str = ""
    top_rows: int = 10
