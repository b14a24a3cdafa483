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
                                   head_dim=width // n_heads, query_pre_attn_scalar=width // n_heads,
                                   max_position_embeddings=512, sliding_window=16, **common)
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
               dtype: torch.dtype = torch.float32, spread: bool = True) -> LoadedModel:
    """A random-weight model of ``family`` with the tiny tokenizer, wrapped for capture.

    ``family`` is one of :data:`FAMILIES` (hand-made configs) or any model type that
    transformers registers (its config class shrunk by :mod:`openmav.tiny_configs`).  Weights are spread as
    trained ones are (:func:`spread_weights`) unless ``spread`` is false (a test that plants weights by hand
    in an otherwise quiet model).
    """
    tokenizer = tiny_tokenizer()
    config = tiny_config(family, len(tokenizer), n_layers, n_heads, width)
    model = tiny_causal_lm(config, seed, dtype, spread=spread)
    return wrap_model(model, tokenizer, name=f"tiny-{family}")


def tiny_causal_lm(config, seed: int = 0, dtype: torch.dtype = torch.float32, spread: bool = True):
    """The causal-LM class of ``config`` with random weights, spread as trained weights are (:func:`spread_weights`)
    unless ``spread`` is false (then transformers' own initialisation, norm weights perturbed)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if spread:
        spread_weights(model)
        _unit_embeddings(model)
    else:
        with torch.no_grad():  # random norms' weights, so norm bugs cannot hide behind ones
            for name, param in model.named_parameters():
                if _is_norm_weight(name):
                    param.add_(0.1 * torch.randn_like(param))
    model.eval()
    return model


# the last name of a query or key projection (fused ones included): their weights get QK_GAIN
# (a two-stage low-rank projection, multi-latent attention's, gets the gain once: on its second stage)
QK_NAMES = ("q_proj", "k_proj", "query", "key", "q", "k", "wq", "wk", "c_attn", "query_key_value", "qkv_proj", "qkv",
            "Wqkv", "W_pack", "q_b_proj", "kv_b_proj", "qk_proj", "q_lin", "k_lin", "in_proj", "key_value", "kv_proj")
QK_NORMS = ("q_norm", "k_norm", "q_layernorm", "k_layernorm", "query_layernorm", "key_layernorm")
QK_GAIN = 1.75  # attention scores ~ QK_GAIN**2 wide (unit-variance inputs): rows far from uniform
QK_NORM_BOOST = 0.5  # query/key norms: weight 1.5 (1 + 0.5 where the norm adds one)
BIAS_STD = 0.1


def _unit_embeddings(model: torch.nn.Module) -> None:
    """Scale the embeddings so that what the first block receives is unit-wide, as in trained models whatever
    multiplier the model applies to its embeddings (Gemma's sqrt(width), Granite's and Falcon-H1's
    ``embedding_multiplier``); models that do not report hidden states keep unit-variance embeddings."""
    import copy

    ids = torch.arange(1, 9).unsqueeze(0) % max(2, int(getattr(model.config.get_text_config(), "vocab_size", 64)))
    try:  # on a copy: a first forward changes some models (BigBird's attention type, RWKV's rescaled weights)
        with torch.no_grad():
            out = copy.deepcopy(model)(input_ids=ids, output_hidden_states=True, use_cache=False)
        first = out.hidden_states[0].float()
    except Exception:  # noqa: BLE001 - a model without hidden states: leave its embeddings as they are
        return
    rms = float(first.pow(2).mean().sqrt())
    if not rms > 0 or abs(rms - 1.0) < 0.5:
        return
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Embedding):
                module.weight.div_(rms)


def _adds_one(norm: torch.nn.Module) -> bool:
    """Whether a norm multiplies by ``1 + weight`` (Gemma's, Nemotron's LayerNorm1P): with its weight zeroed it
    still keeps unit-variance inputs at unit size."""
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1:
        return False
    saved = weight.detach().clone()
    try:
        weight.zero_()
        x = torch.randn(1, 8, weight.shape[0], dtype=weight.dtype, device=weight.device)
        out = norm(x)
        out = out[0] if isinstance(out, (tuple, list)) else out
        return bool(0.5 < float(out.float().pow(2).mean().sqrt()) < 2.0)
    except Exception:  # noqa: BLE001 - a norm that takes more than one tensor: the usual convention
        return False
    finally:
        weight.copy_(saved)


def _is_gate_module(module: torch.nn.Module) -> bool:
    """A module of per-dimension factors on a residual add (Ergo's ResidualGate, ZAYA's ResidualScaling)."""
    name = type(module).__name__
    return ("Gate" in name or "Scaling" in name) and "Norm" not in name and not isinstance(module, torch.nn.Linear)


def _is_norm_module(module: torch.nn.Module) -> bool:
    return isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm)) or "Norm" in type(module).__name__


def _is_norm_weight(name: str) -> bool:
    low = name.lower()
    return ("norm" in low or "ln_" in low) and name.endswith(("weight", "scale"))


def spread_weights(model: torch.nn.Module) -> None:
    """Give ``model`` the spread of trained weights, so a check on it sees what a real checkpoint does.

    transformers initialises every projection with a small fixed std (0.02): at width 64 each
    sub-block then adds a few percent of the residual, a mixer scaled by a multiplier adds almost
    nothing, and attention rows are nearly uniform, so a component read at the wrong place or
    scale hides below any tolerance.  Here, as in trained models:

    - every projection (``Linear``, GPT-2's ``Conv1D``, fused expert tensors) maps unit inputs to
      unit outputs (std ``1/sqrt(fan_in)``), so every part adds a share of comparable size, and
      biases are not zero (std 0.1);
    - embeddings are unit-variance, as wide as what the blocks add (a padding row stays zero);
    - query and key projections get a gain of :data:`QK_GAIN` (and query/key norms a weight of about 1.5),
      so attention scores are a few units wide and rows far from uniform;
    - norm weights are one (zero for norms that add one) plus noise of std 0.1, so norm bugs cannot
      hide behind ones; per-dimension residual gates and scales are not the identity either.

    State-space and recurrence parameters (decays, time constants, convolutions) keep their own
    initialisation: they set the dynamics, not the size of a part.
    """
    tied = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    with torch.no_grad():
        for name, module in model.named_modules():
            last = name.rsplit(".", 1)[-1]
            if isinstance(module, torch.nn.Embedding):
                module.weight.normal_(0.0, 1.0)
                if module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()
                continue
            weight = getattr(module, "weight", None)
            is_conv1d = type(module).__name__ == "Conv1D"
            if isinstance(module, torch.nn.Linear) or is_conv1d:
                if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or id(weight) in tied:
                    continue
                fan_in = weight.shape[0] if is_conv1d else weight.shape[1]
                gain = QK_GAIN if last in QK_NAMES else 1.0
                weight.normal_(0.0, gain / fan_in ** 0.5)
                bias = getattr(module, "bias", None)
                if isinstance(bias, torch.Tensor):
                    bias.normal_(0.0, BIAS_STD)
        gates = {id(p) for m in model.modules() if _is_gate_module(m) for p in m.parameters(recurse=False)}
        norms = {}
        for name, module in model.named_modules():
            if _is_norm_module(module):
                norms.update({id(p): _adds_one(module) for p in module.parameters(recurse=False)})
        for name, param in model.named_parameters():
            last = name.rsplit(".", 1)[-1]
            owner = name.rsplit(".", 2)[-2] if name.count(".") else ""
            if param.dim() == 3 and ("proj" in last or "expert" in name or last in ("w1", "w2", "w3")):
                param.normal_(0.0, 1.0 / param.shape[-1] ** 0.5)  # fused experts [E, out, in]
            elif param.dim() == 1 and id(param) in norms and last in ("weight", "scale"):
                param.normal_(0.0 if norms[id(param)] else 1.0, 0.1)
                if owner in QK_NORMS:
                    param.add_(QK_NORM_BOOST)  # a gain above one, whichever convention the norm has
            elif param.dim() == 1 and (id(param) in norms or _is_norm_weight(name)):
                param.add_(0.1 * torch.randn_like(param))  # biases, and norms known only by name
            elif param.dim() == 1 and id(param) in gates:
                param.add_(0.3 * torch.randn_like(param))  # residual gates and scales: not the identity
