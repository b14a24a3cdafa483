"""Benchmark: capture cost on the newer block shapes (parallel, MoE), side by side with plain ``generate``.

Random weights of real shapes with fewer layers (no downloads): a Phi-2 block shape
(parallel attention and MLP; hidden 2560, 32 heads, MLP 10240, vocabulary 51200) and
an OLMoE block shape (sparse MoE; hidden 2048, 16 heads, 64 experts of 1024, top-8,
vocabulary 50304).  In one process per shape, interleaved rounds after a warm-up, the
same prompt and the same greedy tokens, it times ms per token of:

- ``generate``: ``model.generate`` (its default attention), no capture;
- ``capture, no lens``: ``generate_steps`` with attention rows, entropies and norms;
- ``capture, no attention``: norms, logits and top-k only;
- ``capture, all``: everything including the logit lens.

Usage: ``python bench/bench_shapes.py [--layers 2] [--tokens 32] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import statistics
import time


def shapes(layers: int):
    import transformers as tf

    return {
        "phi-2 (parallel)": tf.PhiConfig(hidden_size=2560, num_attention_heads=32, intermediate_size=10240,
                                         num_hidden_layers=layers, vocab_size=51200, max_position_embeddings=2048),
        "olmoe-1b-7b (MoE)": tf.OlmoeConfig(hidden_size=2048, num_attention_heads=16, num_key_value_heads=16,
                                            intermediate_size=1024, num_experts=64, num_experts_per_tok=8,
                                            num_hidden_layers=layers, vocab_size=50304,
                                            max_position_embeddings=4096),
    }


def time_one(fn) -> float:
    start = time.perf_counter()
    n = fn()
    return (time.perf_counter() - start) * 1000 / n


def main() -> None:
    import torch

    from openmav.backends.loading import wrap_model
    from openmav.capture import CaptureConfig, generate_steps
    from openmav.testing import tiny_tokenizer

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    tok = tiny_tokenizer()
    rows = []
    for name, config in shapes(args.layers).items():
        config.bos_token_id = config.eos_token_id = config.pad_token_id = 0
        torch.manual_seed(0)
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(config).eval()
        start = time.perf_counter()
        lm = wrap_model(model, tok, name=name)
        verify_s = time.perf_counter() - start
        ids = tok("The capital of France is", return_tensors="pt").input_ids
        n = args.tokens

        def generate():
            with torch.inference_mode():
                out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
            return out.shape[1] - ids.shape[1]

        def capture(cfg):
            return lambda: sum(1 for _ in generate_steps(lm, input_ids=ids, max_new_tokens=n, capture=cfg,
                                                         stop_at_eos=False))

        methods = {"generate": generate,
                   "capture, no lens": capture(CaptureConfig(logit_lens=False)),
                   "capture, no attention": capture(CaptureConfig(attention=False, logit_lens=False)),
                   "capture, all": capture(CaptureConfig())}
        for fn in methods.values():  # warm-up
            fn()
        times = {m: [] for m in methods}
        for _ in range(args.rounds):
            for m, fn in methods.items():
                times[m].append(time_one(fn))
        med = {m: statistics.median(v) for m, v in times.items()}
        rows.append((name, verify_s, med))
        print(f"{name}: {lm.parts.describe()}; load-time verification {verify_s:.2f} s", flush=True)
    print(f"\n| shape ({args.layers} layers, {args.tokens} tokens, median of {args.rounds}) | generate | "
          "capture, no lens | capture, no attention | capture, all | no lens / generate | all / generate |")
    print("|---|---|---|---|---|---|---|")
    for name, _, med in rows:
        g = med["generate"]
        print(f"| {name} | {g:.1f} ms | {med['capture, no lens']:.1f} ms | {med['capture, no attention']:.1f} ms | "
              f"{med['capture, all']:.1f} ms | {med['capture, no lens'] / g:.2f}x | {med['capture, all'] / g:.2f}x |")


if __name__ == "__main__":
    main()
