"""Interleaved rounds of openmav's neuron scan, nnsight's top-k loop and a plain forward (issue 19).

A long benchmark run on a shared machine drifts: one run here measured the 4-layer scan slower than the
every-layer one. This script runs the three side by side in rounds, rotating their order, over the same
windows, and prints each round's ratios and their medians, so drift between runs cancels within a round.
Run it in ``bench/.peers-venv`` (nnsight installed): ``python bench/bench_scan_ab.py [--tokens 50000]
[--rounds 3]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_scan as b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--tokens", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from openmav.backends.loading import load_model
    from openmav.scan.run import default_batch_size

    lm = load_model("smollm2-135m", device="cpu")
    tmp = Path(tempfile.mkdtemp(prefix="bench-scan-ab-"))
    corpus = b.build_corpus(tmp, args.tokens)
    data = b.windows(lm, corpus, args.tokens, default_batch_size(b.CONTEXT, "cpu"))
    n = sum(int(x.numel()) for x in data)
    runs = {"plain forward": b.plain_forward(lm.model, data),
            "scan: every layer, neurons": b.scan_call(lm, corpus, n, tmp / "scan", units="neurons"),
            "nnsight 0.8.1": b.nnsight_topk(data)}
    names = list(runs)
    print(f"{n:,} tokens, {args.rounds} rounds, {b.cpu_name()}, load average {os.getloadavg()[0]:.2f}", flush=True)
    ratios: dict[str, list[float]] = {"scan / plain": [], "scan / nnsight": [], "nnsight / plain": []}
    for r in range(args.rounds):
        speed = {}
        for name in names[r % 3:] + names[:r % 3]:
            speed[name] = n / b.timed(runs[name])
        scan, plain, nn = speed[names[1]], speed[names[0]], speed[names[2]]
        ratios["scan / plain"].append(scan / plain)
        ratios["scan / nnsight"].append(scan / nn)
        ratios["nnsight / plain"].append(nn / plain)
        print(f"  round {r + 1}: " + ", ".join(f"{k} {v:,.0f} tok/s" for k, v in speed.items())
              + f"; scan/nnsight {scan / nn:.2f}x", flush=True)
    print("medians: " + ", ".join(f"{k} {statistics.median(v):.2f}x" for k, v in ratios.items())
          + f"; load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
