"""Panels about the output: the text so far, the top predictions, the shape of the distribution."""

from __future__ import annotations

import numpy as np
from rich.text import Text

from ..options import ViewOptions
from .bars import bar, clip_text
from .panel_base import PanelBase


class BuiltinPanel(PanelBase):
    """A built-in panel: constructed with ``(measurements=None, options=None)``."""

    title_text = ""
    style = "white"
    needs: frozenset = frozenset()

    def __init__(self, measurements=None, options: ViewOptions | None = None):
        self.measurements = measurements
        self.options = options or ViewOptions()
        super().__init__(self.title_text, self.style)

    @property
    def record(self):
        return getattr(self.measurements, "record", None)


class GeneratedTextPanel(BuiltinPanel):
    """The prompt (dim) and the generated text, the newest token highlighted; the last
    ``limit_chars`` characters when longer."""

    name = "generated_text"
    title_text = "Generated text"
    style = "green"

    def get_panel_content(self):
        m = self.measurements
        prompt, text, new = self.options.prompt, m.generated_text, m.predicted_char
        head = text[: len(text) - len(new)] if new and text.endswith(new) else text
        tail = new if new and text.endswith(new) else ""
        limit = max(1, self.options.limit_chars)
        parts = [(prompt, "dim"), (head, ""), (tail, "bold black on yellow")]
        total = sum(len(p) for p, _ in parts)
        out = Text()
        if total > limit:
            out.append("…", style="dim")
            drop = total - limit
            cut = []
            for piece, style in parts:
                take = min(drop, len(piece))
                cut.append((piece[take:], style))
                drop -= take
            parts = cut
        for piece, style in parts:
            out.append(piece, style=style)
        return out


class TopPredictionsPanel(BuiltinPanel):
    """The most likely next tokens: text, probability (raw softmax), logit, and a bar.

    The row of the token actually chosen is marked ``▶``."""

    name = "top_predictions"
    title_text = "Top predictions"
    style = "blue"

    def get_panel_content(self):
        m = self.measurements
        n = len(m.top_ids)
        if self.height:
            n = min(n, self.height - 1)
        n = max(1, min(n, self.options.top_rows if not self.height else n))
        logits = np.asarray(m.logits)
        tok_w = max(6, min(16, self.width - 24))
        barlen = max(1, min(self.options.max_bar_length, self.width - tok_w - 18))
        out = Text(f"  {'token'.ljust(tok_w)}   prob   logit\n", style="bold")
        for i in range(n):
            tid, p = int(m.top_ids[i]), float(m.top_probs[i])
            mark = "▶ " if tid == m.token_id else "  "
            out.append(mark, style="bold yellow")
            out.append(clip_text(m.decoded_tokens[i], tok_w).ljust(tok_w), style="bold" if mark.strip() else "")
            out.append(f" {p * 100:5.1f}% {float(logits[tid]):7.2f} ")
            out.append(bar(p, barlen), style="blue")
            if i < n - 1:
                out.append("\n")
        return out


class OutputDistributionPanel(BuiltinPanel):
    """How spread the next-token distribution is: entropy (nats), exp(entropy), the mass of
    the top 1/5/20 tokens, and the chosen token's rank and probability."""

    name = "output_distribution"
    title_text = "Output distribution"
    style = "cyan"

    def get_panel_content(self):
        m = self.measurements
        p = np.asarray(m.next_token_probs, dtype=np.float64)
        nz = p[p > 0]
        h = float(-(nz * np.log(nz)).sum())
        ordered = np.sort(p)[::-1]
        chosen = float(p[m.token_id]) if 0 <= m.token_id < p.size else float("nan")
        rank = int((p > chosen).sum()) + 1
        barlen = max(1, min(self.options.max_bar_length, self.width - 18))
        out = Text(f"entropy   {h:6.3f} nats\n")
        out.append(f"exp(H)    {np.exp(h):6.1f} tokens\n")
        for k in (1, 5, 20):
            mass = float(ordered[:k].sum())
            out.append(f"top-{k:<2}    {mass * 100:5.1f}% ")
            out.append(bar(mass, barlen), style="cyan")
            out.append("\n")
        out.append(f"chosen    #{rank} {chosen * 100:.1f}%")
        return out
