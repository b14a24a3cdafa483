"""``mav replay`` draws a recorded run as the live view drew it: the same frame, the scale chosen the same way."""

from __future__ import annotations

import pytest
import torch
from rich.console import Console

import openmav.mav as mav_module
from openmav.cli import replay
from openmav.mav import MAV

RUN_VIEW = mav_module.run_view  # the real one, whatever a test has patched in since


def _console() -> Console:
    return Console(record=True, width=120, height=40, force_terminal=True, color_system=None)


@pytest.fixture(scope="module")
def lm():
    """A tiny Llama whose last MLP is 100x the others: the live view's automatic scale goes log on that panel."""
    from openmav.testing import tiny_model

    model = tiny_model("llama", n_layers=6)
    with torch.no_grad():
        model.model.model.layers[-1].mlp.down_proj.weight.mul_(100)
    return model


def _live(lm, path, **kwargs) -> str:
    console = _console()
    MAV(model_obj=lm.model, tokenizer_obj=lm.tokenizer, prompt="The cat sat", max_new_tokens=3, format="snapshot",
        console=console, record=str(path), **kwargs)
    return console.export_text()


def _replay(path, monkeypatch, *flags) -> str:
    """``mav replay PATH FLAGS``, its last frame drawn as the live view's snapshot is (same panels, same size)."""
    console = _console()

    def snapshot(stream, panels, **kw):
        return RUN_VIEW(stream, panels, **{**kw, "mode": "snapshot", "console": console})

    monkeypatch.setattr(mav_module, "run_view", snapshot)
    assert replay.run(replay.build_parser().parse_args([str(path), *flags])) == 0
    return console.export_text()


def _body(frame: str) -> list[str]:
    """The frame less its status line (which names the program: ``mav`` or ``mav replay``)."""
    return [line for line in frame.splitlines() if " ms/token " not in line]


def test_replay_draws_the_live_views_frame(lm, tmp_path, monkeypatch):
    live = _live(lm, tmp_path / "auto.npz")
    assert "MLP output L2 norm · log" in live and "Attention entropy (nats) · linear" in live
    shown = _replay(tmp_path / "auto.npz", monkeypatch)
    assert _body(shown) == _body(live) and "mav replay · " in shown


def test_replay_keeps_the_scale_the_run_was_given(lm, tmp_path, monkeypatch):
    live = _live(lm, tmp_path / "linear.npz", scale="linear")
    assert "MLP output L2 norm · linear" in live
    assert _body(_replay(tmp_path / "linear.npz", monkeypatch)) == _body(live)
    # --scale still decides when given; auto (the flag left out) is the run's own
    assert "MLP output L2 norm · log" in _replay(tmp_path / "linear.npz", monkeypatch, "--scale", "log")
    assert replay.chosen_scale("auto", {}) == "auto" and replay.chosen_scale("auto", {"scale": "bogus"}) == "auto"
    assert replay.chosen_scale("minmax", {"scale": "linear"}) == "minmax"
