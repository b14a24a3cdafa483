"""The training example: the view appears every N steps and training goes on unchanged."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

from rich.console import Console

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_tiny_gpt2.py"


def load_example():
    spec = importlib.util.spec_from_file_location("train_tiny_gpt2", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_trainer_callback_shows_view_every_n_steps(tmp_path):
    ex = load_example()
    buf = io.StringIO()
    trainer, callback = ex.train_with_trainer(4, 2, str(tmp_path), console=Console(file=buf, width=100))
    assert [step for step, _ in callback.results] == [2, 4]
    assert trainer.state.global_step == 4 and trainer.model.training
    out = buf.getvalue()
    assert "Generated text" in out and "mav · step 2" in out and "mav · step 4" in out
    assert all(len(result.measurements) == 6 for _, result in callback.results)


def test_plain_loop_view_leaves_training_unchanged():
    ex = load_example()
    buf = io.StringIO()
    model, losses, views = ex.train_plain_loop(4, 2, console=Console(file=buf, width=100))
    _, baseline, none = ex.train_plain_loop(4, 0)
    assert [s for s, _ in views] == [2, 4] and none == []
    assert losses == baseline  # same shuffles and updates with or without the view
    assert model.training and "MLP output L2 norm" in buf.getvalue()
