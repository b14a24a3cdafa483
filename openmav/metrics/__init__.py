"""Pure metric functions over tensors; each states its formula.

They work on torch tensors and never touch a model.
"""

from __future__ import annotations

import torch


def entropy(probs: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy in nats: ``H(p) = -sum_i p_i ln p_i`` (with ``0 ln 0 = 0``)."""
    return torch.special.entr(probs.clamp_min(0)).sum(dim)


def entropy_bits(probs: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy in bits: ``H(p) / ln 2``."""
    return entropy(probs, dim) / torch.log(torch.tensor(2.0, dtype=probs.dtype, device=probs.device))


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``KL(P || Q) = sum_i P_i (ln P_i - ln Q_i)`` in nats, from logits, with P = softmax(p_logits)."""
    logp = torch.log_softmax(p_logits.double(), dim)
    logq = torch.log_softmax(q_logits.double(), dim)
    return (logp.exp() * (logp - logq)).sum(dim)


def l2_norm(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Euclidean norm ``sqrt(sum_i x_i^2)`` along ``dim``."""
    return torch.linalg.vector_norm(x.float(), dim=dim)


def max_abs(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``max_i |x_i|`` along ``dim`` (MAV's ``--aggregation max_abs``)."""
    return x.float().abs().amax(dim)


def normalize_minmax(x: torch.Tensor) -> torch.Tensor:
    """Scale to [0, 1]: ``(x - min) / (max - min)``; all zeros when constant."""
    lo, hi = x.min(), x.max()
    return torch.zeros_like(x) if hi == lo else (x - lo) / (hi - lo)
