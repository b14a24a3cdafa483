"""Load times of the bundled models: first load (dequantize the GGUF, write the cache) vs cached load.

Each load runs in a fresh process with ``OPENMAV_CACHE`` pointing at a new
temporary directory, so the first load really converts.
Usage: ``python bench/bench_load.py [smollm2-135m gemma3-270m]``
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

CODE = ("import time; from openmav.backends.loading import load_model; t = time.perf_counter(); "
        "load_model({name!r}, device='cpu'); print(time.perf_counter() - t)")


def timed_load(name: str, cache: str) -> float:
    env = dict(os.environ, OPENMAV_CACHE=cache, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", CODE.format(name=name)], env=env, capture_output=True,
                         text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    names = sys.argv[1:] or ["smollm2-135m", "gemma3-270m"]
    print("| model | first load (GGUF -> cache) | cached load | ratio |")
    print("|---|---|---|---|")
    for name in names:
        with tempfile.TemporaryDirectory() as cache:
            first = timed_load(name, cache)
            again = timed_load(name, cache)
        print(f"| {name} | {first:.1f} s | {again:.2f} s | {first / again:.0f}x |", flush=True)


if __name__ == "__main__":
    main()
