"""``AttentionVisualizer``: heatmaps, neuron plots, comparisons, layer statistics, head scores.

Every method returns its figure (matplotlib ``Figure`` built without pyplot, so nothing is
shown and no global state is touched; Plotly figures for the interactive view) and saves
it when given ``save_path``.  Heads of one grid share one colour scale unless
``shared_scale=False``.  Interactive HTML embeds plotly.js: it opens with no network; token
text and the prompt are escaped in it (:mod:`openmav.analysis.interactive`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..errors import InputError
from .stats import METRICS

_LABELS = {"entropy": "entropy (nats)", "max_weight": "max weight", "sparsity": "sparsity",
           "distance": "mean distance (tokens)", "sink": "attention to first token"}


def _save(fig, save_path, dpi: int = 120):
    if save_path:
        Path(save_path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save_path, dpi=dpi, bbox_inches="tight")
    return fig


def select_head(attention, layer_idx: int = 0, head_idx: int = 0) -> np.ndarray:
    """One head ``[q, k]`` from a list of layers, ``[L, H, q, k]``, ``[1, H, q, k]``, ``[H, q, k]`` or ``[q, k]``."""
    if isinstance(attention, (list, tuple)):
        if not -len(attention) <= layer_idx < len(attention):
            raise InputError(f"layer index {layer_idx} is out of range: valid 0..{len(attention) - 1}")
        attention = attention[layer_idx]
    a = np.asarray(attention, dtype=np.float32)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    elif a.ndim == 4:
        a = a[layer_idx]
    if a.ndim == 3:
        if not -a.shape[0] <= head_idx < a.shape[0]:
            raise InputError(f"head index {head_idx} is out of range: valid 0..{a.shape[0] - 1}")
        a = a[head_idx]
    if a.ndim != 2:
        raise InputError(f"attention must end in [query, key]; got shape {np.shape(attention)}")
    return a


def _layer_heads(attention, layer_idx: int) -> np.ndarray:
    if isinstance(attention, (list, tuple)):
        attention = attention[layer_idx]
    a = np.asarray(attention, dtype=np.float32)
    return a[0] if a.ndim == 4 else a


class AttentionVisualizer:
    """Plots for :class:`~openmav.analysis.extractor.AttentionExtractor` results."""

    def __init__(self, cmap: str = "viridis", dpi: int = 120):
        self.cmap = cmap
        self.dpi = dpi

    def plot_attention_heatmap(self, attention_weights, tokens, layer_idx: int = 0, head_idx: int = 0,
                               save_path=None, title: str | None = None) -> Figure:
        """One head's ``[query, key]`` probabilities; rows are queries, columns keys."""
        a = select_head(attention_weights, layer_idx, head_idx)
        size = max(4.0, 0.35 * len(tokens) + 2)
        fig = Figure(figsize=(size + 1, size))
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
        heads = _layer_heads(attention_weights, layer_idx)
        n = heads.shape[0]
        cols = cols or min(n, 4)
        rows = -(-n // cols)
        fig = Figure(figsize=(3.2 * cols, 3.0 * rows + 0.6))
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
        fig.suptitle(f"layer {layer_idx}: all {n} heads" + (" (shared colour scale)" if shared_scale else ""))
        if shared_scale:
            fig.colorbar(images[0], ax=fig.axes, fraction=0.02)
        return _save(fig, save_path, self.dpi)

    def plot_neuron_activations(self, activations, tokens, top_k: int = 50, layer_idx: int | None = None,
                                save_path=None) -> Figure:
        """The ``top_k`` neurons that vary most over positions, ``[tokens, neurons]``, diverging at 0."""
        acts = np.asarray(getattr(activations, "mlp", activations), dtype=np.float32)
        layer_idx = getattr(activations, "layer", layer_idx)
        order = np.sort(np.argsort(acts.var(0))[::-1][:top_k])
        data = acts[:, order]
        lim = float(np.abs(data).max()) or 1.0
        fig = Figure(figsize=(max(6.0, 0.18 * len(order) + 2), max(3.0, 0.3 * len(tokens) + 1.5)))
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
        """Mean MLP activation per prompt of the ``top_k`` neurons whose means differ most between prompts."""
        means = np.stack([r.mlp_mean[layer_idx] for r in comparison])  # [prompts, d_mlp]
        spread = means.max(0) - means.min(0)
        order = np.argsort(spread)[::-1][:top_k]
        labels = labels or [r.prompt if len(r.prompt) <= 40 else r.prompt[:37] + "..." for r in comparison]
        fig = Figure(figsize=(max(7.0, 0.4 * len(order) + 2), 4.5))
        ax = fig.add_subplot()
        x = np.arange(len(order))
        for row, label in zip(means, labels):
            ax.plot(x, row[order], marker="o", label=label)
        ax.set_xticks(x, [str(i) for i in order], rotation=90, fontsize=7)
        ax.set_xlabel("MLP neuron (largest spread between prompts first)")
        ax.set_ylabel("mean activation over positions")
        n_layers = len(comparison[0].mlp_mean)
        ax.set_title(f"neurons that differ most between prompts, layer {layer_idx % n_layers}")
        ax.legend(fontsize=7)
        fig.neuron_indices = order
        return _save(fig, save_path, self.dpi)

    def plot_layer_statistics(self, stats, save_path=None, metrics=METRICS) -> Figure:
        """Each statistic against the layer number (numeric axis): mean over heads, min-max band."""
        layers = np.asarray(stats.layers)
        fig = Figure(figsize=(3.4 * len(metrics), 3.4))
        for i, metric in enumerate(metrics):
            ax = fig.add_subplot(1, len(metrics), i + 1)
            values = np.asarray(stats[metric])
            ax.fill_between(layers, values.min(1), values.max(1), alpha=0.25, label="min-max over heads")
            ax.plot(layers, values.mean(1), marker="o", markersize=3, label="mean over heads")
            ax.set_xlabel("layer")
            ax.set_title(_LABELS.get(metric, metric), fontsize=10)
        fig.axes[0].legend(fontsize=7)
        fig.suptitle(f"attention statistics per layer: {stats.prompt[:60]!r}", fontsize=10)
        fig.tight_layout()
        return _save(fig, save_path, self.dpi)

    def plot_head_scores(self, scores, save_path=None) -> Figure:
        """Previous-token, duplicate-token and induction scores as layers x heads heatmaps (0..1)."""
        from .head_scores import SCORE_NAMES

        fig = Figure(figsize=(4.2 * 3, max(3.5, 0.22 * scores.n_layers + 1.5)))
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
        from .interactive import interactive_attention

        fig = interactive_attention(activations, layers)
        if save_path:
            Path(save_path).parent.mkdir(parents=True, exist_ok=True)
            fig.write_html(str(save_path), include_plotlyjs=True, full_html=True)
        return fig
