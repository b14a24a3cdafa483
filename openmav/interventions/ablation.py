"""Head ablation at the right place: one head's slice of the output projection's input.

The input of the attention output projection (``lm.parts.o_proj[layer]``) is the
concatenation of the per-head outputs ``z``  ``[batch, pos, n_heads * head_dim]``;
head ``h`` owns ``z[..., h*head_dim:(h+1)*head_dim]``.  Ablating a head edits that
slice with a forward *pre*-hook, before the projection mixes the heads.  (Editing a
band of the block's output, after the projection, is not one head's contribution.)

Kinds (:data:`KINDS`), applied at ``positions`` (``None``: every position):

- ``zero``      the slice becomes 0.
- ``mean``      the slice becomes the head's mean output over all positions: those
                of a clean forward of ``reference_ids`` when given (or the
                precomputed ``means``); otherwise those of the forward in progress
                (equal to the clean mean when no head of an earlier layer is
                ablated).  :func:`ablated_logits` and the batched functions default
                to the clean forward of the prompt itself.
- ``scale``     the slice is multiplied by ``factor``.
- ``permute``   the head's outputs are shuffled across positions (a permutation
                drawn from ``seed``).
- ``sparsify``  entries with ``|z| < threshold`` become 0.

Hooks are attached on entry and removed in ``finally``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

from ..capture.inputs import check_ids, check_lm
from ..errors import InputError
from ..rules import ABLATION, Index, shown

KINDS = ("zero", "mean", "scale", "permute", "sparsify")

# An edit maps one head's output [rows, pos, head_dim] to its replacement (same shape).
HeadEdit = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class HeadAblation:
    """Ablate head ``head`` of layer ``layer`` (both 0-based) in the way ``kind`` says."""

    layer: int
    head: int
    kind: str = "zero"
    factor: float = 0.0  # scale: multiply by this
    threshold: float = 0.0  # sparsify: zero the entries with |x| < threshold
    positions: tuple[int, ...] | None = None  # None: all positions
    seed: int = 0  # permute: seed of the permutation


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_ablations(lm, ablations: Iterable[HeadAblation], seq: int | None = None) -> list[HeadAblation]:
    """Check every ablation against the model with the shared rules (:data:`openmav.rules.ABLATION`);
    an :class:`InputError` names the field, the valid range and the value.  With ``seq`` (the prompt's
    length) the positions are checked against it too, before any forward."""
    check_lm(lm)
    if isinstance(ablations, (str, bytes)) or not isinstance(ablations, Iterable):
        raise InputError(f"ablations must be a list of HeadAblation, got {shown(ablations)}")
    parts = lm.parts
    n_layers, n_heads = parts.n_layers, parts.n_heads
    checked = []
    for a in ablations:
        if not isinstance(a, HeadAblation):
            raise InputError(f"ablations must hold HeadAblation objects, got {type(a).__name__}")
        Index(n_layers, "layer").check("layer", a.layer)
        if parts.attn[a.layer] is None:
            raise InputError(f"layer {a.layer} has no attention heads (not an attention layer); attention layers: "
                             f"{', '.join(map(str, parts.attention_layers)) or 'none'}")
        Index(n_heads, "head").check("head", a.head)
        check_ablation_fields(a.kind, a.factor, a.threshold, a.positions, a.seed, seq)
        checked.append(a)
    return checked


def check_ablation_fields(kind, factor, threshold, positions, seed, seq: int | None = None) -> None:
    """How a head is ablated (every field of :class:`HeadAblation` but where), by the shared rules;
    ``positions`` against ``seq`` when it is known."""
    try:
        ABLATION["kind"].check("kind", kind)
    except InputError:
        raise InputError(f"unknown ablation kind {shown(kind)}: use one of {', '.join(KINDS)}") from None
    ABLATION["factor"].check("scale factor", factor)
    ABLATION["threshold"].check("sparsify threshold", threshold)
    ABLATION["seed"].check("permute seed", seed)
    if positions is not None:
        if not isinstance(positions, (list, tuple)) or len(positions) == 0 or \
                not all(_is_int(p) and p >= 0 for p in positions):
            raise InputError(f"positions {shown(positions)} must be a non-empty list of token indices >= 0")
        if seq is not None and max(positions) >= seq:
            raise InputError(f"position {max(positions)} is out of range: valid positions are 0..{seq - 1}")


def _positions(positions: Sequence[int] | None, seq: int, device) -> torch.Tensor:
    if positions is None:
        return torch.arange(seq, device=device)
    bad = [p for p in positions if p >= seq]
    if bad:
        raise InputError(f"position {bad[0]} is out of range: valid positions are 0..{seq - 1}")
    return torch.tensor(sorted(set(positions)), device=device, dtype=torch.long)


def make_edit(a: HeadAblation, mean: torch.Tensor | None = None) -> HeadEdit:
    """The edit of one head's output ``[rows, pos, head_dim]`` that ablation ``a`` describes.

    ``mean`` (``[head_dim]``) is the reference mean for ``kind="mean"``; without it the
    mean is taken over the positions of the tensor being edited, per row.
    """

    def edit(zh: torch.Tensor) -> torch.Tensor:
        pos = _positions(a.positions, zh.shape[1], zh.device)
        out = zh.clone()
        sel = zh[:, pos]
        if a.kind == "zero":
            new = torch.zeros_like(sel)
        elif a.kind == "scale":
            new = sel * a.factor
        elif a.kind == "sparsify":
            new = torch.where(sel.abs() < a.threshold, torch.zeros_like(sel), sel)
        elif a.kind == "mean":
            m = zh.mean(dim=1, keepdim=True) if mean is None else mean.to(zh.dtype).view(1, 1, -1)
            new = m.expand_as(sel)
        elif a.kind == "permute":
            gen = torch.Generator().manual_seed(int(a.seed))
            perm = torch.randperm(len(pos), generator=gen).to(zh.device)
            new = sel[:, perm]
        else:  # validate_ablations rejects this earlier
            raise InputError(f"unknown ablation kind {a.kind!r}: use one of {', '.join(KINDS)}")
        out[:, pos] = new
        return out

    return edit


# One planned edit: (head, rows of the batch it applies to or None for all rows, edit).
PlannedEdit = tuple[int, "torch.Tensor | None", HeadEdit]


@contextmanager
def edit_heads(lm, plan: dict[int, list[PlannedEdit]]):
    """Attach pre-hooks on ``o_proj[layer]`` applying ``plan[layer]``'s edits, in order.

    Each edit replaces head ``head``'s slice of the o_proj input in the given batch
    rows (all rows for ``None``).  This is the primitive under :func:`ablate_heads`, the
    batched all-heads evaluation and activation patching.  Hooks are removed in ``finally``.
    """
    parts = lm.parts
    hd = parts.head_dim
    handles = []

    def hook_for(edits: list[PlannedEdit]):
        def pre_hook(module, args):
            x = args[0]
            z = x.view(*x.shape[:-1], parts.n_heads, hd).clone()
            for head, rows, edit in edits:
                if rows is None:
                    z[:, :, head] = edit(z[:, :, head])
                else:
                    z[rows, :, head] = edit(z[rows, :, head])
            return (z.view_as(x),) + tuple(args[1:])

        return pre_hook

    try:
        for layer, edits in sorted(plan.items()):
            if edits:
                handles.append(parts.o_proj[layer].register_forward_pre_hook(hook_for(list(edits))))
        yield
    finally:
        for handle in handles:
            handle.remove()


def as_ids(lm, input_ids, flag: str = "input_ids") -> torch.Tensor:
    """Token ids as a ``[1, P]`` long tensor on the model's device (from a list, [P] or [1, P]), checked
    first against the model's vocabulary and context (:func:`openmav.capture.inputs.check_ids`)."""
    check_lm(lm)
    check_ids(lm, flag, input_ids, lists=True, one_d=True)
    ids = torch.as_tensor(input_ids, dtype=torch.long)
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    return ids.to(lm.device)


@torch.no_grad()
def head_outputs(lm, input_ids, flag: str = "input_ids") -> list[torch.Tensor]:
    """Each layer's per-head outputs of one clean forward: a list of ``[P, n_heads, head_dim]``
    (zeros for layers without attention)."""
    parts = lm.parts
    ids = as_ids(lm, input_ids, flag)
    seen: list[torch.Tensor | None] = [None] * parts.n_layers
    handles = []

    def keep(layer):
        def pre_hook(module, args):
            seen[layer] = args[0][0].reshape(args[0].shape[1], parts.n_heads, parts.head_dim).detach().clone()

        return pre_hook

    try:
        for layer in parts.attention_layers:
            handles.append(parts.o_proj[layer].register_forward_pre_hook(keep(layer)))
        lm.model(input_ids=ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    zero = ids.new_zeros((ids.shape[1], parts.n_heads, parts.head_dim), dtype=torch.float32)
    return [zero if z is None else z for z in seen]  # layers without attention: zeros


def head_means(lm, reference_ids) -> torch.Tensor:
    """The mean output of every head over the positions of ``reference_ids``: ``[L, H, head_dim]``."""
    return torch.stack([z.mean(dim=0) for z in head_outputs(lm, reference_ids, "reference_ids")])


def check_means(lm, means) -> None:
    """``means`` is ``None`` or a float tensor ``[L, H, head_dim]`` of this model (see :func:`head_means`)."""
    if means is None:
        return
    parts = lm.parts
    want = [parts.n_layers, parts.n_heads, parts.head_dim]
    if not isinstance(means, torch.Tensor) or not means.is_floating_point() or list(means.shape) != want:
        raise InputError(f"means must be a float tensor of shape {want} (head_means gives one), got {shown(means)}")


@contextmanager
def ablate_heads(lm, ablations: Iterable[HeadAblation], reference_ids=None, means: torch.Tensor | None = None):
    """Within the block, every forward of ``lm`` runs with ``ablations`` applied.

    ``reference_ids`` (token ids) gives the mean ablation its reference: one clean
    forward on entry computes every head's mean over its positions.  ``means``
    (``[L, H, head_dim]``, see :func:`head_means`) may be passed instead.
    """
    ablations = validate_ablations(lm, ablations)
    if reference_ids is not None:
        check_ids(lm, "reference_ids", reference_ids, lists=True, one_d=True)
    check_means(lm, means)
    if means is None and reference_ids is not None and any(a.kind == "mean" for a in ablations):
        means = head_means(lm, reference_ids)
    plan: dict[int, list[PlannedEdit]] = {}
    for a in ablations:
        mean = means[a.layer, a.head] if (means is not None and a.kind == "mean") else None
        plan.setdefault(a.layer, []).append((a.head, None, make_edit(a, mean)))
    with edit_heads(lm, plan):
        yield


@torch.no_grad()
def ablated_logits(lm, input_ids, ablations: Iterable[HeadAblation], reference_ids=None) -> torch.Tensor:
    """Next-token logits ``[V]`` at the last position with ``ablations`` applied (float32, CPU).

    A mean ablation takes its mean from a clean forward of ``reference_ids``, or of
    ``input_ids`` itself when no reference is given.
    """
    ids = as_ids(lm, input_ids)
    ablations = validate_ablations(lm, ablations, seq=ids.shape[1])
    if reference_ids is None and any(a.kind == "mean" for a in ablations):
        reference_ids = ids
    with ablate_heads(lm, ablations, reference_ids=reference_ids):
        logits = lm.model(input_ids=ids, use_cache=False, logits_to_keep=1).logits
    return logits[0, -1].float().cpu()
