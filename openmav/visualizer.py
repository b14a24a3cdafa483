"""Show Me Your Attention's ``src.visualizer``, for scripts ported from it.

``from src.visualizer import AttentionVisualizer`` becomes ``from openmav.visualizer import
AttentionVisualizer``: the analysis API's own class
(:class:`openmav.analysis.visualizer.AttentionVisualizer`), with the seed's methods
``plot_attention_heatmap``, ``plot_all_heads``, ``plot_neuron_activations``,
``plot_activation_comparison`` (of ``openmav.model_loader.AttentionExtractor().compare_prompts(...)``),
``plot_interactive_attention`` and ``plot_layer_statistics`` (of ``get_attention_stats(...)``).
Each returns its figure (shown by Jupyter when it ends a cell) and saves it with ``save_path``.
"""

from __future__ import annotations

from .analysis.visualizer import AttentionVisualizer, NotebookFigure

__all__ = ["AttentionVisualizer", "NotebookFigure"]
