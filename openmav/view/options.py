"""``ViewOptions``: what the user chose about how the live view draws (never about the model)."""

from __future__ import annotations

from dataclasses import dataclass

SCALES = ("auto", "linear", "log", "minmax")
AGGREGATIONS = ("l2", "max_abs")


@dataclass
class ViewOptions:
    """Drawing settings shared by the built-in panels.

    ``scale`` is how the per-layer panels map values to bar lengths: ``linear``
    (v / max), ``log`` (log1p(v) / log1p(max)), ``minmax``, or ``auto`` (the default):
    per panel, ``log`` when its largest value is more than 10 times the median, else
    ``linear``; the title names the scale used.

    ``layer`` and ``head`` select what the ``attention`` panel shows: ``layer`` is
    0-based (negative counts from the last layer, as in Python), ``head=None`` means
    the mean over heads.  Interactive mode changes them with keys.

    Values are checked when the options are made (the rules of
    :mod:`openmav.cli.validate`), so a bad one is an :class:`~openmav.errors.InputError`
    before any model loads, also through the Python API (``MAV(..., max_bar_length=0)``).
    """

    max_bar_length: int = 35
    limit_chars: int = 400
    scale: str = "auto"
    aggregation: str = "l2"
    layer: int = -1
    head: int | None = None
    prompt: str = ""
    top_rows: int = 10

    def __post_init__(self) -> None:
        from ..rules import VIEW, Number, check_text
        from ..errors import InputError

        VIEW["max_bar_length"].check("max_bar_length", self.max_bar_length)
        VIEW["limit_chars"].check("limit_chars", self.limit_chars)
        Number(int, 1, 10_000).check("top_rows", self.top_rows)
        Number(int, -100_000, 100_000).check("layer", self.layer)
        if self.head is not None:
            Number(int, 0, 100_000).check("head", self.head)
        if self.scale not in SCALES:
            raise InputError(f"unknown scale {self.scale!r}: use one of {', '.join(SCALES)}")
        if self.aggregation not in AGGREGATIONS:
            raise InputError(f"unknown aggregation {self.aggregation!r}: use one of {', '.join(AGGREGATIONS)}")
        check_text("the prompt", self.prompt)
