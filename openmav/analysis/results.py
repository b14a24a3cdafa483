"""Plain result records of the extraction API (numpy arrays, token text); no model inside.

Their text reprs are a few lines (model, prompt, shapes), never array contents; their
HTML reprs (Jupyter) escape every piece of prompt and token text.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .stats import LAYER_METRICS, METRICS, AttentionStats, NotAKey, head_statistics, weight_moments

# names the original Show Me Your Attention code used for the same fields
_ALIASES = {"attention_weights": "attention", "attentions": "attention", "input_ids": "token_ids"}


def _short(text: str, limit: int = 60) -> str:
    """``repr`` of ``text`` cut to ``limit`` characters (with an ellipsis when cut)."""
    return repr(text if len(text) <= limit else text[:limit - 1] + "\u2026")


def _shape(array) -> str:
    return "none" if array is None else "[" + ", ".join(str(n) for n in np.shape(array)) + "]"


def _tokens(n: int) -> str:
    return f"{n} token" if n == 1 else f"{n} tokens"


def _model(name: str) -> str:
    return f" of {name!r}" if name else ""


class AttentionStatsMapping(Mapping):
    """Per layer and head attention statistics of one prompt: a mapping ``{metric: [n_layers, n_heads]}``.

    Keys are the metric names (``entropy``, ``max_weight``, ``sparsity``, ``distance``, ``sink``; see
    :mod:`openmav.analysis.stats`) in that order, values numpy arrays, so ``keys()``, ``items()``,
    ``values()``, ``get()``, ``in``, iteration, ``list()`` and ``dict()`` behave as for a dict
    (item assignment does not exist).  Other views: :meth:`per_layer` (``{layer: {metric: mean over
    heads}}``, integer layers in numeric order), :meth:`to_rows` (one dict per head), :meth:`to_dict`.
    ``prompt``, ``threshold`` (the sparsity threshold), ``layers`` and ``model`` describe the run.
    """

    def __init__(self, prompt: str, values: dict[str, np.ndarray], threshold: float = 0.01,
                 layers: list[int] | None = None, model: str = ""):
        self._stats = AttentionStats(prompt, dict(values), threshold, list(layers or []))
        self.model = model

    @property
    def prompt(self) -> str:
        return self._stats.prompt

    @property
    def threshold(self) -> float:
        return self._stats.threshold

    @property
    def layers(self) -> list[int]:
        return self._stats.layers

    def __getitem__(self, metric: str) -> np.ndarray:
        if isinstance(metric, str) and metric in self._stats.values:
            return self._stats.values[metric]
        raise KeyError(f"{metric!r} is not a metric: the keys are {', '.join(self)} "
                       "(per layer means: per_layer()[layer])")

    def __iter__(self):
        return iter(self._stats.values)

    def __len__(self) -> int:
        return len(self._stats.values)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return list(self) == list(other) and all(np.array_equal(self[k], other[k]) for k in self)

    __hash__ = None

    def per_layer(self) -> dict[int, dict[str, float]]:
        """``{layer: {metric: mean over heads}}`` with integer layer keys in numeric order."""
        return self._stats.per_layer()

    def to_rows(self) -> list[dict]:
        """One dict per (layer, head): ``layer``, ``head`` and every metric."""
        return self._stats.to_rows()

    def to_dict(self) -> dict:
        """Plain lists: ``prompt``, ``threshold``, ``layers`` and each metric ``[n_layers][n_heads]``."""
        return self._stats.to_dict()

    def __repr__(self) -> str:
        first = self[next(iter(self))]
        return (f"AttentionStatsMapping{_model(self.model)}\n"
                f"  prompt: {_short(self.prompt)}\n"
                f"  metrics: {', '.join(self)}: each {_shape(first)} (layers x heads), "
                f"sparsity threshold {self.threshold:g}")

    def _repr_html_(self) -> str:
        return self._stats._repr_html_()


class LayerStatsMapping(Mapping):
    """One prompt's attention statistics per layer: a mapping ``{layer: {metric: float}}``.

    What :meth:`AttentionExtractor.get_attention_stats` returns, in the form Show Me Your
    Attention's scripts read it (``for layer, metrics in stats.items(): metrics["mean"]``).  Keys
    are the integer layers in numeric order; each value is a new dict with, in this order
    (:data:`~openmav.analysis.stats.LAYER_METRICS`):

    - ``mean``, ``std``: of the layer's attention weights, pooled over heads, the rows counted and
      the keys each row sees (:func:`~openmav.analysis.stats.weight_moments`; the mean is fixed by
      the prompt's length, ``2 / (n + 2)`` for an ``n``-token causal prompt: the others say how the
      layer attends);
    - ``entropy``, ``max_weight``, ``sparsity``, ``distance``, ``sink``: the mean over the layer's
      heads of each per-head statistic (:mod:`openmav.analysis.stats`).

    The per-head values are ``heads``: the mapping ``{metric: [n_layers, n_heads]}``
    (:class:`AttentionStatsMapping`, also :meth:`AttentionExtractor.get_head_stats`).  A key that is
    not a layer raises :class:`~openmav.analysis.stats.NotAKey` (a ``KeyError`` and an ``InputError``)
    naming the layers.  ``prompt``, ``threshold``, ``layers`` and ``model`` describe the run.
    """

    def __init__(self, heads: AttentionStatsMapping, moments: dict[str, np.ndarray]):
        self.heads = heads
        self._rows: dict[int, dict[str, float]] = {}
        for i, layer in enumerate(heads.layers):
            row = {m: float(moments[m][i]) for m in ("mean", "std")}
            row.update({m: float(heads[m][i].mean()) for m in METRICS})
            self._rows[layer] = row

    prompt = property(lambda self: self.heads.prompt)
    threshold = property(lambda self: self.heads.threshold)
    layers = property(lambda self: self.heads.layers)
    model = property(lambda self: self.heads.model)
    metrics = LAYER_METRICS

    def __getitem__(self, layer) -> dict[str, float]:
        ok = isinstance(layer, (int, np.integer)) and not isinstance(layer, bool)
        if ok and int(layer) in self._rows:
            return dict(self._rows[int(layer)])
        n = len(self._rows)
        if isinstance(layer, str) and layer in LAYER_METRICS:
            raise NotAKey(f"{layer!r} is a statistic, not a layer: the keys are the layers 0..{n - 1} "
                          f"(stats[layer][{layer!r}]); per head: stats.heads[metric] [layers, heads]")
        raise NotAKey(f"{layer!r} is not a layer: the keys are the layers 0..{n - 1}")

    def __iter__(self):
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def to_rows(self) -> list[dict]:
        """One dict per layer: ``layer`` and every statistic."""
        return [{"layer": layer, **row} for layer, row in self._rows.items()]

    def to_dict(self) -> dict:
        """Plain lists: ``prompt``, ``threshold``, ``layers`` and each statistic ``[n_layers]``."""
        return {"prompt": self.prompt, "threshold": self.threshold, "layers": list(self.layers),
                **{m: [row[m] for row in self._rows.values()] for m in LAYER_METRICS}}

    def __repr__(self) -> str:
        return (f"LayerStatsMapping{_model(self.model)}\n"
                f"  prompt: {_short(self.prompt)}\n"
                f"  layers 0..{len(self) - 1}, each {{{', '.join(LAYER_METRICS)}}}\n"
                f"  per head: .heads, each metric {_shape(self.heads[METRICS[0]])} (layers x heads)")

    def _repr_html_(self) -> str:
        from .notebook import table_html

        rows = [[layer, *(row[m] for m in LAYER_METRICS)] for layer, row in self._rows.items()]
        return table_html(["layer", *LAYER_METRICS], rows, f"attention statistics per layer: {self.prompt!r}")


@dataclass
class Activations:
    """One prompt's forward pass.

    - ``attention``: one ``[1, heads, seq, seq]`` array per layer (layers 0..L-1)
    - ``hidden_states``: ``[1, seq, d]`` per layer boundary, L+1 arrays, or empty when not asked
      for: ``hidden_states[0]`` is the embedding output as the model feeds it to block 0,
      ``hidden_states[l + 1]`` the residual stream after block ``l`` (that block's output)
    - ``final_hidden_state``: ``[1, seq, d]`` the final hidden state *before* the final norm: the
      input of that norm as the model hands it over, or, for a model without one, the last block's
      output (then the same array as ``hidden_states[-1]``); ``None`` when hidden states were not
      asked for
    - ``final_norm``: ``[1, seq, d]`` the output of the norm the model applies after its last
      block, which its unembedding reads; ``None`` when hidden states were not asked for or the
      model has no such norm (post-LayerNorm models such as BERT, DistilBERT, ALBERT, OPT-350m)
    - ``logits``: ``[1, seq, vocab]`` for a causal LM when kept, else ``None`` (encoders have none)
    - ``last_logits``: ``[vocab]`` at the last position for a causal LM, else ``None``
    - ``mlp_mean``: per layer, the MLP hidden neurons' mean over positions ``[d_mlp]`` (comparisons)
    - ``neurons``: ``{layer: [seq, d_mlp]}`` MLP hidden neurons for the layers asked for
    - ``residual``: ``{layer: [seq, d]}`` the output of each block asked for, the same arrays as
      ``hidden_states[layer + 1][0]``
    - ``causal``: whether it came from a causal LM (else a bidirectional encoder)
    - ``model``: the model's name

    The residual convention, the same for every layer (the last included), causal LMs and
    encoders: ``hidden_states`` and ``residual`` are the stream *before* any final norm, the final
    norm's input is ``final_hidden_state`` (equal to ``hidden_states[-1]`` unless the model changes
    the stream between its last block and that norm) and its output is only in ``final_norm``.  So ``hidden_states[-1]`` is not transformers'
    ``output_hidden_states[-1]``, which has the final norm applied for most models (Llama, GPT-2,
    Gemma, ModernBERT): that one is ``final_norm``.  A causal LM's ``logits`` are its unembedding
    of ``final_norm`` (times any logit scale, soft-capped where the model does so).  In
    post-LayerNorm blocks (BERT-style) a block's own LayerNorm is part of the block, so its output
    is normed already; there is no norm after the last block and ``final_norm`` is ``None``.
    """

    prompt: str
    tokens: list[str]
    token_ids: np.ndarray
    attention: list[np.ndarray]
    hidden_states: list[np.ndarray] = field(default_factory=list)
    logits: np.ndarray | None = None
    last_logits: np.ndarray | None = None
    mlp_mean: list[np.ndarray] | None = None
    neurons: dict[int, np.ndarray] | None = None
    residual: dict[int, np.ndarray] | None = None
    causal: bool = True
    model: str = ""
    final_norm: np.ndarray | None = None
    final_hidden_state: np.ndarray | None = None

    def __getitem__(self, key: str):
        return getattr(self, _ALIASES.get(key, key))

    def keys(self):
        return ["prompt", "tokens", "token_ids", "attention", "hidden_states", "final_hidden_state", "final_norm",
                "logits", "last_logits"]

    @property
    def n_layers(self) -> int:
        return len(self.attention)

    def attention_array(self) -> np.ndarray:
        """All layers stacked: ``[L, heads, seq, seq]``."""
        return np.stack([a[0] for a in self.attention])

    def stats(self, threshold: float = 0.01) -> AttentionStatsMapping:
        """Per layer and head statistics ``{metric: [n_layers, n_heads]}`` (see :class:`AttentionStatsMapping`)."""
        import torch

        values = head_statistics(torch.from_numpy(self.attention_array()), self.causal, threshold)
        return AttentionStatsMapping(self.prompt, {k: v.numpy() for k, v in values.items()}, threshold,
                                     model=self.model)

    def layer_stats(self, threshold: float = 0.01) -> LayerStatsMapping:
        """Per layer statistics ``{layer: {metric: float}}`` (see :class:`LayerStatsMapping`)."""
        import torch

        moments = weight_moments(torch.from_numpy(self.attention_array()), self.causal)
        return LayerStatsMapping(self.stats(threshold), {k: v.numpy() for k, v in moments.items()})

    def __repr__(self) -> str:
        kind = "causal LM" if self.causal else "encoder"
        lines = [f"Activations{_model(self.model)} ({kind})",
                 f"  prompt: {_short(self.prompt)} ({_tokens(len(self.tokens))})",
                 f"  attention: {self.n_layers} layers x {_shape(self.attention[0]) if self.attention else 'none'}"]
        if self.hidden_states:
            lines.append(f"  hidden_states: {len(self.hidden_states)} x {_shape(self.hidden_states[0])} "
                         f"(before any final norm); final_hidden_state: {_shape(self.final_hidden_state)}; "
                         f"final_norm: {_shape(self.final_norm)}")
        lines.append(f"  logits: {_shape(self.logits)}")
        if self.neurons:
            lines.append(f"  neurons: layers {sorted(self.neurons)}, each {_shape(next(iter(self.neurons.values())))}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from .notebook import table_html

        shapes = [["model", self.model or "?"], ["tokens", len(self.tokens)], ["layers", self.n_layers],
                  ["heads", self.attention[0].shape[1] if self.attention else 0]]
        if self.hidden_states:
            shapes += [["hidden_states", f"{len(self.hidden_states)} x {_shape(self.hidden_states[0])}"],
                       ["final_hidden_state", _shape(self.final_hidden_state)],
                       ["final_norm", "absent" if self.final_norm is None else str(self.final_norm.shape)]]
        shapes.append(["logits", "absent" if self.logits is None else str(self.logits.shape)])
        tokens = html.escape(" ".join(self.tokens), quote=True)
        return f"<p>{tokens}</p>" + table_html(["field", "value"], shapes, repr(self.prompt))


@dataclass
class NeuronActivations:
    """MLP hidden neurons of one layer ``mlp [seq, d_mlp]`` and, by option, the residual ``[seq, d]``
    (the block's output, before any final norm: :class:`Activations` ``hidden_states[layer + 1][0]``)."""

    prompt: str
    layer: int
    tokens: list[str]
    mlp: np.ndarray
    residual: np.ndarray | None = None
    model: str = ""

    @property
    def shape(self) -> tuple[int, ...]:
        return self.mlp.shape

    def __array__(self, dtype=None, copy=None):
        return self.mlp if dtype is None else self.mlp.astype(dtype)

    def __repr__(self) -> str:
        return (f"NeuronActivations{_model(self.model)}, layer {self.layer}\n"
                f"  prompt: {_short(self.prompt)} ({_tokens(len(self.tokens))})\n"
                f"  mlp: {_shape(self.mlp)} (positions x neurons); residual: {_shape(self.residual)}")

    def _repr_html_(self) -> str:
        from .notebook import table_html

        rows = [["model", self.model or "?"], ["layer", self.layer], ["tokens", len(self.tokens)],
                ["mlp", _shape(self.mlp)], ["residual", _shape(self.residual)]]
        return table_html(["field", "value"], rows, repr(self.prompt))


@dataclass
class Comparison:
    """Results of :meth:`AttentionExtractor.compare_prompts`, in the order the prompts were given."""

    results: list[Activations]

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, i: int) -> Activations:
        return self.results[i]

    def __iter__(self):
        return iter(self.results)

    @property
    def prompts(self) -> list[str]:
        return [r.prompt for r in self.results]

    def items(self):
        return [(r.prompt, r) for r in self.results]

    def __repr__(self) -> str:
        model = self.results[0].model if self.results else ""
        lines = [f"Comparison{_model(model)}: {len(self.results)} prompts"]
        lines += [f"  {i}: {_short(r.prompt, 50)} ({_tokens(len(r.tokens))})" for i, r in enumerate(self.results[:5])]
        if len(self.results) > 5:
            lines.append(f"  ... {len(self.results) - 5} more")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from .notebook import table_html

        return table_html(["#", "prompt", "tokens"], [[i, r.prompt, len(r.tokens)] for i, r in enumerate(self.results)],
                          f"{len(self.results)} prompts")
