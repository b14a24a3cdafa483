"""``MainLoopManager``: runs the live view (rich ``Live`` over a :class:`Dashboard`).

The dashboard is built once.  In live mode the producer (the generation loop)
hands each new :class:`~openmav.api.measurements.ModelMeasurements` to
:meth:`Dashboard.show` (a reference swap) and a :class:`Refresher` thread redraws
only when there is something new, at most ``refresh_rate`` times a second, and
never more often than keeps drawing under :data:`MAX_DRAW_SHARE` of the time, so
drawing (which holds Python's GIL) cannot slow generation by more than that.
Ctrl-C stops cleanly: the terminal is restored and the text so far is returned.

Interactive mode steps one token per key and keeps every token's measurements, so
the user can go back and forth and see every panel as it was at that token.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Iterable, Iterator

from rich.console import Console
from rich.live import Live

from .layout import Dashboard, StatusLine
from .options import ViewOptions

MAX_DRAW_SHARE = 0.15  # at most this share of wall time goes to drawing frames


class Refresher(threading.Thread):
    """Redraws a rich ``Live`` when marked dirty, at most ``rate`` times a second.

    After a frame that took ``d`` seconds the next one waits at least
    ``d / MAX_DRAW_SHARE``: on a slow machine frames get rarer instead of the
    producer getting slower.
    """

    def __init__(self, live, rate: float):
        super().__init__(name="mav-refresh", daemon=True)
        self.live = live
        self.min_interval = 1.0 / rate
        self.dirty = threading.Event()
        self.stopping = False
        self.frames = 0

    def mark(self) -> None:
        self.dirty.set()

    def run(self) -> None:
        interval = self.min_interval
        # The producer releases the GIL in every torch op and must win it back quickly:
        # with the default 5 ms switch interval a drawing thread would make it wait
        # that long after each op.
        previous = sys.getswitchinterval()
        sys.setswitchinterval(0.0002)
        try:
            self._loop(interval)
        finally:
            sys.setswitchinterval(previous)

    def _loop(self, interval: float) -> None:
        while not self.stopping:
            self.dirty.wait(0.25)
            if self.stopping or not self.dirty.is_set():
                continue
            self.dirty.clear()
            start = time.perf_counter()
            self.live.refresh()
            took = time.perf_counter() - start
            self.frames += 1
            interval = max(self.min_interval, took / MAX_DRAW_SHARE)
            time.sleep(max(0.0, interval - took))

    def stop(self) -> None:
        self.stopping = True
        self.dirty.set()
        self.join(timeout=5)


HELP = "enter/space: next token  ←/→ or p/n: back/forward  ↑/↓ or [/]: layer  ,/.: head  m: mean of heads  q: quit"
SHORT_HELP = "⏎ next ←→ tokens ↑↓ layer ,. head m mean q quit"


class MainLoopManager:
    def __init__(self, panels, console: Console | None = None, refresh_rate: float = 10.0,
                 num_grid_rows: int | None = None, options: ViewOptions | None = None, title: str = "mav"):
        self.console = console or Console()
        self.refresh_rate = max(0.1, float(refresh_rate))
        self.options = options or ViewOptions()
        self.title = title
        self.status = StatusLine(title)
        self.dashboard = Dashboard(panels, num_grid_rows, self.status)
        self.history: list = []
        self.interrupted = False

    @property
    def panels(self):
        return self.dashboard.panels

    def _status(self, m, index: int | None = None, keys: bool = False, end: str = "") -> None:
        rec = getattr(m, "record", None)
        st = self.status
        st.token = st.speed = ""
        if rec is not None:
            st.token = f"token {index + 1}/{len(self.history)}{end}" if index is not None else f"token {rec.step + 1}"
            st.speed = f"{rec.elapsed_ms:.0f} ms/token"
        st.help, st.short_help = (HELP, SHORT_HELP) if keys else ("", "")

    def show(self, m) -> None:
        """Show ``m`` at the next refresh."""
        self._status(m)
        self.dashboard.show(m)

    def run(self, stream: Iterable) -> list:
        """Live mode: show every item of ``stream`` until it ends or Ctrl-C; returns them."""
        start = time.perf_counter()
        with Live(self.dashboard, console=self.console, screen=True, auto_refresh=False,
                  redirect_stdout=False, redirect_stderr=False) as live:
            self.refresher = refresher = Refresher(live, self.refresh_rate)
            refresher.start()
            try:
                for m in stream:
                    self.history.append(m)
                    self.show(m)
                    refresher.mark()
            except KeyboardInterrupt:
                self.interrupted = True
            finally:
                refresher.stop()
                live.refresh()
                close = getattr(stream, "close", None)
                if close:
                    close()
        self.elapsed = time.perf_counter() - start
        return self.history

    def run_interactive(self, stream: Iterable, keys) -> list:
        """Interactive mode: one token per Enter/space; ←/→ browse; layer/head keys; q quits."""
        it: Iterator = iter(stream)
        index = -1
        done = False

        def step() -> bool:
            nonlocal done
            if done:
                return False
            try:
                self.history.append(next(it))
            except StopIteration:
                done = True
                return False
            return True

        with Live(self.dashboard, console=self.console, screen=True, auto_refresh=False,
                  redirect_stdout=False, redirect_stderr=False) as live:
            try:
                if step():
                    index = 0
                while True:
                    if index >= 0:
                        m = self.history[index]
                        end = " (end)" if done and index == len(self.history) - 1 else ""
                        self._status(m, index, keys=True, end=end)
                        self.dashboard.show(m)
                    live.refresh()
                    key = keys.read()
                    if key in ("q", "escape"):
                        break
                    index = self._handle(key, index, step)
            except KeyboardInterrupt:
                self.interrupted = True
            finally:
                close = getattr(stream, "close", None)
                if close:
                    close()
        return self.history

    def _handle(self, key: str, index: int, step) -> int:
        last = len(self.history) - 1
        if key in ("enter", "space"):
            step()
            return len(self.history) - 1
        if key in ("right", "n"):
            return index + 1 if index < last else (last + 1 if step() else index)
        if key in ("left", "p", "backspace"):
            return max(0, index - 1)
        o = self.options
        if key in ("up", "]"):
            o.layer = o.layer + 1
        elif key in ("down", "["):
            o.layer = o.layer - 1
        elif key == ".":
            o.head = 0 if o.head is None else o.head + 1
        elif key == ",":
            o.head = 0 if o.head is None else o.head - 1
        elif key == "m":
            o.head = None
        self._normalise_selection(index)
        return index

    def _normalise_selection(self, index: int) -> None:
        """Keep the layer and head in range (wrapping) so keys never point past the model."""
        if index < 0:
            return
        rows = getattr(self.history[index], "attention_rows", None)
        if rows is None:
            return
        n_layers, n_heads = rows.shape[0], rows.shape[1]
        o = self.options
        o.layer = (o.layer % n_layers) if o.layer >= 0 else (o.layer + n_layers) % n_layers
        if o.head is not None:
            o.head %= n_heads

    def snapshot(self, m=None, width: int | None = None, height: int = 40) -> Console:
        """Draw the dashboard once into a recording console (for pictures, tests, training loops)."""
        if m is not None:
            self.show(m)
        console = Console(record=True, width=width or self.console.width, height=height, force_terminal=True,
                          color_system="truecolor", file=_Null())
        console.print(self.dashboard, height=height)
        return console


class _Null:
    def write(self, _s):
        return 0

    def flush(self):
        pass
