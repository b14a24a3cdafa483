"""What to blame when a model's logits are not finite: its weights, its dtype or its device.

Non-finite logits from float32 weights that nobody checked say nothing about the dtype:
damaged or mismatched weights are the likelier cause, so that is what the message says.
Only when the weights are known to be intact is float16/bfloat16 overflow (or the device)
named instead.
"""

from __future__ import annotations

import torch


def nonfinite_message(lm, step: int) -> str:
    """What to blame for non-finite logits: the weights unless they were checked, then the dtype or the device.

    A loader that checked the weights' bytes (a cache entry's content hashes) leaves a callable in
    ``lm.extra["weights_check"]`` that checks them again in full and says what is damaged, or ``None``.
    """
    said = f"the model produced NaN or infinite logits at step {step}"
    params = getattr(getattr(lm, "model", None), "parameters", None)
    dtype = next(iter(params()), torch.empty(0)).dtype if params else torch.float32
    half = dtype in (torch.float16, torch.bfloat16)
    extra = getattr(lm, "extra", None)
    check = extra.get("weights_check") if isinstance(extra, dict) else None
    if not callable(check):
        return (f"{said}: its weights were never checked and may be damaged or not this model's; load them again "
                "from their source" + (f" (or, in {str(dtype).removeprefix('torch.')}, try --dtype float32)"
                                        if half else ""))
    problem = check()
    if problem:
        return f"{said}: its weights are damaged ({problem}); the cached copy is rebuilt on the next load"
    if half:
        return f"{said}: its weights are intact, so {str(dtype).removeprefix('torch.')} overflowed: try --dtype float32"
    return f"{said}: its weights are intact and already float32: try another --device"
