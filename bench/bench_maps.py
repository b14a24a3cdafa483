"""Benchmark `mav maps`: generating N tokens vs writing their maps, side by side in one run.

    .venv/bin/python bench/bench_maps.py [--tokens 200] [--workers N] [--model smollm2-135m]

Prints the generation time (KV-cached step loop with attention and logit-lens capture),
the writing time (sidecar, page and every PNG), the number of images and the ratio
writing / generation (the target is <= 1).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from openmav.backends import load_model
from openmav.capture import SamplingConfig
from openmav.maps.run import MapsOptions, run_maps

PROMPT = "Write a long, detailed story about a dragon who learns to bake bread in a small mountain village."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args()
    lm = load_model(args.model, device="cpu")
    out = tempfile.mkdtemp(prefix="bench-maps-")
    try:
        opts = MapsOptions(model=args.model, prompt=PROMPT, output_dir=out, max_new_tokens=args.tokens, chat=True,
                           sampling=SamplingConfig(), workers=args.workers, overwrite=True)
        start = time.perf_counter()
        result = run_maps(opts, lm=lm)
        total = time.perf_counter() - start
        size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out)) / 2**20
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(f"model {args.model}, {os.cpu_count()} CPUs, {args.workers} workers")
    print(f"generated tokens : {result.n_generated}")
    print(f"images written   : {len(result.images)}  ({size:.1f} MiB with maps.json and maps.html)")
    print(f"generation       : {result.generation_seconds:7.1f} s  ({1000 * result.generation_seconds / result.n_generated:.0f} ms/token)")
    print(f"writing          : {result.writing_seconds:7.1f} s  ({1000 * result.writing_seconds / max(1, len(result.images)):.1f} ms/image)")
    print(f"ratio write/gen  : {result.writing_seconds / result.generation_seconds:7.2f}")
    print(f"total            : {total:7.1f} s")


if __name__ == "__main__":
    main()
