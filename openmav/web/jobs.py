"""One model, one computation at a time: a FIFO gate, a bounded line for requests and a queue for long jobs.

:class:`ModelGate` is a fair (first come, first served) lock: every computation
on the model, a quick request or a whole study, holds it, so two forwards never
run on the model at once and nobody waits forever behind later arrivals.

:class:`RequestLine` runs the quick requests that need the model (attention, predictions,
the lens, ...) one at a time on a thread of its own.  A request waits in the line as a
future, holding no server thread, so the endpoints that do not need the model (model
info, job status, cancel, the page) stay free while the model is busy; when
``max_waiting`` requests already wait, the next one is refused at once
(:class:`BusyError`, with a guess of when to try again).

:class:`JobQueue` runs long jobs (evaluating all heads, studies, circuit discovery) one after another
on a single worker thread.  Each :class:`Job` keeps its progress events (for
polling and Server-Sent Events), a cancel flag the job function checks, and its
result or error.  The number of jobs queued or running is bounded.  When the
process exits (Ctrl+C on ``mav serve``), every job is cancelled and the worker is
given up to 5 seconds to stop at the job's next cancel check, so an exit does not
kill a forward midway (torch aborts the process when that happens).
"""

from __future__ import annotations

import atexit
import itertools
import math
import queue
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import OpenMavError


class BusyError(OpenMavError):
    """Too many jobs or requests waiting, or the model stayed busy longer than a request may wait.

    ``retry_after``: whole seconds after which trying again is worth it (the HTTP ``Retry-After``).
    """

    def __init__(self, message: str, retry_after: int = 5):
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))


class ModelGate:
    """A FIFO lock: ``with gate:`` waits its turn by ticket, then holds the model."""

    def __init__(self):
        self._cond = threading.Condition()
        self._next = 0
        self._serving = 0
        self._skipped: set[int] = set()  # tickets whose holders gave up waiting
        self.holder: str | None = None

    def acquire(self, who: str = "request", timeout: float | None = None) -> None:
        with self._cond:
            ticket = self._next
            self._next += 1
            deadline = None if timeout is None else time.monotonic() + timeout
            while self._serving != ticket:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    # give the ticket up: mark it skipped so later tickets are not blocked
                    self._skipped.add(ticket)
                    raise BusyError(f"the model is busy ({self.holder}); try again when it is done")
                self._cond.wait(left)
            self.holder = who

    def release(self) -> None:
        with self._cond:
            self.holder = None
            self._serving += 1
            while self._serving in self._skipped:
                self._skipped.discard(self._serving)
                self._serving += 1
            self._cond.notify_all()

    def hold(self, who: str = "request", timeout: float | None = None) -> "_Held":
        return _Held(self, who, timeout)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


class _Held:
    def __init__(self, gate: ModelGate, who: str, timeout: float | None):
        self.gate, self.who, self.timeout = gate, who, timeout

    def __enter__(self):
        self.gate.acquire(self.who, self.timeout)
        return self.gate

    def __exit__(self, *exc):
        self.gate.release()


class RequestLine:
    """Requests that need the model, run in arrival order on one thread, at most ``max_waiting`` waiting.

    ``submit(fn)`` returns a :class:`concurrent.futures.Future` of ``fn()`` at once, or raises
    :class:`BusyError` when the line is full.  The thread takes the model gate for each request
    (so requests and jobs take turns, first come first served) and runs it unless the caller
    gave up meanwhile (``future.cancel()``: a request that waited too long, or whose client left).
    """

    def __init__(self, gate: ModelGate, max_waiting: int = 32):
        if max_waiting < 1:
            raise ValueError(f"max_waiting must be at least 1, got {max_waiting}")
        self.gate = gate
        self.max_waiting = max_waiting
        self._items: deque = deque()
        self._cond = threading.Condition()
        self._front: Future | None = None  # taken from the line, waiting for the gate
        self._mean_s = 0.2  # running mean of a request's time on the model (for Retry-After)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="openmav-requests", daemon=True)
        self._thread.start()
        atexit.register(_close_at_exit, weakref.ref(self))

    def waiting(self) -> int:
        """Requests accepted and not started (given-up ones not counted)."""
        with self._cond:
            return self._waiting()

    def _waiting(self) -> int:
        front = self._front is not None and not self._front.cancelled()
        return sum(1 for fut, _, _ in self._items if not fut.cancelled()) + front

    def retry_after(self) -> int:
        """Seconds until the line has likely moved on: the requests waiting times their mean time, at least 1."""
        with self._cond:
            return max(1, math.ceil(self._mean_s * (self._waiting() + 1)))

    def submit(self, fn: Callable[[], Any], who: str = "a request") -> Future:
        fut: Future = Future()
        with self._cond:
            if self._closed:
                raise BusyError("the server is shutting down")
            if len(self._items) >= self.max_waiting:  # drop the requests whose callers gave up
                self._items = deque(item for item in self._items if not item[0].cancelled())
            if self._waiting() >= self.max_waiting:
                holder = self.gate.holder or "another request"
                raise BusyError(f"the model is busy ({holder}) and {self.max_waiting} requests are already "
                                "waiting for it; try again shortly",
                                retry_after=max(1, math.ceil(self._mean_s * (self._waiting() + 1))))
            self._items.append((fut, fn, who))
            self._cond.notify()
        return fut

    def close(self, timeout: float = 5.0) -> None:
        """Give up every waiting request and stop the thread (after the request it runs, up to ``timeout`` s)."""
        with self._cond:
            self._closed = True
            for fut, _, _ in self._items:
                fut.cancel()
            self._items.clear()
            self._cond.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                fut, fn, who = self._items.popleft()
                self._front = fut
            try:
                if fut.cancelled():
                    continue
                with self.gate.hold(who):
                    if not fut.set_running_or_notify_cancel():  # given up while it waited for the model
                        continue
                    with self._cond:
                        self._front = None
                    start = time.monotonic()
                    try:
                        result = fn()
                    except BaseException as exc:  # handed to the caller; the thread outlives any request
                        fut.set_exception(exc)
                    else:
                        fut.set_result(result)
                    with self._cond:
                        self._mean_s = 0.8 * self._mean_s + 0.2 * (time.monotonic() - start)
            finally:
                with self._cond:
                    self._front = None


@dataclass
class Job:
    """A long computation: its kind, parameters, progress events, and outcome."""

    id: int
    kind: str
    params: dict
    status: str = "queued"  # queued, running, done, cancelled, error
    events: list = field(default_factory=list)
    result: Any = None
    error: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    created: float = field(default_factory=time.time)
    changed: threading.Condition = field(default_factory=threading.Condition)

    @property
    def finished(self) -> bool:
        return self.status in ("done", "cancelled", "error")

    def progress(self, event: dict) -> None:
        """Record one progress event (called by the job function, from the worker thread)."""
        with self.changed:
            self.events.append(dict(event))
            self.changed.notify_all()

    def _set(self, status: str, result: Any = None, error: str | None = None) -> None:
        with self.changed:
            self.status, self.result, self.error = status, result, error
            self.changed.notify_all()

    def wait_change(self, seen_events: int, seen_status: str, timeout: float) -> None:
        """Block until there are more than ``seen_events`` events or the status changes."""
        with self.changed:
            self.changed.wait_for(lambda: len(self.events) > seen_events or self.status != seen_status, timeout)

    def summary(self) -> dict:
        return {"id": self.id, "kind": self.kind, "status": self.status, "params": self.params,
                "n_events": len(self.events), "last_event": self.events[-1] if self.events else None,
                "result": self.result, "error": self.error}


class JobQueue:
    """Runs jobs one at a time on a worker thread; each job holds the model gate while it runs."""

    def __init__(self, gate: ModelGate, max_jobs: int = 4, keep_finished: int = 50):
        self.gate = gate
        self.max_jobs = max_jobs
        self.keep_finished = keep_finished
        self.jobs: dict[int, Job] = {}
        self._ids = itertools.count(1)
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._worker = threading.Thread(target=self._run, name="openmav-jobs", daemon=True)
        self._worker.start()
        atexit.register(_close_at_exit, weakref.ref(self))

    def close(self, timeout: float = 10.0) -> None:
        """Cancel every job and stop the worker, waiting up to ``timeout`` s for the job it runs."""
        for job in list(self.jobs.values()):
            self.cancel(job)
        self._queue.put(None)
        self._worker.join(timeout)

    def active(self) -> list[Job]:
        return [j for j in self.jobs.values() if not j.finished]

    def submit(self, kind: str, params: dict, fn: Callable[[Job], Any]) -> Job:
        """Queue ``fn(job)``; refuses when ``max_jobs`` jobs are already queued or running."""
        with self._lock:
            if len(self.active()) >= self.max_jobs:
                raise BusyError(f"at most {self.max_jobs} jobs may be queued or running at once; "
                                "cancel one or wait for one to finish", retry_after=10)
            job = Job(id=next(self._ids), kind=kind, params=params)
            self.jobs[job.id] = job
            self._forget_old()
        self._queue.put((job, fn))
        return job

    def _forget_old(self) -> None:
        done = [j for j in self.jobs.values() if j.finished]
        for job in sorted(done, key=lambda j: j.created)[:max(0, len(done) - self.keep_finished)]:
            del self.jobs[job.id]

    def cancel(self, job: Job) -> None:
        job.cancel.set()
        with job.changed:  # atomic against the worker starting it (the condition's lock is reentrant)
            if job.status == "queued":
                job._set("cancelled")

    def _start(self, job: Job) -> bool:
        """Mark ``job`` running unless it was cancelled while it waited for the gate."""
        with job.changed:
            if job.finished or job.cancel.is_set():
                if not job.finished:
                    job._set("cancelled")
                return False
            job._set("running")
            return True

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:  # close()
                return
            job, fn = item
            if job.finished:  # cancelled while queued
                continue
            try:
                with self.gate.hold(f"{job.kind} job {job.id}"):
                    if not self._start(job):  # cancelled while it waited for the model
                        continue
                    result = fn(job)
                job._set("cancelled" if job.cancel.is_set() else "done", result=result)
            except OpenMavError as exc:  # a library's Cancelled after the cancel event counts as cancelled
                job._set("cancelled" if job.cancel.is_set() else "error", error=str(exc))
            except Exception as exc:  # the worker must outlive any job
                job._set("error", error=f"{type(exc).__name__}: {exc}")


def _close_at_exit(ref) -> None:
    owner = ref()  # a JobQueue or a RequestLine
    if owner is not None:
        owner.close(timeout=5.0)
