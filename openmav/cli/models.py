"""``mav models``: which model types OpenMAV reads correctly, from the stored sweep or checked now."""

from __future__ import annotations

import argparse


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
            print(f"{r.model_type:26s} {r.status:10s} {(r.adapter + ' (' + r.how + ')') if r.how else '':32s} "
                  f"{r.layers:18s} {r.reason}")
        return 1 if failed else 0
    from ..support import load, markdown_table, summary

    payload = load()
    if args.markdown:
        print(markdown_table(payload), end="")
        return 0
    s = summary(payload)
    print(f"{s['passed']} of {s['runnable']} runnable causal-LM types pass every invariant "
          f"({s['declared']} declared, {s['inferred']} inferred adapters; transformers {payload['transformers']})")
    for r in payload["results"]:
        if args.failing and r["status"] == "pass":
            continue
        how = f"{r['adapter']} ({r['how']})" if r["how"] else ""
        print(f"  {r['model_type']:26s} {r['status']:10s} {how:32s} {r['layers']:18s} {r['reason'][:100]}")
    return 0
