"""Which heads and neurons behave most differently between prompts, and by how much.

Prompts ``p = 0..P-1`` have ``n_p`` tokens.  Every value is a mean over a set of positions
``T_p`` of that prompt, so the length of a prompt does not scale it:

- ``positions="aligned"`` (the default): ``T_p = {s, ..., m-1}`` for every prompt, with
  ``m = min_p n_p``: the positions every prompt has, compared position for position;
- ``positions="all"``: ``T_p = {s, ..., n_p - 1}``, each prompt's own positions;

where ``s = 1`` with ``skip_first=True`` (the default) and ``s = 0`` otherwise.  The first
position is left out because trained models use it as an attention sink: its MLP
activations are tens to hundreds of times the others' (about 2,800-3,000 against at most 62 in
SmolLM2), so a mean that includes it is mostly ``x[0] / n_p``, which moves with the prompt's
length.  Every prompt needs at least 2 tokens.

- a neuron ``(l, u)``: ``v_p = (1 / |T_p|) sum_{t in T_p} x_p[l, t, u]`` with ``x`` the MLP's
  hidden activation (the input of its down projection);
- a head ``(l, h)`` and statistic (:mod:`openmav.analysis.stats`: entropy in nats, attention to
  the first token, mean attention distance with the first token's weight counted as 0):
  ``v_p = (1 / |R_p|) sum_{i in R_p} stat(A_p[l, h, i, :])``, with ``R_p = T_p`` less a causal
  model's row 0 (which can only attend to itself);

and the difference is the spread ``max_p v_p - min_p v_p``; rows are ranked by it.  With
aligned positions, a causal model's values on a prompt and on that prompt with text appended
are equal: the positions compared read the same tokens.

Build the comparison with :func:`compare_prompts` (it keeps the per-position neuron means
it needs; ``compare_prompts`` of :class:`openmav.model_loader.AttentionExtractor`, the
seed's method, builds it this way).  A plain :class:`~openmav.analysis.results.Comparison` from
``AttentionExtractor.compare_prompts`` holds only each prompt's mean over *all* positions
(``mlp_mean``, the first included), so neuron differences refuse it; head differences
work on either, with the default positions.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .checks import check_batch, check_prompts
from .results import AttentionStatsMapping, Comparison
from .stats import METRICS, AnalysisValueError, head_statistics

HEAD_METRICS = ("entropy", "sink", "distance")
POSITIONS = ("aligned", "all")


@dataclass
class DifferenceRow:
    kind: str  # "head" or "neuron"
    layer: int
    index: int  # head or neuron number
    metric: str
    difference: float
    values: list[float]  # one per prompt, in the prompts' order


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def position_spans(lengths: list[int], positions: str = "aligned", skip_first: bool = True,
                   prompts: list[str] | None = None) -> list[range]:
    """The positions ``T_p`` each prompt's values average over (see the module docstring)."""
    if positions not in POSITIONS:
        raise AnalysisValueError(f"positions must be one of {', '.join(POSITIONS)}; got {positions!r}")
    for i, n in enumerate(lengths):
        if n < 2:
            text = f" ({_short(prompts[i])!r})" if prompts else ""
            raise AnalysisValueError(
                f"prompt {i}{text} is {n} token{'s' if n != 1 else ''}: a comparison needs at least 2 tokens per "
                "prompt, because the first position (an attention sink) is left out and a causal model's first "
                "position attends only to itself")
    start = 1 if skip_first else 0
    m = min(lengths)
    return [range(start, m if positions == "aligned" else n) for n in lengths]


@dataclass(eq=False)
class PromptComparison(Comparison):
    """A :class:`~openmav.analysis.results.Comparison` with the values :mod:`~openmav.analysis.compare` ranks.

    - ``positions``, ``skip_first``: how ``spans`` were chosen (see the module docstring)
    - ``spans``: per prompt, the positions its values are means over
    - ``neuron_values``: ``[prompts, layers, d_mlp]`` the MLP neurons' mean over ``spans``
      (``None`` for a model without per-neuron MLPs, e.g. mixture-of-experts)
    """

    positions: str = "aligned"
    skip_first: bool = True
    spans: list[range] = field(default_factory=list)
    neuron_values: np.ndarray | None = None
    _heads: dict = field(default_factory=dict, repr=False)

    def head_values(self, metric: str, threshold: float = 0.01) -> np.ndarray:
        """``[prompts, layers, heads]`` of one statistic, each a mean over that prompt's ``spans``."""
        if metric not in METRICS:
            raise AnalysisValueError(f"unknown head statistic {metric!r}; known: {', '.join(METRICS)}")
        return self._all_heads(threshold)[metric]

    def _all_heads(self, threshold: float) -> dict[str, np.ndarray]:
        if threshold not in self._heads:
            import torch

            per_prompt = [head_statistics(torch.from_numpy(r.attention_array()), r.causal, threshold, span)
                          for r, span in zip(self.results, self.spans)]
            self._heads[threshold] = {m: np.stack([s[m].numpy() for s in per_prompt]) for m in METRICS}
        return self._heads[threshold]

    def head_stats(self, threshold: float = 0.01) -> list[AttentionStatsMapping]:
        """Per prompt, every statistic over its ``spans`` as a mapping (what ``layer_stats.png`` draws)."""
        values = self._all_heads(threshold)
        return [AttentionStatsMapping(r.prompt, {m: values[m][p] for m in METRICS}, threshold, model=r.model)
                for p, r in enumerate(self.results)]

    def describe_positions(self) -> str:
        """One line: which positions the values average over."""
        lengths = [len(r.tokens) for r in self.results]
        span = self.spans[0]
        if self.positions == "aligned":
            where = f"positions {span.start}..{span.stop - 1}, which every prompt has"
        else:
            where = f"each prompt's positions {span.start}..n-1"
        first = "the first position left out" if self.skip_first else "the first position included"
        return (f"values are means over {where} ({first}); prompts are "
                + (f"{lengths[0]} tokens" if len(set(lengths)) == 1 else f"{min(lengths)}..{max(lengths)} tokens"))

    def note(self, hint: str = "positions='all'") -> str | None:
        """One line when the longest prompt is at least twice the shortest: aligned positions skip the rest."""
        lengths = [len(r.tokens) for r in self.results]
        if self.positions != "aligned" or max(lengths) < 2 * min(lengths):
            return None
        span = self.spans[0]
        return (f"note: the prompts are {min(lengths)} to {max(lengths)} tokens; only positions "
                f"{span.start}..{span.stop - 1}, which all of them have, are compared ({hint} compares "
                "each prompt's own positions)")

    def __repr__(self) -> str:
        lines = super().__repr__().split("\n")
        lines[0] = "Prompt" + lines[0]
        return "\n".join([lines[0], f"  {self.describe_positions()}", *lines[1:]])


def compare_prompts(extractor, prompts: list[str], positions: str = "aligned", skip_first: bool = True,
                    batch_size: int = 16, padding_side: str = "right", neurons: bool = True,
                    hidden_states: bool = False) -> PromptComparison:
    """Run ``prompts`` (padded batches, as ``extractor.compare_prompts``) and keep the values to rank.

    Each result equals that prompt run alone; ``neuron_values`` holds the means over the positions
    the module docstring defines (per-position activations are dropped after each batch).  With
    ``hidden_states`` each result keeps its hidden states, as ``extractor.compare_prompts`` does.
    """
    check_prompts(prompts)
    check_batch(batch_size, padding_side, skip_first=skip_first, neurons=neurons, hidden_states=hidden_states)
    if isinstance(prompts, str) or len(prompts) < 2:
        got = "one string" if isinstance(prompts, str) else f"{len(prompts)}"
        raise AnalysisValueError(f"a comparison needs a list of at least 2 prompts, got {got}")
    if batch_size < 1:
        raise AnalysisValueError(f"batch size must be >= 1, got {batch_size}")
    prompts = list(prompts)
    encoded = extractor._encode(prompts)  # empty or too-long prompts are refused here, in one sentence
    spans = position_spans([len(ids) for ids in encoded], positions, skip_first, prompts)
    layers = range(extractor.n_layers) if neurons and extractor.handle.has_neurons else ()
    results, values = [], []
    for start in range(0, len(prompts), batch_size):
        chunk = extractor._run(prompts[start:start + batch_size], batch_size, padding_side,
                               hidden_states=hidden_states, logits=False, neuron_layers=layers)
        for r, span in zip(chunk, spans[start:start + batch_size]):
            if layers:
                values.append(np.stack([r.neurons[layer][span.start:span.stop].mean(0) for layer in layers]))
            r.neurons = None  # [layers, seq, d_mlp] per prompt would be large for many prompts
        results.extend(chunk)
    return PromptComparison(results, positions=positions, skip_first=skip_first, spans=spans,
                            neuron_values=np.stack(values) if values else None)


def _as_prompt_comparison(comparison) -> PromptComparison:
    if isinstance(comparison, PromptComparison):
        return comparison
    if not isinstance(comparison, Comparison) or len(comparison) < 2:
        raise AnalysisValueError("differences need a comparison of at least 2 prompts "
                                 "(openmav.analysis.compare.compare_prompts(extractor, prompts))")
    results = list(comparison)
    spans = position_spans([len(r.tokens) for r in results], prompts=[r.prompt for r in results])
    return PromptComparison(results, spans=spans)


def _check_top_k(top_k: int) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise AnalysisValueError(f"top_k must be an integer >= 1, got {top_k!r}")


def head_differences(comparison, metric: str = "entropy", top_k: int = 10, threshold: float = 0.01):
    """The ``top_k`` heads whose ``metric`` spreads most between prompts (means over aligned positions).

    ``comparison``: a :class:`PromptComparison`, or a plain ``Comparison`` (aligned positions,
    first left out).
    """
    _check_top_k(top_k)
    values = _as_prompt_comparison(comparison).head_values(metric, threshold)  # [P, L, H]
    return _top(values, "head", metric, top_k)


def neuron_differences(comparison, top_k: int = 10):
    """The ``top_k`` MLP neurons (any layer) whose mean activation spreads most between prompts.

    Needs a :class:`PromptComparison` (:func:`compare_prompts`); empty for a model without
    per-neuron MLPs.
    """
    _check_top_k(top_k)
    if not isinstance(comparison, PromptComparison):
        raise AnalysisValueError(
            "neuron differences need openmav.analysis.compare.compare_prompts(extractor, prompts): a plain "
            "Comparison holds only means over all positions, the first (attention-sink) position included")
    if comparison.neuron_values is None:
        return []
    return _top(comparison.neuron_values, "neuron", "mean act", top_k)


def _top(values: np.ndarray, kind: str, metric: str, top_k: int) -> list[DifferenceRow]:
    spread = values.max(0) - values.min(0)  # [L, N]
    ranked = np.where(np.isnan(spread), -np.inf, spread)  # layers without attention (hybrids) hold NaN
    order = np.argsort(ranked, axis=None, kind="stable")[::-1][:top_k]
    rows = []
    for flat in order:
        layer, index = divmod(int(flat), spread.shape[1])
        rows.append(DifferenceRow(kind, layer, index, metric, float(spread[layer, index]),
                                  [float(v) for v in values[:, layer, index]]))
    return rows


def differences(comparison, top_k: int = 10, head_metrics=HEAD_METRICS) -> list[DifferenceRow]:
    """Heads (per metric) and neurons that differ most; ``top_k`` of each group.

    Neurons are included for a :class:`PromptComparison`; a plain ``Comparison`` gives heads only.
    """
    comparison = comparison if isinstance(comparison, PromptComparison) else _as_prompt_comparison(comparison)
    rows = []
    for metric in head_metrics:
        rows.extend(head_differences(comparison, metric, top_k))
    if comparison.neuron_values is not None:
        rows.extend(neuron_differences(comparison, top_k))
    return rows


def write_csv(rows: list[DifferenceRow], prompts, path) -> Path:
    """Write the rows as CSV (every field quoted as the ``csv`` module needs, so prompts may hold any text).

    ``prompts``: the prompt texts, or the :class:`PromptComparison` the rows came from (then its
    prompts' lengths and positions are written too).  Columns: ``kind, layer, index, metric,
    difference, prompt_0 .. prompt_{P-1}``.  The first rows describe the prompts (``kind`` =
    ``prompt``; ``metric`` = ``text``: the prompt itself, ``tokens``: its length, ``positions``:
    the positions averaged, e.g. ``1..5``); then one row per head or neuron with its spread
    and its value for each prompt.
    """
    spans = lengths = None
    if isinstance(prompts, Comparison):
        if isinstance(prompts, PromptComparison):
            spans = prompts.spans
        lengths = [len(r.tokens) for r in prompts]
        prompts = prompts.prompts
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["kind", "layer", "index", "metric", "difference", *[f"prompt_{i}" for i in range(len(prompts))]])
        writer.writerow(["prompt", "", "", "text", "", *prompts])
        if lengths is not None:
            writer.writerow(["prompt", "", "", "tokens", "", *lengths])
        if spans is not None:
            writer.writerow(["prompt", "", "", "positions", "", *[f"{s.start}..{s.stop - 1}" for s in spans]])
        for r in rows:
            writer.writerow([r.kind, r.layer, r.index, r.metric, f"{r.difference:.6g}", *[f"{v:.6g}" for v in r.values]])
    return path


def rich_table(rows: list[DifferenceRow], prompts: list[str], title: str = "largest differences between prompts",
               note: str = ""):
    """A :class:`rich.table.Table` of the rows: the spread (the CSV's ``difference``) and each prompt's
    value, 4 significant digits (prompts shown as p0, p1, ...; their text is never read as markup)."""
    from rich.table import Table
    from rich.text import Text

    caption = Text("  ".join(f"p{i}: {p!r}" for i, p in enumerate(prompts)) + (f"\n{note}" if note else ""))
    table = Table(title=Text(title), caption=caption)
    for col in ("kind", "layer", "index", "metric", "spread"):
        table.add_column(col, justify="right" if col in ("layer", "index", "spread") else "left")
    for i in range(len(prompts)):
        table.add_column(f"p{i}", justify="right")
    for r in rows:
        table.add_row(r.kind, str(r.layer), str(r.index), r.metric, f"{r.difference:.4g}", *[f"{v:.4g}" for v in r.values])
    return table
