"""Hand-made step records for exact panel tests (3 layers, 2 heads, 4 keys, 5-token vocabulary)."""

from __future__ import annotations

import io

import numpy as np
from rich.console import Console

from openmav.capture.records import StepRecord
from openmav.capture.tokens import TokenText

VOCAB = [TokenText(0, "The", "The", "The"), TokenText(1, "Ġcat", " cat", "␣cat"),
         TokenText(2, "Ġsat", " sat", "␣sat"), TokenText(3, "Ġon", " on", "␣on"),
         TokenText(4, "Ġthe", " the", "␣the")]
PROBS = np.array([0.05, 0.1, 0.15, 0.2, 0.5], dtype=np.float32)


def make_record(step: int = 0) -> StepRecord:
    logits = np.log(PROBS).astype(np.float32)
    order = np.argsort(-PROBS)
    attention = np.array([
        [[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]],
        [[0.5, 0.5, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4]],
        [[0.0, 0.0, 0.0, 1.0], [0.7, 0.1, 0.1, 0.1]],
    ], dtype=np.float32)
    p = attention.astype(np.float64)
    ent = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0)).sum(-1)
    return StepRecord(
        step=step, position=3, token=VOCAB[4], chosen_prob=0.5, context=tuple(VOCAB[:4]), prompt_length=4 - step,
        generated_text=" the", logits=logits, top_ids=order, top_probs=PROBS[order], top_logits=logits[order],
        top_texts=tuple(VOCAB[i] for i in order),
        attn_norms=np.array([1.0, 2.0, 3.0], np.float32), mlp_norms=np.array([1.0, 2.0, 4.0], np.float32),
        mlp_max_abs=np.array([0.5, 0.25, 1.0], np.float32), residual_norms=np.array([10.0, 20.0, 40.0], np.float32),
        attention=attention, attention_entropy=ent.astype(np.float32),
        lens_ids=np.array([[0, 1], [3, 4], [4, 3]]), lens_probs=np.array([[0.3, 0.2], [0.6, 0.3], [0.5, 0.2]],
                                                                        np.float32),
        lens_tokens=((VOCAB[0], VOCAB[1]), (VOCAB[3], VOCAB[4]), (VOCAB[4], VOCAB[3])),
    )


def render(renderable, width: int = 40, height: int | None = None) -> str:
    console = Console(record=True, width=width, file=io.StringIO(), color_system=None, legacy_windows=False)
    console.print(renderable, height=height)
    return console.export_text()
