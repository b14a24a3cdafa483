"""``PanelBase``: the base class of every live-view panel, built-in or plugin.

A panel is a rich renderable that stores data and draws at the size it is given.
It is built once; the view calls :meth:`PanelBase.update` with each new
:class:`~openmav.api.measurements.ModelMeasurements` and rich renders it when the
screen is refreshed.  A plugin subclasses it and implements
:meth:`get_panel_content`::

    class EntropyFire(PanelBase):
        def __init__(self, measurements):
            super().__init__("Entropy Fire", "red")
            self.measurements = measurements

        def get_panel_content(self):
            return "🔥 " * int(self.measurements.attention_entropy_values[0])

While :meth:`get_panel_content` runs, ``self.width`` and ``self.height`` hold the
size inside the border (``height`` is ``None`` when there is no limit), and
``self.options`` the :class:`~openmav.view.options.ViewOptions`.  If it raises, the
error is shown inside the panel and the run goes on.

The title is drawn whole: :meth:`get_titles` may offer shorter forms (longest
first) and the longest that fits the border is used (``self.shown_title``).

``needs`` names the captures a panel reads besides the always-present ones
(logits, norms): ``"attention"`` (attention rows and entropies) and
``"logit_lens"``.  The view turns on only the captures its panels need; the
default for plugins is ``{"attention"}``.
"""

from __future__ import annotations

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.panel import Panel
from rich.segment import Segment
from rich.text import Text

from ..options import ViewOptions


class _Lines:
    """Pre-rendered lines of segments, drawn as they are."""

    def __init__(self, lines):
        self.lines = lines

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for line in self.lines:
            yield from line
            yield Segment.line()


class PanelBase:
    name: str | None = None  # the name ``selected_panels`` uses; the class name when None
    needs: frozenset = frozenset({"attention"})

    def __init__(self, title: str, border_style: str = "white"):
        self.title = title
        self.border_style = border_style
        if not hasattr(self, "measurements"):
            self.measurements = None
        if not hasattr(self, "options"):
            self.options = ViewOptions()
        self.width = 40
        self.height: int | None = None
        self.shown_title = ""

    @classmethod
    def panel_name(cls) -> str:
        return cls.name or cls.__name__

    def update(self, measurements) -> None:
        """Store the measurements of the token to show next (cheap: no drawing here)."""
        self.measurements = measurements

    def get_panel_content(self):
        """The content inside the border: a string or any rich renderable."""
        raise NotImplementedError(f"{type(self).__name__} must implement get_panel_content()")

    def get_title(self) -> str:
        """The title on the border; panels whose title depends on state override it."""
        return self.title

    def get_titles(self) -> list[str]:
        """The title and shorter forms of it, longest first (default: :meth:`get_title` only)."""
        return [self.get_title()]

    @staticmethod
    def fitting_title(titles: list[str], panel_width: int) -> str:
        """The first of ``titles`` that a border ``panel_width`` cells wide shows whole
        (rich pads a title with a space each side and keeps two border cells each side),
        else the shortest."""
        room = panel_width - 6
        for title in titles:
            if cell_len(title) <= room:
                return title
        return min(titles, key=cell_len) if titles else ""

    def _content_lines(self, console: Console, options: ConsoleOptions):
        if self.measurements is None:
            content = Text("waiting for the first token…", style="dim")
        else:
            content = self.get_panel_content()
        if isinstance(content, str):
            content = Text(content)
        return console.render_lines(content, options, pad=True)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        self.width = max(1, options.max_width - 4)
        self.height = None if options.height is None else max(1, options.height - 2)
        inner = options.update(width=self.width, height=self.height)
        try:
            title = self.fitting_title(self.get_titles(), options.max_width)
            lines = self._content_lines(console, inner)
        except Exception as exc:  # a panel's bug stays inside its panel
            title = self.fitting_title([str(self.title)], options.max_width)
            msg = Text(f"panel error: {type(exc).__name__}: {exc}", style="bold red")
            lines = console.render_lines(msg, inner, pad=True)
        self.shown_title = title
        yield Panel(_Lines(lines), title=title, border_style=self.border_style, height=options.height,
                    expand=True)
