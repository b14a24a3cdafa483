"""Which model types OpenMAV reads correctly: the invariant suite run on a tiny model of each type.

:func:`check_invariants` runs, on one loaded model, every check the test suite makes
against an independent recomputation:

- cached step-by-step logits equal an uncached forward over the same tokens (fp32, 1e-4);
- captured attention rows equal ``output_attentions`` of that forward (1e-5);
- hooks attached with no intervention leave the logits bitwise equal;
- the last layer's logit lens is the model's own distribution (1e-5);
- a head ablation equals a hand-written recomputation at the output projection's input;
- batched evaluate-all-heads equals one head at a time.

(The residual decomposition, each share at its own size, the stream end to end and the head
slices are checked at load, in :func:`openmav.backends.verify.verify_parts`.)
:func:`check_model_type` builds tiny random-weight models of the real class for a model type,
with weights spread as trained ones are (:func:`openmav.testing.spread_weights`), twice
(:data:`BUILDS`): two layers with transformers' defaults, and four layers with the settings its
released checkpoints use (:data:`openmav.tiny_configs.REAL_SETTINGS`: multipliers, stream
rescaling, window and hybrid patterns, soft-caps).  It reports ``pass`` (both builds pass),
``fail`` (with the first failed check, and the class of refusal: :func:`refusal_class`) or
``unrunnable`` (plain transformers itself cannot run the tiny config).  ``python -m openmav.support``
sweeps every causal-LM type and writes ``openmav/data/supported_models.json``, which ``mav models``
prints and the README's table is made from.
"""

from __future__ import annotations

import json
import re
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import OpenMavError

DATA = Path(__file__).parent / "data" / "supported_models.json"
PROMPT = "When Mary and John went to the store, John gave"


@dataclass
class TypeResult:
    model_type: str
    status: str  # pass | fail | unrunnable
    adapter: str = ""  # declared row name, or inferred
    how: str = ""  # declared | inferred
    shape: str = ""
    layers: str = ""  # which layers have attention
    reason: str = ""
    seconds: float = 0.0
    builds: dict = field(default_factory=dict)  # build name -> {"status", "reason", "seconds"}

    @property
    def refusal(self) -> str:
        return refusal_class(self.reason) if self.status == "fail" else ""


# (name, layers, with the settings released checkpoints use): a type passes only if every build passes
BUILDS = (("2 layers", 2, False), ("4 layers, real settings", 4, True))

# classes of refusal, by what the first failed check says (first match wins)
REFUSALS = (
    ("residual streams", "several residual streams"),
    ("times in one forward", "blocks run more than once per forward"),
    ("attention sub-layers", "several attention sub-layers per block"),
    ("no module per layer", "no module per layer"),
    ("positions of its own", "positions the model adds"),
    ("positions first", "not a left-to-right stack"),
    ("no list of transformer blocks", "no list of blocks of the configured depth"),
    ("not read at the place or scale", "a share misread at its own size"),
    ("residual stream between", "the stream edited between blocks"),
    ("the residual stream is", "the stream edited between blocks"),
    ("rescales the residual stream", "the stream edited between blocks"),
    ("changes the residual stream", "the stream edited between blocks"),
    ("sub-block outputs", "a block that is not a sum of sub-blocks"),
    ("do not add up", "a block that is not a sum of sub-blocks"),
    ("final norm and unembedding", "no final norm and head found"),
    ("logit lens", "no final norm and head found"),
    ("output projection", "attention without one output projection"),
    ("took longer", "too slow for the sweep"),
    ("vs full forward", "an invariant of the engine fails"),
    ("vs output_attentions", "an invariant of the engine fails"),
    ("hooks changed", "an invariant of the engine fails"),
    ("lens is not", "an invariant of the engine fails"),
    ("ablating", "an invariant of the engine fails"),
    ("evaluate-all-heads", "an invariant of the engine fails"),
)


def refusal_class(reason: str) -> str:
    """The class of a failed build's first reason (:data:`REFUSALS`), ``other`` if none matches."""
    low = reason.lower()
    return next((name for key, name in REFUSALS if key.lower() in low), "other")


class InvariantError(AssertionError):
    pass


def _close(a, b, atol: float, what: str) -> None:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise InvariantError(f"{what}: shapes {a.shape} vs {b.shape}")
    err = float(np.abs(a - b).max()) if a.size else 0.0
    if not err <= atol * max(1.0, float(np.abs(b).max()) if b.size else 1.0):
        raise InvariantError(f"{what}: max difference {err:.2e}")


def _full_forward(lm, ids, **kwargs):
    from .capture.hooks import attention_implementation

    with torch.no_grad(), attention_implementation(lm.model, "eager"):
        return lm.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, **kwargs)


def _param(module, name: str):
    """A parameter's real value, also for a layer offloaded by accelerate (its weights on ``meta``)."""
    value = getattr(module, name, None)
    if isinstance(value, torch.Tensor) and value.device.type == "meta":
        weights = getattr(getattr(module, "_hf_hook", None), "weights_map", None)
        if weights is not None:
            value = weights[name].to(value.dtype)
    return value


def _manual_proj(module, x):
    weight, bias = _param(module, "weight"), _param(module, "bias")
    if isinstance(module, torch.nn.Linear):
        out = x @ weight.to(x.device).T
    elif type(module).__name__ == "Conv1D":
        out = x @ weight.to(x.device)
    else:
        return module(x)
    return out if bias is None else out + bias.to(x.device)


def _check_steps(lm, ids, n: int):
    from .capture import CaptureConfig, generate_steps

    recs = list(generate_steps(lm, input_ids=ids, max_new_tokens=n, stop_at_eos=False,
                               capture=CaptureConfig(lens_top_k=5, lens_in_background=False)))
    all_ids = torch.cat([ids, torch.tensor([[r.token.id for r in recs]], device=ids.device)], 1)
    layers = lm.parts.attention_layers
    for r in recs:  # each step against an uncached forward of exactly the tokens it saw
        out = _full_forward(lm, all_ids[:, :r.position + 1], output_attentions=bool(layers))
        atts = list(getattr(out, "attentions", None) or ())
        # one entry per layer (a hybrid's other mixers give None, or their state): the attention layers'
        atts = [atts[i] for i in layers] if len(atts) == lm.parts.n_layers else [a for a in atts if a is not None]
        _close(r.logits, out.logits[0, -1].float().cpu().numpy(), 1e-4, f"step {r.step} logits vs full forward")
        if layers:
            if len(atts) != len(layers):
                raise InvariantError(f"output_attentions has {len(atts)} layers, the adapter {len(layers)}")
            want = np.stack([a[0, :, -1].float().cpu().numpy() for a in atts])
            _close(r.attention[list(layers)], want, 1e-5, f"step {r.step} attention rows vs output_attentions")
        probs = r.probs
        top = np.argsort(-probs, kind="stable")[:5]
        if not np.allclose(r.lens_probs[-1], probs[top], atol=1e-5):
            raise InvariantError(f"step {r.step}: last layer's lens is not the model's distribution")
    return recs


def _check_hooks_bitwise(lm, ids) -> None:
    from .capture.hooks import CaptureHooks, attention_implementation

    plain = _full_forward(lm, ids).logits
    with CaptureHooks(lm.parts, attention=True, last_only=False), attention_implementation(lm.model, "eager"), \
            torch.no_grad():
        hooked = lm.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
    if not torch.equal(plain, hooked):
        raise InvariantError("hooks changed the logits")


def _check_ablation(lm, ids) -> None:
    from .interventions.ablation import HeadAblation, ablated_logits
    from .interventions.evaluate import evaluate_all_heads

    parts = lm.parts
    layer = parts.attention_layers[-1]
    head = parts.n_heads - 1
    got = ablated_logits(lm, ids, [HeadAblation(layer, head)])
    d = parts.head_dim

    def by_hand(module, inp, out):
        x = inp[0].clone()
        x[..., head * d:(head + 1) * d] = 0
        return _manual_proj(module, x)

    handle = parts.o_proj[layer].register_forward_hook(by_hand)
    try:
        with torch.no_grad():
            want = lm.model(input_ids=ids, use_cache=False).logits[0, -1].float()
    finally:
        handle.remove()
    _close(got.cpu().numpy(), want.cpu().numpy(), 1e-4, f"ablating L{layer}H{head} vs a hand recomputation")
    effects = evaluate_all_heads(lm, ids, batch_size=7)
    base = ablated_logits(lm, ids, [])
    for layer_, head_ in parts.heads()[:: max(1, len(parts.heads()) // 3)]:
        one = ablated_logits(lm, ids, [HeadAblation(layer_, head_)])
        p, q = torch.log_softmax(base.double(), -1), torch.log_softmax(one.double(), -1)
        kl = float((p.exp() * (p - q)).sum())
        if abs(kl - effects.kl[layer_, head_]) > 1e-4 * max(1.0, abs(kl)):
            raise InvariantError(f"batched evaluate-all-heads differs from ablating L{layer_}H{head_} alone")


def check_invariants(lm, n_steps: int = 3) -> None:
    """Raise :class:`InvariantError` naming the first invariant that fails on ``lm``."""
    ids = lm.tokenizer(PROMPT, return_tensors="pt").input_ids.to(lm.device)
    _check_steps(lm, ids, n_steps)
    _check_hooks_bitwise(lm, ids)
    if lm.parts.has_attention:
        _check_ablation(lm, ids)


class _Timeout(Exception):
    pass


def _alarm(*_):
    raise _Timeout()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def check_model_type(model_type: str, timeout_s: int = 60, builds=BUILDS) -> TypeResult:
    """Every build of ``model_type`` (:data:`BUILDS`) through the adapter and every invariant: ``pass`` only
    if each passes; otherwise the first build's reason that did not pass."""
    results = [(name, check_build(model_type, timeout_s, depth, real)) for name, depth, real in builds]
    failed = [(name, r) for name, r in results if r.status != "pass"]
    name, first = failed[0] if failed else results[-1]
    merged = TypeResult(model_type, first.status, first.adapter or results[0][1].adapter,
                        first.how or results[0][1].how, first.shape or results[0][1].shape,
                        first.layers or results[0][1].layers,
                        f"{name}: {first.reason}" if failed and len(builds) > 1 else first.reason,
                        round(sum(r.seconds for _, r in results), 2))
    if failed and first.status == "unrunnable" and any(r.status == "fail" for _, r in results):
        merged.status = "fail"
        name, first = next((n, r) for n, r in failed if r.status == "fail")
        merged.reason = f"{name}: {first.reason}"
    merged.builds = {n: {"status": r.status, "reason": r.reason, "seconds": r.seconds} for n, r in results}
    return merged


def check_build(model_type: str, timeout_s: int = 60, depth: int = 2, real: bool = False) -> TypeResult:
    """Build one tiny model of ``model_type`` (``depth`` layers; ``real``: its checkpoints' settings) and run the
    adapter and every invariant on it."""
    from .backends.loading import wrap_model
    from .testing import tiny_causal_lm, tiny_tokenizer
    from .tiny_configs import tiny_config_for_type

    start = time.perf_counter()
    result = TypeResult(model_type, "unrunnable")
    old = signal.signal(signal.SIGALRM, _alarm) if hasattr(signal, "SIGALRM") else None
    if old is not None:
        signal.alarm(timeout_s)
    try:
        tok = tiny_tokenizer()
        try:
            # the registered class (gemma3: the multimodal one)
            config = tiny_config_for_type(model_type, len(tok), depth, real=real)
            if getattr(config, "is_decoder", None) is False:  # BERT-style layers run causally only as decoders
                config.is_decoder = True
            model = tiny_causal_lm(config)
            ids = tok(PROMPT, return_tensors="pt").input_ids
            with torch.no_grad():
                model(input_ids=ids)
        except _Timeout:
            raise
        except Exception as exc:
            result.reason = f"transformers cannot run the tiny config: {_first_line(exc)}"
            return result
        try:
            lm = wrap_model(model, tok, name=f"tiny-{model_type}")
        except _Timeout:
            raise
        except Exception as exc:  # noqa: BLE001 - a sweep reports every failure and goes on
            result.status, result.reason = "fail", str(exc) if isinstance(exc, OpenMavError) else _first_line(exc)
            return result
        parts = lm.parts
        result.adapter = parts.adapter.name
        result.how = "inferred" if parts.inferred else "declared"
        result.shape = parts.shape
        result.layers = f"{len(parts.attention_layers)}/{parts.n_layers} attention"
        try:
            check_invariants(lm)
            result.status = "pass"
        except _Timeout:
            raise
        except Exception as exc:
            result.status, result.reason = "fail", _first_line(exc)
    except _Timeout:
        result.status, result.reason = "fail", f"took longer than {timeout_s} s"
    finally:
        if old is not None:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
        result.seconds = round(time.perf_counter() - start, 2)
    return result


def causal_lm_types() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def sweep(types=None, progress=None, timeout_s: int = 60) -> list[TypeResult]:
    results = []
    for t in types or causal_lm_types():
        r = check_model_type(t, timeout_s)
        results.append(r)
        if progress:
            progress(r)
    return results


def save(results: list[TypeResult], path: Path = DATA) -> None:
    """Write the sweep's results (to a temporary name, then renamed into place)."""
    import transformers

    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"transformers": transformers.__version__, "torch": torch.__version__,
               "results": [asdict(r) for r in results]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    tmp.replace(path)


def load(path: Path = DATA) -> dict:
    if not path.is_file():
        raise OpenMavError(f"no support table at {path}: run `python -m openmav.support`")
    return json.loads(path.read_text())


def summary(payload: dict) -> dict:
    """Counts over the stored sweep: types, runnable ones, those that pass (every build), per build the passes
    and the refusals by class (:func:`refusal_class`)."""
    rows = payload["results"]
    runnable = [r for r in rows if r["status"] != "unrunnable"]
    passed = [r for r in runnable if r["status"] == "pass"]
    builds = {}
    for r in runnable:
        for name, b in (r.get("builds") or {}).items():
            entry = builds.setdefault(name, {"passed": 0, "refused": {}})
            if b["status"] == "pass":
                entry["passed"] += 1
            else:
                cls = refusal_class(b["reason"]) if b["status"] == "fail" else "cannot run at this build"
                entry["refused"][cls] = entry["refused"].get(cls, 0) + 1
    return {"types": len(rows), "runnable": len(runnable), "passed": len(passed),
            "declared": sum(r["how"] == "declared" for r in passed),
            "inferred": sum(r["how"] == "inferred" for r in passed), "builds": builds}


def _why(reason: str) -> str:
    """A refusal as the table shows it: what the model does, without the line's frame (which class could not
    be read, which adapter was tried, the advice at the end)."""
    reason = re.sub(r"\w+ \([\w.-]+\) cannot be read safely: (inferred adapter: )?", "", reason)
    return re.sub(r"\. (Report the model type if it should be read|Its weights are \w+: try --dtype float32, or "
                  r"report the model type)$", "", reason)


def markdown_table(payload: dict) -> str:
    """The README's "Supported models" section body, generated from the sweep."""
    s = summary(payload)
    names = list(s["builds"])
    per_build = "; ".join(f"{b['passed']} at {name}" for name, b in s["builds"].items())
    refused = "; ".join(f"{name}: " + ", ".join(f"{n} {cls}" for cls, n in sorted(b["refused"].items(),
                                                                                    key=lambda kv: -kv[1]))
                        for name, b in s["builds"].items() if b["refused"])
    lines = [f"Generated by `python -m openmav.support` (transformers {payload['transformers']}, "
             f"torch {payload['torch']}): tiny random-weight models of each causal-LM type transformers "
             f"registers, with weights spread as trained ones are, built twice ({' and '.join(names) or 'once'}: "
             f"the second with the settings its released checkpoints use) and run through the adapter and "
             f"every invariant; a type passes only if both builds pass. **{s['passed']} of {s['runnable']} "
             f"runnable types pass** ({s['declared']} with a declared adapter, {s['inferred']} inferred; "
             f"{per_build}). Refused, by class: {refused or 'none'}. "
             f"{s['types'] - s['runnable']} tiny configs that transformers itself cannot run are listed apart.",
             "", "| model type | " + " | ".join(names or ["result"]) + " | adapter | blocks | layers | why |",
             "| --- | " + " | ".join("---" for _ in (names or ["result"])) + " | --- | --- | --- | --- |"]
    rows = payload["results"]
    for r in [r for r in rows if r["status"] != "unrunnable"]:
        why = _why(r["reason"]).replace("|", "\\|")[:200]
        cells = [(r.get("builds") or {}).get(n, {}).get("status", "") for n in names] or [r["status"]]
        adapter = r["adapter"] if r["adapter"].startswith(f"{r['how']}:") or not r["adapter"] \
            else f"{r['adapter']} ({r['how']})"
        lines.append(f"| {r['model_type']} | " + " | ".join(cells) + f" | {adapter} | "
                     f"{r['shape']} | {r['layers']} | {why} |")
    unrunnable = [r for r in rows if r["status"] == "unrunnable"]
    if unrunnable:
        lines += ["", "Tiny configs plain transformers cannot run (not counted):", ""]
        lines += [f"- {r['model_type']}: {r['reason'].replace('transformers cannot run the tiny config: ', '')[:140]}"
                  for r in unrunnable]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m openmav.support", description=__doc__.split("\n\n")[0])
    p.add_argument("types", nargs="*", help="model types (default: every causal-LM type)")
    p.add_argument("--no-save", action="store_true", help="print only; do not rewrite the stored table")
    p.add_argument("--timeout", type=int, default=60, help="seconds per build before it counts as failed "
                   "(default 60; raise it on a busy machine)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    results = sweep(args.types or None, timeout_s=args.timeout,
                    progress=lambda r: print(f"{r.model_type:28s} {r.status:10s} {r.how:9s} {r.seconds:5.1f}s "
                                             f"{r.reason[:110]}", flush=True))
    if not args.types and not args.no_save:
        save(results)
        print(f"wrote {DATA}", file=sys.stderr)
    payload = {"results": [asdict(r) for r in results]}
    s = summary(payload)
    print(f"{s['passed']} of {s['runnable']} runnable types pass every build", file=sys.stderr)
    for name, b in s["builds"].items():
        print(f"  {name}: {b['passed']} pass; refused: {b['refused']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
