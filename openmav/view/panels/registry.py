"""The panel registry: built-in panels and plugins go through the same path.

``make_panels(selected, external, measurements, options)`` turns names, classes and
instances into panel instances; an unknown name is an :class:`InputError` that
lists the valid names.
"""

from __future__ import annotations

import inspect

from ...errors import InputError
from ..options import ViewOptions
from .attention_panels import AttentionPanel, HeadEntropyPanel
from .layer_panels import AttentionEntropyPanel, LogitLensPanel, MLPActivationsPanel, ResidualStreamPanel
from .names import BUILTIN_NAMES, DEFAULT_PANELS as _DEFAULTS
from .panel_base import PanelBase
from .text_panels import BuiltinPanel, GeneratedTextPanel, OutputDistributionPanel, TopPredictionsPanel

# In priority order: ``all`` shows them in this order, and a terminal too small for every
# panel drops them from the end of the list it was given (see openmav.view.layout).
BUILTIN: dict[str, type[BuiltinPanel]] = {
    cls.name: cls
    for cls in (GeneratedTextPanel, TopPredictionsPanel, MLPActivationsPanel, AttentionEntropyPanel,
                AttentionPanel, LogitLensPanel, OutputDistributionPanel, ResidualStreamPanel, HeadEntropyPanel)
}
if tuple(BUILTIN) != BUILTIN_NAMES:  # the light index the command line reads must match the classes
    raise RuntimeError("openmav.view.panels.names must list the built-in panels in the registry's order")
DEFAULT_PANELS = list(_DEFAULTS)


def split_names(selected) -> list[str]:
    """Names from a list whose items may hold several comma-separated names; ``all`` expands."""
    names = []
    for item in selected or []:
        names.extend(n.strip() for n in str(item).split(",") if n.strip())
    if names == ["all"]:
        return list(BUILTIN)
    return names


def _external_name(panel) -> str:
    cls = panel if isinstance(panel, type) else type(panel)
    return cls.panel_name() if issubclass(cls, PanelBase) else cls.__name__


def make_panels(selected=None, external=None, measurements=None, options: ViewOptions | None = None) -> list:
    """Panel instances in the order of ``selected`` (default: the built-in defaults, then every
    external panel).  External panels given as classes are constructed with ``measurements``."""
    options = options or ViewOptions()
    external = list(external or [])
    ext_by_name = {_external_name(p): p for p in external}
    names = split_names(selected) or DEFAULT_PANELS + [n for n in ext_by_name if n not in BUILTIN]
    valid = list(BUILTIN) + [n for n in ext_by_name if n not in BUILTIN]
    unknown = [n for n in names if n not in BUILTIN and n not in ext_by_name]
    if unknown:
        raise InputError(f"unknown panel {', '.join(map(repr, unknown))}: valid panels are {', '.join(valid)}")
    panels = []
    for name in names:
        source = ext_by_name.get(name, BUILTIN.get(name))
        if isinstance(source, type) and issubclass(source, BuiltinPanel):
            panel = source(measurements, options)
        elif inspect.isclass(source):
            panel = source(measurements)
        else:
            panel = source
        if isinstance(panel, PanelBase):
            panel.options = options
        panels.append(panel)
    return panels


def needed_captures(panels) -> set[str]:
    """The optional captures (``attention``, ``logit_lens``) that ``panels`` read."""
    out: set[str] = set()
    for panel in panels:
        out |= set(getattr(panel, "needs", {"attention"}))
    return out
