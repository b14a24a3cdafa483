"""Output without a terminal: a plain line per token, or one JSON object per token.

Every JSON line (``--format jsonl``) has the same keys, :data:`JSON_KEYS`, whatever
the panels; a value that was not computed is ``null``, and so is a number that does
not exist (a layer without attention has ``null`` entropy), so every line is strict
JSON.  What each key means, and which flag turns on the ones that can be ``null``, is
in ``docs/readme/live.md``:

``step``, ``position``, ``token_id``, ``token`` (exact text), ``display`` (readable),
``prob`` (raw softmax probability of the chosen token), ``sampled``, ``top`` (the 5
most likely: ``id``, ``token``, ``prob``, ``logit``), ``mlp_norms``, ``mlp_max_abs``,
``attn_norms``, ``residual_norms`` (per layer), ``attention_entropy`` (per layer,
mean over heads, nats; ``null`` when attention was not captured), ``lens_top1`` (per
layer ``[display, prob]``; ``null`` without the logit lens), ``text`` (the generated
text so far), ``finished``, ``elapsed_ms``.
"""

from __future__ import annotations

import json
import math

import numpy as np

from ..capture.records import StepRecord

JSON_KEYS = ("step", "position", "token_id", "token", "display", "prob", "sampled", "top", "mlp_norms",
             "mlp_max_abs", "attn_norms", "residual_norms", "attention_entropy", "lens_top1", "text", "finished",
             "elapsed_ms")


def _num(value, digits: int = 6) -> float | None:
    v = float(value)
    return round(v, digits) if math.isfinite(v) else None


def _floats(values) -> list[float | None] | None:
    return None if values is None else [_num(v) for v in np.asarray(values).ravel()]


def _entropy(rec: StepRecord):
    """Per layer, the mean over heads; ``None`` for a layer without attention (NaN entropies)."""
    if rec.attention_entropy is None:
        return None
    ent = np.asarray(rec.attention_entropy, dtype=np.float64)
    return [_num(row.mean()) if np.isfinite(row).all() else None for row in ent]


def record_json(rec: StepRecord, top: int = 5) -> dict:
    """The JSON object of one step: exactly the keys :data:`JSON_KEYS` (see the module docstring)."""
    lens = None
    if rec.lens_tokens is not None and rec.lens_probs is not None:
        lens = [[row[0].display, _num(p[0])] for row, p in zip(rec.lens_tokens, rec.lens_probs)]
    out = {
        "step": rec.step, "position": rec.position, "token_id": rec.token.id, "token": rec.token.text,
        "display": rec.token.display, "prob": _num(rec.chosen_prob), "sampled": rec.sampled,
        "top": [{"id": int(i), "token": t.text, "prob": _num(p), "logit": _num(lg, 4)}
                for i, t, p, lg in list(zip(rec.top_ids, rec.top_texts, rec.top_probs, rec.top_logits))[:top]],
        "mlp_norms": _floats(rec.mlp_norms), "mlp_max_abs": _floats(rec.mlp_max_abs),
        "attn_norms": _floats(rec.attn_norms), "residual_norms": _floats(rec.residual_norms),
        "attention_entropy": _entropy(rec), "lens_top1": lens,
        "text": rec.generated_text, "finished": rec.finished, "elapsed_ms": _num(rec.elapsed_ms, 3),
    }
    return out


def jsonl_line(rec: StepRecord) -> str:
    return json.dumps(record_json(rec), ensure_ascii=False, allow_nan=False)


def text_line(rec: StepRecord) -> str:
    """``step<TAB>token id<TAB>probability<TAB>readable token``."""
    return f"{rec.step}\t{rec.token.id}\t{rec.chosen_prob:.4f}\t{rec.token.display}"
