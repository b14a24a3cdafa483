"""Tiny configs of any registered transformers model type (random weights, no downloads).

:func:`tiny_config_for_type` takes the real config class registered for a model
type, keeps its defaults, and shrinks every size it knows by name (layers, width,
heads, experts, latent ranks, vision towers) in every sub-config, so one build
takes a fraction of a second.  Hybrid layer-type lists are cut to the new depth
keeping at least one attention layer where the model had one.
"""

from __future__ import annotations

WIDTH = 64
HEADS = 4

# attribute name -> value in the shrunk config (only set where the config has the attribute)
SIZES: dict[str, int] = {
    # depth
    "num_hidden_layers": 2, "n_layer": 2, "num_layers": 2, "n_layers": 2, "decoder_layers": 2,
    "encoder_layers": 2, "num_decoder_layers": 2,
    # width
    "hidden_size": WIDTH, "n_embd": WIDTH, "d_model": WIDTH, "dim": WIDTH, "embed_dim": WIDTH,
    "intermediate_size": 2 * WIDTH, "n_inner": 2 * WIDTH, "ffn_dim": 2 * WIDTH, "decoder_ffn_dim": 2 * WIDTH,
    "encoder_ffn_dim": 2 * WIDTH, "d_ff": 2 * WIDTH, "ffn_hidden_size": 2 * WIDTH, "hidden_dim": 2 * WIDTH,
    "moe_intermediate_size": WIDTH // 2, "shared_expert_intermediate_size": WIDTH // 2,
    "expert_intermediate_size": WIDTH // 2,
    # heads
    "num_attention_heads": HEADS, "n_head": HEADS, "n_heads": HEADS, "num_heads": HEADS,
    "decoder_attention_heads": HEADS, "encoder_attention_heads": HEADS, "num_key_value_heads": HEADS // 2,
    "num_kv_heads": HEADS // 2, "multi_query_group_num": HEADS // 2, "head_dim": WIDTH // HEADS,
    "attention_head_dim": WIDTH // HEADS, "global_head_dim": WIDTH // HEADS,
    # experts
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "moe_num_experts": 4, "num_experts_per_tok": 2,
    "moe_topk": 2, "top_k_experts": 2, "n_shared_experts": 1, "n_group": 1, "topk_group": 1,
    # multi-latent attention
    "q_lora_rank": 32, "kv_lora_rank": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16,
    # state-space and linear-attention mixers
    "mamba_d_state": 8, "state_size": 8, "ssm_state_size": 8, "mamba_n_heads": 4, "mamba_d_head": 16,
    "mamba_n_groups": 1, "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 16,
    "linear_value_head_dim": 16, "time_step_rank": 8, "conv_kernel": 4,
    # positions and windows
    "max_position_embeddings": 512, "n_positions": 512, "n_ctx": 512, "sliding_window": 16, "window_size": 16,
    "attention_window_size": 16, "local_attention": 16,
}

# sub-config attributes shrunk the same way (vision towers, audio encoders, text configs)
SUB_CONFIGS = ("text_config", "vision_config", "audio_config", "speech_config", "encoder_config",
               "decoder_config", "perceiver_config", "vq_config", "projector_config")
LAYER_TYPE_LISTS = ("layer_types", "layers_block_type", "block_types", "hybrid_override_pattern",
                    "attn_layer_indices", "full_attn_idxs")


def _shrink_layer_types(config, depth: int) -> None:
    for name in LAYER_TYPE_LISTS:
        value = getattr(config, name, None)
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
            kinds = list(dict.fromkeys(value))
            cut = list(value[:depth])
            if len(kinds) > 1 and len(set(cut)) == 1:  # keep the mix: one layer of another kind
                other = next(k for k in kinds if k != cut[0])
                cut[-1] = other
            setattr(config, name, type(value)(cut))
        elif isinstance(value, str) and len(value) > depth:
            setattr(config, name, value[:depth])


def shrink(config, vocab_size: int | None = None, depth: int = 2) -> None:
    """Shrink ``config`` in place (and its sub-configs)."""
    for name, value in SIZES.items():
        if name in ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "decoder_layers"):
            value = depth
        current = getattr(config, name, None)
        if isinstance(current, int) and not isinstance(current, bool) and current > value:
            try:
                setattr(config, name, value)
            except (AttributeError, ValueError, TypeError):
                pass
    if vocab_size is not None and isinstance(getattr(config, "vocab_size", None), int):
        config.vocab_size = vocab_size
    _shrink_layer_types(config, depth)
    for attr in ("first_k_dense_replace",):
        if isinstance(getattr(config, attr, None), int) and getattr(config, attr) > 1:
            setattr(config, attr, 1)
    for name in SUB_CONFIGS:
        sub = getattr(config, name, None)
        if sub is not None and sub is not config and hasattr(sub, "to_dict"):
            shrink(sub, vocab_size if name == "text_config" else None, depth)


def tiny_config_for_type(model_type: str, vocab_size: int = 400, depth: int = 2):
    """A shrunk instance of the config class registered for ``model_type``."""
    from transformers import CONFIG_MAPPING

    config = CONFIG_MAPPING[model_type]()
    shrink(config, vocab_size, depth)
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        for target in (config, getattr(config, "text_config", None)):
            if target is not None and hasattr(target, attr):
                value = getattr(target, attr)
                if value is None or (isinstance(value, int) and value >= vocab_size):
                    setattr(target, attr, 0)
    if hasattr(config, "tie_word_embeddings"):
        config.tie_word_embeddings = False
    return config
