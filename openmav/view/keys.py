"""Reading single keys from the terminal for interactive mode (POSIX terminals).

The terminal is put in cbreak mode (keys arrive at once, unechoed; Ctrl-C still
raises ``KeyboardInterrupt``) and restored on exit.  Keys pressed before that, while the
model or trace loaded, are kept and read first.
"""

from __future__ import annotations

import os
import sys
from collections import deque

from ..errors import InputError

ESCAPES = {"\x1b[A": "up", "\x1b[B": "down", "\x1b[C": "right", "\x1b[D": "left",
           "\x1bOA": "up", "\x1bOB": "down", "\x1bOC": "right", "\x1bOD": "left"}
NAMES = {"\r": "enter", "\n": "enter", " ": "space", "\x1b": "escape", "\x04": "q", "\x7f": "backspace"}


def parse_keys(data: str) -> list[str]:
    """Key names from raw terminal input: arrows, ``enter``, ``space`` or the character itself."""
    keys, i = [], 0
    while i < len(data):
        seq = data[i:i + 3]
        if seq in ESCAPES:
            keys.append(ESCAPES[seq])
            i += 3
            continue
        ch = data[i]
        keys.append(NAMES.get(ch, ch))
        i += 1
    return keys


class KeyReader:
    """``with KeyReader() as keys: keys.read()`` returns one key name, blocking."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdin
        self.queue: deque[str] = deque()
        self._saved = None

    def __enter__(self) -> "KeyReader":
        import termios
        import tty

        if not self.stream.isatty():
            raise InputError("--interactive needs a terminal on stdin")
        self.fd = self.stream.fileno()
        self._saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd, termios.TCSANOW)  # not TCSAFLUSH: keys typed while the run loaded are kept
        return self

    def __exit__(self, *exc) -> None:
        import termios

        if self._saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def read(self) -> str:
        while not self.queue:
            data = os.read(self.fd, 64)
            if not data:
                return "q"
            self.queue.extend(parse_keys(data.decode("utf-8", "replace")))
        return self.queue.popleft()
