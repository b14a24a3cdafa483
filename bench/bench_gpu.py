"""GPU benchmark: capture vs plain ``generate``, evaluate-all-heads and circuit discovery, on CUDA.

Random weights of real shapes (no hub access needed), built from Llama configs:
SmolLM2-135M (fp32), Llama-3.2-1B (bf16) and Llama-3.1-8B (bf16).  For each, in one
process with interleaved rounds after a warm-up, ms per token of:

- ``generate``: ``model.generate`` (SDPA), no capture;
- ``capture, all``: attention rows (through the registered rows function), norms, logits,
  top-k and the logit lens;
- ``capture, no lens`` and ``capture, no attention``;

then evaluate-all-heads on one prompt (batched vs one head per forward, on a sample of
heads) and circuit discovery on the IOI prompt.  Prints a Markdown table naming the GPU.

Usage: ``python bench/bench_gpu.py [--shapes 135m 1b 8b] [--tokens 64] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

IOI = "When Mary and John went to the store, John gave a drink to"

SHAPES = {
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, vocab_size=49152, dtype="float32"),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, dtype="bfloat16"),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, dtype="bfloat16"),
}


def build(shape: str):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from openmav.backends.loading import wrap_model
    from openmav.testing import tiny_tokenizer

    spec = dict(SHAPES[shape])
    dtype = getattr(torch, spec.pop("dtype"))
    config = LlamaConfig(max_position_embeddings=4096, bos_token_id=0, eos_token_id=0, pad_token_id=0, **spec)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    return wrap_model(model, tiny_tokenizer(), name=f"llama-{shape} (random weights)")


def ms_per_token(fn, rounds: int) -> float:
    import torch

    times = []
    for _ in range(rounds):
        torch.cuda.synchronize()
        start = time.perf_counter()
        n = fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000 / n)
    return statistics.median(times)


def bench_shape(shape: str, tokens: int, rounds: int) -> dict:
    import torch

    from openmav.capture import CaptureConfig, generate_steps
    from openmav.interventions.ablation import HeadAblation, ablated_logits
    from openmav.interventions.circuit import discover_circuit, logit_diff, single_token
    from openmav.interventions.evaluate import evaluate_all_heads

    lm = build(shape)
    ids = lm.tokenizer("The capital of France is", return_tensors="pt").input_ids.to(lm.device)

    def generate():
        with torch.inference_mode():
            out = lm.model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                    pad_token_id=0)
        return out.shape[1] - ids.shape[1]

    def capture(cfg):
        return lambda: sum(1 for _ in generate_steps(lm, input_ids=ids, max_new_tokens=tokens, capture=cfg,
                                                     stop_at_eos=False))

    methods = {"generate": generate, "capture, all": capture(CaptureConfig()),
               "capture, no lens": capture(CaptureConfig(logit_lens=False)),
               "capture, no attention": capture(CaptureConfig(attention=False, logit_lens=False))}
    for fn in methods.values():
        fn()  # warm-up
    result = {m: ms_per_token(fn, rounds) for m, fn in methods.items()}
    ioi = lm.tokenizer(IOI, return_tensors="pt").input_ids.to(lm.device)
    torch.cuda.synchronize()
    start = time.perf_counter()
    evaluate_all_heads(lm, ioi, batch_size=64)
    torch.cuda.synchronize()
    result["evaluate all heads (s)"] = time.perf_counter() - start
    sample = lm.parts.heads()[:: max(1, len(lm.parts.heads()) // 16)]
    start = time.perf_counter()
    for layer, head in sample:
        ablated_logits(lm, ioi, [HeadAblation(layer, head)])
    torch.cuda.synchronize()
    result["one head per forward (s, all heads, extrapolated)"] = \
        (time.perf_counter() - start) / len(sample) * len(lm.parts.heads())
    corrupt = lm.tokenizer(IOI.replace("Mary", "Anne"), return_tensors="pt").input_ids.to(lm.device)
    if corrupt.shape == ioi.shape:
        metric = logit_diff(single_token(lm, " Mary"), single_token(lm, " John"))
        start = time.perf_counter()
        discover_circuit(lm, ioi, corrupt, metric, top_n=8)
        torch.cuda.synchronize()
        result["circuit discovery (s)"] = time.perf_counter() - start
    result["heads"] = len(lm.parts.heads())
    del lm
    torch.cuda.empty_cache()
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device is available: run it on a machine with an NVIDIA GPU", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name(0)
    rows = {}
    for shape in args.shapes:
        rows[shape] = bench_shape(shape, args.tokens, args.rounds)
        print(shape, {k: round(v, 3) for k, v in rows[shape].items()}, flush=True)
    print(f"\n{gpu}, torch {torch.__version__}; random weights of real shapes; {args.tokens} tokens, "
          f"median of {args.rounds}\n")
    print("| shape | generate ms/tok | capture all | no lens | no attention | all / generate | no lens / generate "
          "| evaluate all heads | one head per forward | circuit discovery |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for shape, r in rows.items():
        g = r["generate"]
        print(f"| {shape} | {g:.2f} | {r['capture, all']:.2f} | {r['capture, no lens']:.2f} | "
              f"{r['capture, no attention']:.2f} | {r['capture, all'] / g:.2f}x | {r['capture, no lens'] / g:.2f}x | "
              f"{r['evaluate all heads (s)']:.2f} s ({r['heads']} heads) | "
              f"{r['one head per forward (s, all heads, extrapolated)']:.2f} s | "
              f"{r.get('circuit discovery (s)', float('nan')):.2f} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
