"""Standard head scores on repeated random token sequences.

A batch of ``batch`` sequences is built, each ``[bos?] r r ... r`` where ``r`` is
``seq_len`` random (non-special) tokens repeated ``n_repeats`` times.  With ``A``
the attention probabilities of head ``(l, h)`` and ``T = seq_len``, over query
positions ``i`` of the random part (means over batch and positions):

- previous-token score:  ``mean_i A[i, i-1]``                       (every ``i`` after the first random token)
- duplicate-token score: ``mean_i A[i, i-T]``                       (``i`` in copies 2..n: the same token one copy back)
- induction score:       ``mean_i A[i, i-T+1]``                     (``i`` in copies 2..n: the token after that earlier copy)

Each score lies in [0, 1]; 1 means the head puts all its weight there.

They are defined for causal LMs (the patterns of a model reading left to right); a
bidirectional encoder is refused with one sentence (:class:`~openmav.analysis.stats.NotApplicableError`,
a ``TypeError``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..backends.loading import LoadedModel
from ..rules import BATCH_SIZE, SEED, Number
from .checks import analysis_errors
from .patterns import attention_patterns
from .stats import AnalysisValueError, NotApplicableError

PATTERN_BYTES_MAX = 2**31  # the attention patterns compute_head_scores keeps at once

SCORE_NAMES = ("previous_token", "duplicate_token", "induction")


@dataclass
class HeadScores:
    """Scores per head, each ``[n_layers, n_heads]`` (rows are layers 0, 1, 2, ... in order)."""

    previous_token: np.ndarray
    duplicate_token: np.ndarray
    induction: np.ndarray
    seq_len: int = 0
    n_repeats: int = 0
    batch: int = 0

    @property
    def n_layers(self) -> int:
        return int(self.previous_token.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.previous_token.shape[1])

    def get(self, name: str) -> np.ndarray:
        if name not in SCORE_NAMES:
            raise AnalysisValueError(f"unknown head score {name!r}; known: {', '.join(SCORE_NAMES)}")
        return getattr(self, name)

    def top(self, name: str, k: int = 5) -> list[tuple[int, int, float]]:
        """The ``k`` highest-scoring heads for ``name`` as ``(layer, head, score)``."""
        arr = self.get(name)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise AnalysisValueError(f"k must be an integer >= 1, got {k!r}")
        ranked = np.where(np.isnan(arr), -np.inf, arr)  # layers without attention (hybrids) hold NaN
        order = np.argsort(ranked, axis=None, kind="stable")[::-1][:k]
        return [(int(i // arr.shape[1]), int(i % arr.shape[1]), float(arr.flat[i])) for i in order]

    def to_dict(self) -> dict:
        """Plain JSON-ready data: nested lists ``[layer][head]`` per score plus the settings."""
        return {
            "n_layers": self.n_layers, "n_heads": self.n_heads,
            "seq_len": self.seq_len, "n_repeats": self.n_repeats, "batch": self.batch,
            **{name: getattr(self, name).round(6).tolist() for name in SCORE_NAMES},
        }

    def __repr__(self) -> str:
        best = ", ".join(f"{name.split('_')[0]} L{layer}H{head} {value:.2f}"
                         for name in SCORE_NAMES for layer, head, value in self.top(name, 1))
        return (f"HeadScores: {self.n_layers} layers x {self.n_heads} heads "
                f"(seq_len {self.seq_len}, {self.n_repeats} repeats, batch {self.batch})\n"
                f"  scores: {', '.join(SCORE_NAMES)}: each [{self.n_layers}, {self.n_heads}]\n"
                f"  best: {best}")

    def _repr_html_(self) -> str:
        from .notebook import head_scores_html

        return head_scores_html(self)


def repeated_random_tokens(lm: LoadedModel, seq_len: int, n_repeats: int, batch: int,
                           seed: int) -> tuple[torch.Tensor, int]:
    """``[batch, offset + seq_len * n_repeats]`` ids and ``offset`` (1 with a BOS token, else 0)."""
    tok = lm.tokenizer
    vocab = int(getattr(lm.model.config, "vocab_size", None) or len(tok))
    special = set(getattr(tok, "all_special_ids", []) or [])
    allowed = torch.tensor([i for i in range(min(vocab, len(tok))) if i not in special])
    gen = torch.Generator().manual_seed(seed)
    rnd = allowed[torch.randint(len(allowed), (batch, seq_len), generator=gen)]
    ids = rnd.repeat(1, n_repeats)
    bos = getattr(tok, "bos_token_id", None)
    if bos is None:
        return ids, 0
    return torch.cat([torch.full((batch, 1), int(bos)), ids], dim=1), 1


def scores_from_patterns(patterns: list[torch.Tensor], seq_len: int, n_repeats: int,
                         offset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three score arrays ``[L, H]`` from per-layer patterns ``[b, h, q, k]``."""
    end = offset + seq_len * n_repeats
    q_prev = torch.arange(offset + 1, end)
    q_rep = torch.arange(offset + seq_len, end)
    prev, dup, ind = [], [], []
    for pattern in patterns:
        p = pattern.float()
        prev.append(p[:, :, q_prev, q_prev - 1].mean(dim=(0, 2)))
        dup.append(p[:, :, q_rep, q_rep - seq_len].mean(dim=(0, 2)))
        ind.append(p[:, :, q_rep, q_rep - seq_len + 1].mean(dim=(0, 2)))
    return tuple(torch.stack(x).numpy() for x in (prev, dup, ind))  # type: ignore[return-value]


def causal_model(model) -> LoadedModel:
    """The causal LM behind ``model``: a LoadedModel, an ``AttentionExtractor`` or its ``handle``.

    An encoder is refused (:class:`~openmav.analysis.stats.NotApplicableError`), as is anything else.
    """
    if isinstance(model, LoadedModel):
        return model
    handle = getattr(model, "handle", model)
    if getattr(handle, "is_encoder", False):
        name = getattr(handle, "name", "this model")
        raise NotApplicableError(f"head scores do not apply to {name}: it is a bidirectional encoder, and "
                                 "previous-token, duplicate-token and induction scores are defined for causal LMs")
    lm = getattr(handle, "lm", None)
    if isinstance(lm, LoadedModel):
        return lm
    if model is None:
        raise NotApplicableError("head scores need a causal LM (a LoadedModel or an AttentionExtractor), got None; "
                                 "an encoder's extractor has handle.lm None because head scores do not apply to it")
    from .models import is_encoder_model

    if hasattr(model, "config") and is_encoder_model(model):
        raise NotApplicableError(f"head scores do not apply to a {type(model).__name__}: it is a bidirectional "
                                 "encoder, and the scores are defined for causal LMs")
    raise NotApplicableError(f"head scores need a LoadedModel or an AttentionExtractor, got {type(model).__name__} "
                             "(wrap a transformers model with AttentionExtractor(model=..., tokenizer=...))")


def compute_head_scores(lm: LoadedModel, seq_len: int = 30, n_repeats: int = 2, batch: int = 4,
                        seed: int = 0) -> HeadScores:
    """Previous-token, duplicate-token and induction scores of every head (see the module doc).

    ``lm``: a causal LM's LoadedModel, or an ``AttentionExtractor`` (or its ``handle``) of one.
    """
    lm = causal_model(lm)
    with analysis_errors():  # the shared rules, before a token is drawn
        Number(int, 2, 1_000_000).check("seq_len", seq_len)
        Number(int, 2, 1_000_000).check("n_repeats", n_repeats)
        BATCH_SIZE.check("batch", batch)
        SEED.check("seed", seed)
    offset = 0 if getattr(lm.tokenizer, "bos_token_id", None) is None else 1
    length, ctx = offset + seq_len * n_repeats, lm.context_length
    if ctx and length > ctx:  # counted before the ids are made
        raise AnalysisValueError(f"seq_len * n_repeats (+1 for BOS) = {length} tokens exceeds the context of "
                                 f"{lm.name} ({ctx}); valid: seq_len * n_repeats <= {ctx - offset}")
    parts = lm.parts
    kept = parts.n_layers * batch * parts.n_heads * length * length * 4
    if kept > PATTERN_BYTES_MAX:
        raise AnalysisValueError(f"batch {batch} of {length} tokens keeps {kept / 2**30:.1f} GiB of attention "
                                 f"patterns (batch x layers x heads x tokens^2 floats), more than "
                                 f"{PATTERN_BYTES_MAX // 2**30} GiB: lower batch, seq_len or n_repeats")
    ids, offset = repeated_random_tokens(lm, seq_len, n_repeats, batch, seed)
    patterns = attention_patterns(lm, ids)
    prev, dup, ind = scores_from_patterns(patterns, seq_len, n_repeats, offset)
    return HeadScores(previous_token=prev, duplicate_token=dup, induction=ind,
                      seq_len=seq_len, n_repeats=n_repeats, batch=batch)
