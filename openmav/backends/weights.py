"""Load the weights: ``from_pretrained`` of a resolved source, placed on devices, quantized where asked.

The second step of the load path (:mod:`openmav.backends.loading`): it takes what
:mod:`openmav.backends.sources` resolved and returns a model object and its tokenizer,
refusing an encoder where a causal LM is needed before any weights are read when the config
is at hand.  It calls only what sits below it: devices, encoder rows and the source's cache entry.
"""

from __future__ import annotations

import torch

from ..errors import DeviceError, InputError, ModelSourceError, UnsupportedModelError
from .devices import resolve_device
from .encoders import encoder_family
from .sources import entry_added_tokens

def load_weights(src, location: str, dtype: torch.dtype, **kwargs):
    """``(model, tokenizer)`` of a resolved source from ``location`` (a folder, a cache entry or a hub id),
    placed by ``kwargs`` (:func:`placement_kwargs`); a failure is one :class:`ModelSourceError` line."""
    try:
        load = _from_hub if src.kind == "hub" else _from_pretrained
        model, tokenizer = load(location, dtype, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if src.kind == "hub":
            raise ModelSourceError(
                f"could not load {src.name!r} from the Hugging Face hub ({first}); without network use a "
                "bundled model (smollm2-135m, gemma3-270m), a model directory or a .gguf file"
            ) from exc
        raise ModelSourceError(f"could not load {src.name!r}: {first}") from exc
    return model, tokenizer


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint answers a TCP connect (no retries, no long waits)."""
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout):
            return True
    except OSError:
        return False


def _from_hub(location: str, dtype: torch.dtype, **kwargs):
    """Load a hub id: from the local cache if it is there, else from the hub when it can be reached."""
    try:
        return _from_pretrained(location, dtype, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass
    if not _hub_reachable():
        raise OSError("it is not in the local Hugging Face cache and the hub cannot be reached")
    return _from_pretrained(location, dtype, **kwargs)


MODEL_ONLY_KWARGS = ("device_map", "offload_folder", "quantization_config", "max_memory", "offload_state_dict")


def _from_pretrained(location: str, dtype: torch.dtype, **kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    shared = {k: v for k, v in kwargs.items() if k not in MODEL_ONLY_KWARGS}
    tokenizer = AutoTokenizer.from_pretrained(location, **shared, **_known_added_tokens(location, shared))
    model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **kwargs)
    return model, tokenizer


def _known_added_tokens(location: str, kwargs: dict) -> dict:
    """``{"added_tokens_decoder": ...}`` for a cache entry whose ``tokenizer.json`` was parsed when the
    entry was checked (:func:`openmav.backends.sources.entry_added_tokens`), where transformers would
    parse it again for them: ``tokenizer_config.json`` lists none and no older token files sit beside
    it.  The same :class:`AddedToken` objects transformers builds from that file; ``{}`` otherwise."""
    import json
    import os

    added = None if "added_tokens_decoder" in kwargs else entry_added_tokens(location)
    if added is None or any(os.path.exists(os.path.join(location, name))
                            for name in ("special_tokens_map.json", "added_tokens.json")):
        return {}
    try:
        with open(os.path.join(location, "tokenizer_config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(config, dict) or "added_tokens_decoder" in config:
        return {}
    from transformers.tokenization_utils_base import AddedToken

    decoder = {}
    try:
        for token in added:
            index = token.pop("id")
            decoder[index] = AddedToken(**token)
    except TypeError:  # a field this AddedToken does not take: transformers reads the file itself
        return {}
    return {"added_tokens_decoder": decoder}


DEVICE_MAP_NAMES = ("auto", "balanced", "balanced_low_0", "sequential")


def check_device_map(device_map) -> None:
    """A device map is ``auto``/``balanced``/``balanced_low_0``/``sequential`` or a dict of module -> device."""
    if device_map is None:
        return
    if isinstance(device_map, dict):
        for module, place in device_map.items():
            if not isinstance(module, str):
                raise InputError(f"device map keys are module names (strings), got {module!r}")
            if isinstance(place, bool) or not isinstance(place, (int, str, torch.device)):
                raise InputError(f"device map entry {module!r}: {place!r} is not a device (a GPU index, 'cpu', "
                                 "'disk', 'cuda:N' or 'mps')")
            if isinstance(place, int):
                if place < 0:
                    raise InputError(f"device map entry {module!r}: GPU index {place} is negative")
                place = f"cuda:{place}"
            if str(place) not in ("cpu", "disk"):
                try:
                    resolve_device(str(place))
                except DeviceError as exc:
                    raise DeviceError(f"device map entry {module!r}: {exc}") from None
        return
    if not isinstance(device_map, str) or device_map not in DEVICE_MAP_NAMES:
        raise InputError(f"unknown device map {device_map!r}: use {', '.join(DEVICE_MAP_NAMES)} or a dict "
                         "of module name -> device (Python API)")


def check_quantization(kind: str | None) -> None:
    """8-bit and 4-bit loading need bitsandbytes and a CUDA device: one line saying what is missing."""
    if kind is None:
        return
    if kind not in ("8bit", "4bit"):
        raise InputError(f"unknown quantization {kind!r}: use 8bit or 4bit")
    import importlib.util

    missing = []
    if not torch.cuda.is_available():
        missing.append("no CUDA device is available")
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("bitsandbytes is not installed")
    if missing:
        raise DeviceError(f"--load-in-{kind} needs a CUDA device and bitsandbytes ({'; '.join(missing)}): "
                          f"drop --load-in-{kind}, or use --dtype bfloat16 to halve memory instead")


def check_map_names(model, device_map: dict, name: str) -> None:
    """Every module a device map names must exist (accelerate ignores a name it does not know)."""
    for key in device_map:
        if key:
            try:
                model.get_submodule(key)
            except AttributeError:
                top = ", ".join(n for n, _ in model.named_children())
                raise InputError(f"the device map names {key!r}, which {name} does not have (its top-level "
                                 f"modules: {top})") from None


def placement_kwargs(device: str | None, device_map=None, offload_folder: str | None = None,
                     quantization: str | None = None) -> dict:
    """``from_pretrained`` keyword arguments that place the weights: a device map (with its
    offload folder) and/or bitsandbytes quantization, checked first (one line each).

    A device map places every layer itself, so ``device`` must then be ``auto`` or ``None``;
    an offload folder needs a device map; quantized weights without a map go whole to the
    CUDA device ``device`` names (default ``cuda:0``)."""
    check_device_map(device_map)
    check_quantization(quantization)
    if device_map is not None and str(device or "auto").lower() != "auto":
        raise InputError(f"--device {device} and --device-map {device_map if isinstance(device_map, str) else '{...}'}"
                         " exclude each other: the map places every layer (leave --device at auto)")
    if offload_folder is not None and device_map is None:
        raise InputError("--offload-folder goes with --device-map (it holds the layers the map sends to disk)")
    kwargs: dict = {}
    if quantization is not None:
        import warnings

        from transformers import BitsAndBytesConfig

        warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")  # once per layer per forward otherwise
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_8bit=quantization == "8bit", load_in_4bit=quantization == "4bit")
        device_map = device_map or {"": resolve_device(device).index or 0}
    if device_map is not None:
        kwargs["device_map"] = device_map
        if offload_folder:
            kwargs["offload_folder"] = offload_folder
    return kwargs


def refuse_encoder(model, name: str) -> None:
    """An encoder (BERT and kin, not configured as a decoder) is not a next-token predictor: one line."""
    model_type = getattr(model.config, "model_type", None)
    if encoder_family(model_type) is not None and not getattr(model.config, "is_decoder", False):
        raise UnsupportedModelError(
            f"{name} is an encoder ({model_type}): mav, mav maps and mav serve need a causal LM that predicts the "
            "next token; read encoders with the extraction API (openmav.AttentionExtractor, mav compare)")


def refuse_encoder_config(location: str, name: str) -> None:
    """The encoder check from the config alone, before any weights load (when the config is at hand)."""
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(location, local_files_only=True)
    except Exception:  # noqa: BLE001 - no local config: the check runs after loading instead
        return
    refuse_encoder(type("ConfigOnly", (), {"config": config})(), name)


