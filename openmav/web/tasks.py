"""Long jobs of the explorer: evaluating all heads, ablation studies and circuit discovery.

Input is checked when the job is submitted (so a bad request answers 422 at once);
the work itself runs later on the job queue's worker, holding the model gate, with
the job's ``progress`` callback and ``cancel`` event passed to the library
(:mod:`openmav.interventions.evaluate`, :mod:`openmav.interventions.studies`,
:mod:`openmav.interventions.circuit`).
"""

from __future__ import annotations

import importlib.util
import math

from ..errors import InputError
from . import schemas as S
from .jobs import Job, JobQueue
from .service import ExplorerService, _plain


def features() -> dict[str, bool]:
    """Which analyses this install has (the page hides what is missing)."""
    def has(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is not None
        except ImportError:
            return False

    return {"ablation": has("openmav.interventions.ablation"), "evaluate": has("openmav.interventions.evaluate"),
            "studies": has("openmav.interventions.studies"), "circuit": has("openmav.interventions.circuit"),
            "head_scores": has("openmav.analysis.head_scores"),
            "attribution": has("openmav.interventions.attribution")}


EVALUATE_BATCH = 32  # heads ablated per batched forward when evaluating all heads


def evaluate_job(service: ExplorerService, jobs: JobQueue, req: S.EvaluateRequest) -> Job:
    """Ablate every head alone (batched); one progress event per forward ("batch 3/9"), cancellable.

    The result is ``evaluate_all_heads(...).to_dict()`` (``kl``, ``delta_top_prob`` and
    ``delta_logit_diff`` as ``[layer][head]``) plus the labels of the baseline top token and
    of the logit difference's two tokens.  A prompt, kind and token pair evaluated before
    are answered from the service's cache, still as a job.
    """
    ids = service.encode(req.prompt)
    tokens = _token_pair(service, req.token_a, req.token_b)
    parts = service.parts
    n_heads = parts.n_layers * parts.n_heads
    n_batches = math.ceil(n_heads / EVALUATE_BATCH)

    def on_batch(done: int, total: int, job: Job) -> None:
        step = math.ceil(done / EVALUATE_BATCH)
        job.progress({"phase": "evaluate", "step": step, "total": n_batches, "heads_done": done,
                      "heads_total": total, "message": f"batch {step}/{n_batches} · {done}/{total} heads"})

    def run(job: Job) -> dict:
        if service.cached_evaluation(ids, req.kind, req.factor, req.threshold, tokens) is not None:
            job.progress({"phase": "evaluate", "step": n_batches, "total": n_batches, "heads_done": n_heads,
                          "heads_total": n_heads, "message": "already evaluated: the cached result"})
        else:
            job.progress({"phase": "evaluate", "step": 0, "total": n_batches, "heads_done": 0,
                          "heads_total": n_heads,
                          "message": f"{n_heads} heads in {n_batches} batches of up to {EVALUATE_BATCH}"})
        found = service.evaluate(ids, req.kind, batch_size=EVALUATE_BATCH, cancel=job.cancel,
                                 on_batch=lambda done, total: on_batch(done, total, job),
                                 factor=req.factor, threshold=req.threshold, tokens=tokens)
        out = _plain(found)
        out["top_label"] = service.label(out["top_id"])
        out["logit_diff_labels"] = [service.label(t) for t in out["logit_diff_tokens"]]
        return out

    return jobs.submit("evaluate", req.model_dump(), run)


def _token_pair(service: ExplorerService, token_a: int | None, token_b: int | None) -> tuple[int, int] | None:
    """Both tokens of a logit difference checked, or None when both are omitted; one alone is an error."""
    if token_a is None and token_b is None:
        return None
    if token_a is None or token_b is None:
        raise InputError("the logit difference needs both token_a and token_b (or neither: the baseline's "
                         "two most likely tokens)")
    service.check_token(token_a, "token_a")
    service.check_token(token_b, "token_b")
    if token_a == token_b:
        raise InputError("token_a and token_b are the same token: pick two different tokens")
    return token_a, token_b


def study_job(service: ExplorerService, jobs: JobQueue, req: S.StudyRequest) -> Job:
    """A generic, targeted or logit-difference study (:mod:`openmav.interventions.studies`), its events streamed.

    The result is ``StudyResult.to_dict()`` plus the distributions as labelled rows
    (``before_tokens``, ``after_tokens``), the target's or the two tokens' labels and the prompt's tokens.
    """
    from ..interventions import studies

    ids = service.encode(req.prompt)
    if req.mode == "targeted":
        if req.target_id is None:
            raise InputError("a targeted study needs target_id: a token from the baseline's top-k")
        service.check_token(req.target_id, "target_id")
    tokens = None
    if req.mode == "logit_diff":
        tokens = _token_pair(service, req.token_a, req.token_b)
        if tokens is None:
            raise InputError("a logit-difference study needs token_a and token_b")
    params = req.model_dump()

    def run(job: Job) -> dict:
        common = dict(max_heads=req.max_heads, candidates=req.candidates, kind=req.kind, factor=req.factor,
                      threshold=req.threshold, progress=job.progress, cancel=job.cancel)
        if req.mode == "targeted":
            result = studies.targeted_study(service.lm, ids, req.target_id, **common)
        elif req.mode == "logit_diff":
            result = studies.logit_diff_study(service.lm, ids, tokens[0], tokens[1], **common)
        else:
            result = studies.generic_study(service.lm, ids, **common)
        out = _plain(result.to_dict())
        for side in ("before", "after"):  # {"ids", "probs"} -> rows with labels, as the page shows them
            dist = out.get(side) or {"ids": [], "probs": []}
            out[f"{side}_tokens"] = [{"id": int(i), "label": service.label(int(i)),
                                      "prob": None if p is None else float(p)}  # None: was not finite
                                     for i, p in zip(dist["ids"], dist["probs"])]
        if out.get("target_id") is not None:
            out["target_label"] = service.label(out["target_id"])
        if out.get("tokens") is not None:
            out["token_labels"] = [service.label(t) for t in out["tokens"]]
        out["tokens"] = service.tokens(ids)
        return out

    return jobs.submit("study", params, run)


def circuit_job(service: ExplorerService, jobs: JobQueue, req: S.CircuitRequest) -> Job:
    """Circuit discovery on the prompt and its corrupted twin (names swapped when not given).

    Omitted metric tokens come from the prompt pair (:func:`~openmav.interventions.circuit.pair_tokens`):
    A is the prompt's token where the two prompts first differ, B the corrupted prompt's token there.
    """
    from ..interventions import circuit

    clean = service.encode(req.prompt)
    corrupt_text = req.corrupt_prompt or circuit.swap_names(req.prompt, service.lm.tokenizer)
    corrupt = service.encode(corrupt_text)
    if corrupt.shape[1] != clean.shape[1]:
        raise InputError(f"the corrupted prompt is {corrupt.shape[1]} tokens but the prompt is {clean.shape[1]}: "
                         "patching needs prompts of the same token length")
    if bool((corrupt == clean).all()):
        raise InputError("the corrupted prompt equals the prompt: change a name or give another corrupted prompt")
    pair_a, pair_b, where = circuit.pair_tokens(service.lm, clean, corrupt)
    token_a, token_b = req.token_a, req.token_b
    if req.metric == "logit_diff":
        if (token_a is None) != (token_b is None):
            raise InputError("the logit_diff metric needs both token_a and token_b, or neither (then they are "
                             "the tokens where the two prompts first differ)")
        if token_a is None:
            token_a, token_b = pair_a, pair_b
        service.check_token(token_a, "token_a")
        service.check_token(token_b, "token_b")
        if token_b == token_a:
            raise InputError("token_a and token_b are the same token: pick two different tokens")
    else:
        token_a = pair_a if token_a is None else token_a
        service.check_token(token_a, "token_a")
    from_pair = req.token_a is None
    if not service.parts.has_attention:
        raise InputError(f"{service.lm.name} has no attention layers, so it has no heads to put in a circuit")
    n_heads = len(service.parts.heads())
    if req.top_n > n_heads:
        raise InputError(f"top_n {req.top_n} is more than the model's {n_heads} heads")
    if req.verify_k is not None and not req.top_n <= req.verify_k <= n_heads:
        raise InputError(f"verify_k must be in {req.top_n}-{n_heads}: at least top_n ({req.top_n}), since the "
                         f"circuit is drawn from verified heads, and at most the model's {n_heads} heads")
    metric = (circuit.logit_diff(token_a, token_b) if req.metric == "logit_diff" else circuit.token_prob(token_a))
    params = dict(req.model_dump(), corrupt_prompt=corrupt_text, token_a=token_a, token_b=token_b)

    def run(job: Job) -> dict:
        found = circuit.discover_circuit(service.lm, clean, corrupt, metric, top_n=req.top_n, verify_k=req.verify_k,
                                         progress=job.progress, cancel=job.cancel)
        out = _plain(found.to_dict())
        out["corrupt_prompt"] = corrupt_text
        a = service.label(token_a)
        out["token_a"], out["token_b"] = token_a, token_b
        out["metric_label"] = (f"logit({a}) − logit({service.label(token_b)})" if req.metric == "logit_diff"
                               else f"p({a})")
        tokens = service.tokens(clean)
        out["tokens_from"] = (f"the prompt pair: position {where}, {tokens[where]['label']} in the prompt, "
                              f"{service.label(pair_b)} in the corrupted prompt" if from_pair else "chosen")
        out["tokens"] = tokens
        return out

    return jobs.submit("circuit", params, run)
