"""Temporary files and folders that do not outlive their run.

Every output is written under a temporary name and renamed into place.  While a temporary
exists its process holds it (:func:`hold`: an advisory ``flock`` on an open descriptor,
which the kernel lets go when the process ends, however it ends, ``kill -9`` included) and
lists it for removal at exit.  So:

- on every exit path a process runs code on, the owner removes it: ``finally`` blocks, the
  interpreter's exit (:mod:`atexit`), and SIGTERM and SIGHUP, which are turned into
  :class:`SystemExit` (only where nobody installed a handler of their own) so that the
  ``finally`` blocks run;
- what a killed process left behind is removed by the next run that writes in that folder
  (:func:`sweep`): a name of the writer's pattern that no process holds and that is older
  than :data:`STALE_S` seconds (without ``flock``, as on Windows: older than
  :data:`UNLOCKED_STALE_S`).

This module imports only the standard library.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import stat
import threading
import time
from dataclasses import dataclass, field

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; stale temporaries are judged by age alone
    fcntl = None

STALE_S = 2.0  # a temporary is locked microseconds after it is made; an older unlocked one is stale
UNLOCKED_STALE_S = 3600.0  # where locks are not available

_LIVE: dict[str, tuple[int, int | None]] = {}  # path -> (owner pid, locked descriptor)
_LOCK = threading.Lock()
_SIGNALS_SET = False


def _lock(path: str) -> int | None:
    """An open descriptor of ``path`` holding an exclusive ``flock``, or None where that is not possible."""
    if fcntl is None:
        return None
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags | (os.O_DIRECTORY if os.path.isdir(path) else 0))
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def hold(path: str | os.PathLike) -> None:
    """Mark ``path`` (a file or folder just made) as this process's temporary: locked, removed at exit."""
    path = os.fspath(path)
    fd = _lock(path)
    with _LOCK:
        _LIVE[path] = (os.getpid(), fd)
    _catch_signals()


def release(path: str | os.PathLike, remove: bool = True) -> None:
    """Let go of ``path``: removed (file or folder) unless ``remove`` is false (it was renamed into place)."""
    path = os.fspath(path)
    with _LOCK:
        pid, fd = _LIVE.pop(path, (None, None))
    try:
        if remove:
            _remove(path)
    finally:
        if fd is not None and pid == os.getpid():
            os.close(fd)


def _remove(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        pass  # unremovable (a read-only folder): the next run's sweep tries again


def _held_elsewhere(path: str) -> bool:
    """Whether some live process holds ``path`` (tried with a lock that is let go at once)."""
    if fcntl is None:
        return False  # no locks to ask: the age alone decides
    with _LOCK:
        if path in _LIVE and _LIVE[path][0] == os.getpid():
            return True
    fd = _lock(path)
    if fd is None:
        return os.path.exists(path)  # locked by someone, or it vanished meanwhile
    os.close(fd)
    return False


@dataclass
class Swept:
    """What :func:`sweep` removed, and what it found held or too young."""

    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def sweep(folder: str | os.PathLike, pattern: str | re.Pattern, now: float | None = None) -> Swept:
    """Remove the temporaries a killed process left in ``folder``: names matching ``pattern`` (a regular
    expression, matched in full) that no live process holds and that are older than :data:`STALE_S`
    (:data:`UNLOCKED_STALE_S` without locks).  Never raises: what cannot be read or removed is left."""
    found = Swept()
    regex = re.compile(pattern) if isinstance(pattern, str) else pattern
    now = time.time() if now is None else now
    limit = STALE_S if fcntl is not None else UNLOCKED_STALE_S
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return found
    for entry in entries:
        if not regex.fullmatch(entry.name):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode) or now - st.st_mtime < limit or _held_elsewhere(entry.path):
            found.kept.append(entry.path)
            continue
        _remove(entry.path)
        (found.kept if os.path.lexists(entry.path) else found.removed).append(entry.path)
    return found


def _remove_all_at_exit() -> None:
    with _LOCK:
        mine = [p for p, (pid, _) in _LIVE.items() if pid == os.getpid()]
    for path in mine:
        release(path)


def _exit_on_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _catch_signals() -> None:
    """SIGTERM and SIGHUP become SystemExit (so ``finally`` blocks and atexit run), where they are unhandled."""
    global _SIGNALS_SET
    if _SIGNALS_SET or threading.current_thread() is not threading.main_thread():
        return
    _SIGNALS_SET = True
    for name in ("SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        if signum is not None and signal.getsignal(signum) is signal.SIG_DFL:
            try:
                signal.signal(signum, _exit_on_signal)
            except (ValueError, OSError):
                pass


atexit.register(_remove_all_at_exit)

__all__ = ["STALE_S", "UNLOCKED_STALE_S", "Swept", "hold", "release", "sweep"]
