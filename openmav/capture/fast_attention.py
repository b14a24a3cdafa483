"""Attention rows at fused-kernel speed, through transformers' attention-function registry.

Capturing attention used to mean switching a model to eager attention for the whole
forward.  :func:`openmav_attention` is registered as the attention function
``"openmav_rows"`` (``transformers.AttentionInterface``): over a prompt it computes the
attention *output* with the fast kernel (SDPA), and beside it only the probability rows a
capture needs, with the model's own scaling, mask (causal, sliding window), soft-cap
and attention sinks:

- a decoding step (one query) costs one ``[heads, 1, d] x [d, keys]`` product and a
  softmax over the cached keys, and its output is those probabilities times the values
  (eager's arithmetic, with the heads that share a key/value head grouped, so no key is
  copied): at one query that is as cheap as the fused kernel, which would compute the
  same scores again;
- the prefill returns the whole ``[heads, query, key]`` pattern only when a view asked
  for the prompt's attention (:data:`STATE` ``.full``), else only its last row.

Where a model's attention has features this function does not reproduce with the fast
kernel (a soft-cap, sinks or a position bias), the output is computed from the same
probabilities (eager arithmetic), so numbers never change.  A model is switched to it
only when :func:`openmav.backends.verify.rows_match_eager` has checked, on the model itself, that the rows and
logits equal eager attention (1e-5 in fp32); otherwise the step loop uses eager.
"""

from __future__ import annotations

import threading

import torch

NAME = "openmav_rows"


class _State(threading.local):
    full = True  # return whole patterns (the prompt's attention); False: the last query's row only


STATE = _State()


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    if groups <= 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, groups, s, d).reshape(b, h * groups, s, d)


def openmav_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                      softcap=None, **kwargs):
    """``(output [b, q, h, d_v], probabilities [b, h, q or 1, k])``: fast output, the rows a capture needs."""
    groups = getattr(module, "num_key_value_groups", 1) or 1
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    sinks = kwargs.get("s_aux", getattr(module, "sinks", None))
    bias = kwargs.get("position_bias")
    exact = softcap is not None or sinks is not None or bias is not None or dropout
    if not exact and query.shape[2] == 1:
        return _decode_step(query, key, value, attention_mask, scale)
    q = query if (STATE.full or exact) else query[:, :, -1:]
    keys = _repeat_kv(key, groups)
    scores = torch.matmul(q, keys.transpose(2, 3)) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if bias is not None:
        scores = scores + bias[:, :, -q.shape[2]:]
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, -q.shape[2]:, : keys.shape[-2]]
    if sinks is not None:
        sink = sinks.reshape(1, -1, 1, 1).expand(q.shape[0], -1, q.shape[2], 1).to(scores.dtype)
        combined = torch.cat([scores, sink], dim=-1)
        combined = combined - combined.max(dim=-1, keepdim=True).values
        probs = torch.softmax(combined, dim=-1, dtype=combined.dtype)[..., :-1].to(query.dtype)
    else:
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if exact:  # the output from these probabilities: the model's eager arithmetic
        out = torch.matmul(probs, _repeat_kv(value, groups)).transpose(1, 2).contiguous()
        return out, probs
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    # the weights are ours: SDPA is asked for the output only (else it warns that it has none to give)
    kwargs = {k: v for k, v in kwargs.items() if k != "output_attentions"}
    out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=scale, **kwargs)
    return out, probs


def _decode_step(query, key, value, attention_mask, scale: float):
    """One query (a decoding step): the probabilities over the cached keys, and the output from them.

    The eager arithmetic, without its copies: the query heads that share a key/value head are
    multiplied together against that head's keys (``[b * kv, groups, d] x [b * kv, d, k]``, no
    repeated keys), the scale and the additive mask enter the same fused product, and the output is
    the probabilities times the values in the same grouping.  At one query this costs about what the
    fast kernel alone does, and the output is the one eager attention gives."""
    b, h, _, d = query.shape
    kv, keys = key.shape[1], key.shape[2]
    groups = h // kv
    q = query.reshape(b * kv, groups, d)
    k = key.reshape(b * kv, keys, d)
    if attention_mask is not None:
        # [b, 1 or h, q, >= k] -> the last query's row over these keys, one per query head
        mask = attention_mask[:, :, -1, :keys].to(query.dtype)
        if b > 1 or mask.shape[1] != 1:
            mask = mask.expand(b, h, keys).reshape(b * kv, groups, keys)
        scores = torch.baddbmm(mask, q, k.transpose(1, 2), alpha=scale)
    else:
        scores = torch.bmm(q, k.transpose(1, 2)).mul_(scale)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)  # [b * kv, groups, k]
    out = torch.bmm(probs, value.reshape(b * kv, keys, value.shape[-1]))  # [b * kv, groups, d_v]
    return out.reshape(b, 1, h, value.shape[-1]), probs.reshape(b, h, 1, keys)


def register() -> str:
    """Register :func:`openmav_attention` under :data:`NAME` (idempotent) and return the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, eager_mask

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, openmav_attention)
    if NAME not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionMaskInterface.register(NAME, eager_mask)  # always a full additive mask: rows need it
    return NAME


def supports_registry(model) -> bool:
    """Whether the model's attention dispatches through the registry (the functional attention API)."""
    return bool(getattr(type(model), "_supports_attention_backend", False))
