"""Attention panels: the new token's attention over earlier tokens, and a layers × heads entropy map."""

from __future__ import annotations

import math

import numpy as np
from rich.text import Text

from .bars import MIN_BAR, MISSING, SHADES, axis_labels, bar, column_major, fit, lines_text, shade, styled_runs
from .text_panels import BuiltinPanel

NO_ATTENTION = "no attention captured (not recorded, or the model has no attention layers)"


def resolve_layer(layer: int, n_layers: int) -> int:
    """A 0-based layer index; negative counts from the end; clamped to the model's layers."""
    if layer < 0:
        layer += n_layers
    return min(max(layer, 0), n_layers - 1)


def layer_has_attention(record, rows, layer: int) -> bool:
    """Whether ``layer`` has attention: its entropies are finite (a hybrid model's other layers
    have NaN entropy and zero rows)."""
    ent = getattr(record, "attention_entropy", None)
    if ent is not None:
        return bool(np.isfinite(np.asarray(ent[layer], dtype=np.float64)).all())
    return bool(np.asarray(rows[layer]).sum() > 0)


def _first_fitting(candidates: list[str], width: int) -> str:
    for c in candidates:
        if len(c) <= width:
            return c
    return fit(candidates[-1], width).rstrip()


class AttentionPanel(BuiltinPanel):
    """The new token's attention row for one layer and one head (or the mean over heads),
    the keys sorted by weight, each with its position and token text.  The bar is the
    weight itself (full bar = 1); a narrow panel leaves the bar out.  The default layer
    (-1) is the last layer with attention; a chosen layer without attention says so."""

    name = "attention"
    style = "bright_magenta"
    needs = frozenset({"attention"})

    def _layer_head(self):
        m = self.measurements
        rows = m.attention_rows
        layer = resolve_layer(self.options.layer, rows.shape[0])
        if self.options.layer == -1:  # the default, "the last layer": the last one that has attention
            while layer > 0 and not layer_has_attention(m.record, rows, layer):
                layer -= 1
        head = self.options.head
        if head is not None:
            head = head % rows.shape[1]
        return layer, head

    def get_titles(self) -> list[str]:
        if self.measurements is None or self.measurements.attention_rows is None:
            return ["Attention"]
        layer, head = self._layer_head()
        which = "mean of heads" if head is None else f"H{head}"
        short = "mean" if head is None else f"H{head}"
        return [f"Attention L{layer} {which}", f"Attn L{layer} {short}"]

    def get_title(self) -> str:
        return self.get_titles()[0]

    def get_panel_content(self):
        m = self.measurements
        if m.attention_rows is None:
            return Text(NO_ATTENTION, style="dim")
        layer, head = self._layer_head()
        if not layer_has_attention(m.record, m.attention_rows, layer):
            return Text(f"L{layer} has no attention (n/a): pick another layer with ↑/↓", style="dim")
        rows = m.attention_rows[layer]
        weights = rows.mean(axis=0) if head is None else rows[head]
        context = m.record.context if m.record is not None else ()
        order = np.argsort(-weights, kind="stable")
        n = len(order) if not self.height else min(len(order), self.height)
        pw = len(str(len(weights) - 1))
        avail = self.width - pw - 1 - 6  # position, " 0.123"
        tok_w = max(4, min(14, avail - 1 - MIN_BAR))
        barlen = min(self.options.max_bar_length, avail - tok_w - 1)
        if barlen < MIN_BAR:
            barlen, tok_w = 0, max(1, min(20, avail))
        lines = []
        for j in order[:n]:
            label = context[j].display if j < len(context) else "?"
            line = Text()
            line.append(f"{j:>{pw}} ", style="dim")
            line.append(fit(label, tok_w))
            if barlen:
                line.append(" ")
                line.append(bar(float(weights[j]), barlen), style="bright_magenta")
            line.append(f" {float(weights[j]):.3f}")
            lines.append(line)
        return lines_text(lines)


class HeadEntropyPanel(BuiltinPanel):
    """A layers × heads map: each cell shades the entropy of one head's attention row,
    divided by ln(number of keys), its largest possible value (``░`` low … ``█`` high;
    ``·`` a layer without attention).  The first line is the legend.  Layers are rows
    (packed into columns) when they fit, else columns with heads as rows."""

    name = "head_entropy"
    title_text = "Head entropy (÷ ln keys)"
    short_titles = ("Head entropy", "Heads")
    style = "bright_yellow"
    needs = frozenset({"attention"})

    def get_panel_content(self):
        m = self.measurements
        rec = m.record
        if rec is None or rec.attention_entropy is None:
            return Text(NO_ATTENTION, style="dim")
        ent = np.asarray(rec.attention_entropy, dtype=np.float64)
        top = math.log(rec.seq_len) if rec.seq_len > 1 else 1.0
        frac = ent / top
        n_layers, n_heads = frac.shape
        height = None if not self.height else max(1, self.height - 1)
        rows = self._layers_as_rows(frac, height)
        heads = [f"heads 0–{n_heads - 1} →, ÷ ln keys: 0 {SHADES} 1, {MISSING} n/a"] if rows else []
        legend = _first_fitting(heads + [f"÷ ln keys: 0 {SHADES} 1, {MISSING} n/a", f"0 {SHADES} 1"], self.width)
        lines = rows or self._layers_as_columns(frac, height)
        return lines_text([Text(legend, style="dim"), *lines])

    def _cells(self, values) -> Text:
        return styled_runs("".join(shade(v) for v in values), self.style)

    def _layers_as_rows(self, frac, height):
        """``L{i} ░▒▓█…`` a line per layer, packed into columns; ``None`` when they do not fit."""
        n_layers, n_heads = frac.shape
        lw = len(f"L{n_layers - 1}")
        cell_w = lw + 1 + n_heads
        ncols = 1 if not height else math.ceil(n_layers / height)
        if ncols * cell_w + 2 * (ncols - 1) > self.width:
            return None
        cells = [Text(f"L{i}".rjust(lw) + " ", style="dim").append_text(self._cells(frac[i])) for i in range(n_layers)]
        lines = column_major(cells, ncols, gap=2)
        return lines

    def _layers_as_columns(self, frac, height):
        """Heads as rows (``H{h}``), layers as columns (numbered underneath); what does not fit
        is left out and said."""
        n_layers, n_heads = frac.shape
        hw = len(f"H{n_heads - 1}")
        room = max(1, self.width - hw - 1)
        shown_layers = min(n_layers, room)
        rows = n_heads if not height else min(n_heads, max(1, height - 1))
        lines = []
        for h in range(rows):
            line = Text()
            line.append(f"H{h}".rjust(hw) + " ", style="dim")
            line.append_text(self._cells(frac[:shown_layers, h]))
            lines.append(line)
        left_out = []
        if rows < n_heads:
            left_out.append(f"H{rows}–H{n_heads - 1}")
        if shown_layers < n_layers:
            left_out.append(f"L{shown_layers}–L{n_layers - 1}")
        if left_out:
            bottom = fit(" " * (hw + 1) + " and ".join(left_out) + " hidden", self.width).rstrip()
        else:
            bottom = " " * (hw + 1) + axis_labels(shown_layers, 1, room)
        if height is None or rows < height:
            lines.append(Text(bottom, style="dim"))
        return lines
