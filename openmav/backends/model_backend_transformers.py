"""``TransformersBackend``: the documented backend over Hugging Face transformers."""

from __future__ import annotations

import threading

import torch

from ..capture.inputs import check_ids
from ..errors import InputError
from ..rules import DTYPES, SEED, Callback, Device, Flag, check_model_name, check_text
from .loading import LoadedModel, load_model, wrap_model


class TransformersBackend:
    """Loads a causal LM (hub id, directory, ``.gguf``, bundled name, or objects) and runs it.

    Usable right after construction: the model loads on first use (``tokenize``,
    ``generate``, ``model``, ``loaded``, or a :class:`~openmav.processors.state_fetcher.StateFetcher`
    fetching); ``initialize()`` loads it now and is idempotent.  Arguments are
    checked here (a seed must fit ``torch.manual_seed``; device and dtype must be
    known), so a bad one fails before any loading.

    >>> backend = TransformersBackend("smollm2-135m", device="cpu")   # doctest: +SKIP
    >>> backend.decode(backend.tokenize("hello"))                     # doctest: +SKIP
    'hello'
    """

    def __init__(self, model_name: str | None = None, device: str = "auto", seed: int | None = 42,
                 model_obj=None, tokenizer_obj=None, dtype: str = "float32", progress=None, device_map=None,
                 offload_folder: str | None = None, quantization: str | None = None, reverify: bool = False):
        if seed is not None:
            SEED.check("seed", seed)
        if device is not None and not isinstance(device, torch.device):
            Device().check("device", device)
        if (model_obj is None) != (tokenizer_obj is None):
            raise InputError("give both model_obj and tokenizer_obj, or neither")
        if model_obj is None and not isinstance(dtype, torch.dtype) and dtype not in DTYPES:
            raise InputError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
        if model_name is not None:
            check_model_name("model_name", model_name)
        Callback().check("progress", progress)
        Flag().check("reverify", reverify)
        self.model_name = model_name
        self.device = device
        self.seed = seed
        self.dtype = dtype
        self.model_obj = model_obj
        self.tokenizer_obj = tokenizer_obj
        self.progress = progress
        self.placement = {"device_map": device_map, "offload_folder": offload_folder, "quantization": quantization,
                          "reverify": bool(reverify)}
        self._loaded: LoadedModel | None = None
        self._lock = threading.Lock()
        if seed is not None:
            torch.manual_seed(seed)

    @property
    def is_initialized(self) -> bool:
        """Whether the model is loaded (without loading it)."""
        return self._loaded is not None

    @property
    def loaded(self) -> LoadedModel:
        """The :class:`LoadedModel`, loaded on first access."""
        return self.initialize()

    def initialize(self) -> LoadedModel:
        """Load the model and tokenizer now (once; later calls return the same object)."""
        with self._lock:
            if self._loaded is None:
                if self.model_obj is not None:
                    dev = None if self.device in (None, "auto") else self.device
                    self._loaded = wrap_model(self.model_obj, self.tokenizer_obj, name=self.model_name or "model",
                                              device=dev)
                else:
                    self._loaded = load_model(self.model_name, device=self.device, dtype=self.dtype,
                                              progress=self.progress, **self.placement)
        return self._loaded

    @property
    def model(self):
        return self.initialize().model

    @property
    def tokenizer(self):
        return self.initialize().tokenizer

    def tokenize(self, text: str) -> torch.Tensor:
        """Token ids ``[1, P]`` on the model's device; text must be non-empty, valid UTF-8."""
        if not text:
            raise InputError("the prompt is empty")
        check_text("the text", text)
        lm = self.initialize()
        return lm.tokenizer(text, return_tensors="pt").input_ids.to(lm.device)

    def decode(self, token_ids, skip_special_tokens: bool = False) -> str:
        """The text of ``token_ids``: a list or tuple of ints (or ``[[ids]]``, one such row), or an integer
        tensor or numpy array ``[P]`` or ``[1, P]``; always one string.

        The rules of every token-id argument (:func:`~openmav.capture.inputs.check_ids`): at least one id,
        no more than the model's context, every id a whole number in its vocabulary (a bool, a float, a
        negative or out-of-vocabulary id, a batch of rows, text: one :class:`InputError`)."""
        Flag().check("skip_special_tokens", skip_special_tokens)
        lm = self.initialize()
        check_ids(lm, "token_ids", token_ids, lists=True, one_d=True)
        if isinstance(token_ids, (list, tuple)):
            row = token_ids[0] if len(token_ids) == 1 and isinstance(token_ids[0], (list, tuple)) else token_ids
            ids = [int(i) for i in row]
        else:  # a tensor or an array: its one row, as the tokenizer takes it (a 2-D one would decode as a batch)
            ids = token_ids.reshape(-1).tolist()
        return lm.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

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
        Flag().check("output_attentions", output_attentions)
        Flag().check("output_hidden_states", output_hidden_states)
        seen = past_key_values.get_seq_length() if hasattr(past_key_values, "get_seq_length") else 0
        check_ids(lm, "input_ids", input_ids, reserve=int(seen))  # the cached tokens count against the context
        cache = past_key_values if past_key_values is not None else DynamicCache(config=lm.model.config)
        import inspect

        # transformers 5.2x renamed the forward's cache argument and output to ``cache``
        name = "cache" if "cache" in inspect.signature(lm.model.forward).parameters else "past_key_values"
        with attention_implementation(lm.model, "eager" if output_attentions else None):
            out = lm.model(input_ids=input_ids.to(lm.device), use_cache=True, output_attentions=output_attentions,
                           output_hidden_states=output_hidden_states, **{name: cache})
        cache = getattr(out, "cache", None)
        return {"logits": out.logits, "hidden_states": out.hidden_states, "attentions": out.attentions,
                "past_key_values": cache if cache is not None else out.past_key_values}
