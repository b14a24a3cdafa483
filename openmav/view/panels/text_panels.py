"""Panels about the output: the text so far, the top predictions, the shape of the distribution.

Each draws at the size it is given: columns that do not fit are left out (a bar
first, then a number) rather than wrapped, and rows that do not fit are left out
from the end (the text panel keeps its last lines, where the new token is).
"""

from __future__ import annotations

import numpy as np
from rich.console import Console, ConsoleOptions
from rich.text import Text

from ..options import ViewOptions
from .bars import MIN_BAR, bar, fit, lines_text
from .panel_base import PanelBase, _Lines


class BuiltinPanel(PanelBase):
    """A built-in panel: constructed with ``(measurements=None, options=None)``.

    ``short_titles`` are shorter forms of ``title_text`` for narrow panels, longest first.
    """

    title_text = ""
    short_titles: tuple[str, ...] = ()
    style = "white"
    needs: frozenset = frozenset()

    def __init__(self, measurements=None, options: ViewOptions | None = None):
        self.measurements = measurements
        self.options = options or ViewOptions()
        super().__init__(self.title_text, self.style)

    def get_titles(self) -> list[str]:
        return [self.get_title(), *self.short_titles]

    @property
    def record(self):
        return getattr(self.measurements, "record", None)


class GeneratedTextPanel(BuiltinPanel):
    """The prompt (dim) and the generated text, the newest token highlighted; the last
    ``limit_chars`` characters when longer, and the last lines when the panel is short."""

    name = "generated_text"
    title_text = "Generated text"
    short_titles = ("Text",)
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

    def _content_lines(self, console: Console, options: ConsoleOptions):
        if self.measurements is None or options.height is None:
            return super()._content_lines(console, options)
        lines = console.render_lines(self.get_panel_content(), options.update(height=None), pad=True)
        if len(lines) > options.height:  # keep the end: the newest token is there
            lines = lines[len(lines) - options.height:]
        return console.render_lines(_Lines(lines), options, pad=True)


class TopPredictionsPanel(BuiltinPanel):
    """The most likely next tokens: text, probability (raw softmax), logit, and a bar.

    The row of the token actually chosen is marked ``▶``.  In a narrow panel the bar
    goes first, then the logit column."""

    name = "top_predictions"
    title_text = "Top predictions"
    short_titles = ("Top",)
    style = "blue"

    def columns(self) -> tuple[int, bool, int]:
        """``(token width, show logit, bar length)`` for the panel's width."""
        avail = self.width - 2 - 7  # "▶ " and " 100.0%"
        if avail - 8 - 1 - MIN_BAR >= 6:  # token, logit and a bar
            tok_w = min(12, avail - 8 - 1 - MIN_BAR)
            barlen = min(self.options.max_bar_length, avail - 8 - 1 - tok_w)
            tok_w = min(16, avail - 8 - 1 - barlen)
            return tok_w, True, barlen
        if avail - 8 >= 6:  # token and logit
            return min(24, avail - 8), True, 0
        return max(1, min(24, avail)), False, 0

    def get_panel_content(self):
        m = self.measurements
        n = len(m.top_ids)
        n = min(n, self.options.top_rows) if not self.height else min(n, max(1, self.height - 1))
        logits = np.asarray(m.logits)
        tok_w, show_logit, barlen = self.columns()
        head = Text("  " + fit("token", tok_w) + "   prob" + ("   logit" if show_logit else ""), style="bold")
        lines = [head] if not self.height or self.height > 1 else []
        for i in range(n):
            tid, p = int(m.top_ids[i]), float(m.top_probs[i])
            chosen = tid == m.token_id
            line = Text()
            line.append("▶ " if chosen else "  ", style="bold yellow")
            line.append(fit(m.decoded_tokens[i], tok_w), style="bold" if chosen else "")
            line.append(f" {p * 100:5.1f}%")
            if show_logit:
                line.append(f" {float(logits[tid]):7.2f}")
            if barlen:
                line.append(" ")
                line.append(bar(p, barlen), style="blue")
            lines.append(line)
        return lines_text(lines)


class OutputDistributionPanel(BuiltinPanel):
    """How spread the next-token distribution is: entropy (nats), exp(entropy), the mass of
    the top 1/5/20 tokens, and the chosen token's rank and probability.  In a short panel
    entropy and exp(entropy) share a line, then top-20 and top-5 are left out."""

    name = "output_distribution"
    title_text = "Output distribution"
    short_titles = ("Distribution",)
    style = "cyan"

    def get_panel_content(self):
        m = self.measurements
        p = np.asarray(m.next_token_probs, dtype=np.float64)
        nz = p[p > 0]
        h = float(-(nz * np.log(nz)).sum())
        ordered = np.sort(p)[::-1]
        chosen = float(p[m.token_id]) if 0 <= m.token_id < p.size else float("nan")
        rank = int((p > chosen).sum()) + 1
        barlen = min(self.options.max_bar_length, self.width - 17)
        lines = [Text(f"entropy   {h:6.3f} nats"), Text(f"exp(H)    {np.exp(h):6.1f} tokens")]
        tops = []
        for k in (1, 5, 20):
            mass = float(ordered[:k].sum())
            line = Text(f"top-{k:<2}    {mass * 100:5.1f}%")
            if barlen >= MIN_BAR:
                line.append(" ")
                line.append(bar(mass, barlen), style="cyan")
            tops.append(line)
        chosen_line = Text(f"chosen    #{rank} {chosen * 100:.1f}%")
        height = self.height or 6
        if height < 6:
            lines = [Text(f"entropy {h:.3f} nats, exp(H) {np.exp(h):.1f}")]
        keep = max(0, height - len(lines) - 1)
        tops = tops[:keep] if keep < 3 else tops
        return lines_text((lines + tops + [chosen_line])[:max(1, height)])
