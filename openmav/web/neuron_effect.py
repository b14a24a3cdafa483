"""A neuron's direct effect on the logits: its output direction read through the unembedding.

An MLP neuron writes ``a * W_down[:, n]`` into the residual stream, ``a`` its activation.  The column
``W_down[:, n]`` is found without knowing how the family stores its down projection (``Linear``,
GPT-2's ``Conv1D``, a bias or none): the module is applied to the basis row ``e_n`` and to zeros, and
the second output is subtracted from the first.  That direction then goes through the final norm's
elementwise weight (centred first where the norm is a LayerNorm, whose linear part subtracts the mean),
through ``lm.parts.unembed`` (its output on zeros subtracted: no bias), and times the model's logit
scale.  The final norm's division by the residual's scale and a soft-cap are left out: they depend on
the rest of the residual, so the numbers are per unit of activation, before that scale, as Neuroscope
and feature dashboards show them.
"""

from __future__ import annotations

import math

import torch

from ..errors import InputError
from ..interventions.attribution import EPS_ATTRS, FrozenNorm
from ..scan.plan import neuron_module, neuron_width


def _compute_dtype(module: torch.nn.Module, fallback: torch.dtype) -> tuple[torch.dtype, torch.device]:
    param = next((p for p in module.parameters() if p.is_floating_point()), None)
    first = next(module.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    return (param.dtype if param is not None else fallback), device


def _output_minus_zero(module: torch.nn.Module, rows: torch.Tensor) -> torch.Tensor:
    """``module(rows) - module(0)`` in float64 on the CPU: the linear part of an affine module."""
    out = module(torch.cat([rows, torch.zeros_like(rows[:1])]).unsqueeze(0))
    out = (out[0] if isinstance(out, tuple) else out)[0].double().cpu()
    return out[:-1] - out[-1:]


def norm_weight(norm: torch.nn.Module, d: int) -> tuple[torch.Tensor, bool]:
    """``(weight [d] float64, centred)`` of a final norm: its elementwise weight, and whether it is a
    LayerNorm (its input is centred first).  Found by probing the module (see
    :meth:`openmav.interventions.attribution.FrozenNorm.fit`) at a probe of unit scale, so a weight
    stored as an offset (Gemma's ``1 + w``) comes out as the weight that multiplies."""
    probe = torch.ones(d, dtype=torch.float64)
    probe[1::2] = -1.0
    dtype, device = _compute_dtype(norm, torch.float32)
    with torch.no_grad():
        out = norm(probe.to(device=device, dtype=dtype).view(1, 1, d))
    out = (out[0] if isinstance(out, tuple) else out).reshape(d).double().cpu()
    frozen = FrozenNorm.fit(norm, probe, out, "the final norm")
    eps = next((float(v) for v in (getattr(norm, a, None) for a in EPS_ATTRS)
                if isinstance(v, (int, float)) and not isinstance(v, bool)), 1e-6)
    centred = probe - probe.mean() if frozen.centered else probe
    return frozen.gain * math.sqrt(float(centred.pow(2).mean()) + eps), frozen.centered


@torch.no_grad()
def neuron_logit_effect(lm, layer: int, unit: int, k: int = 10) -> dict:
    """The ``k`` tokens whose logits neuron ``unit`` of ``layer`` raises most per unit of activation, the
    ``k`` it lowers most, and a sentence saying what was applied (hold the model's gate while it runs:
    it calls the model's modules)."""
    parts = lm.parts
    if not 0 <= layer < parts.n_layers:
        raise InputError(f"layer {layer} is out of range: {lm.name} has layers 0-{parts.n_layers - 1}")
    down = neuron_module(parts, layer)
    if down is None:
        raise InputError(f"layer {layer} of {lm.name} has no MLP down projection (a mixture of experts or no "
                         "MLP): no neuron direction to read")
    width = neuron_width(parts, layer)
    if not 0 <= unit < width:
        raise InputError(f"neuron {unit} is out of range: layer {layer} has neurons 0-{width - 1}")
    model_dtype = getattr(lm.model, "dtype", torch.float32)
    dtype, device = _compute_dtype(down, model_dtype)
    basis = torch.zeros(1, width, dtype=dtype, device=device)
    basis[0, unit] = 1.0
    direction = _output_minus_zero(down, basis)[0]
    applied = [f"the column of layer {layer}'s down projection ({type(down).__name__}) for neuron {unit}"]
    if parts.final_norm is not None:
        try:
            weight, centred = norm_weight(parts.final_norm, direction.shape[0])
        except InputError:
            applied.append(f"not the final norm ({type(parts.final_norm).__name__}: neither an RMS norm nor a "
                           "LayerNorm)")
        else:
            if centred:
                direction = direction - direction.mean()
            direction = direction * weight
            applied.append(f"the final norm's elementwise weight ({type(parts.final_norm).__name__}"
                           + (", input centred first" if centred else "") + ")")
    u_dtype, u_device = _compute_dtype(parts.unembed, model_dtype)
    logits = _output_minus_zero(parts.unembed, direction.to(device=u_device, dtype=u_dtype).unsqueeze(0))[0]
    applied.append(f"the unembedding ({type(parts.unembed).__name__}, no bias)")
    if parts.logit_scale != 1.0:
        logits = logits * parts.logit_scale
        applied.append(f"the logit scale {parts.logit_scale:g}")
    vocab = _vocab_size(lm, logits.shape[0])
    logits = logits[:vocab]
    k = max(1, min(int(k), vocab))
    top = torch.topk(logits, k)
    bottom = torch.topk(-logits, k)
    note = ("direct effect per unit of activation: " + ", then ".join(applied)
            + "; the final norm's division by the residual's scale" + (" and the soft-cap" if parts.final_logit_softcap
                                                                       else "") + " are not applied")
    return {"top": [(int(i), float(v)) for v, i in zip(top.values, top.indices)],
            "bottom": [(int(i), float(-v)) for v, i in zip(bottom.values, bottom.indices)],
            "applied": note, "norm": float(direction.norm())}


def _vocab_size(lm, width: int) -> int:
    """The tokenizer's vocabulary where the unembedding is padded wider (rows past it are no tokens)."""
    n = len(lm.tokenizer) if lm.tokenizer is not None else width
    return min(width, n) if n > 0 else width
