"""Evaluate every head: batched ablations against one forward per head, in one process.

    .venv/bin/python bench/bench_ablation.py [--model smollm2-135m] [--batch-size 32] [--threads 1]
    .venv/bin/python bench/bench_ablation.py --figure docs/images/ablation_ioi.png   # the README picture only

On a 20-token prompt, every head of the model (270 for SmolLM2) is zero-ablated alone:

- ``one forward per head``: ``ablated_logits`` for each head (the plain loop);
- ``batched``: ``evaluate_all_heads`` with the prompt repeated along the batch (row r
  ablates its own head), without and with the shared clean prefix.

Prints the wall times, the ratios, and the largest difference between the logits of
the two ways.  Timings on a shared 2-core machine are noisy.
"""

from __future__ import annotations

import argparse
import os
import time

PROMPT = "When Mary and John went to the store, John gave a drink to Mary. Then they walked home together"


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from openmav.backends import load_model
    from openmav.interventions.ablation import HeadAblation, ablated_logits
    from openmav.interventions.evaluate import run_head_sets

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--tokens", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is, i.e. all cores, as mav serve runs)")
    p.add_argument("--figure", help="instead of timing, draw the IOI circuit figure (matplotlib) to this PNG")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    lm = load_model(args.model, device="cpu")
    if args.figure:
        return figure(lm, args.figure)
    ids = lm.tokenizer(PROMPT, return_tensors="pt").input_ids[:, :args.tokens]
    heads = [(layer, head) for layer in range(lm.parts.n_layers) for head in range(lm.parts.n_heads)]
    print(f"{lm.name}: {len(heads)} heads ({lm.parts.n_layers} layers x {lm.parts.n_heads}), "
          f"{ids.shape[1]}-token prompt, batch size {args.batch_size}, torch threads {torch.get_num_threads()}")
    ablated_logits(lm, ids, [])  # warm-up

    start = time.perf_counter()
    single = torch.stack([ablated_logits(lm, ids, [HeadAblation(layer, head)]) for layer, head in heads])
    t_single = time.perf_counter() - start

    times, diffs = {}, {}
    for share in (False, True):
        start = time.perf_counter()
        batched = run_head_sets(lm, ids, [[h] for h in heads], batch_size=args.batch_size, share_prefix=share)
        times[share] = time.perf_counter() - start
        diffs[share] = float((batched - single).abs().max())

    n_batches = -(-len(heads) // args.batch_size)
    print(f"one forward per head      : {t_single:7.2f} s  ({len(heads)} forwards)")
    print(f"batched, repeated prompt  : {times[False]:7.2f} s  ({n_batches} forwards)  "
          f"{t_single / times[False]:5.1f}x faster  max |logit diff| {diffs[False]:.1e}")
    print(f"batched, shared prefix    : {times[True]:7.2f} s  ({n_batches} forwards)  "
          f"{t_single / times[True]:5.1f}x faster  max |logit diff| {diffs[True]:.1e}")


def figure(lm, path: str) -> None:
    """Per-head attribution vs real patching (IOI, all heads) and the per-head effect map, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from openmav.interventions.circuit import discover_circuit, logit_diff, single_token, swap_names

    clean = "When Mary and John went to the store, John gave a drink to"
    corrupt = swap_names(clean, lm.tokenizer)
    metric = logit_diff(single_token(lm, " Mary"), single_token(lm, " John"))
    ids = [lm.tokenizer(t, return_tensors="pt").input_ids for t in (clean, corrupt)]
    circ = discover_circuit(lm, ids[0], ids[1], metric, top_n=8)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [1, 1.2]})
    ax1.scatter(circ.attribution.ravel(), circ.verified.ravel(), s=10, alpha=0.7)
    for n in circ.nodes:
        ax1.annotate(f"L{n['layer']}H{n['head']}", (n["attribution"], n["effect"]), fontsize=8)
    lo = min(circ.attribution.min(), circ.verified.min())
    hi = max(circ.attribution.max(), circ.verified.max())
    ax1.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
    ax1.set_xlabel("attribution patching estimate")
    ax1.set_ylabel("real patching effect")
    ax1.set_title(f"{lm.name}, {circ.n_verified} heads: Pearson r = {circ.correlation:.2f}", fontsize=10)
    bound = float(abs(circ.verified).max())
    im = ax2.imshow(circ.verified.T, aspect="auto", cmap="RdBu", vmin=-bound, vmax=bound, origin="lower")
    ax2.set_xlabel("layer")
    ax2.set_ylabel("head")
    ax2.set_title("effect on logit(' Mary') - logit(' John') of patching each head\n"
                  f"(clean {circ.clean_metric:.2f}, names swapped {circ.corrupt_metric:.2f})", fontsize=10)
    fig.colorbar(im, ax=ax2)
    fig.suptitle(f"IOI: \"{clean}\"", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}; correlation {circ.correlation:.3f} over {circ.n_verified} heads")


if __name__ == "__main__":
    main()
