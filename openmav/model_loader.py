"""Show Me Your Attention's ``src.model_loader``, for scripts ported from it.

``from src.model_loader import AttentionExtractor`` becomes
``from openmav.model_loader import AttentionExtractor``, and the rest of such a script runs as
it was written (model names aside: any name :func:`openmav.backends.loading.load_model`
takes, such as the bundled ``smollm2-135m`` or ``all-minilm-l6-v2``)::

    extractor = AttentionExtractor(model_name="smollm2-135m")
    result = extractor.extract_activations("Once upon a time")
    stats = extractor.get_attention_stats("Your prompt here")   # {layer: {"mean", "std", ...}}
    results = extractor.compare_prompts(["Prompt 1", "Prompt 2", "Prompt 3"])
    viz.plot_activation_comparison(results)                    # viz: openmav.visualizer.AttentionVisualizer

The class is the extraction API's own
(:class:`openmav.analysis.extractor.AttentionExtractor`: every method, argument and result is
that class's) with one method adapted: :meth:`AttentionExtractor.compare_prompts` builds its
comparison with :func:`openmav.analysis.compare.compare_prompts`, so the result also holds the
per-prompt neuron means over the positions every prompt has (the first, attention-sink
position left out) that ``plot_activation_comparison`` draws.
"""

from __future__ import annotations

from .analysis import compare as _compare
from .analysis.extractor import AttentionExtractor as _AttentionExtractor
from .analysis.results import Comparison

__all__ = ["AttentionExtractor"]


class AttentionExtractor(_AttentionExtractor):
    """:class:`openmav.analysis.extractor.AttentionExtractor`, with ``compare_prompts`` as the seed pairs it
    with ``plot_activation_comparison`` (see the module docstring)."""

    def compare_prompts(self, prompts: list[str], batch_size: int = 16, padding_side: str = "right",
                        hidden_states: bool = False, neurons: bool = True) -> Comparison:
        """Run ``prompts`` in padded batches (each result equals that prompt run alone), in their order.

        Iterate the results as the seed does (``for prompt, data in results.items()``: ``data["tokens"]``,
        ``data["attention_weights"]``), or hand them to ``plot_activation_comparison``.  With two or more
        prompts of two or more tokens each, the result is a
        :class:`~openmav.analysis.compare.PromptComparison` (``neuron_values``: each prompt's MLP neuron means
        over positions ``1..m-1``, ``m`` the shortest prompt's length); otherwise (a single prompt, a
        one-token prompt) the extraction API's plain :class:`~openmav.analysis.results.Comparison`, which has
        no neuron values to compare.  Arguments as
        :meth:`openmav.analysis.extractor.AttentionExtractor.compare_prompts`.
        """
        encoded = self._encode(prompts)  # empty or too long prompts: one InputError line, before any forward
        if isinstance(prompts, str) or len(encoded) < 2 or min(len(ids) for ids in encoded) < 2:
            return super().compare_prompts(prompts, batch_size, padding_side, hidden_states, neurons)
        return _compare.compare_prompts(self, list(prompts), batch_size=batch_size, padding_side=padding_side,
                                        neurons=neurons, hidden_states=hidden_states)
