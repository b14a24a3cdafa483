"""The effect of ablating each head, many heads per forward.

:func:`run_head_sets` is the batched engine: the prompt is repeated along the batch
dimension and row ``r`` runs with its own set of heads ablated (pre-hooks on each
``o_proj`` edit a different head in each row).  Rows agree with the clean run up to
the first layer any of them ablates, so by default that prefix is computed once at
batch size 1 and the hidden state is expanded to the batch at that block
(``share_prefix``; the results are the same, checked in the tests).

:func:`evaluate_all_heads` ablates every single head this way and reports, per head,
``KL(baseline || ablated)`` of the next-token distribution (nats), the change of
the baseline top token's probability, and the change of the logit difference
``logit[a] - logit[b]`` of two tokens (by default the baseline's two most likely).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from ..capture.inputs import check_ids
from ..errors import InputError, OpenMavError
from ..metrics import kl_divergence
from ..rules import BATCH_SIZE, Callback, Cancel, Flag, shown
from .ablation import (HeadAblation, as_ids, check_ablation_fields, edit_heads, head_means, make_edit,
                       validate_ablations)

Head = tuple[int, int]


class Cancelled(OpenMavError):
    """A batched run was cancelled (its ``threading.Event`` was set) before it finished."""


@dataclass(frozen=True)
class AblationSpec:
    """How each head of a set is ablated (the fields of :class:`HeadAblation` except where)."""

    kind: str = "zero"
    factor: float = 0.0
    threshold: float = 0.0
    positions: tuple[int, ...] | None = None
    seed: int = 0

    def at(self, layer: int, head: int) -> HeadAblation:
        return HeadAblation(layer, head, self.kind, self.factor, self.threshold, self.positions, self.seed)


@contextmanager
def expand_batch_at(block: torch.nn.Module, batch: int):
    """Pre-hook on ``block`` that repeats its hidden-state input ``[1, P, d]`` to ``[batch, P, d]``."""

    def pre_hook(module, args, kwargs):
        if args:
            return (args[0].expand(batch, *args[0].shape[1:]).contiguous(),) + tuple(args[1:]), kwargs
        hs = kwargs["hidden_states"]
        return args, {**kwargs, "hidden_states": hs.expand(batch, *hs.shape[1:]).contiguous()}

    handle = block.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def batched_logits(lm, ids: torch.Tensor, batch: int, first: int, share_prefix: bool = True) -> torch.Tensor:
    """Logits ``[batch, 1, V]`` of ``batch`` copies of ``ids`` (one row per planned edit set).

    With ``share_prefix`` the blocks before ``first`` run once and the batch is expanded
    at block ``first``.  Some models cannot take a batch that grows mid-forward (ALiBi
    tensors or output shapes computed from the input, as in BLOOM and GPT-BigCode):
    for those the whole batch runs from the embeddings, remembered per model.
    """
    if share_prefix and lm.extra.get("share_prefix", True):
        try:
            with expand_batch_at(lm.parts.blocks[first], batch):
                logits = _logits(lm, ids)
            if logits.shape[0] == batch:
                return logits
        except (RuntimeError, ValueError, IndexError):  # shapes fixed before the expansion (ALiBi, masks, output
            # views, X-MOD's per-row language ids)
            pass
        lm.extra["share_prefix"] = False
    return _logits(lm, ids.expand(batch, -1))


def _logits(lm, ids: torch.Tensor) -> torch.Tensor:
    if lm.extra.get("logits_to_keep", True):
        try:
            return lm.model(input_ids=ids, use_cache=False, logits_to_keep=1).logits
        except TypeError:  # a model without logits_to_keep
            lm.extra["logits_to_keep"] = False
    return lm.model(input_ids=ids, use_cache=False).logits[:, -1:]


@torch.no_grad()
def run_head_sets(lm, input_ids, head_sets: Sequence[Sequence[Head]], spec: AblationSpec = AblationSpec(),
                  batch_size: int = 32, means: torch.Tensor | None = None, share_prefix: bool = True,
                  cancel=None, on_batch: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Last-position logits ``[len(head_sets), V]`` (float32, CPU), one row per set of heads ablated.

    ``means`` (``[L, H, head_dim]``) is the mean-ablation reference; by default the
    clean means over the prompt's own positions.  ``cancel`` (a ``threading.Event``)
    is checked between forwards: when set, only the rows done so far are returned.
    ``on_batch(done, total)`` is called after each forward.
    """
    ids = as_ids(lm, input_ids)
    check_run(lm, batch_size, cancel, on_batch, share_prefix=share_prefix)
    for heads in head_sets:
        validate_ablations(lm, [spec.at(layer, head) for layer, head in heads])
    if spec.kind == "mean" and means is None:
        means = head_means(lm, ids)
    blocks = lm.parts.blocks
    out = []
    for start in range(0, len(head_sets), batch_size):
        if cancel is not None and cancel.is_set():
            break
        chunk = [list(s) for s in head_sets[start:start + batch_size]]
        plan: dict[int, list] = {}
        for layer, head in sorted({h for s in chunk for h in s}):
            rows = torch.tensor([r for r, s in enumerate(chunk) if (layer, head) in s], device=ids.device)
            mean = means[layer, head] if (means is not None and spec.kind == "mean") else None
            plan.setdefault(layer, []).append((head, rows, make_edit(spec.at(layer, head), mean)))
        first = min(plan) if plan else len(blocks) - 1
        batch = len(chunk)
        with edit_heads(lm, plan):
            logits = batched_logits(lm, ids, batch, first, share_prefix)
        if logits.shape[0] != batch:
            raise RuntimeError(f"expected {batch} rows from the batched forward, got {logits.shape[0]}")
        out.append(logits[:, -1].float().cpu())
        if on_batch is not None:
            on_batch(start + batch, len(head_sets))
    if not out:
        return torch.empty(0, lm.model.get_output_embeddings().out_features)
    return torch.cat(out)


METRICS = ("kl", "delta_top_prob", "delta_logit_diff")


@dataclass
class HeadEffects:
    """Per-head effects of single-head ablations (``[L, H]`` arrays; NaN where a layer has no attention)."""

    kl: np.ndarray  # KL(baseline || ablated) in nats
    delta_top_prob: np.ndarray  # p_ablated(top) - p_baseline(top), top = the baseline's top token
    baseline_logits: torch.Tensor  # [V]
    kind: str = "zero"
    top_id: int = field(default=-1)
    ablated_top_ids: np.ndarray | None = None  # [L, H] the top token after each ablation
    delta_logit_diff: np.ndarray | None = None  # ld_ablated - ld_baseline, ld = logit[a] - logit[b]
    logit_diff_tokens: tuple[int, int] | None = None  # (a, b)

    @property
    def baseline_logit_diff(self) -> float | None:
        """``logit[a] - logit[b]`` of the clean run, for :attr:`logit_diff_tokens` ``(a, b)``."""
        if self.logit_diff_tokens is None:
            return None
        a, b = self.logit_diff_tokens
        return float(self.baseline_logits[a] - self.baseline_logits[b])

    def ranked(self, by: str = "kl") -> list[tuple[int, int, float]]:
        """``(layer, head, value)`` sorted by ``|by|`` (one of :data:`METRICS`), largest first;
        heads of layers without attention are left out."""
        if not isinstance(by, str) or by not in METRICS:
            raise InputError(f"unknown metric {shown(by)}: use one of {', '.join(METRICS)}")
        values = getattr(self, by)
        if values is None:
            raise InputError(f"this evaluation has no {by!r} values")
        order = np.argsort(-np.abs(np.nan_to_num(values, nan=-np.inf)), axis=None, kind="stable")
        n_heads = values.shape[1]
        return [(int(i // n_heads), int(i % n_heads), float(values.flat[i])) for i in order
                if np.isfinite(values.flat[i])]

    def to_dict(self) -> dict:
        probs = torch.softmax(self.baseline_logits.double(), -1)
        return {
            "kind": self.kind,
            "n_layers": int(self.kl.shape[0]),
            "n_heads": int(self.kl.shape[1]),
            "kl": _json_grid(self.kl),  # null where a layer has no attention
            "delta_top_prob": _json_grid(self.delta_top_prob),
            "top_id": self.top_id,
            "baseline_top_prob": float(probs[self.top_id]),
            "ablated_top_ids": None if self.ablated_top_ids is None else self.ablated_top_ids.tolist(),
            "delta_logit_diff": None if self.delta_logit_diff is None else _json_grid(self.delta_logit_diff),
            "logit_diff_tokens": None if self.logit_diff_tokens is None else list(self.logit_diff_tokens),
            "baseline_logit_diff": self.baseline_logit_diff,
        }


def _json_grid(values: np.ndarray) -> list:
    return [[None if not np.isfinite(v) else float(v) for v in row] for row in values]


def effects_from_logits(baseline: torch.Tensor, ablated: torch.Tensor) -> tuple[np.ndarray, np.ndarray, int]:
    """KL(baseline || each row) and the change of the baseline top token's probability, per row."""
    top = int(baseline.argmax())
    kl = kl_divergence(baseline.unsqueeze(0), ablated).numpy()
    p0 = torch.softmax(baseline.double(), -1)[top]
    p1 = torch.softmax(ablated.double(), -1)[:, top]
    return kl, (p1 - p0).numpy(), top


def logit_diff_tokens(baseline: torch.Tensor, tokens: tuple[int, int] | None) -> tuple[int, int]:
    """``tokens`` checked against the vocabulary, or the two most likely tokens of ``baseline`` when None."""
    if tokens is None:
        top2 = baseline.topk(2).indices.tolist()
        return int(top2[0]), int(top2[1])
    return check_token_pair(tokens, baseline.shape[-1])


def check_token_pair(tokens, vocab: int) -> tuple[int, int]:
    """``tokens`` ``(a, b)``: two different token ids in ``0..vocab-1``."""
    if not isinstance(tokens, (list, tuple)) or len(tokens) != 2:
        raise InputError(f"the logit difference needs two tokens (a, b), got {shown(tokens)}")
    for t in tokens:
        if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab:
            raise InputError(f"tokens: token id {shown(t)} is out of range: valid ids are 0..{vocab - 1}")
    if tokens[0] == tokens[1]:
        raise InputError(f"the logit difference needs two different tokens, got {shown(tokens)}")
    return int(tokens[0]), int(tokens[1])


def check_run(lm, batch_size, cancel, on_batch, reference_ids=None, share_prefix=True) -> None:
    """The arguments every batched run shares, by the shared rules (before any forward)."""
    BATCH_SIZE.check("batch_size", batch_size)
    Cancel().check("cancel", cancel)
    Callback().check("on_batch", on_batch)
    Flag().check("share_prefix", share_prefix)
    if reference_ids is not None:
        check_ids(lm, "reference_ids", reference_ids, lists=True, one_d=True)


def output_vocab(lm) -> int:
    """How many logits the model gives per position."""
    head = lm.model.get_output_embeddings()
    return int(getattr(head, "out_features", None) or head.weight.shape[0])


def evaluate_all_heads(lm, input_ids, kind: str = "zero", batch_size: int = 32, factor: float = 0.0,
                       threshold: float = 0.0, positions: tuple[int, ...] | None = None, seed: int = 0,
                       reference_ids=None, share_prefix: bool = True, cancel=None,
                       on_batch: Callable[[int, int], None] | None = None,
                       tokens: tuple[int, int] | None = None) -> HeadEffects:
    """Ablate every head alone (batched, ``batch_size`` heads per forward) and measure its effect.

    Row ``r`` of a forward ablates one ``(layer, head)``; the rows cover all
    ``L * H`` heads in ``ceil(L * H / batch_size)`` forwards plus one clean forward.
    ``tokens`` ``(a, b)`` name the logit difference ``logit[a] - logit[b]`` whose change
    is reported; by default the clean run's two most likely tokens.
    """
    from .ablation import ablated_logits

    ids = as_ids(lm, input_ids)
    parts = lm.parts
    check_ablation_fields(kind, factor, threshold, positions, seed, seq=ids.shape[1])
    check_run(lm, batch_size, cancel, on_batch, reference_ids, share_prefix)
    if tokens is not None:
        check_token_pair(tokens, output_vocab(lm))
    if not parts.has_attention:
        raise InputError("this model has no attention layers: there are no heads to evaluate")
    spec = AblationSpec(kind, factor, threshold, positions, seed)
    means = head_means(lm, reference_ids if reference_ids is not None else ids) if kind == "mean" else None
    baseline = ablated_logits(lm, ids, [])
    a, b = logit_diff_tokens(baseline, tokens)
    heads = parts.heads()
    logits = run_head_sets(lm, ids, [[h] for h in heads], spec, batch_size, means, share_prefix, cancel, on_batch)
    if logits.shape[0] < len(heads):
        raise Cancelled("the evaluation of all heads was cancelled")
    kl, dtop, top = effects_from_logits(baseline, logits)
    dld = ((logits[:, a] - logits[:, b]).double() - float(baseline[a] - baseline[b])).numpy()
    return HeadEffects(kl=_grid(parts, heads, kl), delta_top_prob=_grid(parts, heads, dtop),
                       baseline_logits=baseline, kind=kind, top_id=top,
                       ablated_top_ids=_grid(parts, heads, logits.argmax(-1).numpy(), fill=-1).astype(int),
                       delta_logit_diff=_grid(parts, heads, dld), logit_diff_tokens=(a, b))


def _grid(parts, heads, values, fill=float("nan")) -> np.ndarray:
    """``[n_layers, n_heads]`` from per-head values; layers without attention hold ``fill``."""
    out = np.full((parts.n_layers, parts.n_heads), fill, dtype=float)
    for (layer, head), v in zip(heads, values):
        out[layer, head] = v
    return out
