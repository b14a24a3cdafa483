"""Every view on CUDA (run only where CUDA is present: ``pytest -m gpu``).

The same tiny model on the CPU and on the GPU must give the same numbers (fp32, 1e-4),
results must come back as CPU arrays, and a model object handed in stays on its device.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def pair(tiny):
    from openmav.backends.loading import wrap_model

    cpu = tiny("llama", n_layers=3)
    gpu = wrap_model(copy.deepcopy(cpu.model).to("cuda"), cpu.tokenizer, name="tiny-llama-cuda")
    return cpu, gpu


def test_steps_on_cuda_equal_cpu(pair):
    from openmav.capture import generate_steps

    cpu, gpu = pair
    a = list(generate_steps(cpu, PROMPT, 4, stop_at_eos=False))
    b = list(generate_steps(gpu, PROMPT, 4, stop_at_eos=False))
    assert [r.token.id for r in a] == [r.token.id for r in b]
    for x, y in zip(a, b):
        assert isinstance(y.logits, np.ndarray)
        np.testing.assert_allclose(x.logits, y.logits, atol=1e-4)
        np.testing.assert_allclose(x.attention, y.attention, atol=1e-4)


def test_interventions_and_circuits_on_cuda(pair):
    from openmav.interventions.circuit import attribution_patching, logit_diff
    from openmav.interventions.evaluate import evaluate_all_heads

    cpu, gpu = pair
    ids = cpu.tokenizer(PROMPT, return_tensors="pt").input_ids
    np.testing.assert_allclose(evaluate_all_heads(cpu, ids).kl, evaluate_all_heads(gpu, ids.cuda()).kl, atol=1e-4)
    corrupt = cpu.tokenizer(PROMPT.replace("Mary", "John"), return_tensors="pt").input_ids
    if corrupt.shape == ids.shape:
        metric = logit_diff(5, 7)
        a = attribution_patching(cpu, ids, corrupt, metric)
        b = attribution_patching(gpu, ids.cuda(), corrupt.cuda(), metric)
        np.testing.assert_allclose(a, b, atol=1e-3)
        from openmav.interventions.circuit import discover_circuit

        on_cpu = discover_circuit(cpu, ids, corrupt, metric, top_n=4, verify_k=8)
        on_gpu = discover_circuit(gpu, ids.cuda(), corrupt.cuda(), metric, top_n=4, verify_k=8)
        assert [(n["layer"], n["head"]) for n in on_gpu.nodes] == [(n["layer"], n["head"]) for n in on_cpu.nodes]


def test_extractor_keeps_a_cuda_model_on_cuda(pair):
    from openmav.analysis.extractor import AttentionExtractor

    _, gpu = pair
    ex = AttentionExtractor(model=gpu.model, tokenizer=gpu.tokenizer)
    ex.extract_activations(PROMPT)
    assert next(gpu.model.parameters()).device.type == "cuda"
