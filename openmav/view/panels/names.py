"""The built-in panels' names, in the panel registry's order (also the priority order: a terminal
too small for every panel drops them from the end), and the default selection.

Kept apart from :mod:`openmav.view.panels.registry` so the command line can list and check panel
names without importing rich or numpy; the registry asserts at import that its panels carry
exactly these names.
"""

BUILTIN_NAMES = ("generated_text", "top_predictions", "mlp_activations", "attention_entropy", "attention",
                 "logit_lens", "output_distribution", "residual_stream", "head_entropy")
DEFAULT_PANELS = ("generated_text", "top_predictions", "mlp_activations", "attention_entropy", "attention",
                  "output_distribution")
