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
    return torch.einsum("hde,hfe->hdf", w, w).float().cpu()


OCTAVES = HIGH - LOW + 1  # octave bins on each side of the center, the open end included
SLOTS = N_BINS + 1  # per unit: the bins, with the center split by the sign bit


def octave_counts(values: torch.Tensor) -> np.ndarray:
    """``[units, SLOTS]`` counts of float32 ``values`` ``[positions, units]`` by the octave of ``|x|`` and the
    sign bit: slot ``CENTER - step`` for a negative ``x`` (-0.0 included), ``CENTER + 1 + step`` otherwise,
    where ``step`` (0 .. :data:`OCTAVES`) counts the octaves of ``|x|`` from ``2^LOW`` up (0: below ``2^LOW``).
    Read off the float's bits: the biased exponent, clamped, then ``step XOR (bits >> 31)``, which is ``step``
    for a clear sign bit and ``-step - 1`` for a set one; then one bincount."""
    units = values.shape[1]
    bits = values.contiguous().view(torch.int32)
    slot = (bits >> 23).bitwise_and_(255).sub_(127 + LOW - 1).clamp_(0, OCTAVES)  # step
    slot.bitwise_xor_(bits >> 31).add_(_offsets(units))
    return torch.bincount(slot.view(-1), minlength=units * SLOTS).view(units, SLOTS).numpy()


@functools.lru_cache(maxsize=None)
def _offsets(units: int) -> torch.Tensor:
    """Each unit's first slot, plus the center's place: the slot of a value is its step XOR sign plus this."""
    return torch.arange(CENTER + 1, units * SLOTS, SLOTS, dtype=torch.int32)


def count_positive(values: torch.Tensor) -> np.ndarray:
    """``[units]``: how many of ``values`` ``[positions, units]`` are above zero (exact up to 2^24 positions)."""
    return torch.sign(values).clamp_min_(0).nan_to_num_(0.0).sum(0).numpy().astype(np.int64)


def center_merged(counts: np.ndarray) -> np.ndarray:
    """``[units, N_BINS]`` of :func:`octave_counts`: the center's two slots added (``|x| < 2^LOW``, either sign)."""
    hist = np.delete(counts, CENTER + 1, axis=1)
    hist[:, CENTER] += counts[:, CENTER + 1]
    return hist


def histogram(values: torch.Tensor) -> np.ndarray:
    """``[units, N_BINS]`` counts of float32 ``values`` ``[positions, units]`` in the octave bins of :data:`EDGES`."""
    return center_merged(octave_counts(values))


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
        node["hist"], node["count_pos"] = center_merged(octave_counts(values)), count_positive(values)
        self._offer(group, values, node["max"])

    def _induction_keys(self, q: int) -> tuple[tuple[torch.Tensor, ...], int]:
        """``((window, query, key) index tensors, queries)``: key ``j + 1`` for each earlier token ``j < i - 1``
        equal to token ``i``, and how many queries have any (once per batch: the same for every layer)."""
        if self._induction is None:
            ids = torch.as_tensor(self._batch.ids)[:, :q]
            same = ids[:, :, None] == ids[:, None, :]  # [b, i, j]
            same &= torch.ones(q, q, dtype=torch.bool).tril(-2)  # j < i - 1
            w, i, j = same.nonzero(as_tuple=True)
            self._induction = ((w, i, j + 1), int(same.any(-1).sum()))
        return self._induction

    def _pattern_fields(self, a: torch.Tensor) -> dict:
        """Per head sums over queries ``i >= 1`` of ``a`` ``[b, h, q, k]`` (see the module docstring)."""
        b, h, q, k = a.shape
        rows = a[:, :, 1:, :]  # queries 1 ..
        idx = torch.arange(1, q)
        (w, i, j), with_induction = self._induction_keys(q)
        entropy = torch.zeros(h, dtype=torch.float64)
        top = torch.zeros(h, dtype=torch.float64)
        step = max(16, q // 4)
        for start in range(1, q, step):  # blocks of queries: a query's later keys are masked (weight 0, entropy 0)
            block = a[:, :, start:start + step, :start + step]
            entropy += torch.special.entr(block).sum(-1).double().sum((0, 2))
            top += block.amax(-1).double().sum((0, 2))
        return {
            "sum_entropy": entropy.numpy(),
            "sum_max_weight": top.numpy(),
            "sum_first_weight": rows[..., 0].double().sum((0, 2)).numpy(),
            "sum_prev_token": a[:, :, idx, idx - 1].double().sum((0, 2)).numpy(),
            "count_queries": np.int64(b * (q - 1)),
            "sum_induction": a[w, :, i, j].double().sum(0).numpy(),  # [matches, h]: the weights on those keys
            "count_induction": np.int64(with_induction),
        }

    def _offer(self, group: str, values: torch.Tensor, batch_max: np.ndarray) -> None:
        """Top-k candidates of this batch for every unit of ``group`` (exact, ties by earlier token), merged into
        the running lists; only units with a value reaching their running k-th best are searched, and contexts
        are gathered only for candidates that can enter."""
        top = self.topk[group]
        k = min(top.k, values.shape[0])
        threshold = np.maximum(top.threshold(), self.floor[group])
        finite = np.isfinite(threshold)
        reach = np.arange(values.shape[1])
        if finite.any():
            reach = np.nonzero(batch_max >= threshold)[0]  # the batch's maximum reaches the k-th
            if len(reach) == 0:
                return
        cols = values if len(reach) == values.shape[1] else values.index_select(1, torch.as_tensor(reach))
        found = _above(cols, threshold[reach], k) if finite[reach].all() else None  # once lists are full
        if found is None:
            vals, pos = _best(cols, k)
            local = np.repeat(np.arange(len(reach)), k)
            vals, pos = vals.ravel(), pos.ravel()
            enter = vals >= threshold[reach][local]
            local, vals, pos = local[enter], vals[enter], pos[enter]
        else:
            local, pos, vals = found
        units = reach[local]
        T = self._batch.ids.shape[1]
        keys = (self._batch.first_window + pos // T) * self.plan.context + pos % T
        p = torch.as_tensor(pos)
        t = p % T
        tt = t[:, None] + torch.arange(-BEFORE, AFTER + 1)
        rows = (p - t)[:, None] + tt.clamp(0, T - 1)
        gathered = values[rows, torch.as_tensor(units)[:, None]]  # [candidates, CONTEXT]
        ctx = torch.where((tt >= 0) & (tt < T), gathered, torch.nan).numpy().astype(np.float16)
        top.offer_flat(units, vals.astype(np.float32), keys, {"context": ctx})
        np.maximum(self.floor[group], top.threshold(), out=self.floor[group])


def _best(cols: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(values, positions)`` ``[units, k]``: each column's ``k`` largest, ties by earlier position."""
    vals, pos = cols.topk(k, dim=0)  # [k, u]
    kth = vals[-1]
    ties = ((cols == kth).sum(0) > (vals == kth).sum(0)).nonzero().flatten().tolist()
    vals, pos = vals.T.contiguous().numpy(), pos.T.contiguous().numpy()
    for u in ties:  # more positions share the k-th value than topk kept: choose the earliest exactly
        column = cols[:, u].numpy()
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
    p, u = (cols >= torch.as_tensor(threshold, dtype=cols.dtype)).nonzero(as_tuple=True)  # positions ascending
    if len(p) > 4 * k * cols.shape[1]:
        return None
    v = cols[p, u] + 0.0  # -0.0 becomes +0.0, so equal values tie
    bits = v.view(torch.int32)
    ascending = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)  # the floats' order, as integers
    order = torch.argsort((u << 32) + (~ascending).long() + 2**31, stable=True)  # column, value descending
    u, p, v = u[order].numpy(), p[order].numpy(), v[order].numpy()
    keep = np.arange(len(u)) - np.searchsorted(u, u) < k  # its place within its column
    return u[keep], p[keep], v[keep]


class _Stop(Exception):
    """Raised in the last needed layer's hook: nothing after it (later blocks, the unembedding) is read."""
