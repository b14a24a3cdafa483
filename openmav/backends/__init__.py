"""Model sources and family adapters.

``load_model(name)`` accepts a bundled name (``smollm2-135m``, ``gemma3-270m``), a
``.gguf`` file, a model directory or a Hugging Face hub id; ``wrap_model(model,
tokenizer)`` wraps objects the caller already has.
"""

from .adapters import ADAPTERS, FamilyAdapter, adapter_for_config
from .parts import ModelParts
from .loading import LoadedModel, load_model, resolve_device, wrap_model
from .sources import BUNDLED, cache_dir, default_model_name, resolve_source

__all__ = ["ADAPTERS", "FamilyAdapter", "ModelParts", "adapter_for_config", "LoadedModel", "load_model",
           "resolve_device", "wrap_model", "BUNDLED", "cache_dir", "default_model_name", "resolve_source"]
