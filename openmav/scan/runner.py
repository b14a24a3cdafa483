"""Where shards run: in this process, or on a Ray cluster (one loaded model per actor).

A runner takes an iterator of work items and a function that builds a worker (``make_worker()`` returns an
object with ``run(item) -> result``), and yields ``(item, result)`` as results come in, in any order.
Nothing here knows what a scan is, so other corpus-level work can run on it too.

- :class:`LocalRunner`: one worker, built once, items run in order.
- :class:`RayRunner`: ``workers`` Ray actors, each building its own worker (so each loads its own model),
  fed through Ray's :class:`ray.util.ActorPool`; at most two items per actor are in flight, so a streamed
  corpus is never read far ahead.  Actors are restarted and their tasks retried when a worker process
  dies (``max_restarts``, ``max_task_retries``), so a killed worker costs time, never results.  ``address``
  ``None`` starts a local cluster (its head in a fresh child process, stopped by :meth:`RayRunner.close`); otherwise :func:`ray.init` joins the cluster there.  Ray is optional
  (``pip install openmav[ray]``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from typing import Callable, Iterable, Iterator

from ..errors import InputError

RAY_HINT = "Ray is not installed: pip install 'openmav[ray]' (or pip install 'ray[data]')"


class LocalRunner:
    def __init__(self, make_worker: Callable[[], object]):
        self.make_worker = make_worker

    def run(self, items: Iterable) -> Iterator[tuple[object, object]]:
        worker = self.make_worker()
        for item in items:
            yield item, worker.run(item)

    def close(self) -> None:
        pass


def require_ray():
    try:
        import ray  # noqa: F401
    except ImportError:
        raise InputError(RAY_HINT) from None
    return ray


class RayRunner:
    """See the module docstring; ``cpus_per_worker`` sets each actor's CPUs (and its torch threads)."""

    def __init__(self, make_worker: Callable[[], object], address: str | None = None, workers: int | None = None,
                 cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0, env: dict | None = None):
        ray = require_ray()
        self.ray = ray
        self._started = False
        self._head = None
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            kwargs["runtime_env"] = {"env_vars": dict(env or {})}
            if address is None:
                cpus = max(1, int(workers * cpus_per_worker) if workers else os.cpu_count() or 1)
                self._head, address = start_local_head(cpus)
                del kwargs["include_dashboard"]  # the head's own setting
                _token_auth_on()
            try:
                ray.init(address=address, **kwargs)
            except Exception as exc:  # noqa: BLE001 - one line: cannot reach or start the cluster
                ray.shutdown()
                where = "start a local Ray cluster" if self._head is not None else f"join the Ray cluster at {address}"
                self._stop_head()
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise InputError(f"cannot {where}: {first}") from None
            self._started = True
        total = int(ray.cluster_resources().get("CPU", 1))
        self.workers = workers or max(1, int(total // cpus_per_worker))
        threads = max(1, int(cpus_per_worker))

        @ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_restarts=-1, max_task_retries=3)
        class Worker:
            def __init__(self, factory):
                import torch

                torch.set_num_threads(threads)
                self.worker = factory()

            def run(self, tagged):
                ticket, item = tagged
                return ticket, self.worker.run(item)

        self.actors = [Worker.remote(make_worker) for _ in range(self.workers)]

    def run(self, items: Iterable) -> Iterator[tuple[object, object]]:
        from ray.util import ActorPool

        pool = ActorPool(self.actors)
        pending: dict[int, object] = {}
        it = iter(items)
        ticket = 0
        exhausted = False
        while True:
            while not exhausted and len(pending) < 2 * self.workers:
                try:
                    item = next(it)
                except StopIteration:
                    exhausted = True
                    break
                pool.submit(lambda actor, value: actor.run.remote(value), (ticket, item))
                pending[ticket] = item
                ticket += 1
            if not pool.has_next():
                return
            result = pool.get_next_unordered()
            done_ticket, value = result
            yield pending.pop(done_ticket), value

    def close(self) -> None:
        for actor in getattr(self, "actors", []):
            try:
                self.ray.kill(actor)
            except Exception:  # noqa: BLE001
                pass
        if self._started:
            self.ray.shutdown()
        self._stop_head()

    def _stop_head(self) -> None:
        head, self._head = self._head, None
        if head is not None:
            stop_head(head)


# The head runs in a fresh child: the parent of every Ray process is then a single-threaded interpreter.
# Ray starts its processes with a preexec_fn, which can hang or crash in the forked copy of a process with
# many threads (a notebook, a test run, a web server); seen as "Timed out waiting for file .../gcs_server_port".
# The child asks to be sent SIGTERM when the thread that started it ends (prctl PDEATHSIG) and checks that
# its parent is still the one that started it, so a driver killed with SIGKILL leaves no cluster behind.
_HEAD = """
import ctypes, os, signal, sys
if sys.platform.startswith("linux"):
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
if os.getppid() != int(sys.argv.pop(1)):
    sys.exit(1)
from ray.scripts.scripts import main
sys.exit(main())
"""


def _token_auth_on() -> None:
    """Token authentication, as ray.init's own local cluster turns it on (the token in ~/.ray/auth_token).

    Ray reads RAY_AUTH_MODE into a cached config; ray.init refreshes it the same way for its own local cluster.
    """
    os.environ["RAY_AUTH_MODE"] = "token"
    try:
        from ray._raylet import Config

        Config.initialize("")
    except (ImportError, AttributeError):  # a Ray that reads the variable afresh
        pass


def stop_head(head: subprocess.Popen) -> None:
    """Stop a head :func:`start_local_head` started (``ray start --block`` stops every process it started on
    SIGTERM); killed if it has not ended within a minute."""
    if head.poll() is None:
        head.terminate()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_local_head(cpus: int, timeout: float = 180.0) -> tuple[subprocess.Popen, str]:
    """Start a one-machine Ray cluster in a child process; return it and its address once it is up.

    Raises :class:`InputError` (one line, with the head's last output) when it does not come up.
    """
    port = _free_port()
    command = [sys.executable, "-c", _HEAD, str(os.getpid()), "start", "--head", "--block",
               f"--port={port}", f"--num-cpus={cpus}", "--num-gpus=0", "--include-dashboard=false",
               "--disable-usage-stats"]
    head = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"})
    lines: list[str] = []
    ready = threading.Event()

    def read():  # drain the head's output for its lifetime, so it never blocks on a full pipe
        for line in head.stdout:
            lines.append(line.rstrip())
            del lines[:-20]
            if "Ray runtime started" in line:
                ready.set()
        ready.set()

    threading.Thread(target=read, name="openmav-ray-head", daemon=True).start()
    if not ready.wait(timeout) or head.poll() is not None:
        stop_head(head)
        last = next((line for line in reversed(lines) if line.strip()), "no output")
        raise InputError(f"cannot start a local Ray cluster: {last.strip()}")
    return head, f"127.0.0.1:{port}"
