"""Tiny configs of any registered transformers model type (random weights, no downloads).

:func:`tiny_config_for_type` takes the real config class registered for a model
type, keeps its defaults, and shrinks every size it knows by name (layers, width,
heads, experts, latent ranks, state sizes, vision towers) in every sub-config,
then builds the config again from the shrunk values, so sizes the class derives
from others (a head size from the width, a query head size from its rope and
no-rope parts) are derived anew.  One build takes a fraction of a second.

Per-layer descriptions (layer-type lists and patterns, per-layer flags and sizes,
layer index lists, per-layer overrides) are cut to the new depth by choosing which
original layers to keep: the first layer, then an attention layer and a layer of
another mixer (mamba, linear attention, convolution) where the model has both, then
one of every other kind; so a hybrid model keeps both.  Sizes a default config
leaves unset although its model needs them (a head size, an expert top-k) are
filled in.  A few types need a per-type override (:data:`OVERRIDES`); the causal-LM
types plain transformers cannot run even when tiny are listed, with the reason, in
:data:`KNOWN_UNRUNNABLE`, and :func:`runnable_types` lists the others.
"""

from __future__ import annotations

import dataclasses
from typing import Any

WIDTH = 64
HEADS = 4
HEAD_DIM = WIDTH // HEADS

# attribute names giving a stack's depth: set to the requested depth
DEPTHS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "decoder_layers", "encoder_layers",
          "num_decoder_layers", "num_encoder_layers", "depth", "conf_num_hidden_layers", "num_blocks")

# attribute name -> value in the shrunk config (only lowered, only where the config has the attribute)
SIZES: dict[str, int] = {
    # width
    "hidden_size": WIDTH, "n_embd": WIDTH, "d_model": WIDTH, "dim": WIDTH, "embed_dim": WIDTH,
    "embedding_dim": WIDTH, "embedding_size": WIDTH, "emb_dim": WIDTH, "word_embed_proj_dim": WIDTH,
    "attention_hidden_size": WIDTH, "hidden_size_global": WIDTH, "lru_width": WIDTH, "backbone_hidden_size": WIDTH,
    "input_embedding_size": WIDTH, "output_embedding_size": WIDTH, "out_hidden_size": WIDTH,
    "vision_output_dim": WIDTH, "projector_input_dim": WIDTH, "projector_output_dim": WIDTH,
    "adapter_in_dim": WIDTH, "adapter_out_dim": WIDTH, "adapter_input_size": WIDTH, "output_channels": WIDTH,
    "pronunciation_embed_dim": WIDTH, "shape_embed_dim": WIDTH, "ple_embed_dim": WIDTH, "router_hidden_size": WIDTH,
    "conv_output_size": WIDTH, "downsample_hidden_size": WIDTH, "hidden_size_per_layer_input": HEAD_DIM,
    "vector_quantization_hidden_dimension": WIDTH, "codebook_dim": WIDTH, "upsample_groups": WIDTH,
    "nemo_conv_channels": WIDTH, "depthwise_separable_out_channel": WIDTH, "ext_pw_out_channel": WIDTH,
    "base_channels": WIDTH, "prompt_mid_dim": WIDTH,
    # feed-forward
    "intermediate_size": 2 * WIDTH, "n_inner": 2 * WIDTH, "ffn_dim": 2 * WIDTH, "decoder_ffn_dim": 2 * WIDTH,
    "encoder_ffn_dim": 2 * WIDTH, "d_ff": 2 * WIDTH, "ffn_hidden_size": 2 * WIDTH, "hidden_dim": 2 * WIDTH,
    "d_inner": 2 * WIDTH, "dff": 2 * WIDTH, "dim_ff": 2 * WIDTH, "feed_forward_size": 2 * WIDTH,
    "mlp_dim": 2 * WIDTH, "intermediate_size_mlp": 2 * WIDTH, "dense_intermediate_size": 2 * WIDTH,
    "moe_intermediate_size": WIDTH // 2, "shared_expert_intermediate_size": WIDTH // 2,
    "shared_experts_intermediate_size": WIDTH // 2, "shared_intermediate_size": WIDTH // 2,
    "expert_intermediate_size": WIDTH // 2, "expert_ffn_hidden_size": WIDTH // 2,
    "moe_shared_expert_intermediate_size": WIDTH // 2,
    # heads
    "num_attention_heads": HEADS, "n_head": HEADS, "n_heads": HEADS, "num_heads": HEADS, "attention_heads": HEADS,
    "decoder_attention_heads": HEADS, "encoder_attention_heads": HEADS, "num_decoder_attention_heads": HEADS,
    "num_encoder_attention_heads": HEADS, "conf_num_attention_heads": HEADS, "swa_num_attention_heads": HEADS,
    "num_key_value_heads": HEADS // 2, "num_kv_heads": HEADS // 2, "multi_query_group_num": HEADS // 2,
    "swa_num_key_value_heads": HEADS // 2, "num_query_groups": HEADS // 2,
    "head_dim": HEAD_DIM, "attention_head_dim": HEAD_DIM, "global_head_dim": HEAD_DIM, "swa_head_dim": HEAD_DIM,
    "d_head": HEAD_DIM, "d_kv": HEAD_DIM, "dim_head": HEAD_DIM, "kv_channels": HEAD_DIM,
    "attention_head_size": HEAD_DIM, "index_head_dim": HEAD_DIM, "index_n_heads": HEADS, "linear_head_dim": HEAD_DIM,
    "linear_num_heads": HEADS, "heads_per_ngram": 2, "o_groups": 2, "o_lora_rank": 16,
    # experts
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "moe_num_experts": 4, "num_experts_per_tok": 2,
    "num_experts_per_token": 2, "moe_topk": 2, "moe_k": 2, "top_k_experts": 2, "n_shared_experts": 1, "n_group": 1,
    "topk_group": 1, "num_expert_group": 1, "zero_expert_num": 2, "num_centroids": 8, "centroid_intermediate_top_k": 2,
    # multi-latent attention, low ranks
    "q_lora_rank": 32, "kv_lora_rank": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16,
    "adapter_rank": 8, "laurel_rank": 8, "hc_lowrank": 8, "loop_gate_rank": 8, "gated_norm_rank": 8,
    # state-space and linear-attention mixers
    "mamba_d_state": 8, "state_size": 8, "ssm_state_size": 8, "mamba_n_heads": 4, "mamba_num_heads": 4,
    "n_mamba_heads": 4, "mamba_d_head": 16, "mamba_head_dim": 16, "mamba_headdim": 16, "mamba_n_groups": 1,
    "n_groups": 1, "mamba_d_ssm": 2 * WIDTH, "mamba_dt_rank": 8, "linear_num_key_heads": 2,
    "linear_num_value_heads": 4, "linear_key_head_dim": 16, "linear_value_head_dim": 16, "time_step_rank": 8,
    "conv_kernel": 4, "chunk_size": 16, "mamba_chunk_size": 16,
    # positions, windows, indexers
    "max_position_embeddings": 512, "n_positions": 512, "n_ctx": 512, "max_seq_len": 512, "context_length": 512,
    "max_source_positions": 512, "max_target_positions": 512, "sliding_window": 16, "window_size": 16,
    "attention_window_size": 16, "local_attention": 16, "sliding_window_size": 16, "local_attention_window_len": 16,
    "attention_chunk_size": 16, "rel_extent": 64, "index_topk": 8, "index_topk_blocks": 2, "index_block_size": 4,
    "keep_window_size": 16, "split_ngram_parts": 8, "make_ngram_vocab_size_divisible_by": 8,
    "ngram_vocab_size_base": 512, "mem_len": 16,
    # vocabularies that are not the text model's (codebooks, auxiliary embeddings)
    "codebook_size": 64, "shape_vocab_size": 64, "pronunciation_vocab_size": 64, "encoder_hash_byte_group_vocab": 64,
    "num_quantizers": 2, "num_codebooks": 2, "num_global_layers": 1,
}

# (head size, head count, expansion) of mamba-2 mixers, whose heads tile the expanded width
MAMBA_HEADS = (("mamba_d_head", "mamba_n_heads", "mamba_expand"), ("mamba_head_dim", "mamba_num_heads", "expand"),
               ("mamba_headdim", "n_mamba_heads", "mamba_expand"), ("head_dim", "num_heads", "expand"))

# names of per-layer kind lists; listed first, they decide which original layers are kept
LAYER_TYPE_LISTS = ("layer_types", "layers_block_type", "block_types", "hybrid_override_pattern",
                    "attention_types", "attn_layers", "mlp_layer_types")
# sub-config attributes that describe the text model (they get the text vocabulary)
TEXT_SUB_CONFIGS = ("text_config", "decoder", "decoder_config", "language_config", "llm_config")
# token ids kept small (others that fall outside the vocabulary go to its top end)
LOW_TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")

# keys every config serializes that are no dataclass field of its class
BASE_KEYS = ("_name_or_path", "model_type", "output_attentions", "per_layer_config", "transformers_version")

QSA = {"indexer_n_heads": 2, "indexer_kv_heads": 1, "indexer_head_dim": 16, "indexer_budget": 8,
       "indexer_compress_ratio": 4}

# per-type values set after the generic rules (dotted paths reach into sub-configs; a callable gets the depth)
OVERRIDES: dict[str, dict[str, Any]] = {
    # defaults are all mamba layers, which these models' caches cannot serve: give them one attention layer
    "bamba": {"attn_layer_indices": lambda depth: [depth - 1]},
    "granitemoehybrid": {"layer_types": lambda depth: ["linear_attention"] * (depth - 1) + ["full_attention"]},
    # no default layer types, or attention only, where the checkpoints mix short convolutions and attention
    "lfm2_moe": {"layer_types": lambda depth: ["conv"] * (depth - 1) + ["full_attention"]},
    "lfm2": {"layer_types": lambda depth: ["conv"] * (depth - 1) + ["full_attention"],
             "full_attn_idxs": lambda depth: [depth - 1]},
    # serialized as (attention, mlp) pairs: twice the layers; the last layer follows the looped section
    "dory": {"num_hidden_layers": lambda depth: 2 * depth, "n_input_layers": 0,
             "n_recurrent_layers": lambda depth: 2 * (depth - 1), "n_output_layers": 2,
             "layer_types": lambda depth: ["sliding_attention", "mlp"] * (depth - 1) + ["full_attention", "mlp"]},
    # defaults the models cannot run: no expert count, no rope for the layer type, a rope field read by the model
    "dots1": {"n_routed_experts": 4, "num_experts_per_tok": 2, "n_shared_experts": 1},
    "cohere_compass_text": {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 10000.0}}},
    "blt": {"use_cache": False},  # its cache is built from a config without num_hidden_layers
    "dbrx": {"attn_config.rope_theta": 10000.0, "attn_config.clip_qkv": 8.0},
    # its query/key width is rounded up to a multiple of 64 in one place and not in another
    "xlstm": {"qk_dim_factor": 1.0},
    # axial position embeddings: the dims add up to the width, the shape multiplies to the positions
    "reformer": {"axial_pos_embds_dim": [16, 48], "axial_pos_shape": [16, 32]},
    # adapters per language: the forward needs to know which one
    "xmod": {"default_language": "en_XX"},
    # per-layer lists of layer indices (which layer's keys and values a layer reads): sliding layers, then one
    # indexed-attention layer that indexes and keeps its own keys and values
    "kolibri1_1": {"layer_types": lambda depth: ["sliding_attention"] * (depth - 1) + ["indexed_attention"],
                   "index_layers": lambda depth: [depth - 1], "kv_source_layers": lambda depth: list(range(depth)),
                   "mlp_only_layers": [0], "index_num_heads": 2},
    # the default indexed-attention layers need the optional sparse-attention indexer sizes
    "qwen4_exp_text": QSA,
    "qwen4_exp": {"text_config." + k: v for k, v in QSA.items()},
}

# The settings released checkpoints ship where they differ from transformers' defaults: residual, embedding and
# logit multipliers, stream rescaling, window and hybrid layer patterns, parallel or post-LN variants, soft-caps.
# The sweep's second build (REAL_DEPTH layers) applies them after shrinking (a callable gets the depth), so a type
# passes only if the engine reads what real checkpoints do, deeper than two layers.  Values are those of the
# checkpoint named; patterns are scaled to the depth.
REAL_DEPTH = 4
GRANITE = {"embedding_multiplier": 12.0, "logits_scaling": 8.0, "residual_multiplier": 0.22,
           "attention_multiplier": 0.015625}  # granite-3.0-2b
REAL_SETTINGS: dict[str, dict[str, Any]] = {
    # RWKV-4 halves the residual after every 6th of 24 blocks in eval mode: twice in four blocks here
    "rwkv": {"rescale_every": 2},
    # Falcon-H1-0.5B: muP multipliers on every path into and out of the residual, and on the logits
    "falcon_h1": {"attention_in_multiplier": 1.0, "attention_out_multiplier": 0.9375,
                  "embedding_multiplier": 5.656854249492381, "key_multiplier": 0.390625,
                  "lm_head_multiplier": 0.0390625, "mlp_multipliers": [0.8838834764831844, 0.5859375],
                  "ssm_in_multiplier": 1.25, "ssm_multipliers": [0.3535533905932738, 0.25, 0.3535533905932738, 0.5,
                                                                  0.3535533905932738],
                  "ssm_out_multiplier": 0.23570226039551587},
    "granite": GRANITE, "granitemoe": GRANITE, "granitemoeshared": GRANITE, "granitemoehybrid": GRANITE,
    "cohere2": {"logit_scale": 0.25},  # c4ai-command-r7b
    # MiniMax-Text-01: seven lightning-attention layers to one softmax layer, residual alpha (2 * 80 layers) ** 0.25
    "minimax": {"layer_types": lambda depth: ["linear_attention"] * (depth - 1) + ["full_attention"],
                "full_attn_alpha_factor": 3.5565588200778455, "linear_attn_alpha_factor": 3.5565588200778455,
                "mlp_alpha_factor": 3.5565588200778455},
    # Jamba: attention every 8th layer from the 4th, experts every 2nd from the 1st
    "jamba": {"attn_layer_period": 4, "attn_layer_offset": 2, "expert_layer_period": 2, "expert_layer_offset": 1},
    # stablelm-2-12b: parallel residual and per-head query/key norms
    "stablelm": {"use_parallel_residual": True, "qk_layernorm": True},
    # falcon-40b: the new decoder architecture, grouped key/value heads
    "falcon": {"new_decoder_architecture": True, "num_kv_heads": 2},
    # opt-350m: post-LayerNorm blocks and a narrower embedding projected in and out
    "opt": {"do_layer_norm_before": False, "word_embed_proj_dim": 32},
    "dots1": {"first_k_dense_replace": 1, "routed_scaling_factor": 2.5},
}

# causal-LM types that plain transformers cannot build and run even with a sane tiny config
KNOWN_UNRUNNABLE: dict[str, str] = {
    "gemma3n": "its vision tower is a TimmWrapperModel, which needs the timm library",
    "gemma4_assistant": "draft model: its default config fails validation and its forward needs the target "
                        "model's inputs_embeds and shared_kv_states",
    "gemma4_unified_assistant": "draft model: its forward needs the target model's inputs_embeds and "
                                "shared_kv_states",
    "musicgen": "the registered config is the text-to-audio composite; MusicgenForCausalLM needs the "
                "unregistered decoder config and input ids per codebook",
    "musicgen_melody": "the registered config is the text-to-audio composite; MusicgenMelodyForCausalLM needs "
                       "the unregistered decoder config and input ids per codebook",
}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_attention(kind) -> bool:
    """Whether a layer kind names softmax attention (linear attention is another mixer)."""
    text = str(kind).lower()
    if any(word in text for word in ("linear", "mamba", "recurrent", "conv", "ssm", "rnn", "delta", "lstm")):
        return False
    return "att" in text or text in ("*", "a", "global", "local", "full", "sliding", "hybrid")


def _keep_layers(sequences: list, n_layers: int, depth: int) -> list[int]:
    """Which of ``n_layers`` original layers to keep: the first, an attention layer and a
    non-attention layer where both exist, one of every other kind, then the earliest others."""
    for seq in sequences if depth == 1 else ():  # one layer: attention, where the model has it
        attention = [i for i, v in enumerate(seq) if _is_attention(v)]
        if attention and len(attention) < len(seq):
            return [attention[0]]
    keep = [0]
    if depth <= 1:
        return keep[:depth]

    def add(index: int) -> None:
        if len(keep) < depth and index not in keep:
            keep.append(index)

    for seq in sequences:
        attention = [i for i, v in enumerate(seq) if _is_attention(v)]
        other = [i for i, v in enumerate(seq) if not _is_attention(v)]
        if attention and other:
            if not any(i in attention for i in keep):
                add(attention[0])
            if not any(i in other for i in keep):
                add(other[0])
    for seq in sequences:
        for i, value in enumerate(seq):
            if value not in {seq[j] for j in keep}:
                add(i)
    for i in range(n_layers):
        add(i)
    return sorted(keep)


def _index_list(name: str, value, n_layers: int) -> bool:
    return (isinstance(value, (list, tuple)) and all(_is_int(v) for v in value) and len(set(value)) == len(value)
            and all(0 <= v < n_layers for v in value) and list(value) == sorted(value)
            and (len(value) < n_layers or list(value) == list(range(n_layers)))
            and (name.endswith(("_idxs", "_indices", "_indexes", "_ids", "_layers")) or len(value) < n_layers))


def _cut_layers(d: dict, original: dict, n_layers: int, depth: int) -> None:
    """Cut every per-layer description in ``d`` (for ``n_layers`` original layers) to ``depth`` layers."""
    per_layer = [k for k, v in d.items()
                 if (isinstance(v, (list, tuple)) and len(v) == n_layers and not _index_list(k, v, n_layers))
                 or (isinstance(v, str) and len(v) == n_layers and k in LAYER_TYPE_LISTS)]
    per_layer.sort(key=lambda k: LAYER_TYPE_LISTS.index(k) if k in LAYER_TYPE_LISTS else len(LAYER_TYPE_LISTS))
    indexed = [k for k, v in d.items() if k not in per_layer and _index_list(k, v, n_layers) and len(v) > 0]
    overrides = d.get("per_layer_config") if isinstance(d.get("per_layer_config"), dict) else {}
    sequences = [list(d[k]) for k in per_layer]
    sequences += [[k if i in d[k] else "other" for i in range(n_layers)] for k in indexed]
    if overrides:
        keyed = {int(i): repr(sorted(v.items())) for i, v in overrides.items()}
        sequences.append([keyed.get(i, "") for i in range(n_layers)])
    keep = _keep_layers(sequences, n_layers, depth)
    for k in per_layer:
        value = d[k]
        cut = [value[i] for i in keep]
        d[k] = "".join(cut) if isinstance(value, str) else type(value)(cut)
    for k in indexed:
        d[k] = [new for new, old in enumerate(keep) if old in d[k]]
    if overrides:
        d["per_layer_config"] = {str(new): _shrink_overrides(overrides[key], original, depth)
                                 for key in overrides for new, old in enumerate(keep) if int(key) == old}


def _shrink_overrides(values: dict, original: dict, depth: int) -> dict:
    """A layer's overrides, shrunk as the whole config would be with them."""
    merged = {k: v for k, v in original.items() if not isinstance(v, (dict, list, tuple))}
    merged.update(values)
    shrunk = dict(merged)
    _shrink_sizes(shrunk, merged, depth)
    return {k: shrunk[k] for k in values}


def _shrink_sizes(d: dict, original: dict, depth: int) -> None:
    """Lower every size known by name, then restore the relations between sizes."""
    paired = _is_int(d.get("encoder_layers")) and _is_int(d.get("decoder_layers"))
    for k, v in list(d.items()):
        if k in DEPTHS and _is_int(v) and (v > depth or (paired and k in ("encoder_layers", "decoder_layers"))):
            d[k] = depth  # an encoder and decoder of one depth: some decoders size their cache by the encoder
        elif k in SIZES and _is_int(v) and v > SIZES[k]:
            d[k] = SIZES[k]
        elif k in SIZES and isinstance(v, (list, tuple)) and v and all(_is_int(x) for x in v):
            d[k] = [min(x, SIZES[k]) for x in v]
    _relations(d, original, depth)


def _cut_pattern(d: dict, depth: int) -> None:
    """Cyclic layer patterns shorter or longer than the stack (a tuple of kinds, or a period and offset)."""
    for k in LAYER_TYPE_LISTS:
        value = d.get(k)
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value) \
                and len(value) > depth:
            keep = _keep_layers([list(value)], len(value), depth)
            d[k] = type(value)(value[i] for i in keep)
    for k, value in list(d.items()):
        if k.endswith("_period") and _is_int(value) and value > depth:
            d[k] = depth
            offset = k[: -len("_period")] + "_offset"
            if _is_int(d.get(offset)):
                d[offset] = d[offset] % depth
        elif k.endswith("_interval") and ("attn" in k or "attention" in k) and _is_int(value) and value > depth:
            d[k] = depth  # every n-th layer attends: with n at most the depth, one still does


def _field_defaults(cls) -> dict:
    if cls is None or not dataclasses.is_dataclass(cls):
        return {}
    return {f.name: f.default for f in dataclasses.fields(cls)}


def _sub_config_classes(cls) -> dict:
    try:
        subs = getattr(cls, "sub_configs", None) or {}
        return {k: v for k, v in dict(subs).items() if isinstance(v, type)}
    except Exception:  # noqa: BLE001 - some classes compute this lazily
        return {}


def _remap_token_ids(d: dict, vocab_size: int) -> None:
    taken = {v for k, v in d.items() if k.endswith(("token_id", "token_index")) and _is_int(v) and 0 <= v < vocab_size}
    top = vocab_size - 1

    def fresh() -> int:
        nonlocal top
        while top in taken:
            top -= 1
        taken.add(top)
        return top

    for k, v in list(d.items()):
        if not k.endswith(("token_id", "token_index", "token_ids")):
            continue
        low = k in LOW_TOKEN_IDS
        if _is_int(v) and not 0 <= v < vocab_size:
            d[k] = 0 if low else fresh()
        elif v is None and low and k != "decoder_start_token_id":
            d[k] = 0
        elif isinstance(v, (list, tuple)) and v and all(_is_int(x) for x in v):
            kept = [x for x in v if 0 <= x < vocab_size]
            d[k] = kept or [0]


def shrink_dict(d: dict, cls=None, vocab_size: int | None = None, depth: int = 2,
                text_vocab: int | None = None) -> dict:
    """Shrink a config dict (as ``to_dict`` gives it) for config class ``cls``; returns a new dict.

    ``vocab_size`` is the vocabulary of this config; ``None`` keeps its own, capped at ``text_vocab``
    (the text model's, passed down to sub-configs such as codebooks and byte vocabularies)."""
    original, d = d, dict(d)
    defaults = _field_defaults(cls)
    subs = _sub_config_classes(cls)
    text_vocab = text_vocab if text_vocab is not None else vocab_size
    # sizes the class derives from others in __post_init__ (field default None): derive them again
    for k, v in list(d.items()):
        if k in defaults and defaults[k] is None and _is_int(v) and k not in DEPTHS and not k.endswith("token_id"):
            d[k] = None
    n_layers = next((d[k] for k in DEPTHS if _is_int(d.get(k))), None)
    if _is_int(n_layers) and n_layers > depth:
        _cut_layers(d, original, n_layers, depth)
    _cut_pattern(d, depth)
    _shrink_sizes(d, original, depth)
    vocab = vocab_size
    if vocab is None and _is_int(d.get("vocab_size")) and text_vocab is not None:
        vocab = min(d["vocab_size"], text_vocab)
    for k in ("vocab_size", "vocab_size_per_layer_input", "unpadded_vocab_size", "decoder_vocab_size",
              "audio_vocab_size"):
        if _is_int(d.get(k)) and vocab is not None:
            d[k] = vocab if k != "audio_vocab_size" else min(d[k], vocab)
    if vocab is not None:
        _remap_token_ids(d, vocab)
    for k, v in list(d.items()):
        if isinstance(v, dict) and (k in subs or "model_type" in v):
            d[k] = shrink_dict(v, subs.get(k), text_vocab if k in TEXT_SUB_CONFIGS else None, depth, text_vocab)
        elif isinstance(v, list) and v and all(isinstance(x, dict) and "model_type" in x for x in v):
            d[k] = [shrink_dict(x, subs.get(k), None, depth, text_vocab) for x in v]
    return _drop_derived(d, original, cls)


def _drop_derived(d: dict, original: dict, cls) -> dict:
    """Leave out attributes that are no dataclass field where the class derives them anew.

    Such an attribute, given back to the class, would overwrite what ``__post_init__``
    derives from the shrunk sizes (a head size that tracks the rope head size).  It is
    kept where the class, given the shrunk sizes, sets it as it did for its defaults
    (a constant, or a default popped from the keyword arguments)."""
    fields = _field_defaults(cls)
    extra = [k for k in d if fields and k not in fields and k not in BASE_KEYS]
    if not extra:
        return d
    base = {k: v for k, v in d.items() if k not in extra}
    try:
        probe = cls(**base)
    except Exception:  # noqa: BLE001 - the class needs them: give them all back
        return d
    for k in extra:
        try:
            derived = getattr(probe, k, None)
        except Exception:  # noqa: BLE001 - per-layer attributes of heterogeneous configs
            derived = original.get(k)
        if derived == original.get(k):  # not derived from what was shrunk: a constant, keep the shrunk value
            base[k] = d[k]
    return base


def _relations(d: dict, original: dict, depth: int) -> None:
    """Sizes that must agree with others after shrinking."""
    for kv, q in (("num_key_value_heads", "num_attention_heads"), ("num_kv_heads", "num_attention_heads"),
                  ("swa_num_key_value_heads", "swa_num_attention_heads"), ("num_key_value_heads", "n_head")):
        if _is_int(original.get(kv)) and original.get(kv) == original.get(q) and _is_int(d.get(q)):
            d[kv] = d[q]  # multi-head attention stays multi-head
    if _is_int(d.get("head_dim")) and original.get("head_dim") == original.get("qk_rope_head_dim") \
            and _is_int(d.get("qk_rope_head_dim")):
        d["head_dim"] = d["qk_rope_head_dim"]  # multi-latent attention: the rotary part sets the head size
    head_dim = d.get("head_dim") if _is_int(d.get("head_dim")) else None
    if head_dim is None and _is_int(d.get("hidden_size")) and _is_int(d.get("num_attention_heads")):
        head_dim = d["hidden_size"] // d["num_attention_heads"]
    if head_dim is None and _is_int(d.get("n_embd")) and _is_int(d.get("n_head")):
        head_dim = d["n_embd"] // d["n_head"]
    if _is_int(d.get("query_pre_attn_scalar")) and original.get("query_pre_attn_scalar") == original.get("head_dim") \
            and _is_int(d.get("head_dim")):
        d["query_pre_attn_scalar"] = d["head_dim"]  # attention scaled by the head size
    if _is_int(d.get("rotary_dim")) and head_dim and d["rotary_dim"] > head_dim // 2:
        d["rotary_dim"] = head_dim // 2
    if _is_int(d.get("qk_head_dim")) and _is_int(d.get("qk_nope_head_dim")) and _is_int(d.get("qk_rope_head_dim")):
        d["qk_head_dim"] = d["qk_nope_head_dim"] + d["qk_rope_head_dim"]
    for k in ("num_key_value_heads", "num_kv_heads", "swa_num_key_value_heads"):
        heads = d.get("num_attention_heads") if k != "swa_num_key_value_heads" else d.get("swa_num_attention_heads")
        if _is_int(d.get(k)) and _is_int(heads) and heads % d[k]:
            d[k] = heads
    for head, heads, expand in MAMBA_HEADS:  # mamba heads tile the expanded width exactly
        if head == "head_dim" and "n_groups" not in d:
            continue
        inner = d.get("mamba_d_ssm") if _is_int(d.get("mamba_d_ssm")) else None
        if inner is None and _is_int(d.get(expand)) and _is_int(d.get("hidden_size")):
            inner = d[expand] * d["hidden_size"]
        if inner and _is_int(d.get(heads)) and head in d:
            d[head] = inner // d[heads]
    heads = d.get("num_attention_heads")
    if _is_int(heads) and _is_int(d.get("hidden_size")):  # left unset by the class although its model needs them
        if "head_dim" in d and original.get("head_dim") is None and "qk_rope_head_dim" not in d:
            d["head_dim"] = d["hidden_size"] // heads
        if "num_key_value_heads" in d and original.get("num_key_value_heads") is None:
            d["num_key_value_heads"] = heads
    experts = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
    if "num_experts_per_tok" in d and d["num_experts_per_tok"] is None and any(_is_int(d.get(k)) for k in experts):
        d["num_experts_per_tok"] = 2
    for k in ("first_k_dense_replace", "moe_layer_start_index", "num_kv_shared_layers"):
        if _is_int(d.get(k)) and d[k] > 1:
            d[k] = 1 if k != "num_kv_shared_layers" else 0
    for k in ("moe_layer_end_index", "max_window_layers"):
        if _is_int(d.get(k)) and d[k] >= depth:
            d[k] = depth - 1 if k == "moe_layer_end_index" else depth


def _set_path(d: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    for p in parents:
        d = d[p]
    d[last] = value


def shrink(config, vocab_size: int | None = None, depth: int = 2) -> None:
    """Shrink ``config`` in place (and its sub-configs)."""
    d = shrink_dict(config.to_dict(), type(config), vocab_size, depth)
    new = type(config)(**d)
    config.__dict__.clear()
    config.__dict__.update(new.__dict__)


def tiny_config_for_type(model_type: str, vocab_size: int = 400, depth: int = 2, real: bool = False):
    """A shrunk instance of the config class registered for ``model_type``; ``real``: with the settings its
    released checkpoints use (:data:`REAL_SETTINGS`)."""
    from transformers import CONFIG_MAPPING

    cls = CONFIG_MAPPING[model_type]
    d = shrink_dict(cls().to_dict(), cls, vocab_size, depth)
    settings = {**OVERRIDES.get(model_type, {}), **(REAL_SETTINGS.get(model_type, {}) if real else {})}
    for path, value in settings.items():
        _set_path(d, path, value(depth) if callable(value) else value)
    if "tie_word_embeddings" in d:
        d["tie_word_embeddings"] = False
    if "is_decoder" in d:  # encoder families build their causal-LM head only as decoders
        d["is_decoder"] = True
    return cls(**d)


def runnable_types() -> list[str]:
    """The causal-LM model types of the installed transformers, less :data:`KNOWN_UNRUNNABLE`."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(t for t in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES if t not in KNOWN_UNRUNNABLE)
