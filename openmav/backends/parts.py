"""The modules an adapter names, resolved on one model instance (:class:`ModelParts`).

Everything the capture engine, the interventions and the analyses touch on a model
goes through these parts: per-layer tuples (``None`` where a layer has no such part,
e.g. no attention in a state-space layer of a hybrid), head counts, and the logit
lens (:meth:`ModelParts.lens`) that applies the final norm, the unembedding and the
model's own logit transform (scale, soft-cap).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..errors import UnsupportedModelError
from .adapters import SHAPES, FamilyAdapter, find_module, get_module

N_HEADS_ATTRS = ("num_attention_heads", "n_head", "num_heads", "n_heads", "decoder_attention_heads")
N_LAYERS_ATTRS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "decoder_layers")


def text_config(config):
    """The language model's config (multimodal configs keep it as ``text_config``)."""
    getter = getattr(config, "get_text_config", None)
    try:
        return getter(decoder=True) if getter else config
    except TypeError:
        return getter()


def config_int(config, *names) -> int | None:
    for name in names:
        try:
            value = getattr(config, name, None)
        except Exception:  # per-layer attributes raise on global access
            value = None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def config_float(config, name: str | None) -> float | None:
    if not name:
        return None
    value = getattr(text_config(config), name, None)
    if value is None:
        value = getattr(config, name, None)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class ModelParts:
    adapter: FamilyAdapter
    blocks: tuple[torch.nn.Module, ...]
    attn: tuple[torch.nn.Module | None, ...]  # modules returning (output, weights) in eager mode
    o_proj: tuple[torch.nn.Module | None, ...]
    attn_out: tuple[torch.nn.Module, ...]  # what the attention (or other mixer) adds, before residual scaling
    mlp: tuple[torch.nn.Module | None, ...]
    mlp_out: tuple[torch.nn.Module | None, ...]
    attn_extra: tuple[tuple[torch.nn.Module, ...], ...]  # added to attn_out's output (may be empty)
    mlp_extra: tuple[tuple[torch.nn.Module, ...], ...]  # added to mlp_out's output (may be empty)
    down_proj: tuple[torch.nn.Module | None, ...]
    attn_norm: tuple[torch.nn.Module | None, ...]
    mlp_norm: tuple[torch.nn.Module | None, ...]
    final_norm: torch.nn.Module | None
    unembed: torch.nn.Module
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    residual_scale: float = 1.0  # what multiplies the attention (or mixer) output before it joins the residual
    mlp_residual_scale: float | None = None  # the MLP's multiplier where it differs (depth-scaled adds)
    # per layer: a float, or where a gate module adds the share per dimension a pair ([d] factors, [d] offset) for
    # a share and [d] factors for a keep; empty: the two above
    attn_scales: tuple = ()  # what multiplies attn_out where it joins the residual
    mlp_scales: tuple = ()  # what multiplies mlp_out
    attn_extra_scales: tuple = ()  # per layer, one per attn_extra module
    mlp_extra_scales: tuple = ()  # per layer, one per mlp_extra module
    attn_keeps: tuple = ()  # what multiplies the residual where the attention's share joins it (1: a plain sum)
    mlp_keeps: tuple = ()  # the same where the MLP's share joins
    stream_scales: tuple = ()  # what multiplies the residual after the block, before the next one (RWKV: 1/2)

    @property
    def mlp_scale(self) -> float:
        return self.residual_scale if self.mlp_residual_scale is None else self.mlp_residual_scale
    logit_scale: float = 1.0
    final_logit_softcap: float | None = None
    inferred: bool = False
    cached_steps: bool = True  # a cached step was checked equal to an uncached forward at load
    rows_function: bool = False  # the registered attention-rows function was checked equal to eager at load

    def share_scale(self, kind: str, layer: int, j: int | None = None):
        """What multiplies a share's captured output where it joins the residual stream in ``layer``:
        ``kind`` is ``attn_out``, ``mlp_out``, ``attn_extra`` or ``mlp_extra`` (``j``: which extra)."""
        if kind == "attn_out":
            return self.attn_scales[layer] if self.attn_scales else self.residual_scale
        if kind == "mlp_out":
            return self.mlp_scales[layer] if self.mlp_scales else self.mlp_scale
        table = self.attn_extra_scales if kind == "attn_extra" else self.mlp_extra_scales
        if table and j is not None and j < len(table[layer]):
            return table[layer][j]
        return self.share_scale("attn_out" if kind == "attn_extra" else "mlp_out", layer)

    def keep(self, kind: str, layer: int):
        """What multiplies the residual where the ``attn`` or ``mlp`` share joins it (one for a plain sum)."""
        table = self.attn_keeps if kind == "attn" else self.mlp_keeps
        return table[layer] if table else 1.0

    def stream_scale(self, layer: int) -> float:
        """What multiplies the residual between block ``layer`` and the next (one but where the model rescales)."""
        return self.stream_scales[layer] if self.stream_scales else 1.0

    def shares(self, layer: int) -> list:
        """The modules whose outputs join the residual in ``layer``: attention (or mixer), the modules
        beside it, the MLP and the modules beside it."""
        return [m for m in (self.attn_out[layer], *self.attn_extra[layer], self.mlp_out[layer],
                            *self.mlp_extra[layer]) if m is not None]

    def loose_children(self, layer: int) -> list:
        """The block's direct children with weights that the row does not read: neither a share nor holding
        one, nor a norm, gate or input norm the row names.  They reach the residual only through the
        shares, if at all (a pre-norm, a router); the load-time checks push them too, so a part that
        joins the residual and that the row misses is found whatever its size."""
        block = self.blocks[layer]
        named = {find_module(block, p) for p in (self.adapter.attn_norm, self.adapter.mlp_norm,
                                                 self.adapter.attn_gate, self.adapter.mlp_gate,
                                                 self.adapter.resid_in)}
        held = {id(m) for s in self.shares(layer) for m in s.modules()}
        out = []
        for child in block.children():
            if child in named or any(id(m) in held for m in child.modules()) or next(child.parameters(), None) is None:
                continue  # read, holding what is read, or without weights of its own (dropout, activation)
            out.append(child)
        return out

    @property
    def residual_is_sum(self) -> bool:
        """Whether the residual after the last block is the embedding plus every share as captured (no keep
        factor, norm or stream scale edits it on the way): what a direct logit attribution needs."""
        ones = all(_is_one(k) for k in (*self.attn_keeps, *self.mlp_keeps, *self.stream_scales))
        return ones and self.compose == "additive" and not any(n is not None for n in self.attn_norm + self.mlp_norm)

    @property
    def shape(self) -> str:
        return self.adapter.shape

    @property
    def compose(self) -> str:
        return SHAPES[self.adapter.shape].compose

    @property
    def skipped_layers(self) -> tuple[int, ...]:
        """Layers that text-only input skips (a vision model's cross-attention layers): identity here."""
        return self.adapter.skip_layers

    @property
    def attention_layers(self) -> tuple[int, ...]:
        """Indices of the layers whose attention probabilities can be captured."""
        return tuple(i for i, a in enumerate(self.attn) if a is not None)

    @property
    def has_attention(self) -> bool:
        return bool(self.attention_layers)

    @property
    def is_moe(self) -> bool:
        return self.adapter.moe

    def heads(self) -> list[tuple[int, int]]:
        """Every (layer, head) that can be ablated: the heads of the attention layers."""
        return [(layer, head) for layer in self.attention_layers for head in range(self.n_heads)]

    def check_head(self, layer: int, head: int | None = None) -> None:
        """A clear error for a layer or head out of range, or a layer without attention."""
        if not isinstance(layer, int) or not 0 <= layer < self.n_layers:
            raise UnsupportedModelError(f"layer {layer!r} is out of range: this model has layers 0..{self.n_layers - 1}")
        if self.attn[layer] is None:
            raise UnsupportedModelError(f"layer {layer} has no attention (it is a {type(self.attn_out[layer]).__name__} "
                                        f"layer); attention layers: {_ranges(self.attention_layers)}")
        if head is not None and (not isinstance(head, int) or not 0 <= head < self.n_heads):
            raise UnsupportedModelError(f"head {head!r} is out of range: this model has heads 0..{self.n_heads - 1}")

    def lens(self, resid: torch.Tensor) -> torch.Tensor:
        """Logits of the logit lens for residual rows ``[..., d]``: the model's own final norm,
        unembedding and logit transform (``logit_scale``, soft-cap), so the last layer's lens
        is the model's distribution."""
        x = resid if self.final_norm is None else self.final_norm(resid)
        logits = self.unembed(x)
        if self.logit_scale != 1.0:
            logits = logits * self.logit_scale
        if self.final_logit_softcap:
            logits = torch.tanh(logits / self.final_logit_softcap) * self.final_logit_softcap
        return logits

    def describe(self) -> str:
        """One line: family, how the adapter was found, and which layers have attention."""
        how = "inferred from the module tree and verified" if self.inferred else "declared"
        att = self.attention_layers
        if len(att) == self.n_layers:
            which = f"attention in all {self.n_layers} layers"
        elif not att:
            which = "no attention layers (attention views are empty)"
        else:
            others = [type(self.attn_out[i]).__name__ for i in range(self.n_layers)
                      if i not in att and self.attn_out[i] is not None]
            which = f"attention in layers {_ranges(att)} of {self.n_layers}" + \
                (f"; the others are {others[0]}" if others else "")
        skipped = f"; layers {_ranges(self.skipped_layers)} are skipped by text-only input" \
            if self.skipped_layers else ""
        return f"adapter {self.adapter.name} ({how}, {self.adapter.shape} blocks): {which}{skipped}"

    @classmethod
    def resolve(cls, model: torch.nn.Module, adapter: FamilyAdapter, inferred: bool = False) -> "ModelParts":
        """Resolve ``adapter``'s paths on ``model``; a clear error naming the first part not found."""
        config = model.config
        tcfg = text_config(config)
        blocks = tuple(get_module(model, adapter.blocks))
        if not blocks:
            raise UnsupportedModelError(f"{adapter.blocks!r} holds no blocks")
        attn, o_proj, attn_out, mlp, mlp_out, down, a_norm, m_norm, a_extra, m_extra = ([] for _ in range(10))
        for i, block in enumerate(blocks):
            if i in adapter.skip_layers:  # skipped by text-only input: the residual passes unchanged
                for column in (attn, o_proj, attn_out, mlp, mlp_out, down, a_norm, m_norm):
                    column.append(None)
                a_extra.append(())
                m_extra.append(())
                continue
            a = find_module(block, adapter.attn)
            if adapter.attention_layers is not None and i not in adapter.attention_layers:
                a = None  # an attention-like module that returns no weights: a mixer here
            mixer, mixer_path = None, None
            if a is None:
                mixer_path = next((p for p in adapter.mixers if find_module(block, p) is not None), None)
                if mixer_path is None and adapter.attention_layers is not None:
                    mixer_path = adapter.attn if find_module(block, adapter.attn) is not None else None
                mixer = find_module(block, mixer_path)
            if a is None and mixer is None:
                raise UnsupportedModelError(f"block {i} ({type(block).__name__}) has neither attention "
                                            f"{adapter.attn!r} nor a mixer {adapter.mixers}")
            attn.append(a)
            o_proj.append(find_module(block, adapter.o_proj) if a is not None else None)
            if a is not None and o_proj[-1] is None:
                raise UnsupportedModelError(f"block {i} has no attention output projection {adapter.o_proj!r}")
            m = find_module(block, adapter.mlp)
            mlp.append(m)
            # the MLP's neurons are the input of down_proj: relative to the MLP, or to the block without one
            down.append(find_module(m if m is not None else block, adapter.down_proj))
            a_path, m_path = adapter.paths(attn=adapter.attn if a is not None else mixer_path)
            if a is not None:
                out = get_module(block, a_path)
            else:  # a mixer layer: the row's post-mixer module where this block has it (LFM), else the mixer
                out = find_module(block, adapter.mixer_out) or mixer
            attn_out.append(out)
            mlp_out.append(find_module(block, m_path) or m)  # a hybrid's layer may lack the post-norm
            a_extra.append(tuple(m for m in (find_module(block, p) for p in adapter.attn_extra) if m is not None))
            m_extra.append(tuple(m for m in (find_module(block, _filled(p, tcfg)) for p in adapter.mlp_extra)
                                 if m is not None))
            a_norm.append(find_module(block, adapter.attn_norm))
            m_norm.append(find_module(block, adapter.mlp_norm))
            if SHAPES[adapter.shape].compose == "post_ln" and adapter.shape != "mid_norm" \
                    and (a_norm[-1] is None or m_norm[-1] is None):
                raise UnsupportedModelError(f"block {i} lacks the post-LayerNorms {adapter.attn_norm!r}, "
                                            f"{adapter.mlp_norm!r}")
        if adapter.unembed and "+" in adapter.unembed:  # a chain of modules after the last block (a head with
            unembed = torch.nn.Sequential(*(get_module(model, p) for p in adapter.unembed.split("+")))  # a transform)
        else:
            unembed = get_module(model, adapter.unembed) if adapter.unembed else model.get_output_embeddings()
        if unembed is None:
            raise UnsupportedModelError(f"{type(model).__name__} has no language-model head (no output embeddings): "
                                        "load it as a causal LM (AutoModelForCausalLM)")
        final_norm = get_module(model, adapter.final_norm) if adapter.final_norm else None
        n_heads = adapter.n_heads or int(config_int(tcfg, adapter.n_heads_attr) or config_int(tcfg, *N_HEADS_ATTRS)
                                         or 0)
        first = next((p for p in o_proj if p is not None), None)
        width = _in_features(first) if first is not None else None
        head_dim = config_int(tcfg, adapter.head_dim_attr) if adapter.head_dim_attr else None
        if width and n_heads and (head_dim is None or head_dim * n_heads != width):
            head_dim = width // n_heads if width % n_heads == 0 else None
        if first is not None and (not n_heads or not head_dim):
            raise UnsupportedModelError(f"could not tell the head count and width of {type(first).__name__} "
                                        f"(input {width}, {n_heads} heads in the config)")
        kv = config_int(tcfg, adapter.n_kv_heads_attr) if adapter.n_kv_heads_attr else None
        divisor = config_float(config, adapter.logit_divisor_attr)
        scale = (config_float(config, adapter.logit_scale_attr) or adapter.logit_scale or 1.0) / (divisor or 1.0)
        s = adapter.residual_scale or config_float(config, adapter.residual_scale_attr) or 1.0
        sm = s if adapter.mlp_residual_scale is None else adapter.mlp_residual_scale
        scales = _layer_scales(adapter, blocks, s, sm, a_extra, m_extra)
        return cls(
            adapter=adapter, blocks=blocks, attn=tuple(attn), o_proj=tuple(o_proj), attn_out=tuple(attn_out),
            mlp=tuple(mlp), mlp_out=tuple(mlp_out), attn_extra=tuple(a_extra), mlp_extra=tuple(m_extra),
            down_proj=tuple(down), attn_norm=tuple(a_norm),
            mlp_norm=tuple(m_norm), final_norm=final_norm, unembed=unembed, n_layers=len(blocks),
            n_heads=n_heads or 1, n_kv_heads=kv or n_heads or 1, head_dim=head_dim or 1,
            residual_scale=s, mlp_residual_scale=adapter.mlp_residual_scale, **scales,
            logit_scale=scale,
            final_logit_softcap=_softcap(config, adapter.softcap_attr), inferred=inferred,
        )


def _filled(path: str, config) -> str | None:
    """``path`` with each ``{attribute}`` replaced by the config's value (``None`` where the config has none)."""
    if "{" not in path:
        return path

    def value(match):
        got = getattr(config, match.group(1), None)
        if got is None:
            raise KeyError(match.group(1))
        return str(got)

    try:
        return re.sub(r"\{(\w+)\}", value, path)
    except KeyError:
        return None


def push_hook(v: torch.Tensor, applied: set | None = None):
    """A forward hook that adds ``v`` to a module's first output (a tensor, or the first item of a tuple or
    list) where the sizes agree; the module joins ``applied``.  The load-time checks push each share of a
    block by a vector of the block's size, to read and check each share at a size of its own."""
    def hook(module, args, output):
        first = output if isinstance(output, torch.Tensor) else \
            output[0] if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor) else None
        if first is None or first.numel() != v.numel() or first.shape[-1] != v.shape[-1]:
            return None
        new = first + v.reshape(first.shape).to(device=first.device, dtype=first.dtype)
        if applied is not None:
            applied.add(module)
        if isinstance(output, torch.Tensor):
            return new
        return [new, *output[1:]] if isinstance(output, list) else (new, *output[1:])
    return hook


def _is_one(value) -> bool:
    return not isinstance(value, (torch.Tensor, tuple)) and float(value) == 1.0


def _per_layer(values: tuple, n: int, default, what: str) -> tuple:
    if not values:
        return (default,) * n
    if len(values) != n:
        raise UnsupportedModelError(f"the row gives {len(values)} {what} for {n} layers")
    return tuple(float(v) for v in values)


def _gate_factors(block, path: str | None, layer: int):
    """``((branch factors, offset), residual factors)`` of a gate module ``gate(branch, residual)``, affine in each
    (Ergo's ``sigmoid(w) * branch + g(w) * residual``, ZAYA's ``(branch + b) * s + (residual + c) * t``), read by
    calling it on ones and zeros: per dimension, ``gate(x, r) = f_b * x + offset + f_r * r``; ``None`` where the
    row names no gate.  The offset is counted with the branch's share, as a projection's bias is."""
    if not path:
        return None
    gate = get_module(block, path)
    param = next(gate.parameters(), None)
    width = param.shape[-1] if param is not None else None
    if not width:
        raise UnsupportedModelError(f"layer {layer}: the gate {path!r} has no per-dimension weight")
    like = dict(dtype=param.dtype, device=param.device)
    ones, zeros = torch.ones(1, 1, width, **like), torch.zeros(1, 1, width, **like)
    with torch.no_grad():
        offset = gate(zeros, zeros).reshape(-1).detach()
        branch = gate(ones, zeros).reshape(-1).detach() - offset
        residual = gate(zeros, ones).reshape(-1).detach() - offset
    return (branch, offset), residual


def _layer_scales(adapter: FamilyAdapter, blocks, s: float, sm: float, a_extra, m_extra) -> dict:
    """The per-layer multipliers of :class:`ModelParts` from the row (defaults: ``s`` and ``sm``, keeps of one)."""
    n = len(blocks)
    attn = list(_per_layer(adapter.attn_scales, n, s, "attention multipliers"))
    mlp = list(_per_layer(adapter.mlp_scales, n, sm, "MLP multipliers"))
    a_keep = list(_per_layer(adapter.attn_keeps, n, 1.0, "residual keep factors"))
    m_keep = list(_per_layer(adapter.mlp_keeps, n, 1.0, "residual keep factors"))
    stream = _per_layer(adapter.stream_scales, n, 1.0, "stream scales")
    n_a = len(adapter.attn_extra)
    extra = tuple(float(x) for x in adapter.extra_scales)
    a_ex, m_ex = [], []
    for i in range(n):
        a_ex.append(tuple(extra[j] if j < len(extra) else attn[i] for j in range(len(a_extra[i]))))
        m_ex.append(tuple(extra[n_a + j] if n_a + j < len(extra) else mlp[i] for j in range(len(m_extra[i]))))
        for table, keep, path in ((attn, a_keep, adapter.attn_gate), (mlp, m_keep, adapter.mlp_gate)):
            factors = _gate_factors(blocks[i], path, i) if i not in adapter.skip_layers else None
            if factors is not None:
                table[i], keep[i] = factors
    return dict(attn_scales=tuple(attn), mlp_scales=tuple(mlp), attn_extra_scales=tuple(a_ex),
                mlp_extra_scales=tuple(m_ex), attn_keeps=tuple(a_keep), mlp_keeps=tuple(m_keep), stream_scales=stream)


SOFTCAP_ATTRS = ("final_logit_softcapping", "logits_soft_cap", "final_logit_softcap", "output_logit_soft_cap")


def _softcap(config, attr: str | None) -> float | None:
    """The final logit soft-cap: the row's attribute, else any of :data:`SOFTCAP_ATTRS`."""
    for name in (attr, *SOFTCAP_ATTRS):
        value = config_float(config, name)
        if value:
            return value
    return None


def _in_features(module) -> int | None:
    weight = getattr(module, "weight", None)
    if getattr(module, "in_features", None):
        return int(module.in_features)
    if weight is not None and weight.dim() == 2:  # GPT-2's Conv1D stores [in, out]
        return int(weight.shape[0] if type(module).__name__ == "Conv1D" else weight.shape[1])
    return None


def _ranges(indices) -> str:
    """``0-3, 5, 7-9`` for a sorted list of layer indices."""
    out, start, prev = [], None, None
    for i in indices:
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            out.append(f"{start}-{prev}" if prev > start else str(start))
            start = prev = i
    if start is not None:
        out.append(f"{start}-{prev}" if prev > start else str(start))
    return ", ".join(out) or "none"
