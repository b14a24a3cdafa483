"""Peer benchmark: openmav's capture against plain ``generate``, nnsight and TransformerLens, in one process.

Every method runs on the same SmolLM2-135M-Instruct weights (float32, CPU, greedy, the
same prompt, ``N`` new tokens, going on past EOS), in interleaved rounds after a
warm-up round (the order rotates each round), and must produce the same tokens as
plain ``generate`` (checked; a method that does not is marked in the table).

What each method captures, per generated token:

- ``generate``: nothing (transformers' ``generate``, SDPA attention);
- openmav: ``generate_steps`` records (attention rows and entropy, attention/MLP/residual
  norms, logits and top-20, logit-lens top-5 for every layer), in several configurations
  (where the lens runs, whether it is batched over steps, without the lens, without
  attention and lens);
- nnsight 0.8.1: ``model.generate`` with a trace that saves, per step and layer, the
  attention row (eager attention), the attention and MLP outputs and the residual, and
  the logits; norms, entropy, top-20 and the lens (same final norm and unembedding, ten
  steps per product) are computed after generation;
- TransformerLens 4.3 (``TransformerBridge``): the same per-step quantities through its
  hook points during ``generate`` with its KV cache, the rest after generation.
  TransformerLens 4.3's attention reads the cache from a ``past_key_values`` keyword that
  transformers 5.x's decoder layers now pass as ``cache``, so without a fix its cached
  generation attends to the new token alone and produces other tokens.  This benchmark
  patches ``AttentionBridge._update_kv_cache`` to take ``cache`` too (and says so in its
  output); ``--tl-uncached`` adds its uncached path, which needs no patch.

nnsight and TransformerLens each get their own copy of the model (loaded from the same
converted safetensors): both wrap or replace the modules of the model they are given.

Peak memory is measured per method in a fresh process: the peak resident set size during
one generation (``/proc/self/clear_refs`` resets it after loading) minus the resident set
before it, beside the bytes of what the method keeps (records or saved tensors).

The logit lens's cost is reported beside the bare ``[rows, d] x [d, vocab]`` product it
rests on, per step and batched over steps.

Usage: ``python bench/bench_peers.py [--tokens 100] [--rounds 3] [--threads T] [--skip-peers]``
(``make bench-peers`` installs nnsight and TransformerLens into ``bench/.peers-venv`` and runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402

PROMPT = "The capital of France is"
LENS_K, TOP_K, PEER_LENS_STEPS = 5, 20, 10
# generate N tokens past any EOS without suppressing it (``min_new_tokens`` would forbid EOS and so change the
# tokens; openmav's stop_at_eos=False and TransformerLens's stop_at_eos=False keep the model's own choice)
NO_EOS: list[int] = []
TL_PATCH = ("TransformerLens: AttentionBridge._update_kv_cache patched to read transformers 5's `cache` "
            "keyword (unpatched, its cached generate attends to the new token only and gives other tokens)")


@dataclass
class Method:
    name: str
    captures: str
    run: Callable[[torch.Tensor, int], tuple[list[int], int]]  # (ids, n) -> (new token ids, bytes kept)
    group: str = "openmav"
    times: list[float] = field(default_factory=list)
    tokens: list[int] | None = None
    kept: int = 0


# -- loading -----------------------------------------------------------------------------------------------
def load_openmav():
    from openmav.backends.loading import load_model

    return load_model("smollm2-135m", device="cpu")


def model_dir() -> str:
    from openmav.backends.sources import converted_gguf_dir, resolve_source

    return str(converted_gguf_dir(resolve_source("smollm2-135m").gguf))


def load_hf(attn: str = "eager"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model_dir()
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


def have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# -- what the peers compute after generation ---------------------------------------------------------------
def summarize(rows: list[torch.Tensor], attn_out: torch.Tensor, mlp_out: torch.Tensor, resid: torch.Tensor,
              logits: torch.Tensor, final_norm, unembed) -> dict:
    """openmav's per-token quantities from raw captures: ``rows[t] [L, H, S_t]``, the others ``[N, L, d]``,
    ``logits [N, V]``.  The lens goes through the model's own final norm and unembedding,
    ``PEER_LENS_STEPS`` steps per product."""
    with torch.inference_mode():
        out = {"attn_norms": attn_out.norm(dim=-1), "mlp_norms": mlp_out.norm(dim=-1),
               "mlp_max_abs": mlp_out.abs().amax(-1), "residual_norms": resid.norm(dim=-1),
               "attention": rows, "entropy": [torch.special.entr(r).sum(-1) for r in rows]}
        probs = torch.softmax(logits.float(), -1)
        top = torch.topk(probs, TOP_K)
        out["top_ids"], out["top_probs"] = top.indices, top.values
        n, L, d = resid.shape
        ids, lens_probs = [], []
        for s in range(0, n, PEER_LENS_STEPS):
            lg = unembed(final_norm(resid[s:s + PEER_LENS_STEPS].reshape(-1, d))).float()
            t = torch.topk(lg, LENS_K)
            ids.append(t.indices)
            lens_probs.append(torch.exp(t.values - torch.logsumexp(lg, -1, keepdim=True)))
        out["lens_ids"] = torch.cat(ids).reshape(n, L, LENS_K)
        out["lens_probs"] = torch.cat(lens_probs).reshape(n, L, LENS_K)
        return out


def nbytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v) for v in obj)
    if hasattr(obj, "__dataclass_fields__"):
        return sum(nbytes(getattr(obj, f)) for f in obj.__dataclass_fields__)
    return 0


# -- the methods -------------------------------------------------------------------------------------------
def plain_generate(lm):
    def run(ids, n):
        with torch.inference_mode():
            out = lm.model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=NO_EOS,
                                    pad_token_id=lm.tokenizer.pad_token_id)
        return out[0, ids.shape[1]:].tolist(), 0

    return Method("transformers `generate` (sdpa)", "nothing", run, group="generate")


OPENMAV_CONFIGS = {
    # name: (CaptureConfig kwargs, what it captures)
    "openmav, default capture config": ({}, "attention rows and entropy, attention/MLP/residual norms, logits and "
                                            "top-20, logit-lens top-5 for every layer, one record per token"),
    "openmav, lens in the step loop": ({"lens_in_background": False}, "the same"),
    "openmav, lens on a worker thread": ({"lens_in_background": True}, "the same"),
    "openmav, lens batched over 10 steps": ({"lens_in_background": False, "lens_batch": 10},
                                            "the same, records 10 at a time"),
    "openmav, lens batched over 10 steps, worker thread": ({"lens_in_background": True, "lens_batch": 10},
                                                           "the same, records 10 at a time"),
    "openmav without the lens": ({"logit_lens": False}, "the same minus the lens"),
    "openmav without attention and lens": ({"attention": False, "logit_lens": False}, "norms, logits, top-20"),
}


def openmav_method(lm, name):
    from openmav.capture import CaptureConfig, generate_steps

    kwargs, captures = OPENMAV_CONFIGS[name]
    config = CaptureConfig(**kwargs)

    def run(ids, n):
        records = list(generate_steps(lm, max_new_tokens=n, capture=config, stop_at_eos=False, input_ids=ids))
        return [r.token.id for r in records], nbytes(records)

    return Method(name, captures, run)


def nnsight_method():
    from nnsight import TransformersModel

    hf, tok = load_hf("eager")
    model = TransformersModel(hf, tokenizer=tok)
    L = hf.config.num_hidden_layers

    def run(ids, n):
        with model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=NO_EOS,
                            pad_token_id=tok.pad_token_id) as tracer:
            steps = list().save()
            for _ in tracer.iter[:n]:
                per_layer = []
                for layer in model.model.layers[:L]:
                    attn = layer.self_attn.output
                    per_layer.append((attn[1][0, :, -1].clone(), attn[0][0, -1].clone(),
                                      layer.mlp.output[0, -1].clone(), layer.output[0, -1].clone()))
                steps.append((per_layer, model.lm_head.output[0, -1].clone()))
            result = tracer.result.save()
        rows = [torch.stack([p[0] for p in s[0]]) for s in steps]
        attn_out, mlp_out, resid = (torch.stack([torch.stack([p[i] for p in s[0]]) for s in steps]) for i in (1, 2, 3))
        logits = torch.stack([s[1] for s in steps])
        kept = summarize(rows, attn_out, mlp_out, resid, logits, hf.model.norm, hf.lm_head)
        kept["logits"] = logits
        return result[0, ids.shape[1]:].tolist(), nbytes(kept)

    return Method("nnsight 0.8.1, the same quantities",
                  "attention rows (eager), attention/MLP/residual outputs and logits per step; norms, entropy, "
                  "top-20 and lens after generation", run, group="nnsight")


def patch_transformer_lens() -> None:
    from transformer_lens.model_bridge.generalized_components import attention

    original = attention.AttentionBridge._update_kv_cache
    if getattr(original, "openmav_patched", False):
        return

    def update_kv_cache(self, k, v, **kwargs):
        if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
            kwargs["past_key_values"] = kwargs["cache"]
        return original(self, k, v, **kwargs)

    update_kv_cache.openmav_patched = True
    attention.AttentionBridge._update_kv_cache = update_kv_cache


def transformer_lens_method(cached: bool = True):
    from transformer_lens.model_bridge import TransformerBridge

    if cached:
        patch_transformer_lens()
    hf, tok = load_hf("eager")
    bridge = TransformerBridge.boot_transformers(model_dir(), hf_model=hf, tokenizer=tok)
    L = hf.config.num_hidden_layers

    def run(ids, n):
        store = {key: [[] for _ in range(L)] for key in ("rows", "attn", "mlp", "resid")}
        logits = []

        def keep(key, layer, take):
            def hook(tensor, hook):
                store[key][layer].append(take(tensor))
            return hook

        hooks = [("unembed.hook_out", lambda t, hook: logits.append(t[0, -1].clone()))]
        for layer in range(L):
            hooks += [(f"blocks.{layer}.attn.hook_pattern", keep("rows", layer, lambda t: t[0, :, -1].clone())),
                      (f"blocks.{layer}.hook_attn_out", keep("attn", layer, lambda t: t[0, -1].clone())),
                      (f"blocks.{layer}.hook_mlp_out", keep("mlp", layer, lambda t: t[0, -1].clone())),
                      (f"blocks.{layer}.hook_resid_post", keep("resid", layer, lambda t: t[0, -1].clone()))]
        with torch.inference_mode(), bridge.hooks(fwd_hooks=hooks):
            out = bridge.generate(ids, max_new_tokens=n, do_sample=False, use_past_kv_cache=cached,
                                  stop_at_eos=False, verbose=False)
        rows = [torch.stack([store["rows"][layer][t] for layer in range(L)]) for t in range(n)]
        attn_out, mlp_out, resid = (torch.stack([torch.stack([store[k][layer][t] for layer in range(L)])
                                                 for t in range(n)]) for k in ("attn", "mlp", "resid"))
        kept = summarize(rows, attn_out, mlp_out, resid, torch.stack(logits), hf.model.norm, hf.lm_head)
        kept["logits"] = torch.stack(logits)
        return out[0, ids.shape[1]:].tolist(), nbytes(kept)

    if cached:
        name, how = "TransformerLens 4.3 bridge, the same quantities (KV cache, patched)", "KV cache"
    else:
        name, how = "TransformerLens 4.3 bridge, the same quantities (uncached)", "no KV cache"
    return Method(name, f"hooks per step ({how}), logits; norms, entropy, top-20 and lens after generation", run,
                  group="transformer_lens")


def build(names: list[str] | None, args, lm) -> list[Method]:
    """The methods to run (all of them, or those named); peers only where their package is installed."""
    makers: dict[str, Callable[[], Method]] = {"generate": lambda: plain_generate(lm)}
    for name in OPENMAV_CONFIGS:
        makers[name] = (lambda name=name: openmav_method(lm, name))
    if not args.skip_peers and have("nnsight"):
        makers["nnsight"] = nnsight_method
    if not args.skip_peers and have("transformer_lens"):
        makers["transformer_lens"] = transformer_lens_method
        if args.tl_uncached:
            makers["transformer_lens_uncached"] = lambda: transformer_lens_method(cached=False)
    return [make() for key, make in makers.items() if names is None or key in names]


def keys(args) -> list[str]:
    out = all_keys(args)
    return [k for k in out if not args.only or k == "generate" or k in args.only]


def all_keys(args) -> list[str]:
    out = ["generate", *OPENMAV_CONFIGS]
    if not args.skip_peers and have("nnsight"):
        out.append("nnsight")
    if not args.skip_peers and have("transformer_lens"):
        out.append("transformer_lens")
        if args.tl_uncached:
            out.append("transformer_lens_uncached")
    return out


# -- the lens against its bare product ---------------------------------------------------------------------
def lens_costs(lm, batch: int = 10, repeats: int = 15) -> list[dict]:
    """ms per token of openmav's lens (``lens_top``) and of the bare product over the same rows,
    per step and batched over ``batch`` steps, interleaved so both see the same machine."""
    from openmav.capture.lens import lens_top

    parts = lm.parts
    weight = parts.unembed.weight
    L, d = parts.n_layers, weight.shape[1]
    per_step = L - 1 if lm.extra.get("lens_last_is_logits") else L
    gen = torch.Generator().manual_seed(0)
    out = []
    for steps in (1, batch):
        x = torch.randn(steps * per_step, d, generator=gen) * 3
        with torch.inference_mode():
            normed = parts.final_norm(x) if parts.final_norm is not None else x
        lens_t, bare_t = [], []
        with torch.inference_mode():
            for i in range(repeats + 1):
                t0 = time.perf_counter()
                lens_top(lm, x, LENS_K)
                t1 = time.perf_counter()
                torch.mm(normed, weight.t())
                t2 = time.perf_counter()
                if i:  # the first of each is a warm-up
                    lens_t.append((t1 - t0) * 1000 / steps)
                    bare_t.append((t2 - t1) * 1000 / steps)
        out.append({"steps": steps, "rows": steps * per_step, "lens_ms": statistics.median(lens_t),
                    "bare_ms": statistics.median(bare_t)})
    return out


# -- memory, one method per fresh process ------------------------------------------------------------------
def rss_kb(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def memory_worker(key: str, args) -> dict:
    lm = load_openmav() if key == "generate" or key in OPENMAV_CONFIGS else None
    (method,) = build([key], args, lm)
    if lm is not None:
        tokenizer = lm.tokenizer
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir())
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    # imports and one-time set-up before the baseline: the adapter checks, the first worker thread's torch
    # pool (16 tokens: past the steps in which the default configuration measures where its lens runs)
    method.run(ids, 16)
    import gc

    gc.collect()
    base = rss_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak resident set starts again from here
    tokens, kept = method.run(ids, args.tokens)
    peak = rss_kb("VmHWM")
    return {"key": key, "base_mb": base / 1024, "peak_mb": peak / 1024, "delta_mb": (peak - base) / 1024,
            "kept_mb": kept / 2**20, "tokens": len(tokens)}


def memory_all(args) -> dict[str, dict]:
    out = {}
    for key in keys(args):
        cmd = [sys.executable, __file__, "--memory-worker", key, "--tokens", str(args.tokens)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if args.tl_uncached:
            cmd.append("--tl-uncached")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"memory of {key} failed:\n{proc.stderr[-1500:]}", file=sys.stderr)
            continue
        out[key] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  memory {key:>52}: peak {out[key]['delta_mb']:7.1f} MB above {out[key]['base_mb']:.0f} MB, "
              f"kept {out[key]['kept_mb']:.1f} MB", flush=True)
    return out


def cpu_name() -> str:
    """The processor's model name (Linux), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# -- the run -----------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own)")
    parser.add_argument("--skip-peers", action="store_true", help="plain generate and openmav only")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--tl-uncached", action="store_true", help="also TransformerLens without its KV cache")
    parser.add_argument("--only", nargs="+", metavar="KEY",
                        help="run only these methods (generate, nnsight, transformer_lens or an openmav configuration "
                             "name); plain generate always runs, as the reference")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--readme", type=Path, help="write the tables as Markdown here (the README includes "
                        "docs/readme/tables/peers.md)")
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_worker:
        print(json.dumps(memory_worker(args.memory_worker, args)))
        return

    from openmav.capture.lens import available_cores, lens_placement

    lm = load_openmav()
    ids = lm.tokenizer(PROMPT, return_tensors="pt").input_ids
    methods = build(keys(args), args, lm)
    n = args.tokens
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"SmolLM2-135M-Instruct, float32, CPU, greedy, {n} new tokens, prompt {PROMPT!r}; {available_cores()} cores, "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads; load average {load:.2f} at the start")
    placement = {True: "a worker thread", False: "the step loop", None: "measured in the first steps"}
    print(f"openmav's lens placement on this machine: {placement[lens_placement('cpu')]} "
          f"({available_cores()} cores, {torch.get_num_threads()} torch threads)")
    if any(m.group == "transformer_lens" for m in methods):
        print(TL_PATCH)

    for m in methods:  # warm-up: imports, one-time checks, allocator growth
        m.tokens, m.kept = m.run(ids, n)
    reference = next(m.tokens for m in methods if m.group == "generate")
    for r in range(args.rounds):
        order = methods[r % len(methods):] + methods[:r % len(methods)]
        for m in order:
            start = time.perf_counter()
            tokens, m.kept = m.run(ids, n)
            m.times.append((time.perf_counter() - start) * 1000 / n)
            if tokens != m.tokens:
                m.tokens = None  # not even the same from run to run
        print(f"  round {r + 1}: " + ", ".join(f"{m.times[-1]:.1f}" for m in methods), flush=True)
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    if lm.extra.get("lens_placement"):
        print(f"the default configuration's last measured placement: {lm.extra['lens_placement']}")

    lens = lens_costs(lm)
    memory = {} if args.skip_memory else memory_all(args)
    by_key = dict(zip(keys(args), methods))

    gen_ms = statistics.median(methods[0].times)
    nn = next((m for m in methods if m.group == "nnsight"), None)
    nn_ms = statistics.median(nn.times) if nn else None
    gen_mem = memory.get("generate")
    print(f"\nload average {load_end:.2f} at the end of the timed rounds; ms/token: median of {args.rounds} rounds "
          "(ratios from the medians)\n")
    table = [f"Measured by `bench/bench_peers.py` on {cpu_name()}, "
             f"{available_cores()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
             f"{n} new tokens, median of {args.rounds} interleaved rounds; load average {load:.2f} at the start, "
             f"{load_end:.2f} at the end of the timed rounds.", ""]

    def emit(line: str = "") -> None:
        print(line)
        table.append(line)

    emit("| method | captures | ms/token | best round | x plain generate | x nnsight "
         "| peak memory above the loaded model | kept | same tokens |")
    emit("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for key, m in by_key.items():
        ms = statistics.median(m.times)
        mem = memory.get(key)
        same = "yes" if m.tokens == reference else "**no**"
        peak = f"{mem['delta_mb']:.0f} MB" if mem else "-"
        kept = f"{mem['kept_mb']:.1f} MB" if mem else f"{m.kept / 2**20:.1f} MB"
        vs_nn = f"{ms / nn_ms:.2f}" if nn_ms else "-"
        emit(f"| {m.name} | {m.captures} | {ms:.1f} | {min(m.times):.1f} | {ms / gen_ms:.2f} | {vs_nn} | {peak} "
             f"| {kept} | {same} |")
        rows.append({"key": key, "name": m.name, "ms_per_token": ms, "times": m.times, "same_tokens": same == "yes",
                     "memory": mem})
    if gen_mem:
        emit("\nPeak memory against plain `generate` plus what is kept:\n")
        for key in OPENMAV_CONFIGS:
            mem = memory.get(key)
            if mem:
                allowed = gen_mem["delta_mb"] + mem["kept_mb"]
                whole = gen_mem["peak_mb"] + mem["kept_mb"]
                emit(f"- {key}: {mem['delta_mb']:.0f} MB above the loaded model against {allowed:.0f} MB "
                     f"({mem['delta_mb'] / allowed:.2f}x); whole process {mem['peak_mb']:.0f} MB against "
                     f"{whole:.0f} MB ({mem['peak_mb'] / whole:.2f}x)")

    emit("\n| logit lens | rows per product | lens ms/token | bare product ms/token | lens / bare |")
    emit("| --- | --- | --- | --- | --- |")
    for c in lens:
        what = "per step" if c["steps"] == 1 else f"batched over {c['steps']} steps"
        emit(f"| {what} | {c['rows']} | {c['lens_ms']:.2f} | {c['bare_ms']:.2f} | {c['lens_ms'] / c['bare_ms']:.2f} |")
    loop = {k: statistics.median(by_key[k].times) for k in OPENMAV_CONFIGS if k in by_key}
    base = loop.get("openmav without the lens")
    if base:
        print("\nthe lens in the loop (ms/token over the same capture without it): " + ", ".join(
            f"{k.removeprefix('openmav, ')}: {v - base:+.1f}" for k, v in loop.items() if "without" not in k))
    if args.readme:  # the README's tables come from here (docs/build_readme.py includes the file)
        tmp = args.readme.with_name(args.readme.name + ".tmp")
        tmp.write_text("\n".join(table).strip() + "\n")
        tmp.replace(args.readme)
        print(f"\nwrote {args.readme}")
    if args.json:
        args.json.write_text(json.dumps({"tokens": n, "threads": torch.get_num_threads(), "cores": available_cores(),
                                         "load": [load, load_end], "methods": rows, "lens": lens}, indent=1))


if __name__ == "__main__":
    main()
