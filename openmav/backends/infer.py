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
like any declared row.  Where the search finds none because the model is not one residual stream
through blocks run once each, :mod:`openmav.backends.refusals` says what it does instead.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import torch

from ..errors import UnsupportedModelError
from .adapters import FamilyAdapter, find_module
from .parts import N_HEADS_ATTRS, N_LAYERS_ATTRS, SOFTCAP_ATTRS, ModelParts, config_int, push_hook, text_config
from .probe import probe_forward
from .refusals import (refuse_depth, refuse_depth_states, refuse_head, refuse_loops, refuse_parallel_lists,
                       refuse_projection, refuse_streams)

SKIP_TOWERS = ("vision", "visual", "image", "audio", "speech", "vq", "patch", "img", "mtp")
O_NAMES = ("o_proj", "out_proj", "dense", "c_proj", "wo", "out_lin", "o", "Wo", "proj", "linear_out", "out")
DOWN_NAMES = ("down_proj", "c_proj", "fc2", "fc_out", "dense_4h_to_h", "w2", "wo", "Wo", "lin2", "fc_2", "down",
              "dense", "out_proj", "linear_2", "c_proj2")
MLP_WORDS = ("mlp", "feed_forward", "ffn", "moe", "ff", "experts", "feedforward")
SCALE_ATTRS = ("residual_multiplier",)
LOGIT_SCALES = (("logit_scale", None), (None, "logits_scaling"), (None, "output_multiplier_scale"),
                (None, "logits_mup_width_multiplier"), ("logits_mup_width_multiplier", None),
                ("lm_head_multiplier", None))


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
    every = [(n, m) for n, m in lists if not any(w in n.lower() for w in SKIP_TOWERS)]
    if n_layers:
        lists = [(n, m) for n, m in lists if len(m) == n_layers]
    text = [(n, m) for n, m in lists if not any(w in n.lower() for w in SKIP_TOWERS)]
    if not text:
        if n_layers:  # the stack loops, or a block holds several layers: say which
            refuse_depth(model, n_layers, every)
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
        norms = [c for b in blocks for c in b.children() if _is_norm(c)]
        run = probe_forward(model, list(model.modules()), inputs_of=[*blocks, *norms])
    except Exception as exc:
        raise UnsupportedModelError(f"the probe forward failed ({type(exc).__name__})") from exc
    skipped = tuple(i for i, b in enumerate(blocks) if b not in run.outputs)
    if len(skipped) == len(blocks) or (skipped and skipped[0] == 0):
        raise UnsupportedModelError(f"the blocks {blocks_path!r} did not run on text input")
    ran = [b for b in blocks if b in run.outputs]  # Mllama's cross-attention layers skip text-only input
    hidden = hidden or run.outputs[ran[0]].shape[-1]
    refuse_streams(ran[0], run, config_int(tcfg, "hidden_size", "n_embd", "d_model"))
    refuse_loops(blocks, run, blocks_path)
    refuse_parallel_lists(model, blocks_path, blocks, run)
    attn_paths, mixer_paths, attention_layers = set(), set(), []
    first_attn, n_heads = None, None
    for i, b in enumerate(blocks):
        if i in skipped:
            continue
        seq = run.ids.shape[1]  # attention weights are [b, h, q, k]; a linear attention's state [b, h, d, d] is not
        pattern = next((m for m in b.modules() if m in run.weights and m is not b
                        and tuple(run.weights[m].shape[-2:]) == (seq, seq)), None)
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
    if first_attn is not None and o_proj is None:
        refuse_projection(ref, attn_path)
    mlp_path = _mlp_path(ref, attn_path)
    down = None
    if mlp_path:
        mlp = ref.get_submodule(mlp_path)
        moe = any("expert" in n for n, _ in mlp.named_modules())
        down = None if moe else _pick_linear(mlp, "", hidden, DOWN_NAMES)
    else:
        moe = False
    resid_in = None
    gates = _gate_search(model, ref, run)
    try:
        if gates is not None:  # shares that join through gate modules (per-dimension factors on both sides)
            shape, a_out, m_out, norms, scale_attr = "gated", gates[0], gates[2], (None, None), None
        else:
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
            refuse_depth_states(model, ran[-1], run.ids, hidden)
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
        residual_scale_attr=scale_attr if isinstance(scale_attr, str) and scale_attr != "fitted" else None,
        residual_scale=scale_attr[0] if isinstance(scale_attr, tuple) else scale_attr if isinstance(scale_attr, float)
        else None, mlp_residual_scale=scale_attr[1] if isinstance(scale_attr, tuple) and
        abs(scale_attr[1] - scale_attr[0]) > 1e-6 else None, attention_layers=tuple(attention_layers),
        logit_scale_attr=logit_attrs[0], logit_divisor_attr=logit_attrs[1], softcap_attr=logit_attrs[2],
        logit_scale=logit_attrs[3], attn_gate=gates[1] if gates else None, mlp_gate=gates[3] if gates else None,
        sinks=any("sink" in n for b in blocks for n, _ in b.named_parameters()), moe=moe,
        notes="inferred from the module tree",
    )
    row = _regroup(row, ref, run)
    return _fit_multipliers(model, row, run)


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
    found = _mid_norm_search(run, named, norms, pre, post, tol, a_cands, m_cands)
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


def _lstsq(cols: list, target: torch.Tensor, tol: float):
    """Least-squares coefficients with ``sum c_i cols_i == target`` within ``tol``, else ``None``."""
    x = torch.stack([c.flatten().double() for c in cols], 1)
    y = target.flatten().double()
    try:
        coef = torch.linalg.lstsq(x, y.unsqueeze(1)).solution[:, 0]
    except RuntimeError:
        return None
    if not torch.isfinite(coef).all() or float((x @ coef - y).abs().max()) > tol:
        return None
    return [float(c) for c in coef]


def _pair_search(run, named, pre, post, delta, tol, a_cands, m_cands, attn_path, mlp_path):
    """Sub-blocks whose contribution is the sum of two modules (a mixer beside attention, a shared
    expert beside the MoE, per-layer inputs beside the MLP), each with a multiplier of its own
    (Falcon-H1's attention and mixer multipliers), and a residual that decays where a share joins
    it (depth-scaled adds): pairs of direct children, multipliers by least squares.

    Returns ``(shape, attn_out, mlp_out, norms, "fitted")`` with ``+``-joined paths, or ``None``;
    the multipliers themselves are read per layer on a pushed forward (:func:`_fit_multipliers`).
    """
    direct = [n for n in named if "." not in n]
    outs = {n: run.outputs[named[n]] for n in named}

    def options(cands):
        singles = [(c,) for c in cands if c]
        pairs = [(x, y) for x, y in itertools.combinations([c for c in cands if c in direct], 2)]
        return singles + pairs

    for keep in (False, True):
        for a in options(a_cands):
            for m in [None, *options(m_cands)]:
                if m is not None and set(m) & set(a):
                    continue
                cols = [outs[x] for x in (*a, *(m or ()))]
                coef = _lstsq(cols + [pre] if keep else cols, post if keep else delta, tol)
                if coef is not None and all(c > MIN_SHARE for c in coef):
                    return (_shape_name(a[0], m and m[0], attn_path, mlp_path), "+".join(a),
                            None if m is None else "+".join(m), (None, None), "fitted")
    return None


def _gate_search(model, block, run):
    """``(attn_out, attn_gate, mlp_out, mlp_gate)`` where the block's shares join through two gate modules, each
    called as ``gate(branch, residual)`` on residual-shaped tensors (Ergo, ZAYA); ``None`` otherwise.  The
    branch is the module whose output is the gate's first argument."""
    post = run.outputs.get(block)
    args = {}

    def keep(mod, a, kw):
        tensors = [x for x in (*a, *kw.values()) if isinstance(x, torch.Tensor)]
        if len(tensors) >= 2 and all(t.shape == post.shape for t in tensors[:2]):
            args[mod] = tensors[0].detach().float().clone()

    # a gate holds per-dimension weights of its own and no sub-modules (BLOOM's attention and MLP take the
    # residual too, but are projections)
    children = [c for c in block.children() if c in run.outputs and run.outputs[c].shape == post.shape
                and next(c.children(), None) is None and next(c.parameters(recurse=False), None) is not None]
    if len(children) < 2:
        return None
    handles = [c.register_forward_pre_hook(keep, with_kwargs=True) for c in children]
    try:
        probe_forward(model, output_attentions=False, ids=run.ids)
    except Exception:  # noqa: BLE001 - not a block of gates
        return None
    finally:
        for h in handles:
            h.remove()
    gates = sorted((c for c in children if c in args and c in run.order), key=run.order.index)
    if len(gates) != 2:
        return None
    names = {m: n for n, m in block.named_modules()}

    def source(t):  # the module of the block whose output is the branch
        tol = 1e-6 * max(1.0, float(t.abs().max()))
        for name, m in block.named_modules():
            out = run.outputs.get(m)
            if name and m not in gates and out is not None and out.shape == t.shape and \
                    float((out - t).abs().max()) <= tol:
                return name
        return None

    branches = [source(args[g]) for g in gates]
    if None in branches:
        return None
    return branches[0], names[gates[0]], branches[1], names[gates[1]]


def _mid_norm_search(run, named, norms, pre, post, tol, a_cands, m_cands):
    """A residual normed between the two sub-blocks (MiniMax): a norm of the block whose input is
    ``k_a * pre + s_a * attn`` and whose output, times ``k_m``, plus ``s_m * mlp`` is the block's output
    (multipliers by least squares, then per layer on the pushed forward).  ``(shape, attn_out, mlp_out,
    (attn_norm, None), "fitted")`` or ``None``."""
    for n, norm in norms.items():
        x, y = run.inputs.get(norm), run.outputs.get(norm)
        if x is None or x.shape != pre.shape:
            continue
        for a in a_cands:
            if a == n or _lstsq([pre, run.outputs[named[a]]], x, tol) is None:
                continue
            for m in m_cands[1:]:
                coef = _lstsq([y, run.outputs[named[m]]], post, tol)
                if coef is not None and all(c > MIN_SHARE for c in coef):
                    return "mid_norm", a, m, (n, None), "fitted"
    return None


def _regroup(row: FamilyAdapter, block, run) -> FamilyAdapter:
    """A module beside the attention or the MLP joins the group it runs with: the attention's if it
    finishes before the MLP starts (Falcon-H1's parallel mixer), else the MLP's (a shared expert,
    per-layer inputs)."""
    if not row.mlp or row.mlp_out is None or not (row.attn_extra or row.mlp_extra):
        return row
    mlp = block.get_submodule(row.mlp) if _has(block, row.mlp) else None
    if mlp is None or not any(m in run.order for m in mlp.modules()):
        return row
    start = min(run.order.index(m) for m in mlp.modules() if m in run.order)
    extras = [*row.attn_extra, *row.mlp_extra, *([row.mlp_out] if row.mlp_out != row.mlp and
                                                 row.mlp_out.split(".")[0] != row.mlp else [])]
    early = {p for p in extras if _has(block, p) and block.get_submodule(p) in run.order
             and run.order.index(block.get_submodule(p)) < start}
    if not early or row.mlp_out not in early and not early & set(row.mlp_extra):
        return row
    mlp_group = [p for p in (row.mlp_out, *row.mlp_extra) if p not in early]
    if not mlp_group:
        return row
    attn_extra = tuple(dict.fromkeys([*row.attn_extra, *sorted(early & {row.mlp_out, *row.mlp_extra})]))
    return replace(row, attn_extra=attn_extra, mlp_out=mlp_group[0], mlp_extra=tuple(mlp_group[1:]))


def _has(block, path: str) -> bool:
    try:
        block.get_submodule(path)
        return True
    except AttributeError:
        return False


SNAP = 1e-5  # a fitted multiplier this close to one is one
MIN_SHARE = 1e-3  # a share that joins the residual at less than this is not a share (a column least squares zeroed)


def _clean(value: float) -> float:
    return 1.0 if abs(value - 1.0) <= SNAP else float(f"{value:.7g}")


def _fit_multipliers(model, row: FamilyAdapter, run, again: bool = True) -> FamilyAdapter:
    """The row's multipliers, read per layer on a forward in which every share is pushed by a random
    vector the block's size (so each is read at a size of its own, not at the size it has at random
    initialisation): per layer, the least-squares coefficients of the block's input and of each
    share in the block's output (the residual's keep factor and the shares' multipliers), and the
    factor between a block's output and what comes next (the stream scale).  Rows with norms between
    the sums (post-LN) keep what the search found; anything not fitted is left to the verification."""
    try:
        parts = ModelParts.resolve(model, row, inferred=True)
    except UnsupportedModelError:
        return row
    layers = [i for i in range(parts.n_layers) if i not in parts.skipped_layers]
    gen = torch.Generator().manual_seed(7)
    pushes, n = {}, run.ids.shape[1]
    loose = {i: parts.loose_children(i) for i in layers}
    for i in layers:
        post = run.outputs.get(parts.blocks[i])
        if post is None or post.dim() != 3:
            return row
        size = float(post.pow(2).mean().sqrt()) or 1.0
        for m in (*parts.shares(i), *loose[i]):
            if m not in pushes:
                pushes[m] = torch.randn(1, n, post.shape[-1], generator=gen) * size
    final_in = parts.final_norm if parts.final_norm is not None else parts.unembed
    firsts = [m for b in parts.blocks for m in [find_module(b, row.resid_in)] if m is not None]
    handles = [m.register_forward_hook(push_hook(v)) for m, v in pushes.items()]
    try:
        mids = [m for m in parts.attn_norm if m is not None]
        pushed = probe_forward(model, [*parts.blocks, *firsts, *pushes, *mids],
                               inputs_of=[*parts.blocks, final_in, *mids], output_attentions=False, ids=run.ids)
    except Exception:  # noqa: BLE001 - the verification will say what fails
        return row
    finally:
        for h in handles:
            h.remove()
    fitted = {"attn_keeps": [], "attn_scales": [], "mlp_keeps": [], "mlp_scales": [], "extras": []}
    mid_norm = row.attn_norm is not None and row.mlp_norm is None and not (row.attn_gate or row.mlp_gate)
    plain = parts.compose == "additive" and all(x is None for x in parts.attn_norm + parts.mlp_norm) \
        and not (row.attn_gate or row.mlp_gate)
    for i in layers if plain or mid_norm else ():
        found = _fit_layer(parts, pushed, i, loose[i], row.resid_in)
        if found is None:
            return row  # a share that does not join, or a residual that does not pass: the verification says which
        if isinstance(found, list):  # a part the search missed (small in the model's own forward)
            if not again:
                return row
            block = parts.blocks[i]
            names = {m: n for n, m in block.named_children()}
            grown = replace(row, mlp_extra=(*row.mlp_extra, *(names[m] for m in found))) \
                if row.mlp_out is not None else replace(row, attn_extra=(*row.attn_extra, *(names[m] for m in found)))
            return _fit_multipliers(model, _regroup(grown, block, run), run, again=False)
        for key, value in found.items():
            fitted[key].append(value)
    changes = {}
    if fitted["attn_scales"]:
        changes = _compress(row, parts, layers, fitted)
    stream = []
    for a, b in zip(layers, layers[1:] + [None]):
        out = pushed.outputs.get(parts.blocks[a])
        nxt = pushed.inputs.get(parts.blocks[b]) if b is not None else pushed.inputs.get(final_in)
        if out is None or nxt is None or nxt.shape != out.shape:
            stream.append(1.0)
            continue
        c = _lstsq([out], nxt, 1e-4 * max(1.0, float(nxt.abs().max())))
        stream.append(_clean(c[0]) if c is not None else 1.0)
    if any(c != 1.0 for c in stream):
        full = [1.0] * parts.n_layers
        for i, c in zip(layers, stream):
            full[i] = c
        changes["stream_scales"] = tuple(full)
    return replace(row, **changes) if changes else row


def _fit_layer(parts: ModelParts, pushed, i: int, loose: list, resid_in: str | None):
    """Layer ``i``'s multipliers on the pushed forward, by least squares: ``{"attn_keeps", "attn_scales",
    "mlp_keeps", "mlp_scales", "extras"}``; a list of unread children that join the residual; or ``None``.

    Without a norm between the sub-blocks, ``post = k * pre + sum s_j * share_j`` (one keep factor: where the
    residual decays at both adds, the attention's multiplier is its share of the block's output); with one
    (MiniMax), the norm's input is ``k_a * pre + s_a * attn`` and ``post = k_m * norm(.) + s_m * mlp``."""
    block = parts.blocks[i]
    first = find_module(block, resid_in)
    pre = pushed.outputs.get(first) if first is not None and first in pushed.outputs else pushed.inputs.get(block)
    post = pushed.outputs.get(block)
    a_mods = [parts.attn_out[i], *parts.attn_extra[i]]
    m_mods = [*([parts.mlp_out[i]] if parts.mlp_out[i] is not None else []), *parts.mlp_extra[i]]
    cols = [pushed.outputs.get(m) for m in a_mods + m_mods]
    if pre is None or post is None or pre.shape != post.shape or any(c is None or c.shape != post.shape
                                                                     for c in cols):
        return None
    a_cols, m_cols = cols[:len(a_mods)], cols[len(a_mods):]
    norm = parts.attn_norm[i]
    if norm is not None:
        x, y = pushed.inputs.get(norm), pushed.outputs.get(norm)
        if x is None or y is None:
            return None
        ca = _lstsq([pre, *a_cols], x, 1e-4 * max(1.0, float(x.abs().max())))
        cm = _lstsq([y, *m_cols], post, 1e-4 * max(1.0, float(post.abs().max())))
        if ca is None or cm is None or any(c <= MIN_SHARE for c in (*ca, *cm[1:])):
            return None
        ca, cm = [_clean(c) for c in ca], [_clean(c) for c in cm]
        return {"attn_keeps": ca[0], "attn_scales": ca[1], "mlp_keeps": cm[0],
                "mlp_scales": cm[1] if m_cols else 1.0, "extras": (*ca[2:], *cm[2:])}
    others = [m for m in loose if m in pushed.outputs and pushed.outputs[m].shape == post.shape]
    coef = _lstsq([pre, *cols, *(pushed.outputs[m] for m in others)], post, 1e-4 * max(1.0, float(post.abs().max())))
    if coef is None:
        return None
    joined = [m for m, c in zip(others, coef[1 + len(cols):]) if abs(c) > SNAP]
    if joined:
        return joined
    if any(c <= MIN_SHARE for c in coef[:1 + len(cols)]):
        return None
    coef = [_clean(c) for c in coef[:1 + len(cols)]]
    n_a = len(a_mods)
    return {"attn_keeps": coef[0], "attn_scales": coef[1], "mlp_keeps": 1.0,
            "mlp_scales": coef[1 + n_a] if m_cols else coef[1], "extras": (*coef[2:1 + n_a], *coef[2 + n_a:])}


def _compress(row: FamilyAdapter, parts: ModelParts, layers: list, fitted: dict) -> dict:
    """The fitted multipliers as the row keeps them: one value where every layer has it, else per layer."""
    n = parts.n_layers

    def per_layer(values, default=1.0):
        full = [default] * n
        for i, v in zip(layers, values):
            full[i] = v
        return tuple(full)

    def same(values) -> bool:
        return all(abs(v - values[0]) <= SNAP * max(1.0, abs(values[0])) for v in values)

    changes = {}
    for key in ("attn_keeps", "mlp_keeps"):
        if any(k != 1.0 for k in fitted[key]):
            changes[key] = per_layer(fitted[key])
    a, m = fitted["attn_scales"], fitted["mlp_scales"]
    if same(a) and same(m):
        changes["residual_scale"] = None if a[0] == 1.0 else a[0]
        changes["mlp_residual_scale"] = None if same([a[0], m[0]]) else m[0]
        changes["residual_scale_attr"] = None
    else:
        changes["attn_scales"], changes["mlp_scales"] = per_layer(a), per_layer(m)
        changes["residual_scale"], changes["mlp_residual_scale"], changes["residual_scale_attr"] = None, None, None
    extras = fitted["extras"]
    if extras and extras[0] and all(len(e) == len(extras[0]) for e in extras) \
            and all(same([e[j] for e in extras]) for j in range(len(extras[0]))):
        changes["extra_scales"] = tuple(extras[0])
    return changes


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
        tol = 1e-4 * max(1.0, float(run.logits.abs().max()))
        if float((y - run.logits).abs().max()) <= tol:
            return norm, head, (mul, div, cap_attr, None)
        if not cap and mul is None and div is None:  # a logit multiplier no attribute names: by least squares
            c = _lstsq([y], run.logits, tol)
            if c is not None and c[0] > 0:
                return norm, head, (None, None, None, _clean(c[0]))
    refuse_head(model, blocks, run, tcfg)
    raise UnsupportedModelError("no final norm and unembedding turn the last block's output into the model's logits")


def _dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype
