"""The invariants that make an adapter trustworthy, checked on the model itself at load.

:func:`verify_parts` runs two short forwards (eight tokens, eager attention) and checks,
for every layer, the same invariants the test suite uses:

1. **residual decomposition**: ``attn_out + mlp_out == resid_post - resid_pre`` (times the
   residual scale; through the two post-LayerNorms for ``post_ln`` blocks);
2. **logit lens**: the lens of the last layer equals the model's own logits;
3. **attention rows**: each attention layer's captured weights are ``[b, n_heads, q, k]``,
   causal, rows summing to one (at most one with attention sinks), and equal to
   ``output_attentions``;
4. **head slices**: the output projection's input is ``n_heads * head_dim`` wide, and
   zeroing it (every head of the layer) leaves an attention output that no longer
   depends on the tokens (the projection's bias, normed where a post-norm follows).

Any failure raises :class:`~openmav.errors.UnsupportedModelError` with one line naming
the layer and the invariant; numbers from an unverified adapter are never shown.
"""

from __future__ import annotations

import torch

from ..errors import UnsupportedModelError
from .adapters import find_module
from .parts import ModelParts
from .probe import probe_forward


def tolerance(model) -> float:
    dtype = next(model.parameters()).dtype
    return 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1.0))


def compose(parts: ModelParts, layer: int, pre: torch.Tensor, attn: torch.Tensor,
            mlp: torch.Tensor | None) -> torch.Tensor:
    """The block output predicted from its input and its two sub-block outputs."""
    s = parts.residual_scale
    if parts.compose == "post_ln":
        with torch.no_grad():
            mid = parts.attn_norm[layer](pre + attn)
            return parts.mlp_norm[layer](mid + (0 if mlp is None else mlp)).float()
    return pre + s * attn + (0 if mlp is None else parts.mlp_scale * mlp)


def verify_parts(model, parts: ModelParts) -> None:
    """Check every invariant above on ``model``; raise one line naming what failed."""
    tol = tolerance(model)
    watch = [*parts.blocks, *(m for m in parts.attn_out if m is not None), *(m for b in parts.blocks
                                                for m in [find_module(b, parts.adapter.resid_in)] if m is not None), *(m for m in parts.mlp_out if m is not None),
             *(m for e in parts.attn_extra + parts.mlp_extra for m in e),
             *(a for a in parts.attn if a is not None)]
    inputs = [*parts.blocks, *(o for o in parts.o_proj if o is not None)]
    try:
        run = probe_forward(model, watch, inputs_of=inputs, output_attentions=parts.has_attention)
    except UnsupportedModelError:
        raise
    except Exception as exc:  # the forward itself failed: not a model we can read
        raise UnsupportedModelError(f"the verification forward failed ({type(exc).__name__}: "
                                    f"{str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ''})") from exc
    _check_decomposition(parts, run, tol)
    _check_lens(parts, run, tol)
    if parts.has_attention:
        _check_attention(parts, run, tol)
        _check_head_slices(model, parts, run, tol)


def cached_steps_match(model) -> bool:
    """Whether a prefill plus three cached steps give the logits of one uncached forward.

    Checked at load with the model's own attention implementation and with eager
    attention; where it fails (a cache this loop cannot carry), the step loop runs the
    whole sequence each step.
    """

    return all(_cached_steps_match(model, impl) for impl in (None, "eager"))


def _cached_steps_match(model, impl: str | None) -> bool:
    from ..capture.cached_forward import CachedForward
    from ..capture.hooks import attention_implementation
    from .probe import probe_ids

    from .parts import config_int, text_config

    ids = probe_ids(model)
    window = config_int(text_config(model.config), "sliding_window", "attention_window_size", "window_size",
                        "keep_window_size", "local_window_size")
    length = window + 4 if window and window + 4 <= 64 else 12  # cross a short window; beyond a top-8 selection
    ids = ids.repeat(1, length // ids.shape[1] + 1)[:, :length]
    for n in sorted({3, length - window + 2} if window and window + 4 <= 64 else {3}):  # prefill past, then up to
        try:                                                                          # the window
            with torch.no_grad(), attention_implementation(model, impl):
                step = CachedForward(model)
                step(ids[:, :-n])
                cached = torch.stack([step(ids[:, i:i + 1]).logits[0, -1].float()
                                      for i in range(length - n, length)])
                full = model(input_ids=ids, use_cache=False).logits[0, -n:].float()
        except Exception:  # noqa: BLE001 - a cache that fails to run is a cache not to use
            return False
        if _rel(cached, full) > tolerance(model):
            return False
    return True


def _get(run, module, what: str, layer: int):
    if module not in run.outputs and module not in run.inputs:
        raise UnsupportedModelError(f"layer {layer}: the {what} ({type(module).__name__}) did not run in a forward")
    return run.outputs.get(module, run.inputs.get(module))


def _check_decomposition(parts: ModelParts, run, tol: float) -> None:
    for layer, block in enumerate(parts.blocks):
        if layer in parts.skipped_layers:
            if block in run.outputs:
                raise UnsupportedModelError(f"layer {layer} was to be skipped by text-only input but ran")
            continue
        pre = run.inputs.get(block)
        first = find_module(block, parts.adapter.resid_in)
        if first is not None and first in run.outputs:  # the block norms its own input before anything else
            pre = run.outputs[first]
        post = _get(run, block, "block", layer)
        if pre is None or pre.shape != post.shape:
            raise UnsupportedModelError(f"layer {layer}: the block's residual input could not be read")
        attn = _get(run, parts.attn_out[layer], "attention output", layer)
        attn = attn + sum(_get(run, m, "attention output", layer) for m in parts.attn_extra[layer])
        mlp_mod = parts.mlp_out[layer]
        mlp = _get(run, mlp_mod, "MLP output", layer) if mlp_mod is not None else None
        if mlp is not None:
            mlp = mlp + sum(_get(run, m, "MLP output", layer) for m in parts.mlp_extra[layer])
        if attn.shape != post.shape or (mlp is not None and mlp.shape != post.shape):
            raise UnsupportedModelError(f"layer {layer}: attention/MLP outputs are not residual-shaped")
        err = _rel(compose(parts, layer, pre, attn, mlp), post)
        if err > tol:
            raise UnsupportedModelError(f"layer {layer}: attention + MLP outputs do not add up to the block's "
                                        f"change of the residual stream (relative error {err:.1e})")


def _check_lens(parts: ModelParts, run, tol: float) -> None:
    if run.logits is None:
        raise UnsupportedModelError("the model returned no logits: it has no language-model head")
    last = run.outputs[next(b for i, b in reversed(list(enumerate(parts.blocks))) if i not in parts.skipped_layers)]
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
    for j, layer in enumerate(parts.attention_layers):
        w = run.weights.get(parts.attn[layer])
        if w is None:
            raise UnsupportedModelError(f"layer {layer}: {type(parts.attn[layer]).__name__} returned no attention "
                                        "weights in eager mode")
        if w.shape[1] != parts.n_heads or w.shape[-2:] != (seq, seq):
            raise UnsupportedModelError(f"layer {layer}: attention weights are {tuple(w.shape)}, expected "
                                        f"[1, {parts.n_heads}, {seq}, {seq}]")
        sums = w.sum(-1)
        ok = (sums <= 1 + tol).all() and (sums > 0).all() if parts.adapter.sinks else \
            bool(((sums - 1).abs() <= max(tol, 1e-5)).all())
        if not ok:
            raise UnsupportedModelError(f"layer {layer}: attention rows do not sum to 1")
        if float(torch.triu(w[0], diagonal=1).abs().max()) > tol:
            hint = " (BERT-style models run causally only with is_decoder=True)" \
                if getattr(parts.blocks[0], "is_decoder", None) is False or \
                getattr(getattr(parts.attn[layer], "config", None), "is_decoder", None) is False else ""
            raise UnsupportedModelError(f"layer {layer}: attention looks at later tokens (not causal){hint}")
        if len(recorded) == len(parts.attention_layers) and _rel(w, recorded[j]) > tol:
            raise UnsupportedModelError(f"layer {layer}: captured attention differs from output_attentions")


def _check_head_slices(model, parts: ModelParts, run, tol: float) -> None:
    width = parts.n_heads * parts.head_dim
    for layer in parts.attention_layers:
        x = run.inputs.get(parts.o_proj[layer])
        if x is None or x.shape[-1] != width:
            got = None if x is None else x.shape[-1]
            raise UnsupportedModelError(f"layer {layer}: the output projection's input is {got} wide, not "
                                        f"{parts.n_heads} heads x {parts.head_dim}")
    edits = {parts.o_proj[layer]: torch.zeros_like for layer in parts.attention_layers}
    mods = [m for layer in parts.attention_layers for m in (parts.attn_out[layer], parts.attn[layer])]
    ablated = probe_forward(model, mods, edits=edits, output_attentions=False)

    def silenced(module) -> bool:  # constant over positions once every head is zeroed, varying before
        out, normal = ablated.outputs.get(module), run.outputs.get(module)
        if out is None or normal is None or out.shape != normal.shape or out.dim() != 3:
            return False
        return _rel(out[:, 1:], out[:, :1].expand_as(out[:, 1:])) <= tol < \
            _rel(normal[:, 1:], normal[:, :1].expand_as(normal[:, 1:]))

    for layer in parts.attention_layers:
        # the attention module's own output (its output projection is last), or what it adds to the residual
        if not (silenced(parts.attn[layer]) or silenced(parts.attn_out[layer])):
            raise UnsupportedModelError(f"layer {layer}: zeroing every head's slice of "
                                        f"{type(parts.o_proj[layer]).__name__}'s input does not silence the "
                                        "attention output: the output projection is not the one found")
