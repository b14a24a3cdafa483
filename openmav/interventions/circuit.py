"""Circuit discovery: attribution patching for every head, verified by real patching, with path effects.

For a metric ``m(logits)`` (e.g. the logit difference between two names) and a
clean / corrupted prompt pair of equal length:

- :func:`attribution_patching` estimates, for every head, the effect of patching
  its output ``z`` from the corrupted run into the clean run, to first order:
  ``(z_corrupt - z_clean) . d m / d z`` (at the clean run), summed over positions and
  head dimensions.  Cost: one clean forward and backward plus one corrupted forward.
- :func:`verify_by_ablation` measures that effect for real: the clean run with the
  head's ``z`` replaced by its corrupted value, ``m(patched) - m(clean)``.
- :func:`discover_circuit` estimates every head, verifies the ``verify_k`` heads of
  largest ``|estimate|`` (all heads by default), then keeps the ``top_n`` heads of
  largest ``|verified effect|``: a head the first-order estimate misses (an effect far
  from linear) is still drawn once it is verified.  An edge sender -> receiver (sender
  in an earlier layer) is weighted by the measured *path* effect: patch the sender,
  record the receiver's resulting ``z``, then run clean with only the receiver's ``z``
  replaced by that value; the metric change is the sender's effect through that
  receiver alone.

The sign (:data:`SIGN`): an effect is ``m(patched) - m(clean)``, so a negative effect
means the head's clean output raises the metric (taking it from the corrupted prompt
lowers it), and a positive effect means the head's clean output works against it.
:func:`pair_tokens` picks the metric's two tokens from the prompt pair itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch

from ..capture.inputs import check_lm
from ..errors import InputError
from ..rules import INT_MAX, Callback, Index, Number, check_text, shown
from .ablation import as_ids, head_outputs
from .evaluate import Cancelled, _grid, _json_grid, check_run, output_vocab
from .patching import Metric, head_outputs_with_grad, metric_rows, patched_forward

Head = tuple[int, int]


@dataclass(frozen=True)
class LogitDiff:
    """``logits[token_a] - logits[token_b]``."""

    token_a: int
    token_b: int

    @property
    def name(self) -> str:
        return f"logit[{self.token_a}] - logit[{self.token_b}]"

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[self.token_a] - logits[self.token_b]


@dataclass(frozen=True)
class TokenProb:
    """``softmax(logits)[token]``."""

    token: int

    @property
    def name(self) -> str:
        return f"p[{self.token}]"

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits.double(), -1)[self.token]


TOKEN_ID = Number(int, 0, INT_MAX)  # the model's vocabulary bounds it where the metric meets the model


def logit_diff(token_a: int, token_b: int) -> LogitDiff:
    """The metric ``logits[token_a] - logits[token_b]``; ids are whole numbers >= 0 (never counted from the
    end), checked against the model's vocabulary when the metric is used (:func:`check_metric`)."""
    return LogitDiff(int(TOKEN_ID.check("token_a", token_a)), int(TOKEN_ID.check("token_b", token_b)))


def token_prob(token: int) -> TokenProb:
    """The metric ``softmax(logits)[token]`` (see :func:`logit_diff` for the id)."""
    return TokenProb(int(TOKEN_ID.check("token", token)))


def check_metric(lm, metric) -> None:
    """``metric`` must be callable on logits; the token ids of a :class:`LogitDiff` or :class:`TokenProb` must
    lie in the model's vocabulary (a larger one would index past the logits, a negative one wrap)."""
    Callback(optional=False).check("metric", metric)
    vocab = output_vocab(lm)
    for name in ("token_a", "token_b", "token"):
        if isinstance(metric, (LogitDiff, TokenProb)) and hasattr(metric, name):
            Number(int, 0, vocab - 1).check(f"the metric's {name}", getattr(metric, name))


def check_heads(lm, heads) -> list[Head]:
    """``heads``: a list of ``(layer, head)`` pairs of attention heads of this model."""
    if isinstance(heads, (str, bytes)) or not isinstance(heads, (list, tuple)):
        raise InputError(f"heads must be a list of (layer, head) pairs, got {shown(heads)}")
    parts = lm.parts
    for i, pair in enumerate(heads):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise InputError(f"heads must be a list of (layer, head) pairs, got the item {shown(pair)}")
        Index(parts.n_layers, "layer").check(f"heads[{i}]: the layer", pair[0])
        Index(parts.n_heads, "head").check(f"heads[{i}]: the head", pair[1])
        if pair[0] not in parts.attention_layers:
            raise InputError(f"heads[{i}]: layer {pair[0]} has no attention heads; attention layers: "
                             f"{', '.join(map(str, parts.attention_layers)) or 'none'}")
    return [(int(layer), int(head)) for layer, head in heads]


def single_token(lm, text: str) -> int:
    """The id of ``text`` when it is exactly one token (e.g. ``" Mary"``); an :class:`InputError` otherwise."""
    check_lm(lm)
    check_text("text", text, allow_empty=False)
    ids = lm.tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise InputError(f"{text!r} is {len(ids)} tokens for {getattr(lm, 'name', 'this model')}; a metric token "
                         "must be exactly one token (try it with a leading space)")
    return int(ids[0])


NAME_PAIR = re.compile(r"\b([A-Z][a-z]+) and ([A-Z][a-z]+)\b")


def swap_names(prompt: str, tokenizer=None) -> str:
    """Swap the two names of an IOI prompt (found as ``"A and B"``) everywhere they occur.

    With a ``tokenizer``, the corrupted prompt must have as many tokens as the clean
    one (patching pairs positions); an :class:`InputError` says when it has not.
    """
    check_text("prompt", prompt)
    Callback().check("tokenizer", tokenizer)
    match = NAME_PAIR.search(prompt)
    if not match or match.group(1) == match.group(2):
        raise InputError("no two names found to swap: the prompt needs the form '... A and B ...' "
                         "(e.g. 'When Mary and John went to the store, John gave a drink to')")
    a, b = match.group(1), match.group(2)
    corrupt = re.sub(rf"\b({re.escape(a)}|{re.escape(b)})\b", lambda m: b if m.group(1) == a else a, prompt)
    if tokenizer is not None:
        n_clean, n_corrupt = (len(tokenizer(p, add_special_tokens=False).input_ids) for p in (prompt, corrupt))
        if n_clean != n_corrupt:
            raise InputError(f"swapping {a!r} and {b!r} changes the length ({n_clean} -> {n_corrupt} tokens); "
                             "choose names of equal token length or give a corrupted prompt")
    return corrupt


def _pair(lm, clean_ids, corrupt_ids) -> tuple[torch.Tensor, torch.Tensor]:
    clean, corrupt = as_ids(lm, clean_ids, "clean_ids"), as_ids(lm, corrupt_ids, "corrupt_ids")
    if clean.shape != corrupt.shape:
        raise InputError(f"the clean and corrupted prompts must have the same number of tokens "
                         f"({clean.shape[1]} vs {corrupt.shape[1]})")
    return clean, corrupt


def pair_tokens(lm, clean_ids, corrupt_ids) -> tuple[int, int, int]:
    """The metric's tokens chosen from the prompt pair: ``(token_a, token_b, position)``.

    At the first position where the two prompts differ, ``token_a`` is the clean
    prompt's token and ``token_b`` the corrupted prompt's (for the IOI prompt with its
    names swapped: the indirect object `` Mary`` and the subject `` John``).  An
    :class:`InputError` when the prompts are equal or differ in length.
    """
    clean, corrupt = _pair(lm, clean_ids, corrupt_ids)
    differ = (clean[0] != corrupt[0]).nonzero().flatten().tolist()
    if not differ:
        raise InputError("the corrupted prompt equals the prompt: there is no token that differs to compare")
    at = differ[0]
    return int(clean[0, at]), int(corrupt[0, at]), at


def attribution_patching(lm, clean_ids, corrupt_ids, metric: Metric) -> np.ndarray:
    """First-order estimate ``[L, H]`` of each head's patching effect on ``metric`` (see module doc)."""
    clean, corrupt = _pair(lm, clean_ids, corrupt_ids)
    check_metric(lm, metric)
    _, z_clean, grads = head_outputs_with_grad(lm, clean, metric)
    z_corrupt = head_outputs(lm, corrupt)
    est = [((zc - zk) * g).double().sum(dim=(0, 2)) for zc, zk, g in zip(z_corrupt, z_clean, grads)]
    return torch.stack(est).cpu().numpy()  # results leave the device once


def verify_by_ablation(lm, clean_ids, corrupt_ids, metric: Metric, heads: list[Head], batch_size: int = 32,
                       cancel=None, on_batch=None) -> np.ndarray:
    """The real effect of patching each head's ``z`` from the corrupted run into the clean run.

    Returns ``m(clean with z_head := z_corrupt) - m(clean)`` per head (batched,
    ``batch_size`` heads per forward).
    """
    clean, corrupt = _pair(lm, clean_ids, corrupt_ids)
    check_metric(lm, metric)
    heads = check_heads(lm, heads)
    check_run(lm, batch_size, cancel, on_batch)
    z_corrupt = head_outputs(lm, corrupt)
    base = float(metric_rows(metric, patched_forward(lm, clean, [[]])[0])[0])
    out = []
    for start in range(0, len(heads), batch_size):
        if cancel is not None and cancel.is_set():
            raise Cancelled("the verification was cancelled")
        rows = [[(layer, head, z_corrupt[layer][:, head])] for layer, head in heads[start:start + batch_size]]
        out.append(metric_rows(metric, patched_forward(lm, clean, rows)[0]) - base)
        if on_batch is not None:
            on_batch(start + len(rows), len(heads))
    return torch.cat(out).cpu().numpy() if out else np.zeros(0)  # results leave the device once


def path_effects(lm, clean_ids, corrupt_ids, metric: Metric, heads: list[Head]) -> list[tuple[Head, Head, float]]:
    """Measured effect of each sender through each later-layer receiver (see module doc): two batched forwards."""
    clean, corrupt = _pair(lm, clean_ids, corrupt_ids)
    check_metric(lm, metric)
    heads = check_heads(lm, heads)
    pairs = [(s, r) for s in heads for r in heads if s[0] < r[0]]
    if not pairs:
        return []
    z_corrupt = head_outputs(lm, corrupt)
    senders = sorted({s for s, _ in pairs})
    receivers_layers = sorted({r[0] for _, r in pairs})
    _, seen = patched_forward(lm, clean, [[(s[0], s[1], z_corrupt[s[0]][:, s[1]])] for s in senders],
                              record_layers=receivers_layers)
    row_of = {s: i for i, s in enumerate(senders)}
    rows = [[(r[0], r[1], seen[r[0]][row_of[s], :, r[1]])] for s, r in pairs]
    logits, _ = patched_forward(lm, clean, [[]] + rows)
    values = metric_rows(metric, logits)
    return [(s, r, float(v - values[0])) for (s, r), v in zip(pairs, values[1:])]


def _real_numbers(name: str, values) -> np.ndarray:
    """``values`` as a float array, refused in one line unless it holds real, finite numbers (not text, not
    truth values: ``'1'`` and ``True`` are not measurements)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy() if values.device.type != "meta" else None
    if isinstance(values, np.ndarray):
        ok = values.dtype.kind in "iuf"
    elif isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or values is None:
        ok = False
    else:
        ok = all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
                 for v in values)
    array = np.asarray(values, dtype=float) if ok else None
    if array is None or not np.isfinite(array).all():
        raise InputError(f"{name} must be a sequence of finite numbers, got {shown(values)}")
    return array


def correlation(x, y) -> float | None:
    """Pearson correlation of two sequences of finite numbers; ``None`` when either is constant or shorter
    than 2."""
    x, y = _real_numbers("x", x), _real_numbers("y", y)
    if x.ndim != 1 or y.ndim != 1 or x.shape != y.shape:
        raise InputError(f"x and y must be two sequences of the same length, got shapes {list(x.shape)} and "
                         f"{list(y.shape)}")
    return _pearson(x, y)


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation; ``None`` when either is constant, shorter than 2 or not finite."""
    if x.size < 2 or not (np.isfinite(x).all() and np.isfinite(y).all()) or x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


SIGN = ("effect = metric with the head's output taken from the corrupted run minus the clean metric: "
        "negative means the head's clean output raises the metric, positive means it works against it")


@dataclass
class Circuit:
    """Heads ranked by verified effect (with their estimates), and edges weighted by measured path effects."""

    nodes: list[dict]  # {"layer", "head", "attribution", "effect", "attribution_rank"}, largest |effect| first
    edges: list[dict]  # {"source": [l, h], "target": [l, h], "effect"}
    metric: str
    clean_metric: float
    corrupt_metric: float
    correlation: float | None  # Pearson(attribution, verified effect) over the verified heads
    n_verified: int
    attribution: np.ndarray = field(repr=False)  # [L, H] estimates for all heads
    verified: np.ndarray | None = field(default=None, repr=False)  # [L, H] real effects; NaN where not verified
    cancelled: bool = False
    verify_k: int = 0  # heads verified: the verify_k largest |estimates|
    sign: str = SIGN

    def to_dict(self) -> dict:
        return {
            "nodes": self.nodes, "edges": self.edges, "metric": self.metric, "clean_metric": self.clean_metric,
            "corrupt_metric": self.corrupt_metric, "correlation": self.correlation, "n_verified": self.n_verified,
            "attribution": _json_grid(self.attribution),  # null where a layer has no attention
            "verified": None if self.verified is None else _json_grid(self.verified), "cancelled": self.cancelled,
            "verify_k": self.verify_k, "sign": self.sign,
        }


def discover_circuit(lm, clean_ids, corrupt_ids, metric: Metric, top_n: int = 8, progress=None, cancel=None,
                     verify_k: int | None = None, batch_size: int = 32) -> Circuit:
    """Estimate every head, verify the ``verify_k`` largest estimates, draw the ``top_n`` largest verified effects.

    ``verify_k`` (default: every head, batched) heads are verified by real patching,
    chosen by ``|attribution|``; the correlation is over them.  The nodes are the
    ``top_n`` verified heads of largest ``|effect|``, in that order, each with its
    estimate and the rank of its ``|estimate|`` among all heads (1 = largest), and
    the edges are path effects between them.  ``progress(event)`` gets ``{"phase":
    "attribution" | "verify" | "paths" | "done", "step", "total"}``; ``cancel`` (a
    ``threading.Event``) is checked between forwards.
    """
    clean, corrupt = _pair(lm, clean_ids, corrupt_ids)
    check_metric(lm, metric)
    Callback().check("progress", progress)
    check_run(lm, batch_size, cancel, None)
    parts = lm.parts
    if not parts.has_attention:
        raise InputError("this model has no attention layers, so it has no heads to put in a circuit")
    every = parts.heads()
    if not isinstance(top_n, int) or isinstance(top_n, bool) or not 1 <= top_n <= len(every):
        raise InputError(f"top_n must be an integer in 1..{len(every)}, got {top_n!r}")
    verify_k = len(every) if verify_k is None else verify_k
    if not isinstance(verify_k, int) or isinstance(verify_k, bool) or not top_n <= verify_k <= len(every):
        raise InputError(f"verify_k must be an integer in {top_n}..{len(every)} (at least top_n: the circuit is "
                         f"drawn from verified heads), got {verify_k!r}")

    def emit(phase, step=0, total=0):
        if progress is not None:
            progress({"phase": phase, "step": step, "total": total})

    def stopped() -> bool:
        return cancel is not None and cancel.is_set()

    emit("attribution", 0, 1)
    attribution = attribution_patching(lm, clean, corrupt, metric)
    attribution[[i for i in range(parts.n_layers) if i not in parts.attention_layers]] = np.nan
    clean_m = float(metric_rows(metric, patched_forward(lm, clean, [[]])[0])[0])
    corrupt_m = float(metric_rows(metric, patched_forward(lm, corrupt, [[]])[0])[0])
    emit("attribution", 1, 1)
    by_estimate = sorted(every, key=lambda h: -abs(float(attribution[h])))  # stable: ties keep layer order
    estimate_rank = {h: i + 1 for i, h in enumerate(by_estimate)}
    to_verify = by_estimate[:verify_k]
    circuit = Circuit(nodes=[], edges=[], metric=getattr(metric, "name", "metric"), clean_metric=clean_m,
                      corrupt_metric=corrupt_m, correlation=None, n_verified=0, attribution=attribution,
                      verify_k=verify_k)
    try:
        if stopped():
            raise Cancelled("cancelled")
        effects = verify_by_ablation(lm, clean, corrupt, metric, to_verify, batch_size, cancel,
                                     on_batch=lambda done, total: emit("verify", done, total))
    except Cancelled:
        circuit.cancelled = True
        return circuit
    effect_of = dict(zip(to_verify, effects.tolist()))
    circuit.n_verified = len(to_verify)
    circuit.correlation = _pearson(np.array([attribution[h] for h in to_verify], dtype=float),
                                   np.asarray(effects.tolist(), dtype=float).reshape(-1))
    circuit.verified = _grid(parts, to_verify, effects)  # NaN where not verified or a layer has no attention
    top = sorted(to_verify, key=lambda h: -abs(effect_of[h]))[:top_n]
    circuit.nodes = [{"layer": l, "head": h, "attribution": float(attribution[l, h]), "effect": effect_of[(l, h)],
                      "attribution_rank": estimate_rank[(l, h)]} for l, h in top]
    if stopped():
        circuit.cancelled = True
        return circuit
    emit("paths", 0, 1)
    circuit.edges = [{"source": list(s), "target": list(r), "effect": v}
                     for s, r, v in path_effects(lm, clean, corrupt, metric, sorted(top))]
    emit("paths", 1, 1)
    emit("done", 1, 1)
    return circuit
