"""Benchmark: time to the first token of ``mav``, beside plain transformers loading the same weights.

Each measurement is a fresh process, one after another, on the bundled SmolLM2-135M, timed from
its start to its first line of output (so the interpreter's shutdown, 0.3 s after the bare import
and about 1 s after transformers' model modules, counts in none of them):

- ``bare import``: ``python -c "import torch, transformers"``;
- ``imports a Llama needs``: the same plus the modules transformers imports to build one
  (``AutoConfig``, ``AutoModelForCausalLM``, ``AutoTokenizer`` and ``modeling_llama``): the floor
  of any tool that loads the model through transformers, before a weight is read;
- ``plain transformers, warm``: what a user would write without openmav to get the same token from the
  same weights: ``AutoTokenizer.from_pretrained`` and ``AutoModelForCausalLM.from_pretrained`` of the
  folder the bundled GGUF converts to in openmav's model cache (the float32 safetensors ``mav`` reads;
  found with :mod:`openmav.backends.sources`), then ``generate(max_new_tokens=1)`` greedy, and the token
  printed;
- ``warm``: ``mav --format jsonl --max-new-tokens 1`` with the converted model already in the
  cache: process start to the first JSON line (imports, load, the remembered verification, prefill);
  its ratio to the plain row is the one that counts (target: at most 0.90x), taken in each round and
  given as the median of those ratios;
- with ``--cold``, ``plain transformers, cold``: the same, reading the GGUF file itself
  (``from_pretrained(folder, gguf_file=name)``, which dequantizes it), and ``cold``: ``mav`` with an
  empty ``$OPENMAV_CACHE`` (dequantize, write the cache entry, verify, first token; target: at most
  1.2x the plain cold row).

The rows are timed in the same rounds, the pairs in alternating order, so each ratio is measured on
the same machine load; the table gives medians and the load average before and after (the machine is
shared: measure when it is quiet).

With ``--baseline DIR`` (another copy of openmav, e.g. ``git archive HEAD | tar -x -C DIR``)
its warm first token is timed in the same rounds, interleaved, so a change is measured
against the code before it on the same machine load.

Usage: ``python bench/bench_first_token.py [--rounds 5] [--cold] [--baseline DIR] [--readme FILE]``
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

PROMPT = "Hello"
BARE_IMPORT = "import torch, transformers"
LLAMA_IMPORTS = ("import torch, transformers; from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer; "
                 "from transformers.models.llama import modeling_llama")
MAV = [sys.executable, "-m", "openmav", "--format", "jsonl", "--max-new-tokens", "1", "--prompt", PROMPT]
# what a user writes with transformers alone: tokenizer and model from a folder (argv[1]), or from a GGUF file
# in it (argv[2]), then one greedy token, printed
PLAIN = """
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, gguf = sys.argv[1], (sys.argv[2:] or [None])[0]
extra = {"gguf_file": gguf} if gguf else {}
tokenizer = AutoTokenizer.from_pretrained(folder, **extra)
model = AutoModelForCausalLM.from_pretrained(folder, **extra)
ids = tokenizer(PROMPT, return_tensors="pt")
out = model.generate(**ids, max_new_tokens=1, do_sample=False)
print(repr(tokenizer.decode(out[0, ids["input_ids"].shape[1]:])), flush=True)
""".replace("PROMPT", repr(PROMPT))


def first_line_seconds(cmd: list[str], env: dict, cwd: str | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True, cwd=cwd)
    line = proc.stdout.readline()
    elapsed = time.perf_counter() - start
    proc.wait()
    if not line.strip():
        raise RuntimeError(f"no output from {' '.join(cmd)} (exit {proc.returncode})")
    return elapsed


def converted_folder(env: dict) -> tuple[Path, Path]:
    """The bundled SmolLM2's GGUF file and the cache entry it converts to (``mav`` fills it first)."""
    from openmav.backends.sources import bundled_gguf_path, converted_gguf_dir

    first_line_seconds(MAV, env)  # converts if needed, verifies once, and fills the OS file cache
    gguf = bundled_gguf_path("smollm2-135m")
    return gguf, converted_gguf_dir(gguf)


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def timed_pair(a, b, flip: bool) -> tuple[float, float]:
    """Time ``a()`` and ``b()``, in that order or (``flip``) the other, so neither always runs second."""
    if flip:
        tb = b()
        return a(), tb
    ta = a()
    return ta, b()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--cold", action="store_true", help="also time first runs with an empty model cache, "
                   "beside plain transformers reading the GGUF file")
    p.add_argument("--baseline", metavar="DIR", help="another openmav checkout to time beside this one")
    p.add_argument("--readme", metavar="FILE", help="also write the table here (the docs include "
                   "docs/readme/tables/first_token.md)")
    args = p.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    load_before = load_average()
    gguf, folder = converted_folder(env)
    plain_warm = [sys.executable, "-c", PLAIN, str(folder)]
    plain_cold = [sys.executable, "-c", PLAIN, str(gguf.parent), gguf.name]
    first_line_seconds(plain_warm, env)
    base_dir = str(Path(args.baseline).resolve()) if args.baseline else None
    base_env = dict(env, PYTHONPATH=os.pathsep.join(filter(None, [base_dir, env.get("PYTHONPATH")])))
    if base_dir:
        first_line_seconds(MAV, base_env, cwd=base_dir)
    times: dict[str, list[float]] = {k: [] for k in ("bare", "floor", "plain", "warm", "base", "plain_cold",
                                                     "cold")}
    for i in range(args.rounds):
        times["bare"].append(first_line_seconds([sys.executable, "-c", BARE_IMPORT + "; print('ok', flush=True)"],
                                                env))
        times["floor"].append(first_line_seconds([sys.executable, "-c", LLAMA_IMPORTS + "; print('ok', flush=True)"],
                                                 env))
        plain, warm = timed_pair(lambda: first_line_seconds(plain_warm, env), lambda: first_line_seconds(MAV, env),
                                 flip=bool(i % 2))
        times["plain"].append(plain)
        times["warm"].append(warm)
        if base_dir:
            times["base"].append(first_line_seconds(MAV, base_env, cwd=base_dir))
        if args.cold:
            def cold_mav() -> float:
                with tempfile.TemporaryDirectory() as cache:  # an empty cache: convert, verify, then the token
                    return first_line_seconds(MAV, dict(env, OPENMAV_CACHE=cache))

            plain_c, cold = timed_pair(lambda: first_line_seconds(plain_cold, env), cold_mav, flip=bool(i % 2))
            times["plain_cold"].append(plain_c)
            times["cold"].append(cold)
    med = {k: statistics.median(v) for k, v in times.items() if v}
    plain_rows = {"warm": "plain", "base": "plain", "cold": "plain_cold"}
    rows = [("bare import of torch and transformers", "bare"),
            ("imports transformers needs to build a Llama (no weights read)", "floor"),
            ("plain transformers, warm: `from_pretrained` of mav's converted copy, `generate(max_new_tokens=1)`",
             "plain"),
            ("**warm first token** (`mav --format jsonl --max-new-tokens 1`)", "warm")]
    if base_dir:
        rows.append((f"warm first token, baseline ({args.baseline})", "base"))
    if args.cold:
        rows += [("plain transformers, cold: `from_pretrained(..., gguf_file=...)`, `generate(max_new_tokens=1)`",
                  "plain_cold"),
                 ("**cold first token** (`mav`, empty model cache: convert, verify, first token)", "cold")]
    load_after = load_average()
    lines = [f"Measured by `bench/bench_first_token.py` on {os.cpu_count()} cores, SmolLM2-135M, median of "
             f"{args.rounds} rounds of fresh processes, each pair side by side in alternating order (x plain "
             f"transformers: the median of the rounds' ratios); load average {load_before:.2f} before and "
             f"{load_after:.2f} after.", "",
             "| measurement | seconds | x bare import | x plain transformers |", "|---|---|---|---|"]
    for name, key in rows:  # each round's pair divided, then the median: the load changes less within a pair
        ratio = (f"{statistics.median(a / b for a, b in zip(times[key], times[plain_rows[key]])):.2f}x"
                 if key in plain_rows else "")
        lines.append(f"| {name} | {med[key]:.2f} | {med[key] / med['bare']:.2f}x | {ratio} |")
    print("\n" + "\n".join(lines))
    print("\nevery round (s): " + "; ".join(f"{k} " + " ".join(f"{t:.2f}" for t in v) for k, v in times.items() if v))
    if args.readme:  # the docs include this file (docs/build_readme.py)
        target = Path(args.readme)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(target)
        print(f"\nwrote {target}")


if __name__ == "__main__":
    main()
