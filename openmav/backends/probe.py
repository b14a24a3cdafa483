"""One short forward that records what a set of modules computed (for inference and verification).

:func:`probe_forward` runs the model on a few fixed token ids in eager attention with
hooks on the modules asked for, and returns, per module, a *copy* of its first
output (copies matter: Falcon adds to its MLP output in place) and, where the output
carries one, the attention-weights tensor ``[b, h, q, k]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..capture.hooks import attention_implementation
from .devices import input_device
from .parts import text_config

PROBE_IDS = (5, 17, 3, 29, 11, 7, 23, 13)


def probe_ids(model) -> torch.Tensor:
    vocab = int(getattr(text_config(model.config), "vocab_size", None) or getattr(model.config, "vocab_size", 64))
    device = input_device(model)
    return torch.tensor([[i % vocab for i in PROBE_IDS]], device=device)


def first_tensor(output):
    """The first tensor of a module output (a tensor, a tuple or a ModelOutput)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if hasattr(output, "to_tuple"):
        items = output.to_tuple()
        return items[0] if items and isinstance(items[0], torch.Tensor) else None
    return None


def weights_of(output):
    """The attention weights in a module output ``(out, weights, ...)``, when it carries them."""
    if isinstance(output, (tuple, list)) and len(output) > 1 and isinstance(output[1], torch.Tensor) \
            and output[1].dim() == 4:
        return output[1]
    return None


@dataclass
class Probe:
    ids: torch.Tensor
    logits: torch.Tensor | None = None
    attentions: tuple | None = None
    outputs: dict = field(default_factory=dict)  # module -> first output tensor (a copy)
    weights: dict = field(default_factory=dict)  # module -> attention weights (a copy)
    inputs: dict = field(default_factory=dict)  # module -> first input tensor (a copy)
    order: list = field(default_factory=list)  # modules in the order their forwards finished


def probe_forward(model, modules=(), inputs_of=(), edits: dict | None = None,
                  output_attentions: bool = True, ids: torch.Tensor | None = None) -> Probe:
    """Run ``model`` once on ``ids`` (default :data:`PROBE_IDS`, ``[1, P]``); record outputs of
    ``modules``, inputs of ``inputs_of``.

    ``edits`` maps a module to a function applied to its first input (a forward pre-hook),
    e.g. zeroing the input of an attention output projection.
    """
    ids = probe_ids(model) if ids is None else ids
    probe = Probe(ids=ids)
    handles = []

    def keep(module):
        def hook(mod, args, output):
            probe.order.append(mod)
            t = first_tensor(output)
            if t is not None and t.is_complex():  # rotary tables (Llama 4), not activations
                t = None
            if t is not None and t.dim() == 2 and t.shape[0] == ids.shape[1]:
                t = t.unsqueeze(0)  # [b * p, d] (OPT's MLP): the probe's batch is one
            if t is not None:
                probe.outputs[mod] = t.detach().float().clone()
            w = weights_of(output)
            if w is not None:
                probe.weights[mod] = w.detach().float().clone()
        return hook

    def keep_input(mod, args, kwargs):
        x = args[0] if args else kwargs.get("hidden_states")
        if isinstance(x, torch.Tensor):
            probe.inputs[mod] = x.detach().float().clone()

    def edit(fn):
        def hook(mod, args):
            if args and isinstance(args[0], torch.Tensor):
                return (fn(args[0]), *args[1:])
            return None
        return hook

    try:
        for m in dict.fromkeys(modules):
            handles.append(m.register_forward_hook(keep(m)))
        for m in dict.fromkeys(inputs_of):
            handles.append(m.register_forward_pre_hook(keep_input, with_kwargs=True))
        for m, fn in (edits or {}).items():
            handles.append(m.register_forward_pre_hook(edit(fn)))
        with torch.no_grad(), attention_implementation(model, "eager"):
            kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
            if output_attentions:
                kwargs["output_attentions"] = True
            out = model(**kwargs)
    finally:
        for h in handles:
            h.remove()
    logits = getattr(out, "logits", None)
    probe.logits = logits.detach().float() if isinstance(logits, torch.Tensor) else None
    atts = getattr(out, "attentions", None)
    probe.attentions = tuple(a.detach().float() for a in atts if isinstance(a, torch.Tensor)) if atts else None
    return probe
