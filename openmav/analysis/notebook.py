"""Jupyter display: small self-contained HTML (no scripts, no network) for results, PNG for figures.

Results, statistics and head scores show a table through ``_repr_html_``; the matplotlib
figures of :class:`~openmav.analysis.visualizer.AttentionVisualizer` show as a PNG through
``_repr_png_`` (:func:`figure_png`), so neither needs ``%matplotlib`` or pyplot.

Every piece of text (prompts, token text, model names, numbers) is escaped with
:func:`html.escape`, quotes included, so none of it can become an element or attribute.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np


def table_html(header: list[str], rows: list[list], caption: str = "") -> str:
    """A plain HTML table; header, cells and caption are escaped, floats shown with 4 decimals."""
    def cell(v) -> str:
        text = f"{v:.4f}" if isinstance(v, (float, np.floating)) else str(v)
        return f"<td>{html.escape(text, quote=True)}</td>"

    head = "".join(f"<th>{html.escape(str(h), quote=True)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    cap = f"<caption>{html.escape(caption, quote=True)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def head_scores_html(scores, k: int = 5) -> str:
    """The top ``k`` heads of each score, as one table."""
    rows = []
    for name in ("previous_token", "duplicate_token", "induction"):
        for layer, head, value in scores.top(name, k):
            rows.append([name, layer, head, float(value)])
    return table_html(["score", "layer", "head", "value"], rows,
                      f"head scores ({scores.n_layers} layers x {scores.n_heads} heads)")


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (Agg; pyplot is not involved)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def figure_png_html(fig) -> str:
    """A matplotlib figure as an inline base64 PNG ``<img>``."""
    data = base64.b64encode(figure_png(fig)).decode("ascii")
    return f'<img src="data:image/png;base64,{data}"/>'
