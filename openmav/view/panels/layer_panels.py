"""Per-layer panels: MLP output, attention entropy, residual stream, logit lens.

Layers are numbered from 0 (``L0`` is the first block) in every panel.

A per-layer value panel draws one of two ways, whichever its size allows:

- **rows**: ``L{i} <bar> value``, one layer a line, packed into as many columns as
  the height needs, when every bar still gets at least :data:`~.bars.MIN_BAR` cells;
- **columns**: a vertical bar per layer (layer numbers underneath), when the panel is
  too short for rows; more layers than cells share a column (its largest value).

The scale is chosen per panel and named in the title: with ``--scale auto`` (the
``mav`` default) ``log`` when one layer is more than 10 times the median (so it
cannot flatten the rest), else ``linear``.  The first line is the legend: the
scale and the value of a full bar.  A layer without a value (a layer without
attention in a hybrid model) is a dim ``·`` and ``n/a``.
"""

from __future__ import annotations

import math

import numpy as np
from rich.cells import cell_len
from rich.text import Text

from .attention_panels import NO_ATTENTION
from .bars import (MIN_BAR, MISSING, axis_labels, bar, choose_scale, column_chart, column_major, fit, lines_text,
                   log_range, scaled, styled_runs)
from .text_panels import BuiltinPanel


def _best(candidates: list[str], width: int) -> str:
    """The first of ``candidates`` that fits ``width`` cells, else the last cut to it."""
    for c in candidates:
        if cell_len(c) <= width:
            return c
    return fit(candidates[-1], width).rstrip()


def _legend(values, scale: str, fmt: str, width: int, group: int = 1) -> Text:
    """The first line of a per-layer panel: the scale and what the shortest and full bars mean."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    if not ok.any():
        return Text(_best(["no values", "n/a"], width), style="dim")
    top = int(np.nanargmax(np.where(ok, np.abs(v), np.nan)))
    full = fmt.format(float(abs(v[top])))
    grouped = [f", {group} layers a column"] if group > 1 else []
    name = scale
    if scale == "linear":
        ends = [f"linear scale: empty 0, full {full} (L{top})", f"linear: 0 … {full} (L{top})", f"linear: 0…{full}"]
    else:
        if scale == "log":
            low = fmt.format(log_range(v)[0])
        else:
            low = fmt.format(float(np.nanmin(np.where(ok, v, np.nan))))
        ends = [f"{name} scale: shortest {low}, full {full} (L{top})", f"{name}: {low} … {full} (L{top})",
                f"{name}: {low}…{full}"]
    candidates = [e + g for e in ends for g in grouped] + ends + [name]
    return Text(_best(candidates, width), style="dim")


def layer_rows(values, fractions, width: int, height: int | None, max_bar: int, style: str, fmt: str) -> Text | None:
    """``L{i} <bar> value`` rows packed into columns, or ``None`` when a bar would get
    fewer than :data:`MIN_BAR` cells at this size.  ``height`` counts the rows available."""
    n = len(values)
    labels = [f"L{i}" for i in range(n)]
    texts = ["n/a" if not math.isfinite(float(v)) else fmt.format(float(v)) for v in values]
    lw, vw = max(map(len, labels)), max(map(len, texts))
    ncols = 1 if not height else math.ceil(n / max(1, height))
    colw = (width - 2 * (ncols - 1)) // ncols
    barlen = min(max_bar, colw - lw - vw - 2)
    if barlen < MIN_BAR:
        return None
    cells = []
    for i in range(n):
        cell = Text(labels[i].rjust(lw) + " ", style="dim")
        f = float(fractions[i])
        if math.isfinite(f):
            cell.append(bar(f, barlen), style=style)
            cell.append(" " + texts[i].rjust(vw))
        else:
            cell.append(MISSING.ljust(barlen), style="dim")
            cell.append(" " + texts[i].rjust(vw), style="dim")
        cells.append(cell)
    lines = column_major(cells, ncols, gap=colw - (lw + barlen + vw + 2) + 2)
    return lines_text(lines)


def layer_columns(fractions, width: int, rows: int, style: str, axis: bool = True) -> tuple[list[Text], int]:
    """A vertical bar per layer, ``rows`` lines high, and a line of layer numbers; layers
    share a column (its largest value) when there are more than ``width``.  Returns the
    lines and the number of layers a column."""
    n = len(fractions)
    group = max(1, math.ceil(n / max(1, width)))
    f = np.asarray(fractions, dtype=np.float64)
    cols = []
    for start in range(0, n, group):
        chunk = f[start:start + group]
        cols.append(float(np.nanmax(chunk)) if np.isfinite(chunk).any() else math.nan)
    spacing = 1 if 2 * len(cols) - 1 <= width else 0
    lines = [styled_runs(text, style) for text in column_chart(cols, rows, spacing)]
    if axis:
        lines.append(Text(axis_labels(n, spacing + 1, width, group), style="dim"))
    return lines, group


class LayerValuesPanel(BuiltinPanel):
    """Base of the per-layer value panels: subclasses give :meth:`values` and the titles."""

    fmt = "{:.2f}"
    long_title = ""
    short_title = ""
    tiny_title = ""

    def values(self, m):
        raise NotImplementedError

    def scale(self) -> str:
        if self.measurements is None:
            return ""
        return choose_scale(self.values(self.measurements), self.options.scale)

    def get_title(self) -> str:
        return self.get_titles()[0]

    def get_titles(self) -> list[str]:
        scale = self.scale()
        suffix = f" · {scale}" if scale else ""
        titles = [t + suffix for t in (self.long_title, self.short_title, self.tiny_title) if t]
        return titles + [self.tiny_title]  # the last resort, in a tiny panel: the legend names the scale

    def missing_message(self):
        return None

    def get_panel_content(self):
        missing = self.missing_message()
        if missing:
            return Text(missing, style="dim")
        values = np.asarray(self.values(self.measurements), dtype=np.float64)
        scale = self.scale()
        fractions = scaled(values, scale)
        if scale != "linear":  # the smallest value is the shortest bar, not an empty one
            fractions = np.where(np.isfinite(fractions), np.maximum(fractions, 1e-9), fractions)
        return self.draw(values, fractions, scale)

    def draw(self, values, fractions, scale: str) -> Text:
        width, height = self.width, self.height
        if height is None or height >= 2:
            rows = layer_rows(values, fractions, width, None if height is None else height - 1,
                              self.options.max_bar_length, self.style, self.fmt)
            if rows is not None:
                return lines_text([_legend(values, scale, self.fmt, width), *rows.split("\n")])
        if height is None or height >= 3:
            chart, group = layer_columns(fractions, width, (height or 5) - 2, self.style)
            return lines_text([_legend(values, scale, self.fmt, width, group), *chart])
        chart, _ = layer_columns(fractions, width, 1, self.style, axis=height == 2)
        return lines_text(chart)


class MLPActivationsPanel(LayerValuesPanel):
    """Per layer, the L2 norm (or max |x| with aggregation ``max_abs``) of the MLP block's
    output at the new position; the scale is named in the title."""

    name = "mlp_activations"
    style = "magenta"

    @property
    def long_title(self):
        return "MLP output " + ("max |x|" if self.options.aggregation == "max_abs" else "L2 norm")

    @property
    def short_title(self):
        return "MLP " + ("max |x|" if self.options.aggregation == "max_abs" else "L2")

    tiny_title = "MLP"

    def values(self, m):
        return m.mlp_activations


class AttentionEntropyPanel(LayerValuesPanel):
    """Per layer, the mean over heads of the entropy (nats) of the new token's attention;
    ``n/a`` for a layer without attention."""

    name = "attention_entropy"
    long_title = "Attention entropy (nats)"
    short_title = "Attn entropy"
    tiny_title = "Entropy"
    style = "yellow"
    needs = frozenset({"attention"})

    def values(self, m):
        rec = m.record
        if rec is not None and rec.attention_entropy is not None:
            ent = np.asarray(rec.attention_entropy, dtype=np.float64)
            out = np.full(ent.shape[0], np.nan)
            ok = np.isfinite(ent).all(axis=1)
            out[ok] = ent[ok].mean(axis=1)
            return out
        return m.attention_entropy_values

    def missing_message(self):
        rec = self.measurements.record
        if rec is not None and rec.attention_entropy is None:
            return NO_ATTENTION
        return None


class ResidualStreamPanel(LayerValuesPanel):
    """Per layer, the L2 norm of the residual stream after that block."""

    name = "residual_stream"
    long_title = "Residual stream L2 norm"
    short_title = "Residual L2"
    tiny_title = "Residual"
    style = "red"
    fmt = "{:.1f}"

    def values(self, m):
        return m.residual_norms


class LogitLensPanel(BuiltinPanel):
    """Per layer, the logit lens's most likely next token and its probability (bold when it
    is the model's own top token).  When the panel cannot hold every layer, the last
    layers are shown and a line says which are hidden."""

    name = "logit_lens"
    title_text = "Logit lens (top-1 per layer)"
    short_titles = ("Logit lens", "Lens")
    style = "bright_blue"
    needs = frozenset({"logit_lens"})

    def get_panel_content(self):
        m = self.measurements
        if m.lens_tokens is None or m.lens_probs is None:
            return Text("logit lens not captured", style="dim")
        n = len(m.lens_tokens)
        lw = len(f"L{n - 1}")
        need = lw + 1 + 5 + 7  # label, at least 5 cells of token, " 100.0%"
        max_cols = max(1, (self.width + 2) // (need + 2))
        height = self.height or n
        first, note = 0, None
        ncols = min(max_cols, math.ceil(n / max(1, height)))
        if ncols * height < n:  # not every layer fits: keep the last ones
            rows = max(1, height - 1)
            first = n - ncols * rows
            note = Text(_best([f"L0–L{first - 1} hidden (a taller panel shows them)", f"L0–L{first - 1} hidden"],
                              self.width), style="dim")
        shown = list(range(first, n))
        rows = math.ceil(len(shown) / ncols)
        colw = (self.width - 2 * (ncols - 1)) // ncols
        tok_w = max(1, colw - lw - 8)
        lines = [note] if note is not None else []
        for r in range(rows):
            line = Text()
            for c in range(ncols):
                k = c * rows + r
                if k >= len(shown):
                    break
                i = shown[k]
                if c:
                    line.append("  ")
                toks, probs = m.lens_tokens[i], m.lens_probs[i]
                line.append(f"L{i}".rjust(lw) + " ", style="dim")
                line.append(fit(toks[0], tok_w), style="bold" if toks[0] == m.decoded_tokens[0] else "")
                line.append(f" {float(probs[0]) * 100:5.1f}%")
            lines.append(line)
        return lines_text(lines)
