"""Infer an adapter row for a model type nobody declared, from its module tree and one forward.

The search (:func:`infer_adapter`) looks at names and shapes only to order its
candidates; what decides is one probe forward (:mod:`openmav.backends.probe`):

- **blocks**: a ``ModuleList`` with as many entries as the (text) config has layers,
  outside vision and audio towers, whose blocks ran on text input;
- **attention**: per block, the outermost module whose eager output carries
  ``[b, h, q, k]`` weights; blocks without one are mixer layers (state-space,
  linear attention, convolution): their mixer is the first residual-shaped child;
- **output projection**: the linear inside the attention sub-module whose output is
  residual-wide, preferring the usual names (``o_proj``, ``out_proj``, ``dense``, ``c_proj``);
- **sub-block outputs and shape**: the pair of modules whose outputs add up to the
  block's change of the residual stream (with the config's residual multiplier), else
  the pair and post-LayerNorms that reproduce the block output (post-LN);
- **final norm and unembedding**: the norm outside the blocks and the head that turn
  the last block's output into the model's logits (with the config's logit scale).

The row found is then resolved and checked by :func:`openmav.backends.verify.verify_parts`
like any declared row.
"""

from __future__ import annotations

import itertools

import torch

from ..errors import UnsupportedModelError
from .adapters import FamilyAdapter
from .parts import N_HEADS_ATTRS, N_LAYERS_ATTRS, SOFTCAP_ATTRS, config_int, text_config
from .probe import probe_forward

SKIP_TOWERS = ("vision", "visual", "image", "audio", "speech", "vq", "patch", "img", "mtp")
O_NAMES = ("o_proj", "out_proj", "dense", "c_proj", "wo", "out_lin", "o", "Wo", "proj", "linear_out", "out")
DOWN_NAMES = ("down_proj", "c_proj", "fc2", "fc_out", "dense_4h_to_h", "w2", "wo", "Wo", "lin2", "fc_2", "down",
              "dense", "out_proj", "linear_2", "c_proj2")
MLP_WORDS = ("mlp", "feed_forward", "ffn", "moe", "ff", "experts", "feedforward")
SCALE_ATTRS = ("residual_multiplier",)
LOGIT_SCALES = (("logit_scale", None), (None, "logits_scaling"), (None, "output_multiplier_scale"),
                (None, "logits_mup_width_multiplier"), ("logits_mup_width_multiplier", None))


def _linear_out(module) -> int | None:
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        return None
    if type(module).__name__ == "Conv1D":
        return int(w.shape[1])
    return int(getattr(module, "out_features", None) or w.shape[0])


def _is_norm(module) -> bool:
    name = type(module).__name__.lower()
    return "norm" in name and "linear" not in name


def _blocks_path(model, n_layers: int | None) -> str:
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0
             and all(isinstance(b, torch.nn.Module) and len(list(b.children())) > 0 for b in m)]
    if n_layers:
        lists = [(n, m) for n, m in lists if len(m) == n_layers]
    text = [(n, m) for n, m in lists if not any(w in n.lower() for w in SKIP_TOWERS)]
    if not text:
        raise UnsupportedModelError("no list of transformer blocks found in the module tree"
                                    + (f" (none with {n_layers} entries)" if n_layers else ""))
    text.sort(key=lambda nm: (0 if any(w in nm[0] for w in ("language_model", "decoder", "text")) else 1,
                              -len(list(nm[1].modules()))))
    return text[0][0]


def _rel(module, root) -> str:
    for name, m in root.named_modules():
        if m is module:
            return name
    raise UnsupportedModelError(f"{type(module).__name__} is not inside {type(root).__name__}")


def _child_holding(block, path: str) -> str:
    return path.split(".")[0]


def _pick_linear(root, prefix: str, hidden: int, names) -> str | None:
    found = [(n, m) for n, m in root.named_modules() if n and _linear_out(m) == hidden]
    if not found:
        return None
    for wanted in names:
        for n, _ in found:
            if n.split(".")[-1] == wanted and "expert" not in n:
                return f"{prefix}.{n}" if prefix else n
    n = [n for n, _ in found if "expert" not in n and not n.split(".")[-1].startswith(("q", "k", "v"))]
    return (f"{prefix}.{n[-1]}" if prefix else n[-1]) if n else None


def infer_adapter(model) -> FamilyAdapter:
    """A row for ``model`` found from its module tree and one probe forward (not yet verified)."""
    config = model.config
    tcfg = text_config(config)
    hidden = config_int(tcfg, "hidden_size", "n_embd", "d_model", "dim", "embed_dim")
    blocks_path = _blocks_path(model, config_int(tcfg, *N_LAYERS_ATTRS))
    blocks = list(model.get_submodule(blocks_path))
    try:
        run = probe_forward(model, list(model.modules()), inputs_of=blocks)
    except Exception as exc:
        raise UnsupportedModelError(f"the probe forward failed ({type(exc).__name__})") from exc
    skipped = tuple(i for i, b in enumerate(blocks) if b not in run.outputs)
    if len(skipped) == len(blocks) or (skipped and skipped[0] == 0):
        raise UnsupportedModelError(f"the blocks {blocks_path!r} did not run on text input")
    ran = [b for b in blocks if b in run.outputs]  # Mllama's cross-attention layers skip text-only input
    hidden = hidden or run.outputs[ran[0]].shape[-1]
    attn_paths, mixer_paths, attention_layers = set(), set(), []
    first_attn, n_heads = None, None
    for i, b in enumerate(blocks):
        if i in skipped:
            continue
        pattern = next((m for m in b.modules() if m in run.weights and m is not b), None)
        if pattern is not None:
            attn_paths.add(_rel(pattern, b))
            first_attn = first_attn or b
            n_heads = n_heads or int(run.weights[pattern].shape[1])
            attention_layers.append(i)
        else:
            mixer_paths.add(_mixer_path(b, run, hidden))
    if len(attn_paths) > 1:
        raise UnsupportedModelError(f"attention modules differ between blocks ({', '.join(sorted(attn_paths))})")
    attn_path = next(iter(attn_paths), "self_attn")
    ref = first_attn or ran[0]
    o_proj = _pick_linear(ref.get_submodule(_child_holding(ref, attn_path)), _child_holding(ref, attn_path),
                          hidden, O_NAMES) if first_attn is not None else None
    mlp_path = _mlp_path(ref, attn_path)
    down = None
    if mlp_path:
        mlp = ref.get_submodule(mlp_path)
        moe = any("expert" in n for n, _ in mlp.named_modules())
        down = None if moe else _pick_linear(mlp, "", hidden, DOWN_NAMES)
    else:
        moe = False
    resid_in = None
    try:
        shape, a_out, m_out, norms, scale_attr = _sub_block_outputs(model, ref, run, hidden, attn_path, o_proj,
                                                                     mlp_path, down, tcfg)
    except UnsupportedModelError:
        # a block that norms its own input first (RWKV's first block): the residual starts after that norm
        for name, child in ref.named_children():
            if not _is_norm(child) or child not in run.outputs or run.outputs[child].shape != run.inputs[ref].shape:
                continue
            try:
                shape, a_out, m_out, norms, scale_attr = _sub_block_outputs(
                    model, ref, run, hidden, attn_path, o_proj, mlp_path, down, tcfg, pre=run.outputs[child])
                resid_in = name
                break
            except UnsupportedModelError:
                continue
        else:
            raise
    mixer_out = None
    mixer_block = next((b for i, b in enumerate(blocks) if i not in attention_layers and i not in skipped), None)
    if mixer_block is not None and first_attn is not None:  # hybrid: the mixer layers' own outputs
        mixer = _mixer_path(mixer_block, run, hidden)
        try:
            found = _sub_block_outputs(model, mixer_block, run, hidden, mixer, None, _mlp_path(mixer_block, mixer),
                                       None, tcfg)
            mixer_out = found[1].split("+")[0] if found[0] != "post_ln" and "+" not in found[1] else None
        except UnsupportedModelError:
            mixer_out = None
    elif first_attn is None:  # no attention anywhere: the sub-block output found on the first block is the mixer's
        mixer_out = a_out.split("+")[0]
    final_norm, unembed, logit_attrs = _head(model, ran, run, tcfg)
    row = FamilyAdapter(
        name=f"inferred:{getattr(config, 'model_type', type(model).__name__)}", shape=shape, blocks=blocks_path,
        attn=attn_path if first_attn is not None else "__none__", o_proj=o_proj or "__none__", mlp=mlp_path,
        down_proj=down, final_norm=final_norm, unembed=unembed, attn_out=a_out.split("+")[0],
        mlp_out=m_out.split("+")[0] if m_out else None, attn_extra=tuple(a_out.split("+")[1:]),
        mlp_extra=tuple(m_out.split("+")[1:]) if m_out else (), mixer_out=mixer_out, resid_in=resid_in,
        skip_layers=skipped,
        attn_norm=norms[0], mlp_norm=norms[1], mixers=tuple(sorted(mixer_paths)),
        n_heads=n_heads, n_heads_attr=next((a for a in N_HEADS_ATTRS if config_int(tcfg, a)), "num_attention_heads"),
        residual_scale_attr=scale_attr if isinstance(scale_attr, str) else None,
        residual_scale=scale_attr[0] if isinstance(scale_attr, tuple) else scale_attr if isinstance(scale_attr, float)
        else None, mlp_residual_scale=scale_attr[1] if isinstance(scale_attr, tuple) and
        abs(scale_attr[1] - scale_attr[0]) > 1e-6 else None, attention_layers=tuple(attention_layers),
        logit_scale_attr=logit_attrs[0], logit_divisor_attr=logit_attrs[1], softcap_attr=logit_attrs[2],
        sinks=any("sink" in n for b in blocks for n, _ in b.named_parameters()), moe=moe,
        notes="inferred from the module tree",
    )
    return row


def _mixer_path(block, run, hidden: int) -> str:
    for name, child in block.named_children():
        out = run.outputs.get(child)
        if _is_norm(child) or out is None or out.shape[-1] != hidden or any(w in name for w in MLP_WORDS):
            continue
        if "dropout" in name or "act" in type(child).__name__.lower():
            continue
        return name
    raise UnsupportedModelError(f"{type(block).__name__} has neither attention weights nor a token mixer")


def _mlp_path(block, attn_path: str) -> str | None:
    head = attn_path.split(".")[0]
    for name, child in block.named_children():
        cls = type(child).__name__.lower()
        if name == head or _is_norm(child):
            continue
        if name in MLP_WORDS or any(w in cls for w in ("mlp", "moe", "feedforward", "sparse", "expert")):
            return name
    return None


def _sub_block_outputs(model, block, run, hidden, attn_path, o_proj, mlp_path, down, tcfg, pre=None):
    """(shape, attn_out, mlp_out, (attn_norm, mlp_norm), residual scale attribute) that reproduce the block."""
    pre, post = (run.inputs[block] if pre is None else pre), run.outputs[block]
    named = {n: m for n, m in block.named_modules() if n and m in run.outputs
             and run.outputs[m].shape == post.shape}
    norms = {n: m for n, m in named.items() if _is_norm(m)}
    head = attn_path.split(".")[0]

    def rank(words):
        return sorted(named, key=lambda n: (0 if any(w in n for w in words) else 1, n.count("."), n))

    a_cands = [p for p in dict.fromkeys([head, attn_path, o_proj, *rank(("post_att", "post_self", "post_norm1",
                                                                         "attention", "attn", "operator"))])
               if p in named]
    m_cands = [p for p in dict.fromkeys([mlp_path, f"{mlp_path}.{down}" if mlp_path and down else None,
                                         *rank(("post_feedforward", "post_mlp", "post_norm2", "post_ffn",
                                                "mlp", "ffn", "fc2", "output"))]) if p in named]
    a_cands, m_cands = a_cands[:12], [None, *m_cands[:12]]
    scales = [(None, 1.0)] + [(a, float(getattr(tcfg, a))) for a in SCALE_ATTRS
                              if isinstance(getattr(tcfg, a, None), (int, float))]
    tol = 1e-4 * max(1.0, float(post.abs().max()))
    delta = post - pre
    for (attr, s), a in itertools.product(scales, a_cands):
        for m in m_cands:
            total = s * run.outputs[named[a]] + (0 if m is None else s * run.outputs[named[m]])
            if float((total - delta).abs().max()) <= tol:
                return _shape_name(a, m, attn_path, mlp_path), a, m, (None, None), attr
    for a, m in itertools.product(a_cands, m_cands):  # residual multipliers the config does not name
        scales = _fit_scales(run.outputs[named[a]], None if m is None else run.outputs[named[m]], delta, tol)
        if scales is not None:
            return _shape_name(a, m, attn_path, mlp_path), a, m, (None, None), scales
    found = _pair_search(run, named, pre, post, delta, tol, a_cands, m_cands, attn_path, mlp_path)
    if found is not None:
        return found
    for a, m in itertools.product(a_cands, m_cands[1:]):
        for n1, n2 in itertools.permutations(norms, 2):
            with torch.no_grad():
                dt = next(norms[n1].parameters(), torch.empty(0)).dtype
                mid = norms[n1]((pre + run.outputs[named[a]]).to(dt))
                out = norms[n2]((mid + run.outputs[named[m]].to(dt))).float()
            if float((out - post).abs().max()) <= tol:
                return "post_ln", a, m, (n1, n2), None
    raise UnsupportedModelError(f"no pair of sub-block outputs of {type(block).__name__} adds up to the block's "
                                "change of the residual stream")


def _fit_scales(a: torch.Tensor, m: torch.Tensor | None, delta: torch.Tensor, tol: float):
    """Least-squares multipliers ``(s_a, s_m)`` with ``s_a * a + s_m * m == delta`` within ``tol``, else ``None``."""
    cols = [a.flatten().double()] + ([] if m is None else [m.flatten().double()])
    x = torch.stack(cols, 1)
    try:
        coef = torch.linalg.lstsq(x, delta.flatten().double().unsqueeze(1)).solution[:, 0]
    except RuntimeError:
        return None
    if (coef <= 0).any() or float((x @ coef - delta.flatten().double()).abs().max()) > tol:
        return None
    sa = float(coef[0])
    sm = float(coef[1]) if m is not None else sa
    return sa, sm


def _pair_search(run, named, pre, post, delta, tol, a_cands, m_cands, attn_path, mlp_path):
    """Sub-blocks whose contribution is the sum of two modules (a mixer beside attention, a shared
    expert beside the MoE, per-layer inputs beside the MLP): pairs of direct children.

    Returns ``(shape, attn_out, mlp_out, norms, scale)`` with ``+``-joined paths, or ``None``.
    """
    direct = [n for n in named if "." not in n]
    outs = {n: run.outputs[named[n]] for n in named}

    def options(cands):
        singles = [(c,) for c in cands if c]
        pairs = [(x, y) for x, y in itertools.combinations([c for c in cands if c in direct], 2)]
        return singles + pairs

    for a in options(a_cands):
        total_a = sum(outs[x] for x in a)
        for m in [None, *options(m_cands)]:
            if m is not None and set(m) & set(a):
                continue
            total = total_a + (0 if m is None else sum(outs[x] for x in m))
            s = float((total * delta).sum() / (total * total).sum().clamp_min(1e-30))
            if s > 0 and float((s * total - delta).abs().max()) <= tol:
                scale = None if abs(s - 1.0) < 1e-6 else s
                return ("pre_norm", "+".join(a), None if m is None else "+".join(m), (None, None), scale)
    return None


def _shape_name(a: str, m: str | None, attn_path: str, mlp_path: str | None) -> str:
    if "post" in a or (m and "post" in m):
        return "post_norm"
    return "pre_norm"


def _chain_after(model, blocks, run) -> str | None:
    """The outermost modules that ran after the last block, in order, joined with ``+``."""
    if blocks[-1] not in run.order:
        return None
    after = run.order[len(run.order) - run.order[::-1].index(blocks[-1]):]
    holders = {m for m in model.modules() if any(b is blocks[-1] for b in m.modules())}
    names = {m: n for n, m in model.named_modules()}
    chain = [m for m in after if m not in holders and m in names]
    chain = [m for m in chain if not any(m is not o and any(c is m for c in o.modules()) for o in chain)]
    return "+".join(names[m] for m in dict.fromkeys(chain)) or None


def _head(model, blocks, run, tcfg):
    """(final norm path or None, unembedding path, (logit scale attr, logit divisor attr, softcap attr))."""
    last = run.outputs[blocks[-1]]
    inside = {m for b in blocks for m in b.modules()}
    norms = [None] + [n for n, m in model.named_modules() if _is_norm(m) and m not in inside
                      and not any(w in n.lower() for w in SKIP_TOWERS) and m in run.outputs]
    emb = model.get_output_embeddings()
    if emb is None:
        raise UnsupportedModelError(f"{type(model).__name__} has no language-model head (no output embeddings)")
    path = _rel(emb, model)
    heads = [path]
    parts = path.split(".")
    heads += [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]
    scales = [(None, None)] + [pair for pair in LOGIT_SCALES
                               if any(isinstance(getattr(tcfg, a, None), (int, float)) for a in pair if a)]
    cap_attr = next((a for a in SOFTCAP_ATTRS if isinstance(getattr(tcfg, a, None), (int, float))), None)
    cap = getattr(tcfg, cap_attr) if cap_attr else None
    chain = _chain_after(model, blocks, run)
    candidates = list(itertools.product(norms, heads))
    if chain and "+" in chain:
        candidates.append((None, chain))
    for (norm, head), (mul, div) in itertools.product(candidates, scales):
        with torch.no_grad():
            try:
                x = last if norm is None else model.get_submodule(norm)(last.to(_dtype(model)))
                y = last.to(_dtype(model)) if norm is None else x
                for path in head.split("+"):
                    y = model.get_submodule(path)(y)
                    y = y if isinstance(y, torch.Tensor) else y[0]
            except Exception:  # noqa: BLE001 - not a head that takes this input
                continue
            y = y if isinstance(y, torch.Tensor) else None
            if y is None or run.logits is None or y.shape != run.logits.shape:
                continue
            y = y.float() * (float(getattr(tcfg, mul)) if mul else 1.0) / (float(getattr(tcfg, div)) if div else 1.0)
            if cap:
                y = torch.tanh(y / cap) * cap
        if float((y - run.logits).abs().max()) <= 1e-4 * max(1.0, float(run.logits.abs().max())):
            return norm, head, (mul, div, cap_attr)
    raise UnsupportedModelError("no final norm and unembedding turn the last block's output into the model's logits")


def _dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype
