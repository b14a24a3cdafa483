"""Per-head attention statistics that mean something (never a mean of softmax rows, always 1/seq).

For one head's probabilities ``A [q, k]`` over one unpadded prompt, with ``R`` the
query rows counted and ``V_i`` the keys row ``i`` can see (``j <= i`` causal, all keys
for an encoder), every statistic is a mean over ``i in R`` of:

- ``entropy``:      ``-sum_j A[i,j] ln A[i,j]``                (nats)
- ``max_weight``:   ``max_j A[i,j]``
- ``sparsity``:     ``|{j in V_i : A[i,j] < threshold}| / |V_i|``  (share of visible weights below threshold)
- ``distance``:     ``sum_{j>=1} A[i,j] |i - j|``              (mean attention distance in tokens, the
  weight on the first token counted as distance 0: that weight is the ``sink`` statistic)
- ``sink``:         ``A[i, 0]``                                 (attention to the first token)

By default ``R`` is every row for an encoder and rows ``i >= 1`` for a causal model (its
row 0 can only look at itself); :func:`head_statistics` takes other rows (the comparisons
of :mod:`openmav.analysis.compare` count only positions every prompt has).

Why ``distance`` leaves the first key out: trained models park most of a head's weight on
the first token (the attention sink), and ``A[i,0] |i - 0| = A[i,0] i`` grows with the
position, so with it a sink head's distance is about half the prompt length whatever the head
reads (SmolLM2 L18H8, all its weight on the first token: 3.0 tokens on "The cat sat on the mat",
9.0 on that sentence three times; without it, 0.0 on both).  Renormalising the remaining weight
instead would blow up the rounding noise of such a head (its last 1e-4 of weight).

Per layer, :func:`weight_moments` adds the ``mean`` and ``std`` of the attention weights
themselves (the numbers Show Me Your Attention's scripts print), pooled over the layer's heads,
the rows ``R`` and the keys each row sees.  A row's weights sum to 1, so that ``mean`` is fixed by
the prompt's length and says nothing about the model (``2 / (n + 2)`` for an ``n``-token causal
prompt, ``1 / n`` for an encoder); ``std`` and the statistics above do.

Layers are indexed by integers and kept in numeric order.

The error classes of the analysis API are here too: each is an
:class:`~openmav.errors.InputError` (so ``mav`` prints it as one line) and the built-in
exception a Python caller expects (:class:`ValueError`, :class:`IndexError`, :class:`TypeError`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InputError
from ..metrics import entropy

METRICS = ("entropy", "max_weight", "sparsity", "distance", "sink")
# what AttentionExtractor.get_attention_stats gives per layer: the weights' moments, then METRICS' means over heads
LAYER_METRICS = ("mean", "std") + METRICS


class AnalysisValueError(InputError, ValueError):
    """A value given to the analysis API is not valid (an empty prompt list, a bad option)."""


class IndexOutOfRange(AnalysisValueError, IndexError):
    """A layer, head, neuron or prompt index outside the valid range (also an IndexError)."""


class NotApplicableError(InputError, TypeError):
    """The method does not apply to this kind of model or object (e.g. head scores of an encoder)."""


class NotAKey(InputError, KeyError):
    """A key a statistics mapping does not have (also a KeyError, so ``get`` and ``in`` work)."""

    def __str__(self) -> str:  # KeyError would show the sentence in quotes
        return str(self.args[0]) if self.args else ""


def check_threshold(threshold) -> float:
    """The sparsity threshold as a float in ``[0, 1]``; :class:`AnalysisValueError` otherwise."""
    ok = isinstance(threshold, (int, float, np.integer, np.floating)) and not isinstance(threshold, bool)
    if not ok or not 0.0 <= float(threshold) <= 1.0:  # NaN fails the comparison too
        raise AnalysisValueError(f"threshold must be a number from 0 to 1 (a share of attention weight), "
                                 f"got {threshold!r}")
    return float(threshold)


def check_index(index, size: int, what: str, of: str = "") -> int:
    """``index`` as ``0..size-1`` (negative counts from the end); :class:`IndexOutOfRange` naming the range."""
    where = f" of {of}" if of else ""
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise IndexOutOfRange(f"{what} index must be an integer, got {index!r}")
    if size < 1:
        raise IndexOutOfRange(f"there is no {what}{where} to index")
    if not -size <= index < size:
        raise IndexOutOfRange(f"{what} index {index} is out of range: the {size} {what}s{where} are "
                              f"0..{size - 1} (or -{size}..-1 from the end)")
    return int(index) % size


def _rows_and_keys(q: int, k: int, causal: bool, rows: range | None) -> tuple[list[int], torch.Tensor]:
    """The query rows ``R`` counted and the mask ``[q, k]`` of the keys each row sees (module docstring)."""
    qi = torch.arange(q).unsqueeze(1)
    kj = torch.arange(k).unsqueeze(0)
    visible = (kj <= qi + (k - q)) if causal else torch.ones(q, k, dtype=torch.bool)
    if rows is None:
        rows = range(1, q) if causal and q > 1 else range(q)
    picked = [i for i in rows if 0 <= i < q and not (causal and i + (k - q) == 0 and q > 1)]
    if not picked:
        raise AnalysisValueError(f"no query rows to average over: rows {rows.start}..{rows.stop - 1} "
                                 f"of a {q}-token prompt")
    return picked, visible


def head_statistics(attention: torch.Tensor, causal: bool, threshold: float = 0.01,
                    rows: range | None = None) -> dict[str, torch.Tensor]:
    """Statistics ``{metric: [..., h]}`` for probabilities ``[..., h, q, k]`` of one unpadded prompt.

    ``rows``: the query rows averaged over (default: all for an encoder, ``1..q-1`` causal);
    a causal model's row 0 is never counted, whatever ``rows`` says.
    """
    threshold = check_threshold(threshold)
    a = attention.float()
    q, k = a.shape[-2], a.shape[-1]
    qi = torch.arange(q).unsqueeze(1)
    kj = torch.arange(k).unsqueeze(0)
    picked, visible = _rows_and_keys(q, k, causal, rows)
    below = ((a < threshold) & visible).sum(-1).float() / visible.sum(-1).float()
    distance = (a[..., 1:] * (qi + (k - q) - kj[:, 1:]).abs().float()).sum(-1)
    per_row = {
        "entropy": entropy(a), "max_weight": a.amax(-1), "sparsity": below,
        "distance": distance, "sink": a[..., 0],
    }
    index = torch.tensor(picked)
    return {name: value.index_select(-1, index).mean(-1) for name, value in per_row.items()}


def weight_moments(attention: torch.Tensor, causal: bool, rows: range | None = None) -> dict[str, torch.Tensor]:
    """``{"mean": [...], "std": [...]}`` of the weights of probabilities ``[..., h, q, k]`` (one unpadded prompt).

    Pooled over the ``h`` heads, the rows ``i in R`` (as :func:`head_statistics` counts them) and
    the keys ``j in V_i`` each row sees, ``N = h * sum_{i in R} |V_i|`` weights in all::

        mean = (1/N) sum_{head, i in R, j in V_i} A[head, i, j]
        std  = sqrt((1/N) sum_{head, i in R, j in V_i} (A[head, i, j] - mean)^2)      (population, ddof 0)

    The masked (future) keys of a causal model are not weights and are left out.  Since each row
    sums to 1, ``mean = |R| / sum_{i in R} |V_i|`` whatever the model does (see the module docstring).
    """
    q, k = attention.shape[-2], attention.shape[-1]
    picked, visible = _rows_and_keys(q, k, causal, rows)
    index = torch.tensor(picked)
    mask = visible.index_select(0, index).double()       # [|R|, k]
    lead = attention.shape[:-3]
    flat = attention.reshape(-1, *attention.shape[-3:])  # [B, h, q, k]
    mean, std = torch.empty(flat.shape[0], dtype=torch.float64), torch.empty(flat.shape[0], dtype=torch.float64)
    for b in range(flat.shape[0]):  # one layer at a time in float64: exact sums, memory of one layer
        a = flat[b].index_select(-2, index).double()     # [h, |R|, k]
        n = mask.sum() * a.shape[0]
        mean[b] = (a * mask).sum() / n
        centred = (a - mean[b]) * mask
        std[b] = ((centred * centred).sum() / n).sqrt()
    return {"mean": mean.reshape(lead).float(), "std": std.reshape(lead).float()}


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

    def __repr__(self) -> str:
        shape = "x".join(str(n) for n in np.shape(next(iter(self.values.values()))))
        text = self.prompt if len(self.prompt) <= 60 else self.prompt[:59] + "\u2026"
        return (f"AttentionStats\n  prompt: {text!r}\n"
                f"  metrics: {', '.join(self.values)}: each [{shape}] (layers x heads)")

    def _repr_html_(self) -> str:
        from .notebook import table_html

        rows = [[layer, *(s[m] for m in METRICS)] for layer, s in self.per_layer().items()]
        return table_html(["layer", *METRICS], rows, f"attention statistics (mean over heads): {self.prompt!r}")
