"""Window arithmetic: which key positions each image of a generated token shows.

A token whose query sees ``S`` keys is drawn over windows of ``window`` positions
that move by ``stride``; the last window is snapped to end at the last key, so no
key is left out and no window runs past the sequence.  When ``S <= window`` there is
one window ``[0, S)`` and one image, ``attn_{i}.png``; otherwise the images are
``attn_{i}_{j}.png`` for ``j = 0, 1, ...``.

Example (the original viewer's): ``S = 42, window = 32, stride = 5`` gives
``[0, 32), [5, 37), [10, 42)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError


@dataclass(frozen=True)
class Window:
    """Key positions ``[start, end)`` of one image; ``index`` is ``j`` in its file name."""

    index: int
    start: int
    end: int
    single: bool

    @property
    def width(self) -> int:
        return self.end - self.start

    def filename(self, token_index: int) -> str:
        return f"attn_{token_index}.png" if self.single else f"attn_{token_index}_{self.index}.png"


def check_window(window: int, stride: int, context_length: int | None = None) -> None:
    """Raise :class:`InputError` for a window below 1 or past the context, a stride below 1 or past the window."""
    if window < 1:
        raise InputError(f"--window must be at least 1 key position, got {window}")
    if context_length and window > context_length:
        raise InputError(f"--window {window} is larger than the model's context of {context_length} tokens")
    if stride < 1:
        raise InputError(f"--stride must be at least 1, got {stride}")
    if stride > window:
        raise InputError(f"--stride {stride} is larger than --window {window}: keys between windows would be skipped")


def window_spans(seq_len: int, window: int, stride: int) -> list[tuple[int, int]]:
    """``[start, end)`` spans over ``seq_len`` keys; the last one ends at ``seq_len``."""
    check_window(window, stride)
    if seq_len < 1:
        raise InputError(f"a sequence needs at least one key position, got {seq_len}")
    if seq_len <= window:
        return [(0, seq_len)]
    spans = []
    start = 0
    while start + window < seq_len:
        spans.append((start, start + window))
        start += stride
    spans.append((seq_len - window, seq_len))
    return spans


def windows_for(seq_len: int, window: int, stride: int) -> list[Window]:
    """The :class:`Window` s of one generated token whose query sees ``seq_len`` keys."""
    spans = window_spans(seq_len, window, stride)
    single = len(spans) == 1
    return [Window(j, a, b, single) for j, (a, b) in enumerate(spans)]
