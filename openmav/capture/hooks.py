"""Forward hooks that read (never change) what one forward pass computes.

:class:`CaptureHooks` is a context manager: hooks are attached on entry and removed
in ``finally`` on exit, whatever happens in between.  Reading a capture outside the
context raises :class:`~openmav.errors.OutsideContextError` at once.

Standard capture names (``b`` batch, ``p`` position, ``h`` head, ``q``/``k`` query/key, ``d`` model width):

- ``blocks.{l}.attn.pattern``   ``[b, h, q, k]``   eager attention probabilities
- ``blocks.{l}.attn.out``       ``[b, p, d]``      what the attention block (or a hybrid's mixer) adds to the
  residual, times the model's multiplier for it (``parts.share_scale``)
- ``blocks.{l}.mlp.out``        ``[b, p, d]``      what the MLP block adds to the residual, likewise
- ``blocks.{l}.resid_post``     ``[b, p, d]``      the residual stream after block ``l``, as the next block
  receives it (``parts.stream_scale``)
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from ..errors import OutsideContextError

# `ModelParts` in annotations names openmav.backends' class without importing it: the engine sits below
# model loading and never imports it, not even for type checking (the layers contract counts those too).


def first_output(output):
    """A module's main output: the first item of a tuple/list output (attention, blocks), else the output."""
    return output[0] if isinstance(output, (tuple, list)) else output


def _set_attn_implementation(model: torch.nn.Module, name: str) -> None:
    """``model.set_attn_implementation(name)``; for models that refuse to switch at run time
    (Falcon and others outside the attention-function registry), the configs' field is set."""
    try:
        model.set_attn_implementation(name)
    except (ValueError, ImportError, AttributeError):
        pass
    if getattr(model.config, "_attn_implementation", None) != name:
        for module in model.modules():
            config = getattr(module, "config", None)
            if config is not None and hasattr(config, "_attn_implementation"):
                config._attn_implementation = name


@contextmanager
def attention_implementation(model: torch.nn.Module, name: str | None):
    """Switch the model to attention implementation ``name`` (e.g. ``"eager"``) and back."""
    current = getattr(model.config, "_attn_implementation", None)
    if name is None or current == name:
        yield
        return
    _set_attn_implementation(model, name)
    try:
        yield
    finally:
        _set_attn_implementation(model, current)


class CaptureHooks:
    """Keeps, per layer, the last-position slices of one forward's activations.

    ``last_only`` keeps ``[.., -1, :]`` slices (the step loop); otherwise whole
    tensors are kept (``[b, p, d]``, patterns ``[b, h, q, k]``).  ``full_pattern``
    may be switched on for one forward (the prompt) to keep whole patterns.
    """

    def __init__(self, parts: "ModelParts", attention: bool = True, last_only: bool = True):
        self.parts = parts
        self.want_attention = attention
        self.last_only = last_only
        self.full_pattern = False
        n = parts.n_layers
        self.pattern: list[torch.Tensor | None] = [None] * n
        self.attn_out: list[torch.Tensor | None] = [None] * n
        self.mlp_out: list[torch.Tensor | None] = [None] * n
        # outputs of modules that join a sub-block's contribution (parts.attn_extra / mlp_extra)
        self.extra = {"attn_out": [[None] * len(e) for e in parts.attn_extra],
                      "mlp_out": [[None] * len(e) for e in parts.mlp_extra]}
        self.resid: list[torch.Tensor | None] = [None] * n
        self._handles: list = []
        self._active = False

    def _keep(self, tensor: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        # a copy: some blocks add to a sub-block's output in place after it returned (Falcon)
        if tensor.dim() == 2:  # [b * p, d], as OPT's MLP computes it; the step loop's batch is one
            tensor = tensor.unsqueeze(0)
        kept = tensor.select(1, -1) if self.last_only else tensor
        if isinstance(scale, tuple):  # per-dimension factors and offset (a gate module's)
            return kept * scale[0].to(kept.dtype) + scale[1].to(kept.dtype)
        return kept * scale if scale != 1.0 else kept.clone()

    def _store(self, slot: list, layer: int, attn_pattern: bool = False, scale: float = 1.0):
        if attn_pattern:
            def hook(module, args, output):
                weights = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
                if weights is not None:
                    slot[layer] = weights if (self.full_pattern or not self.last_only) else weights[:, :, -1]

            return hook
        keep = self._keep

        def hook(module, args, output):
            first = first_output(output)
            if isinstance(first, torch.Tensor):
                slot[layer] = keep(first, scale)

        return hook

    def __enter__(self) -> "CaptureHooks":
        p = self.parts
        try:
            for i in range(p.n_layers):
                if i in p.skipped_layers:
                    continue  # never runs on text-only input: the residual passes unchanged
                # the residual as the next block receives it (a model may rescale it between blocks)
                self._handles.append(p.blocks[i].register_forward_hook(self._store(self.resid, i,
                                                                                  scale=p.stream_scale(i))))
                if p.mlp_out[i] is not None:
                    self._handles.append(p.mlp_out[i].register_forward_hook(
                        self._store(self.mlp_out, i, scale=p.share_scale("mlp_out", i))))
                self._handles.append(p.attn_out[i].register_forward_hook(
                    self._store(self.attn_out, i, scale=p.share_scale("attn_out", i))))
                for name, mods in (("attn_out", p.attn_extra[i]), ("mlp_out", p.mlp_extra[i])):
                    for j, module in enumerate(mods):
                        scale = p.share_scale(name[:-4] + "_extra", i, j)
                        self._handles.append(module.register_forward_hook(self._store(self.extra[name][i], j,
                                                                                      scale=scale)))
                if self.want_attention and p.attn[i] is not None:
                    self._handles.append(p.attn[i].register_forward_hook(self._store(self.pattern, i, True)))
        except BaseException:
            self._remove()
            raise
        self._active = True
        return self

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._active = False

    def __exit__(self, *exc) -> None:
        self._remove()

    def _check(self, name: str) -> None:
        if not self._active:
            raise OutsideContextError(f"CaptureHooks.{name} is only valid inside `with CaptureHooks(...)`")

    def stacked(self, name: str) -> torch.Tensor:
        """One capture stacked over layers: ``resid``, ``attn_out`` or ``mlp_out``.

        A layer without an MLP (a state-space block) contributes zeros to ``mlp_out``.
        Attention patterns exist only for attention layers: read ``pattern`` directly.
        """
        return torch.stack(self.layers(name))

    def stacked_many(self, names: tuple[str, ...]) -> torch.Tensor:
        """Several captures in one stack: ``[len(names), layers, ...]`` (one copy for all of them)."""
        items = [t for name in names for t in self.layers(name)]
        out = torch.stack(items)
        return out.view(len(names), -1, *out.shape[1:])

    def layers(self, name: str) -> list[torch.Tensor]:
        """The per-layer tensors :meth:`stacked` stacks (not copied)."""
        self._check(name)
        items = list(getattr(self, name))
        for i in self.parts.skipped_layers:  # identity layers: the residual unchanged, nothing added
            if name == "resid" and i > 0:
                items[i] = items[i - 1]
            elif name != "resid":
                like = next((t for t in items if t is not None), None)
                items[i] = None if like is None else torch.zeros_like(like)
        if name in self.extra and any(any(x is not None for x in e) for e in self.extra[name]):
            items = [t if t is None else t + sum(x for x in self.extra[name][i] if x is not None)
                     for i, t in enumerate(items)]
        if name == "mlp_out":
            like = next((t for t in items if t is not None), None)
            ref = self.resid[0] if like is None else like
            items = [torch.zeros_like(ref) if t is None and self.parts.mlp_out[i] is None else t
                     for i, t in enumerate(items)]
        if any(t is None for t in items):
            missing = [i for i, t in enumerate(items) if t is None]
            raise RuntimeError(f"capture {name!r} is missing for layers {missing[:5]}; "
                               "was attention eager and the forward run inside the context?")
        return items
