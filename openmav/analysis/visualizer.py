"""``AttentionVisualizer``: heatmaps, neuron plots, comparisons, layer statistics, head scores.

Every method returns its figure and saves it when given ``save_path``.  The matplotlib
figures are :class:`NotebookFigure` objects, built without pyplot: nothing is shown and no
global state is touched, and Jupyter displays one that ends a cell by itself (through
``_repr_png_``), with no ``%matplotlib`` magic.  The interactive view is a Plotly figure.
Heads of one grid share one colour scale unless ``shared_scale=False``.  Interactive HTML
embeds plotly.js: it opens with no network; token text and the prompt are escaped in it
(:mod:`openmav.analysis.interactive`).

A layer, head or prompt index out of range raises
:class:`~openmav.analysis.stats.IndexOutOfRange` (an ``IndexError`` and a ``ValueError``)
naming the valid range.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .checks import check_cmap, check_dpi, check_figure_path, check_flag, check_labels
from .stats import METRICS, AnalysisValueError, check_index

_LABELS = {"entropy": "entropy (nats)", "max_weight": "max weight", "sparsity": "sparsity",
           "distance": "mean distance (tokens),\nfirst token counted as 0", "sink": "attention to first token"}


class NotebookFigure(Figure):
    """A matplotlib ``Figure`` that Jupyter shows as a PNG when it ends a cell (no magic needed)."""

    def _repr_png_(self) -> bytes:
        from .notebook import figure_png

        return figure_png(self)


def _save(fig, save_path, dpi: int = 120):
    if save_path:
        Path(save_path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save_path, dpi=dpi, bbox_inches="tight")
    return fig


def _n_layers(attention) -> int | None:
    if isinstance(attention, (list, tuple)):
        return len(attention)
    shape = np.shape(attention)
    return shape[0] if len(shape) == 4 and shape[0] != 1 else None


def select_head(attention, layer_idx: int = 0, head_idx: int = 0) -> np.ndarray:
    """One head ``[q, k]`` from a list of layers, ``[L, H, q, k]``, ``[1, H, q, k]``, ``[H, q, k]`` or ``[q, k]``."""
    heads = _layer_heads(attention, layer_idx)
    if heads.ndim == 3:
        return heads[check_index(head_idx, heads.shape[0], "head", f"layer {layer_idx}")]
    return heads


def _layer_heads(attention, layer_idx: int) -> np.ndarray:
    """The heads ``[H, q, k]`` of one layer (or a lone ``[q, k]`` head); the layer index is checked."""
    n_layers = _n_layers(attention)
    if n_layers is not None:
        attention = attention[check_index(layer_idx, n_layers, "layer")]
    a = np.asarray(attention, dtype=np.float32)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim not in (2, 3):
        raise AnalysisValueError(f"attention must end in [query, key]; got shape {np.shape(attention)}")
    return a


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def _check_top_k(top_k) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise AnalysisValueError(f"top_k must be an integer >= 1, got {top_k!r}")


def _check_tokens(tokens, n: int, what: str = "keys") -> None:
    if len(tokens) != n:
        raise AnalysisValueError(f"{len(tokens)} tokens for {n} {what}: give the tokens of the same prompt")


class AttentionVisualizer:
    """Plots for :class:`~openmav.analysis.extractor.AttentionExtractor` results."""

    def __init__(self, cmap: str = "viridis", dpi: int = 120):
        check_cmap(cmap)
        check_dpi(dpi)
        self.cmap = cmap
        self.dpi = dpi

    def plot_attention_heatmap(self, attention_weights, tokens, layer_idx: int = 0, head_idx: int = 0,
                               save_path=None, title: str | None = None) -> Figure:
        """One head's ``[query, key]`` probabilities; rows are queries, columns keys."""
        check_figure_path(save_path)
        check_labels("tokens", tokens)
        a = select_head(attention_weights, layer_idx, head_idx)
        _check_tokens(tokens, a.shape[-1])
        size = max(4.0, 0.35 * len(tokens) + 2)
        fig = NotebookFigure(figsize=(size + 1, size))
        ax = fig.add_subplot()
        im = ax.imshow(a, cmap=self.cmap, vmin=0.0, vmax=float(a.max()) or 1.0)
        ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=8)
        ax.set_yticks(range(len(tokens)), tokens, fontsize=8)
        ax.set_xlabel("key (attended to)")
        ax.set_ylabel("query")
        ax.set_title(title or f"layer {layer_idx}, head {head_idx}")
        fig.colorbar(im, ax=ax, fraction=0.046)
        return _save(fig, save_path, self.dpi)

    def plot_all_heads(self, attention_weights, tokens, layer_idx: int = 0, save_path=None,
                       shared_scale: bool = True, cols: int | None = None) -> Figure:
        """Every head of one layer in a grid; one colour scale for all (``shared_scale``)."""
        check_figure_path(save_path)
        check_labels("tokens", tokens)
        check_flag("shared_scale", shared_scale)
        heads = _layer_heads(attention_weights, layer_idx)
        if heads.ndim == 2:
            heads = heads[None]
        _check_tokens(tokens, heads.shape[-1])
        n_layers = _n_layers(attention_weights)
        shown = layer_idx % n_layers if n_layers else layer_idx
        n = heads.shape[0]
        if cols is not None and (isinstance(cols, bool) or not isinstance(cols, (int, np.integer)) or cols < 1):
            raise AnalysisValueError(f"cols must be an integer >= 1, got {cols!r}")
        cols = cols or min(n, 4)
        rows = -(-n // cols)
        fig = NotebookFigure(figsize=(3.2 * cols, 3.0 * rows + 0.6))
        vmax = float(heads.max()) or 1.0
        images = []
        for h in range(n):
            ax = fig.add_subplot(rows, cols, h + 1)
            im = ax.imshow(heads[h], cmap=self.cmap, vmin=0.0, vmax=vmax if shared_scale else float(heads[h].max()))
            images.append(im)
            ax.set_title(f"head {h}", fontsize=9)
            ticks = range(len(tokens)) if len(tokens) <= 24 else []
            ax.set_xticks(ticks, [tokens[i] for i in ticks], rotation=90, fontsize=6)
            ax.set_yticks(ticks, [tokens[i] for i in ticks], fontsize=6)
        fig.suptitle(f"layer {shown}: all {n} heads" + (" (shared colour scale)" if shared_scale else ""))
        if shared_scale:
            fig.colorbar(images[0], ax=fig.axes, fraction=0.02)
        return _save(fig, save_path, self.dpi)

    def plot_neuron_activations(self, activations, tokens, top_k: int = 50, layer_idx: int | None = None,
                                save_path=None) -> Figure:
        """The ``top_k`` neurons that vary most over positions, ``[tokens, neurons]``, diverging at 0."""
        check_figure_path(save_path)
        check_labels("tokens", tokens)
        acts = np.asarray(getattr(activations, "mlp", activations), dtype=np.float32)
        if acts.ndim != 2:
            raise AnalysisValueError(f"neuron activations must be [positions, neurons]; got shape {acts.shape}")
        _check_top_k(top_k)
        _check_tokens(tokens, acts.shape[0], "positions")
        layer_idx = getattr(activations, "layer", layer_idx)
        order = np.sort(np.argsort(acts.var(0))[::-1][:top_k])
        data = acts[:, order]
        lim = float(np.abs(data).max()) or 1.0
        fig = NotebookFigure(figsize=(max(6.0, 0.18 * len(order) + 2), max(3.0, 0.3 * len(tokens) + 1.5)))
        ax = fig.add_subplot()
        im = ax.imshow(data, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_yticks(range(len(tokens)), tokens, fontsize=8)
        ax.set_xticks(range(len(order)), [str(i) for i in order], rotation=90, fontsize=6)
        ax.set_xlabel(f"MLP neuron (top {len(order)} by variance over positions)")
        ax.set_title("MLP neuron activations" + (f", layer {layer_idx}" if layer_idx is not None else ""))
        fig.colorbar(im, ax=ax, fraction=0.03)
        fig.neuron_indices = order
        return _save(fig, save_path, self.dpi)

    def plot_activation_comparison(self, comparison, layer_idx: int = -1, top_k: int = 20,
                                   labels: list[str] | None = None, save_path=None) -> Figure:
        """Per prompt, the mean MLP activation of the ``top_k`` neurons of ``layer_idx`` that differ most.

        ``comparison`` is a :class:`~openmav.analysis.compare.PromptComparison`
        (:func:`openmav.analysis.compare.compare_prompts`, or ``compare_prompts`` of
        :class:`openmav.model_loader.AttentionExtractor`): the means are over the positions it
        compares (by default those every prompt has, the first left out), as in its differences table.
        """
        check_figure_path(save_path)
        check_labels("labels", labels, optional=True)
        from .compare import PromptComparison

        if not isinstance(comparison, PromptComparison):
            raise AnalysisValueError(
                "plot_activation_comparison needs openmav.analysis.compare.compare_prompts(extractor, prompts) (what "
                "openmav.model_loader's compare_prompts returns for 2 or more prompts of 2 or more tokens): a plain "
                "Comparison holds only means over all positions, the first (attention-sink) position included")
        if comparison.neuron_values is None:
            raise AnalysisValueError("this comparison has no MLP neuron values (a model without per-neuron MLPs)")
        _check_top_k(top_k)
        layer = check_index(layer_idx, comparison.neuron_values.shape[1], "layer", "this comparison")
        means = comparison.neuron_values[:, layer]  # [prompts, d_mlp]
        spread = means.max(0) - means.min(0)
        order = np.argsort(spread, kind="stable")[::-1][:top_k]
        if labels is not None and len(labels) != len(comparison):
            raise AnalysisValueError(f"{len(labels)} labels for {len(comparison)} prompts: give one per prompt")
        labels = labels or [f"p{i}: {_clip(r.prompt)}" for i, r in enumerate(comparison)]
        fig = NotebookFigure(figsize=(max(7.0, 0.4 * len(order) + 2), 4.5))
        ax = fig.add_subplot()
        x = np.arange(len(order))
        for row, label in zip(means, labels):
            ax.plot(x, row[order], marker="o", label=label)
        ax.set_xticks(x, [str(i) for i in order], rotation=90, fontsize=7)
        ax.set_xlabel("MLP neuron (largest spread between prompts first)")
        span = comparison.spans[0]
        where = (f"positions {span.start}..{span.stop - 1}" if comparison.positions == "aligned"
                 else f"positions {span.start}..n-1 of each prompt")
        ax.set_ylabel(f"mean activation,\n{where}")
        ax.set_title(f"neurons that differ most between prompts, layer {layer}")
        ax.legend(fontsize=7)
        fig.neuron_indices = order
        return _save(fig, save_path, self.dpi)

    def plot_layer_statistics(self, stats, save_path=None, metrics=METRICS, note: str = "") -> Figure:
        """Each statistic against the layer number (numeric axis), mean over heads.

        ``stats``: one prompt's statistics (what ``get_attention_stats`` returns, per layer, or
        ``get_head_stats``, a mapping ``{metric: [layers, heads]}``; drawn with the min-max band over
        heads), or a list of them, or a :class:`~openmav.analysis.compare.PromptComparison` (one line
        per prompt, in one colour each).
        """
        check_figure_path(save_path)
        if hasattr(stats, "head_stats"):
            stats = stats.head_stats()
        many = isinstance(stats, (list, tuple))
        series = [getattr(st, "heads", st) for st in (stats if many else [stats])]  # per layer -> per head
        if not series:
            raise AnalysisValueError("no statistics to plot: give at least one prompt's statistics")
        unknown = [m for m in metrics if m not in METRICS]
        if unknown or not metrics:
            raise AnalysisValueError(f"unknown statistic {unknown[0]!r}; known: {', '.join(METRICS)}" if unknown
                                     else "no statistics named: give at least one metric")
        fig = NotebookFigure(figsize=(3.4 * len(metrics), 3.4 + (0.25 * len(series) if many else 0)))
        for i, metric in enumerate(metrics):
            ax = fig.add_subplot(1, len(metrics), i + 1)
            for p, st in enumerate(series):
                layers = np.asarray(st.layers)
                values = np.asarray(st[metric])
                if not many:
                    ax.fill_between(layers, values.min(1), values.max(1), alpha=0.25, label="min-max over heads")
                label = f"p{p}: {_clip(st.prompt)}" if many else "mean over heads"
                ax.plot(layers, values.mean(1), marker="o", markersize=3, label=label)
            ax.set_xlabel("layer")
            ax.set_title(_LABELS.get(metric, metric), fontsize=10)
        if many:
            fig.suptitle("attention statistics per layer, mean over heads" + (f"\n{note}" if note else ""), fontsize=10)
            handles, names = fig.axes[0].get_legend_handles_labels()
            fig.legend(handles, names, loc="lower center", ncol=min(len(series), 3), fontsize=8, frameon=False)
            fig.tight_layout(rect=(0, 0.07 + 0.05 * ((len(series) - 1) // 3), 1, 1))
        else:
            fig.axes[0].legend(fontsize=7)
            fig.suptitle(f"attention statistics per layer: {_clip(series[0].prompt, 60)!r}"
                         + (f"\n{note}" if note else ""), fontsize=10)
            fig.tight_layout()
        return _save(fig, save_path, self.dpi)

    def plot_head_scores(self, scores, save_path=None) -> Figure:
        """Previous-token, duplicate-token and induction scores as layers x heads heatmaps (0..1)."""
        check_figure_path(save_path)
        from .head_scores import SCORE_NAMES

        fig = NotebookFigure(figsize=(4.2 * 3, max(3.5, 0.22 * scores.n_layers + 1.5)))
        for i, name in enumerate(SCORE_NAMES):
            ax = fig.add_subplot(1, 3, i + 1)
            im = ax.imshow(scores.get(name), cmap="magma", vmin=0, vmax=1, aspect="auto", origin="upper")
            ax.set_title(name.replace("_", "-") + " score", fontsize=10)
            ax.set_xlabel("head")
            ax.set_ylabel("layer")
            ax.set_xticks(range(scores.n_heads))
            step = 1 if scores.n_layers <= 16 else 2
            ax.set_yticks(range(0, scores.n_layers, step))
        fig.colorbar(im, ax=fig.axes, fraction=0.02)
        return _save(fig, save_path, self.dpi)

    def plot_interactive_attention(self, activations, save_path=None, layers=None):
        """Plotly heatmap of every (layer, head) of a prompt, picked from a menu; HTML with plotly.js embedded.

        Token labels and the prompt in the title are escaped (:func:`~openmav.analysis.interactive.plotly_text`),
        and Plotly escapes the figure's JSON in its ``<script>``: no text from the prompt becomes markup.
        """
        check_figure_path(save_path, html=True)
        from .interactive import interactive_attention

        fig = interactive_attention(activations, layers)
        if save_path:
            Path(save_path).parent.mkdir(parents=True, exist_ok=True)
            fig.write_html(str(save_path), include_plotlyjs=True, full_html=True)
        return fig
