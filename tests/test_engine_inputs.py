"""Model sources, token text and bad input for the engine; SmolLM2 integration."""

from __future__ import annotations

import pytest
import torch

from openmav.backends import adapter_for_config, load_model, resolve_device, resolve_source
from openmav.backends.sources import converted_gguf_dir
from openmav.capture import SamplingConfig, generate_steps
from openmav.capture.tokens import IncrementalDecoder, TokenTexts, disambiguate, visible
from openmav.errors import (DeviceError, InputError, ModelSourceError, NonFiniteLogitsError,
                            UnsupportedModelError)


def test_missing_files_and_directories(tmp_path):
    with pytest.raises(ModelSourceError, match="GGUF file not found"):
        resolve_source(str(tmp_path / "nope.gguf"))
    with pytest.raises(ModelSourceError, match="no config.json"):
        resolve_source(str(tmp_path))
    with pytest.raises(ModelSourceError, match="no such file"):
        resolve_source("./missing/model")


def test_hub_id_without_network_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError, match="Hugging Face hub"):
        load_model("some-user/some-model-that-is-not-cached", device="cpu")


def test_device_errors():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA device"):
            resolve_device("cuda")
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("tpu")


def test_unknown_family_has_no_declared_row():
    class Cfg:
        model_type = "openmav_nobody_declared"

    with pytest.raises(UnsupportedModelError, match="'openmav_nobody_declared' has no declared adapter"):
        adapter_for_config(Cfg())  # wrap_model then infers a row from the module tree (tests/test_families.py)


def test_prompt_errors(tiny):
    lm = tiny("llama")
    with pytest.raises(InputError, match="empty"):
        next(generate_steps(lm, "   ", 3))
    with pytest.raises(InputError, match="context of 512 tokens"):
        next(generate_steps(lm, "word " * 600, 3))
    with pytest.raises(InputError, match="top-p"):
        next(generate_steps(lm, "hello", 3, sampling=SamplingConfig(temperature=1, top_p=0)))


def test_nan_logits_are_reported(tiny):
    from openmav.testing import tiny_model

    lm = tiny_model("gpt2", seed=3)
    with torch.no_grad():
        lm.parts.final_norm.weight[0] = float("nan")
    with pytest.raises(NonFiniteLogitsError, match="NaN"):
        next(generate_steps(lm, "hello world", 3))


def test_token_text_forms(tiny):
    lm = tiny("gpt2")
    texts = TokenTexts(lm.tokenizer)
    ids = lm.tokenizer.encode(" the cat\n", add_special_tokens=False)
    shown = [texts.get(i) for i in ids]
    assert "".join(t.text for t in shown) == " the cat\n"
    assert any(t.piece.startswith("Ġ") for t in shown)
    assert shown[0].display.startswith("␣")
    assert shown[-1].display.endswith("↵")
    # an emoji is several byte tokens: partial pieces have no text, shown as hex
    emoji_ids = lm.tokenizer.encode("🙂", add_special_tokens=False)
    assert len(emoji_ids) > 1
    parts = [texts.get(i) for i in emoji_ids]
    assert parts[0].text == "" and parts[0].display.startswith("<F0")
    dec = IncrementalDecoder(lm.tokenizer)
    deltas = [dec.push(i) for i in lm.tokenizer.encode("a🙂b", add_special_tokens=False)]
    assert "".join(deltas) == "a🙂b" and "🙂" in deltas
    assert visible("  hi ") == "␣␣hi␣" and visible("\n") == "↵"
    assert visible("a\x07b") == "a\\x07b"  # control characters never reach a terminal raw
    assert disambiguate(["John", "gave", "John"]) == ["John", "gave", "John_2"]


@pytest.mark.smollm2
def test_smollm2_says_paris(smollm2):
    assert smollm2.parts.n_layers == 30 and smollm2.parts.n_heads == 9 and smollm2.parts.n_kv_heads == 3
    rec = next(generate_steps(smollm2, "The capital of France is", 1))
    assert rec.token.text == " Paris"
    assert rec.token.piece == "ĠParis" and rec.token.display == "␣Paris"
    assert rec.attention.shape == (30, 9, 5)


@pytest.mark.smollm2
def test_smollm2_cache_and_cached_logits(smollm2):
    src = resolve_source("smollm2-135m")
    assert (converted_gguf_dir(src.gguf) / "config.json").exists()
    recs = list(generate_steps(smollm2, "The capital of France is", 5, stop_at_eos=False))
    ids = torch.tensor([[*smollm2.tokenizer("The capital of France is").input_ids, *[r.token.id for r in recs[:-1]]]])
    with torch.no_grad():
        full = smollm2.model(input_ids=ids, use_cache=False).logits[0]
    for r in recs:
        assert torch.allclose(torch.from_numpy(r.logits), full[r.position], atol=1e-4)
