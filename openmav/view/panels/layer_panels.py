"""Per-layer panels: MLP output, attention entropy, residual stream, logit lens.

Layers are numbered from 0 (``L0`` is the first block) in every panel.
"""

from __future__ import annotations

from rich.text import Text

from ...processors.state_processor import scale_values
from .bars import clip_text, columns_for, pack_columns
from .bars import layer_bars
from .text_panels import BuiltinPanel


class MLPActivationsPanel(BuiltinPanel):
    """Per layer, the L2 norm (or max |x| with aggregation ``max_abs``) of the MLP block's
    output at the new position; bars scaled by ``--scale``."""

    name = "mlp_activations"
    style = "magenta"

    def get_title(self) -> str:
        kind = "max |x|" if self.options.aggregation == "max_abs" else "L2 norm"
        return f"MLP output {kind}"

    def get_panel_content(self):
        m = self.measurements
        return layer_bars(m.mlp_activations, m.mlp_normalized, self.width, self.height,
                          self.options.max_bar_length, "magenta")


class AttentionEntropyPanel(BuiltinPanel):
    """Per layer, the mean over heads of the entropy (nats) of the new token's attention."""

    name = "attention_entropy"
    title_text = "Attention entropy (nats)"
    style = "yellow"
    needs = frozenset({"attention"})

    def get_panel_content(self):
        m = self.measurements
        return layer_bars(m.attention_entropy_values, m.attention_entropy_values_normalized, self.width,
                          self.height, self.options.max_bar_length, "yellow")


class ResidualStreamPanel(BuiltinPanel):
    """Per layer, the L2 norm of the residual stream after that block."""

    name = "residual_stream"
    title_text = "Residual stream L2 norm"
    style = "red"

    def get_panel_content(self):
        m = self.measurements
        values = m.residual_norms
        return layer_bars(values, scale_values(values, self.options.scale), self.width, self.height,
                          self.options.max_bar_length, "red", fmt="{:.1f}")


class LogitLensPanel(BuiltinPanel):
    """Per layer, the logit lens's most likely next token and its probability."""

    name = "logit_lens"
    title_text = "Logit lens (top-1 per layer)"
    style = "bright_blue"
    needs = frozenset({"logit_lens"})

    def get_panel_content(self):
        m = self.measurements
        if m.lens_tokens is None or m.lens_probs is None:
            return Text("logit lens not captured", style="dim")
        n = len(m.lens_tokens)
        lw = len(f"L{n - 1}")
        ncols = columns_for(n, self.height)
        colw = max(1, (self.width - 2 * (ncols - 1)) // ncols)
        tok_w = max(1, colw - lw - 8)
        cells = []
        for i, (toks, probs) in enumerate(zip(m.lens_tokens, m.lens_probs)):
            cell = Text(f"L{i}".rjust(lw) + " ", style="dim")
            cell.append(clip_text(toks[0], tok_w).ljust(tok_w), style="bold" if toks[0] == m.decoded_tokens[0] else "")
            cell.append(f" {float(probs[0]) * 100:5.1f}%")
            cells.append(cell)
        return pack_columns(cells, self.height, self.width)
