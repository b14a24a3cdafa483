"""The step loop: one prefill forward, then exactly one forward per new token.

The KV cache carries the past, so each token costs one forward over one position.
Captures are read by hooks (:mod:`openmav.capture.hooks`); attention probabilities
need eager attention, which is switched on only when attention is captured.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from ..errors import InputError, NonFiniteLogitsError
from ..metrics import entropy, max_abs
from ..rules import MAX_NEW_TOKENS, Flag, Number, check_text, shown
from . import fast_attention
from .cached_forward import CachedForward
from .hooks import CaptureHooks, attention_implementation
from .inputs import check_ids, check_lm, vocab_size
from .lens import LensQueue, lens_placement, remembered_placement, torch_threads
from .records import StepRecord
from .sampling import Sampler, SamplingConfig
from .tokens import IncrementalDecoder, TokenTexts

# `LoadedModel` in annotations names openmav.backends' class without importing it: the engine sits below
# model loading and never imports it, not even for type checking (the layers contract counts those too).


@dataclass(frozen=True)
class CaptureConfig:
    """What each step records.  The logit lens costs one unembedding per layer.

    Where the lens runs (:mod:`openmav.capture.lens`): ``lens_in_background=None`` decides from
    the machine (:func:`~openmav.capture.lens.lens_placement`: a worker thread when cores are
    spare beyond torch's threads, the step loop on one core or an accelerator, else measured in
    the first steps); ``True`` forces the worker thread (the lens of token ``t`` overlaps the
    forward of token ``t + 1``, each on its own cores: :func:`~openmav.capture.lens.split_threads`),
    ``False`` the step loop.
    ``lens_batch = n`` computes the lens of ``n`` steps in one product: records then arrive
    ``n`` at a time, in order, each with its lens; for consumers that do not show each token as it
    comes (JSON lines, recordings, maps, the API's records).  ``1`` (the live view) gives every
    record with its own lens at once.
    """

    attention: bool = True
    prompt_attention: bool = True
    logit_lens: bool = True
    lens_top_k: int = 5
    top_k: int = 20
    lens_in_background: bool | None = None
    lens_batch: int = 1

    def __post_init__(self):
        for name in ("attention", "prompt_attention", "logit_lens"):
            Flag().check(name, getattr(self, name))
        if self.lens_in_background is not None:
            Flag().check("lens_in_background", self.lens_in_background)
        Number(int, 1, TOP_K_MAX).check("lens_top_k", self.lens_top_k)
        Number(int, 0, TOP_K_MAX).check("top_k", self.top_k)
        Number(int, 1, LENS_BATCH_MAX).check("lens_batch", self.lens_batch)


TOP_K_MAX = 1_000_000  # a vocabulary is smaller; the step loop takes min(k, vocabulary)
LENS_BATCH_MAX = 4096  # steps per lens product: [batch * layers, d] rows held until the product runs
LENS_BYTES_MAX = 2**31  # logit_lens refuses an output [rows, vocab] larger than this: pass fewer rows at a time


def attention_rows_implementation(lm: "LoadedModel") -> str:
    """``"openmav_rows"`` (fast kernel for the output, probability rows beside it) where it was checked
    equal to eager attention on this model at load, else ``"eager"``."""
    ok = lm.extra.get("fast_attention_rows", lm.parts.rows_function)  # checked at load (find_parts)
    return fast_attention.register() if ok else "eager"


def token_texts(lm: "LoadedModel") -> TokenTexts:
    """The (cached) :class:`TokenTexts` of a loaded model's tokenizer."""
    cached = lm.extra.get("token_texts")
    if cached is None:
        cached = lm.extra["token_texts"] = TokenTexts(lm.tokenizer)
    return cached


def encode_prompt(lm: "LoadedModel", prompt: str, max_new_tokens: int = 0) -> torch.Tensor:
    """Token ids ``[1, P]`` for ``prompt``; errors for a prompt that is not text, is empty, is not valid
    UTF-8 or is past the context (counted before a tensor is made)."""
    if prompt is not None:
        check_text("prompt", prompt)
    if prompt is None or not prompt.strip():
        raise InputError("the prompt is empty: give some text to continue")
    ids = lm.tokenizer(prompt).input_ids
    if len(ids) == 0:
        raise InputError("the prompt encodes to no tokens")
    ctx = lm.context_length
    if ctx and len(ids) + max_new_tokens > ctx:
        raise InputError(
            f"the prompt is {len(ids)} tokens and {max_new_tokens} new tokens were asked for, "
            f"but {lm.name} has a context of {ctx} tokens: shorten the prompt or lower --max-new-tokens"
        )
    return torch.tensor([ids], dtype=torch.long, device=lm.device)


def logit_lens(lm: "LoadedModel", resid: torch.Tensor) -> torch.Tensor:
    """Logits of the logit lens, ``unembed(final_norm(resid))`` for each row of ``resid [n, d]``.

    The final norm is applied to each row with that row's own statistics; Gemma's
    final logit soft-capping is applied when the model has it, so the last layer's
    lens equals the model's own logits.  ``resid`` must be a float tensor whose last
    dimension is the model's width, and the logits of its rows must fit in
    :data:`LENS_BYTES_MAX` (pass fewer rows at a time otherwise).
    """
    check_lm(lm)
    if not isinstance(resid, torch.Tensor) or not resid.is_floating_point() or resid.dim() < 1:
        raise InputError(f"resid must be a float tensor [rows, d], got {shown(resid)}")
    weight = getattr(lm.parts.unembed, "weight", None)
    if weight is not None and resid.shape[-1] != weight.shape[-1]:
        raise InputError(f"resid must end in the model's width {weight.shape[-1]}, got shape {list(resid.shape)}")
    rows, vocab = resid.numel() // max(1, resid.shape[-1]), vocab_size(lm) or 0
    if rows * vocab * 4 > LENS_BYTES_MAX:
        raise InputError(f"resid has {rows} rows: their lens is {rows} x {vocab} logits, more than "
                         f"{LENS_BYTES_MAX // 2**20} MiB; pass at most {LENS_BYTES_MAX // (4 * vocab)} rows at a time")
    return lm.parts.lens(resid)


def align_rows(rows: list[torch.Tensor], seq: int) -> torch.Tensor:
    """Stack per-layer attention rows ``[H, k_l]`` into ``[L, H, seq]``.

    Sliding-window layers may see fewer keys than ``seq``; their rows cover the
    most recent keys, so they are placed at the right end and the rest is zero.
    """
    if all(r.shape[-1] == seq for r in rows):
        return torch.stack(rows)
    out = rows[0].new_zeros((len(rows), rows[0].shape[0], seq))
    for i, r in enumerate(rows):
        out[i, :, seq - r.shape[-1]:] = r
    return out


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def _check_finite(logits: torch.Tensor, step: int, lm=None) -> None:
    # the sum is finite only if every entry is (an infinity or a NaN anywhere makes it infinite or NaN):
    # one reduction, and the entry-wise test only to confirm (a finite sum that overflows)
    if not math.isfinite(float(logits.sum())) and not torch.isfinite(logits).all():
        from .nonfinite import nonfinite_message

        raise NonFiniteLogitsError(nonfinite_message(lm, step))


def generate_steps(lm: "LoadedModel", prompt: str | None = None, max_new_tokens: int = 50,
                   sampling: SamplingConfig | None = None, capture: CaptureConfig | None = None,
                   stop_at_eos: bool = True, input_ids: torch.Tensor | None = None) -> Iterator[StepRecord]:
    """Generate up to ``max_new_tokens`` tokens, yielding one :class:`StepRecord` per token.

    Pass ``prompt`` (text) or ``input_ids`` (``[1, P]``).  Hooks are attached only for
    the duration of the generator and removed on exit, error or abandonment.

    With the logit lens on in the background, the lens of token ``t`` is computed on a
    worker thread while the forward of token ``t + 1`` runs, so record ``t`` is yielded
    once that forward is done; with ``capture.lens_batch = n``, records are yielded ``n``
    at a time.  The numbers are the same wherever and however the lens is computed.
    Where the worker takes a core from torch's threads (:func:`~openmav.capture.lens.split_threads`),
    the generator's own work runs with one thread fewer; the caller's setting is back in place
    whenever a record is handed over.

    Every argument is checked when this is called, before any forward (:func:`check_generation`):
    a bad one is an :class:`~openmav.errors.InputError` naming it, its valid range and the value given.
    """
    input_ids = check_generation(lm, prompt, max_new_tokens, sampling, capture, stop_at_eos, input_ids)
    return _steps_on_threads(lm, max_new_tokens, sampling, capture, stop_at_eos, input_ids)


def check_generation(lm, prompt, max_new_tokens, sampling, capture, stop_at_eos, input_ids) -> torch.Tensor:
    """:func:`generate_steps`'s arguments checked by the shared rules (:mod:`openmav.rules`); returns the
    prompt's token ids ``[1, P]`` (``input_ids`` itself when given).  The ids' length is checked against
    the context, with the new tokens, before anything is encoded into a tensor or run."""
    check_lm(lm)
    MAX_NEW_TOKENS.check("max_new_tokens", max_new_tokens)
    if sampling is not None and not isinstance(sampling, SamplingConfig):
        raise InputError(f"sampling must be a SamplingConfig (or None for greedy), got {shown(sampling)}")
    if capture is not None and not isinstance(capture, CaptureConfig):
        raise InputError(f"capture must be a CaptureConfig (or None for every capture), got {shown(capture)}")
    Flag().check("stop_at_eos", stop_at_eos)
    if input_ids is None:
        return encode_prompt(lm, prompt, max_new_tokens)
    if prompt is not None:
        raise InputError("pass prompt or input_ids, not both")
    check_ids(lm, "input_ids", input_ids, max_new_tokens)
    return input_ids


def _steps_on_threads(lm, max_new_tokens, sampling, capture, stop_at_eos, input_ids) -> Iterator[StepRecord]:
    """The records of :func:`_generate_steps`, each handed over with the caller's torch threads in place."""
    lens: list[LensQueue] = []  # the generation's lens queue, once it has one
    steps = _generate_steps(lm, max_new_tokens, sampling, capture, stop_at_eos, input_ids, lens)
    try:
        while True:
            with torch_threads(lens[0].loop_threads if lens else None):
                record = next(steps, None)
            if record is None:
                return
            yield record
    finally:
        steps.close()


def _generate_steps(lm, max_new_tokens, sampling, capture, stop_at_eos, input_ids,
                    lens_out: list) -> Iterator[StepRecord]:
    """:func:`generate_steps`'s loop over checked arguments; its lens queue goes into ``lens_out`` (whose
    split of the cores the caller applies)."""
    sampling = sampling or SamplingConfig()
    capture = capture or CaptureConfig()
    model, parts, texts = lm.model, lm.parts, token_texts(lm)
    sampler = Sampler(sampling, lm.device)
    decoder = IncrementalDecoder(lm.tokenizer)
    eos = set(_eos_ids(lm))
    tokens = list(texts.many(input_ids[0].tolist()))
    prompt_len = input_ids.shape[1]
    ids = input_ids
    impl = attention_rows_implementation(lm) if capture.attention and parts.has_attention else None
    forward = CachedForward(model, stateless=not parts.cached_steps, output_attentions=impl is not None)
    lens = None
    if capture.logit_lens:
        background = capture.lens_in_background
        if background is None:
            background = lens_placement(lm.device)
        if background is None and capture.lens_batch == 1:
            background = remembered_placement(lm)  # still None: measured in the first steps
        lens = LensQueue(lm, capture.lens_top_k, capture.lens_batch, background, texts)
        lens_out.append(lens)
    with torch.inference_mode(), attention_implementation(model, impl), _closing(lens), \
            CaptureHooks(parts, attention=capture.attention) as hooks:
        hooks.full_pattern = capture.attention and capture.prompt_attention
        fast_attention.STATE.full = hooks.full_pattern  # the prefill's whole pattern only when it is shown
        start = time.perf_counter()
        logits = forward(ids).logits
        # the last position only: a view would keep the prefill's [prompt, vocab] logits alive in record 0
        logits = logits[0, -1].clone() if logits.shape[1] > 1 else logits[0, -1]
        hooks.full_pattern = False
        fast_attention.STATE.full = True
        k = min(max(capture.top_k, 2), logits.shape[-1])
        for step in range(max_new_tokens):
            raw = logits.float()
            _check_finite(raw, step, lm)
            top = torch.topk(raw, k)  # on the logits: the order of softmax(raw)'s top-k
            top_ids, top_logits = top.indices.cpu().numpy(), top.values.cpu().numpy()
            if sampler.plain_greedy and (k < 2 or top_logits[0] > top_logits[1]):
                token_id = int(top_ids[0])  # the argmax, already selected (a tie is left to argmax's own rule)
            else:
                token_id = sampler.choose(raw, ids)
            decoder.push(token_id)
            record, resid = _build_record(lm, hooks, capture, raw, top, top_ids, top_logits, token_id, step,
                                          tokens, prompt_len, decoder.text, not sampling.greedy)
            finished = token_id in eos or step == max_new_tokens - 1
            record.finished = finished
            ids = torch.cat([ids, ids.new_tensor([[token_id]])], dim=1)
            tokens.append(texts.get(token_id))
            record.elapsed_ms = (time.perf_counter() - start) * 1000
            last = finished and (stop_at_eos or step == max_new_tokens - 1)
            if lens is None:
                yield record
            else:
                yield from lens.push(record, resid, raw)
                if last:
                    yield from lens.flush()
            if last:
                return
            start = time.perf_counter()
            logits = forward(ids[:, -1:]).logits[0, -1]


@contextmanager
def _closing(lens: LensQueue | None):
    """Stop the lens worker however the generator ends (exhausted, closed, abandoned or failed)."""
    try:
        yield
    finally:
        if lens is not None:
            lens.close()


def _eos_ids(lm: "LoadedModel") -> list[int]:
    ids = []
    for source in (getattr(lm.model, "generation_config", None), lm.model.config, lm.tokenizer):
        value = getattr(source, "eos_token_id", None)
        if value is None:
            continue
        ids.extend(value if isinstance(value, (list, tuple)) else [value])
    return [int(i) for i in ids]


def _build_record(lm, hooks: CaptureHooks, capture: CaptureConfig, raw: torch.Tensor, top, top_ids: np.ndarray,
                  top_logits: np.ndarray, token_id: int, step: int, tokens, prompt_len: int, text: str,
                  sampled: bool) -> tuple[StepRecord, torch.Tensor]:
    """The record of one step from the hooks' captures (a few batched reductions, one copy to numpy each),
    and the residuals ``[L, d]`` for the lens: a new tensor, so the next forward's captures do not replace
    them."""
    texts = token_texts(lm)
    position = prompt_len + step - 1
    seq = position + 1
    top_ids, top_logits = top_ids[:capture.top_k], top_logits[:capture.top_k]
    probs = torch.softmax(raw, -1)
    picked = probs[top.indices[:capture.top_k]].cpu().numpy()
    chosen = picked[0] if len(top_ids) and token_id == top_ids[0] else probs[token_id]
    stacked = hooks.stacked_many(("attn_out", "mlp_out", "resid"))[:, :, 0]  # [3, L, d], the model's dtype
    acts = stacked.float()
    norms = torch.linalg.vector_norm(acts, dim=-1).cpu().numpy()  # [3, L]
    record = StepRecord(
        step=step, position=position, token=texts.get(token_id), chosen_prob=float(chosen),
        context=tuple(tokens[:seq]), prompt_length=prompt_len, generated_text=text,
        logits=raw.detach().cpu().numpy(), top_ids=top_ids, top_probs=picked, top_logits=top_logits,
        top_texts=tuple(texts.many(top_ids.tolist())), attn_norms=norms[0], mlp_norms=norms[1],
        mlp_max_abs=max_abs(acts[1]).cpu().numpy(), residual_norms=norms[2], sampled=sampled,
    )
    if capture.attention and lm.parts.has_attention:
        # layers without attention (a hybrid's state-space or linear-attention layers) get zero rows
        # and NaN entropy; ``lm.parts.attention_layers`` says which layers have attention
        H = lm.parts.n_heads
        if step == 0 and capture.prompt_attention:
            full = [p[0] if p is not None else raw.new_zeros((H, seq, seq)) for p in hooks.pattern]
            record.prompt_attention = _np(torch.stack(full))  # [L, H, P, P]: the prefill sees every prompt key
            rows = [f[:, -1] for f in full]
        else:
            rows = [p[0] if p is not None else raw.new_zeros((H, 1)) for p in hooks.pattern]
        att = align_rows(rows, seq).float()  # [L, H, S]
        ent = entropy(att)
        missing = [i for i, p in enumerate(hooks.pattern) if p is None]
        if missing:
            ent[missing] = float("nan")
        record.attention = att.cpu().numpy()
        record.attention_entropy = ent.cpu().numpy()
    return record, stacked[2]
