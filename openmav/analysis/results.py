"""Plain result records of the extraction API (numpy arrays, token text); no model inside."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .stats import AttentionStats, head_statistics

# names the original Show Me Your Attention code used for the same fields
_ALIASES = {"attention_weights": "attention", "attentions": "attention", "input_ids": "token_ids"}


@dataclass
class Activations:
    """One prompt's forward pass.

    - ``attention``: one ``[1, heads, seq, seq]`` array per layer (layers 0..L-1)
    - ``hidden_states``: ``[1, seq, d]`` per layer boundary (embeddings first, L+1 arrays), or empty
    - ``logits``: ``[1, seq, vocab]`` for a causal LM when kept, else ``None`` (encoders have none)
    - ``last_logits``: ``[vocab]`` at the last position for a causal LM, else ``None``
    - ``mlp_mean``: per layer, the MLP hidden neurons' mean over positions ``[d_mlp]`` (comparisons)
    - ``neurons``: ``{layer: [seq, d_mlp]}`` MLP hidden neurons for the layers asked for
    """

    prompt: str
    tokens: list[str]
    token_ids: np.ndarray
    attention: list[np.ndarray]
    hidden_states: list[np.ndarray] = field(default_factory=list)
    logits: np.ndarray | None = None
    last_logits: np.ndarray | None = None
    mlp_mean: list[np.ndarray] | None = None
    neurons: dict[int, np.ndarray] | None = None
    causal: bool = True

    def __getitem__(self, key: str):
        return getattr(self, _ALIASES.get(key, key))

    def keys(self):
        return ["prompt", "tokens", "token_ids", "attention", "hidden_states", "logits", "last_logits"]

    @property
    def n_layers(self) -> int:
        return len(self.attention)

    def attention_array(self) -> np.ndarray:
        """All layers stacked: ``[L, heads, seq, seq]``."""
        return np.stack([a[0] for a in self.attention])

    def stats(self, threshold: float = 0.01) -> AttentionStats:
        import torch

        values = head_statistics(torch.from_numpy(self.attention_array()), self.causal, threshold)
        return AttentionStats(self.prompt, {k: v.numpy() for k, v in values.items()}, threshold)

    def _repr_html_(self) -> str:
        from .notebook import table_html

        shapes = [["tokens", len(self.tokens)], ["layers", self.n_layers],
                  ["heads", self.attention[0].shape[1]],
                  ["logits", "absent" if self.logits is None else str(self.logits.shape)]]
        return f"<p>{' '.join(self.tokens)}</p>" + table_html(["field", "value"], shapes, repr(self.prompt))


@dataclass
class NeuronActivations:
    """MLP hidden neurons of one layer ``mlp [seq, d_mlp]`` and, by option, the residual ``[seq, d]``."""

    prompt: str
    layer: int
    tokens: list[str]
    mlp: np.ndarray
    residual: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.mlp.shape

    def __array__(self, dtype=None, copy=None):
        return self.mlp if dtype is None else self.mlp.astype(dtype)


@dataclass
class Comparison:
    """Results of :meth:`AttentionExtractor.compare_prompts`, in the order the prompts were given."""

    results: list[Activations]

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, i: int) -> Activations:
        return self.results[i]

    def __iter__(self):
        return iter(self.results)

    @property
    def prompts(self) -> list[str]:
        return [r.prompt for r in self.results]

    def items(self):
        return [(r.prompt, r) for r in self.results]

    def _repr_html_(self) -> str:
        from .notebook import table_html

        return table_html(["#", "prompt", "tokens"], [[i, r.prompt, len(r.tokens)] for i, r in enumerate(self.results)],
                          f"{len(self.results)} prompts")
