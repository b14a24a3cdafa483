"""Partial results that merge exactly, in any grouping and any order.

A scan's numbers come from batches (:mod:`openmav.scan.windows`); a shard, a Ray worker or a resumed
run holds the results of some batches, and merging them must give the same bits however the corpus
was split.  Two structures make that so:

- :class:`TopK`: per unit the ``k`` largest values with their global token index, ordered by value
  (descending), ties by index (ascending: earlier document and position first).  That order is total,
  so a merge keeps exactly the ``k`` first of the union, whatever was merged before.
- :class:`BlockTree`: floating-point sums are not associative, so per-batch statistics (count, mean,
  M2 by Chan et al.'s pairwise update, and plain sums) are combined along a fixed binary tree over batch
  indices: a node covers the aligned block ``[i * 2**level, (i + 1) * 2**level)`` and is formed only
  from its two children, left then right.  A shard adds its batches' leaves; merging shards adds their
  nodes; what remains at the end is the same set of nodes (the maximal aligned blocks of
  ``[0, batches)``), folded left to right.  Maxima, counts and histograms are exact in any order and
  ride along in the same nodes.
"""

from __future__ import annotations

import numpy as np

# --- statistics per group of units --------------------------------------------------------------------------------


def leaf(values: np.ndarray | None = None, **fields) -> dict:
    """A node from one batch: ``n``, ``mean``, ``m2`` and ``max`` of ``values`` ``[positions, units]`` (float64
    moments), plus any extra ``fields``: arrays whose names say how they merge (``sum_*`` add in the tree's
    order, ``count_*``/``hist*`` add exactly, ``max_*`` take the maximum)."""
    node = dict(fields)
    if values is not None:
        node.update(stats_of(values))
    return node


def stats_of(values, count_pos: bool = True) -> dict:
    """``n``, ``mean``, ``m2``, ``max`` and (unless told not to) ``count_pos`` of a ``[positions, units]`` torch
    tensor (moments in float64)."""
    import torch

    n = int(values.shape[0])
    mean = values.sum(0) / n  # two passes: torch.var_mean along the positions is several times slower on a CPU
    deviation = values - mean
    m2 = deviation.mul_(deviation).sum(0)  # (torch.linalg.vector_norm along the positions is slow on a CPU too)
    out = {"n": np.int64(n), "mean": mean.double().cpu().numpy(), "m2": m2.double().cpu().numpy(),
           "max": values.amax(0).float().cpu().numpy()}
    if count_pos:
        out["count_pos"] = (values > 0).sum(0).cpu().numpy().astype(np.int64)
    return out


def combine(left: dict, right: dict) -> dict:
    """The node of two adjacent blocks, ``left`` before ``right`` (Chan's update for mean and M2)."""
    out = {}
    for key in left.keys() | right.keys():
        if key not in left or key not in right:
            out[key] = left.get(key, right.get(key))
    if "n" in left and "n" in right:
        na, nb = float(left["n"]), float(right["n"])
        n = na + nb
        delta = right["mean"] - left["mean"]
        out["n"] = np.int64(left["n"] + right["n"])
        out["mean"] = left["mean"] + delta * (nb / n) if n else left["mean"]
        out["m2"] = left["m2"] + right["m2"] + delta * delta * (na * nb / n) if n else left["m2"]
    for key in left.keys() & right.keys():
        if key in ("n", "mean", "m2"):
            continue
        if key == "max" or key.startswith("max_"):
            out[key] = np.maximum(left[key], right[key])
        else:  # sums (in the tree's fixed order), exact counts and histograms
            out[key] = left[key] + right[key]
    return out


def combine_groups(left: dict, right: dict) -> dict:
    """:func:`combine` per group (a node holds one entry per group of units, e.g. ``neuron/3``)."""
    out = dict(left)
    for group, node in right.items():
        out[group] = combine(left[group], node) if group in left else node
    return out


class BlockTree:
    """Per-batch nodes combined along the fixed binary tree over batch indices (see the module docstring)."""

    def __init__(self):
        self.nodes: dict[tuple[int, int], dict] = {}

    def add(self, level: int, index: int, node: dict) -> None:
        """Add the node of block ``(level, index)``; siblings present are combined upwards at once."""
        key = (level, index)
        if key in self.nodes:
            raise ValueError(f"block {key} was added twice")
        while True:
            sibling = (key[0], key[1] ^ 1)
            if sibling not in self.nodes:
                self.nodes[key] = node
                return
            other = self.nodes.pop(sibling)
            node = combine_groups(other, node) if key[1] & 1 else combine_groups(node, other)
            key = (key[0] + 1, key[1] >> 1)

    def add_batch(self, batch_index: int, node: dict) -> None:
        self.add(0, batch_index, node)

    def merge(self, other: "BlockTree") -> None:
        for (level, index), node in sorted(other.nodes.items()):
            self.add(level, index, node)

    def total(self) -> dict:
        """The nodes left, folded left to right (by the first batch each covers)."""
        out: dict = {}
        for (level, index), node in sorted(self.nodes.items(), key=lambda kv: kv[0][1] << kv[0][0]):
            out = combine_groups(out, node) if out else node
        return out

    def covered(self) -> int:
        return sum(1 << level for level, _ in self.nodes)


# --- exact top-k -----------------------------------------------------------------------------------------------


class TopK:
    """Per unit the ``k`` best ``(value, key)``: ``values`` ``[units, k]`` float32 (-inf where empty), ``keys``
    ``[units, k]`` int64 (global token index), and ``extra`` arrays ``[units, k, ...]`` carried along (the
    context around each hit)."""

    def __init__(self, units: int, k: int, extra_shapes: dict | None = None):
        self.k = k
        self.values = np.full((units, k), -np.inf, dtype=np.float32)
        self.keys = np.full((units, k), np.iinfo(np.int64).max, dtype=np.int64)
        self.extra = {name: np.full((units, k, *shape), np.nan if np.issubdtype(dtype, np.floating) else 0,
                                    dtype=dtype) for name, (shape, dtype) in (extra_shapes or {}).items()}

    @classmethod
    def from_arrays(cls, values, keys, extra) -> "TopK":
        out = cls.__new__(cls)
        out.k = values.shape[1]
        out.values, out.keys, out.extra = values, keys, dict(extra)
        return out

    def threshold(self) -> np.ndarray:
        """Per unit, the value a candidate must reach to enter (the k-th best so far; -inf while not full)."""
        return self.values[:, -1]

    def offer(self, values: np.ndarray, keys: np.ndarray, extra: dict, rows: np.ndarray | None = None) -> None:
        """Merge candidates ``[units, c]`` (-inf: none) into the lists; with ``rows``, the candidates are for those
        units only (``[len(rows), c]``) and the other units' lists stay as they are."""
        mine_v = self.values if rows is None else self.values[rows]
        mine_k = self.keys if rows is None else self.keys[rows]
        allv = np.concatenate([mine_v, values], axis=1)
        allk = np.concatenate([mine_k, keys], axis=1)
        order = np.argsort(allk, axis=1, kind="stable")
        order = np.take_along_axis(order, np.argsort(-np.take_along_axis(allv, order, 1), axis=1, kind="stable"), 1)
        keep = order[:, : self.k]
        new_v, new_k = np.take_along_axis(allv, keep, 1), np.take_along_axis(allk, keep, 1)
        if rows is None:
            self.values, self.keys = new_v, new_k
        else:
            self.values[rows], self.keys[rows] = new_v, new_k
        for name, arr in self.extra.items():
            both = np.concatenate([arr if rows is None else arr[rows], extra[name]], axis=1)
            idx = keep.reshape(keep.shape + (1,) * (both.ndim - 2))
            picked = np.take_along_axis(both, np.broadcast_to(idx, keep.shape + both.shape[2:]), 1)
            if rows is None:
                self.extra[name] = picked
            else:
                arr[rows] = picked

    def offer_flat(self, units: np.ndarray, values: np.ndarray, keys: np.ndarray, extra: dict) -> None:
        """Merge candidates given one per entry (``units``, ``values``, ``keys`` ``[c]``, ``extra`` arrays
        ``[c, ...]``), grouped by unit in ascending order and, within a unit, in the lists' own order (value
        descending, key ascending); the same result as :meth:`offer`, without a sort: each candidate's place
        is the number of entries of its list that come before it, plus the candidates of its unit before it,
        and each entry moves down by the number of candidates placed at or above it."""
        c = len(units)
        if c == 0:
            return
        k = self.k
        first = np.r_[True, units[1:] != units[:-1]]
        rows = units[first]  # the touched lists, ascending
        row = np.cumsum(first) - 1  # [c] each candidate's list
        within = np.arange(c) - np.flatnonzero(first)[row]  # its place among its unit's candidates
        have_v, have_k = self.values[rows], self.keys[rows]  # [r, k]
        mine_v, mine_k = have_v[row], have_k[row]  # [c, k]
        ahead = (mine_v > values[:, None]) | ((mine_v == values[:, None]) & (mine_k < keys[:, None]))
        rank = ahead.sum(1)  # entries of its list before it
        cand_at = rank + within
        counts = np.bincount(row * (k + 1) + rank, minlength=len(rows) * (k + 1)).reshape(len(rows), k + 1)
        entry_at = np.arange(k) + np.cumsum(counts, axis=1)[:, :k]  # [r, k]: candidates at or above each entry
        new_v = np.empty((len(rows), k), dtype=self.values.dtype)
        new_k = np.empty((len(rows), k), dtype=self.keys.dtype)
        er, ei = np.nonzero(entry_at < k)
        cj = np.flatnonzero(cand_at < k)
        new_v[er, entry_at[er, ei]], new_k[er, entry_at[er, ei]] = have_v[er, ei], have_k[er, ei]
        new_v[row[cj], cand_at[cj]], new_k[row[cj], cand_at[cj]] = values[cj], keys[cj]
        self.values[rows], self.keys[rows] = new_v, new_k
        for name, arr in self.extra.items():
            have = arr[rows]
            picked = np.empty_like(have)
            picked[er, entry_at[er, ei]] = have[er, ei]
            picked[row[cj], cand_at[cj]] = extra[name][cj]
            arr[rows] = picked

    def merge(self, other: "TopK") -> None:
        self.offer(other.values, other.keys, other.extra)
