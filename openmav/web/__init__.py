"""The web explorer (``mav serve``): attention heads, head ablation, studies and circuits in a local page.

``create_app`` is imported on first use, so :mod:`openmav.web.hosts` (which ``mav serve``
uses to check ``--host``) loads without torch.
"""

__all__ = ["create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module 'openmav.web' has no attribute {name!r}")
