"""Live view overhead: 200 tokens on SmolLM2 with the live view on vs the capture loop alone.

Both runs use the same process, model and captures (those the default panels need:
attention, no logit lens), one after the other.  The live view renders into a
real rich Console writing to /dev/null (as a terminal, at its refresh rate, in
rich's refresh thread), exactly as ``mav`` does.

    python bench/bench_live.py [--tokens 200] [--refresh-rate 10] [--panels all]
"""

from __future__ import annotations

import argparse
import os
import time

from rich.console import Console

from openmav.backends.loading import load_model
from openmav.capture import SamplingConfig, generate_steps
from openmav.mav import capture_config
from openmav.processors.state_processor import StateProcessor
from openmav.view.main_loop_manager import MainLoopManager
from openmav.view.options import ViewOptions
from openmav.view.panels.registry import make_panels

PROMPT = "Once upon a time, in a small village by the sea,"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--refresh-rate", type=float, default=10.0)
    p.add_argument("--panels", nargs="+", default=None)
    args = p.parse_args()
    lm = load_model("smollm2-135m", device="cpu")
    options = ViewOptions(prompt=PROMPT)
    panels = make_panels(args.panels, None, None, options)
    capture = capture_config(panels)
    processor = StateProcessor()
    sampling = SamplingConfig()

    def stream():
        for rec in generate_steps(lm, PROMPT, args.tokens, sampling, capture, stop_at_eos=False):
            yield processor.process(rec)

    list(generate_steps(lm, PROMPT, 3, sampling, capture))  # warm-up
    start = time.perf_counter()
    n_alone = sum(1 for _ in stream())
    alone = (time.perf_counter() - start) * 1000 / n_alone

    with open(os.devnull, "w") as devnull:
        console = Console(file=devnull, force_terminal=True, width=150, height=45)
        manager = MainLoopManager(panels, console, args.refresh_rate, None, options)
        frames = [0]
        original = manager.dashboard.__class__.__rich_console__

        def counting(self, c, o):
            frames[0] += 1
            yield from original(self, c, o)

        manager.dashboard.__class__.__rich_console__ = counting
        start = time.perf_counter()
        n_live = len(manager.run(stream()))
        live = (time.perf_counter() - start) * 1000 / n_live
        manager.dashboard.__class__.__rich_console__ = original

    print(f"captures: attention={capture.attention} logit_lens={capture.logit_lens}; panels: "
          f"{', '.join(p.panel_name() for p in panels)}")
    print(f"capture loop alone: {alone:.1f} ms/token ({n_alone} tokens)")
    print(f"with the live view: {live:.1f} ms/token ({n_live} tokens, {frames[0]} frames at <= "
          f"{args.refresh_rate:g}/s)")
    print(f"ratio: {live / alone:.2f}x (target <= 1.2x)")


if __name__ == "__main__":
    main()
