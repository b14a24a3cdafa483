"""Interactive attention as a Plotly figure that displays (and saves) with plotly.js embedded.

plotly.js draws titles, tick labels and hover labels as a small subset of HTML (``<b>``,
``<br>``, ``<a href>``, entities), so token text and the prompt go into the figure through
:func:`plotly_text`: ``&``, ``<`` and ``>`` as entities, which plotly.js shows as the
characters themselves.  Plotly writes the figure into its ``<script>`` block as JSON with
``<``, ``>`` and ``/`` escaped, so no text can close that block either.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from ..capture.tokens import disambiguate
from .stats import AnalysisValueError, check_index


def plotly_text(text: str) -> str:
    """``text`` for a Plotly title or label: shown as written, never read as markup.

    Only ``&``, ``<`` and ``>`` are replaced (by ``&amp;``, ``&lt;`` and ``&gt;``): without
    ``<`` no tag can start, and plotly.js shows ``&quot;`` literally, so quotes stay as they are.
    """
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class OfflineFigure(go.Figure):
    """A Plotly figure whose notebook display embeds plotly.js (no CDN, no network)."""

    def _repr_html_(self) -> str:
        return self.to_html(include_plotlyjs=True, full_html=False)

    def _repr_mimebundle_(self, include=None, exclude=None, **kwargs):
        return {"text/html": self._repr_html_()}


def interactive_attention(activations, layers=None) -> OfflineFigure:
    """One heatmap trace per (layer, head); a dropdown shows one at a time (starts at layer 0, head 0).

    ``layers``: the layers to offer (``None``: all), each ``0..L-1`` or ``-L..-1`` from the end; an index
    outside that range is refused (:class:`~openmav.analysis.stats.IndexOutOfRange`), never wrapped."""
    if not callable(getattr(activations, "attention_array", None)):
        raise AnalysisValueError(f"activations must be an Activations result (extract_activations gives one), "
                                 f"got {type(activations).__name__}")
    if layers is not None and (isinstance(layers, (str, bytes)) or not isinstance(layers, (list, tuple, range))):
        raise AnalysisValueError(f"layers must be a list of layer indices or None, got {layers!r:.60}")
    att = activations.attention_array()  # [L, H, q, k]
    n_layers, n_heads = att.shape[:2]
    layers = list(range(n_layers)) if layers is None else [check_index(x, n_layers, "layer") for x in layers]
    if not layers:
        raise AnalysisValueError("layers is empty: name at least one layer, or pass None for all")
    labels = [plotly_text(t) for t in disambiguate(list(activations.tokens))]  # still unique
    prompt = plotly_text(repr(activations.prompt))
    fig = OfflineFigure()
    names = []
    for layer in layers:
        for head in range(n_heads):
            fig.add_trace(go.Heatmap(
                z=np.round(att[layer, head], 5), x=labels, y=labels, zmin=0, zmax=1, colorscale="Viridis",
                visible=not names, name=f"L{layer} H{head}",
                hovertemplate="query %{y}<br>key %{x}<br>weight %{z:.4f}<extra></extra>"))
            names.append((layer, head))
    buttons = []
    for i, (layer, head) in enumerate(names):
        visible = [j == i for j in range(len(names))]
        buttons.append(dict(label=f"layer {layer}, head {head}", method="update",
                            args=[{"visible": visible}, {"title.text": f"{prompt}: layer {layer}, head {head}"}]))
    # the title on the top line, the menu on a line of its own between it and the plot: a long prompt's
    # title runs under no menu
    fig.update_layout(
        title=dict(text=f"{prompt}: layer {names[0][0]}, head {names[0][1]}", x=0.02, xanchor="left",
                   xref="container", y=0.98, yanchor="top", yref="container"),
        updatemenus=[dict(buttons=buttons, direction="down", x=0.0, xanchor="left", y=1.02, yanchor="bottom")],
        xaxis=dict(title="key (attended to)", tickangle=-60), yaxis=dict(title="query", autorange="reversed"),
        margin=dict(t=100), width=760, height=700)
    return fig
