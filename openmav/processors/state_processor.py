"""``StateProcessor``: turns a :class:`~openmav.capture.records.StepRecord` into :class:`ModelMeasurements`."""

from __future__ import annotations

import numpy as np

from ..api.measurements import ModelMeasurements
from ..capture.records import StepRecord
from ..errors import InputError

AGGREGATIONS = ("l2", "max_abs")
SCALES = ("linear", "log", "minmax")


def scale_values(values: np.ndarray, scale: str) -> np.ndarray:
    """Map non-negative values to [0, 1].

    ``linear``: ``v / max(v)``; ``log``: ``log1p(v) / log1p(max(v))``;
    ``minmax``: ``(v - min) / (max - min)``.  All zeros when the denominator is 0.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return v.astype(np.float32)
    if scale == "linear":
        top = np.max(np.abs(v))
        out = v / top if top > 0 else np.zeros_like(v)
    elif scale == "log":
        top = np.log1p(np.max(np.abs(v)))
        out = np.log1p(np.abs(v)) / top if top > 0 else np.zeros_like(v)
    elif scale == "minmax":
        lo, hi = v.min(), v.max()
        out = (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
    else:
        raise InputError(f"unknown scale {scale!r}: use one of {', '.join(SCALES)}")
    return out.astype(np.float32)


class StateProcessor:
    """Computes the panel metrics of one step from its record (pure: no model access)."""

    def __init__(self, aggregation: str = "l2", scale: str = "linear"):
        if aggregation not in AGGREGATIONS:
            raise InputError(f"unknown aggregation {aggregation!r}: use one of {', '.join(AGGREGATIONS)}")
        if scale not in SCALES:
            raise InputError(f"unknown scale {scale!r}: use one of {', '.join(SCALES)}")
        self.aggregation = aggregation
        self.scale = scale

    def process(self, record: StepRecord) -> ModelMeasurements:
        mlp = record.mlp_norms if self.aggregation == "l2" else record.mlp_max_abs
        if record.attention_entropy is not None:
            ent = record.attention_entropy.mean(axis=1)
        else:
            ent = np.zeros(record.n_layers, dtype=np.float32)
        return ModelMeasurements(
            mlp_activations=mlp,
            mlp_normalized=scale_values(mlp, self.scale),
            attention_entropy_values=ent,
            attention_entropy_values_normalized=scale_values(ent, self.scale),
            generated_text=record.generated_text,
            predicted_char=record.token.text,
            next_token_probs=record.probs,
            top_ids=record.top_ids,
            top_probs=record.top_probs,
            logits=record.logits,
            decoded_tokens=[t.display for t in record.top_texts],
            token_id=record.token.id,
            attention_rows=record.attention,
            residual_norms=record.residual_norms,
            attn_norms=record.attn_norms,
            lens_ids=record.lens_ids,
            lens_probs=record.lens_probs,
            lens_tokens=[[t.display for t in row] for row in record.lens_tokens] if record.lens_tokens else None,
            record=record,
        )

