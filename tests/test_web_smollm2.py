"""The explorer's API on SmolLM2-135M: attention and ablation against independent recomputations,
and circuit discovery on the IOI prompt end to end."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from openmav.web.app import create_app

pytestmark = pytest.mark.smollm2
IOI = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def client(smollm2):
    return TestClient(create_app(smollm2))


def test_model_and_attention(client, smollm2):
    info = client.get("/api/model").json()
    assert (info["n_layers"], info["n_heads"], info["n_kv_heads"]) == (30, 9, 3)
    heads = [{"layer": 0, "head": 0}, {"layer": 14, "head": 4}, {"layer": 29, "head": 8}]
    data = client.post("/api/attention", json={"prompt": IOI, "heads": heads}).json()
    ids = smollm2.tokenizer(IOI, return_tensors="pt").input_ids
    before = smollm2.model.config._attn_implementation
    smollm2.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            ref = smollm2.model(input_ids=ids, output_attentions=True).attentions
    finally:
        smollm2.model.set_attn_implementation(before)
    for h in data["heads"]:
        np.testing.assert_allclose(np.array(h["weights"]), ref[h["layer"]][0, h["head"]].numpy(), atol=1e-5)
    assert [t["label"] for t in data["tokens"]].count("␣John_2") == 1
    r = client.post("/api/attention", json={"prompt": IOI, "heads": [{"layer": 30, "head": 0}]})
    assert r.status_code == 422 and "layers 0-29" in r.json()["detail"]


def test_ablation_matches_hand_recomputation(client, smollm2):
    ids = smollm2.tokenizer(IOI, return_tensors="pt").input_ids
    heads, hd = [(9, 1), (14, 4)], smollm2.parts.head_dim
    handles = []
    for layer, head in heads:
        def pre(module, args, head=head):
            x = args[0].clone()
            x[..., head * hd:(head + 1) * hd] = 0
            return (x,)
        handles.append(smollm2.parts.o_proj[layer].register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            after = torch.softmax(smollm2.model(input_ids=ids).logits[0, -1].double(), -1)
    finally:
        for h in handles:
            h.remove()
    p = client.post("/api/predict", json={"prompt": IOI, "ablations": [{"layer": l, "head": h} for l, h in heads]})
    got = p.json()["after"]
    assert [t["id"] for t in got] == torch.topk(after, 5).indices.tolist()
    np.testing.assert_allclose([t["prob"] for t in got], torch.topk(after, 5).values.numpy(), atol=1e-5)


def test_circuit_discovery_on_ioi(client, smollm2):
    mary, john = (smollm2.tokenizer(" " + n, add_special_tokens=False).input_ids for n in ("Mary", "John"))
    body = {"prompt": IOI, "metric": "logit_diff", "token_a": mary[0], "token_b": john[0], "top_n": 6}
    job = client.post("/api/circuit", json=body).json()
    deadline = time.monotonic() + 120
    while (state := client.get(f"/api/jobs/{job['job_id']}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert state["status"] == "done", state["error"]
    r = state["result"]
    assert r["corrupt_prompt"] == "When John and Mary went to the store, Mary gave a drink to"
    assert r["clean_metric"] > r["corrupt_metric"]  # the clean prompt prefers Mary
    attribution, verified = np.array(r["attribution"]), np.array(r["verified"])
    assert attribution.shape == verified.shape == (30, 9)
    assert r["correlation"] == pytest.approx(np.corrcoef(attribution.ravel(), verified.ravel())[0, 1], abs=1e-6)
    assert r["correlation"] > 0.3
    top = {(n["layer"], n["head"]) for n in r["nodes"]}
    assert len(top) == 6
    for edge in r["edges"]:
        assert edge["source"][0] < edge["target"][0] and tuple(edge["source"]) in top
    bad = client.post("/api/circuit", json=dict(body, token_b=mary[0]))
    assert bad.status_code == 422 and "same token" in bad.json()["detail"]
    bad = client.post("/api/circuit", json=dict(body, prompt="The key to the cabinets"))
    assert bad.status_code == 422 and "names" in bad.json()["detail"]
