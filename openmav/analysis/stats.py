"""Per-head attention statistics that mean something (never a mean of softmax rows, always 1/seq).

For one head's probabilities ``A [q, k]`` over one unpadded prompt, with ``R`` the
query rows counted (all rows for an encoder; rows ``i >= 1`` for a causal model, whose
row 0 can only look at itself) and ``V_i`` the keys row ``i`` can see (``j <= i``
causal, all keys for an encoder), every statistic is a mean over ``i in R`` of:

- ``entropy``:      ``-sum_j A[i,j] ln A[i,j]``                (nats)
- ``max_weight``:   ``max_j A[i,j]``
- ``sparsity``:     ``|{j in V_i : A[i,j] < threshold}| / |V_i|``  (share of visible weights below threshold)
- ``distance``:     ``sum_j A[i,j] |i - j|``                   (mean attention distance, in tokens)
- ``sink``:         ``A[i, 0]``                                 (attention to the first token)

Layers are indexed by integers and kept in numeric order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..metrics import entropy

METRICS = ("entropy", "max_weight", "sparsity", "distance", "sink")


def head_statistics(attention: torch.Tensor, causal: bool, threshold: float = 0.01) -> dict[str, torch.Tensor]:
    """Statistics ``{metric: [..., h]}`` for probabilities ``[..., h, q, k]`` of one unpadded prompt."""
    a = attention.float()
    q, k = a.shape[-2], a.shape[-1]
    qi = torch.arange(q).unsqueeze(1)
    kj = torch.arange(k).unsqueeze(0)
    visible = (kj <= qi + (k - q)) if causal else torch.ones(q, k, dtype=torch.bool)
    rows = slice(1, None) if causal and q > 1 else slice(None)
    below = ((a < threshold) & visible).sum(-1).float() / visible.sum(-1).float()
    distance = (a * (qi + (k - q) - kj).abs().float()).sum(-1)
    per_row = {
        "entropy": entropy(a), "max_weight": a.amax(-1), "sparsity": below,
        "distance": distance, "sink": a[..., 0],
    }
    return {name: value[..., rows].mean(-1) for name, value in per_row.items()}


@dataclass
class AttentionStats:
    """Per layer and head statistics of one prompt: each metric is ``[n_layers, n_heads]``."""

    prompt: str
    values: dict[str, np.ndarray]
    threshold: float = 0.01
    layers: list[int] = field(default_factory=list)

    def __post_init__(self):
        if not self.layers:
            self.layers = list(range(next(iter(self.values.values())).shape[0]))

    def __getitem__(self, metric: str) -> np.ndarray:
        return self.values[metric]

    def per_layer(self) -> dict[int, dict[str, float]]:
        """``{layer: {metric: mean over heads}}`` with integer layer keys in numeric order."""
        return {layer: {m: float(self.values[m][i].mean()) for m in METRICS} for i, layer in enumerate(self.layers)}

    def items(self):
        return self.per_layer().items()

    def to_rows(self) -> list[dict]:
        """One dict per (layer, head): ``layer``, ``head`` and every metric."""
        n_heads = self.values["entropy"].shape[1]
        return [{"layer": layer, "head": h, **{m: float(self.values[m][i, h]) for m in METRICS}}
                for i, layer in enumerate(self.layers) for h in range(n_heads)]

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "threshold": self.threshold, "layers": self.layers,
                **{m: self.values[m].tolist() for m in METRICS}}

    def _repr_html_(self) -> str:
        from .notebook import table_html

        rows = [[layer, *(s[m] for m in METRICS)] for layer, s in self.per_layer().items()]
        return table_html(["layer", *METRICS], rows, f"attention statistics (mean over heads): {self.prompt!r}")
