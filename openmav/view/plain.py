"""Output without a terminal: a plain line per token, or one JSON object per token.

JSON lines (``--format jsonl``) carry, per token: ``step``, ``position``,
``token_id``, ``token`` (exact text), ``display`` (readable), ``prob`` (raw
softmax probability of the chosen token), ``sampled``, ``top`` (the 5 most likely:
``id``, ``token``, ``prob``, ``logit``), ``mlp_norms``, ``attn_norms``,
``residual_norms`` (per layer), ``attention_entropy`` (per layer, mean over heads,
nats; ``null`` when attention was not captured), ``lens_top1`` (per layer
``[display, prob]``; ``null`` without the logit lens), ``text`` (the generated
text so far), ``finished``, ``elapsed_ms``.
"""

from __future__ import annotations

import json

from ..capture.records import StepRecord


def _floats(values) -> list[float] | None:
    return None if values is None else [round(float(v), 6) for v in values]


def record_json(rec: StepRecord, top: int = 5) -> dict:
    """The JSON object of one step (see the module docstring)."""
    ent = None if rec.attention_entropy is None else rec.attention_entropy.mean(axis=1)
    lens = None
    if rec.lens_tokens is not None and rec.lens_probs is not None:
        lens = [[row[0].display, round(float(p[0]), 6)] for row, p in zip(rec.lens_tokens, rec.lens_probs)]
    return {
        "step": rec.step, "position": rec.position, "token_id": rec.token.id, "token": rec.token.text,
        "display": rec.token.display, "prob": round(float(rec.chosen_prob), 6), "sampled": rec.sampled,
        "top": [{"id": int(i), "token": t.text, "prob": round(float(p), 6), "logit": round(float(lg), 4)}
                for i, t, p, lg in list(zip(rec.top_ids, rec.top_texts, rec.top_probs, rec.top_logits))[:top]],
        "mlp_norms": _floats(rec.mlp_norms), "attn_norms": _floats(rec.attn_norms),
        "residual_norms": _floats(rec.residual_norms), "attention_entropy": _floats(ent), "lens_top1": lens,
        "text": rec.generated_text, "finished": rec.finished, "elapsed_ms": round(rec.elapsed_ms, 3),
    }


def jsonl_line(rec: StepRecord) -> str:
    return json.dumps(record_json(rec), ensure_ascii=False)


def text_line(rec: StepRecord) -> str:
    """``step<TAB>token id<TAB>probability<TAB>readable token``."""
    return f"{rec.step}\t{rec.token.id}\t{rec.chosen_prob:.4f}\t{rec.token.display}"
