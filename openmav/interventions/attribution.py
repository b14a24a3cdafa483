"""Direct logit attribution: each head's share of one token's logit at one position.

At position ``p`` the logit of token ``t`` is read from the last block's output ``x``
through the final norm and the unembedding.  With the final norm's scale (and, for a
LayerNorm, its centering) *frozen at the clean run*, that read-out is affine in ``x``,
and ``x`` is a sum of parts (blocks of the ``additive`` shapes add what they compute to
the residual stream):

- the embeddings (block 0's input, positional embeddings and any embedding scale included);
- per attention layer, each head: its output ``z_h`` through its slice of the output
  projection, ``o_proj(z with every other head zeroed) - o_proj(0)``, times the
  model's residual multiplier; where a norm follows the projection before the
  residual (post-norm blocks: Gemma 2/3, OLMo 2) that norm is frozen at the clean run
  too; the projection's bias (and that norm's bias) is the layer's ``attention_bias``;
- per layer, the MLP's output (``mlp``), a hybrid layer's non-attention mixer
  (``mixer``) and any module whose output joins a sub-block's (``attention_extra``,
  ``mlp_extra``);
- the constant of the read-out: the final norm's bias and the unembedding's bias
  (``final_bias``).

A part's contribution is ``logit_scale * W_U[t] . N(c)``, ``N`` the frozen final norm's
linear map.  The contributions sum to the model's logit (before a final soft-cap,
which is not linear: Gemma 2's ``pre_softcap_logit``); :func:`direct_logit_attribution`
checks the decomposition at every step and reports the difference (``error``).
Blocks whose residual is normed after the sum (``post_ln``: BERT-style) are refused
with a message.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..capture.hooks import first_output
from ..errors import InputError
from .ablation import as_ids

KINDS = ("embedding", "attention_bias", "attention_extra", "mixer", "mlp", "mlp_extra", "final_bias")
EPS_ATTRS = ("variance_epsilon", "eps", "epsilon", "layer_norm_eps")


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-3) -> bool:
    """``a`` equals ``b`` up to ``rel`` times the larger magnitude (absolute 1e-6 near zero)."""
    scale = max(float(a.abs().max()), float(b.abs().max()), 1e-3)
    return float((a - b).abs().max()) <= rel * scale


@dataclass(frozen=True)
class FrozenNorm:
    """A norm at one position with its statistics frozen: ``v -> gain * (v - mean(v) if centered else v)``,
    plus the constant ``bias``.  Linear in ``v`` apart from the bias, so the parts of its input
    can be sent through it one by one."""

    gain: torch.Tensor  # [d] float64: the norm's weight over the frozen scale
    bias: torch.Tensor  # [d] float64
    centered: bool

    def linear(self, v: torch.Tensor) -> torch.Tensor:
        """The frozen norm's linear part on rows ``[..., d]`` (no bias)."""
        if self.centered:
            v = v - v.mean(-1, keepdim=True)
        return v * self.gain

    @staticmethod
    def identity(d: int) -> "FrozenNorm":
        return FrozenNorm(torch.ones(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64), False)

    @classmethod
    def fit(cls, module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, where: str) -> "FrozenNorm":
        """The frozen form of norm ``module`` at input ``x`` ``[d]`` (its output there: ``y``).

        The module is probed on ``ones`` and on ``±a`` (``a`` alternating signs): an RMS
        norm is odd and its output on ``ones`` is its weight over ``sqrt(1 + eps)``; a
        LayerNorm centres ``ones`` to zero, so its output there is its bias, and half the
        difference of its outputs on ``±a`` gives its weight.  The frozen form must give back ``y`` from ``x``; an
        :class:`InputError` says when ``module`` is neither (``where`` names it).
        """
        d = x.shape[-1]
        eps = next((float(v) for v in (getattr(module, a, None) for a in EPS_ATTRS)
                    if isinstance(v, (int, float)) and not isinstance(v, bool)), 1e-6)
        a = torch.ones(d, dtype=torch.float64)
        a[1::2] = -1.0
        if d % 2:
            a[-1] = 0.0
        param = next(module.parameters(), None)
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        device = param.device if param is not None else torch.device("cpu")
        probes = torch.stack([torch.ones(d, dtype=torch.float64), a, -a]).to(device=device, dtype=dtype)
        with torch.no_grad():
            on_ones, on_a, on_neg = first_output(module(probes.unsqueeze(0)))[0].double().cpu()
        var_a = float(a.pow(2).mean() - a.mean() ** 2)
        bias = (on_a + on_neg) / 2
        if _close(on_ones, bias, 1e-4):  # centred: ones become 0, so the output on ones is the bias
            # a LayerNorm: N(±a) = ±g*a/sqrt(var_a + eps) + b, centred input, biased variance
            weight = (on_a - on_neg) / 2 * (var_a + eps) ** 0.5
            weight = torch.where(a != 0, weight / torch.where(a != 0, a, torch.ones_like(a)), torch.zeros_like(a))
            scale = float(((x - x.mean()).pow(2).mean() + eps) ** 0.5)
            frozen = cls(weight / scale, bias, True)
        else:  # an RMS norm: N(ones) = g / sqrt(1 + eps)
            weight = on_ones * (1.0 + eps) ** 0.5
            scale = float((x.pow(2).mean() + eps) ** 0.5)
            frozen = cls(weight / scale, torch.zeros(d, dtype=torch.float64), False)
        if not _close(frozen.linear(x) + frozen.bias, y, 2e-3):
            raise InputError(f"direct logit attribution cannot freeze {where} ({type(module).__name__}): it is "
                             "neither an RMS norm nor a LayerNorm")
        return frozen


@dataclass
class LogitAttribution:
    """Each head's and each other part's contribution to one token's logit at one position."""

    position: int
    token: int
    logit: float  # the model's own logit of ``token`` at ``position``
    pre_softcap_logit: float  # the logit before a final soft-cap (equal to ``logit`` without one)
    heads: np.ndarray  # [L, H] contributions; NaN where a layer has no attention
    components: list[dict] = field(default_factory=list)  # {"name", "kind", "layer", "value"}: every other part
    softcap: float | None = None

    @property
    def total(self) -> float:
        """The sum of every head's and every other part's contribution."""
        return float(np.nansum(self.heads) + sum(c["value"] for c in self.components))

    @property
    def error(self) -> float:
        """``|total - pre_softcap_logit|``: how far the decomposition is from the model's logit."""
        return abs(self.total - self.pre_softcap_logit)

    def to_dict(self) -> dict:
        return {"position": self.position, "token": self.token, "logit": self.logit,
                "pre_softcap_logit": self.pre_softcap_logit, "softcap": self.softcap,
                "heads": [[None if not np.isfinite(v) else float(v) for v in row] for row in self.heads],
                "components": self.components, "total": self.total, "error": self.error}


class _Recorder:
    """Forward hooks keeping, at one position, what the decomposition reads (float64, CPU)."""

    def __init__(self, parts, position: int):
        self.parts, self.p = parts, position
        self.seen: dict = {}
        self.handles = []

    def _at(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.dim() == 2:  # [b * p, d] (OPT's MLP): one row per position of a batch of one
            tensor = tensor.unsqueeze(0)
        return tensor[0, self.p].detach().double().cpu().clone()

    def out(self, module, key):
        def hook(mod, args, output):
            first = first_output(output)
            if isinstance(first, torch.Tensor):
                self.seen[key] = self._at(first)
        self.handles.append(module.register_forward_hook(hook))

    def inp(self, module, key):
        def hook(mod, args, kwargs):
            x = args[0] if args else kwargs.get("hidden_states")
            if isinstance(x, torch.Tensor):
                self.seen[key] = self._at(x)
        self.handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def __enter__(self):
        p = self.parts
        try:
            self.inp(p.blocks[0], "embedding")
            self.out(p.blocks[-1], "resid_final")
            for i in range(p.n_layers):
                if i in p.skipped_layers:
                    continue
                if p.o_proj[i] is not None:
                    self.inp(p.o_proj[i], ("z", i))
                    self.out(p.o_proj[i], ("o", i))
                self.inp(p.attn_out[i], ("attn_in", i))
                self.out(p.attn_out[i], ("attn", i))
                if p.mlp_out[i] is not None:
                    self.out(p.mlp_out[i], ("mlp", i))
                for j, m in enumerate(p.attn_extra[i]):
                    self.out(m, ("attn_extra", i, j))
                for j, m in enumerate(p.mlp_extra[i]):
                    self.out(m, ("mlp_extra", i, j))
            if p.final_norm is not None:
                self.inp(p.final_norm, "final_in")
                self.out(p.final_norm, "final_out")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles.clear()


def _unembed_row(parts, token: int) -> tuple[torch.Tensor, float]:
    """``(W_U[token] [d], b_U[token])`` of a linear unembedding; an :class:`InputError` for any other."""
    u = parts.unembed
    weight = getattr(u, "weight", None)
    if not isinstance(u, torch.nn.Linear) and not (isinstance(weight, torch.Tensor) and weight.dim() == 2):
        raise InputError(f"direct logit attribution needs a linear unembedding; this model's is "
                         f"{type(u).__name__}")
    bias = getattr(u, "bias", None)
    return weight[token].detach().double().cpu(), 0.0 if bias is None else float(bias[token])


@torch.no_grad()
def direct_logit_attribution(lm, input_ids, token: int, position: int | None = None) -> LogitAttribution:
    """Every head's direct contribution to ``token``'s logit at ``position`` (default: the last).

    One forward with read-only hooks; see the module doc for the decomposition.  The
    parts are checked as they are split (each layer's heads and bias against its
    attention output, the parts' sum against the last block's output) and an
    :class:`InputError` names the first that does not add up.
    """
    parts = lm.parts
    ids = as_ids(lm, input_ids)
    n = int(ids.shape[1])
    position = n - 1 if position is None else position
    if not isinstance(position, int) or isinstance(position, bool) or not 0 <= position < n:
        raise InputError(f"position {position!r} is out of range: the prompt has positions 0-{n - 1}")
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    if not isinstance(token, int) or isinstance(token, bool) or not 0 <= token < vocab:
        raise InputError(f"token id {token!r} is out of range: valid token ids are 0-{vocab - 1}")
    if parts.compose != "additive":
        raise InputError(f"direct logit attribution needs blocks that add their parts to the residual stream; "
                         f"{lm.name}'s blocks ({parts.shape}) norm the residual after each sub-block")
    if not getattr(parts, "residual_is_sum", True):
        raise InputError(f"direct logit attribution needs a residual stream that is the sum of its parts; "
                         f"{lm.name} rescales or norms it where a sub-block joins or between blocks")
    with _Recorder(parts, position) as rec:
        logits = lm.model(input_ids=ids, use_cache=False).logits
    seen = rec.seen
    logit = float(logits[0, position, token])
    resid = seen["embedding"].clone()
    d = resid.shape[0]
    heads = np.full((parts.n_layers, parts.n_heads), np.nan)
    vectors: list[tuple[str, str, int | None, torch.Tensor]] = [("embedding", "embedding", None, seen["embedding"])]
    head_vectors: dict[tuple[int, int], torch.Tensor] = {}
    for i in range(parts.n_layers):
        if i in parts.skipped_layers:
            continue
        added = torch.zeros(d, dtype=torch.float64)
        s, sm = _share_scale(parts, "attn_out", i), _share_scale(parts, "mlp_out", i)
        if parts.o_proj[i] is not None:
            per_head, bias = _split_heads(parts, i, seen)
            for h in range(parts.n_heads):
                head_vectors[(i, h)] = s * per_head[h]
            vectors.append((f"L{i} attention bias", "attention_bias", i, s * bias))
            added += s * (per_head.sum(0) + bias)
        else:
            vectors.append((f"L{i} mixer", "mixer", i, s * seen[("attn", i)]))
            added += s * seen[("attn", i)]
        for j, _ in enumerate(parts.attn_extra[i]):
            sj = _share_scale(parts, "attn_extra", i, j)
            vectors.append((f"L{i} attention extra {j}", "attention_extra", i, sj * seen[("attn_extra", i, j)]))
            added += sj * seen[("attn_extra", i, j)]
        if parts.mlp_out[i] is not None:
            vectors.append((f"L{i} MLP", "mlp", i, sm * seen[("mlp", i)]))
            added += sm * seen[("mlp", i)]
        for j, _ in enumerate(parts.mlp_extra[i]):
            sj = _share_scale(parts, "mlp_extra", i, j)
            vectors.append((f"L{i} MLP extra {j}", "mlp_extra", i, sj * seen[("mlp_extra", i, j)]))
            added += sj * seen[("mlp_extra", i, j)]
        resid = resid + added
    final_in = seen.get("final_in", seen["resid_final"])
    if not _close(resid, final_in, 1e-3):
        raise InputError(f"direct logit attribution: {lm.name}'s residual stream is not the sum of its parts "
                         f"(largest difference {float((resid - final_in).abs().max()):.3g}), so a head's "
                         "direct share of the logit is not defined here")
    if parts.final_norm is None:
        norm = FrozenNorm.identity(d)
    else:
        norm = FrozenNorm.fit(parts.final_norm, final_in, seen["final_out"], "the final norm")
    w_u, b_u = _unembed_row(parts, token)
    scale = parts.logit_scale

    def read(v: torch.Tensor) -> float:
        return scale * float(w_u @ norm.linear(v))

    for (layer, head), v in head_vectors.items():
        heads[layer, head] = read(v)
    components = [{"name": name, "kind": kind, "layer": layer, "value": read(v)} for name, kind, layer, v in vectors]
    components.append({"name": "final norm and unembedding bias", "kind": "final_bias", "layer": None,
                       "value": scale * (float(w_u @ norm.bias) + b_u)})
    final_out = seen.get("final_out", final_in)
    pre_cap = scale * (float(w_u @ final_out) + b_u)
    return LogitAttribution(position=position, token=token, logit=logit, pre_softcap_logit=pre_cap, heads=heads,
                            components=components, softcap=parts.final_logit_softcap)


def _share_scale(parts, kind: str, layer: int, j: int | None = None):
    """The multiplier of a share where it joins the residual (``parts.share_scale``), as float64 on the CPU."""
    value = parts.share_scale(kind, layer, j)
    return value.detach().double().cpu() if isinstance(value, torch.Tensor) else float(value)


def _split_heads(parts, layer: int, seen: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer ``layer``'s attention output at the position, split into heads ``[H, d]`` and a bias ``[d]``
    (before the residual multiplier), each through the norm that follows the projection, if any."""
    o_proj = parts.o_proj[layer]
    z, o, raw = seen[("z", layer)], seen[("o", layer)], seen[("attn", layer)]
    H, hd = parts.n_heads, parts.head_dim
    rows = torch.zeros(H + 1, z.shape[0], dtype=torch.float64)
    for h in range(H):
        rows[h, h * hd:(h + 1) * hd] = z[h * hd:(h + 1) * hd]
    param = next(o_proj.parameters())
    out = first_output(o_proj(rows.to(device=param.device, dtype=param.dtype).unsqueeze(0)))[0].double().cpu()
    bias = out[H]
    per_head = out[:H] - bias
    if not _close(per_head.sum(0) + bias, o, 1e-3):
        raise InputError(f"direct logit attribution: the output projection of layer {layer} is not linear in "
                         "the heads' outputs, so the heads cannot be told apart")
    if _close(raw, o, 1e-4):
        return per_head, bias
    norm_in = seen.get(("attn_in", layer))
    if norm_in is None or not _close(norm_in, o, 1e-4):
        raise InputError(f"direct logit attribution: layer {layer}'s attention output "
                         f"({type(parts.attn_out[layer]).__name__}) is not its output projection's, nor a norm "
                         "of it, so the heads' shares of it are not defined")
    norm = FrozenNorm.fit(parts.attn_out[layer], o, raw, f"layer {layer}'s post-attention norm")
    return norm.linear(per_head), norm.linear(bias) + norm.bias
