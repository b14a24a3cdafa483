"""What a scan reads, decided before anything heavy is imported: layers, unit kinds, top-k, context,
the fixed histogram bins and the context kept around each hit."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Fixed histogram bins, by the power of two of |x|: one bin per octave for 2^-10 <= |x| < 2^14 on each side,
# one for |x| < 2^-10 (zero included), and an open bin at each end.  EDGES are the bins' boundaries in x
# (-2^14 ... -2^-10, 2^-10 ... 2^14); a negative x falls in the bin of its magnitude's octave.
LOW, HIGH = -10, 14
EDGES = np.concatenate([-(2.0 ** np.arange(HIGH, LOW - 1, -1)), 2.0 ** np.arange(LOW, HIGH + 1)])
N_BINS = len(EDGES) + 1
CENTER = N_BINS // 2  # the bin of |x| < 2^-10
BEFORE, AFTER = 10, 4  # context kept around each top-k hit
CONTEXT = BEFORE + 1 + AFTER
HEAD_FIELDS = ("entropy", "max_weight", "first_weight", "prev_token")


@dataclass(frozen=True)
class Plan:
    """What a scan reads: ``layers``, ``units`` (``neurons``, ``heads``), ``top_k``, ``context`` (tokens per window)."""

    layers: tuple[int, ...]
    units: tuple[str, ...]
    top_k: int
    context: int

    def groups(self, parts) -> list[tuple[str, int, int]]:
        """``(kind, layer, units)`` for every group this plan reads on ``parts`` (skipping parts a layer lacks)."""
        out = []
        for layer in self.layers:
            if "neurons" in self.units and neuron_module(parts, layer) is not None:
                out.append(("neuron", layer, neuron_width(parts, layer)))
            if "heads" in self.units and parts.o_proj[layer] is not None and parts.attn[layer] is not None:
                out.append(("head", layer, parts.n_heads))
            out.append(("resid", layer, 1))
        return out


def neuron_module(parts, layer: int):
    """The module whose input is layer ``layer``'s neurons (``None``: a mixture of experts or no MLP)."""
    return parts.down_proj[layer] if layer < len(parts.down_proj) else None


def neuron_width(parts, layer: int) -> int:
    module = neuron_module(parts, layer)
    if isinstance(getattr(module, "in_features", None), int):  # a Linear
        return int(module.in_features)
    weight = getattr(module, "weight", None)
    if weight is not None and weight.dim() == 2:  # GPT-2's Conv1D keeps [in, out]
        return int(weight.shape[0] if type(module).__name__ == "Conv1D" else weight.shape[1])
    raise ValueError(f"layer {layer}: cannot tell how many neurons {type(module).__name__} takes")


