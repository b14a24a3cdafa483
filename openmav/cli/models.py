"""``mav models``: which model types OpenMAV reads correctly, from the stored sweep or checked now.

Printing the stored table reads ``openmav/data/supported_models.json`` and nothing heavier (no torch,
no transformers), so it answers at once; ``--check`` and ``--markdown`` use :mod:`openmav.support`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import textwrap
from pathlib import Path

STORED = Path(__file__).resolve().parent.parent / "data" / "supported_models.json"  # openmav.support.DATA


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="List the causal-LM model types and whether each passes every invariant (adapter found and "
                    "verified; cached steps, attention rows, lens and head ablation against independent "
                    "recomputations). The table comes from the last sweep (python -m openmav.support); --check "
                    "runs the checks now on tiny random-weight models of the types named.")
    p.add_argument("--check", nargs="+", metavar="TYPE", help="check these model types now (tiny random weights)")
    p.add_argument("--failing", action="store_true", help="list only the types that fail or cannot run")
    p.add_argument("--markdown", action="store_true", help="print the README's Markdown table")
    return p


def adapter_label(adapter: str, how: str) -> str:
    """``llama (declared)``; an inferred row's name already says so (``inferred:afmoe``), so it stands alone."""
    if not how or adapter.startswith(f"{how}:"):
        return adapter
    return f"{adapter} ({how})"


def table_lines(rows: list[dict], width: int | None = None, indent: str = "  ") -> list[str]:
    """One line per row, columns as wide as their longest cell.  With ``width`` (a terminal's), the reason is
    shortened at a word boundary to fit, with an ellipsis; without, it is printed whole."""
    cells = [(r["model_type"], r["status"], adapter_label(r["adapter"], r["how"]), r["layers"]) for r in rows]
    widths = [max((len(c[i]) for c in cells), default=0) for i in range(4)]
    lines = []
    for row, c in zip(rows, cells):
        head = indent + " ".join(text.ljust(w) for text, w in zip(c, widths)) + " "
        reason = row["reason"]
        if width is not None and reason and len(head) + len(reason) > width:
            reason = textwrap.shorten(reason, max(width - len(head), 20), placeholder="…")
        lines.append((head + reason).rstrip())
    return lines


def stored_table() -> dict:
    from ..errors import OpenMavError

    if not STORED.is_file():
        raise OpenMavError(f"no support table at {STORED}: run `python -m openmav.support`")
    return json.loads(STORED.read_text())


def run(args) -> int:
    from ..errors import InputError

    if args.check:
        from transformers import CONFIG_MAPPING

        unknown = [t for t in args.check if t not in CONFIG_MAPPING]
        if unknown:
            raise InputError(f"unknown model type {unknown[0]!r}: `mav models` lists the known ones")
        from ..support import check_model_type

        failed = 0
        for t in args.check:
            r = check_model_type(t)
            failed += r.status != "pass"
            print(table_lines([{"model_type": r.model_type, "status": r.status, "adapter": r.adapter, "how": r.how,
                                "layers": r.layers, "reason": r.reason}], indent="")[0])
        return 1 if failed else 0
    if args.markdown:
        from ..support import load, markdown_table

        print(markdown_table(load()), end="")
        return 0
    payload = stored_table()
    results = payload["results"]
    runnable = [r for r in results if r["status"] != "unrunnable"]
    passed = [r for r in runnable if r["status"] == "pass"]
    declared, inferred = (sum(r["how"] == how for r in passed) for how in ("declared", "inferred"))
    print(f"{len(passed)} of {len(runnable)} runnable causal-LM types pass every invariant "
          f"({declared} declared, {inferred} inferred adapters; transformers {payload['transformers']})")
    shown = [r for r in results if not (args.failing and r["status"] == "pass")]
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    for line in table_lines(shown, width):
        print(line)
    return 0
