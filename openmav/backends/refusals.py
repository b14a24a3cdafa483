"""What a model does that the engine cannot represent, said in one line: the refusals of inference.

The engine reads one residual stream that passes through a list of blocks, each run once and in
order, each adding an attention (or another mixer) and an MLP to it, and a head that reads that
stream.  When :mod:`openmav.backends.infer` finds no row for a model, the functions here look at
its probe forward (:mod:`openmav.backends.probe`) for the reason, and raise
:class:`~openmav.errors.UnsupportedModelError` saying what the model does instead:

- :func:`refuse_streams`: the residual is several streams (hyper-connections, AltUp);
- :func:`refuse_loops`: blocks that run more than once in one forward (a looped or recurrent stack);
- :func:`refuse_depth`: no list of blocks of the configured depth, because the stack loops or each
  block holds several attention sub-layers;
- :func:`refuse_parallel_lists`: a layer's parts kept in parallel lists, with no module per layer;
- :func:`refuse_projection`: attention whose heads meet no single output projection;
- :func:`refuse_depth_states`: blocks that also read the states of earlier blocks (attention residuals);
- :func:`refuse_head`: a head that reads something else than the blocks' residual (more positions,
  positions first, streams side by side).

Each returns quietly when it finds nothing to say, and the caller raises its own, plainer, reason.
"""

from __future__ import annotations

import inspect

import torch

from ..errors import UnsupportedModelError
from .parts import _ranges
from .probe import probe_forward

ENGINE = "the engine reads one residual stream, with one norm and one lens per layer"


def _shape(t) -> str:
    return "[" + ", ".join(str(int(s)) for s in t.shape) + "]"


def refuse_streams(block, run, width: int | None = None) -> None:
    """Blocks whose residual is several streams: ``[b, p, n, d]`` (hyper-connections), ``[n, b, p, d]``
    (AltUp), or ``n`` streams of the model's width side by side ``[b, p, n * d]``."""
    out = run.outputs.get(block)
    if out is None:
        return
    batch, seq = run.ids.shape
    n = None
    if out.dim() == 4 and tuple(out.shape[:2]) == (batch, seq):
        n = int(out.shape[2])
    elif out.dim() == 4 and tuple(out.shape[1:3]) == (batch, seq):
        n = int(out.shape[0])
    elif out.dim() == 4:
        n = int(out.shape[-2])
    elif out.dim() == 3 and width and out.shape[-1] > width and out.shape[-1] % width == 0:
        n = int(out.shape[-1] // width)
    if not n:
        return
    if any("altup" in name.lower() for name, _ in block.named_children()):
        how = ("AltUp: each block runs on one of them, predicts the others from it and corrects them, and the "
               "head averages them all")
    else:
        how = "hyper-connections, mixed by learned weights in every block"
    raise UnsupportedModelError(f"{type(block).__name__} carries {n} residual streams {_shape(out)} ({how}); "
                                f"{ENGINE}")


def refuse_loops(blocks, run, path: str) -> None:
    """Blocks that ran more than once in the probe forward: a stack that goes through them again."""
    calls = [run.order.count(b) for b in blocks]
    looped = [i for i, c in enumerate(calls) if c > 1]
    if not looped:
        return
    times = " or ".join(str(c) for c in sorted({calls[i] for i in looped}))
    which, verb = (f"block {looped[0]}", "runs") if len(looped) == 1 else (f"blocks {_ranges(looped)}", "run")
    raise UnsupportedModelError(
        f"{which} of {path} ({type(blocks[looped[0]]).__name__}) {verb} {times} times in one forward: a looped stack "
        "that goes through the same blocks again, where the engine reads each block once, in order")


def refuse_depth(model, n_layers: int, lists: list) -> None:
    """Why no list of ``n_layers`` blocks exists, from one probe forward over the candidate ``lists``
    (``(path, ModuleList)``): blocks run several times (a recurrent stack), or each block holds several
    attention sub-layers."""
    blocks = [b for _, lst in lists for b in lst]
    if not blocks:
        return
    try:
        run = probe_forward(model, list(model.modules()))
    except Exception:  # noqa: BLE001 - nothing to say beyond the plain reason
        return
    looped = [(path, run.order.count(lst[0])) for path, lst in lists if run.order.count(lst[0]) > 1]
    if looped:
        runs = "; ".join(f"each block of {path} {c} times" for path, c in looped)
        raise UnsupportedModelError(
            f"its blocks run several times in one forward ({runs}; the config counts {n_layers} layers, one per "
            "run): a looped or recurrent stack, where the engine reads each block once, in order")
    seq = run.ids.shape[1]
    for path, lst in sorted(lists, key=lambda pl: -len(pl[1])):
        inner = [m for m in lst[0].modules() if m is not lst[0] and m in run.weights
                 and tuple(run.weights[m].shape[-2:]) == (seq, seq)]
        outer = [m for m in inner if not any(o is not m and any(c is m for c in o.modules()) for o in inner)]
        if len(outer) > 1:
            names = {m: n for n, m in lst[0].named_modules()}
            raise UnsupportedModelError(
                f"each block of {path} ({type(lst[0]).__name__}) holds {len(outer)} attention sub-layers "
                f"({', '.join(names[m] for m in outer)}) that add to the residual in turn, where the engine reads "
                f"one attention per block (the config counts {n_layers} layers, {len(lst)} blocks)")


def refuse_parallel_lists(model, path: str, blocks, run) -> None:
    """Entries of the block list that are attention modules themselves, beside other lists of the same
    length (norms, feed-forwards): a layer's parts in parallel lists, with no module per layer."""
    if blocks[0] not in run.weights or any(m in run.weights for m in blocks[0].modules() if m is not blocks[0]):
        return  # a block that returns its attention's weights holds that attention: a block, not a list entry
    parent_path, _, _ = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    siblings = [name for name, m in parent.named_children()
                if isinstance(m, torch.nn.ModuleList) and len(m) == len(blocks)]
    if len(siblings) < 3:
        return
    prefix = f"{parent_path}." if parent_path else ""
    raise UnsupportedModelError(
        f"{type(parent).__name__} keeps each layer's parts in parallel lists "
        f"({', '.join(prefix + s for s in siblings)}) with no module per layer: the residual after a layer is "
        "no module's output, where the engine reads a block per layer")


def refuse_projection(block, attn_path: str) -> None:
    """Attention whose heads meet no single linear back to the residual width (a mixture of attention heads)."""
    head = attn_path.split(".")[0]
    attn = block.get_submodule(head)
    experts = [n for n, _ in attn.named_modules() if "expert" in n.split(".")[-1].lower()]
    if experts:
        raise UnsupportedModelError(
            f"{type(attn).__name__} routes each token's query and output projections to experts ({head}."
            f"{experts[0]}: a mixture of attention heads), so a head's slot holds a different expert for each "
            "token and no module's input is the heads' outputs side by side: attention without one output "
            "projection, which reading and ablating heads need")
    raise UnsupportedModelError(f"no linear inside {head} ({type(attn).__name__}) maps the heads' outputs back to "
                                "the residual width: attention without one output projection")


def refuse_depth_states(model, block, ids: torch.Tensor, width: int | None) -> None:
    """A block that is also given a stack of earlier states ``[b, p, k, d]`` (attention residuals)."""
    seen = {}
    try:
        params = list(inspect.signature(block.forward).parameters)
    except (TypeError, ValueError):
        params = []

    def keep(module, args, kwargs):
        named = [(params[i] if i < len(params) else f"argument {i}", a) for i, a in enumerate(args)]
        for name, value in [*named[1:], *kwargs.items()]:
            if isinstance(value, torch.Tensor) and value.dim() == 4 and tuple(value.shape[:2]) == tuple(ids.shape) \
                    and (width is None or value.shape[-1] == width):
                seen[name] = value.shape

    handle = block.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        probe_forward(model, output_attentions=False, ids=ids)
    except Exception:  # noqa: BLE001 - nothing to say beyond the plain reason
        return
    finally:
        handle.remove()
    if not seen:
        return
    name, shape = next(iter(seen.items()))
    raise UnsupportedModelError(
        f"{type(block).__name__} reads, beside the residual, the states kept at earlier blocks ({name} "
        f"[{', '.join(str(int(s)) for s in shape)}]: {shape[2]} of them) and mixes them into what it computes by "
        "a learned attention over depth (attention residuals), so what a block receives is not the previous "
        f"block's output alone: several residual streams, where {ENGINE}")


def refuse_head(model, blocks, run, config) -> None:
    """A head that reads something else than the last block's residual: more or fewer positions (prompt
    positions the model adds, streams along the positions), positions first, or a wider residual."""
    emb = model.get_output_embeddings()
    last = run.outputs.get(blocks[-1])
    if emb is None or last is None:
        return
    try:
        seen = probe_forward(model, [], inputs_of=[emb], output_attentions=False, ids=run.ids)
    except Exception:  # noqa: BLE001
        return
    head_in = seen.inputs.get(emb)
    if head_in is None:
        return
    batch, seq = run.ids.shape
    if last.dim() == 3 and tuple(last.shape[:2]) == (seq, batch) and seq != batch:
        both = " and, with attn_type 'bi', every position attends to later ones too" \
            if getattr(config, "attn_type", None) == "bi" else ""
        raise UnsupportedModelError(
            f"the blocks keep positions first ({_shape(last)} where the head reads {_shape(head_in)}){both}: not a "
            "left-to-right stack of [batch, positions, width] residuals that the engine can step through")
    width = last.shape[-1]
    if last.dim() == 3 and head_in.shape[-1] == width and last.shape[1] > seq:
        extra = int(last.shape[1]) - seq
        if extra % seq == 0 and (head_in.dim() == 4 or head_in.shape[-2] != seq):
            k = extra // seq + 1
            raise UnsupportedModelError(
                f"the blocks carry {k} residual streams side by side along the positions ({last.shape[1]} positions "
                f"for {seq} tokens{_ngram(config)}), and the head reads {_shape(head_in)} of them, where {ENGINE}")
        raise UnsupportedModelError(
            f"the blocks run on {last.shape[1]} positions for {seq} tokens: the model adds {extra} positions of its "
            "own before the first block and drops them before the head, so residuals and attention rows hold "
            "positions no token stands for")
    if head_in.shape[-1] > width and head_in.shape[-1] % width == 0:
        k = int(head_in.shape[-1] // width)
        raise UnsupportedModelError(
            f"the head reads {head_in.shape[-1]} features where the blocks pass on {width}: {k} residual streams side "
            f"by side ({k} x {width}), each block adding to them in turn, where {ENGINE}")


def _ngram(config) -> str:
    n = getattr(config, "ngram", None)
    return f": the main stream and {n} n-gram predicting streams" if isinstance(n, int) and n > 0 else ""
