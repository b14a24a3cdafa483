"""Hand-made step records for exact panel tests (3 layers, 2 heads, 4 keys, 5-token vocabulary),
a hybrid variant (a layer without attention), one without attention at all, and a
SmolLM2-shaped record (30 layers, 9 heads, one dominant MLP layer) for size tests."""

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


def _entropy(attention: np.ndarray) -> np.ndarray:
    p = attention.astype(np.float64)
    return -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0)).sum(-1)


def make_record(step: int = 0, hybrid: bool = False, attention: bool = True) -> StepRecord:
    """The 3-layer record; ``hybrid``: layer 1 has no attention (zero rows, NaN entropy, as the
    capture records a hybrid model's state-space layers); ``attention=False``: a model without
    attention (``attention`` and ``attention_entropy`` are ``None``)."""
    logits = np.log(PROBS).astype(np.float32)
    order = np.argsort(-PROBS)
    att = np.array([
        [[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]],
        [[0.5, 0.5, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4]],
        [[0.0, 0.0, 0.0, 1.0], [0.7, 0.1, 0.1, 0.1]],
    ], dtype=np.float32)
    ent = _entropy(att)
    if hybrid:
        att[1] = 0.0
        ent[1] = np.nan
    return StepRecord(
        step=step, position=3, token=VOCAB[4], chosen_prob=0.5, context=tuple(VOCAB[:4]), prompt_length=4 - step,
        generated_text=" the", logits=logits, top_ids=order, top_probs=PROBS[order], top_logits=logits[order],
        top_texts=tuple(VOCAB[i] for i in order),
        attn_norms=np.array([1.0, 2.0, 3.0], np.float32), mlp_norms=np.array([1.0, 2.0, 4.0], np.float32),
        mlp_max_abs=np.array([0.5, 0.25, 1.0], np.float32), residual_norms=np.array([10.0, 20.0, 40.0], np.float32),
        attention=att if attention else None, attention_entropy=ent.astype(np.float32) if attention else None,
        lens_ids=np.array([[0, 1], [3, 4], [4, 3]]), lens_probs=np.array([[0.3, 0.2], [0.6, 0.3], [0.5, 0.2]],
                                                                        np.float32),
        lens_tokens=((VOCAB[0], VOCAB[1]), (VOCAB[3], VOCAB[4]), (VOCAB[4], VOCAB[3])),
    )


WORDS = ["Once", " upon", " a", " time", ",", " in", " a", " small", " village", " by", " the", " sea", ",",
         " there", " was", " a", " wise", " old", " wizard", " named", " Thor", "old", ".", " He"]


def make_big_record(n_layers: int = 30, n_heads: int = 9, hybrid_every: int = 0, seed: int = 0) -> StepRecord:
    """A SmolLM2-shaped record (30 layers, 9 heads, 24 keys, a 200-token vocabulary) whose last
    MLP layer is 20 times the others, as SmolLM2's L29 is; ``hybrid_every=k``: every k-th layer
    has no attention.  Token 23 has a wide (CJK) text."""
    rng = np.random.default_rng(seed)
    vocab = [TokenText(i, f"t{i}", f"t{i}", f"t{i}") for i in range(200)]
    vocab[7] = TokenText(7, "猫猫", "猫猫", "猫猫")
    seq = len(WORDS)
    context = tuple(TokenText(100 + i, w, w, w.replace(" ", "␣")) for i, w in enumerate(WORDS))
    logits = rng.normal(0, 2, 200).astype(np.float32)
    logits[7] = 12.0
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs)[:20]
    att = rng.dirichlet(np.full(seq, 0.3), size=(n_layers, n_heads)).astype(np.float32)
    ent = _entropy(att)
    if hybrid_every:
        att[::hybrid_every] = 0.0
        ent[::hybrid_every] = np.nan
    mlp = rng.uniform(10, 40, n_layers).astype(np.float32)
    mlp[-1] = 500.0
    lens_ids = rng.integers(0, 200, (n_layers, 2))
    lens_ids[:, 0] = np.where(np.arange(n_layers) > n_layers // 2, 7, lens_ids[:, 0])
    return StepRecord(
        step=11, position=seq - 1, token=vocab[7], chosen_prob=float(probs[7]), context=context,
        prompt_length=12, generated_text=" there was a wise old wizard named Thorold.猫猫", logits=logits,
        top_ids=order, top_probs=probs[order].astype(np.float32), top_logits=logits[order],
        top_texts=tuple(vocab[i] for i in order),
        attn_norms=rng.uniform(1, 5, n_layers).astype(np.float32), mlp_norms=mlp, mlp_max_abs=mlp / 10,
        residual_norms=np.linspace(30, 730, n_layers).astype(np.float32), attention=att,
        attention_entropy=ent.astype(np.float32), lens_ids=lens_ids,
        lens_probs=rng.uniform(0.1, 0.9, (n_layers, 2)).astype(np.float32),
        lens_tokens=tuple(tuple(vocab[int(i)] for i in row) for row in lens_ids), elapsed_ms=70.0,
    )


def render(renderable, width: int = 40, height: int | None = None) -> str:
    console = Console(record=True, width=width, height=height or 25, file=io.StringIO(), color_system=None,
                      legacy_windows=False)
    console.print(renderable, height=height)
    return console.export_text()
