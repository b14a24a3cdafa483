"""Ablation studies: search for a small set of heads that matters.

The search, for both studies:

1. **Rank single heads.**  Every head is ablated alone (batched, see
   :func:`~openmav.interventions.evaluate.run_head_sets`) and scored.
2. **Keep the best** ``candidates`` heads by that score.
3. **Greedy forward selection.**  Starting from the empty set, each step ablates
   the current set plus one more candidate, for every remaining candidate (one
   batched run per step), and keeps the candidate with the best score; at most
   ``max_heads`` steps.  Step 1 is the ranking itself (the same single-head runs).

Scores:

- generic: ``KL(baseline || ablated)`` of the next-token distribution (nats); the
  search stops early when no candidate raises it.
- targeted: the target's logit margin, ``logit[target] - max_{v != target} logit[v]``
  (positive exactly when the target is the most likely token); single heads are
  ranked by how much they raise it.  The search stops as soon as the margin is
  positive (success), or after ``max_heads`` heads (failure).
- logit difference: ``logit[a] - logit[b]`` of two chosen tokens (e.g. the right and
  the wrong name of an IOI prompt); the search looks for the heads whose joint
  ablation lowers it most, and stops early when no candidate lowers it further.

Every result carries its score before any ablation and after the heads found
(``metric_name``, ``metric_before``, ``metric_after``).

``progress(event)`` receives dicts ``{"phase", "step", "total", "heads", "metric",
"metric_name"}`` (phases ``rank``, ``greedy``, ``done``).  ``cancel`` (a
``threading.Event``) is checked between forwards; a cancelled study returns what it
had found so far with ``cancelled=True``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import InputError
from ..metrics import kl_divergence
from ..rules import Callback, Number
from .ablation import ablated_logits, as_ids, check_ablation_fields, head_means
from .evaluate import AblationSpec, check_run, output_vocab, run_head_sets

Head = tuple[int, int]
Progress = Callable[[dict], None] | None

SEARCH = ("rank single heads by {score} (batched), keep the best {candidates}, then greedy forward selection "
          "adding the head that most improves the score, up to {max_heads} heads{stop}")


def top_k(logits: torch.Tensor, k: int = 10) -> dict:
    """The ``k`` most likely next tokens: ``{"ids": [...], "probs": [...]}``."""
    probs = torch.softmax(logits.double(), -1)
    values, ids = probs.topk(min(k, probs.numel()))
    return {"ids": ids.tolist(), "probs": values.tolist()}


@dataclass
class StudyResult:
    """What a study found: the heads, the distributions before and after, and its trace."""

    study: str  # "generic" or "targeted"
    heads: list[Head]
    before: dict  # top_k of the baseline
    after: dict  # top_k with ``heads`` ablated
    kl: float  # KL(baseline || ablated with heads), nats
    steps: list[dict] = field(default_factory=list)
    success: bool | None = None  # targeted: the target is the most likely token after ablation
    target_id: int | None = None
    kind: str = "zero"
    cancelled: bool = False
    search: str = ""
    forwards: int = 0  # batched forwards run (each of up to batch_size rows)
    metric_name: str = "kl"  # the score searched: kl, target_margin or logit_diff
    metric_before: float | None = None  # that score with nothing ablated (KL: 0)
    metric_after: float | None = None  # that score with ``heads`` ablated
    tokens: tuple[int, int] | None = None  # logit difference: (a, b)

    def to_dict(self) -> dict:
        return {
            "study": self.study, "heads": [list(h) for h in self.heads], "before": self.before,
            "after": self.after, "kl": self.kl, "steps": self.steps, "success": self.success,
            "target_id": self.target_id, "kind": self.kind, "cancelled": self.cancelled,
            "search": self.search, "forwards": self.forwards, "metric_name": self.metric_name,
            "metric_before": self.metric_before, "metric_after": self.metric_after,
            "tokens": None if self.tokens is None else list(self.tokens),
        }


def target_margin(logits: torch.Tensor, target: int) -> torch.Tensor:
    """``logit[target] - max_{v != target} logit[v]`` for each row of ``logits [..., V]``."""
    others = logits.clone()
    others[..., target] = float("-inf")
    return logits[..., target] - others.max(-1).values


class _Search:
    """Shared machinery of both studies: batched runs, counting, progress and cancellation."""

    def __init__(self, lm, input_ids, kind, batch_size, progress, cancel, metric_name, spec_kwargs):
        self.lm, self.ids = lm, as_ids(lm, input_ids)
        self.spec = AblationSpec(kind, **spec_kwargs)
        self.means = head_means(lm, self.ids) if kind == "mean" else None
        self.batch_size, self.progress, self.cancel = batch_size, progress, cancel
        self.metric_name = metric_name
        self.forwards = 0
        self.baseline = ablated_logits(lm, self.ids, [])
        self.steps: list[dict] = []

    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    def emit(self, phase: str, step: int, total: int, heads: list[Head], metric: float | None) -> None:
        event = {"phase": phase, "step": step, "total": total, "heads": [list(h) for h in heads],
                 "metric": metric, "metric_name": self.metric_name}
        if phase != "rank":
            self.steps.append(event)
        if self.progress is not None:
            self.progress(event)

    def run(self, head_sets: list[list[Head]], on_batch=None) -> torch.Tensor:
        def counted(done: int, total: int) -> None:
            self.forwards += 1
            if on_batch is not None:
                on_batch(done, total)

        return run_head_sets(self.lm, self.ids, head_sets, self.spec, self.batch_size, self.means,
                             cancel=self.cancel, on_batch=counted)

    def rank(self, score: Callable[[torch.Tensor], torch.Tensor]) -> tuple[list[Head], torch.Tensor, torch.Tensor]:
        parts = self.lm.parts
        heads = parts.heads()
        logits = self.run([[h] for h in heads],
                          on_batch=lambda done, total: self.emit("rank", done, total, [], None))
        return heads[:logits.shape[0]], logits, score(logits)

    def greedy(self, order: list[Head], single_logits: torch.Tensor, single_scores: torch.Tensor,
               score: Callable[[torch.Tensor], torch.Tensor], max_heads: int, must_improve: bool,
               done: Callable[[float], bool],
               shown: Callable[[float], float] = lambda v: v) -> tuple[list[Head], torch.Tensor | None]:
        """Greedy forward selection over ``order``, keeping the candidate of largest score.

        ``must_improve``: stop when no candidate beats the current score; ``done(score)``
        is checked after each step and stops the search when true.  Each step's event
        reports ``shown(score)``.
        """
        chosen: list[Head] = []
        best_logits, current = None, None
        for step in range(1, max_heads + 1):
            remaining = [h for h in order if h not in chosen]
            if not remaining or self.cancelled():
                break
            if step == 1:  # the single-head runs of the ranking are this step's runs
                logits, scores = single_logits, single_scores
            else:
                logits = self.run([chosen + [h] for h in remaining])
                if logits.shape[0] < len(remaining):
                    break  # cancelled mid-step
                scores = score(logits)
            i = int(scores.argmax())
            if must_improve and current is not None and not float(scores[i]) > current:
                break  # no candidate improves the score any more
            chosen.append(remaining[i])
            best_logits, current = logits[i], float(scores[i])
            self.emit("greedy", step, max_heads, chosen, shown(current))
            if done(current):
                break
        return chosen, best_logits


def _finish(s: _Search, study: str, heads: list[Head], after_logits, k: int, search: str,
            score: Callable[[torch.Tensor], torch.Tensor] | None = None, **extra) -> StudyResult:
    """The result; ``score(logits [rows, V]) -> [rows]`` gives metric_before/after (KL when None)."""
    after_logits = s.baseline if after_logits is None else after_logits
    kl = float(kl_divergence(s.baseline, after_logits))
    if score is None:
        before, after = 0.0, kl
    else:
        before, after = (float(score(x.unsqueeze(0))[0]) for x in (s.baseline, after_logits))
    result = StudyResult(study=study, heads=heads, before=top_k(s.baseline, k), after=top_k(after_logits, k),
                         kl=kl, steps=s.steps, kind=s.spec.kind, cancelled=s.cancelled(), search=search,
                         forwards=s.forwards, metric_name=s.metric_name, metric_before=before,
                         metric_after=after, **extra)
    s.emit("done", len(heads), len(heads), heads, after)  # the searched score with the heads found
    return result


def generic_study(lm, input_ids, max_heads: int = 5, candidates: int = 20, kind: str = "zero",
                  progress: Progress = None, cancel=None, batch_size: int = 32, k: int = 10,
                  **spec_kwargs) -> StudyResult:
    """Find up to ``max_heads`` heads whose joint ablation changes the next-token distribution most (KL).

    The search is the module's: rank single heads by KL, keep the best
    ``candidates``, greedy forward selection (stopping early when no candidate
    raises the KL).  ``spec_kwargs`` (factor, threshold, positions, seed) shape the ablation.
    """
    _check_study(lm, input_ids, max_heads, candidates, kind, progress, cancel, batch_size, k, spec_kwargs)
    s = _Search(lm, input_ids, kind, batch_size, progress, cancel, "kl", spec_kwargs)
    search = SEARCH.format(score="KL(baseline || ablated)", candidates=candidates, max_heads=max_heads,
                           stop="; stop early when no candidate raises the KL")

    def score(logits):
        return kl_divergence(s.baseline.unsqueeze(0), logits)

    heads, singles, scores = s.rank(score)
    if s.cancelled():
        return _finish(s, "generic", [], None, k, search)
    keep = scores.argsort(descending=True)[:candidates]
    order = [heads[i] for i in keep.tolist()]
    chosen, after = s.greedy(order, singles[keep], scores[keep], score, max_heads, True, lambda new: False)
    return _finish(s, "generic", chosen, after, k, search)


def targeted_study(lm, input_ids, target_id: int, max_heads: int = 8, candidates: int = 20, kind: str = "zero",
                   progress: Progress = None, cancel=None, batch_size: int = 32, k: int = 10,
                   **spec_kwargs) -> StudyResult:
    """Find a small set of heads whose ablation makes ``target_id`` the most likely next token.

    The search is the module's: rank single heads by the rise of the target's logit
    margin over its strongest rival, keep the best ``candidates``, greedy forward
    selection that stops as soon as the target is the most likely token.
    """
    _check_study(lm, input_ids, max_heads, candidates, kind, progress, cancel, batch_size, k, spec_kwargs)
    vocab = output_vocab(lm)
    if not isinstance(target_id, int) or isinstance(target_id, bool) or not 0 <= target_id < vocab:
        raise InputError(f"target_id {target_id!r} is out of range: valid ids are 0..{vocab - 1}")
    s = _Search(lm, input_ids, kind, batch_size, progress, cancel, "target_margin", spec_kwargs)
    search = SEARCH.format(score="the rise of the target's logit margin", candidates=candidates,
                           max_heads=max_heads, stop="; stop as soon as the target is the most likely token")

    def score(logits):
        return target_margin(logits, target_id)

    if float(target_margin(s.baseline, target_id)) > 0:
        return _finish(s, "targeted", [], None, k, search, score, success=True, target_id=target_id)
    heads, singles, scores = s.rank(score)
    if s.cancelled():
        return _finish(s, "targeted", [], None, k, search, score, success=False, target_id=target_id)
    keep = scores.argsort(descending=True)[:candidates]  # largest margin = largest rise over the baseline
    order = [heads[i] for i in keep.tolist()]
    chosen, after = s.greedy(order, singles[keep], scores[keep], score, max_heads, False, lambda new: new > 0)
    success = after is not None and float(target_margin(after, target_id)) > 0
    return _finish(s, "targeted", chosen, after, k, search, score, success=success, target_id=target_id)


def logit_diff_study(lm, input_ids, token_a: int, token_b: int, max_heads: int = 5, candidates: int = 20,
                     kind: str = "zero", progress: Progress = None, cancel=None, batch_size: int = 32, k: int = 10,
                     **spec_kwargs) -> StudyResult:
    """Find up to ``max_heads`` heads whose joint ablation lowers ``logit[token_a] - logit[token_b]`` most.

    The search is the module's: rank single heads by how much their ablation lowers
    the difference, keep the best ``candidates``, greedy forward selection (stopping
    early when no candidate lowers it further).  The progress events' ``metric`` is
    the logit difference itself; ``success`` stays None (there is no goal to reach).
    """
    _check_study(lm, input_ids, max_heads, candidates, kind, progress, cancel, batch_size, k, spec_kwargs)
    vocab = output_vocab(lm)
    for name, t in (("token_a", token_a), ("token_b", token_b)):
        if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab:
            raise InputError(f"{name} {t!r} is out of range: valid ids are 0..{vocab - 1}")
    if token_a == token_b:
        raise InputError("token_a and token_b are the same token: the logit difference needs two tokens")
    s = _Search(lm, input_ids, kind, batch_size, progress, cancel, "logit_diff", spec_kwargs)
    search = SEARCH.format(score="how much the ablation lowers logit[a] - logit[b]", candidates=candidates,
                           max_heads=max_heads, stop="; stop early when no candidate lowers it further")

    def score(logits):  # the logit difference itself: lower is better
        return (logits[..., token_a] - logits[..., token_b]).double()

    def lowered(logits):  # greedy keeps the largest: the negated difference
        return -score(logits)

    heads, singles, scores = s.rank(lowered)
    if s.cancelled():
        return _finish(s, "logit_diff", [], None, k, search, score, tokens=(token_a, token_b))
    keep = scores.argsort(descending=True)[:candidates]
    order = [heads[i] for i in keep.tolist()]
    chosen, after = s.greedy(order, singles[keep], scores[keep], lowered, max_heads, True, lambda new: False,
                             shown=lambda v: -v)  # the events report the difference itself
    return _finish(s, "logit_diff", chosen, after, k, search, score, tokens=(token_a, token_b))


SPEC_FIELDS = ("factor", "threshold", "positions", "seed")


def _check_study(lm, input_ids, max_heads, candidates, kind, progress, cancel, batch_size, k, spec_kwargs) -> int:
    """A study's arguments by the shared rules, before any forward; returns the prompt's length."""
    seq = int(as_ids(lm, input_ids).shape[1])
    HEADS.check("max_heads", max_heads)
    HEADS.check("candidates", candidates)
    unknown = [name for name in spec_kwargs if name not in SPEC_FIELDS]
    if unknown:
        raise InputError(f"unknown ablation setting {unknown[0]!r}: the settings are {', '.join(SPEC_FIELDS)}")
    spec = AblationSpec(kind, **spec_kwargs)
    check_ablation_fields(spec.kind, spec.factor, spec.threshold, spec.positions, spec.seed, seq)
    Callback().check("progress", progress)
    check_run(lm, batch_size, cancel, None)
    Number(int, 1, output_vocab(lm)).check("k", k)
    return seq


HEADS = Number(int, 1, 1_000_000)
