"""The logit lens of the step loop: one product per step or per batch of steps, run where it costs least.

The lens of a step is ``softmax(lens(resid_l))`` for every layer ``l``, ``lm.parts.lens``
being the model's own final norm, unembedding and logit transform.  Its cost is one
``[rows, d_model] x [d_model, vocab]`` product; everything else (top-k, the
normaliser) is a pass over its output.  Three things keep it at that floor:

- **one product for many steps**: with ``CaptureConfig.lens_batch = n`` the residuals
  of ``n`` steps go through one ``[n * layers, d] x [d, vocab]`` product.  A single
  step's product reads the whole unembedding for a few dozen rows (bound by memory
  bandwidth); a batch reads it once for all of them (bound by arithmetic).  On the CPU
  the product walks the vocabulary in slices (:func:`lens_top`), so its output is never
  ``[rows, vocab]`` at once: the top-k and the normaliser read each slice while it is in
  cache, and a batch's memory stays that of one slice;
- **nothing recomputed**: the last layer's lens *is* the model's next-token
  distribution, which the record already holds (its top-k of the softmax), so once
  a model has shown that the hooks' last residual gives its logits
  (:func:`last_layer_is_logits`), the last layer is left out of the product and
  copied from the record;
- **top-k without a sort**: a selection per vocabulary slice, merged (or, in one product,
  :func:`top_k`: block maxima, then the few blocks that can hold the top ``k``), and the
  softmax normaliser in place on the product's output from the top-1 value already
  selected (online across slices); probabilities are computed for the ``k`` kept ids only.

Where it runs (:func:`lens_placement`), with ``CaptureConfig.lens_in_background=None``:

- on a worker thread when the cores beyond the step loop's torch threads can hold a pool as
  large as the loop's;
- on one core, or on an accelerator (the lens is queued on the device after the forward
  and the loop only waits for ``k`` ids per layer), in the step loop;
- otherwise (say 2 cores, torch's 2 threads) a per-step lens is *measured*: after the first
  step, four steps are timed with the lens in the loop and four with it on the worker, and
  the rest of the generation takes the faster (median time per token); the model's later
  generations in the next :data:`PLACEMENT_MEMORY_S` seconds, with as many torch threads,
  keep that choice without trying again (:func:`remembered_placement`).  A batched lens
  takes the worker.

On the worker, the lens never shares a core with the loop: torch's thread count belongs to
the thread that sets it, so the worker takes the cores the loop leaves, or, where the loop's
threads fill the machine, the loop gives up one for the generation (:func:`split_threads`).

``bench/bench_peers.py`` measures every placement side by side.
"""

from __future__ import annotations

import functools
import os
import statistics
import time
from collections import deque
from contextlib import contextmanager
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@functools.cache
def per_thread_counts() -> bool:
    """Whether torch's intra-op thread count belongs to the thread that sets it: true of its OpenMP
    backend (this machine's, and the usual CPU builds'); a native thread pool has one count."""
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def split_threads(threads: int) -> tuple[int | None, int | None]:
    """``(worker, loop)``: the torch threads of the lens's worker thread (``None``: as torch gives a new
    thread), and those of the step loop while the worker runs (``None``: the loop keeps its
    ``threads``), on the CPU.

    The worker takes the cores the loop's threads leave (at most as many as the loop has); where
    the loop's threads take every core, the loop gives one up for the generation and the worker
    takes it.  Torch's thread count is per thread (OpenMP's and MKL's settings belong to the
    thread that makes them), so the worker's setting changes neither the loop's nor the caller's.
    Measured on 2 cores with SmolLM2 (``bench/bench_peers.py``): the loop on one thread runs a
    one-token forward as fast as on two (41.7 against 41.4 ms), and the lens on the other core
    then overlaps it whole (44 ms/token against 59 with the lens in the loop, and 59 with a
    worker that shares both cores with the loop)."""
    if not per_thread_counts():
        return None, None  # one count for the whole process: the worker shares the loop's threads
    spare = available_cores() - threads
    if spare >= 1:
        return min(spare, threads), None
    if threads >= 2:
        return 1, threads - 1
    return 1, None


@contextmanager
def torch_threads(threads: int | None):
    """Run the body with ``threads`` torch intra-op threads (``None``: unchanged), then restore."""
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def lens_placement(device: torch.device | str | None = None) -> bool | None:
    """``True``: the lens runs on a worker thread; ``False``: in the step loop; ``None``: measure
    both in the first steps (see the module's doc)."""
    if device is not None and torch.device(device).type != "cpu":
        return False
    cores, threads = available_cores(), torch.get_num_threads()
    if cores - threads >= threads:
        return True
    if cores < 2:
        return False
    return None


TRIAL_STEPS = 4  # steps timed in each placement when the placement is measured
_clock = time.perf_counter


LENS_BYTES = 24 * 2 ** 20  # the most a lens product's [rows, vocab] float32 output may hold at once
VOCAB_SLICE = 4096  # unembedding rows per product on the CPU (its output stays in cache for the passes over it)


def lens_rows(lm) -> int:
    """How many rows one lens product takes so that its ``[rows, vocab]`` output stays under
    :data:`LENS_BYTES` (where the vocabulary is not sliced, see :func:`lens_top`)."""
    vocab = getattr(lm.model.config, "vocab_size", None) or getattr(lm.model.config.get_text_config(), "vocab_size",
                                                                    None) or 262_144
    return max(1, LENS_BYTES // (4 * int(vocab)))


PLACEMENT_MEMORY_S = 300.0  # a measured placement serves the model's later generations this long


def remembered_placement(lm) -> bool | None:
    """The placement a generation of ``lm`` measured in the last :data:`PLACEMENT_MEMORY_S` seconds with
    as many torch threads as now (the next generations skip the trial steps), else ``None``."""
    memo = lm.extra.get("lens_measured")
    if memo and memo[0] == torch.get_num_threads() and time.monotonic() - memo[1] < PLACEMENT_MEMORY_S:
        return memo[2]
    return None


def lens_top(lm, resid: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` ids ``[n, k]`` and probabilities ``[n, k]`` of the logit lens of each row of ``resid [n, d]``.

    On the CPU, with a plain linear unembedding whose weight is in memory, the vocabulary is
    walked in slices of :data:`VOCAB_SLICE` (:func:`_lens_top_sliced`): all rows go through
    each slice of the unembedding once, so it is read once whatever the batch, the temporary
    is ``[n, VOCAB_SLICE]`` and the top-k and the normaliser run on it while it is in cache.
    Elsewhere (an accelerator: fewer, larger kernels; an unembedding that is a chain of modules
    or offloaded by a device map) one product per :func:`lens_rows` rows (:func:`_lens_top`)."""
    width = VOCAB_SLICE
    if _sliceable(lm.parts.unembed, resid, width):
        return _lens_top_sliced(lm, resid, k, width)
    step = lens_rows(lm)
    if resid.shape[0] <= step:
        return _lens_top(lm, resid, k)
    parts = [_lens_top(lm, resid[i:i + step], k) for i in range(0, resid.shape[0], step)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _sliceable(unembed, resid: torch.Tensor, width: int) -> bool:
    weight = getattr(unembed, "weight", None)
    return (type(unembed) is torch.nn.Linear and resid.device.type == "cpu" and weight is not None
            and weight.device.type == "cpu" and getattr(unembed, "_hf_hook", None) is None
            and weight.shape[0] > width)


def _lens_top_sliced(lm, resid: torch.Tensor, k: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`lens_top` over vocabulary slices: a running top-k (the ``k`` best of each slice, then
    of those) and an online softmax normaliser (each slice's sum of ``exp(x - its max)``, rescaled
    to the running maximum)."""
    parts = lm.parts
    with torch.inference_mode():
        x = resid if parts.final_norm is None else parts.final_norm(resid)
        weight, bias = parts.unembed.weight, parts.unembed.bias
        vocab = weight.shape[0]
        k = min(k, vocab)
        values, ids, peak, total = [], [], None, None
        for start in range(0, vocab, width):
            stop = min(vocab, start + width)
            logits = torch.nn.functional.linear(x, weight[start:stop], None if bias is None else bias[start:stop])
            if logits.dtype != torch.float32:
                logits = logits.float()
            if parts.logit_scale != 1.0:
                logits.mul_(parts.logit_scale)
            if parts.final_logit_softcap:
                logits = torch.tanh(logits / parts.final_logit_softcap) * parts.final_logit_softcap
            top = torch.topk(logits, min(k, stop - start))
            values.append(top.values)
            ids.append(top.indices + start)
            here = top.values[:, :1]  # this slice's maximum
            part = logits.sub_(here).exp_().sum(-1, keepdim=True)
            if peak is None:
                peak, total = here, part
            else:
                new = torch.maximum(peak, here)
                total = total * torch.exp(peak - new) + part * torch.exp(here - new)
                peak = new
        best = torch.topk(torch.cat(values, 1), k)
        return torch.gather(torch.cat(ids, 1), 1, best.indices), torch.exp(best.values - peak - torch.log(total))


def _lens_top(lm, resid: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`lens_top` in one product through ``lm.parts.lens``, with :func:`top_k` and the normaliser
    in place on its output."""
    with torch.inference_mode():  # inference mode is per thread
        logits = lm.parts.lens(resid)
        if logits.dtype != torch.float32:
            logits = logits.float()
        top = top_k(logits, min(k, logits.shape[-1]))
        # the softmax normaliser, in place on the product's own output (no [rows, vocab] temporaries);
        # the row maximum is the top-1 value already selected
        peak = top.values[:, :1]
        total = logits.sub_(peak).exp_().sum(-1, keepdim=True)
        probs = torch.exp(top.values - peak - torch.log(total))
        return top.indices, probs


CHUNK = 1024  # vocabulary entries per block in :func:`top_k`'s first pass


def top_k(logits: torch.Tensor, k: int):
    """``torch.topk(logits, k)`` over the last dimension of ``[rows, vocab]``, in two passes that read
    the vocabulary once: the maximum of each block of ``CHUNK`` entries, then a selection among the
    ``k`` blocks with the largest maxima (and the tail that fills no block).  Exact: an entry outside
    those blocks is beaten by the ``k`` block maxima, so it is not among the top ``k``."""
    rows, vocab = logits.shape
    blocks = vocab // CHUNK
    if blocks <= 2 * k:
        return torch.topk(logits, k)
    body = logits[:, :blocks * CHUNK].unflatten(-1, (blocks, CHUNK))  # a view
    best = torch.topk(body.amax(-1), k).indices  # [rows, k] blocks
    cand = torch.gather(body, 1, best[:, :, None].expand(rows, k, CHUNK)).flatten(1)
    where = (best[:, :, None] * CHUNK + torch.arange(CHUNK, device=logits.device)).flatten(1)
    if vocab > blocks * CHUNK:
        tail = torch.arange(blocks * CHUNK, vocab, device=logits.device).expand(rows, -1)
        cand = torch.cat([cand, logits[:, blocks * CHUNK:]], 1)
        where = torch.cat([where, tail], 1)
    top = torch.topk(cand, k)
    return torch.return_types.topk((top.values, torch.gather(where, 1, top.indices)))


class _Batch:
    """Records waiting for one lens product, and the product's rows (``rows[i]`` rows per record)."""

    def __init__(self, records: list, rows: list[int], reuse: list[bool]):
        self.records, self.rows, self.reuse = records, rows, reuse
        self.result: Future | tuple | None = None


class LensQueue:
    """Attaches the logit lens to step records and hands them back in order.

    ``push(record, resid, logits)`` queues a record with its residuals ``[L, d]`` and
    returns the records whose lens is now attached, oldest first; ``flush()`` returns
    the rest at the end.  With ``batch = 1`` inline, every record comes back
    from the ``push`` that queued it; with ``batch = n``, records come back ``n`` at a
    time.  In the background, a batch is computed while the step loop runs the next
    forwards and handed back when the next batch is queued (so ``batch = 1`` hands record
    ``t`` back after the forward of token ``t + 1``, and memory holds two batches at most).

    ``background=None`` measures the placement of a per-step lens (``batch = 1``) in the
    first steps and keeps the faster; the records and their numbers are the same either way.
    """

    def __init__(self, lm, k: int, batch: int = 1, background: bool | None = False, texts=None, clock=None):
        if batch < 1:
            raise ValueError(f"lens batch must be >= 1, got {batch}")
        self.lm, self.k, self.batch, self.texts = lm, k, batch, texts
        self.measuring = background is None and batch == 1
        # a batched lens whose placement is open takes the worker: with the cores split
        # (:func:`split_threads`), a batch on its own core overlaps the forwards it waits for
        self.background = bool(background) or (background is None and batch > 1)
        self.pool: ThreadPoolExecutor | None = None  # started on the first background batch
        self.pending: list = []  # (record, resid rows, reused last layer?) not yet in a batch
        self.batches: deque[_Batch] = deque()
        self.clock = clock or _clock
        self.pushes = 0
        self.last_push: float | None = None
        self.step_ms: dict[bool, list[float]] = {False: [], True: []}  # time per token, by placement
        self.decision: str | None = None  # how the placement was measured, once it was
        # the cores split between the loop and the worker (:func:`split_threads`), on the CPU
        self.threads = torch.get_num_threads()  # the caller's
        self.split = split_threads(self.threads) if lm.device.type == "cpu" else (None, None)

    @property
    def loop_threads(self) -> int | None:
        """The torch threads the step loop runs with now (``None``: its own), the worker's share of the
        cores left out (:func:`split_threads`)."""
        return self.split[1] if self.background else None

    # -- queueing --------------------------------------------------------------------------------------
    def push(self, record, resid: torch.Tensor, logits: torch.Tensor) -> list:
        """Queue ``record`` (its residuals ``resid [L, d]``, its logits ``[V]``); return the records now ready."""
        if self.measuring:
            self._measure()
        reuse = self.k <= len(record.top_ids) and last_layer_is_logits(self.lm, resid, logits)
        self.pending.append((record, resid[:-1] if reuse else resid, reuse))
        if len(self.pending) < self.batch:
            return []
        if self.background:
            done = self._collect()  # the previous batch ran while this one was filled
            self._submit()
            return done
        self._submit()
        return self._collect()

    def flush(self) -> list:
        """Compute what is queued and return every record still waiting, in order."""
        if self.pending:
            self._submit()
        return self._collect()

    def close(self) -> None:
        """Stop the worker (cancelling what has not started) and wait for it to end."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def __enter__(self) -> "LensQueue":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- measuring the placement ------------------------------------------------------------------------
    def _measure(self) -> None:
        """Time each token from push to push and keep the faster placement.  The time from push ``t``
        to push ``t + 1`` holds the work done at push ``t`` (the lens in the loop, or waiting for the
        worker's previous lens) and one forward.  Pushes 1-4 are timed with the lens in the loop;
        pushes 5 and 6 start the worker (the first holds no wait, the second the new thread's first
        product, which starts its torch pool) and pushes 7-10 are timed on it; push 11 decides.
        Push 0 also checks the last layer (:func:`last_layer_is_logits`): not timed."""
        now = self.clock()
        if self.pushes > 1:
            placed = self.background  # where the lens of the previous push ran
            if not placed or self.pushes > TRIAL_STEPS + 3:
                self.step_ms[placed].append((now - self.last_push) * 1000)
        self.last_push = now
        self.pushes += 1
        loop, worker = self.step_ms[False], self.step_ms[True]
        if len(worker) >= TRIAL_STEPS:
            a, b = statistics.median(loop), statistics.median(worker)
            self.background = b < a
            self.measuring = False
            self.decision = (f"{'worker thread' if self.background else 'step loop'} (measured: {b:.1f} ms/token "
                             f"with the lens on a worker thread, {a:.1f} in the step loop)")
            self.lm.extra["lens_placement"] = self.decision
            self.lm.extra["lens_measured"] = (self.threads, time.monotonic(), self.background)
        elif len(loop) >= TRIAL_STEPS:
            self.background = True

    # -- computing --------------------------------------------------------------------------------------
    def _submit(self) -> None:
        records, rows, reuse = zip(*self.pending)
        self.pending = []
        batch = _Batch(list(records), [r.shape[0] for r in rows], list(reuse))
        stacked = rows[0] if len(rows) == 1 else torch.cat(rows)  # [sum of rows, d]: one product
        if self.background:
            if self.pool is None:
                threads = self.split[0]
                self.pool = ThreadPoolExecutor(1, thread_name_prefix="openmav-lens",
                                               initializer=None if threads is None else torch.set_num_threads,
                                               initargs=() if threads is None else (threads,))
            batch.result = self.pool.submit(lens_top, self.lm, stacked, self.k)
        else:
            batch.result = lens_top(self.lm, stacked, self.k)
        self.batches.append(batch)

    def _collect(self) -> list:
        out = []
        while self.batches:
            out.extend(self._finish(self.batches.popleft()))
        return out

    def _finish(self, batch: _Batch) -> list:
        ids, probs = batch.result.result() if isinstance(batch.result, Future) else batch.result
        ids, probs = ids.cpu().numpy(), probs.float().cpu().numpy()
        start = 0
        for record, n, reused in zip(batch.records, batch.rows, batch.reuse):
            rid, rprob = ids[start:start + n], probs[start:start + n]
            start += n
            if reused:  # the last layer: the record's own top-k of the model's distribution
                rid = np.concatenate([rid, record.top_ids[None, :self.k]])
                rprob = np.concatenate([rprob, record.top_probs[None, :self.k].astype(np.float32)])
            record.lens_ids = rid
            record.lens_probs = rprob
            if self.texts is not None:
                record.lens_tokens = tuple(tuple(self.texts.many(row)) for row in rid.tolist())
        return batch.records


def last_layer_is_logits(lm, resid: torch.Tensor, logits: torch.Tensor) -> bool:
    """Whether the lens of the last layer's residual is the model's own logits, so the record's
    distribution can stand for it.  Checked once per loaded model (one single-row product) and kept
    in ``lm.extra``: it is a property of where the hooks read, not of the input."""
    known = lm.extra.get("lens_last_is_logits")
    if known is None:
        with torch.inference_mode():
            lens = lm.parts.lens(resid[-1:])[0].float()
        model = logits.float()
        scale = float(model.abs().max()) if model.numel() else 1.0
        known = lens.shape == model.shape and bool(torch.allclose(lens, model, rtol=0, atol=1e-4 * max(scale, 1.0)))
        lm.extra["lens_last_is_logits"] = known
    return known

