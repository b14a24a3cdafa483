"""Standard head scores on repeated random token sequences.

A batch of ``batch`` sequences is built, each ``[bos?] r r ... r`` where ``r`` is
``seq_len`` random (non-special) tokens repeated ``n_repeats`` times.  With ``A``
the attention probabilities of head ``(l, h)`` and ``T = seq_len``, over query
positions ``i`` of the random part (means over batch and positions):

- previous-token score:  ``mean_i A[i, i-1]``                       (every ``i`` after the first random token)
- duplicate-token score: ``mean_i A[i, i-T]``                       (``i`` in copies 2..n: the same token one copy back)
- induction score:       ``mean_i A[i, i-T+1]``                     (``i`` in copies 2..n: the token after that earlier copy)

Each score lies in [0, 1]; 1 means the head puts all its weight there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..backends.loading import LoadedModel
from ..errors import InputError
from .patterns import attention_patterns

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
            raise InputError(f"unknown head score {name!r}; known: {', '.join(SCORE_NAMES)}")
        return getattr(self, name)

    def top(self, name: str, k: int = 5) -> list[tuple[int, int, float]]:
        """The ``k`` highest-scoring heads for ``name`` as ``(layer, head, score)``."""
        arr = self.get(name)
        order = np.argsort(arr, axis=None)[::-1][:k]
        return [(int(i // arr.shape[1]), int(i % arr.shape[1]), float(arr.flat[i])) for i in order]

    def to_dict(self) -> dict:
        """Plain JSON-ready data: nested lists ``[layer][head]`` per score plus the settings."""
        return {
            "n_layers": self.n_layers, "n_heads": self.n_heads,
            "seq_len": self.seq_len, "n_repeats": self.n_repeats, "batch": self.batch,
            **{name: getattr(self, name).round(6).tolist() for name in SCORE_NAMES},
        }

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


def compute_head_scores(lm: LoadedModel, seq_len: int = 30, n_repeats: int = 2, batch: int = 4,
                        seed: int = 0) -> HeadScores:
    """Previous-token, duplicate-token and induction scores of every head (see the module doc)."""
    if seq_len < 2 or n_repeats < 2 or batch < 1:
        raise InputError(f"head scores need seq_len >= 2, n_repeats >= 2, batch >= 1; got "
                         f"{seq_len}, {n_repeats}, {batch}")
    ids, offset = repeated_random_tokens(lm, seq_len, n_repeats, batch, seed)
    ctx = lm.context_length
    if ctx and ids.shape[1] > ctx:
        raise InputError(f"seq_len * n_repeats (+1 for BOS) = {ids.shape[1]} tokens exceeds the context of "
                         f"{lm.name} ({ctx}); valid: seq_len * n_repeats <= {ctx - offset}")
    patterns = attention_patterns(lm, ids)
    prev, dup, ind = scores_from_patterns(patterns, seq_len, n_repeats, offset)
    return HeadScores(previous_token=prev, duplicate_token=dup, induction=ind,
                      seq_len=seq_len, n_repeats=n_repeats, batch=batch)
