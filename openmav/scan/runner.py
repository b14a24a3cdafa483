"""Where shards run: in this process, or on a Ray cluster (one loaded model per actor).

A runner takes an iterator of work items and a function that builds a worker (``make_worker()`` returns an
object with ``run(item) -> result``), and yields ``(item, result)`` as results come in, in any order.
Nothing here knows what a scan is, so other corpus-level work can run on it too.

- :class:`LocalRunner`: one worker, built once, items run in order.
- :class:`RayRunner`: ``workers`` Ray actors, each building its own worker (so each loads its own model),
  fed through Ray's :class:`ray.util.ActorPool`; at most two items per actor are in flight, so a streamed
  corpus is never read far ahead.  Actors are restarted and their tasks retried when a worker process
  dies (``max_restarts``, ``max_task_retries``), so a killed worker costs time, never results.  ``address``
  ``None`` starts a local cluster; otherwise :func:`ray.init` joins the cluster there.  Ray is optional
  (``pip install openmav[ray]``).
"""

from __future__ import annotations

import os
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
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            if address is None:
                kwargs["num_cpus"] = max(1, int(workers * cpus_per_worker) if workers else os.cpu_count() or 1)
            kwargs["runtime_env"] = {"env_vars": dict(env or {})}
            for attempt in range(2):  # a local cluster's first start can outlast Ray's wait on a busy machine
                try:
                    ray.init(address=address, **kwargs)
                    break
                except Exception as exc:  # noqa: BLE001 - one line: cannot reach or start the cluster
                    ray.shutdown()
                    if attempt == 0 and address is None:
                        continue
                    where = "start a local Ray cluster" if address is None else f"join the Ray cluster at {address}"
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
