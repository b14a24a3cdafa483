"""One batch of windows in, per-unit partial results out: the scan's reading of the model.

The model's parts come from its adapter (:class:`~openmav.backends.parts.ModelParts`, the same parts
every view reads); hooks reduce each layer's tensors while the forward runs, so nothing bigger than
one layer's activations is ever held:

- **neurons** of layer ``l``: the input of its MLP's down projection (``parts.down_proj[l]``), as the
  extraction API defines them, ``[positions, d_mlp]``;
- **heads** of layer ``l``: the norm of each head's own output, its slice ``z_h`` of the output
  projection's input projected by that slice of the projection (``|| z_h W_h ||``, no bias, before any
  residual multiplier), computed as ``sqrt(z_h G_h z_h^T)`` with ``G_h = W_h W_h^T`` read off the
  module itself; and from the attention probabilities ``A`` (query ``i``, key ``j``, queries ``i >= 1``
  of each window): entropy ``-sum_j A ln A`` (nats), the maximum weight, the weight on the window's first
  position ``A[i, 0]``, the previous-token weight ``A[i, i-1]``, and the induction weight ``sum A[i, j+1]``
  over earlier tokens ``j < i - 1`` equal to token ``i`` (the project's head-score definitions on
  repeated sequences, read on the corpus's own text; averaged over the queries that have such a ``j``);
- **residual** of layer ``l``: the norm of the residual stream after block ``l``.

Per group of units a batch gives :func:`~openmav.scan.merge.stats_of` moments, the maximum, the count
above zero and a fixed-bin histogram (:data:`EDGES`), and top-k candidates with the unit's activation
on the tokens around each (:data:`BEFORE` before, :data:`AFTER` after).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ..capture.hooks import attention_implementation, first_output
from .merge import TopK, leaf, stats_of
from .plan import (AFTER, BEFORE, CENTER, CONTEXT, EDGES, HEAD_FIELDS, HIGH, LOW, N_BINS, Plan,  # noqa: F401
                   neuron_module, neuron_width)


def head_grams(parts, layer: int) -> torch.Tensor:
    """``[H, d, d]`` Gram matrices ``W_h W_h^T`` of the output projection's head slices, read by applying the
    module to basis rows (so any layout, Linear or Conv1D, gives the same)."""
    module = parts.o_proj[layer]
    H, d = parts.n_heads, parts.head_dim
    param = next(module.parameters())
    with torch.no_grad():
        basis = torch.eye(H * d, dtype=param.dtype, device=param.device)
        rows = first_output(module(torch.cat([basis, torch.zeros_like(basis[:1])]).unsqueeze(0)))[0].double()
    w = (rows[:-1] - rows[-1]).view(H, d, -1)  # [H, d, D]
    return torch.einsum("hde,hfe->hdf", w, w).float()


OCTAVES = HIGH - LOW + 1  # octave bins on each side of the center, the open end included
SLOTS = N_BINS + 1  # per unit: the bins, with the center split by the sign bit
CODES = 512  # a float32's sign and biased exponent: its top 9 bits
# the codes' first exponent of each octave step, for np.add.reduceat: step 0 holds exponents 0 .. 127 + LOW - 1
# (|x| < 2^LOW, zero and subnormals included), step s the exponent 127 + LOW - 1 + s, the last step every larger one
# (infinities and NaN included)
_STEP_STARTS = np.concatenate([[0], np.arange(127 + LOW, 127 + LOW + OCTAVES)])


def octave_counts(values: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``([units, SLOTS], [units])`` of float32 ``values`` ``[positions, units]``: counts by the octave of ``|x|``
    and the sign bit, and the count above zero.

    Slot ``CENTER - step`` holds a negative ``x`` (-0.0 included), ``CENTER + 1 + step`` the others, where ``step``
    (0 .. :data:`OCTAVES`) counts the octaves of ``|x|`` from ``2^LOW`` up (0: below ``2^LOW``).  Read off the
    float's bits: an arithmetic shift by 23 leaves the sign and the biased exponent as one code in -256 .. 255;
    one bincount counts (code, unit) pairs, laid out code-major so that neighbouring values (neighbouring units)
    count into neighbouring cells; the codes then fold into octave steps.  The count above zero is the positive
    codes of exponent 1 .. 254; only units that hold a positive code of exponent 0 (+0.0 or a subnormal) or 255
    (+inf or NaN) are compared one by one."""
    units = values.shape[1]
    codes = (values.contiguous().view(torch.int32) >> 23).mul_(units).add_(_code_offsets(units, values.device))
    counts = host(torch.bincount(codes.view(-1), minlength=CODES * units).view(CODES, units))
    negative = np.add.reduceat(counts[:256], _STEP_STARTS, axis=0)  # [steps, units]
    positive = np.add.reduceat(counts[256:], _STEP_STARTS, axis=0)
    slots = np.concatenate([negative[::-1], positive]).T
    above = counts[257:511].sum(0)
    unsure = np.nonzero(counts[256] | counts[511])[0]
    if len(unsure):
        above[unsure] = host((values.index_select(1, torch.as_tensor(unsure, device=values.device)) > 0).sum(0))
    return slots, above


@functools.cache
def _code_offsets(units: int, device: torch.device) -> torch.Tensor:
    """Each unit's cell in the code-major layout, plus 256 rows: a code of -256 .. 255 (a set sign bit shifts in
    negative) times ``units`` plus this is its (code, unit) cell, the negative values' exponents first."""
    return torch.arange(256 * units, 257 * units, dtype=torch.int32, device=device)


def count_positive(values: torch.Tensor) -> np.ndarray:
    """``[units]``: how many of ``values`` ``[positions, units]`` are above zero."""
    return octave_counts(values)[1]


def center_merged(counts: np.ndarray) -> np.ndarray:
    """``[units, N_BINS]`` of :func:`octave_counts`: the center's two slots added (``|x| < 2^LOW``, either sign)."""
    hist = np.delete(counts, CENTER + 1, axis=1)
    hist[:, CENTER] += counts[:, CENTER + 1]
    return hist


def histogram(values: torch.Tensor) -> np.ndarray:
    """``[units, N_BINS]`` counts of float32 ``values`` ``[positions, units]`` in the octave bins of :data:`EDGES`."""
    return center_merged(octave_counts(values)[0])


class Reader:
    """Hooks on one model that turn each forward of a batch into partial results (see the module docstring)."""

    def __init__(self, lm, plan: Plan):
        self.lm, self.plan, self.parts = lm, plan, lm.parts
        self.groups = plan.groups(self.parts)
        self.grams = {layer: head_grams(self.parts, layer) for kind, layer, _ in self.groups if kind == "head"}
        self.topk = {f"{k}/{layer}": TopK(u, plan.top_k, {"context": ((CONTEXT,), np.float16)})
                     for k, layer, u in self.groups if k != "resid"}
        # per group, the k-th best value this reader has kept in any shard: a candidate strictly below it can never
        # be in the corpus's top k (k values above it exist), so it is not searched, in whichever shard it falls
        self.floor = {g: np.full(t.values.shape[0], -np.inf, dtype=np.float32) for g, t in self.topk.items()}
        self.last = max(plan.layers)
        self._batch = None
        self._node: dict = {}
        self._induction = None

    # --- the forward ---------------------------------------------------------------------------------------------

    def run(self, batch) -> dict:
        """Forward ``batch`` (a :class:`~openmav.scan.windows.Batch`) and return its node (one entry per group);
        top-k candidates go into :attr:`topk`."""
        self._batch, self._node, self._induction = batch, {}, None
        ids = torch.as_tensor(batch.ids, device=self.lm.device)
        # heads need the attention probabilities: eager attention computes them once (with every query's row
        # wanted, the rows function would compute them beside the fused kernel's output)
        impl = "eager" if "heads" in self.plan.units else None
        handles = self._attach()
        try:
            with torch.inference_mode(), attention_implementation(self.lm.model, impl):
                self._forward(ids)
        finally:
            for h in handles:
                h.remove()
        node, self._node, self._batch = self._node, {}, None
        return node

    def _forward(self, ids: torch.Tensor) -> None:
        try:  # the model's own forward (embedding scales and all), stopped after the last block read
            self.lm.model(input_ids=ids, use_cache=False)
        except _Stop:
            pass

    def _attach(self) -> list:
        p, handles = self.parts, []
        for kind, layer, _ in self.groups:
            if kind == "neuron":
                handles.append(neuron_module(p, layer).register_forward_pre_hook(self._on_neurons(layer)))
            elif kind == "head":
                handles.append(p.o_proj[layer].register_forward_pre_hook(self._on_heads(layer)))
                handles.append(p.attn[layer].register_forward_hook(self._on_pattern(layer)))
            else:
                handles.append(p.blocks[layer].register_forward_hook(self._on_resid(layer)))
        return handles

    # --- hooks -----------------------------------------------------------------------------------------------------

    def _flat(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.reshape(-1, tensor.shape[-1]).float()

    def _on_neurons(self, layer: int):
        def hook(module, args):
            self._reduce("neuron", layer, self._flat(args[0]))
        return hook

    def _on_heads(self, layer: int):
        H, d = self.parts.n_heads, self.parts.head_dim

        def hook(module, args):
            z = self._flat(args[0]).view(-1, H, d).transpose(0, 1)  # [H, n, d]
            sq = (torch.bmm(z, self.grams[layer]) * z).sum(-1).T  # [n, H]: z_h G_h z_h^T
            self._reduce("head", layer, sq.clamp_min(0).sqrt().contiguous())
        return hook

    def _on_pattern(self, layer: int):
        def hook(module, args, output):
            weights = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
            if weights is not None:
                self._node.setdefault(f"head/{layer}", {}).update(self._pattern_fields(weights.float()))
        return hook

    def _on_resid(self, layer: int):
        def hook(module, args, output):
            resid = self._flat(first_output(output))
            norms = torch.linalg.vector_norm(resid, dim=-1, keepdim=True)
            self._node[f"resid/{layer}"] = leaf(**stats_of(norms), hist=histogram(norms))
            if layer == self.last:  # the block's neurons and heads were read inside it: nothing later is needed
                raise _Stop
        return hook

    # --- reductions ----------------------------------------------------------------------------------------------------

    def _reduce(self, kind: str, layer: int, values: torch.Tensor) -> None:
        group = f"{kind}/{layer}"
        node = self._node.setdefault(group, {})
        node.update(stats_of(values, count_pos=False))
        slots, node["count_pos"] = octave_counts(values)
        node["hist"] = center_merged(slots)
        self._offer(group, values, node["max"])

    def _induction_keys(self, q: int) -> tuple[tuple[torch.Tensor, ...], int]:
        """``((window, query, key) index tensors, queries)``: key ``j + 1`` for each earlier token ``j < i - 1``
        equal to token ``i``, and how many queries have any (once per batch: the same for every layer)."""
        if self._induction is None:
            ids = torch.as_tensor(self._batch.ids, device=self.lm.device)[:, :q]
            same = ids[:, :, None] == ids[:, None, :]  # [b, i, j]
            same &= torch.ones(q, q, dtype=torch.bool, device=ids.device).tril(-2)  # j < i - 1
            w, i, j = same.nonzero(as_tuple=True)
            self._induction = ((w, i, j + 1), int(same.any(-1).sum()))
        return self._induction

    def _pattern_fields(self, a: torch.Tensor) -> dict:
        """Per head sums over queries ``i >= 1`` of ``a`` ``[b, h, q, k]`` (see the module docstring)."""
        b, h, q, k = a.shape
        rows = a[:, :, 1:, :]  # queries 1 ..
        idx = torch.arange(1, q, device=a.device)
        (w, i, j), with_induction = self._induction_keys(q)
        entropy = torch.zeros(h, dtype=torch.float64, device=a.device)
        top = torch.zeros(h, dtype=torch.float64, device=a.device)
        step = max(16, q // 4)
        for start in range(1, q, step):  # blocks of queries: a query's later keys are masked (weight 0, entropy 0)
            block = a[:, :, start:start + step, :start + step]
            entropy += torch.special.entr(block).sum(-1).double().sum((0, 2))
            top += block.amax(-1).double().sum((0, 2))
        return {
            "sum_entropy": host(entropy),
            "sum_max_weight": host(top),
            "sum_first_weight": host(rows[..., 0].double().sum((0, 2))),
            "sum_prev_token": host(a[:, :, idx, idx - 1].double().sum((0, 2))),
            "count_queries": np.int64(b * (q - 1)),
            "sum_induction": host(a[w, :, i, j].double().sum(0)),  # [matches, h]: the weights on those keys
            "count_induction": np.int64(with_induction),
        }

    def _offer(self, group: str, values: torch.Tensor, batch_max: np.ndarray) -> None:
        """Top-k candidates of this batch for every unit of ``group`` (exact, ties by earlier token), merged into
        the running lists; only units with a value reaching their running k-th best are searched, and contexts
        are gathered only for candidates that can enter."""
        top = self.topk[group]
        k = min(top.k, values.shape[0])
        threshold = np.maximum(top.threshold(), self.floor[group])
        reach = batch_max >= threshold  # the batch's maximum reaches the unit's k-th
        if not reach.any():
            return
        # once every list is full, the values at or above their unit's k-th are found in place (no copy of columns)
        full = np.isfinite(threshold[reach]).all()
        found = _above(values, np.where(reach, threshold, np.inf), k) if full else None
        if found is None:
            reach = np.nonzero(reach)[0]
            cols = values if len(reach) == values.shape[1] else values.index_select(
                1, torch.as_tensor(reach, device=values.device))
            vals, pos = _best(cols, k)
            local = np.repeat(np.arange(len(reach)), k)
            vals, pos = vals.ravel(), pos.ravel()
            enter = vals >= threshold[reach][local]
            units, vals, pos = reach[local[enter]], vals[enter], pos[enter]
        else:
            units, pos, vals = found
        T = self._batch.ids.shape[1]
        keys = (self._batch.first_window + pos // T) * self.plan.context + pos % T
        p = torch.as_tensor(pos, device=values.device)
        t = p % T
        tt = t[:, None] + torch.arange(-BEFORE, AFTER + 1, device=values.device)
        rows = (p - t)[:, None] + tt.clamp(0, T - 1)
        gathered = values[rows, torch.as_tensor(units, device=values.device)[:, None]]  # [candidates, CONTEXT]
        ctx = host(torch.where((tt >= 0) & (tt < T), gathered, torch.nan)).astype(np.float16)
        top.offer_flat(units, vals.astype(np.float32), keys, {"context": ctx})
        np.maximum(self.floor[group], top.threshold(), out=self.floor[group])


def _best(cols: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(values, positions)`` ``[units, k]``: each column's ``k`` largest, ties by earlier position."""
    vals, pos = cols.topk(k, dim=0)  # [k, u]
    kth = vals[-1]
    ties = ((cols == kth).sum(0) > (vals == kth).sum(0)).nonzero().flatten().tolist()
    vals, pos = host(vals.T), host(pos.T)
    for u in ties:  # more positions share the k-th value than topk kept: choose the earliest exactly
        column = host(cols[:, u])
        cand = np.nonzero(column >= column[pos[u, -1]])[0]
        order = np.lexsort((cand, -column[cand]))[:k]
        vals[u], pos[u] = column[cand[order]], cand[order]
    return vals, pos


def _above(cols: torch.Tensor, threshold: np.ndarray, k: int):
    """``(columns, positions, values)``, flat: each column's ``k`` largest among its values at or above its finite
    ``threshold`` (ties by earlier position), found without a top-k over every position: only the values that
    can enter are sorted, grouped by column in ascending order, each group in the lists' order.  ``None`` when
    more than ``4 k`` per column on average reach (values tied at the threshold, e.g. a neuron that is always
    zero): a top-k is then cheaper."""
    reach = cols >= torch.as_tensor(threshold, dtype=cols.dtype, device=cols.device)
    if cols.device.type == "cpu":  # numpy finds the few set places of a mask ~10x faster than torch on a CPU
        p, u = np.divmod(np.flatnonzero(reach.numpy()), cols.shape[1])  # positions ascending, then columns
    else:
        p, u = (host(x) for x in reach.nonzero(as_tuple=True))
    if len(p) > 4 * k * cols.shape[1]:
        return None
    v = host(cols[torch.as_tensor(p, device=cols.device), torch.as_tensor(u, device=cols.device)]) + np.float32(0)
    bits = v.view(np.int32)  # (+ 0 above: -0.0 becomes +0.0, so equal values tie)
    ascending = np.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).astype(np.int64)  # the floats' order, as integers
    order = np.argsort((u << 32) - ascending, kind="stable")  # column, then value descending (ties: position)
    u, p, v = u[order], p[order], v[order]
    keep = np.arange(len(u)) - np.searchsorted(u, u) < k  # its place within its column
    return u[keep], p[keep], v[keep]


def host(tensor: torch.Tensor) -> np.ndarray:
    """A tensor's values as a numpy array on the host (a CPU tensor's own memory, no copy)."""
    return tensor.detach().cpu().numpy()


class _Stop(Exception):
    """Raised in the last needed layer's hook: nothing after it (later blocks, the unembedding) is read."""
