"""Tiny random-weight models built from real configs, for tests and examples (no downloads).

``tiny_model("llama")`` returns a :class:`~openmav.backends.loading.LoadedModel` whose
weights are random but whose code path is the real transformers class of that
family.  The tokenizer is a real byte-level BPE trained in a few milliseconds on
:data:`SAMPLE_TEXT`.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from .backends.loading import LoadedModel, wrap_model

SAMPLE_TEXT = """\
When Mary and John went to the store, John gave a drink to Mary.
The key to the cabinets is on the table. The keys to the cabinet are in the drawer.
The trophy would not fit in the brown suitcase because it was too big.
Once upon a time there was a little cat who sat on the mat and looked at the sun.
The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is Madrid.
A cat was sitting on a mat. The cat sat on the mat. What is the answer? The answer is 42.
I love this movie, it is wonderful! I hate this movie, it is terrible.
hello world, hello mello. One, two, three, four, five, six, seven, eight, nine, ten.
"""

FAMILIES = ("gpt2", "llama", "mistral", "qwen2", "gemma3", "gpt_neox")


@lru_cache(maxsize=1)
def tiny_tokenizer(vocab_size: int = 400):
    """A byte-level BPE tokenizer trained on :data:`SAMPLE_TEXT` (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(SAMPLE_TEXT.splitlines() * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   bos_token="<|endoftext|>")
    return fast


def tiny_config(family: str, vocab_size: int, n_layers: int = 2, n_heads: int = 4, width: int = 64):
    """A small config of the real class of ``family``."""
    import transformers as tf

    common = dict(vocab_size=vocab_size, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if family == "gpt2":
        return tf.GPT2Config(n_layer=n_layers, n_head=n_heads, n_embd=width, n_positions=512, **common)
    if family in ("llama", "mistral", "qwen2"):
        cls = {"llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config}[family]
        return cls(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=n_layers,
                   num_attention_heads=n_heads, num_key_value_heads=max(1, n_heads // 2),
                   max_position_embeddings=512, tie_word_embeddings=False, **common)
    if family == "gemma3":
        return tf.Gemma3TextConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=n_layers,
                                   num_attention_heads=n_heads, num_key_value_heads=max(1, n_heads // 2),
                                   head_dim=width // n_heads, max_position_embeddings=512, sliding_window=16,
                                   **common)
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=n_layers,
                                num_attention_heads=n_heads, max_position_embeddings=512, **common)
    from transformers import CONFIG_MAPPING

    if family in CONFIG_MAPPING:  # any other registered model type: its real config class, shrunk
        from .tiny_configs import tiny_config_for_type

        config = tiny_config_for_type(family, vocab_size, n_layers)
        if getattr(config, "is_decoder", None) is False:  # BERT-style layers run causally only as decoders
            config.is_decoder = True
        return config
    raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)} or any transformers model type")


def tiny_model(family: str = "llama", seed: int = 0, n_layers: int = 2, n_heads: int = 4, width: int = 64,
               dtype: torch.dtype = torch.float32) -> LoadedModel:
    """A random-weight model of ``family`` with the tiny tokenizer, wrapped for capture.

    ``family`` is one of :data:`FAMILIES` (hand-made configs) or any model type that
    transformers registers (its config class shrunk by :mod:`openmav.tiny_configs`).
    """
    tokenizer = tiny_tokenizer()
    config = tiny_config(family, len(tokenizer), n_layers, n_heads, width)
    model = tiny_causal_lm(config, seed, dtype)
    return wrap_model(model, tokenizer, name=f"tiny-{family}")


def tiny_causal_lm(config, seed: int = 0, dtype: torch.dtype = torch.float32):
    """The causal-LM class of ``config`` with random weights (norm weights perturbed too)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    with torch.no_grad():  # random norms' weights, so norm bugs cannot hide behind ones
        for name, param in model.named_parameters():
            if "norm" in name.lower() or "ln_" in name:
                param.add_(0.1 * torch.randn_like(param))
    model.eval()
    return model
