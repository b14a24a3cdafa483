"""Declarative adapters: where each model family keeps its parts.

An adapter is a row of data: dotted module paths (relative to the model, or to one
block) and the config attributes that give head counts.  A row names only what
differs from the most common layout (Llama's), and one *block shape* (a named
strategy from :data:`SHAPES`) says how a block's parts add up to its output.
Families nobody declared get a row inferred from the module tree
(:mod:`openmav.backends.infer`); declared or inferred, a row is trusted only once
:mod:`openmav.backends.verify` has checked it on the model at load.

Paths per block ``b`` (all relative to the block):

- ``attn``: the module whose eager forward returns ``(output, weights)``, weights
  ``[batch, head, query, key]``; a layer without it (a state-space or linear-attention
  mixer, named by one of ``mixers``) has no attention.
- ``o_proj``: the attention output projection; its *input* is the concatenation of
  the per-head outputs ``[batch, pos, n_heads * head_dim]`` (``head_dim`` is the
  value head width: ``v_head_dim`` under multi-latent attention).
- ``attn_out`` / ``mlp_out``: the modules whose outputs are what the attention and
  MLP sub-blocks add to the residual stream (defaults come from the shape).
- ``mlp`` and ``down_proj`` (relative to the MLP): the MLP's hidden neurons are the
  input of ``down_proj``; MoE MLPs have none.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import UnsupportedModelError


@dataclass(frozen=True)
class BlockShape:
    """How one block's parts add up to its output (a strategy shared by every family of that shape).

    ``compose`` is ``"additive"``: ``resid_post = resid_pre + s * attn_out + s * mlp_out``
    (pre-norm, parallel and post-norm sub-blocks alike; ``s`` is the residual scale),
    or ``"post_ln"``: ``resid_post = mlp_norm(attn_norm(resid_pre + attn_out) + mlp_out)``
    (the original Transformer's post-LayerNorm: BERT, BART, GPT-1).

    Both are cases of one sum, which :func:`openmav.backends.verify.compose` computes for every row:
    ``mid = attn_norm(k_a * resid_pre + s_a * attn_out + sum_j s_j * attn_extra_j)``, then
    ``resid_post = mlp_norm(k_m * mid + s_m * mlp_out + sum_j s_j * mlp_extra_j)``, and the next block
    receives ``c * resid_post``; a norm that is absent is the identity, each multiplier is one unless
    the row names it (a config attribute, a value found by least squares and verified, or a gate
    module's per-dimension factors), and the engine's residual after the block is ``c * resid_post``.
    A shape with ``after_norm`` adds the MLP's extras to the normed sum and norms again (an adapter):
    ``n = mlp_norm(k_m * mid + s_m * mlp_out)``, ``resid_post = mlp_norm(n + sum_j s_j * mlp_extra_j)``.
    """

    name: str
    compose: str
    attn_out: str | None  # default path of attn_out ({attn} / {o_proj} / a block path); None: the attn module
    mlp_out: str | None  # default path of mlp_out ({mlp} / {down_proj}); None: the MLP module
    description: str
    after_norm: bool = False  # post_ln: the MLP's extras join the normed sum, normed again (adapters)


SHAPES = {s.name: s for s in (
    BlockShape("pre_norm", "additive", None, None,
               "x + attn(norm(x)), then + mlp(norm(.)): Llama, GPT-2, Mistral, Qwen"),
    BlockShape("parallel", "additive", None, None,
               "x + attn(norm(x)) + mlp(norm(x)) from the same input: GPT-J, Phi-2, Falcon, Cohere, NeoX"),
    BlockShape("post_norm", "additive", "post_attention_layernorm", "post_feedforward_layernorm",
               "each sub-block's output is normed before it joins the residual: Gemma 2/3, OLMo 2"),
    BlockShape("residual_inside", "additive", "{o_proj}", "{down_proj}",
               "sub-modules add the residual themselves, so contributions are read at their last "
               "projection: BLOOM"),
    BlockShape("post_ln", "post_ln", "{o_proj}", "{down_proj}",
               "the residual sum is normed after each sub-block: BERT-style and BART-style decoders, GPT-1"),
    BlockShape("post_ln_adapter", "post_ln", "{o_proj}", "{down_proj}",
               "post-LN, then a bottleneck adapter on the normed sum adds its output, and the same norm "
               "again (resid_post = norm(n + adapter(n))): X-MOD's language adapters", after_norm=True),
    BlockShape("mid_norm", "post_ln", None, None,
               "the block norms its input, then the residual again between attention and MLP, with multipliers on "
               "both sides of each add: MiniMax"),
    BlockShape("gated", "additive", None, None,
               "each share joins through a gate module gate(branch, residual) with factors per dimension on both "
               "(attn_gate, mlp_gate): Ergo, ZAYA"),
)}


@dataclass(frozen=True)
class FamilyAdapter:
    """One family's row.  Defaults describe the Llama layout."""

    name: str
    model_types: tuple[str, ...] = ()
    shape: str = "pre_norm"
    blocks: str = "model.layers"
    attn: str = "self_attn"
    o_proj: str = "self_attn.o_proj"
    mlp: str | None = "mlp"
    down_proj: str | None = "down_proj"  # relative to the MLP; None: no per-neuron activations (MoE)
    final_norm: str | None = "model.norm"
    unembed: str | None = None  # None: model.get_output_embeddings()
    attn_out: str | None = None
    mlp_out: str | None = None
    attn_extra: tuple[str, ...] = ()  # more modules whose outputs join the attention's (a parallel mixer)
    mlp_extra: tuple[str, ...] = ()  # more modules whose outputs join the MLP's (a shared expert, per-layer inputs);
    # a path may name a config attribute in braces ("adapter_modules.{default_language}"), filled in from the config
    attn_norm: str | None = None  # the norm after the attention sum (post_ln; MiniMax's post-attention norm)
    mlp_norm: str | None = None  # the norm after the MLP sum (post_ln)
    mixers: tuple[str, ...] = ()  # non-attention token mixers of hybrid layers
    attention_layers: tuple[int, ...] | None = None  # inferred rows: the layers whose attention returns weights
    skip_layers: tuple[int, ...] = ()  # blocks that text-only input skips (Mllama's cross-attention layers)
    resid_in: str | None = None  # a norm a block applies to its own input first (RWKV's first block)
    mixer_out: str | None = None  # a hybrid's mixer layers: the module whose output the mixer adds (default: mixer)
    n_heads: int | None = None  # an explicit count (inferred rows: from the attention weights' shape)
    n_heads_attr: str = "num_attention_heads"
    n_kv_heads_attr: str | None = "num_key_value_heads"
    head_dim_attr: str | None = "head_dim"
    residual_scale_attr: str | None = None  # Granite: residual_multiplier
    residual_scale: float | None = None  # inferred rows: a multiplier found by least squares and then verified
    mlp_residual_scale: float | None = None  # inferred rows: the MLP's, where it differs
    # inferred rows: multipliers found by least squares on a perturbed forward, then verified (see parts.py)
    attn_scales: tuple[float, ...] = ()  # per layer: the attention's (or mixer's) multiplier where depth sets it
    mlp_scales: tuple[float, ...] = ()  # per layer: the MLP's
    extra_scales: tuple[float, ...] = ()  # per module of attn_extra, then of mlp_extra: its own multiplier
    attn_keeps: tuple[float, ...] = ()  # per layer: what multiplies the residual where the attention's share joins
    mlp_keeps: tuple[float, ...] = ()  # per layer: the same where the MLP's share joins
    stream_scales: tuple[float, ...] = ()  # per layer: what multiplies the residual after the block (RWKV halves it)
    attn_gate: str | None = None  # a block module gate(branch, residual) adding the attention's share per dimension
    mlp_gate: str | None = None  # the same for the MLP's share (Ergo's residual gates)
    logit_scale: float | None = None  # inferred rows: a logit multiplier no config attribute names
    logit_scale_attr: str | None = None  # Cohere: logits * logit_scale
    logit_divisor_attr: str | None = None  # Granite: logits / logits_scaling
    softcap_attr: str | None = "final_logit_softcapping"
    sinks: bool = False  # attention sinks: rows sum to one minus the sink's share
    moe: bool = False
    notes: str = ""

    def paths(self, attn: str | None = None, o_proj: str | None = None, mlp: str | None = None,
              down_proj: str | None = None) -> tuple[str | None, str | None]:
        """The block-relative paths of ``attn_out`` and ``mlp_out`` after the shape's defaults."""
        shape = SHAPES[self.shape]
        subs = {"{attn}": attn or self.attn, "{o_proj}": o_proj or self.o_proj, "{mlp}": mlp or self.mlp}
        full_down = None
        if (mlp or self.mlp) and (down_proj or self.down_proj):
            full_down = f"{mlp or self.mlp}.{down_proj or self.down_proj}"
        subs["{down_proj}"] = full_down

        def fill(explicit, default, fallback):
            path = explicit or default
            if path is None:
                return fallback
            return subs.get(path, path)

        return fill(self.attn_out, shape.attn_out, attn or self.attn), fill(self.mlp_out, shape.mlp_out,
                                                                           mlp or self.mlp)


GPT2_LIKE = dict(blocks="transformer.h", attn="attn", o_proj="attn.c_proj", down_proj="c_proj",
                 final_norm="transformer.ln_f", n_heads_attr="n_head", n_kv_heads_attr=None)
DEEPSEEK_LIKE = dict(head_dim_attr="v_head_dim", moe=True, down_proj=None,
                     notes="multi-latent attention: per-head outputs are v_head_dim wide")
OPT_LIKE = dict(blocks="model.decoder.layers", o_proj="self_attn.out_proj", mlp=None, down_proj="fc2",
                mlp_out="fc2", n_kv_heads_attr=None)

BERT_LIKE = dict(shape="post_ln", blocks="{base}.encoder.layer", attn="attention.self",
                 o_proj="attention.output.dense", mlp=None, down_proj="output.dense", mlp_out="output.dense",
                 attn_norm="attention.output.LayerNorm", mlp_norm="output.LayerNorm", final_norm=None,
                 n_kv_heads_attr=None, notes="BERT-style layers used as a causal decoder (is_decoder=True)")

ADAPTERS: tuple[FamilyAdapter, ...] = (
    FamilyAdapter("llama", ("llama", "mistral", "ministral", "qwen2", "qwen3", "smollm3", "starcoder2", "olmo",
                            "helium", "glm", "granite_swa", "seed_oss", "arcee", "apertus", "exaone4_dense",
                            "internlm3", "ernie4_5", "mellum")),
    FamilyAdapter("granite", ("granite",), residual_scale_attr="residual_multiplier",
                  logit_divisor_attr="logits_scaling", notes="residual and logit multipliers"),
    FamilyAdapter("stablelm", ("stablelm",), notes="parallel residual when use_parallel_residual"),
    FamilyAdapter("persimmon", ("persimmon",), o_proj="self_attn.dense",
                  final_norm="model.final_layernorm"),
    FamilyAdapter("moe", ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "phimoe", "dots1"),
                  moe=True, down_proj=None, notes="sparse MoE MLP: neurons per expert are not exposed"),
    FamilyAdapter("gpt_oss", ("gpt_oss",), sinks=True, moe=True, down_proj=None,
                  notes="attention sinks: each row's missing mass went to the sink"),
    FamilyAdapter("deepseek", ("deepseek_v2", "deepseek_v3"), **DEEPSEEK_LIKE),
    FamilyAdapter("gemma", ("gemma",)),
    FamilyAdapter("gemma2", ("gemma2", "gemma3_text"), shape="post_norm",
                  notes="soft-capping, post-norms, sliding-window layers"),
    FamilyAdapter("gemma3_multimodal", ("gemma3",), shape="post_norm", blocks="model.language_model.layers",
                  final_norm="model.language_model.norm",
                  notes="the language model inside Gemma3ForConditionalGeneration, beside its vision tower"),
    FamilyAdapter("olmo2", ("olmo2", "olmo3"), shape="post_norm"),
    FamilyAdapter("phi3", ("phi3",)),
    FamilyAdapter("phi", ("phi",), shape="parallel", o_proj="self_attn.dense", down_proj="fc2",
                  final_norm="model.final_layernorm"),
    FamilyAdapter("cohere", ("cohere", "cohere2"), shape="parallel", logit_scale_attr="logit_scale"),
    FamilyAdapter("gpt2", ("gpt2", "gpt-sw3"), **GPT2_LIKE),
    FamilyAdapter("gpt_bigcode", ("gpt_bigcode",), **GPT2_LIKE),
    FamilyAdapter("gpt_neo", ("gpt_neo",), **{**GPT2_LIKE, "o_proj": "attn.attention.out_proj",
                                             "n_heads_attr": "num_heads"},
                  notes="alternating global and local (windowed) attention layers"),
    FamilyAdapter("gptj", ("gptj", "codegen"), shape="parallel", **{**GPT2_LIKE, "o_proj": "attn.out_proj",
                                                                   "down_proj": "fc_out"}),
    FamilyAdapter("gpt_neox", ("gpt_neox",), shape="parallel", blocks="gpt_neox.layers", attn="attention",
                  o_proj="attention.dense", down_proj="dense_4h_to_h", final_norm="gpt_neox.final_layer_norm",
                  n_kv_heads_attr=None, notes="parallel residual when use_parallel_residual"),
    FamilyAdapter("falcon", ("falcon",), shape="parallel", blocks="transformer.h", attn="self_attention",
                  o_proj="self_attention.dense", down_proj="dense_4h_to_h", final_norm="transformer.ln_f",
                  n_kv_heads_attr=None),
    FamilyAdapter("bloom", ("bloom",), shape="residual_inside", blocks="transformer.h", attn="self_attention",
                  o_proj="self_attention.dense", down_proj="dense_4h_to_h", final_norm="transformer.ln_f",
                  n_heads_attr="n_head", n_kv_heads_attr=None, notes="ALiBi positions"),
    FamilyAdapter("mpt", ("mpt",), blocks="transformer.blocks", attn="attn", o_proj="attn.out_proj", mlp="ffn",
                  mlp_out="ffn.down_proj", final_norm="transformer.norm_f", n_heads_attr="n_heads",
                  n_kv_heads_attr=None, notes="ALiBi positions; the FFN adds its own residual"),
    FamilyAdapter("opt", ("opt",), final_norm="model.decoder.final_layer_norm", **OPT_LIKE),
    FamilyAdapter("xglm", ("xglm",), final_norm="model.layer_norm", **OPT_LIKE),
    FamilyAdapter("bart_decoder", ("bart", "mbart", "marian", "pegasus", "blenderbot", "blenderbot-small", "mvp",
                                   "plbart"), shape="post_ln", final_norm=None, attn_norm="self_attn_layer_norm",
                  mlp_norm="final_layer_norm", **{**OPT_LIKE, "mlp_out": None}),
    FamilyAdapter("bert_decoder", ("bert", "bert-generation", "roc_bert", "rembert", "ernie", "big_bird"),
                  unembed="cls", **BERT_LIKE),
    FamilyAdapter("roberta_decoder", ("roberta", "camembert", "xlm-roberta", "data2vec-text"), unembed="lm_head",
                  **BERT_LIKE),
    FamilyAdapter("xmod", ("xmod",), unembed="lm_head", **{**BERT_LIKE, "shape": "post_ln_adapter",
                                                           "notes": "X-MOD: RoBERTa layers used as a causal decoder, "
                                                                    "with the default language's adapter"},
                  mlp_extra=("output.adapter_modules.{default_language}",)),
)

_BY_TYPE = {t: a for a in ADAPTERS for t in a.model_types}
DECLARED_MODEL_TYPES = tuple(_BY_TYPE)
SUPPORTED_MODEL_TYPES = DECLARED_MODEL_TYPES  # kept for callers of the first release


def declared_adapter(model_type: str | None, base_prefix: str | None = None) -> FamilyAdapter | None:
    """The declared row for ``model_type`` (``None`` when nobody declared it)."""
    adapter = _BY_TYPE.get(model_type or "")
    if adapter is not None and "{base}" in adapter.blocks:
        adapter = replace(adapter, blocks=adapter.blocks.replace("{base}", base_prefix or model_type or ""))
    return adapter


def adapter_for_config(config) -> FamilyAdapter:
    """The declared adapter for a transformers config, looked up by ``config.model_type``."""
    model_type = getattr(config, "model_type", None)
    adapter = declared_adapter(model_type)
    if adapter is None:
        raise UnsupportedModelError(f"model type {model_type!r} has no declared adapter")
    return adapter


def get_module(root, path: str):
    """Follow a dotted path (``"model.layers"``) from ``root``; a clear error if absent."""
    node = root
    for part in path.split("."):
        if not hasattr(node, part) or getattr(node, part) is None:
            raise UnsupportedModelError(
                f"{type(root).__name__} has no module {path!r} (missing {part!r}); "
                "the model does not match its family's adapter"
            )
        node = getattr(node, part)
    return node


def find_module(root, path: str | None):
    """Like :func:`get_module`, but ``None`` when the path is absent."""
    if not path:
        return None
    try:
        return get_module(root, path)
    except UnsupportedModelError:
        return None
