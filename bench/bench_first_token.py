"""Benchmark: time to the first token of ``mav``, beside the bare import of torch and transformers.

Each measurement is a fresh process, one after another, on the bundled SmolLM2-135M:

- ``bare import``: ``python -c "import torch, transformers"``;
- ``warm``: ``mav --format jsonl --max-new-tokens 1`` with the converted model already in the
  cache: process start to the first JSON line (imports, load, load-time checks, prefill);
- ``cold``: the same with an empty ``$OPENMAV_CACHE`` (the GGUF is dequantized first).

Usage: ``python bench/bench_first_token.py [--rounds 3] [--cold]``
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

MAV = [sys.executable, "-m", "openmav", "--format", "jsonl", "--max-new-tokens", "1", "--prompt", "Hello"]


def first_line_seconds(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    line = proc.stdout.readline()
    elapsed = time.perf_counter() - start
    proc.wait()
    if not line.strip():
        raise RuntimeError(f"no output from {' '.join(cmd)} (exit {proc.returncode})")
    return elapsed


def run_seconds(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cold", action="store_true", help="also time a first run with an empty model cache")
    args = p.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    first_line_seconds(MAV, env)  # fills the cache and the OS file cache
    bare, warm = [], []
    for _ in range(args.rounds):
        bare.append(run_seconds([sys.executable, "-c", "import torch, transformers"], env))
        warm.append(first_line_seconds(MAV, env))
    rows = [("bare import of torch and transformers", statistics.median(bare)),
            ("warm first token (mav --format jsonl)", statistics.median(warm))]
    if args.cold:
        with tempfile.TemporaryDirectory() as cache:
            rows.append(("cold first token (empty model cache)",
                         first_line_seconds(MAV, dict(env, OPENMAV_CACHE=str(Path(cache))))))
    base = rows[0][1]
    print(f"\n| measurement (median of {args.rounds}, fresh processes) | seconds | x bare import |")
    print("|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} | {seconds / base:.2f}x |")


if __name__ == "__main__":
    main()
