"""Models split by a device map (accelerate), with layers offloaded to CPU and disk, and quantized-loading errors.

CI has no GPU, so the split is CPU + disk: the same accelerate hooks move each
offloaded layer's weights in for its forward, which is the path a model bigger than
one GPU takes.  The invariant suite must hold on the split model exactly as on the
whole one, and the numbers must equal the unsplit model's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from openmav.analysis.extractor import AttentionExtractor
from openmav.backends.loading import load_model
from openmav.capture import generate_steps
from openmav.errors import DeviceError, InputError
from openmav.interventions.ablation import HeadAblation, ablated_logits
from openmav.support import check_invariants

PROMPT = "When Mary and John went to the store, John gave"


@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory):
    lm = tiny("llama", n_layers=3)
    folder = tmp_path_factory.mktemp("tiny-llama")
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return lm, folder


def test_layers_on_cpu_and_disk_capture_and_ablate_like_the_whole_model(saved, tmp_path):
    whole, folder = saved
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                  "model.layers.1": "disk", "model.layers.2": "disk", "model.norm": "cpu", "lm_head": "cpu"}
    split = load_model(str(folder), device=None, device_map=device_map, offload_folder=str(tmp_path / "offload"))
    assert split.model.hf_device_map["model.layers.1"] == "disk"
    assert any(p.device.type == "meta" for p in split.model.model.layers[1].parameters())  # weights live on disk
    check_invariants(split)  # steps vs uncached forwards, attention rows, hooks, lens, ablation, batched heads
    a = list(generate_steps(whole, PROMPT, 4, stop_at_eos=False))
    b = list(generate_steps(split, PROMPT, 4, stop_at_eos=False))
    assert [r.token.id for r in a] == [r.token.id for r in b]
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.logits, y.logits, atol=1e-5)
        np.testing.assert_allclose(x.attention, y.attention, atol=1e-6)
        np.testing.assert_allclose(x.lens_probs, y.lens_probs, atol=1e-5)
    ids = whole.tokenizer(PROMPT, return_tensors="pt").input_ids
    ablation = [HeadAblation(1, 2), HeadAblation(2, 0)]  # heads of the offloaded layers
    torch.testing.assert_close(ablated_logits(split, ids, ablation), ablated_logits(whole, ids, ablation),
                               atol=1e-5, rtol=0)
    # circuit discovery: gradients and patches through the offloaded layers
    from openmav.interventions.circuit import discover_circuit, logit_diff

    corrupt = whole.tokenizer(PROMPT.replace("Mary", "John"), return_tensors="pt").input_ids
    assert corrupt.shape == ids.shape
    metric = logit_diff(5, 7)
    got = discover_circuit(split, ids, corrupt, metric, top_n=3, verify_k=6)
    want = discover_circuit(whole, ids, corrupt, metric, top_n=3, verify_k=6)
    assert [(n["layer"], n["head"]) for n in got.nodes] == [(n["layer"], n["head"]) for n in want.nodes]
    np.testing.assert_allclose([n["effect"] for n in got.nodes], [n["effect"] for n in want.nodes], atol=1e-4)
    np.testing.assert_allclose([n["attribution"] for n in got.nodes], [n["attribution"] for n in want.nodes],
                               atol=1e-4)


def test_device_map_auto_on_a_cpu_machine(saved):
    whole, folder = saved
    lm = load_model(str(folder), device=None, device_map="auto")
    rec = next(generate_steps(lm, PROMPT, 1))
    np.testing.assert_allclose(rec.logits, next(generate_steps(whole, PROMPT, 1)).logits, atol=1e-5)


def test_a_model_object_stays_where_it_is(saved):
    whole, _ = saved
    before = [p.data_ptr() for p in whole.model.parameters()]
    ex = AttentionExtractor(model=whole.model, tokenizer=whole.tokenizer)
    ex.extract_activations(PROMPT)
    assert ex.handle.device == torch.device("cpu")
    assert [p.data_ptr() for p in whole.model.parameters()] == before  # not moved, not copied


@pytest.mark.parametrize("kwargs,error,needle", [
    ({"quantization": "4bit"}, DeviceError, "needs a CUDA device and bitsandbytes"),
    ({"quantization": "8bit"}, DeviceError, "needs a CUDA device and bitsandbytes"),
    ({"quantization": "2bit"}, InputError, "unknown quantization"),
    ({"device_map": "everywhere"}, InputError, "unknown device map"),
])
def test_bad_loading_options_are_one_line_before_loading(saved, kwargs, error, needle):
    if torch.cuda.is_available() and kwargs.get("quantization") in ("4bit", "8bit"):
        pytest.skip("a CUDA machine can quantize")
    _, folder = saved
    with pytest.raises(error, match=needle) as info:
        load_model(str(folder), device="cpu", **kwargs)
    assert "\n" not in str(info.value)


def test_mav_maps_with_a_device_map(saved, tmp_path):
    from openmav.cli import main

    _, folder = saved
    code = main(["maps", "--model", str(folder), "--prompt", "The cat sat", "--output-dir", str(tmp_path / "maps"),
                 "--max-new-tokens", "2", "--device-map", "auto", "--window", "8", "--stride", "4"])
    assert code == 0 and (tmp_path / "maps" / "maps.html").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine may have bitsandbytes")
@pytest.mark.parametrize("command", [["maps", "--prompt", "hi", "--output-dir", "out"], ["serve"], [],
                                     ["compare", "--mode", "custom", "--prompts", "a b", "c d"]])
@pytest.mark.parametrize("flag", ["--load-in-8bit", "--load-in-4bit"])
def test_quantized_flags_without_cuda_are_one_line(command, flag, capsys, tmp_path, monkeypatch):
    from openmav.cli import main

    monkeypatch.chdir(tmp_path)
    assert main([*command, flag]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs" in err[0] and flag in err[0]


def _whole_model_attention(whole):
    return AttentionExtractor(model=whole.model, tokenizer=whole.tokenizer).extract_activations(PROMPT)


def test_extractor_by_name_with_layers_on_disk_equals_the_whole_model(saved, tmp_path):
    whole, folder = saved
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                  "model.layers.1": "disk", "model.layers.2": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    split = AttentionExtractor(str(folder), device_map=device_map, offload_folder=str(tmp_path / "off"))
    assert split.handle.lm.model.hf_device_map["model.layers.1"] == "disk"
    got, want = split.extract_activations(PROMPT), _whole_model_attention(whole)
    assert len(got.attention) == len(want.attention) == 3
    for a, b in zip(got.attention, want.attention):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_encoder_by_name_with_a_device_map():
    plain = AttentionExtractor("all-minilm-l6-v2").extract_activations("a small test")
    split = AttentionExtractor("all-minilm-l6-v2", device_map="auto").extract_activations("a small test")
    for a, b in zip(split.attention, plain.attention):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_model_object_with_a_device_map_is_refused(saved):
    whole, _ = saved
    with pytest.raises(InputError, match="already placed"):
        AttentionExtractor(model=whole.model, tokenizer=whole.tokenizer, device_map="auto")


def test_live_view_jsonl_with_layers_on_disk_equals_the_whole_model(saved, tmp_path, capsys):
    import json

    from openmav.cli import main

    _, folder = saved
    common = ["--model", str(folder), "--prompt", PROMPT, "--max-new-tokens", "3", "--format", "jsonl"]
    assert main(common) == 0
    whole = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main([*common, "--device-map", "sequential", "--offload-folder", str(tmp_path / "off")]) == 0
    split = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(split) == len(whole) == 3
    for a, b in zip(split, whole):
        assert a["token"] == b["token"]
        np.testing.assert_allclose(a["attention_entropy"], b["attention_entropy"], atol=1e-4)
        np.testing.assert_allclose(a["mlp_norms"], b["mlp_norms"], rtol=1e-4)


def test_compare_with_a_device_map(saved, tmp_path):
    from openmav.cli import main

    _, folder = saved
    code = main(["compare", "--model", str(folder), "--mode", "custom", "--prompts", "The cat sat down",
                 "The dog sat down", "--output-dir", str(tmp_path / "cmp"), "--device-map", "auto"])
    assert code == 0 and (tmp_path / "cmp" / "custom" / "differences.csv").is_file()


@pytest.mark.parametrize("command", [[], ["maps", "--prompt", "hi", "--output-dir", "out"], ["serve"],
                                     ["compare", "--mode", "custom", "--prompts", "a b", "c d"]])
@pytest.mark.parametrize("flags,needle", [
    (["--device", "cpu", "--device-map", "auto"], "exclude each other"),
    (["--offload-folder", "off"], "goes with --device-map"),
    (["--device", "cuda:7"], "CUDA" if not torch.cuda.is_available() else "no cuda:7"),
    (["--device-map", "auto", "--offload-folder", "a_file"], "exists and is not a directory"),
])
def test_placement_flags_are_refused_in_one_line(command, flags, needle, capsys, tmp_path, monkeypatch):
    from openmav.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("mine")
    assert main([*command, *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert (tmp_path / "a_file").read_text() == "mine"


@pytest.mark.parametrize("device_map,error,needle", [
    ({"model.nothing": "cpu", "": "cpu"}, InputError, "does not have"),
    ({"": "tpu"}, DeviceError, "unknown device 'tpu'"),
    ({"": -1}, InputError, "negative"),
    ({"": 3} if not torch.cuda.is_available() else {"": 99}, DeviceError, "device map entry ''"),
    ({"": None}, InputError, "is not a device"),
])
def test_impossible_device_maps_are_one_line(saved, device_map, error, needle):
    _, folder = saved
    with pytest.raises(error, match=needle) as info:
        load_model(str(folder), device=None, device_map=device_map)
    assert "\n" not in str(info.value)
