"""compare_prompts on many prompts: padded batches vs one forward per prompt, in one process.

    .venv/bin/python bench/bench_compare.py [--model smollm2-135m] [--n 100] [--batch-size 16]

Prints both wall times and their ratio, and checks that the two ways give the same
attention (max abs difference).  Timings on a shared 2-core machine are noisy.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

SUBJECTS = ["The cat", "A small dog", "My neighbour", "The old teacher", "Our new robot", "The river",
            "A tired student", "The president", "This recipe", "The last train"]
VERBS = ["sat on the mat", "looked at the sun", "wrote a long letter", "was sitting by the door",
         "went to the store and bought bread", "is surprisingly quiet today", "made everyone laugh",
         "did not expect the rain", "kept the secret for years", "ran across the empty field"]


def prompts(n: int) -> list[str]:
    return [f"{SUBJECTS[i % 10]} {VERBS[(i // 10 + i) % 10]}." for i in range(n)]


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from openmav.analysis.extractor import AttentionExtractor

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ex = AttentionExtractor(args.model, device="cpu")
    texts = prompts(args.n)
    ex.compare_prompts(texts[:4], batch_size=4)  # warm-up
    start = time.perf_counter()
    batched = ex.compare_prompts(texts, batch_size=args.batch_size)
    t_batched = time.perf_counter() - start
    start = time.perf_counter()
    single = ex.compare_prompts(texts, batch_size=1)
    t_single = time.perf_counter() - start
    diff = max(float(np.abs(a - b).max()) for x, y in zip(batched, single) for a, b in zip(x.attention, y.attention))
    tokens = sum(len(r.tokens) for r in batched)
    print(f"model {ex.model_name}, {args.n} prompts, {tokens} tokens, torch threads {torch.get_num_threads()}")
    print(f"batched (batch size {args.batch_size}): {t_batched:.2f} s")
    print(f"one forward per prompt:  {t_single:.2f} s")
    print(f"ratio (per prompt / batched): {t_single / t_batched:.2f}x")
    print(f"max |attention difference|: {diff:.2e}")


if __name__ == "__main__":
    main()
