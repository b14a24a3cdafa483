"""``TransformersBackend``: the documented backend over Hugging Face transformers."""

from __future__ import annotations

import torch

from ..errors import InputError
from .loading import LoadedModel, load_model, wrap_model


class TransformersBackend:
    """Loads a causal LM (hub id, directory, ``.gguf``, bundled name, or objects) and runs it.

    >>> backend = TransformersBackend("smollm2-135m", device="cpu")   # doctest: +SKIP
    >>> backend.initialize()                                          # doctest: +SKIP
    """

    def __init__(self, model_name: str | None = None, device: str = "auto", seed: int | None = 42,
                 model_obj=None, tokenizer_obj=None, dtype: str = "float32", progress=None):
        self.model_name = model_name
        self.device = device
        self.seed = seed
        self.dtype = dtype
        self.model_obj = model_obj
        self.tokenizer_obj = tokenizer_obj
        self.progress = progress
        self.loaded: LoadedModel | None = None
        if seed is not None:
            torch.manual_seed(seed)

    def initialize(self) -> LoadedModel:
        """Load the model and tokenizer (once)."""
        if self.loaded is None:
            if self.model_obj is not None or self.tokenizer_obj is not None:
                dev = None if self.device in (None, "auto") else self.device
                self.loaded = wrap_model(self.model_obj, self.tokenizer_obj, name=self.model_name or "model", device=dev)
            else:
                self.loaded = load_model(self.model_name, device=self.device, dtype=self.dtype, progress=self.progress)
        return self.loaded

    @property
    def model(self):
        return self.initialize().model

    @property
    def tokenizer(self):
        return self.initialize().tokenizer

    def tokenize(self, text: str) -> torch.Tensor:
        """Token ids ``[1, P]`` on the model's device."""
        if not text:
            raise InputError("the prompt is empty")
        lm = self.initialize()
        return lm.tokenizer(text, return_tensors="pt").input_ids.to(lm.device)

    def decode(self, token_ids, skip_special_tokens: bool = False) -> str:
        if isinstance(token_ids, torch.Tensor):
            token_ids = token_ids.reshape(-1).tolist()
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, past_key_values=None, output_attentions: bool = True,
                 output_hidden_states: bool = True) -> dict:
        """One forward over ``input_ids`` (the new tokens, when a cache is given).

        Returns ``logits`` (``[1, P, V]``), ``hidden_states`` and ``attentions``
        (tuples over layers, as transformers gives them) and ``past_key_values`` to
        pass to the next call.  For per-step records use :class:`StateFetcher`.
        """
        from transformers import DynamicCache

        from ..capture.hooks import attention_implementation

        lm = self.initialize()
        cache = past_key_values if past_key_values is not None else DynamicCache(config=lm.model.config)
        with attention_implementation(lm.model, "eager" if output_attentions else None):
            out = lm.model(input_ids=input_ids.to(lm.device), past_key_values=cache, use_cache=True,
                           output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        return {"logits": out.logits, "hidden_states": out.hidden_states, "attentions": out.attentions,
                "past_key_values": out.past_key_values}
