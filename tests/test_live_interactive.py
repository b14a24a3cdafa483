"""The live view driven end to end in tmux: keys sent, screen read back."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class Tmux:
    def __init__(self, name: str, command: str, width: int = 120, height: int = 36):
        self.name = name
        subprocess.run(["tmux", "-L", "openmav-view-tests", "kill-session", "-t", name], capture_output=True)
        subprocess.run(["tmux", "-L", "openmav-view-tests", "new-session", "-d", "-s", name, "-x", str(width), "-y", str(height),
                        f"cd {ROOT} && unset COLUMNS LINES && {command}; echo EXITED $?; sleep 60"], check=True)
        self.resize(width, height)

    def resize(self, width: int, height: int) -> None:
        subprocess.run(["tmux", "-L", "openmav-view-tests", "resize-window", "-t", self.name, "-x", str(width), "-y", str(height)], check=True)

    def screen(self) -> str:
        return subprocess.run(["tmux", "-L", "openmav-view-tests", "capture-pane", "-p", "-t", self.name], capture_output=True,
                              text=True).stdout

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "-L", "openmav-view-tests", "send-keys", "-t", self.name, *keys], check=True)

    def wait_for(self, text: str, timeout: float = 90) -> str:
        end = time.time() + timeout
        while time.time() < end:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.3)
        raise AssertionError(f"{text!r} never appeared; screen:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", "openmav-view-tests", "kill-session", "-t", self.name], capture_output=True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from openmav.testing import tiny_model

    lm = tiny_model("llama")
    path = tmp_path_factory.mktemp("tiny-llama-tmux")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return str(path)


def test_interactive_steps_browses_and_changes_layer_head(model_dir):
    from openmav.backends.loading import load_model
    from openmav.capture import CaptureConfig, generate_steps

    recs = list(generate_steps(load_model(model_dir, device="cpu"), "hello world", 3,
                               capture=CaptureConfig(logit_lens=False)))
    cmd = (f"{sys.executable} -m openmav --model {model_dir} --prompt 'hello world' --max-new-tokens 3 "
           "--interactive --selected-panels generated_text attention --device cpu")
    t = Tmux("mav-interactive", cmd)
    try:
        t.wait_for("token 1/1")
        assert "Attention L1 mean of heads" in t.screen()
        t.keys("Enter")
        t.wait_for("token 2/2")
        t.keys("Left")
        t.wait_for("token 1/2")
        t.keys("]")  # layer up from the last wraps to L0
        t.wait_for("Attention L0 mean of heads")
        t.keys(".")
        t.wait_for("Attention L0 H0")
        t.keys("Right", "Space", "Space")
        t.wait_for("token 3/3 (end)")
        t.keys("q")
        screen = t.wait_for("EXITED 0")
        assert "generated text:" in screen
        assert "hello world" in screen and len(recs) == 3
    finally:
        t.close()


def test_live_view_follows_resize_and_ctrl_c(model_dir, tmp_path):
    from openmav.cli import main

    trace = tmp_path / "run.npz"
    assert main(["--model", model_dir, "--prompt", "hello world", "--max-new-tokens", "60", "--format", "text",
                 "--selected-panels", "all", "--record", str(trace)]) == 0
    t = Tmux("mav-live", f"{sys.executable} -m openmav replay {trace} --delay 0.5 --refresh-rate 20", 150, 45)
    try:
        screen = t.wait_for("Head entropy")
        assert "too small" not in screen and "Logit lens" in screen
        t.resize(60, 14)
        t.wait_for("too small")
        t.resize(150, 45)
        t.wait_for("Head entropy")
        t.keys("C-c")
        screen = t.wait_for("EXITED 130")
        assert "interrupted" in screen and "generated text:" in screen
    finally:
        t.close()


@pytest.mark.smollm2
def test_plugin_example_runs_as_written(smollm2):
    t = Tmux("mav-plugin", f"{sys.executable} examples/entropy_fire.py", width=100, height=20)
    try:
        screen = t.wait_for("🔥", timeout=120)
        assert "Entropy Fire" in screen and "Generated text" in screen
        t.keys("C-c")
        t.wait_for("EXITED")
    finally:
        t.close()
