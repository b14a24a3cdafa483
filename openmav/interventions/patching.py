"""Activation patching primitives: per-head outputs with gradients, and batched patched forwards.

A *patch* replaces head ``head``'s slice of ``o_proj[layer]``'s input (its output
``z``, ``[pos, head_dim]``) with a given value.  :func:`patched_forward` runs one
batched forward where each row has its own patches, and can record the per-head
outputs of chosen layers as they are in each row.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .ablation import as_ids, edit_heads
from .evaluate import batched_logits

Metric = Callable[[torch.Tensor], torch.Tensor]  # logits [V] -> scalar
Patch = tuple[int, int, torch.Tensor]  # (layer, head, value [pos, head_dim])


def head_outputs_with_grad(lm, input_ids, metric: Metric) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """One forward and one backward: ``(metric value, z per layer, d metric / d z per layer)``.

    ``z`` and its gradient are ``[pos, n_heads, head_dim]`` per layer.  The forward
    starts from the input embeddings with ``requires_grad``, so it works whether or
    not the model's parameters require gradients; parameters' ``.grad`` is untouched.
    """
    parts = lm.parts
    ids = as_ids(lm, input_ids)
    zs: list[torch.Tensor | None] = [None] * parts.n_layers
    handles = []

    def keep(layer):
        def pre_hook(module, args):
            zs[layer] = args[0]

        return pre_hook

    try:
        for layer in parts.attention_layers:
            handles.append(parts.o_proj[layer].register_forward_pre_hook(keep(layer)))
        with torch.enable_grad():
            embeds = lm.model.get_input_embeddings()(ids).detach().requires_grad_(True)
            logits = lm.model(inputs_embeds=embeds, use_cache=False, logits_to_keep=1).logits[0, -1]
            value = metric(logits.float())
            layers = parts.attention_layers
            grads = dict(zip(layers, torch.autograd.grad(value, [zs[i] for i in layers], allow_unused=True)))
    finally:
        for handle in handles:
            handle.remove()
    shape = (ids.shape[1], parts.n_heads, parts.head_dim)
    zero = torch.zeros(shape, device=ids.device)  # layers without attention have no heads
    out_z = [zero if z is None else z.detach()[0].reshape(shape) for z in zs]
    out_g = [zero if grads.get(i) is None else grads[i][0].reshape(shape) for i in range(parts.n_layers)]
    return value.detach(), out_z, out_g


@torch.no_grad()
def patched_forward(lm, input_ids, row_patches: Sequence[Sequence[Patch]], record_layers: Sequence[int] = (),
                    share_prefix: bool = True) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """One batched forward: row ``r`` runs with ``row_patches[r]`` applied.

    Returns the last-position logits ``[rows, V]`` (float32) and, for each layer in
    ``record_layers``, the per-head outputs seen there ``[rows, pos, n_heads, head_dim]``
    (after that layer's own patches).
    """
    parts = lm.parts
    ids = as_ids(lm, input_ids)
    batch = len(row_patches)
    plan: dict[int, list] = {}
    for r, patches in enumerate(row_patches):
        for layer, head, value in patches:
            # the layer's own device and dtype (a device map puts layers on different devices)
            plan.setdefault(layer, []).append(
                (head, torch.tensor([r]), lambda zh, v=value: v.to(zh.device, zh.dtype).expand_as(zh)))
    recorded: dict[int, torch.Tensor] = {}
    handles = []

    def record(layer):
        def pre_hook(module, args):
            x = args[0]
            recorded[layer] = x.reshape(x.shape[0], x.shape[1], parts.n_heads, parts.head_dim).expand(
                batch, -1, -1, -1).clone()

        return pre_hook

    first = min([*plan, *record_layers]) if (plan or record_layers) else parts.n_layers - 1
    try:
        with edit_heads(lm, plan):  # registered first, so a layer's record sees its patches
            for layer in record_layers:
                handles.append(parts.o_proj[layer].register_forward_pre_hook(record(layer)))
            logits = batched_logits(lm, ids, batch, first, share_prefix)
    finally:
        for handle in handles:
            handle.remove()
    return logits[:, -1].float(), recorded


def metric_rows(metric: Metric, logits: torch.Tensor) -> torch.Tensor:
    """``metric`` applied to each row of ``logits [rows, V]``."""
    return torch.stack([metric(row) for row in logits]).double()
