"""Collect what the maps show: attention of every generated token and the lens at every position.

The lens label of a position never changes once that position has been read (the
model is causal), so each position's lens is computed once:

- prompt positions, from the residual streams ``[L, P, d]`` of the prefill forward
  (kept by :class:`~openmav.capture.hooks.CaptureHooks` with ``last_only=False``);
- generated positions, from the step record of the forward that reads them.

The final prediction at a position is the top of the model's own logits there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..backends.loading import LoadedModel
from ..capture import CaptureConfig, SamplingConfig, TokenText, generate_steps
from ..capture.hooks import CaptureHooks
from ..capture.lens import lens_top
from ..capture.step_loop import token_texts

LENS_K = 5
LENS_BATCH = 8  # generated tokens whose lens is one product (their records arrive together)


@dataclass
class MapsData:
    """Everything behind the images of one run (plain arrays; no model inside).

    ``N = P + T - 1`` positions are read by the model (``P`` prompt tokens, ``T``
    generated; the last generated token is never read back).  Generated token ``i``
    is chosen by the query at position ``P + i - 1``, which sees ``S_i = P + i`` keys.
    """

    model_name: str
    prompt: str
    prompt_length: int
    n_layers: int
    n_heads: int
    tokens: list[TokenText]             # P + T tokens: the prompt, then every generated token
    lens_ids: np.ndarray                # [N, L, 5] logit-lens top-5 ids per position and layer
    lens_probs: np.ndarray              # [N, L, 5] their probabilities
    final_ids: np.ndarray               # [N, 5]   top-5 of the model's output at each position
    final_probs: np.ndarray             # [N, 5]
    attention: list[np.ndarray]         # T arrays [L, H, S_i]: the query's attention per head
    chosen_probs: list[float]           # probability of each generated token (raw softmax)
    vocab: dict[int, TokenText] = field(default_factory=dict)  # text of every lens / final id above
    generation_seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def n_generated(self) -> int:
        return len(self.attention)

    def seq_len(self, i: int) -> int:
        return self.prompt_length + i

    def generated_token(self, i: int) -> TokenText:
        return self.tokens[self.prompt_length + i]


def _lens_top(lm: LoadedModel, resid: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Top-5 ids and probabilities of ``softmax(logit_lens(resid))`` for ``resid [n, d]`` (the engine's lens)."""
    ids, probs = lens_top(lm, resid, LENS_K)
    return ids.cpu().numpy(), probs.float().cpu().numpy()


def collect(lm: LoadedModel, input_ids: torch.Tensor, prompt: str, max_new_tokens: int,
            sampling: SamplingConfig, on_step: Callable[[int], None] | None = None) -> MapsData:
    """Generate with attention and lens capture, returning a :class:`MapsData`.

    The whole collection runs in one ``inference_mode``: the step loop is a generator
    whose grad mode must not change between its steps.
    """
    with torch.inference_mode():
        return _collect(lm, input_ids, prompt, max_new_tokens, sampling, on_step)


def _collect(lm, input_ids, prompt, max_new_tokens, sampling, on_step) -> MapsData:
    # the lens of generated tokens is batched over LENS_BATCH steps (maps show no token before the end);
    # the prompt's residuals are kept when the prefill forward ends, before later forwards replace them
    capture = CaptureConfig(attention=True, prompt_attention=False, logit_lens=True, lens_top_k=LENS_K, top_k=LENS_K,
                            lens_batch=LENS_BATCH)
    texts = token_texts(lm)
    parts = lm.parts
    prompt_len = int(input_ids.shape[1])
    steps = generate_steps(lm, max_new_tokens=max_new_tokens, sampling=sampling, capture=capture,
                           input_ids=input_ids)
    prefill: dict[str, torch.Tensor] = {}

    start = time.perf_counter()
    with CaptureHooks(parts, attention=False, last_only=False) as full:
        def keep_prefill(module, args, output):
            if not prefill:  # the first forward is the prefill: every prompt position
                prefill["logits"] = output.logits[0].detach()
                prefill["resid"] = full.stacked("resid")[:, 0]  # [L, P, d], a copy

        handle = lm.model.register_forward_hook(keep_prefill)
        try:
            first = next(steps)
        finally:
            handle.remove()
    resid = prefill.pop("resid")
    L = parts.n_layers
    ids, probs = _lens_top(lm, resid.transpose(0, 1).reshape(prompt_len * L, -1))
    ftop = torch.topk(torch.softmax(prefill["logits"].float(), -1), LENS_K, dim=-1)
    del resid, prefill
    lens_ids = list(ids.reshape(prompt_len, L, LENS_K))
    lens_probs = list(probs.reshape(prompt_len, L, LENS_K))
    final_ids = list(ftop.indices.cpu().numpy())
    final_probs = list(ftop.values.cpu().numpy())
    tokens = list(texts.many(input_ids[0].tolist()))
    attention, chosen = [], []
    record = first
    while True:
        if record.step > 0:  # this forward read generated token step-1 at position P+step-1
            lens_ids.append(record.lens_ids)
            lens_probs.append(record.lens_probs)
            final_ids.append(record.top_ids[:LENS_K])
            final_probs.append(record.top_probs[:LENS_K])
        attention.append(record.attention.astype(np.float32))
        chosen.append(float(record.chosen_prob))
        tokens.append(record.token)
        if on_step:
            on_step(record.step)
        record = next(steps, None)
        if record is None:
            break
    elapsed = time.perf_counter() - start
    lens_arr, final_arr = np.stack(lens_ids).astype(np.int64), np.stack(final_ids).astype(np.int64)
    used = np.unique(np.concatenate([lens_arr.ravel(), final_arr.ravel()]))
    return MapsData(
        model_name=lm.name, prompt=prompt, prompt_length=prompt_len, n_layers=L, n_heads=parts.n_heads,
        tokens=tokens, lens_ids=lens_arr, lens_probs=np.stack(lens_probs).astype(np.float32),
        final_ids=final_arr, final_probs=np.stack(final_probs).astype(np.float32),
        attention=attention, chosen_probs=chosen, vocab={int(i): texts.get(int(i)) for i in used},
        generation_seconds=elapsed,
    )


def reduce_heads(attention: np.ndarray, mode: str, head: int | None = None) -> np.ndarray:
    """``[L, H, S] -> [L, S]``: the max or mean over heads, or one head's row."""
    if mode == "max":
        return attention.max(axis=1)
    if mode == "mean":
        return attention.mean(axis=1)
    if mode == "head":
        return attention[:, int(head)]
    raise ValueError(f"unknown reduction {mode!r}: use max, mean or head")
