"""Devices and dtypes: what ``--device`` and ``--dtype`` name, and where a model's inputs go.

The bottom of the load path: every later step (sources, weights, probes, verification,
loading) may call these, and they call nothing of the package but its errors.
"""

from __future__ import annotations

import torch

from ..errors import DeviceError, InputError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str | None) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an unavailable device is an error."""
    device = (device or "auto").lower()
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = device.split(":")[0]
    if kind not in {"cpu", "cuda", "mps"}:
        raise DeviceError(f"unknown device {device!r}: use cpu, cuda, mps or auto")
    if kind == "cuda" and not torch.cuda.is_available():
        raise DeviceError("CUDA was asked for but no CUDA device is available: use --device cpu or auto")
    if kind == "cuda" and ":" in device:
        index, count = device.split(":", 1)[1], torch.cuda.device_count()
        if not index.isdigit() or int(index) >= count:
            raise DeviceError(f"there is no {device}: this machine has {count} CUDA device{'s' if count != 1 else ''}"
                              f" (cuda:0{f' to cuda:{count - 1}' if count > 1 else ''})")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("MPS was asked for but is not available on this machine: use --device cpu or auto")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    key = (dtype or "float32").lower()
    if key not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    return DTYPES[key]


def input_device(model) -> torch.device:
    """Where a model's input ids go: its embedding's device (a model split by a device map spans several)."""
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embed, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.device.type != "meta":
        return weight.device
    device_map = getattr(model, "hf_device_map", None) or {}
    for place in device_map.values():
        if place not in ("cpu", "disk") and not isinstance(place, str):
            return torch.device("cuda", place)
    return next((p.device for p in model.parameters() if p.device.type != "meta"), torch.device("cpu"))
