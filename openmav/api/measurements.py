"""``ModelMeasurements``: what the live view's panels read for one generated token.

It keeps the field names of the original MAV, with these meanings:

- ``mlp_activations[l]``: L2 norm (or max |x| with aggregation ``max_abs``) of layer
  ``l``'s MLP output at the new position (the MLP's output, not the residual stream);
- ``attention_entropy_values[l]``: mean over heads of the entropy, in nats, of the
  new token's attention row in layer ``l``;
- ``next_token_probs``: the raw softmax over the vocabulary (before sampling processors);
- ``top_ids`` / ``top_probs``: its top 20; ``decoded_tokens``: their readable text;
- ``predicted_char``: the text of the token actually chosen;
- ``*_normalized``: the same values scaled to [0, 1] by the chosen ``--scale``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..capture.records import StepRecord


@dataclass
class ModelMeasurements:
    mlp_activations: np.ndarray
    mlp_normalized: np.ndarray
    attention_entropy_values: np.ndarray
    attention_entropy_values_normalized: np.ndarray
    generated_text: str
    predicted_char: str
    next_token_probs: np.ndarray
    top_ids: np.ndarray
    top_probs: np.ndarray
    logits: np.ndarray
    decoded_tokens: list[str]
    token_id: int = -1
    attention_rows: np.ndarray | None = None  # [layers, heads, seq]
    residual_norms: np.ndarray | None = None  # [layers]
    attn_norms: np.ndarray | None = None  # [layers]
    lens_ids: np.ndarray | None = None  # [layers, k]
    lens_probs: np.ndarray | None = None  # [layers, k]
    lens_tokens: list[list[str]] | None = None  # [layers][k], readable
    record: StepRecord | None = field(default=None, repr=False)

    @property
    def step(self) -> int:
        return self.record.step if self.record is not None else -1
