"""Benchmark: the capture step loop against plain ``generate`` and the original openmav 0.0.12.

Each (method, N) runs in its own fresh process, one after another, on the same
machine and model (SmolLM2-135M-Instruct, float32, CPU, greedy, a short prompt), so
peak memory (max RSS) is per run.  Methods:

- ``capture``: ``generate_steps`` with every capture on (attention rows, entropies,
  norms, logit lens over all layers), the lens placed where the machine says
  (:func:`openmav.capture.lens.lens_placement`);
- ``capture-batched``: the same with the lens batched over 10 steps (``lens_batch=10``,
  what JSON lines, recordings and maps can use);
- ``capture-nolens``: the same without the logit lens (what the default live view needs);
- ``generate``: ``model.generate(max_new_tokens=N, do_sample=False)``, no capture;
- ``openmav-0.0.12``: the original's ``StateFetcher.fetch_next`` (installed apart with
  ``pip install --no-deps --target bench/.reference openmav==0.0.12``; skipped if absent).

Usage: ``python bench/bench_engine.py [--tokens 50 100 200 500] [--skip-reference]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REFERENCE = HERE / ".reference"
PROMPT = "The capital of France is"


def _load():
    from openmav.backends.loading import load_model

    return load_model("smollm2-135m", device="cpu")


def worker(method: str, n: int) -> dict:
    import torch

    torch.manual_seed(0)
    if method == "openmav-0.0.12":
        sys.path.insert(0, str(REFERENCE))
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from openmav.backends.model_backend_transformers import TransformersBackend  # the reference
        from openmav.processors.state_fetcher import StateFetcher

        assert str(REFERENCE) in sys.modules["openmav"].__file__, "the reference openmav was not imported"

        location = os.environ["BENCH_MODEL_DIR"]
        model = AutoModelForCausalLM.from_pretrained(location, attn_implementation="eager")
        tok = AutoTokenizer.from_pretrained(location)
        backend = TransformersBackend("smollm2", model_obj=model, tokenizer_obj=tok, device="cpu")
        fetcher = StateFetcher(backend, max_new_tokens=n)
        start = time.perf_counter()
        count = sum(1 for _ in fetcher.fetch_next(PROMPT, temperature=0.0))
    else:
        from openmav.capture import CaptureConfig, generate_steps

        lm = _load()
        ids = lm.tokenizer(PROMPT, return_tensors="pt").input_ids
        start = time.perf_counter()
        if method == "generate":
            with torch.inference_mode():
                out = lm.model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                        pad_token_id=lm.tokenizer.pad_token_id)
            count = out.shape[1] - ids.shape[1]
        else:
            cfg = CaptureConfig(logit_lens=(method != "capture-nolens"),
                                lens_batch=10 if method == "capture-batched" else 1)
            count = sum(1 for _ in generate_steps(lm, PROMPT, n, capture=cfg, stop_at_eos=False))
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": method, "n": n, "tokens": count, "ms_per_token": seconds / count * 1000, "peak_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[50, 100, 200, 500])
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]))))
        return
    lm = _load()  # converts and caches the GGUF once, before any timing
    from openmav.backends.sources import converted_gguf_dir, resolve_source

    env = dict(os.environ, BENCH_MODEL_DIR=str(converted_gguf_dir(resolve_source("smollm2-135m").gguf)))
    del lm
    methods = ["capture", "capture-batched", "capture-nolens", "generate"]
    if not args.skip_reference and (REFERENCE / "openmav").is_dir():
        methods.append("openmav-0.0.12")
    results = {}
    for n in args.tokens:
        for method in methods:
            proc = subprocess.run([sys.executable, __file__, "--worker", method, str(n)], env=env,
                                  capture_output=True, text=True, cwd=HERE if method == "openmav-0.0.12" else None)
            if proc.returncode != 0:
                print(f"{method} N={n} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            results[(method, n)] = json.loads(proc.stdout.strip().splitlines()[-1])
            r = results[(method, n)]
            print(f"  {method:>16} N={n:<4} {r['ms_per_token']:8.1f} ms/token  peak {r['peak_mb']:7.0f} MB", flush=True)
    print("\n| N | capture ms/tok | lens batched | capture (no lens) | generate | openmav 0.0.12 "
          "| capture / generate | batched / generate | no-lens / generate | openmav / capture |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in args.tokens:
        get = lambda m: results.get((m, n), {}).get("ms_per_token")  # noqa: E731
        cap, batched, nolens = get("capture"), get("capture-batched"), get("capture-nolens")
        gen, ref = get("generate"), get("openmav-0.0.12")
        fmt = lambda v: f"{v:.1f}" if v else "-"  # noqa: E731
        ratio = lambda a, b: f"{a / b:.2f}x" if a and b else "-"  # noqa: E731
        print(f"| {n} | {fmt(cap)} | {fmt(batched)} | {fmt(nolens)} | {fmt(gen)} | {fmt(ref)} | {ratio(cap, gen)} | "
              f"{ratio(batched, gen)} | {ratio(nolens, gen)} | {ratio(ref, cap)} |")
    lo, hi = min(args.tokens), max(args.tokens)
    for method in ("capture", "capture-batched", "capture-nolens"):
        if (method, lo) in results and (method, hi) in results:
            growth = results[(method, hi)]["peak_mb"] - results[(method, lo)]["peak_mb"]
            print(f"peak memory growth of {method} from {lo} to {hi} tokens: {growth:.0f} MB")
    if args.json:
        args.json.write_text(json.dumps([v for v in results.values()], indent=1))


if __name__ == "__main__":
    main()
