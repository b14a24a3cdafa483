"""``mav compare``: how phrasings change what a model does inside.

Modes: ``simple``, ``questions``, ``sentiment`` (built-in prompt sets), ``interactive``
(a Plotly HTML page of every head for one prompt), ``custom`` (``--prompt1``/``--prompt2``
and/or ``--prompts ...``) and ``all``.  The model is loaded once for all modes.  Each mode
writes its figures into ``--output-dir/<mode>/`` plus ``differences.csv``: the heads and
neurons whose behaviour differs most between the prompts, also printed as a table.

Values are means over the positions every prompt has, the first (attention-sink) position
left out (``--positions all``: each prompt's own positions; ``--include-first``); the formula
is in :mod:`openmav.analysis.compare`.  Every prompt needs at least 2 tokens: that, empty
prompts and prompts past the context are checked, for every mode, before any file is written.

Files of an earlier run are never replaced without ``--force``: that is checked,
with every flag, before the model loads.  Each file is written under a temporary
name beside its target and renamed into place, so an interrupted run leaves no
half-written file and no earlier file half-replaced; a folder that cannot be written
is one line.  In ``differences.csv`` a text cell that a spreadsheet would run as a
formula (it starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return) gets a
leading apostrophe, so it is shown as the text it is; numbers are written as they are.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from .live import OneLineParser

PROMPT_SETS = {
    "simple": ["The cat sat on the mat", "A cat was sitting on a mat", "On the mat, the cat sat"],
    "questions": ["What is the capital of France?", "Can you tell me the capital of France?",
                  "France's capital is which city?"],
    "sentiment": ["I love this movie, it is wonderful!", "I hate this movie, it is terrible.",
                  "This movie is okay, I guess."],
}
INTERACTIVE_PROMPT = "When Mary and John went to the store, John gave a drink to"
MODES = ("simple", "questions", "sentiment", "interactive", "custom", "all")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="mav compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=MODES, default="simple", help="which comparison to run (default: simple)")
    p.add_argument("--prompt1", help="first prompt for --mode custom")
    p.add_argument("--prompt2", help="second prompt for --mode custom")
    p.add_argument("--prompts", nargs="+", default=[], metavar="PROMPT", help="any number of prompts (custom)")
    p.add_argument("--output-dir", default="outputs", help="where figures and tables go (default: outputs/)")
    p.add_argument("--model", default=None, help="model name, directory, .gguf or hub id (default: the default model)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps or auto (default: cpu, or where "
                   "--device-map places the layers)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="weights' dtype (default float32)")
    from .validate import add_loading_flags

    add_loading_flags(p)
    p.add_argument("--layer", type=int, default=-1, help="layer for heatmaps and neuron plots (default: last)")
    p.add_argument("--top-k", type=int, default=10, help="rows per group in the differences table (default: 10)")
    p.add_argument("--positions", choices=("aligned", "all"), default="aligned",
                   help="positions the values average over: those every prompt has (aligned, default) "
                        "or each prompt's own (all)")
    p.add_argument("--include-first", action="store_true",
                   help="count the first position too (left out by default: it is an attention sink)")
    p.add_argument("--head-scores", action="store_true", help="also plot previous-token/induction head scores")
    p.add_argument("--force", action="store_true", help="replace figures and tables of an earlier run in --output-dir")
    return p


def _custom_prompts(args) -> list[str]:
    return [p for p in (args.prompt1, args.prompt2) if p] + list(args.prompts)


def _plan(args) -> list[tuple[str, list[str]]]:
    from ..errors import InputError

    custom = _custom_prompts(args)
    if args.mode == "custom" and not custom:
        raise InputError("--mode custom needs prompts: --prompt1 ... --prompt2 ... and/or --prompts A B C")
    if args.mode == "custom" and len(custom) < 2:
        raise InputError(f"--mode custom compares prompts: give at least 2, got {len(custom)}")
    if args.top_k < 1:
        raise InputError(f"--top-k must be >= 1, got {args.top_k}")
    names = ["simple", "questions", "sentiment", "interactive"] if args.mode == "all" else [args.mode]
    if args.mode == "all" and len(custom) >= 2:
        names.append("custom")
    return [(n, custom if n == "custom" else PROMPT_SETS.get(n, [custom[0] if custom else INTERACTIVE_PROMPT]))
            for n in names]


def mode_files(name: str, prompts: list[str]) -> list[str]:
    """The names of the files one mode writes into its folder."""
    if name == "interactive":
        return ["interactive_attention.html", "layer_stats.png"]
    per_prompt = [f"{kind}_{i}.png" for i in range(len(prompts)) for kind in ("attention", "all_heads")]
    return per_prompt + ["neuron_comparison.png", "layer_stats.png", "differences.csv"]


def check_outputs(plan, root: Path, head_scores: bool, force: bool) -> None:
    """Refuse, before the model loads, to replace an earlier run's files without ``force``."""
    from ..errors import InputError

    targets = [root / name / f for name, prompts in plan for f in mode_files(name, prompts)]
    if head_scores:
        targets.append(root / "head_scores.png")
    for folder in {t.parent for t in targets}:
        if folder.exists() and not folder.is_dir():
            raise InputError(f"cannot write to {folder}: it is a file, not a folder")
    blocked = [t for t in targets if t.is_dir()]
    if blocked:
        raise InputError(f"cannot write {blocked[0]}: a folder of that name is in the way")
    old = [t for t in targets if t.exists()]
    if old and not force:
        raise InputError(f"{root} already holds {len(old)} file{'s' if len(old) > 1 else ''} of an earlier run "
                         f"(e.g. {old[0]}): pass --force to replace them, or choose another --output-dir")


def _write(path: Path, write) -> Path:
    """``write(tmp)`` to a temporary name beside ``path`` (same suffix), then rename it onto ``path``;
    a folder that cannot be written (permissions, a full disk) is one :class:`InputError`."""
    from ..capture.trace import replacing
    from ..errors import InputError

    try:
        with replacing(path) as tmp:
            write(tmp)
    except OSError as exc:
        raise InputError(f"could not write {path}: {exc.strerror or exc}") from None
    return path


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def spreadsheet_text(cell: str) -> str:
    """``cell`` as a spreadsheet shows it as text: one starting like a formula gets a leading ``'``
    (a number such as ``-0.25`` is left as it is)."""
    if cell.startswith(FORMULA_START) and not _NUMBER.fullmatch(cell):
        return "'" + cell
    return cell


def guard_csv(path) -> None:
    """Rewrite the CSV file at ``path`` with every cell passed through :func:`spreadsheet_text`."""
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        rows = [[spreadsheet_text(cell) for cell in row] for row in csv.reader(fh)]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)


def run_mode(extractor, viz, name: str, prompts: list[str], out: Path, layer: int, top_k: int, console,
             positions: str = "aligned", skip_first: bool = True) -> list[Path]:
    """Write one mode's figures and table (each write-then-rename); returns the files written."""
    from rich.text import Text

    from ..analysis import compare

    from ..errors import InputError

    layer = extractor.layer_index(layer)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"could not create {out}: {exc.strerror or exc}") from None
    if name == "interactive":
        res = extractor.extract_activations(prompts[0])
        return [_write(out / "interactive_attention.html", lambda p: viz.plot_interactive_attention(res, p)),
                _write(out / "layer_stats.png", lambda p: viz.plot_layer_statistics(res.stats(), p))]
    comparison = compare.compare_prompts(extractor, prompts, positions=positions, skip_first=skip_first)
    note = comparison.note("--positions all")
    if note:
        console.print(Text(note), soft_wrap=True)  # one line; the terminal wraps it
    rows = compare.differences(comparison, top_k)
    head = next(r for r in rows if r.kind == "head")  # the head whose entropy differs most
    written = []
    for i, res in enumerate(comparison):
        title = f"p{i}: layer {head.layer}, head {head.index}"
        written.append(_write(out / f"attention_{i}.png", lambda p: viz.plot_attention_heatmap(
            res.attention, res.tokens, head.layer, head.index, p, title=title)))
        written.append(_write(out / f"all_heads_{i}.png",
                              lambda p: viz.plot_all_heads(res.attention, res.tokens, layer, p)))
    how = comparison.describe_positions()
    if comparison.neuron_values is not None:
        written.append(_write(out / "neuron_comparison.png",
                              lambda p: viz.plot_activation_comparison(comparison, layer, save_path=p)))
    written += [
        _write(out / "layer_stats.png", lambda p: viz.plot_layer_statistics(comparison, p, note=how)),
        _write(out / "differences.csv", lambda p: guard_csv(compare.write_csv(rows, comparison, p))),
    ]
    console.print(compare.rich_table(rows, prompts, f"{name}: largest differences between prompts", how))
    return written


def check_prompts(extractor, plan, positions: str, skip_first: bool) -> None:
    """Refuse, before any file is written, a prompt that is empty, past the context or under 2 tokens."""
    from ..analysis.compare import position_spans

    for name, prompts in plan:
        encoded = extractor._encode(prompts)
        if name != "interactive":
            position_spans([len(ids) for ids in encoded], positions, skip_first, prompts)


def run(args) -> int:
    import os

    from rich.console import Console

    if args.model is None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    console = Console()
    plan = _plan(args)
    root = Path(args.output_dir).expanduser()
    check_outputs(plan, root, args.head_scores, args.force)  # before the model loads
    from transformers.utils import logging as hf_logging

    from ..analysis.extractor import AttentionExtractor
    from ..analysis.visualizer import AttentionVisualizer

    hf_logging.disable_progress_bar()  # stderr keeps only what the user must read

    from .validate import loading_kwargs

    extractor = AttentionExtractor(args.model, device=args.device, dtype=args.dtype,  # loaded once for every mode
                                   **loading_kwargs(args))
    extractor.layer_index(args.layer)
    check_prompts(extractor, plan, args.positions, not args.include_first)
    viz = AttentionVisualizer()
    for name, prompts in plan:
        files = run_mode(extractor, viz, name, prompts, root / name, args.layer, args.top_k, console,
                         args.positions, not args.include_first)
        console.print(f"[bold]{name}[/bold]: wrote {len(files)} files to {root / name}")
    if args.head_scores and extractor.is_encoder:
        console.print("head scores: not written, they are defined for causal LMs and this is an encoder")
    elif args.head_scores:
        from ..analysis.head_scores import compute_head_scores

        scores = compute_head_scores(extractor.handle.lm)
        _write(root / "head_scores.png", lambda p: viz.plot_head_scores(scores, p))
        console.print(f"head scores: {root / 'head_scores.png'}")
    return 0
