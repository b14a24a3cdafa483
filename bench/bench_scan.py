"""Corpus-scan benchmark: ``openmav.scan`` against a plain batched forward, nnsight, TransformerLens and Ray.

Everything reads the same windows of the same real corpus (Debian's ``fortunes`` as English prose and
the Python standard library's own source as code, packed into windows of 128 tokens by
:mod:`openmav.scan.windows`) through the bundled SmolLM2-135M (float32, CPU), in one process, and
prints tokens per second with ratios side by side:

- ``plain forward``: the model's own forward over each batch of windows (logits included, no hooks);
- ``scan: every layer, neurons and heads`` and ``scan: neurons of 4 layers``: the whole ``openmav.scan``
  call, corpus reading, tokenizing, merging and the Parquet tables included;
- ``scan: every layer, neurons``: what the peers compute, for the like-for-like ratio;
- ``nnsight``: the loop a user writes with nnsight 0.8.1: a trace per batch saving every layer's MLP
  activations (the down projection's input), then ``torch.topk`` per layer merged with the running top-k;
- ``TransformerLens``: the same with ``run_with_cache`` and a names filter on ``blocks.{l}.mlp.hook_post``
  (TransformerBridge 4.3 over the same weights);
- ``scan on Ray``: the whole scan on a local Ray cluster of two one-CPU workers (its start included);
- peak memory of a scan in fresh processes at 1x and 4x the corpus.

The peers run when importable (``make bench-scan`` runs this in ``bench/.peers-venv`` with them).
Usage: ``python bench/bench_scan.py [--tokens 200000] [--skip-peers] [--skip-ray] [--skip-memory] [--peers-only]
[--readme PATH]`` (``--peers-only``: the plain forward, the neuron scan, the peers and peak memory).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_peers import cpu_name, have, load_hf, model_dir  # noqa: E402

FORTUNES = Path("/usr/share/games/fortunes")
K = 20
CONTEXT = 128


def build_corpus(folder: Path, tokens: int) -> Path:
    """``corpus.jsonl``: fortunes (prose) and standard-library modules (code), alternating, about ``4 * tokens``
    characters (the scans stop at ``tokens``)."""
    import sysconfig

    prose = []
    for path in sorted(FORTUNES.glob("*")):
        if path.suffix in (".dat", ".u8") or path.is_dir() or path.is_symlink():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        prose += [t.strip() for t in text.split("\n%\n") if t.strip()]
    if not prose:
        raise SystemExit("Debian's fortunes are not installed: apt-get install fortunes")
    code = [p.read_text(encoding="utf-8", errors="replace")
            for p in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))]
    out = folder / "corpus.jsonl"
    budget = 5 * tokens
    with open(out, "w", encoding="utf-8") as fh:
        i = j = 0
        while budget > 0 and (i < len(prose) or j < len(code)):
            for _ in range(20):  # twenty fortunes, then a module
                if i < len(prose):
                    fh.write(json.dumps({"text": prose[i]}) + "\n")
                    budget -= len(prose[i])
                    i += 1
            if j < len(code):
                fh.write(json.dumps({"text": code[j]}) + "\n")
                budget -= len(code[j])
                j += 1
    return out


def windows(lm, corpus: Path, tokens: int, batch_size: int):
    from openmav.scan.data import open_corpus
    from openmav.scan.windows import batches

    return [torch.as_tensor(b.ids) for b in batches(lm.tokenizer, open_corpus(corpus).documents(), CONTEXT,
                                                    batch_size, tokens)]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def plain_forward(model, batches):
    def run():
        with torch.inference_mode():
            for ids in batches:
                model(input_ids=ids, use_cache=False)
    return run


def merge_topk(best, values, keys):
    """The running top-k per unit merged with a batch's: ``values`` ``[positions, units]``."""
    k = min(K, values.shape[0])
    v, i = values.topk(k, dim=0)
    g = keys[i]
    if best is None:
        return v, g
    allv, allg = torch.cat([best[0], v]), torch.cat([best[1], g])
    top, where = allv.topk(K, dim=0)
    return top, allg.gather(0, where)


def nnsight_topk(batches):
    from nnsight import TransformersModel

    hf, tok = load_hf("sdpa")
    model = TransformersModel(hf, tokenizer=tok)
    layers = hf.config.num_hidden_layers

    def run():
        best = [None] * layers
        offset = 0
        for ids in batches:
            # without no_grad each batch's autograd graph stays alive through the running top-k (past 24 GB here)
            with torch.no_grad(), model.trace(ids):  # a comprehension's names do not come back from nnsight's block
                saved = list().save()
                for layer in model.model.layers[:layers]:
                    saved.append(layer.mlp.down_proj.input)
            keys = torch.arange(offset, offset + ids.numel())
            for i in range(layers):
                acts = saved[i].reshape(-1, saved[i].shape[-1])
                best[i] = merge_topk(best[i], acts, keys)
            offset += ids.numel()
    return run


def transformer_lens_topk(batches):
    from transformer_lens.model_bridge import TransformerBridge

    hf, tok = load_hf("sdpa")
    bridge = TransformerBridge.boot_transformers(model_dir(), hf_model=hf, tokenizer=tok)
    layers = hf.config.num_hidden_layers
    names = {f"blocks.{i}.mlp.hook_post" for i in range(layers)}
    if not names <= set(bridge.hook_dict):
        raise RuntimeError("TransformerBridge has no blocks.L.mlp.hook_post here")

    def run():
        best = [None] * layers
        offset = 0
        for ids in batches:
            with torch.inference_mode():
                _, cache = bridge.run_with_cache(ids, names_filter=lambda name: name in names)
            keys = torch.arange(offset, offset + ids.numel())
            for i in range(layers):
                acts = cache[f"blocks.{i}.mlp.hook_post"]
                best[i] = merge_topk(best[i], acts.reshape(-1, acts.shape[-1]), keys)
            offset += ids.numel()
    return run


def scan_call(lm, corpus, tokens, out, **kwargs):
    import openmav

    def run():
        openmav.scan(lm if not kwargs.get("ray") else "smollm2-135m", corpus, out, max_tokens=tokens, force=True,
                     device="cpu", **kwargs)
    return run


def memory_worker(corpus: str, tokens: int) -> None:
    """In a fresh process: the resident set after loading the model, and its highest value during one whole scan
    (sampled every 20 ms: the process's own high-water mark is set by loading, which converts the weights)."""
    import threading

    import psutil

    import openmav
    from openmav.backends.loading import load_model

    lm = load_model("smollm2-135m", device="cpu")
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.wait(0.02):
            peak[0] = max(peak[0], proc.memory_info().rss)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    with tempfile.TemporaryDirectory() as tmp:
        openmav.scan(lm, corpus, Path(tmp) / "scan", max_tokens=tokens, force=True)
    done.set()
    watcher.join()
    print(json.dumps({"tokens": tokens, "base_mb": base / 2**20, "peak_mb": peak[0] / 2**20}))


def memory(corpus: Path, tokens: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--memory-worker", str(corpus), "--tokens", str(tokens)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--peers-only", action="store_true",
                        help="only the plain forward, openmav's neuron scan beside nnsight and TransformerLens, and "
                             "peak memory (a shorter run)")
    parser.add_argument("--readme", type=Path, help="write the table as Markdown here (docs/readme/tables/scan.md)")
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        memory_worker(args.memory_worker, args.tokens)
        return

    from openmav.backends.loading import load_model
    from openmav.scan.run import default_batch_size

    lm = load_model("smollm2-135m", device="cpu")
    tmp = Path(tempfile.mkdtemp(prefix="bench-scan-"))
    corpus = build_corpus(tmp, args.tokens)
    batch = default_batch_size(CONTEXT, "cpu")
    data = windows(lm, corpus, args.tokens, batch)
    n = sum(int(b.numel()) for b in data)
    load = os.getloadavg()[0]
    print(f"{n:,} tokens in {len(data)} batches of {batch} windows of {CONTEXT}; {cpu_name()}, "
          f"{torch.get_num_threads()} threads, load average {load:.2f}", flush=True)
    L = lm.parts.n_layers
    spread = ",".join(str(round(i * (L - 1) / 3)) for i in range(4))
    rows: list[tuple[str, float]] = []

    def measure(name, fn):
        fn_time = timed(fn)
        rows.append((name, n / fn_time))
        print(f"  {name:<48} {n / fn_time:8.0f} tokens/s  ({fn_time:6.1f} s)", flush=True)

    out = tmp / "scan"
    measure("plain forward (no hooks, logits)", plain_forward(lm.model, data))
    if not args.peers_only:
        measure("scan: every layer, neurons and heads", scan_call(lm, corpus, n, out))
        measure(f"scan: neurons of 4 layers ({spread})", scan_call(lm, corpus, n, out, layers=spread,
                                                                  units="neurons"))
    measure("scan: every layer, neurons", scan_call(lm, corpus, n, out, units="neurons"))
    if not args.skip_peers:
        for name, maker, module in (("nnsight 0.8.1: trace + topk per batch", nnsight_topk, "nnsight"),
                                    ("TransformerLens 4.3: run_with_cache + topk", transformer_lens_topk,
                                     "transformer_lens")):
            if have(module):
                try:
                    measure(name, maker(data))
                except Exception as exc:  # noqa: BLE001 - reported in the table
                    print(f"  {name}: failed ({type(exc).__name__}: {str(exc)[:200]})", flush=True)
            else:
                print(f"  {name}: not installed (make bench-scan installs it)", flush=True)
    if not args.skip_ray and not args.peers_only and have("ray"):
        measure("scan on Ray, 2 local workers: every layer, neurons and heads",
                scan_call(lm, corpus, n, tmp / "ray", ray=True, ray_workers=2))
    speed = dict(rows)
    plain = speed["plain forward (no hooks, logits)"]
    full = speed.get("scan: every layer, neurons and heads")
    lines = ["| run | tokens/s | x plain forward | notes |", "| --- | --- | --- | --- |"]
    for name, tps in rows:
        note = ""
        if name.startswith(("nnsight", "TransformerLens")):
            note = f"openmav's neuron scan: {speed['scan: every layer, neurons'] / tps:.2f}x its speed"
        if name.startswith("scan on Ray"):
            note = f"time {full / tps:.2f}x the in-process scan"
        lines.append(f"| {name} | {tps:,.0f} | {tps / plain:.2f}x | {note} |")
    if not args.skip_memory:
        small, big = memory(corpus, n // 4), memory(corpus, n)
        grow = (big["peak_mb"] - small["peak_mb"]) / small["peak_mb"]
        lines.append(f"| peak memory during a scan, {small['tokens']:,} then {big['tokens']:,} tokens | | | "
                     f"{small['peak_mb']:.0f} MB then {big['peak_mb']:.0f} MB ({grow:+.1%}); the loaded model "
                     f"alone {big['base_mb']:.0f} MB |")
    table = "\n".join(lines)
    caption = (f"*{n:,} tokens (Debian's fortunes and the Python standard library, windows of {CONTEXT}, batches of "
               f"{batch}), SmolLM2-135M float32 on {cpu_name()}, {torch.get_num_threads()} threads, load average "
               f"{load:.2f} at the start; made by `python bench/bench_scan.py{' --peers-only' if args.peers_only else ''}`.*")
    print("\n" + table + "\n\n" + caption)
    if args.readme:
        args.readme.write_text(table + "\n\n" + caption + "\n")


if __name__ == "__main__":
    main()
