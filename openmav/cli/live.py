"""``mav`` (no subcommand): the live view.  ``mav --help`` lists every flag.

Importing this module stays light (no torch), so ``mav --help``, ``mav --version``
and a refused flag answer at once; flags are parsed as plain numbers and strings and
checked by :mod:`openmav.cli.validate` (ranges, finiteness, panel names, the
``--record`` file) before :func:`run` loads the model.
"""

from __future__ import annotations

import argparse
import math

from .. import __version__

from ..view.panels.names import BUILTIN_NAMES as PANEL_NAMES  # the registry's order (also the priority order)


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage dump)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def thread_count(text: str) -> int:
    """``--threads``: a whole number from 1 to 1024 (checked by argparse, before torch is imported)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 1024, got {text!r}") from None
    if not 1 <= value <= 1024:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 1024, got {value}")
    return value


def quiet_loading() -> None:
    """Hide transformers' own weight-loading bar (the CLI shows its own progress line)."""
    from transformers.utils import logging

    logging.disable_progress_bar()


def add_view_flags(p: argparse.ArgumentParser, scale_default: str = "linear") -> None:
    """Flags about drawing, shared by ``mav`` and ``mav replay``.

    ``mav`` passes ``scale_default="auto"`` (not a choice one can type: it is what
    leaving ``--scale`` out means)."""
    p.add_argument("--refresh-rate", type=float, default=10.0,
                   help="at most this many redraws per second (default 10; 0: no cap); drawing is also capped "
                   "at 15%% of the time")
    p.add_argument("--interactive", action="store_true",
                   help="one token per Enter/space; ←/→ browse tokens; ↑/↓ layer, ,/. head, m mean; q quits")
    auto = ("per panel, log when one layer is over 10x the median, else linear; the title names it"
            if scale_default == "auto" else scale_default)
    p.add_argument("--scale", choices=("linear", "log", "minmax"), default=scale_default,
                   help=f"how per-layer bars are scaled: linear (0..max), log (smallest..largest), minmax "
                   f"(default: {auto})")
    p.add_argument("--aggregation", choices=("l2", "max_abs"), default="l2",
                   help="MLP output per layer: L2 norm or max |x| (default l2)")
    p.add_argument("--limit-chars", type=int, default=400,
                   help="show at most this many characters of text (default 400)")
    p.add_argument("--max-bar-length", type=int, default=35, help="longest bar in cells (default 35)")
    p.add_argument("--selected-panels", nargs="+", metavar="PANEL",
                   help="panels to show, space- or comma-separated, or 'all': " + ", ".join(PANEL_NAMES))
    p.add_argument("--num-grid-rows", type=int, default=None,
                   help="rows of the panel grid (default: the grid that gives every panel the most room); a "
                   "terminal too small for every panel drops them from the end of the list")
    p.add_argument("--format", choices=("auto", "live", "text", "jsonl"), default="auto",
                   help="auto: live view in a terminal, else one text line per token; jsonl: JSON per token")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="mav", description="Watch a language model think: a live view of each generated token "
        "(top predictions, per-layer MLP output, attention entropy, logit lens, attention).",
        epilog="subcommands (each with --help): mav replay FILE (show a --record trace again), mav maps (logit-lens attention maps), mav compare (attention statistics and plots across prompts), mav serve (web explorer: heads, ablation, circuits), mav scan (what every neuron and head does across a corpus), mav models (which model types are supported, or --check TYPE), mav cache (list or clean converted models)")
    p.add_argument("--version", action="version", version=f"openmav {__version__}")
    p.add_argument("--model", default=None,
                   help="bundled name (smollm2-135m, gemma3-270m), .gguf file, model folder or hub id "
                   "(default smollm2-135m)")
    p.add_argument("--prompt", default=None, help="the text to continue (default: a short story opening)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate (default 200)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto (default auto)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                   help="weights' dtype (default float32)")
    p.add_argument("--backend", choices=("transformers",), default="transformers", help="model backend")
    p.add_argument("--temp", type=float, default=0.0, help="temperature; 0 is greedy (default 0)")
    p.add_argument("--top-k", type=int, default=50, help="sample from the k most likely (0: off; default 50)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (default 1)")
    p.add_argument("--min-p", type=float, default=0.0, help="min-p sampling in [0, 1] (default 0)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="1 turns it off (default 1)")
    p.add_argument("--seed", type=int, default=42, help="random seed for sampling, 0 to 2**64-1 (default 42)")
    p.add_argument("--record", metavar="FILE", default=None,
                   help="save every step's record to FILE (.npz trace; show it again with mav replay FILE); "
                   "the folder must exist; an existing FILE is kept unless --force")
    p.add_argument("--force", action="store_true", help="let --record replace an existing FILE")
    p.add_argument("--threads", type=thread_count, default=None, metavar="N",
                   help="torch intra-op threads, 1 to 1024 (default: physical cores minus one, at least 1; "
                   "OMP_NUM_THREADS, when set, is left to rule)")
    from .validate import add_loading_flags

    add_loading_flags(p)
    add_view_flags(p, scale_default="auto")
    return p


def refresh_rate(value: float) -> float:
    """The rate the view takes for ``--refresh-rate``: 0 means no cap (redraw whenever there is news)."""
    return math.inf if value == 0 else value


def resume_collector() -> None:
    """Once the model is loaded, where the console script paused the garbage collector
    (:func:`openmav.cli.entry`): what is alive now, torch's and transformers' modules and the model,
    lives as long as the process, so it is moved out of the collector's reach (``gc.freeze``) and
    collection resumes for what the run makes from here."""
    import gc

    gc.freeze()
    gc.enable()


def run(args) -> int:
    """Load the model and show the live view; flags were checked by :func:`openmav.cli.validate.check_args`."""
    import gc
    import sys

    from ..errors import InputError

    if args.interactive and not sys.stdin.isatty():
        raise InputError("--interactive needs a terminal (stdin is not one)")
    from ..mav import MAV
    from .validate import loading_kwargs

    quiet_loading()
    result = MAV(model=args.model, prompt=args.prompt, max_new_tokens=args.max_new_tokens,
                 refresh_rate=refresh_rate(args.refresh_rate), interactive=args.interactive,
                 limit_chars=args.limit_chars,
                 temp=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                 repetition_penalty=args.repetition_penalty, max_bar_length=args.max_bar_length,
                 device=args.device, scale=args.scale, backend=args.backend, seed=args.seed,
                 selected_panels=args.selected_panels, num_grid_rows=args.num_grid_rows,
                 aggregation=args.aggregation, format=args.format, record=args.record, dtype=args.dtype,
                 threads=args.threads, on_loaded=None if gc.isenabled() else resume_collector,
                 **loading_kwargs(args))
    if args.record:  # MAV wrote it beside the target and renamed it into place
        n = len(result.measurements)
        print(f"mav: saved {n} step{'s' if n != 1 else ''} to {args.record} (mav replay {args.record} shows them)",
              file=sys.stderr)
    return 130 if result.interrupted else 0
