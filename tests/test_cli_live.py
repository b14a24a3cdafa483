"""The ``mav`` command: light --help/--version, one-line errors, text and JSON lines, record and replay."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from openmav.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from openmav.testing import tiny_model

    lm = tiny_model("llama")
    path = tmp_path_factory.mktemp("tiny-llama")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_do_not_import_torch(flag):
    code = ("import sys\nfrom openmav.cli import main\ntry:\n    main([%r])\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')" % flag)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.strip().endswith("NO-TORCH")
    assert ("openmav 0.1.0" if flag == "--version" else "--selected-panels") in out


def test_panel_names_in_help_match_registry():
    from openmav.cli.live import PANEL_NAMES
    from openmav.view.panels.registry import BUILTIN

    assert list(PANEL_NAMES) == list(BUILTIN)


@pytest.mark.parametrize("argv,message", [
    (["--scale", "bad"], "invalid choice: 'bad' (choose from 'linear', 'log', 'minmax')"),
    (["--max-new-tokens", "0"], "must be at least 1"),
    (["--temp", "-1"], "must be a finite number >= 0"),
    (["--selected-panels", "nope"], "valid panels are generated_text"),
    (["--record", "/no/such/dir/t.npz"], "does not exist"),
])
def test_bad_values_one_line(argv, message, capsys):
    assert main(argv) == 2  # main returns the code; it never raises SystemExit
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_jsonl_matches_engine_records(model_dir, capsys):
    from openmav.backends.loading import load_model
    from openmav.capture import CaptureConfig, generate_steps

    assert main(["--model", model_dir, "--prompt", "hello world", "--max-new-tokens", "5", "--format", "jsonl",
                 "--selected-panels", "all", "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    lm = load_model(model_dir, device="cpu")
    recs = list(generate_steps(lm, "hello world", 5, capture=CaptureConfig(prompt_attention=False)))
    assert len(rows) == len(recs) == 5
    for row, rec in zip(rows, recs):
        assert row["step"] == rec.step and row["token_id"] == rec.token.id and row["token"] == rec.token.text
        assert row["prob"] == pytest.approx(float(rec.probs[rec.token.id]), abs=1e-5)
        assert [t["id"] for t in row["top"]] == rec.top_ids[:5].tolist()
        np.testing.assert_allclose(row["mlp_norms"], rec.mlp_norms, rtol=1e-4)
        np.testing.assert_allclose(row["attention_entropy"], rec.attention_entropy.mean(1), rtol=1e-4, atol=1e-6)
        assert [x[0] for x in row["lens_top1"]] == [r[0].display for r in rec.lens_tokens]
        assert row["text"] == rec.generated_text
    assert rows[-1]["finished"] is True


def test_text_lines_and_captures_off(model_dir, capsys):
    assert main(["--model", model_dir, "--prompt", "hello world", "--max-new-tokens", "3", "--format", "jsonl",
                 "--selected-panels", "generated_text", "mlp_activations"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0]["attention_entropy"] is None and rows[0]["lens_top1"] is None  # not captured: not needed
    assert main(["--model", model_dir, "--prompt", "hello world", "--max-new-tokens", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[1] for line in lines[:3]] == [str(r["token_id"]) for r in rows]


def test_record_then_replay_gives_the_same_lines(model_dir, tmp_path, capsys):
    trace = tmp_path / "run.npz"
    assert main(["--model", model_dir, "--prompt", "hello world", "--max-new-tokens", "4", "--format", "jsonl",
                 "--selected-panels", "all", "--record", str(trace)]) == 0
    live = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main(["replay", str(trace), "--format", "jsonl"]) == 0
    replayed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert replayed == live
    assert main(["replay", str(tmp_path / "missing.npz")]) == 2
    assert "no trace file" in capsys.readouterr().err


def test_refresh_rate_zero_means_no_cap(model_dir, capsys):
    from openmav.cli.live import refresh_rate

    assert refresh_rate(0) == float("inf") and refresh_rate(4.0) == 4.0
    assert main(["--model", model_dir, "--prompt", "hello world", "--max-new-tokens", "2", "--refresh-rate", "0",
                 "--format", "text"]) == 0
    assert capsys.readouterr().err == ""


def test_documented_backend_needs_no_initialize(tiny):
    """The design document's shape: TransformersBackend(...), then StateFetcher(backend).fetch_next(...)."""
    from openmav.backends.model_backend_transformers import TransformersBackend
    from openmav.processors.state_fetcher import StateFetcher

    lm = tiny("llama")
    backend = TransformersBackend("tiny-llama", model_obj=lm.model, tokenizer_obj=lm.tokenizer, device="cpu")
    assert not backend.is_initialized
    fetcher = StateFetcher(backend, max_new_tokens=3)
    measurements = list(fetcher.fetch_next("hello world", temperature=0.0))
    assert len(measurements) == 3 and backend.is_initialized
    assert measurements[-1].generated_text and measurements[0].top_probs[0] > 0
    assert backend.initialize() is backend.initialize() is backend.loaded  # idempotent
    fresh = TransformersBackend("tiny-llama", model_obj=lm.model, tokenizer_obj=lm.tokenizer, device="cpu")
    ids = fresh.tokenize("hello world")  # each documented method works without initialize() too
    out = fresh.generate(ids)
    assert out["logits"].shape[:2] == ids.shape and fresh.decode(ids) == "hello world"


def test_api_refuses_bad_input_before_loading(tiny):
    """The Python entry points share the CLI's rules: bad text or numbers fail before any model loads."""
    from openmav.backends.model_backend_transformers import TransformersBackend
    from openmav.errors import InputError
    from openmav.mav import MAV
    from openmav.processors.state_fetcher import StateFetcher

    with pytest.raises(InputError, match="what torch.manual_seed accepts"):
        TransformersBackend("tiny", seed=10**30)
    with pytest.raises(InputError, match="unknown device"):
        TransformersBackend("tiny", device="gpu")
    with pytest.raises(InputError, match="unknown dtype"):
        TransformersBackend("tiny", dtype="float64")
    backend = TransformersBackend("never-loaded", device="cpu")  # no such model: loading it would fail otherwise
    for prompt, kwargs, message in [("caf\udce9", {}, "byte 0xe9 at character 3"), ("x\ud800", {}, "lone surrogate"),
                                    ("   ", {}, "is empty"), ("hi", {"temperature": float("nan")}, "temperature"),
                                    ("hi", {"top_p": 0.0}, "top_p"), ("hi", {"repetition_penalty": float("inf")},
                                                                     "repetition_penalty")]:
        with pytest.raises(InputError, match=message):
            next(StateFetcher(backend, max_new_tokens=2).fetch_next(prompt, **kwargs))
    assert not backend.is_initialized
    with pytest.raises(InputError, match="max_new_tokens"):
        StateFetcher(backend, max_new_tokens=0)
    lm = tiny("llama")
    for kwargs, message in [({"prompt": "caf\udce9"}, "not valid UTF-8"), ({"max_bar_length": 0}, "max_bar_length"),
                            ({"limit_chars": -1}, "limit_chars")]:
        with pytest.raises(InputError, match=message):
            MAV(model_obj=lm.model, tokenizer_obj=lm.tokenizer, **{"prompt": "hi", **kwargs}, format="text",
                max_new_tokens=1)
