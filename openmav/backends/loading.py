"""Load a causal LM and its tokenizer from any source, on the device asked for."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from ..errors import DeviceError, InputError, ModelSourceError, UnsupportedModelError
from .adapters import declared_adapter
from .parts import ModelParts
from .sources import ResolvedSource, convert_gguf, resolve_source

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


def find_parts(model, verify: bool = True) -> ModelParts:
    """The parts of ``model``: its family's declared row, else a row inferred from the module tree.

    Either way the row is checked on the model itself (:func:`openmav.backends.verify.verify_parts`)
    unless ``verify`` is false; a declared row that fails (a variant of the family) falls
    back to inference.  A cached step is checked against an uncached forward too: where
    they differ, the step loop runs the whole sequence each step (``parts.cached_steps``).  One line names what failed when neither passes.
    """
    from .verify import verify_parts

    config = model.config
    model_type = getattr(config, "model_type", None)
    declared = declared_adapter(model_type, getattr(model, "base_model_prefix", None))
    failures = []
    if declared is not None:
        try:
            parts = ModelParts.resolve(model, declared)
            if verify:
                return _checked(model, parts, verify_parts(model, parts))
            return parts
        except Exception as exc:  # noqa: BLE001 - any failure of a row is a reason to try inference
            failures.append(f"declared adapter {declared.name}: {_reason(exc)}")
    try:
        from .infer import infer_adapter  # only here: a declared row needs no search

        parts = ModelParts.resolve(model, infer_adapter(model), inferred=True)
        return _checked(model, parts, verify_parts(model, parts))
    except Exception as exc:  # noqa: BLE001 - reported as one line below
        failures.append(f"inferred adapter: {_reason(exc)}")
    raise UnsupportedModelError(f"{type(model).__name__} ({model_type}) cannot be read safely: "
                                f"{'; '.join(failures)}. Try --dtype float32, or report the model type")


def _refuse_encoder(model, name: str) -> None:
    """An encoder (BERT and kin, not configured as a decoder) is not a next-token predictor: one line."""
    from ..analysis.models import encoder_family

    model_type = getattr(model.config, "model_type", None)
    if encoder_family(model_type) is not None and not getattr(model.config, "is_decoder", False):
        raise UnsupportedModelError(
            f"{name} is an encoder ({model_type}): mav, mav maps and mav serve need a causal LM that predicts the "
            "next token; read encoders with the extraction API (openmav.AttentionExtractor, mav compare)")


def _refuse_encoder_config(location: str, name: str) -> None:
    """The encoder check from the config alone, before any weights load (when the config is at hand)."""
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(location, local_files_only=True)
    except Exception:  # noqa: BLE001 - no local config: the check runs after loading instead
        return
    _refuse_encoder(type("ConfigOnly", (), {"config": config})(), name)


def _checked(model, parts: ModelParts, reference) -> ModelParts:
    """The load-time checks beyond the invariants, on the invariants' reference forward: cached steps
    and the fast attention-rows function, in the attention implementations the step loop runs
    (:func:`openmav.backends.verify.check_steps`)."""
    from .verify import check_steps

    rows, cached = check_steps(model, parts, reference)
    return replace(parts, cached_steps=cached, rows_function=rows)


def _reason(exc: Exception) -> str:
    if isinstance(exc, UnsupportedModelError):
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:120]}" if text else type(exc).__name__


def wrap_model(model, tokenizer, name: str = "model", device: str | torch.device | None = None,
               source: str = "object", verify: bool = True) -> LoadedModel:
    """Wrap a model and tokenizer the caller already has (training loops, notebooks).

    The model's parts are found and verified (:func:`find_parts`) before anything is captured.
    """
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
    parts = find_parts(model, verify=verify)
    _prepare_tokenizer(tokenizer)
    return LoadedModel(model=model, tokenizer=tokenizer, parts=parts, name=name, device=dev, source=source)


def _quiet_transformers() -> None:
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

    from .sources import entry_added_tokens

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


def _check_map_names(model, device_map: dict, name: str) -> None:
    """Every module a device map names must exist (accelerate ignores a name it does not know)."""
    for key in device_map:
        if key:
            try:
                model.get_submodule(key)
            except AttributeError:
                top = ", ".join(n for n, _ in model.named_children())
                raise InputError(f"the device map names {key!r}, which {name} does not have (its top-level "
                                 f"modules: {top})") from None


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


def load_model(name: str | None = None, device: str | None = "auto", dtype: str | torch.dtype | None = "float32",
               progress: Callable[[str], None] | None = None, device_map=None, offload_folder: str | None = None,
               quantization: str | None = None, **from_pretrained_kwargs) -> LoadedModel:
    """Load ``name`` (bundled name, ``.gguf`` path, model directory or hub id).

    ``device_map`` (``"auto"``, ``"balanced"``, ``"sequential"`` or a dict of module name ->
    device, ``"cpu"`` or ``"disk"``) splits a model bigger than one device through accelerate;
    ``offload_folder`` holds what goes to disk.  ``quantization`` is ``"8bit"`` or ``"4bit"``
    (bitsandbytes, CUDA only).  Captures and interventions read and edit each layer on its
    own device; inputs go to the embedding's device.

    ``None`` loads the default model (see :func:`openmav.backends.sources.default_model_name`).
    With a ``progress`` callback (which receives short status lines), transformers'
    own progress bars and warnings are turned off.
    Extra keyword arguments go to ``from_pretrained`` (e.g. ``revision``,
    ``quantization_config``).
    """
    from_pretrained_kwargs.update(placement_kwargs(device, device_map, offload_folder, quantization))
    device_map = from_pretrained_kwargs.get("device_map")
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    if progress is not None:
        _quiet_transformers()  # the caller shows its own progress; no tqdm bars under it
    src: ResolvedSource = resolve_source(name)
    start = time.perf_counter()
    location = src.location
    if src.gguf is not None:
        location = str(convert_gguf(src.gguf, progress=progress))
    _refuse_encoder_config(location, src.name)
    if progress:
        progress(f"loading {src.name}")
    try:
        load = _from_hub if src.kind == "hub" else _from_pretrained
        model, tokenizer = load(location, torch_dtype, **from_pretrained_kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if src.kind == "hub":
            raise ModelSourceError(
                f"could not load {src.name!r} from the Hugging Face hub ({first}); without network use a "
                "bundled model (smollm2-135m, gemma3-270m), a model directory or a .gguf file"
            ) from exc
        raise ModelSourceError(f"could not load {src.name!r}: {first}") from exc
    _refuse_encoder(model, src.name)
    if isinstance(device_map, dict):
        _check_map_names(model, device_map, src.name)
    if device_map is None:
        model.to(dev)
    model.eval()
    loaded = wrap_model(model, tokenizer, name=src.name, source=src.kind)
    parts = loaded.parts
    if progress and (parts.inferred or len(parts.attention_layers) < parts.n_layers):
        progress(parts.describe())  # said once: an inferred adapter, or which layers have attention
    loaded.load_seconds = time.perf_counter() - start
    return loaded
