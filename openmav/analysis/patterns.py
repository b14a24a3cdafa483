"""Attention patterns of one forward pass, read by hooks on the attention modules.

``attention_patterns(lm, ids, mask)`` returns one ``[b, h, q, k]`` tensor per layer
(standard name ``blocks.{l}.attn.pattern``), computed with eager attention so the
probabilities exist.  It works on any :class:`~openmav.backends.loading.LoadedModel`
(the causal-LM adapters); encoders go through :mod:`openmav.analysis.extractor`.
"""

from __future__ import annotations

import torch

from ..backends.loading import LoadedModel
from ..capture.hooks import attention_implementation


def attention_patterns(lm: LoadedModel, ids: torch.Tensor,
                       attention_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Per-layer attention probabilities ``[b, h, q, k]`` (float32, on the CPU) for ``ids``.

    Layers without attention (a hybrid's state-space or linear-attention layers) hold NaN;
    a model without any attention layer is refused with one sentence.
    """
    from ..errors import InputError

    parts = lm.parts
    if not parts.has_attention:
        raise InputError(f"{lm.name} has no attention layers, so there are no attention patterns to read")
    patterns: list[torch.Tensor | None] = [None] * parts.n_layers
    handles = []

    def keep(layer: int):
        def hook(module, args, output):
            if isinstance(output, (tuple, list)) and len(output) > 1 and output[1] is not None:
                patterns[layer] = output[1].detach().float().cpu()
        return hook

    try:
        for i in parts.attention_layers:
            handles.append(parts.attn[i].register_forward_hook(keep(i)))
        with torch.inference_mode(), attention_implementation(lm.model, "eager"):
            mask = torch.ones_like(ids) if attention_mask is None else attention_mask
            lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    missing = [i for i in parts.attention_layers if patterns[i] is None]
    if missing:
        raise RuntimeError(f"no attention probabilities for layers {missing[:5]}: eager attention did not run")
    like = patterns[parts.attention_layers[0]]
    return [torch.full_like(like, float("nan")) if p is None else p for p in patterns]
