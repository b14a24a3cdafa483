"""``mav scan``: what every neuron and head does across a corpus, written to a scan folder.

``mav scan --model M --data PATH --out DIR`` streams the corpus through the model and writes
``DIR/manifest.json`` and Parquet tables (units, top contexts, documents, vocab) that
``openmav.scan.open(DIR)``, DuckDB, pandas or ``mav serve --scan DIR`` read.  ``--ray`` runs the
shards on a local Ray cluster (``--ray ADDRESS`` joins one).  Flags are checked before the model
loads; the data is checked (exists, not empty, text, the text field) before it too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .live import OneLineParser
from .validate import add_loading_flags


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="mav scan", description=__doc__.strip().splitlines()[0])
    p.add_argument("--data", required=True, metavar="PATH",
                   help="a .txt file (one document a line), .jsonl or .parquet (see --text-field), a folder of "
                        ".txt/.md/.py files, or a dataset saved with datasets' save_to_disk")
    p.add_argument("--out", required=True, metavar="DIR", help="the scan folder to write")
    p.add_argument("--layers", default="all", help="layers to read: all (default), or e.g. 0,4-7")
    p.add_argument("--units", default="neurons,heads", help="neurons, heads or neurons,heads (default)")
    p.add_argument("--context", type=int, default=128, help="tokens per window (default 128)")
    p.add_argument("--top-k", type=int, default=20, help="top-activating positions kept per unit (default 20)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="windows per forward (default: about 2048 tokens on a CPU, within free memory)")
    p.add_argument("--max-tokens", type=int, default=None, help="stop after this many tokens")
    p.add_argument("--text-field", default="text", help="the text field of .jsonl/.parquet/datasets (default text)")
    p.add_argument("--ray", nargs="?", const=True, default=None, metavar="ADDRESS",
                   help="run the shards on Ray: a local cluster, or join the one at ADDRESS (pip install "
                        "'openmav[ray]')")
    p.add_argument("--ray-workers", type=int, default=None, help="Ray actors, one model each (default: one per CPU)")
    p.add_argument("--resume", action="store_true", help="continue the scan in --out (same model, data, settings)")
    p.add_argument("--force", action="store_true", help="replace the scan in --out")
    p.add_argument("--format", choices=["auto", "text", "jsonl"], default="auto",
                   help="progress: a bar on a terminal (auto), one summary line (text), or JSON lines (jsonl)")
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help="bundled name (smollm2-135m, gemma3-270m), .gguf, directory or "
                   "hub id (default: the bundled default model)")
    g.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default: auto)")
    g.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    add_loading_flags(g)
    return p


class _Progress:
    """A rich bar on a terminal (tokens per second, ETA, shards done), else one line at the end, or JSON lines."""

    def __init__(self, mode: str):
        self.mode = mode
        self.bar = None
        self.task = None
        self.last = None

    def __call__(self, event: dict) -> None:
        if self.mode == "jsonl":
            print(json.dumps(event), flush=True)
            return
        self.last = event
        if self.mode != "live":
            return
        if event["event"] == "start":
            from rich.progress import (BarColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.bar = Progress(TextColumn("[bold]scan[/]"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                                TextColumn("{task.fields[tokens]:,} tokens"), TextColumn("{task.fields[rate]}"),
                                TextColumn("shards {task.fields[shards]}"), TimeElapsedColumn(),
                                TimeRemainingColumn(), console=_stderr_console(), transient=False)
            total = event["max_tokens"] or event["bytes"] or 1
            self.unit = "tokens" if event["max_tokens"] else "bytes"
            self.task = self.bar.add_task("scan", total=total, tokens=0, rate="", shards=0)
            self.bar.start()
        elif event["event"] == "shard" and self.bar is not None:
            done = event["tokens"] if self.unit == "tokens" else min(event["chars"], event["bytes"])
            self.bar.update(self.task, completed=done, tokens=event["tokens"],
                            rate=f"{event['tokens_per_s']:,.0f} tok/s", shards=event["shards_done"])
        elif event["event"] == "merge" and self.bar is not None:
            self.bar.update(self.task, completed=self.bar.tasks[0].total)
            self.bar.stop()
            self.bar = None
            print("mav scan: merging shards and writing tables…", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def run(args) -> int:
    from ..scan.data import open_corpus

    open_corpus(args.data, args.text_field)  # a bad corpus is one line before torch is even imported
    from ..scan.run import scan
    from .live import quiet_loading
    from .validate import loading_kwargs

    mode = args.format
    if mode == "auto":
        mode = "live" if sys.stderr.isatty() else "text"
    progress = _Progress(mode)
    quiet_loading()
    start = time.perf_counter()
    try:
        result = scan(args.model, args.data, args.out, layers=args.layers, units=args.units, context=args.context,
                      top_k=args.top_k, batch_size=args.batch_size, max_tokens=args.max_tokens,
                      text_field=args.text_field, ray=args.ray, ray_workers=args.ray_workers, resume=args.resume,
                      force=args.force, device=args.device, dtype=args.dtype, progress=progress,
                      **loading_kwargs(args))
    finally:
        progress.close()
    if mode != "jsonl":
        m = result.manifest
        seconds = time.perf_counter() - start
        print(f"mav scan: {m['model']['name']} over {m['tokens']:,} tokens of {m['data']['path']} in {seconds:.1f} s "
              f"({len(m['settings']['layers'])} layers, {'+'.join(m['settings']['units'])}); wrote {args.out} "
              f"(openmav.scan.open({str(args.out)!r}) or mav serve --scan {args.out})")
    return 0
