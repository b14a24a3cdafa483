"""Declarative adapters: where each model family keeps its parts.

An adapter is data, not code: dotted module paths relative to the model (or to one
block) and the config attributes that give head counts.  Adding a family is adding
one :class:`FamilyAdapter` to :data:`ADAPTERS`.

Paths, per block ``b``:

- ``attn``: the attention module; with eager attention its forward returns
  ``(output, weights)`` where ``weights`` is ``[batch, head, query, key]``.
- ``attn_out``: the module whose output is what the attention block adds to the
  residual stream (``attn`` itself, or a post-attention norm as in Gemma 3).
- ``o_proj``: the attention output projection; its *input* is the concatenation of
  the per-head outputs ``[batch, pos, n_heads * head_dim]``.
- ``mlp`` / ``mlp_out``: the MLP module and the module whose output the MLP block
  adds to the residual stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UnsupportedModelError


@dataclass(frozen=True)
class FamilyAdapter:
    name: str
    model_types: tuple[str, ...]
    blocks: str
    attn: str
    o_proj: str
    mlp: str
    final_norm: str
    unembed: str
    attn_out: str | None = None  # default: the attention module's output[0]
    mlp_out: str | None = None  # default: the MLP module's output
    n_heads_attr: str = "num_attention_heads"
    n_kv_heads_attr: str | None = "num_key_value_heads"
    n_layers_attr: str = "num_hidden_layers"


ADAPTERS: tuple[FamilyAdapter, ...] = (
    FamilyAdapter(
        name="gpt2",
        model_types=("gpt2",),
        blocks="transformer.h",
        attn="attn",
        o_proj="attn.c_proj",
        mlp="mlp",
        final_norm="transformer.ln_f",
        unembed="lm_head",
        n_heads_attr="n_head",
        n_kv_heads_attr=None,
        n_layers_attr="n_layer",
    ),
    FamilyAdapter(
        name="llama",
        model_types=("llama", "mistral", "qwen2", "qwen3"),
        blocks="model.layers",
        attn="self_attn",
        o_proj="self_attn.o_proj",
        mlp="mlp",
        final_norm="model.norm",
        unembed="lm_head",
    ),
    FamilyAdapter(
        name="gemma3",
        model_types=("gemma3_text",),
        blocks="model.layers",
        attn="self_attn",
        o_proj="self_attn.o_proj",
        mlp="mlp",
        final_norm="model.norm",
        unembed="lm_head",
        attn_out="post_attention_layernorm",
        mlp_out="post_feedforward_layernorm",
    ),
    FamilyAdapter(
        name="gpt_neox",
        model_types=("gpt_neox",),
        blocks="gpt_neox.layers",
        attn="attention",
        o_proj="attention.dense",
        mlp="mlp",
        final_norm="gpt_neox.final_layer_norm",
        unembed="lm_head",
        n_kv_heads_attr=None,
    ),
)

SUPPORTED_MODEL_TYPES = tuple(t for a in ADAPTERS for t in a.model_types)


def adapter_for_config(config) -> FamilyAdapter:
    """The adapter for a transformers config, looked up by ``config.model_type``."""
    model_type = getattr(config, "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    raise UnsupportedModelError(
        f"model type {model_type!r} has no adapter (needed: blocks, attention output "
        f"projection, MLP, final norm, unembedding); supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
    )


def get_module(root: torch.nn.Module, path: str) -> torch.nn.Module:
    """Follow a dotted path (``"model.layers"``) from ``root``; a clear error if absent."""
    node = root
    for part in path.split("."):
        if not hasattr(node, part):
            raise UnsupportedModelError(
                f"{type(root).__name__} has no module {path!r} (missing {part!r}); "
                "the model does not match its family's adapter"
            )
        node = getattr(node, part)
    return node


@dataclass(frozen=True)
class ModelParts:
    """The modules an adapter names, resolved on one model instance."""

    adapter: FamilyAdapter
    blocks: tuple[torch.nn.Module, ...]
    attn: tuple[torch.nn.Module, ...]
    attn_out: tuple[torch.nn.Module, ...]
    o_proj: tuple[torch.nn.Module, ...]
    mlp: tuple[torch.nn.Module, ...]
    mlp_out: tuple[torch.nn.Module, ...]
    final_norm: torch.nn.Module
    unembed: torch.nn.Module
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    final_logit_softcap: float | None

    @classmethod
    def resolve(cls, model: torch.nn.Module, adapter: FamilyAdapter | None = None) -> "ModelParts":
        config = model.config
        adapter = adapter or adapter_for_config(config)
        blocks = tuple(get_module(model, adapter.blocks))
        n_heads = int(getattr(config, adapter.n_heads_attr))
        kv_attr = adapter.n_kv_heads_attr
        n_kv = int(getattr(config, kv_attr, None) or n_heads) if kv_attr else n_heads
        hidden = int(getattr(config, "hidden_size", None) or getattr(config, "n_embd"))
        head_dim = int(getattr(config, "head_dim", None) or hidden // n_heads)

        def each(path: str | None, fallback: str) -> tuple[torch.nn.Module, ...]:
            return tuple(get_module(b, path or fallback) for b in blocks)

        return cls(
            adapter=adapter,
            blocks=blocks,
            attn=each(adapter.attn, adapter.attn),
            attn_out=each(adapter.attn_out, adapter.attn),
            o_proj=each(adapter.o_proj, adapter.o_proj),
            mlp=each(adapter.mlp, adapter.mlp),
            mlp_out=each(adapter.mlp_out, adapter.mlp),
            final_norm=get_module(model, adapter.final_norm),
            unembed=get_module(model, adapter.unembed),
            n_layers=len(blocks),
            n_heads=n_heads,
            n_kv_heads=n_kv,
            head_dim=head_dim,
            final_logit_softcap=getattr(config, "final_logit_softcapping", None),
        )
