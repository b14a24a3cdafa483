"""The record one generation step produces: plain typed data, no model inside.

Capture site names and shapes (``L`` layers, ``H`` query heads, ``S`` keys =
``position + 1``, ``V`` vocabulary, ``k`` top-k):

====================  =============  ==================================================
field                 shape          meaning
====================  =============  ==================================================
logits                [V]            raw next-token logits (before any sampling processor)
top_ids/top_probs     [k]            top-k of ``softmax(logits)`` (``top_texts``: their text)
attention             [L, H, S]      attention of the query (last input) token, per head
attention_entropy     [L, H]         entropy in nats of each row of ``attention``
attn_norms            [L]            L2 norm of the attention block's output at the query
mlp_norms             [L]            L2 norm of the MLP block's output at the query
mlp_max_abs           [L]            max |x| of the MLP block's output at the query
residual_norms        [L]            L2 norm of the residual stream after each block
lens_ids/lens_probs   [L, k]         logit lens: softmax(unembed(final_norm(resid_l)))
prompt_attention      [L, H, P, P]   step 0 only: full attention over the prompt
====================  =============  ==================================================

Step ``t`` is the forward whose output chose generated token ``t``: step 0 is the
prefill (query = last prompt token), step ``t > 0`` the forward of token ``t - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .tokens import TokenText


@dataclass
class StepRecord:
    step: int
    position: int
    token: TokenText
    chosen_prob: float
    context: tuple[TokenText, ...]
    prompt_length: int
    generated_text: str
    logits: np.ndarray
    top_ids: np.ndarray
    top_probs: np.ndarray
    top_logits: np.ndarray
    attn_norms: np.ndarray
    mlp_norms: np.ndarray
    mlp_max_abs: np.ndarray
    residual_norms: np.ndarray
    top_texts: tuple[TokenText, ...] = ()
    attention: np.ndarray | None = None
    attention_entropy: np.ndarray | None = None
    lens_ids: np.ndarray | None = None
    lens_probs: np.ndarray | None = None
    lens_tokens: tuple[tuple[TokenText, ...], ...] | None = None
    prompt_attention: np.ndarray | None = None
    sampled: bool = False
    finished: bool = False
    elapsed_ms: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return int(self.residual_norms.shape[0])

    @property
    def seq_len(self) -> int:
        return self.position + 1

    @property
    def probs(self) -> np.ndarray:
        """``softmax(logits)`` over the whole vocabulary (raw, before sampling processors)."""
        z = self.logits.astype(np.float64)
        e = np.exp(z - z.max())
        return (e / e.sum()).astype(np.float32)

    @property
    def top_tokens(self) -> list[tuple[int, float, float]]:
        """``(id, prob, logit)`` of the raw top-k, most likely first."""
        return [(int(i), float(p), float(lg)) for i, p, lg in zip(self.top_ids, self.top_probs, self.top_logits)]
