"""Benchmark: what the cache's content check costs a warm start.

    .venv/bin/python bench/bench_cache_check.py [--rounds 7]

Times, side by side in one run, on the bundled SmolLM2 (its converted entry in the cache):

- ``warm first token``: ``mav --format jsonl --max-new-tokens 1``, process start to the first
  JSON line, with the content check (this checkout) and without it (a copy of this checkout whose
  ``entry_problem`` skips :func:`openmav.backends.sources._content_problem`), rounds interleaved;
- in this process, opening the entry (``convert_gguf`` on a converted file: every check of
  :func:`entry_problem`) with and without the content check, and hashing every file of the entry
  in full (what an eager check would cost on every start).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAV = [sys.executable, "-m", "openmav", "--format", "jsonl", "--max-new-tokens", "1", "--prompt", "Hello"]
CHECK_LINE = "        return _content_problem(entry, manifest)\n"


def first_line_seconds(env: dict, cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen(MAV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True, cwd=cwd)
    line = proc.stdout.readline()
    elapsed = time.perf_counter() - start
    proc.wait()
    if not line.strip():
        raise RuntimeError(f"no output from mav in {cwd} (exit {proc.returncode})")
    return elapsed


def unchecked_copy(target: Path) -> Path:
    """This checkout's package with the content check left out of entry_problem."""
    shutil.copytree(ROOT / "openmav", target / "openmav", ignore=shutil.ignore_patterns("__pycache__"))
    sources = target / "openmav" / "backends" / "sources.py"
    text = sources.read_text()
    if CHECK_LINE not in text:
        raise SystemExit("sources.py has no content check line to leave out")
    sources.write_text(text.replace(CHECK_LINE, "        return None\n"))
    return target


def in_process(rounds: int = 20) -> list[tuple[str, float]]:
    sys.path.insert(0, str(ROOT))
    from openmav.backends import sources

    gguf = sources.bundled_gguf_path("smollm2-135m")
    entry = sources.convert_gguf(gguf)

    def median_ms(fn) -> float:
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
        return statistics.median(times)

    checked = median_ms(lambda: sources.convert_gguf(gguf))
    real = sources._content_problem
    sources._content_problem = lambda entry, manifest, deep=False: None
    try:
        unchecked = median_ms(lambda: sources.convert_gguf(gguf))
    finally:
        sources._content_problem = real
    manifest = json.loads((entry / sources.MANIFEST).read_text(encoding="utf-8"))
    assert sources._content_problem(entry, manifest) is None
    stamps_only = median_ms(lambda: sources._content_problem(entry, manifest))
    size = sum(p.stat().st_size for p in entry.iterdir())
    t0 = time.perf_counter()
    assert sources.recheck_entry(entry) is None
    full = (time.perf_counter() - t0) * 1000
    return [("open the entry, content check by stamps", checked), ("open the entry, no content check", unchecked),
            ("the content check alone (stamps compared)", stamps_only),
            (f"hash every file of the entry ({size / 1e6:.0f} MB)", full)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    with tempfile.TemporaryDirectory(prefix="openmav-bench-") as tmp:
        base = unchecked_copy(Path(tmp))
        base_env = dict(env, PYTHONPATH=str(base))
        first_line_seconds(env, ROOT)  # the entry exists, the page cache is warm
        first_line_seconds(base_env, base)
        checked, unchecked = [], []
        for i in range(args.rounds):  # alternate the order
            runs = [(checked, env, ROOT), (unchecked, base_env, base)]
            for times, e, cwd in (runs if i % 2 else runs[::-1]):
                times.append(first_line_seconds(e, cwd))
    micro = in_process()
    a, b = statistics.median(checked), statistics.median(unchecked)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{os.cpu_count()} cores, SmolLM2-135M, median of {args.rounds} interleaved rounds; load {load:.2f}\n")
    print("| measurement | time |\n|---|---|")
    print(f"| warm first token, content check | {a:.2f} s |")
    print(f"| warm first token, no content check | {b:.2f} s |")
    print(f"| ratio of medians | {a / b:.3f}x |")
    print(f"| fastest round, content check / none | {min(checked):.2f} s / {min(unchecked):.2f} s "
          f"({min(checked) / min(unchecked):.3f}x) |")
    for name, ms in micro:
        print(f"| {name} | {ms:.3f} ms |")
    print("\nall rounds (s): checked " + " ".join(f"{t:.2f}" for t in checked)
          + "; unchecked " + " ".join(f"{t:.2f}" for t in unchecked))


if __name__ == "__main__":
    main()
