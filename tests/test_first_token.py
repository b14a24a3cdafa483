"""The way to the first token: the collector paused while the live view's model loads, and MAV's on_loaded hook.

Speed itself is measured by bench/bench_first_token.py (side by side, never timed in a test); these check that
the pause changes nothing but the collections: the hook is called once, before the first line, and a run
through the command line leaves the collector running again."""

from __future__ import annotations

import gc
import io
import json

import pytest


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from openmav.testing import tiny_model

    lm = tiny_model("llama")
    path = tmp_path_factory.mktemp("first-token") / "tiny-llama"
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return str(path)


def test_on_loaded_is_called_once_after_loading_before_the_first_token(tiny):
    from rich.console import Console

    from openmav.mav import MAV

    lm = tiny("llama")
    out = io.StringIO()
    seen = []
    result = MAV(model_obj=lm.model, tokenizer_obj=lm.tokenizer, prompt="The cat", max_new_tokens=2, format="jsonl",
                 console=Console(file=out), on_loaded=lambda: seen.append(out.getvalue()))
    assert seen == [""]  # once, with nothing written yet
    assert [json.loads(line)["step"] for line in out.getvalue().splitlines()] == [0, 1] == \
        [r.step for r in result.records]


def test_on_loaded_must_be_callable():
    from openmav.errors import InputError
    from openmav.mav import MAV

    with pytest.raises(InputError, match="on_loaded must be a function to call"):
        MAV("smollm2-135m", "hi", on_loaded="later")


def test_a_paused_collector_resumes_once_the_live_views_model_is_loaded(model_dir, capsys):
    from openmav.cli import main

    frozen = gc.get_freeze_count()
    gc.disable()  # as the console script does for the live view (openmav.cli.entry)
    try:
        code = main(["--model", model_dir, "--prompt", "The cat", "--max-new-tokens", "2", "--format", "jsonl"])
        assert gc.isenabled() and gc.get_freeze_count() > frozen  # resumed, with what was alive then frozen
    finally:
        gc.enable()
        gc.unfreeze()
    assert code == 0 and len(capsys.readouterr().out.splitlines()) == 2


def test_a_running_collector_is_left_alone(model_dir, capsys):
    from openmav.cli import main

    frozen = gc.get_freeze_count()
    assert main(["--model", model_dir, "--prompt", "The cat", "--max-new-tokens", "1", "--format", "jsonl"]) == 0
    assert gc.isenabled() and gc.get_freeze_count() == frozen  # main() called from Python freezes nothing
