"""Logit-lens attention maps (``mav maps``): one image per generated token and window.

:mod:`~openmav.maps.collect` gathers attention and per-position lens labels,
:mod:`~openmav.maps.windows` does the window arithmetic, :mod:`~openmav.maps.render`
and :mod:`~openmav.maps.compose` draw, :mod:`~openmav.maps.write` writes in parallel,
:mod:`~openmav.maps.sidecar` and :mod:`~openmav.maps.html` write the numbers and the
page, :mod:`~openmav.maps.run` puts it all together.
"""

from .windows import Window, check_window, window_spans, windows_for

__all__ = ["Window", "check_window", "window_spans", "windows_for"]
