"""Interventions on a running model: head ablation, batched head evaluation, studies, circuits.

Every intervention is a context manager that attaches hooks and removes them in
``finally``; nothing is monkeypatched.
"""

from .ablation import KINDS, HeadAblation, ablate_heads, ablated_logits, head_means, validate_ablations

__all__ = ["KINDS", "HeadAblation", "ablate_heads", "ablated_logits", "head_means", "validate_ablations"]
