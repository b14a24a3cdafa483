"""Benchmark: time to the first token of ``mav``, beside the bare import of torch and transformers.

Each measurement is a fresh process, one after another, on the bundled SmolLM2-135M, timed from
its start to its first line of output (so the interpreter's shutdown, 0.3 s after the bare import
and about 1 s after transformers' model modules, counts in none of them):

- ``bare import``: ``python -c "import torch, transformers"``;
- ``imports a Llama needs``: the same plus the modules transformers imports to build one
  (``AutoConfig``, ``AutoModelForCausalLM``, ``AutoTokenizer`` and ``modeling_llama``): the floor
  of any tool that loads the model through transformers, before a weight is read;
- ``warm``: ``mav --format jsonl --max-new-tokens 1`` with the converted model already in the
  cache: process start to the first JSON line (imports, load, load-time checks, prefill);
- ``cold``: the same with an empty ``$OPENMAV_CACHE`` (the GGUF is dequantized first).

With ``--baseline DIR`` (another copy of openmav, e.g. ``git archive HEAD | tar -x -C DIR``)
its warm first token is timed in the same rounds, interleaved, so a change is measured
against the code before it on the same machine load.

Usage: ``python bench/bench_first_token.py [--rounds 3] [--cold] [--baseline DIR]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BARE_IMPORT = "import torch, transformers"
LLAMA_IMPORTS = ("import torch, transformers; from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer; "
                 "from transformers.models.llama import modeling_llama")
MAV = [sys.executable, "-m", "openmav", "--format", "jsonl", "--max-new-tokens", "1", "--prompt", "Hello"]


def first_line_seconds(cmd: list[str], env: dict, cwd: str | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True, cwd=cwd)
    line = proc.stdout.readline()
    elapsed = time.perf_counter() - start
    proc.wait()
    if not line.strip():
        raise RuntimeError(f"no output from {' '.join(cmd)} (exit {proc.returncode})")
    return elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cold", action="store_true", help="also time a first run with an empty model cache")
    p.add_argument("--baseline", metavar="DIR", help="another openmav checkout to time beside this one")
    p.add_argument("--readme", metavar="FILE", help="also write the table here (the README includes "
                   "docs/readme/tables/first_token.md)")
    args = p.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    first_line_seconds(MAV, env)  # fills the cache and the OS file cache
    base_dir = str(Path(args.baseline).resolve()) if args.baseline else None
    base_env = dict(env, PYTHONPATH=os.pathsep.join(filter(None, [base_dir, env.get("PYTHONPATH")])))
    if base_dir:
        first_line_seconds(MAV, base_env, cwd=base_dir)
    bare, floor, warm, base = [], [], [], []
    for i in range(args.rounds):
        bare.append(first_line_seconds([sys.executable, "-c", BARE_IMPORT + "; print('ok', flush=True)"], env))
        floor.append(first_line_seconds([sys.executable, "-c", LLAMA_IMPORTS + "; print('ok', flush=True)"], env))
        if base_dir and i % 2:  # alternate the order, so neither always runs right after the bare import
            base.append(first_line_seconds(MAV, base_env, cwd=base_dir))
        warm.append(first_line_seconds(MAV, env))
        if base_dir and not i % 2:
            base.append(first_line_seconds(MAV, base_env, cwd=base_dir))
    rows = [("bare import of torch and transformers", statistics.median(bare)),
            ("imports transformers needs to build a Llama (no weights read)", statistics.median(floor)),
            ("warm first token (mav --format jsonl)", statistics.median(warm))]
    if base_dir:
        rows.append((f"warm first token, baseline ({args.baseline})", statistics.median(base)))
    if args.cold:
        with tempfile.TemporaryDirectory() as cache:
            rows.append(("cold first token (empty model cache)",
                         first_line_seconds(MAV, dict(env, OPENMAV_CACHE=str(Path(cache))))))
    base = rows[0][1]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [f"Measured by `bench/bench_first_token.py` on {os.cpu_count()} cores, SmolLM2-135M, median of "
             f"{args.rounds} rounds of fresh processes; load average {load:.2f} at the end.", "",
             "| measurement | seconds | x bare import |", "|---|---|---|"]
    lines += [f"| {name} | {seconds:.2f} | {seconds / base:.2f}x |" for name, seconds in rows]
    print("\n" + "\n".join(lines))
    if args.readme:  # the README includes this file (docs/build_readme.py)
        target = Path(args.readme)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(target)
        print(f"\nwrote {target}")


if __name__ == "__main__":
    main()
