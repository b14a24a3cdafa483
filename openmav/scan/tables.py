"""The scan's Parquet tables, from the merged partial results (schema in the docs' "Corpus scans" page).

``units.parquet`` — one row per unit:

====================  =========  ====================================================================
column                type       meaning
====================  =========  ====================================================================
kind                  string     ``neuron``, ``head`` or ``resid`` (the residual norm of a layer)
layer                 int32      block index
unit                  int32      neuron index, head index, or 0 for ``resid``
count                 int64      token positions read
mean, std             float64    of the unit's value (population standard deviation)
max                   float32    largest value
frac_pos              float64    fraction of positions with a value above zero ("density")
hist                  list<i64>  counts in the fixed octave bins of ``openmav.scan.plan.EDGES``
entropy ...           float64    heads only: corpus means of entropy (nats), max_weight, first_weight,
                                 prev_token over queries ``i >= 1``, and induction (over the queries
                                 that have an earlier copy of their token); null elsewhere
====================  =========  ====================================================================

``top_contexts.parquet`` — one row per top-k hit: ``kind, layer, unit, rank`` (0 = largest), ``value``,
``token_index`` (global: ``window * context + position``), ``window``, ``position``, ``doc`` (ordinal in
the corpus), ``char_start``/``char_end`` (the hit token's span in that document's text), ``token_id``,
``token`` (its text), ``context_start`` (window position of the first context token), ``context_ids``
(list<int32>), ``context_values`` (list<float32>, the unit's value on each context token) and
``hit_offset`` (the hit's index in the context lists).

``documents.parquet`` — ``doc, source, chars, tokens, first_token``; ``vocab.parquet`` — ``token_id, text``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..capture.trace import replacing
from .plan import AFTER, BEFORE, HEAD_FIELDS


def _write(table, path: Path) -> None:
    import pyarrow.parquet as pq

    with replacing(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def unit_rows(total: dict) -> "pa.Table":  # noqa: F821
    import pyarrow as pa

    cols: dict[str, list] = {k: [] for k in ("kind", "layer", "unit", "count", "mean", "std", "max", "frac_pos",
                                             "hist", *HEAD_FIELDS, "induction")}
    order = {"neuron": 0, "head": 1, "resid": 2}
    for group in sorted(total, key=lambda g: (int(g.split("/")[1]), order[g.split("/")[0]])):
        kind, layer = group.split("/")
        node = total[group]
        n = int(node["n"])
        units = len(node["mean"])
        cols["kind"] += [kind] * units
        cols["layer"] += [int(layer)] * units
        cols["unit"] += list(range(units))
        cols["count"] += [n] * units
        cols["mean"] += node["mean"].tolist()
        cols["std"] += np.sqrt(np.maximum(node["m2"] / max(n, 1), 0)).tolist()
        cols["max"] += node["max"].tolist()
        cols["frac_pos"] += (node["count_pos"] / max(n, 1)).tolist()
        cols["hist"] += node["hist"].astype(np.int64).tolist()
        for name in HEAD_FIELDS:
            s = node.get(f"sum_{name}")
            q = int(node.get("count_queries", 0))
            cols[name] += (s / q).tolist() if s is not None and q else [None] * units
        s, q = node.get("sum_induction"), int(node.get("count_induction", 0))
        cols["induction"] += (s / q).tolist() if s is not None and q else [None] * units
    schema = pa.schema([("kind", pa.string()), ("layer", pa.int32()), ("unit", pa.int32()), ("count", pa.int64()),
                        ("mean", pa.float64()), ("std", pa.float64()), ("max", pa.float32()),
                        ("frac_pos", pa.float64()), ("hist", pa.list_(pa.int64())),
                        *[(name, pa.float64()) for name in HEAD_FIELDS], ("induction", pa.float64())])
    return pa.table(cols, schema=schema)


def hit_rows(topk: dict, context: int, shard_windows, texts) -> tuple["pa.Table", set]:  # noqa: F821
    """The top-context rows; ``shard_windows()`` yields each shard's ``(first_window, ids, meta, lengths)``
    in order, so token ids and spans are looked up one shard at a time (memory flat in the corpus size)."""
    import pyarrow as pa

    kinds, layers, units, ranks, values, keys, ctx = [], [], [], [], [], [], []
    for group in sorted(topk, key=lambda g: (int(g.split("/")[1]), g.split("/")[0])):
        kind, layer = group.split("/")
        top = topk[group]
        u, r = np.nonzero(np.isfinite(top.values))
        kinds.append(np.full(len(u), kind, dtype=object))
        layers.append(np.full(len(u), int(layer), dtype=np.int32))
        units.append(u.astype(np.int32))
        ranks.append(r.astype(np.int32))
        values.append(top.values[u, r])
        keys.append(top.keys[u, r])
        ctx.append(top.extra["context"][u, r].astype(np.float32))
    if not keys:
        keys, values, ctx = [np.zeros(0, np.int64)], [np.zeros(0, np.float32)], [np.zeros((0, BEFORE + AFTER + 1))]
        kinds, layers, units, ranks = [np.zeros(0, object)], [np.zeros(0, np.int32)], [np.zeros(0, np.int32)], \
            [np.zeros(0, np.int32)]
    key = np.concatenate(keys)
    window, position = key // context, key % context
    n = len(key)
    doc = np.zeros(n, np.int64)
    span = np.zeros((n, 2), np.int64)
    token = np.zeros(n, np.int64)
    cids = np.full((n, BEFORE + AFTER + 1), -1, np.int64)
    around = np.arange(-BEFORE, AFTER + 1)
    by_window = np.argsort(window, kind="stable")
    for first, ids, meta, lengths in shard_windows():  # every lookup at once per shard, no loop over hits
        lo, hi = np.searchsorted(window[by_window], [first, first + len(lengths)])
        i = by_window[lo:hi]
        w, t = window[i] - first, position[i]
        doc[i], span[i], token[i] = meta[w, t, 0], meta[w, t, 1:], ids[w, t]
        places = t[:, None] + around  # [hits, CONTEXT] window positions around each hit
        inside = (places >= 0) & (places < lengths[w][:, None])
        cids[i] = np.where(inside, ids[w[:, None], np.clip(places, 0, ids.shape[1] - 1)], -1)
    contexts = np.concatenate(ctx)
    valid = cids >= 0
    start = position - BEFORE
    bounds = np.concatenate([[0], np.cumsum(valid.sum(1))]).astype(np.int32)  # each row's run of kept tokens
    first_kept = np.where(valid.any(1), np.argmax(valid, axis=1), 0)
    seen = set(np.unique(cids[valid]).tolist()) | set(token.tolist())
    distinct, which = np.unique(token, return_inverse=True)  # each distinct token's text decoded once
    table = pa.table({
        "kind": pa.array(np.concatenate(kinds).tolist(), pa.string()),
        "layer": pa.array(np.concatenate(layers)), "unit": pa.array(np.concatenate(units)),
        "rank": pa.array(np.concatenate(ranks)), "value": pa.array(np.concatenate(values).astype(np.float32)),
        "token_index": pa.array(key), "window": pa.array(window), "position": pa.array(position.astype(np.int32)),
        "doc": pa.array(doc), "char_start": pa.array(span[:, 0]), "char_end": pa.array(span[:, 1]),
        "token_id": pa.array(token.astype(np.int32)),
        "token": pa.array([texts(int(t)) for t in distinct], pa.string()).take(pa.array(which.reshape(-1))),
        "context_start": pa.array(np.maximum(start, 0).astype(np.int32)),
        "context_ids": pa.ListArray.from_arrays(pa.array(bounds), pa.array(cids[valid].astype(np.int32))),
        "context_values": pa.ListArray.from_arrays(pa.array(bounds),
                                                   pa.array(contexts[valid].astype(np.float32))),
        "hit_offset": pa.array((BEFORE - first_kept).astype(np.int32)),
    })
    return table, seen


def vocab_rows(ids, texts) -> "pa.Table":  # noqa: F821
    import pyarrow as pa

    ids = sorted(int(i) for i in ids)
    return pa.table({"token_id": pa.array(ids, pa.int32()), "text": pa.array([texts(i) for i in ids], pa.string())})


class DocumentWriter:
    """``documents.parquet`` written as the corpus streams (row groups of 4096), renamed into place at the end."""

    def __init__(self, path: Path):
        import pyarrow as pa

        self.path = path
        self.schema = pa.schema([("doc", pa.int64()), ("source", pa.string()), ("chars", pa.int64()),
                                 ("tokens", pa.int64()), ("first_token", pa.int64())])
        self.rows: list = []
        self._ctx = None
        self._writer = None

    def __enter__(self):
        import pyarrow.parquet as pq

        self._ctx = replacing(self.path)
        tmp = self._ctx.__enter__()
        self._writer = pq.ParquetWriter(tmp, self.schema, compression="zstd")
        return self

    def add(self, record) -> None:
        self.rows.append(record)
        if len(self.rows) >= 4096:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self.rows:
            r = self.rows
            self._writer.write_table(pa.table({
                "doc": [x.ordinal for x in r], "source": [x.source for x in r], "chars": [x.chars for x in r],
                "tokens": [x.tokens for x in r], "first_token": [x.first_token for x in r]}, schema=self.schema))
            self.rows = []

    def __exit__(self, *exc):
        try:
            if exc[0] is None:
                self._flush()
            self._writer.close()
        finally:
            return self._ctx.__exit__(*exc)
