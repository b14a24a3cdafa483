"""Interventions on a running model: head ablation, batched head evaluation, studies, circuits.

Every intervention is a context manager that attaches hooks and removes them in
``finally``; nothing is monkeypatched.
"""

from .ablation import KINDS, HeadAblation, ablate_heads, ablated_logits, head_means, validate_ablations
from .circuit import (Circuit, attribution_patching, correlation, discover_circuit, logit_diff, single_token,
                      swap_names, token_prob, verify_by_ablation)
from .evaluate import Cancelled, HeadEffects, evaluate_all_heads
from .studies import StudyResult, generic_study, targeted_study

__all__ = [
    "KINDS", "HeadAblation", "ablate_heads", "ablated_logits", "head_means", "validate_ablations",
    "Circuit", "attribution_patching", "correlation", "discover_circuit", "logit_diff", "single_token",
    "swap_names", "token_prob", "verify_by_ablation", "Cancelled", "HeadEffects", "evaluate_all_heads",
    "StudyResult", "generic_study", "targeted_study",
]
