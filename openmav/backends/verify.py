"""The invariants that make an adapter trustworthy, checked on the model itself at load.

:func:`verify_parts` runs one reference forward (:func:`check_ids`: twelve tokens, or past a
short sliding window; eager attention) and one short *pushed* forward, and checks, for
every layer, the same invariants the test suite uses:

1. **residual decomposition**: the block's output is its input plus each share (attention or
   mixer, MLP, and the modules beside them) times the row's multiplier for it, through the
   norms the row names (:func:`compose`);
2. **each share at its own size**: in the pushed forward every share's output is moved by a
   random vector as large as the block's output, so a share read at the wrong place or scale
   fails by the size of the push, however small the share is in the model's own forward
   (a mixer at transformers' initialisation, a multiplier of 0.7 on a part that adds 1e-6);
   the same forward zeroes every head's slice of the output projections (5);
3. **the stream end to end**: the residual the engine reports after block ``l`` (the block's
   output times the row's stream scale) is what the next block receives, and the last one is
   what the final norm receives, so a model that edits the stream between blocks is read as
   the row says or refused;
4. **logit lens**: the lens of the last layer equals the model's own logits;
5. **attention rows**: each attention layer's captured weights are ``[b, n_heads, q, k]``,
   causal, rows summing to one (at most one with attention sinks), and equal to
   ``output_attentions``;
6. **head slices**: the output projection's input is ``n_heads * head_dim`` wide, and
   zeroing it (every head of the layer) leaves an attention output that no longer
   depends on the tokens (the projection's bias, normed where a post-norm follows).

Any failure raises :class:`~openmav.errors.UnsupportedModelError` with one line naming
the layer and the invariant; numbers from an unverified adapter are never shown.

:func:`check_steps` then checks the step loop's own path on the same reference: a
prefill plus cached one-token steps, in each attention implementation the step loop
runs (the attention-rows function where its rows equal eager attention, else eager;
and the model's own implementation when attention is not captured), must give the
reference's logits (and, for the rows function, its attention rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..capture import fast_attention
from ..capture.cached_forward import CachedForward
from ..capture.hooks import attention_implementation
from ..errors import UnsupportedModelError
from .adapters import SHAPES, find_module
from .parts import ModelParts, config_int, push_hook, text_config
from .probe import Probe, probe_forward, probe_ids, weights_of


def tolerance(model) -> float:
    dtype = next(model.parameters()).dtype
    return 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1.0))


def _times(scale, x: torch.Tensor) -> torch.Tensor:
    """``scale * x``: a float, ``[d]`` factors, or ``([d] factors, [d] offset)`` (a gate's share)."""
    if isinstance(scale, tuple):
        return _times(scale[0], x) + scale[1].to(device=x.device, dtype=x.dtype)
    if isinstance(scale, torch.Tensor):
        return x * scale.to(device=x.device, dtype=x.dtype)
    return x if scale == 1.0 else x * scale


def _normed(norm, x: torch.Tensor) -> torch.Tensor:
    if norm is None:
        return x
    param = next(norm.parameters(), None)
    with torch.no_grad():
        return norm(x.to(param.dtype) if param is not None else x).float()


def compose(parts: ModelParts, layer: int, pre: torch.Tensor, attn: torch.Tensor, mlp: torch.Tensor | None,
            attn_extra=(), mlp_extra=()) -> torch.Tensor:
    """The block output predicted from its input and its shares' outputs (the sum of
    :class:`~openmav.backends.adapters.BlockShape`): ``mid = attn_norm(k_a * pre + s_a * attn + sum s_j * extra_j)``,
    ``post = mlp_norm(k_m * mid + s_m * mlp + sum s_j * extra_j)``."""
    mid = _times(parts.keep("attn", layer), pre) + _times(parts.share_scale("attn_out", layer), attn)
    for j, x in enumerate(attn_extra):
        mid = mid + _times(parts.share_scale("attn_extra", layer, j), x)
    mid = _normed(parts.attn_norm[layer], mid)
    if mlp is None and not mlp_extra:
        return _normed(parts.mlp_norm[layer], _times(parts.keep("mlp", layer), mid))
    post = _times(parts.keep("mlp", layer), mid)
    if mlp is not None:
        post = post + _times(parts.share_scale("mlp_out", layer), mlp)
    if SHAPES[parts.shape].after_norm:  # the extras join the normed sum, which is normed again (an adapter)
        post = _normed(parts.mlp_norm[layer], post)
    for j, x in enumerate(mlp_extra):
        post = post + _times(parts.share_scale("mlp_extra", layer, j), x)
    return _normed(parts.mlp_norm[layer], post)


def check_length(model) -> tuple[int, tuple[int, ...]]:
    """``(tokens, steps)`` of the load-time checks: twelve tokens (beyond a top-8 selection), or past a
    short sliding window (``window + 4``); the cached-step checks run the last ``n`` tokens one at a
    time for each ``n`` in ``steps`` (3, and up to the window for a short one)."""
    window = config_int(text_config(model.config), "sliding_window", "attention_window_size", "window_size",
                        "keep_window_size", "local_window_size")
    if window and window + 4 <= 64:  # cross a short window: prefill past it, then up to it
        return window + 4, (3, 6)
    return 12, (3,)


def check_ids(model) -> torch.Tensor:
    """The token ids ``[1, T]`` every load-time check runs on (the probe ids, repeated to :func:`check_length`)."""
    ids = probe_ids(model)
    length = check_length(model)[0]
    return ids.repeat(1, length // ids.shape[1] + 1)[:, :length]


def _final_input(parts: ModelParts):
    """The module that receives the residual after the last block: the final norm, else the unembedding's first."""
    if parts.final_norm is not None:
        return parts.final_norm
    head = parts.unembed
    return head[0] if isinstance(head, torch.nn.Sequential) and len(head) else head


def _watched(parts: ModelParts) -> list:
    """The modules whose outputs the decomposition reads: blocks, the norms a block applies to its own input
    first, every share, the attention modules."""
    firsts = [m for b in parts.blocks for m in [find_module(b, parts.adapter.resid_in)] if m is not None]
    return [*parts.blocks, *firsts, *(m for m in parts.attn_out if m is not None),
            *(m for m in parts.mlp_out if m is not None), *(m for e in parts.attn_extra + parts.mlp_extra for m in e),
            *(a for a in parts.attn if a is not None)]


def verify_parts(model, parts: ModelParts, ids: torch.Tensor | None = None):
    """Check every invariant above on ``model``; raise one line naming what failed.

    Returns the reference forward (a :class:`~openmav.backends.probe.Probe`: eager attention,
    no cache, on ``ids``, default :func:`check_ids`), which the step checks reuse."""
    tol = tolerance(model)
    ids = check_ids(model) if ids is None else ids
    final_in = _final_input(parts)
    inputs = [*parts.blocks, *(o for o in parts.o_proj if o is not None), *([final_in] if final_in else [])]
    try:
        run = probe_forward(model, _watched(parts), inputs_of=inputs, output_attentions=parts.has_attention, ids=ids)
    except UnsupportedModelError:
        raise
    except Exception as exc:  # the forward itself failed: not a model we can read
        raise UnsupportedModelError(f"the verification forward failed ({type(exc).__name__}: "
                                    f"{str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ''})") from exc
    _check_decomposition(parts, run, tol)
    _check_stream(parts, run, tol, final_in)
    _check_lens(parts, run, tol)
    if parts.has_attention:
        _check_attention(parts, run, tol)
    _check_pushed(model, parts, run, tol)
    return run


# --- cached steps and the attention-rows function, on the reference forward ---------------------------------------

ROWS_TOL = 1e-5  # the rows function's rows against eager attention's (fp32); logits 10x that, relative


@dataclass
class CachedRun:
    """What a prefill plus one-token cached steps gave: per call, the logits ``[q, V]`` and,
    per module asked for, the attention weights ``[1, h, q, k]``."""

    logits: list = field(default_factory=list)
    weights: dict = field(default_factory=dict)


def cached_run(model, impl: str | None, ids: torch.Tensor, n: int, modules=(), output_attentions: bool = False,
               prefilled=None, forks: dict | None = None) -> CachedRun | None:
    """Run ``ids[:, :-n]`` as a prefill, then the last ``n`` tokens one at a time with the model's cache
    (:class:`~openmav.capture.cached_forward.CachedForward`, as the step loop does), in attention
    implementation ``impl``; ``None`` when that fails to run.

    ``prefilled``: the state of another run right after the same prefill (from its ``forks``), carried
    on instead of running the prefill again (``logits[0]`` is then ``None``); ``forks``: receives this
    run's state after its prefill under ``n`` (a copy of the cache; the model's own tensors shared)."""
    run = CachedRun(weights={m: [] for m in modules})

    def keep(mod, args, output):
        w = weights_of(output)
        if w is not None:
            run.weights[mod].append(w.detach().float().clone())

    handles = [m.register_forward_hook(keep) for m in run.weights]
    length = ids.shape[1]
    try:
        with torch.no_grad(), attention_implementation(model, impl):
            step = CachedForward(model, output_attentions=output_attentions)
            if prefilled is None:
                run.logits.append(step(ids[:, :length - n]).logits[0].float())
            else:
                step.state, step.seen, step.history, step.stateless = prefilled
                run.logits.append(None)
            if forks is not None:
                forks[n] = _fork(model, step)
            for i in range(length - n, length):
                run.logits.append(step(ids[:, i:i + 1]).logits[0].float())
    except Exception:  # noqa: BLE001 - a cache that fails to run is a cache not to use
        return None
    finally:
        for h in handles:
            h.remove()
    return run


def _fork(model, step):
    """``step``'s state, to go on from in another run: the cache deep-copied, the model's modules and
    tensors shared (a cache that refers to them does not copy the weights); ``None`` if it cannot be copied."""
    import copy

    try:
        memo = {id(x): x for x in (*model.modules(), *model.parameters(), *model.buffers())}
        state = None if step.state is None else (step.state[0], copy.deepcopy(step.state[1], memo))
    except Exception:  # noqa: BLE001 - the other run does its own prefill
        return None
    return state, step.seen, step.history, step.stateless


def _uncached_logits(model, impl: str | None, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), attention_implementation(model, impl):
        return model(input_ids=ids, use_cache=False).logits[0].float()


def _steps_close(run: CachedRun, full: torch.Tensor, n: int, tol: float) -> bool:
    cached = torch.stack([logits[-1] for logits in run.logits[1:]])
    return cached.shape == full[-n:].shape and _rel(cached, full[-n:]) <= tol


def steps_match(model, impl: str | None, reference=None, output_attentions: bool = False,
                ids: torch.Tensor | None = None, prefilled: dict | None = None, forks: dict | None = None) -> bool:
    """Whether a prefill plus cached steps in ``impl`` give the logits of one uncached forward.

    Compared with ``reference`` (the eager forward of :func:`verify_parts`) where given and
    within tolerance, else with ``impl``'s own uncached forward (one more forward), so an
    implementation that differs from eager only in rounding is judged on itself.  ``prefilled``
    (``n`` -> state, another run's ``forks``): the steps go on from another implementation's
    prefill of the same tokens (the cache holds the same keys and values); where that does not
    match the reference, the run is judged again on a prefill of its own."""
    ids = reference.ids if reference is not None else (check_ids(model) if ids is None else ids)
    tol = tolerance(model)
    if reference is not None and reference.logits is None:
        reference = None
    own = reference.logits[0] if reference is not None and _impl_name(model, impl) == "eager" else None
    for n in check_length(model)[1]:
        if n >= ids.shape[1]:
            continue
        start = (prefilled or {}).get(n)
        run = cached_run(model, impl, ids, n, output_attentions=output_attentions, prefilled=start, forks=forks)
        if start is not None and (run is None or reference is None
                                  or not _steps_close(run, reference.logits[0], n, tol)):
            run = cached_run(model, impl, ids, n, output_attentions=output_attentions, forks=forks)
        if run is None:
            return False
        if reference is not None and _steps_close(run, reference.logits[0], n, tol):
            continue
        if own is None:
            try:
                own = _uncached_logits(model, impl, ids)
            except Exception:  # noqa: BLE001
                return False
        if not _steps_close(run, own, n, tol):
            return False
    return True


def _impl_name(model, impl: str | None) -> str | None:
    return impl if impl is not None else getattr(model.config, "_attn_implementation", None)


def _rows_equal(run: CachedRun, reference, modules, n: int, tol: float) -> bool:
    """The rows of each call of a cached run equal the reference's (eager, whole sequence), and so do the logits.

    A sliding-window layer's cache may keep only the last keys: its rows are the right end
    of the reference's, whose left end must then be zero."""
    length = reference.ids.shape[1]
    prefill = length - n
    diffs = []
    for m in modules:
        calls, ref = run.weights.get(m) or [], reference.weights.get(m)
        if ref is None or len(calls) != n + 1:
            return False
        for k, w in enumerate(calls):
            q0, q1 = (0, prefill) if k == 0 else (prefill + k - 1, prefill + k)
            expected = ref[..., q0:q1, :q1]
            if w.dim() != 4 or w.shape[:-1] != expected.shape[:-1] or w.shape[-1] > q1:
                return False
            cut = q1 - w.shape[-1]
            if cut:
                diffs.append(expected[..., :cut].abs().max())
            diffs.append((w - expected[..., cut:].to(w.device)).abs().max())
    logits = torch.cat(run.logits)
    full = reference.logits[0]
    if logits.shape != full.shape:
        return False
    rows_err = float(torch.stack([d.to(diffs[0].device) for d in diffs]).max()) if diffs else 0.0
    return rows_err <= tol and float((logits - full).abs().max()) <= 10 * tol * max(1.0, float(full.abs().max()))


def check_steps(model, parts: ModelParts, reference) -> tuple[bool, bool]:
    """``(rows_function, cached_steps)`` for ``parts``, on the reference forward of :func:`verify_parts`.

    Only the implementations the step loop runs are checked: with attention captured, the
    attention-rows function (:mod:`openmav.capture.fast_attention`) where a prefill plus
    cached steps through it give eager attention's rows and logits (1e-5), else eager
    attention; without, the model's own implementation.  A cached run that fails is
    judged again the way it was before sharing forwards: the rows function on one
    uncached forward, each cache against its own implementation's uncached forward.
    """
    rows, ok, capture, forks = False, True, None, {}
    if parts.has_attention:
        rows, ok = _rows_function_check(model, parts, reference, forks)
        if rows:
            capture = fast_attention.NAME
        else:
            capture, forks = "eager", {}
            ok = steps_match(model, "eager", reference, output_attentions=True, forks=forks)
    own = getattr(model.config, "_attn_implementation", None)
    if ok and (capture is None or own != capture):  # the model's own implementation: attention not captured
        ok = steps_match(model, None, reference, prefilled=forks)
    return rows, ok


def _rows_function_check(model, parts: ModelParts, reference, forks: dict | None = None) -> tuple[bool, bool]:
    """``(the rows function equals eager attention, cached steps through it give the reference's logits)``.

    In half precision the rows seldom agree to 1e-5 (the fast kernel's rounding reaches the next
    layers), so the one uncached forward decides first there; in fp32 the cached run does."""
    name = fast_attention.register()
    whole = None
    if tolerance(model) > 1e-4:
        whole = rows_match_eager(model, parts, ROWS_TOL, reference=reference)
        if not whole:
            return False, False
    mods = [parts.attn[i] for i in parts.attention_layers]
    rounds = [n for n in check_length(model)[1] if n < reference.ids.shape[1]]
    fast_attention.STATE.full = True  # whole patterns from the prefill
    runs = [cached_run(model, name, reference.ids, n, mods, output_attentions=True, forks=forks) for n in rounds]
    if getattr(model.config, "_attn_implementation", None) == name:
        return False, False  # not switched back: never leave a model changed
    if rounds and reference.logits is not None and \
            all(run is not None and _rows_equal(run, reference, mods, n, ROWS_TOL) for run, n in zip(runs, rounds)):
        return True, True
    if whole is None:
        whole = rows_match_eager(model, parts, ROWS_TOL, reference=reference)
    if not whole:
        return False, False
    if forks is not None:
        forks.clear()  # from runs that did not match: the next implementation does its own prefill
    return True, steps_match(model, name, output_attentions=True, ids=reference.ids)


# --- the invariants ---------------------------------------------------------------------------------------------

class _Failures:
    """Per-layer checks in layer order, their numbers read in one transfer (no sync per layer on a GPU).

    ``check(value, limit, message)`` fails when ``value > limit`` (``value`` a 0-dim tensor; NaN
    passes unless ``nan_fails``, as a ``>`` comparison has it); ``fail(message)`` fails
    unconditionally and ends the list (nothing after it could be reported first)."""

    def __init__(self):
        self.items: list = []
        self.closed = False

    def check(self, value, limit: float, message, nan_fails: bool = False) -> None:
        if not self.closed:
            self.items.append((value, limit, message, nan_fails))

    def fail(self, message: str) -> None:
        if not self.closed:
            self.items.append((None, 0.0, message, True))
            self.closed = True

    def raise_first(self) -> None:
        tensors = [v.reshape(1).float() for v, *_ in self.items if isinstance(v, torch.Tensor)]
        values = iter(torch.cat([t.to(tensors[0].device) for t in tensors]).tolist()) if tensors else iter(())
        for value, limit, message, nan_fails in self.items:
            if value is None:
                raise UnsupportedModelError(message)
            x = next(values) if isinstance(value, torch.Tensor) else float(value)
            if x > limit or (nan_fails and x != x):
                raise UnsupportedModelError(message(x) if callable(message) else message)


def _rel_t(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().max() / b.abs().max().clamp_min(1.0)


def _get(run, module, what: str, layer: int):
    if module not in run.outputs and module not in run.inputs:
        raise UnsupportedModelError(f"layer {layer}: the {what} ({type(module).__name__}) did not run in a forward")
    return run.outputs.get(module, run.inputs.get(module))


def _streams(post: torch.Tensor, share: torch.Tensor) -> str:
    """What the model does when a block's output is not shaped like its shares' (several residual streams)."""
    if post.dim() == 4 and share.shape[-1] == post.shape[-1]:
        return (f"its blocks carry {post.shape[-2]} residual streams (hyper-connections) where the engine reads "
                "one residual stream")
    return "attention/MLP outputs are not residual-shaped"


def _shares(parts: ModelParts, run, layer: int):
    """``(pre, post, attn, mlp, attn_extra, mlp_extra)`` of ``layer`` as ``run`` recorded them."""
    block = parts.blocks[layer]
    pre = run.inputs.get(block)
    first = find_module(block, parts.adapter.resid_in)
    if first is not None and first in run.outputs:  # the block norms its own input before anything else
        pre = run.outputs[first]
    post = _get(run, block, "block", layer)
    if pre is None or pre.shape != post.shape:
        raise UnsupportedModelError(f"layer {layer}: the block's residual input could not be read")
    attn = _get(run, parts.attn_out[layer], "attention output", layer)
    a_ex = [_get(run, m, "attention output", layer) for m in parts.attn_extra[layer]]
    mlp_mod = parts.mlp_out[layer]
    mlp = _get(run, mlp_mod, "MLP output", layer) if mlp_mod is not None else None
    m_ex = [_get(run, m, "MLP output", layer) for m in parts.mlp_extra[layer]] if mlp is not None else []
    for x in (attn, *a_ex, *([mlp] if mlp is not None else []), *m_ex):
        if x.shape != post.shape:
            raise UnsupportedModelError(f"layer {layer}: {_streams(post, x)}")
    return pre, post, attn, mlp, a_ex, m_ex


def _check_decomposition(parts: ModelParts, run, tol: float, message=None) -> None:
    failures = _Failures()
    for layer, block in enumerate(parts.blocks):
        if layer in parts.skipped_layers:
            if block in run.outputs:
                failures.fail(f"layer {layer} was to be skipped by text-only input but ran")
                break
            continue
        try:
            pre, post, attn, mlp, a_ex, m_ex = _shares(parts, run, layer)
            err = _rel_t(compose(parts, layer, pre, attn, mlp, a_ex, m_ex), post)
        except UnsupportedModelError as exc:
            failures.fail(str(exc))
            break
        failures.check(err, tol, (lambda e, layer=layer: message(layer, e)) if message else (
            lambda e, layer=layer: f"layer {layer}: attention + MLP outputs do not add up to the block's change "
                                   f"of the residual stream (relative error {e:.1e})"))
    failures.raise_first()


def _running(parts: ModelParts) -> list[int]:
    return [i for i in range(parts.n_layers) if i not in parts.skipped_layers]


def _stream_edit(out: torch.Tensor, got: torch.Tensor) -> str:
    """What a model does to its residual stream between two places, in words (for a refusal)."""
    flat_o, flat_g = out.reshape(-1, out.shape[-1]).double(), got.reshape(-1, got.shape[-1]).double()
    c = float((flat_o * flat_g).sum() / (flat_o * flat_o).sum().clamp_min(1e-30))
    if float((c * flat_o - flat_g).abs().max()) <= 1e-4 * max(1.0, float(flat_g.abs().max())):
        return f"rescales the residual stream by {c:.4g}"
    per_dim = (flat_o * flat_g).sum(0) / (flat_o * flat_o).sum(0).clamp_min(1e-30)
    if float((per_dim * flat_o - flat_g).abs().max()) <= 1e-4 * max(1.0, float(flat_g.abs().max())):
        return "rescales the residual stream per dimension"
    return "changes the residual stream"


def _check_stream(parts: ModelParts, run, tol: float, final_in) -> None:
    """The residual reported after each block (its output times the stream scale) is what comes next."""
    running = _running(parts)
    failures = _Failures()
    for a, b in zip(running, running[1:] + [None]):
        out = run.outputs.get(parts.blocks[a])
        nxt = run.inputs.get(parts.blocks[b]) if b is not None else run.inputs.get(final_in)
        if out is None or nxt is None:
            continue  # not a tensor input (the decomposition names a block that did not run)
        out = out * parts.stream_scale(a)
        where = f"between block {a} and block {b}" if b is not None else \
            f"between the last block ({a}) and the {'final norm' if parts.final_norm is not None else 'unembedding'}"
        if nxt.shape != out.shape and b is None and nxt.dim() == out.dim() and nxt.shape[-1] == out.shape[-1] \
                and nxt.shape[-2] < out.shape[-2]:
            out = out[..., -nxt.shape[-2]:, :]  # the head reads only the last positions
        if nxt.shape != out.shape:
            failures.fail(f"the residual stream is {tuple(nxt.shape)} {where} but the block's output is "
                          f"{tuple(out.shape)}: the model reshapes or merges its residual streams, which the engine "
                          "cannot represent")
            break
        failures.check(_rel_t(out, nxt), tol, lambda e, out=out, nxt=nxt, where=where: (
            f"the model {_stream_edit(out, nxt)} {where} (relative error {e:.1e} against the residual the "
            "engine would report), which the row does not describe"))
    failures.raise_first()


def _check_lens(parts: ModelParts, run, tol: float) -> None:
    if run.logits is None:
        raise UnsupportedModelError("the model returned no logits: it has no language-model head")
    index = _running(parts)[-1]
    last = run.outputs[parts.blocks[index]] * parts.stream_scale(index)
    with torch.no_grad():
        lens = parts.lens(last.to(next(parts.unembed.parameters()).dtype)).float()
    if lens.shape != run.logits.shape:
        raise UnsupportedModelError(f"the logit lens gives {tuple(lens.shape)} but the model's logits are "
                                    f"{tuple(run.logits.shape)}: final norm or unembedding not found")
    err = _rel(lens, run.logits)
    if err > tol:
        raise UnsupportedModelError(f"the last layer's logit lens differs from the model's logits (relative error "
                                    f"{err:.1e}): the final norm, unembedding or logit scaling is not the model's")


def _check_attention(parts: ModelParts, run, tol: float) -> None:
    seq = run.ids.shape[1]
    recorded = list(run.attentions or ())
    if len(recorded) == parts.n_layers and len(recorded) != len(parts.attention_layers):
        recorded = [recorded[i] for i in parts.attention_layers]  # a hybrid's other mixers have entries too
    failures = _Failures()
    for j, layer in enumerate(parts.attention_layers):
        w = run.weights.get(parts.attn[layer])
        if w is None:
            failures.fail(f"layer {layer}: {type(parts.attn[layer]).__name__} returned no attention "
                          "weights in eager mode")
            break
        if w.shape[1] != parts.n_heads or w.shape[-2:] != (seq, seq):
            failures.fail(f"layer {layer}: attention weights are {tuple(w.shape)}, expected "
                          f"[1, {parts.n_heads}, {seq}, {seq}]")
            break
        sums = w.sum(-1)
        ok = ((sums <= 1 + tol) & (sums > 0)).all() if parts.adapter.sinks else \
            ((sums - 1).abs() <= max(tol, 1e-5)).all()
        failures.check((~ok).float(), 0.5, f"layer {layer}: attention rows do not sum to 1")
        hint = " (BERT-style models run causally only with is_decoder=True)" \
            if getattr(parts.blocks[0], "is_decoder", None) is False or \
            getattr(getattr(parts.attn[layer], "config", None), "is_decoder", None) is False else ""
        failures.check(torch.triu(w[0], diagonal=1).abs().max(), tol,
                       f"layer {layer}: attention looks at later tokens (not causal){hint}")
        if len(recorded) == len(parts.attention_layers):
            failures.check(_rel_t(w, recorded[j].to(w.device)), tol,
                           f"layer {layer}: captured attention differs from output_attentions")
    failures.raise_first()


HEAD_SLICE_TOKENS = 4  # the pushed forward: attention constant over these positions once every head is zeroed


def _pushes(parts: ModelParts, run, n: int) -> dict:
    """Per share module (and per child the row does not read), a fixed random vector ``[1, n, d]`` as large
    (RMS) as its block's output in ``run``."""
    gen = torch.Generator().manual_seed(20)
    pushes = {}
    for layer in _running(parts):
        post = run.outputs.get(parts.blocks[layer])
        if post is None or post.dim() != 3:
            continue
        size = float(post.pow(2).mean().sqrt()) or 1.0
        for m in [*parts.shares(layer), *parts.loose_children(layer)]:
            if m not in pushes:
                pushes[m] = torch.randn(1, n, post.shape[-1], generator=gen) * size
    return pushes


def _share_names(parts: ModelParts, layer: int) -> list:
    """``(module, kind, j, words)`` of each share of ``layer``."""
    out = [(parts.attn_out[layer], "attn_out", None, "attention" if parts.attn[layer] is not None else "mixer")]
    out += [(m, "attn_extra", j, type(m).__name__ + " beside the attention")
            for j, m in enumerate(parts.attn_extra[layer])]
    if parts.mlp_out[layer] is not None:
        out.append((parts.mlp_out[layer], "mlp_out", None, "MLP"))
        out += [(m, "mlp_extra", j, type(m).__name__ + " beside the MLP") for j, m in enumerate(parts.mlp_extra[layer])]
    return out


def _misread_share(parts: ModelParts, pushed, pushes: dict, layer: int) -> str:
    """Which share of ``layer`` a failed pushed decomposition points at, and the multiplier it joins with:
    the error's least-squares coefficients on the pushes (each share's, and each unread child's) together,
    the largest added to the row's multiplier for that share."""
    try:
        pre, post, attn, mlp, a_ex, m_ex = _shares(parts, pushed, layer)
        err = (post - compose(parts, layer, pre, attn, mlp, a_ex, m_ex)).double()
    except UnsupportedModelError:
        return "a share"
    named = [(m, kind, j, words) for m, kind, j, words in _share_names(parts, layer) if m in pushes]
    named += [(m, "loose", None, f"{type(m).__name__}, which the row does not read,")
              for m in parts.loose_children(layer) if m in pushes]
    if not named or parts.compose != "additive":
        return "a share"
    cols = torch.stack([pushes[m].to(err.device).double().reshape(-1) for m, *_ in named], 1)
    coef = torch.linalg.lstsq(cols, err.reshape(-1, 1)).solution[:, 0]
    k = int(coef.abs().argmax())
    c, (_, kind, j, words) = float(coef[k]), named[k]
    if kind == "loose":
        return f"the {words} joins the residual stream (at {c:.3g}), and"
    scale = parts.share_scale(kind, layer, j)
    if isinstance(scale, (torch.Tensor, tuple)):
        return f"the {words}"
    keep = parts.keep("mlp", layer) if kind.startswith("attn") else 1.0
    keep = 1.0 if isinstance(keep, torch.Tensor) else float(keep)
    return f"the {words} (it joins at {scale * keep + c:.3g}, the row says {scale * keep:.3g})"


def _check_pushed(model, parts: ModelParts, run, tol: float) -> None:
    """One short forward with every share pushed by a random vector the block's size and, where the model
    has attention, every head's slice of the output projections zeroed: the decomposition must hold
    in it (each share at its own size), and the zeroed heads must silence the attention output."""
    n = min(HEAD_SLICE_TOKENS, run.ids.shape[1])
    pushes = _pushes(parts, run, n)
    if parts.has_attention:
        width = parts.n_heads * parts.head_dim
        for layer in parts.attention_layers:
            x = run.inputs.get(parts.o_proj[layer])
            if x is None or x.shape[-1] != width:
                got = None if x is None else x.shape[-1]
                raise UnsupportedModelError(f"layer {layer}: the output projection's input is {got} wide, not "
                                            f"{parts.n_heads} heads x {parts.head_dim}")
    edits = {parts.o_proj[layer]: torch.zeros_like for layer in parts.attention_layers}
    applied: set = set()
    handles = [m.register_forward_hook(push_hook(v, applied)) for m, v in pushes.items()]
    try:
        pushed = probe_forward(model, _watched(parts), inputs_of=parts.blocks, edits=edits, output_attentions=False,
                               ids=run.ids[:, :n])
    except Exception as exc:  # noqa: BLE001 - a forward that a push breaks: the shares are not what the row says
        raise UnsupportedModelError(f"the pushed verification forward failed ({type(exc).__name__})") from exc
    finally:
        for h in handles:
            h.remove()
    if parts.has_attention:
        _check_head_slices(parts, run, pushed, {m: pushes[m] for m in applied}, tol)
    _check_decomposition(parts, pushed, tol, message=lambda layer, e: (
        f"layer {layer}: {_misread_share(parts, pushed, pushes, layer)} is not read at the place or scale where it "
        f"joins the residual stream: pushing each share by a vector the block's size moves the block's output "
        f"differently (relative error {e:.1e})"))


def _check_head_slices(parts: ModelParts, run, ablated, pushes: dict, tol: float) -> None:
    def silenced(module):  # constant over positions once every head is zeroed, varying before
        out, normal = ablated.outputs.get(module), run.outputs.get(module)
        if out is None or normal is None or out.dim() != 3 or normal.dim() != 3:
            return None
        if module in pushes:
            out = out - pushes[module].to(out.device).reshape(out.shape)
        normal = normal[:, :out.shape[1]]
        if out.shape != normal.shape or out.shape[1] < 2:
            return None
        # <= 0 when silenced: the ablated output is constant and the normal one is not
        return torch.maximum(_rel_t(out[:, 1:], out[:, :1].expand_as(out[:, 1:])) - tol,
                             tol - _rel_t(normal[:, 1:], normal[:, :1].expand_as(normal[:, 1:])).to(out.device))

    failures = _Failures()
    for layer in parts.attention_layers:
        # the attention module's own output (its output projection is last), or what it adds to the residual
        scores = [s for s in (silenced(parts.attn[layer]), silenced(parts.attn_out[layer])) if s is not None]
        message = (f"layer {layer}: zeroing every head's slice of {type(parts.o_proj[layer]).__name__}'s input "
                   "does not silence the attention output: the output projection is not the one found")
        if not scores:
            failures.fail(message)
            break
        score = torch.fmin(scores[0], scores[1].to(scores[0].device)) if len(scores) == 2 else scores[0]
        failures.check(score, 0.0, message, nan_fails=True)
    failures.raise_first()


# --- the attention-rows function against eager attention ------------------------------------------------------

def rows_match_eager(model, parts, tol: float = 1e-5, reference=None) -> bool:
    """On the model itself: do the attention-rows function's (:mod:`openmav.capture.fast_attention`) patterns and logits equal eager attention's?

    ``reference``: the eager forward already run on the model (a
    :class:`~openmav.backends.probe.Probe` with these layers' weights and the logits, as
    :func:`openmav.backends.verify.verify_parts` returns it); else one is run here.  At load,
    :func:`openmav.backends.verify.check_steps` checks the same through a prefill and cached
    steps first, and calls this only where that differs."""
    fast_attention.register()
    mods = [parts.attn[i] for i in parts.attention_layers]
    try:
        eager = reference if reference is not None else probe_forward(model, mods, output_attentions=False)
        with attention_implementation(model, fast_attention.NAME):
            fast_attention.STATE.full = True
            fast = _probe_with(model, mods, eager.ids)
    except Exception:  # noqa: BLE001 - a model this function cannot drive keeps eager attention
        return False
    if getattr(model.config, "_attn_implementation", None) == fast_attention.NAME:
        return False  # not switched back: never leave a model changed
    for m in mods:
        a, b = eager.weights.get(m), fast.weights.get(m)
        if a is None or b is None or a.shape != b.shape or float((a - b).abs().max()) > tol:
            return False
    if eager.logits is None:
        return False
    scale = max(1.0, float(eager.logits.abs().max()))
    return float((eager.logits - fast.logits).abs().max()) <= 10 * tol * scale


def _probe_with(model, mods, ids=None):
    """Like :func:`openmav.backends.probe.probe_forward`, in whatever attention the model has now."""
    ids = probe_ids(model) if ids is None else ids
    run = Probe(ids=ids)
    handles = [m.register_forward_hook(lambda mod, a, o: run.weights.__setitem__(mod, weights_of(o).float()))
               for m in mods]
    try:
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    run.logits = out.logits.float()
    return run
