"""``mav replay FILE``: show a trace saved with ``mav --record FILE`` again, without the model.

A file that cannot be replayed (missing, a directory, empty, truncated, not a trace,
damaged inside) is refused with one line naming it and what is wrong: the cheap
checks run before anything heavy is imported (:class:`openmav.cli.validate.TraceFile`),
the rest in :func:`openmav.capture.trace.load_trace`.

The scale of the per-layer bars is chosen as the live view chose it for the recorded run:
``--scale`` when given, else the scale that run was given (``auto`` unless it named one:
per panel, log when one layer is over 10x the median, else linear, the title naming it).
"""

from __future__ import annotations

import argparse

from .live import OneLineParser, add_view_flags, refresh_rate


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="mav replay", description="Show a recorded run (mav --record FILE) "
                                "in the live or interactive view, without loading the model.")
    p.add_argument("file", help="a trace file written by mav --record")
    p.add_argument("--delay", type=float, default=None,
                   help="seconds between tokens, 0 to 86400 (default: as recorded)")
    add_view_flags(p, scale_default="auto")
    for action in p._actions:
        if action.dest == "scale":
            action.help = action.help.replace("(default: ", "(default: the recorded run's scale; for a run that named none, ", 1)
    return p


def chosen_scale(given: str, meta: dict) -> str:
    """The scale to draw with: ``given`` (``--scale``) unless it is ``auto`` (the flag left out); then the
    recorded run's own (``auto`` for a run that named none, or a trace that does not say)."""
    from ..view.options import SCALES

    recorded = meta.get("scale")
    return recorded if given == "auto" and recorded in SCALES else given


def replay_stream(records, processor, delay: float | None):
    """Measurements of ``records``, paced by ``delay`` seconds or the recorded time per token."""
    import time

    for rec in records:
        pause = rec.elapsed_ms / 1000 if delay is None else delay
        if pause:
            time.sleep(pause)
        yield processor.process(rec)


def run(args) -> int:
    import sys

    from ..errors import InputError

    mode = "interactive" if args.interactive else args.format
    if mode == "interactive" and not sys.stdin.isatty():
        raise InputError("--interactive needs a terminal (stdin is not one)")
    from ..capture.trace import load_trace
    from ..mav import run_view
    from ..processors.state_processor import StateProcessor
    from ..view.options import ViewOptions
    from ..view.panels.registry import make_panels

    meta, records = load_trace(args.file)
    if not records:
        raise InputError(f"{args.file} holds no steps (the run was stopped before its first token)")
    scale = chosen_scale(args.scale, meta)
    options = ViewOptions(max_bar_length=args.max_bar_length, limit_chars=args.limit_chars, scale=scale,
                          aggregation=args.aggregation, prompt=meta.get("prompt", ""))
    try:
        panels = make_panels(args.selected_panels or meta.get("selected_panels"), None, None, options)
    except InputError as exc:
        if args.selected_panels:
            raise
        raise InputError(f"{args.file} names panels this openmav lacks ({exc}); pick some with --selected-panels"
                         ) from None
    # as mav.MAV: the panels scale per panel themselves; the processor's *_normalized fields stay linear
    processor = StateProcessor(aggregation=args.aggregation, scale="linear" if scale == "auto" else scale)
    if mode == "auto":  # as run_view decides it; text lines (not on a terminal) are not paced
        from rich.console import Console

        mode = "live" if Console().is_terminal else "text"
    delay = 0.0 if mode in ("interactive", "text", "jsonl") and args.delay is None else args.delay
    stream = replay_stream(records, processor, delay)
    title = f"mav replay · {meta.get('model', '?')}"
    result = run_view(stream, panels, mode=mode, refresh_rate=refresh_rate(args.refresh_rate),
                      num_grid_rows=args.num_grid_rows, options=options, title=title)
    return 130 if result.interrupted else 0
