"""Attention panels: the new token's attention over earlier tokens, and a layers × heads entropy strip."""

from __future__ import annotations

import math

import numpy as np
from rich.text import Text

from .bars import bar, clip_text, pack_columns, shade
from .text_panels import BuiltinPanel


def resolve_layer(layer: int, n_layers: int) -> int:
    """A 0-based layer index; negative counts from the end; clamped to the model's layers."""
    if layer < 0:
        layer += n_layers
    return min(max(layer, 0), n_layers - 1)


class AttentionPanel(BuiltinPanel):
    """The new token's attention row for one layer and one head (or the mean over heads),
    the keys sorted by weight, each with its position and token text."""

    name = "attention"
    style = "bright_magenta"
    needs = frozenset({"attention"})

    def _layer_head(self):
        rows = self.measurements.attention_rows
        layer = resolve_layer(self.options.layer, rows.shape[0])
        head = self.options.head
        if head is not None:
            head = head % rows.shape[1]
        return layer, head

    def get_title(self) -> str:
        if self.measurements is None or self.measurements.attention_rows is None:
            return "Attention"
        layer, head = self._layer_head()
        return f"Attention L{layer} " + ("mean of heads" if head is None else f"H{head}")

    def get_panel_content(self):
        m = self.measurements
        if m.attention_rows is None:
            return Text("attention not captured", style="dim")
        layer, head = self._layer_head()
        rows = m.attention_rows[layer]
        weights = rows.mean(axis=0) if head is None else rows[head]
        context = m.record.context if m.record is not None else ()
        order = np.argsort(-weights, kind="stable")
        n = len(order) if not self.height else min(len(order), self.height)
        pw = len(str(len(weights) - 1))
        tok_w = max(4, min(14, self.width - pw - 14))
        barlen = max(1, min(self.options.max_bar_length, self.width - pw - tok_w - 9))
        out = Text()
        for line, j in enumerate(order[:n]):
            label = context[j].display if j < len(context) else "?"
            out.append(f"{j:>{pw}} ", style="dim")
            out.append(clip_text(label, tok_w).ljust(tok_w) + " ")
            out.append(bar(float(weights[j]), barlen), style="bright_magenta")
            out.append(f" {float(weights[j]):.3f}")
            if line < n - 1:
                out.append("\n")
        return out


class HeadEntropyPanel(BuiltinPanel):
    """A layers × heads strip: each cell shades the entropy of one head's attention row,
    divided by ln(number of keys), its largest possible value (blank 0, █ 1)."""

    name = "head_entropy"
    title_text = "Head entropy (÷ ln keys)"
    style = "bright_yellow"
    needs = frozenset({"attention"})

    def get_panel_content(self):
        m = self.measurements
        rec = m.record
        if rec is None or rec.attention_entropy is None:
            return Text("attention not captured", style="dim")
        ent = np.asarray(rec.attention_entropy, dtype=np.float64)
        top = math.log(rec.seq_len) if rec.seq_len > 1 else 1.0
        n_layers, n_heads = ent.shape
        lw = len(f"L{n_layers - 1}")
        cells = []
        for i in range(n_layers):
            cell = Text(f"L{i}".rjust(lw) + " ", style="dim")
            cell.append("".join(shade(v / top) for v in ent[i]), style="bright_yellow")
            cells.append(cell)
        height = None if not self.height else max(1, self.height - 1)
        legend = Text(f"{'H'.rjust(lw)} 0..{n_heads - 1}  low ░▒▓█ high\n", style="dim")
        return legend + pack_columns(cells, height, self.width)
