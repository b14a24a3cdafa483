"""One forward per call, with the model's own cache carried from call to call.

Transformer layers keep a key/value cache; state-space and recurrent layers keep
their own state (Mamba's ``cache_params``).  :class:`CachedForward` passes back
whatever the previous output returned, under the name the model's ``forward``
takes, with the positions of the new tokens, so the step loop's one-forward-per-token
contract holds for every kind of layer.  A model that returns no cache at all is run
on the whole sequence each step (slower, never wrong).
"""

from __future__ import annotations

import inspect

import torch

# output attribute -> the forward argument that takes it back
STATE_NAMES = (("cache", None), ("past_key_values", None), ("cache_params", "cache_params"), ("state", "state"),
               ("mems", "mems"))


class CachedForward:
    def __init__(self, model: torch.nn.Module, stateless: bool = False, output_attentions: bool = False):
        self.model = model
        # older attention modules return their weights only when asked (GPT-1, BART-style decoders)
        self.extra = {"output_attentions": True} if output_attentions else {}
        params = inspect.signature(model.forward).parameters
        self.kv_name = "cache" if "cache" in params else "past_key_values"
        self.wants_position = "cache_position" in params
        self.state: tuple[str, object] | None = None
        self.seen = 0
        self.history: torch.Tensor | None = None
        self.stateless = stateless  # no usable cache: every call runs on the whole sequence

    def __call__(self, ids: torch.Tensor):
        self.history = ids if self.history is None else torch.cat([self.history, ids], 1)
        if self.stateless:
            return self.model(input_ids=self.history, use_cache=False, **self.extra)
        kwargs = dict(input_ids=ids, use_cache=True, **self.extra)
        if self.state is not None:
            kwargs[self.state[0]] = self.state[1]
        if self.wants_position:
            kwargs["cache_position"] = torch.arange(self.seen, self.seen + ids.shape[1], device=ids.device)
        out = self.model(**kwargs)
        for name, argument in STATE_NAMES:
            value = getattr(out, name, None)
            if value is not None:
                self.state = (argument or self.kv_name, value)
                break
        else:
            self.stateless = True
        self.seen += ids.shape[1]
        return out
