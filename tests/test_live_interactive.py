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
        for attempt in range(5):  # a server still shutting down after the last session closed refuses once
            done = subprocess.run(["tmux", "-L", "openmav-view-tests", "new-session", "-d", "-s", name, "-x", str(width),
                                   "-y", str(height), f"cd {ROOT} && unset COLUMNS LINES && {command}; echo EXITED $?; "
                                   "sleep 60"], capture_output=True, text=True)
            if done.returncode == 0:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"tmux new-session failed: {done.stderr}")
        self.resize(width, height)

    def resize(self, width: int, height: int) -> None:
        subprocess.run(["tmux", "-L", "openmav-view-tests", "resize-window", "-t", self.name, "-x", str(width), "-y", str(height)], check=True)

    def screen(self, history: bool = False) -> str:
        extra = ["-S", "-"] if history else []
        return subprocess.run(["tmux", "-L", "openmav-view-tests", "capture-pane", "-p", *extra, "-t", self.name],
                              capture_output=True, text=True).stdout

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
        assert "hidden" not in screen and "Logit lens" in screen and "150x45" in screen
        t.resize(60, 14)
        screen = t.wait_for("hidden")
        assert "60x14" in screen
        t.resize(150, 45)
        t.wait_for("Head entropy")
        t.keys("C-c")
        screen = t.wait_for("EXITED 130")
        assert "interrupted" in screen and "generated text:" in screen
    finally:
        t.close()


DEFAULT_TITLES = ("─ Generated text ─", "─ Top predictions ─", "─ MLP output L2 norm · ",
                  "─ Attention entropy (nats) · ", "─ Attention L", "─ Output distribution ─")


def check_80x24(screen: str, titles=DEFAULT_TITLES) -> None:
    """The screen is 80x24, every panel box is intact (no wrapped bar breaks a border), every
    title is whole and the status line says 80x24."""
    lines = screen.rstrip("\n").split("\n")
    assert len(lines) == 24, screen
    for line in lines[:-1]:
        assert len(line.rstrip()) <= 80
        assert line.count("╭") == line.count("╮") and line.count("╰") == line.count("╯"), line
        assert line.count("│") % 2 == 0, line
        assert line[:1] in "╭│╰" and line.rstrip()[-1:] in "╮│╯", line
    for title in titles:
        assert title in screen, title
    assert "80x24" in lines[-1]


def test_mav_at_80x24_reads_well(model_dir):
    """The real ``mav`` in an 80x24 terminal (tmux): the six default panels, whole, no progress bar
    but ours; the last frame, printed after the run, still says 80x24."""
    cmd = (f"{sys.executable} -m openmav --model {model_dir} --prompt 'hello world' --max-new-tokens 3 "
           "--interactive --device cpu")
    t = Tmux("mav-80x24", cmd, 80, 24)
    try:
        screen = t.wait_for("token 1/1")
        check_80x24(screen)
        t.keys("Space")
        check_80x24(t.wait_for("token 2/2"))
        t.keys("q")
        t.wait_for("EXITED 0")
        history = t.screen(history=True)
        assert "Loading weights" not in history and "it/s]" not in history
    finally:
        t.close()
    t = Tmux("mav-80x24-live", f"{sys.executable} -m openmav --model {model_dir} --prompt 'hello world' "
             "--max-new-tokens 20 --device cpu", 80, 24)
    try:
        history = t.wait_for("EXITED 0") and t.screen(history=True)
        assert "80x24" in history and "80x21" not in history and "generated text:" in history
        assert "Loading weights" not in history and "it/s]" not in history
    finally:
        t.close()


@pytest.mark.smollm2
def test_bundled_model_at_80x24_while_it_generates(smollm2):
    """``mav`` as a newcomer runs it: the bundled model, default panels, an 80x24 terminal,
    read mid-run; the MLP panel names the log scale SmolLM2's dominant last layer calls for."""
    t = Tmux("mav-80x24-smollm2", f"{sys.executable} -m openmav --max-new-tokens 60", 80, 24)
    try:
        screen = t.wait_for("ms/token", timeout=120)
        check_80x24(screen)
        assert "─ MLP output L2 norm · log ─" in screen and "log" in screen
        t.keys("C-c")
        history = t.wait_for("EXITED") and t.screen(history=True)
        assert "Loading weights" not in history and "it/s]" not in history
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
