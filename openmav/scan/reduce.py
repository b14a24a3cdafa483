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


def _code_bins() -> np.ndarray:
    """``[512, N_BINS]`` one-hot: the bin of each float32 sign-and-exponent code (``bits >> 23``, -256 .. 255,
    stored from index 0)."""
    table = np.zeros((512, N_BINS), dtype=np.int64)
    for code in range(-256, 256):
        negative, exponent = code < 0, (code + 256 if code < 0 else code) - 127  # |x| in [2^e, 2^(e+1))
        if exponent < LOW:
            b = CENTER
        else:
            step = min(exponent, HIGH) - LOW + 1  # 1 .. HIGH - LOW + 1 (the open end)
            b = CENTER - step if negative else CENTER + step
        table[code + 256, b] = 1
    return table


CODE_BINS = _code_bins()


def code_counts(values: torch.Tensor) -> np.ndarray:
    """``[units, 512]``: per unit, how many float32 ``values`` ``[positions, units]`` have each sign-and-exponent
    code (``bits >> 23``, stored from -256); one shift, one add and one bincount over the values."""
    units = values.shape[1]
    codes = values.contiguous().view(torch.int32) >> 23  # -256 .. 255
    codes += torch.arange(256, units * 512, 512, dtype=torch.int32)
    return torch.bincount(codes.view(-1), minlength=units * 512).view(units, 512).numpy()


def histogram(values: torch.Tensor) -> np.ndarray:
    """``[units, N_BINS]`` counts of float32 ``values`` ``[positions, units]`` in the octave bins of :data:`EDGES`."""
    return code_counts(values) @ CODE_BINS


# codes 1 .. 255 are the positive floats from 2^-126 up (code 0 holds +0.0 and the subnormals below 2^-126)
POSITIVE_CODES = slice(256 + 1, 512)


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
        counts = code_counts(values)
        node["hist"] = counts @ CODE_BINS
        node["count_pos"] = counts[:, POSITIVE_CODES].sum(1)  # values above zero (from 2^-126 up)
        self._offer(group, values, node["max"])

    def _induction_keys(self, q: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(keys [b, i, j] as floats, has [b, i])``: key ``j + 1`` for each earlier token ``j < i - 1`` equal to
        token ``i``, and whether query ``i`` has any (once per batch: the same for every layer)."""
        if self._induction is None:
            ids = torch.as_tensor(self._batch.ids)
            b = ids.shape[0]
            same = ids[:, :, None] == ids[:, None, :]  # [b, i, j]
            keys = torch.zeros(b, q, k, dtype=torch.bool)
            keys[:, :, 1:] = same[:, :, :-1]  # key j+1 for a match at j
            keys &= torch.ones(q, k, dtype=torch.bool).tril(-1)  # key < i
            self._induction = (keys.float(), keys.any(-1))
        return self._induction

    def _pattern_fields(self, a: torch.Tensor) -> dict:
        """Per head sums over queries ``i >= 1`` of ``a`` ``[b, h, q, k]`` (see the module docstring)."""
        b, h, q, k = a.shape
        rows = a[:, :, 1:, :]  # queries 1 ..
        idx = torch.arange(1, q)
        keys, has = self._induction_keys(q, k)
        induction = torch.einsum("bhik,bik->bhi", a, keys)
        return {
            "sum_entropy": torch.special.entr(rows).sum(-1).double().sum((0, 2)).numpy(),
            "sum_max_weight": rows.amax(-1).double().sum((0, 2)).numpy(),
            "sum_first_weight": rows[..., 0].double().sum((0, 2)).numpy(),
            "sum_prev_token": a[:, :, idx, idx - 1].double().sum((0, 2)).numpy(),
            "count_queries": np.int64(b * (q - 1)),
            "sum_induction": (induction * has[:, None].float()).double().sum((0, 2)).numpy(),
            "count_induction": np.int64(has.sum()),
        }

    def _offer(self, group: str, values: torch.Tensor, batch_max: np.ndarray) -> None:
        """Top-k candidates of this batch for every unit of ``group`` (exact, ties by earlier token), merged into
        the running lists; only units with a value reaching their running k-th best are searched, and contexts
        are gathered only for candidates that can enter."""
        top = self.topk[group]
        n = values.shape[0]
        k = min(top.k, n)
        threshold = np.maximum(top.threshold(), self.floor[group])
        if np.isfinite(threshold).any():
            reach = torch.as_tensor(np.nonzero(batch_max >= threshold)[0])  # the batch's maximum reaches the k-th
            if len(reach) == 0:
                return
            cols = values.index_select(1, reach)
        else:
            reach, cols = None, values
        vals, pos = cols.topk(k, dim=0)  # [k, u]
        kth = vals[-1]
        ties = ((cols == kth).sum(0) > (vals == kth).sum(0)).nonzero().flatten().tolist()
        vals, pos = vals.T.contiguous().numpy(), pos.T.contiguous().numpy()
        for u in ties:  # more positions share the k-th value than topk kept: choose the earliest exactly
            column = cols[:, u].numpy()
            cand = np.nonzero(column >= column[pos[u, -1]])[0]
            order = np.lexsort((cand, -column[cand]))[:k]
            vals[u], pos[u] = column[cand[order]], cand[order]
        units = np.arange(values.shape[1]) if reach is None else reach.numpy()
        T = self._batch.ids.shape[1]
        keys = (self._batch.first_window + pos // T) * self.plan.context + pos % T
        enter = vals >= threshold[units][:, None]
        ctx = np.full((len(units), k, CONTEXT), np.nan, dtype=np.float16)
        uu, jj = np.nonzero(enter)
        if len(uu):
            p = torch.as_tensor(pos[uu, jj])
            t = p % T
            tt = t[:, None] + torch.arange(-BEFORE, AFTER + 1)
            valid = (tt >= 0) & (tt < T)
            rows = (p - t)[:, None] + tt.clamp(0, T - 1)
            gathered = values[rows, torch.as_tensor(units[uu])[:, None]]
            ctx[uu, jj] = torch.where(valid, gathered, torch.nan).numpy().astype(np.float16)
        top.offer(np.where(enter, vals, -np.inf).astype(np.float32), np.where(enter, keys, np.iinfo(np.int64).max),
                  {"context": ctx}, rows=None if reach is None else units)
        np.maximum(self.floor[group], top.threshold(), out=self.floor[group])


class _Stop(Exception):
    """Raised in the last needed layer's hook: nothing after it (later blocks, the unembedding) is read."""
