"""``mav compare``: how phrasings change what a model does inside.

Modes: ``simple``, ``questions``, ``sentiment`` (built-in prompt sets), ``interactive``
(a Plotly HTML page of every head for one prompt), ``custom`` (``--prompt1``/``--prompt2``
and/or ``--prompts ...``) and ``all``.  The model is loaded once for all modes.  Each mode
writes its figures into ``--output-dir/<mode>/`` plus ``differences.csv``: the heads and
neurons whose behaviour differs most between the prompts, also printed as a table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

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
    p = argparse.ArgumentParser(prog="mav compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=MODES, default="simple", help="which comparison to run (default: simple)")
    p.add_argument("--prompt1", help="first prompt for --mode custom")
    p.add_argument("--prompt2", help="second prompt for --mode custom")
    p.add_argument("--prompts", nargs="+", default=[], metavar="PROMPT", help="any number of prompts (custom)")
    p.add_argument("--output-dir", default="outputs", help="where figures and tables go (default: outputs/)")
    p.add_argument("--model", default=None, help="model name, directory, .gguf or hub id (default: the default model)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default: cpu)")
    p.add_argument("--layer", type=int, default=-1, help="layer for heatmaps and neuron plots (default: last)")
    p.add_argument("--top-k", type=int, default=10, help="rows per group in the differences table (default: 10)")
    p.add_argument("--head-scores", action="store_true", help="also plot previous-token/induction head scores")
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


def run_mode(extractor, viz, name: str, prompts: list[str], out: Path, layer: int, top_k: int, console) -> list[Path]:
    """Write one mode's figures and table; returns the files written."""
    from ..analysis import compare

    layer = extractor.layer_index(layer)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if name == "interactive":
        res = extractor.extract_activations(prompts[0])
        viz.plot_interactive_attention(res, out / "interactive_attention.html")
        viz.plot_layer_statistics(res.stats(), out / "layer_stats.png")
        return [out / "interactive_attention.html", out / "layer_stats.png"]
    comparison = extractor.compare_prompts(prompts)
    rows = compare.differences(comparison, top_k)
    head = next(r for r in rows if r.kind == "head")  # the head whose entropy differs most
    for i, res in enumerate(comparison):
        viz.plot_attention_heatmap(res.attention, res.tokens, head.layer, head.index, out / f"attention_{i}.png",
                                   title=f"p{i}: layer {head.layer}, head {head.index}")
        written.append(out / f"attention_{i}.png")
        viz.plot_all_heads(res.attention, res.tokens, layer, out / f"all_heads_{i}.png")
        written.append(out / f"all_heads_{i}.png")
    viz.plot_activation_comparison(comparison, layer, save_path=out / "neuron_comparison.png")
    viz.plot_layer_statistics(comparison[0].stats(), out / "layer_stats.png")
    written += [out / "neuron_comparison.png", out / "layer_stats.png", compare.write_csv(rows, prompts, out / "differences.csv")]
    console.print(compare.rich_table(rows, prompts, f"{name}: largest differences between prompts"))
    return written


def run(args) -> int:
    import os

    from rich.console import Console

    if args.model is None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    console = Console()
    plan = _plan(args)
    from transformers.utils import logging as hf_logging

    from ..analysis.extractor import AttentionExtractor
    from ..analysis.visualizer import AttentionVisualizer

    hf_logging.disable_progress_bar()  # stderr keeps only what the user must read

    extractor = AttentionExtractor(args.model, device=args.device)  # loaded once for every mode
    extractor.layer_index(args.layer)
    viz = AttentionVisualizer()
    root = Path(args.output_dir)
    for name, prompts in plan:
        files = run_mode(extractor, viz, name, prompts, root / name, args.layer, args.top_k, console)
        console.print(f"[bold]{name}[/bold]: wrote {len(files)} files to {root / name}")
    if args.head_scores and not extractor.is_encoder:
        from ..analysis.head_scores import compute_head_scores

        scores = compute_head_scores(extractor.handle.lm)
        viz.plot_head_scores(scores, root / "head_scores.png")
        console.print(f"head scores: {root / 'head_scores.png'}")
    return 0
