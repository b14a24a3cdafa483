"""Which heads and neurons behave most differently between prompts, and by how much.

For a :class:`~openmav.analysis.results.Comparison` of ``P`` prompts:

- a head's value per prompt is one of its statistics (:mod:`openmav.analysis.stats`, e.g. entropy in
  nats or attention to the first token), so prompts of different lengths are comparable;
- a neuron's value per prompt is its MLP activation averaged over that prompt's positions.

The difference is the spread ``max_p value - min_p value``; rows are ranked by it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HEAD_METRICS = ("entropy", "sink", "distance")


@dataclass
class DifferenceRow:
    kind: str  # "head" or "neuron"
    layer: int
    index: int  # head or neuron number
    metric: str
    difference: float
    values: list[float]  # one per prompt, in the prompts' order


def head_differences(comparison, metric: str = "entropy", top_k: int = 10, threshold: float = 0.01):
    """The ``top_k`` heads whose ``metric`` spreads most between prompts."""
    values = np.stack([r.stats(threshold)[metric] for r in comparison])  # [P, L, H]
    return _top(values, "head", metric, top_k)


def neuron_differences(comparison, top_k: int = 10):
    """The ``top_k`` MLP neurons (any layer) whose mean activation spreads most between prompts."""
    if comparison[0].mlp_mean is None:
        return []
    values = np.stack([np.stack(r.mlp_mean) for r in comparison])  # [P, L, d_mlp]
    return _top(values, "neuron", "mean act", top_k)


def _top(values: np.ndarray, kind: str, metric: str, top_k: int) -> list[DifferenceRow]:
    spread = values.max(0) - values.min(0)  # [L, N]
    order = np.argsort(spread, axis=None)[::-1][:top_k]
    rows = []
    for flat in order:
        layer, index = divmod(int(flat), spread.shape[1])
        rows.append(DifferenceRow(kind, layer, index, metric, float(spread[layer, index]),
                                  [float(v) for v in values[:, layer, index]]))
    return rows


def differences(comparison, top_k: int = 10, head_metrics=HEAD_METRICS) -> list[DifferenceRow]:
    """Heads (per metric) and neurons that differ most; ``top_k`` of each group."""
    rows = []
    for metric in head_metrics:
        rows.extend(head_differences(comparison, metric, top_k))
    rows.extend(neuron_differences(comparison, top_k))
    return rows


def write_csv(rows: list[DifferenceRow], prompts: list[str], path) -> Path:
    """One line per row: kind, layer, index, metric, difference, then the value for each prompt."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["kind", "layer", "index", "metric", "difference", *[f"prompt_{i}" for i in range(len(prompts))]])
        for r in rows:
            writer.writerow([r.kind, r.layer, r.index, r.metric, f"{r.difference:.6g}", *[f"{v:.6g}" for v in r.values]])
    return path


def rich_table(rows: list[DifferenceRow], prompts: list[str], title: str = "largest differences between prompts"):
    """A :class:`rich.table.Table` of the rows (prompts shown as p0, p1, ...)."""
    from rich.table import Table

    table = Table(title=title, caption="  ".join(f"p{i}: {p!r}" for i, p in enumerate(prompts)))
    for col in ("kind", "layer", "index", "metric", "difference"):
        table.add_column(col, justify="right" if col in ("layer", "index", "difference") else "left")
    for i in range(len(prompts)):
        table.add_column(f"p{i}", justify="right")
    for r in rows:
        table.add_row(r.kind, str(r.layer), str(r.index), r.metric, f"{r.difference:.4f}", *[f"{v:.4f}" for v in r.values])
    return table
