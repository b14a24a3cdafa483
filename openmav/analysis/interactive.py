"""Interactive attention as a Plotly figure that displays (and saves) with plotly.js embedded."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from ..capture.tokens import disambiguate


class OfflineFigure(go.Figure):
    """A Plotly figure whose notebook display embeds plotly.js (no CDN, no network)."""

    def _repr_html_(self) -> str:
        return self.to_html(include_plotlyjs=True, full_html=False)

    def _repr_mimebundle_(self, include=None, exclude=None, **kwargs):
        return {"text/html": self._repr_html_()}


def interactive_attention(activations, layers=None) -> OfflineFigure:
    """One heatmap trace per (layer, head); a dropdown shows one at a time (starts at layer 0, head 0)."""
    att = activations.attention_array()  # [L, H, q, k]
    n_layers, n_heads = att.shape[:2]
    layers = list(range(n_layers)) if layers is None else [int(x) % n_layers for x in layers]
    labels = disambiguate(list(activations.tokens))
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
                            args=[{"visible": visible}, {"title.text": f"{activations.prompt!r}: layer {layer}, head {head}"}]))
    fig.update_layout(
        title=dict(text=f"{activations.prompt!r}: layer {names[0][0]}, head {names[0][1]}"),
        updatemenus=[dict(buttons=buttons, direction="down", x=1.0, xanchor="right", y=1.15)],
        xaxis=dict(title="key (attended to)", tickangle=-60), yaxis=dict(title="query", autorange="reversed"),
        width=760, height=700)
    return fig
