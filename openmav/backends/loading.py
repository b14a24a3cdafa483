"""Load a causal LM and its tokenizer from any source, on the device asked for: the load path's top.

:func:`load_model` walks the path down, one module a step, each calling only those below it:
resolve the source (:mod:`~openmav.backends.sources`), load the weights
(:mod:`~openmav.backends.weights`), find the parts, declared or inferred, and verify them
(:mod:`~openmav.backends.find`, which remembers verdicts in :mod:`~openmav.backends.verified`),
then hand back a :class:`LoadedModel`.  :func:`wrap_model` starts at the third step with
objects the caller already has.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import InputError, UnsupportedModelError
from ..rules import Callback, Choice, Device, Flag, check_model_name, check_text
from .devices import DTYPES, input_device, resolve_device, resolve_dtype  # noqa: F401 - re-exported
from .find import find_parts
from .parts import ModelParts
from .sources import ResolvedSource, convert_gguf, recheck_entry, resolve_source
from .weights import (DEVICE_MAP_NAMES, check_device_map, check_map_names, check_quantization,  # noqa: F401
                      load_weights, placement_kwargs, quiet_transformers, refuse_encoder, refuse_encoder_config)

@dataclass
class LoadedModel:
    """A model ready for capture: weights, tokenizer, resolved parts, where it came from."""

    model: torch.nn.Module
    tokenizer: object
    parts: ModelParts
    name: str
    device: torch.device
    source: str = "object"
    load_seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def config(self):
        return self.model.config

    @property
    def context_length(self) -> int | None:
        cfg = self.model.config
        for attr in ("max_position_embeddings", "n_positions", "n_ctx"):
            value = getattr(cfg, attr, None)
            if value:
                return int(value)
        return None


def _prepare_tokenizer(tokenizer) -> None:
    if getattr(tokenizer, "pad_token_id", None) is None and getattr(tokenizer, "eos_token", None) is not None:
        tokenizer.pad_token = tokenizer.eos_token


def wrap_model(model, tokenizer, name: str = "model", device: str | torch.device | None = None,
               source: str = "object", verify: bool = True) -> LoadedModel:
    """Wrap a model and tokenizer the caller already has (training loops, notebooks).

    The model's parts are found and verified (:func:`find_parts`) before anything is captured.
    """
    check_text("name", name, allow_empty=False)
    check_text("source", source, allow_empty=False)
    Flag().check("verify", verify)
    _check_device(device)
    if model is not None and tokenizer is not None:
        Callback(optional=False).check("tokenizer", tokenizer)
    return _wrap(model, tokenizer, name, device, source, verify)


def _check_device(device) -> None:
    """``device``: ``None``, a ``torch.device`` or the text ``--device`` takes (the command line's rule); whether
    the device is there is :func:`resolve_device`'s to say (a :class:`~openmav.errors.DeviceError`)."""
    if device is not None and not isinstance(device, torch.device):
        Device().check("device", device)


def check_load_args(name, device, dtype, progress, offload_folder, reverify) -> None:
    """:func:`load_model`'s own arguments by the shared rules (:mod:`openmav.rules`), before anything is read:
    ``""`` or blank is no model name (``None`` is the default model)."""
    if name is not None:
        check_model_name("name", name)
    _check_device(device)
    if dtype is not None and not isinstance(dtype, torch.dtype):
        Choice(tuple(DTYPES)).check("dtype", dtype.lower() if isinstance(dtype, str) else dtype)
    Callback().check("progress", progress)
    if offload_folder is not None:
        check_text("offload_folder", offload_folder, allow_empty=False)
    Flag().check("reverify", reverify)


def _wrap(model, tokenizer, name: str, device, source: str, verify: bool, location: str | None = None,
          reverify: bool = False) -> LoadedModel:
    if model is None or tokenizer is None:
        raise InputError("both a model object and a tokenizer object are needed")
    if not hasattr(model, "config"):
        raise UnsupportedModelError(f"{type(model).__name__} has no .config: not a transformers model")
    if model.get_output_embeddings() is None if hasattr(model, "get_output_embeddings") else True:
        raise UnsupportedModelError(f"{type(model).__name__} has no language-model head: these views need a causal "
                                    "LM (AutoModelForCausalLM); for encoders use the extraction API "
                                    "(openmav.analysis.AttentionExtractor)")
    dev = input_device(model) if device is None else resolve_device(str(device))
    if device is not None and dev != input_device(model):
        if getattr(model, "hf_device_map", None):
            raise InputError("this model is split by a device map: pass device=None to keep it where it is")
        model.to(dev)
    parts = find_parts(model, verify=verify, location=location, reverify=reverify)
    _prepare_tokenizer(tokenizer)
    return LoadedModel(model=model, tokenizer=tokenizer, parts=parts, name=name, device=dev, source=source)


def load_model(name: str | None = None, device: str | None = "auto", dtype: str | torch.dtype | None = "float32",
               progress: Callable[[str], None] | None = None, device_map=None, offload_folder: str | None = None,
               quantization: str | None = None, reverify: bool = False, **from_pretrained_kwargs) -> LoadedModel:
    """Load ``name`` (bundled name, ``.gguf`` path, model directory or hub id).

    ``device_map`` (``"auto"``, ``"balanced"``, ``"sequential"`` or a dict of module name ->
    device, ``"cpu"`` or ``"disk"``) splits a model bigger than one device through accelerate;
    ``offload_folder`` holds what goes to disk.  ``quantization`` is ``"8bit"`` or ``"4bit"``
    (bitsandbytes, CUDA only).  Captures and interventions read and edit each layer on its
    own device; inputs go to the embedding's device.

    ``None`` loads the default model (see :func:`openmav.backends.sources.default_model_name`).
    With a ``progress`` callback (which receives short status lines), transformers'
    own progress bars and warnings are turned off.
    The parts are verified on the model the first time; later loads of the same weights with the
    same libraries read the verdict back (:mod:`openmav.backends.verified`); ``reverify`` checks again.
    Extra keyword arguments go to ``from_pretrained`` (e.g. ``revision``,
    ``quantization_config``).
    """
    check_load_args(name, device, dtype, progress, offload_folder, reverify)
    from_pretrained_kwargs.update(placement_kwargs(device, device_map, offload_folder, quantization))
    device_map = from_pretrained_kwargs.get("device_map")
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    if progress is not None:
        quiet_transformers()  # the caller shows its own progress; no tqdm bars under it
    src: ResolvedSource = resolve_source(name)
    start = time.perf_counter()
    location = src.location
    if src.gguf is not None:
        location = str(convert_gguf(src.gguf, progress=progress))
    refuse_encoder_config(location, src.name)
    if progress:
        progress(f"loading {src.name}")
    model, tokenizer = load_weights(src, location, torch_dtype, **from_pretrained_kwargs)
    refuse_encoder(model, src.name)
    if isinstance(device_map, dict):
        check_map_names(model, device_map, src.name)
    if device_map is None:
        model.to(dev)
    model.eval()
    loaded = _wrap(model, tokenizer, src.name, None, src.kind, True, location=location, reverify=reverify)
    if src.gguf is not None:  # a cache entry, its bytes checked: non-finite logits check them again in full
        loaded.extra["weights_check"] = lambda: recheck_entry(location)
    parts = loaded.parts
    if progress and (parts.inferred or len(parts.attention_layers) < parts.n_layers):
        progress(parts.describe())  # said once: an inferred adapter, or which layers have attention
    loaded.extra["location"] = location  # where the weights were read (a scan fingerprints them)
    loaded.load_seconds = time.perf_counter() - start
    return loaded
