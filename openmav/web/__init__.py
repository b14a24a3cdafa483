"""The web explorer (``mav serve``): attention heads, head ablation, studies and circuits in a local page."""

from .app import create_app

__all__ = ["create_app"]
