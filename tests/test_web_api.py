"""The explorer's JSON API on a tiny random model: numbers against independent recomputations (attention, the
model view, the logit lens, direct logit attribution, ablation, evaluations, studies, circuits), bad input
answered 422 with the valid range, jobs bounded, progress streamed, a loopback load test."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from openmav.web.app import create_app
from openmav.web.jobs import BusyError, JobQueue, ModelGate
from openmav.web.server import running_server
from web_jobs import wait_job

IOI = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def lm():
    from openmav.testing import tiny_model

    return tiny_model("llama", n_layers=2, n_heads=4)


@pytest.fixture(scope="module")
def client(lm):
    return TestClient(create_app(lm, max_prompt_tokens=64, max_jobs=2))


def reference_attention(lm, prompt):
    ids = lm.tokenizer(prompt, return_tensors="pt").input_ids
    before = lm.model.config._attn_implementation
    lm.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = lm.model(input_ids=ids, output_attentions=True)
    finally:
        lm.model.set_attn_implementation(before)
    return ids, [a[0].numpy() for a in out.attentions]


def zeroed_logits(lm, ids, heads):
    """Logits [P, V] with each (layer, head)'s slice of the o_proj input set to zero, by hand."""
    hd, handles = lm.parts.head_dim, []
    for layer, head in heads:
        def pre(module, args, head=head):
            x = args[0].clone()
            x[..., head * hd:(head + 1) * hd] = 0
            return (x,)
        handles.append(lm.parts.o_proj[layer].register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            return lm.model(input_ids=ids).logits[0].double()
    finally:
        for h in handles:
            h.remove()


def test_model_info(client, lm):
    info = client.get("/api/model").json()
    assert (info["n_layers"], info["n_heads"]) == (2, 4)
    assert info["presets"]["IOI"] == IOI
    assert info["max_prompt_tokens"] == 64


def test_attention_matches_output_attentions_and_labels_are_disambiguated(client, lm):
    r = client.post("/api/attention", json={"prompt": IOI, "heads": [{"layer": 1, "head": 2}, {"layer": 0, "head": 3}]})
    assert r.status_code == 200
    data = r.json()
    ids, ref = reference_attention(lm, IOI)
    assert [t["id"] for t in data["tokens"]] == ids[0].tolist()
    labels = [t["label"] for t in data["tokens"]]
    assert "␣John" in labels and "␣John_2" in labels and labels.index("␣John") < labels.index("␣John_2")
    for h in data["heads"]:
        got = np.array(h["weights"])
        assert got.shape == (ids.shape[1],) * 2
        np.testing.assert_allclose(got, ref[h["layer"]][h["head"]], atol=2e-6)
        np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-4)


def test_predict_zero_ablation_matches_hand_recomputation(client, lm):
    ids = lm.tokenizer(IOI, return_tensors="pt").input_ids
    heads = [(0, 1), (1, 3)]
    body = {"prompt": IOI, "ablations": [{"layer": l, "head": h, "kind": "zero"} for l, h in heads],
            "position": 5, "token_id": 7, "top_k": 5}
    p = client.post("/api/predict", json=body).json()
    before = torch.softmax(zeroed_logits(lm, ids, [])[5], -1)
    after = torch.softmax(zeroed_logits(lm, ids, heads)[5], -1)
    assert [c["id"] for c in p["before"]] == torch.topk(before, 5).indices.tolist()
    assert [c["id"] for c in p["after"]] == torch.topk(after, 5).indices.tolist()
    np.testing.assert_allclose([c["prob"] for c in p["after"]], torch.topk(after, 5).values.numpy(), atol=1e-6)
    kl = float((before * (before.log() - after.log())).sum())
    assert p["kl"] == pytest.approx(kl, abs=1e-6) and p["kl"] > 0
    ent = lambda q: float(-(q * q.log()).sum())  # noqa: E731
    assert p["entropy_change"] == pytest.approx(ent(after) - ent(before), abs=1e-6)
    assert p["rank"]["rank_before"] == int((before > before[7]).sum()) + 1
    assert p["rank"]["rank_after"] == int((after > after[7]).sum()) + 1
    assert p["token"]["id"] == ids[0, 5].item()


def test_predict_without_ablation_has_zero_kl(client):
    p = client.post("/api/predict", json={"prompt": IOI}).json()
    assert p["kl"] == pytest.approx(0, abs=1e-12) and p["before"] == p["after"]


@pytest.mark.parametrize("body, needle", [
    ({"prompt": IOI, "heads": [{"layer": 2, "head": 0}]}, "layers 0-1"),
    ({"prompt": IOI, "heads": [{"layer": 0, "head": 4}]}, "heads 0-3"),
    ({"prompt": IOI, "heads": [{"layer": -1, "head": 0}]}, "valid layers are 0-1"),
    ({"prompt": "", "heads": []}, "at most 64 tokens"),
    ({"prompt": "hello world " * 60, "heads": []}, "at most 64 tokens"),
])
def test_attention_rejects_bad_input_naming_the_range(client, body, needle):
    r = client.post("/api/attention", json=body)
    assert r.status_code == 422 and needle in r.json()["detail"]


@pytest.mark.parametrize("body, needle", [
    ({"prompt": IOI, "token_id": 400}, "valid token ids are 0-399"),
    ({"prompt": IOI, "position": 99}, "positions 0-"),
    ({"prompt": IOI, "ablations": [{"layer": 0, "head": 9}]}, "heads 0-3"),
    ({"prompt": IOI, "ablations": [{"layer": 0, "head": 0, "kind": "melt"}]}, "kind"),
    ({"prompt": IOI, "ablations": [{"layer": 0, "head": 0, "positions": [500]}]}, "position 500"),
])
def test_predict_rejects_bad_input(client, body, needle):
    r = client.post("/api/predict", json=body)
    assert r.status_code == 422 and needle in r.json()["detail"]
    assert client.get("/api/model").status_code == 200  # still serving


def test_openapi_schema_lists_the_api(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/model", "/api/attention", "/api/predict", "/api/head_scores", "/api/evaluations",
                 "/api/studies", "/api/circuit", "/api/jobs/{job_id}", "/api/jobs/{job_id}/cancel",
                 "/api/jobs/{job_id}/events", "/api/model_view", "/api/logit_lens", "/api/attribution"):
        assert path in paths


def test_page_and_assets_are_local(client):
    page = client.get("/").text
    assert "http://" not in page and "https://" not in page  # no CDN
    for asset in ("style.css", "export.js", "heatmap.js", "app.js", "panels.js", "circuit.js", "views.js"):
        assert f"/static/{asset}" in page
        r = client.get(f"/static/{asset}")
        assert r.status_code == 200 and "cdn" not in r.text.lower()


def test_gate_is_first_come_first_served():
    gate, order = ModelGate(), []
    gate.acquire("first")
    threads = []
    for i in range(5):
        t = threading.Thread(target=lambda i=i: (gate.acquire(str(i)), order.append(i), gate.release()))
        t.start()
        threads.append(t)
        time.sleep(0.05)  # tickets are taken in this order
    gate.release()
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2, 3, 4]
    with pytest.raises(BusyError):
        gate.acquire("holder")
        try:
            gate.hold("late", timeout=0.05).__enter__()
        finally:
            gate.release()
    with gate.hold("after a timeout", timeout=1):  # a skipped ticket blocks nobody
        pass


def test_jobs_bounded_streamed_and_cancellable(client):
    jobs: JobQueue = client.app.state.jobs
    release = threading.Event()

    def slow(job):
        for i in range(100):
            job.progress({"done": i, "total": 100, "message": f"step {i}"})
            if job.cancel.is_set() or release.wait(0.01) and i >= 3:
                break
        return {"steps": i + 1}

    first = jobs.submit("test", {}, slow)
    second = jobs.submit("test", {}, slow)
    with pytest.raises(BusyError, match="at most 2 jobs"):
        jobs.submit("test", {}, slow)
    assert client.post("/api/jobs/999/cancel").status_code == 404
    assert client.post(f"/api/jobs/{second.id}/cancel").json()["status"] == "cancelled"  # still queued
    release.set()
    with client.stream("GET", f"/api/jobs/{first.id}/events") as stream:
        text = "".join(stream.iter_text())
    assert text.count("event: progress") >= 4 and "event: end" in text
    state = client.get(f"/api/jobs/{first.id}").json()
    assert state["status"] == "done" and state["result"] == {"steps": state["n_events"]}
    assert client.get(f"/api/jobs/{second.id}").json()["status"] == "cancelled"


def test_load_on_loopback_answers_every_request(lm):
    app = create_app(lm, max_prompt_tokens=64)
    bodies = [("/api/attention", {"prompt": IOI, "heads": [{"layer": 1, "head": 2}]}),
              ("/api/predict", {"prompt": IOI, "ablations": [{"layer": 1, "head": 1}]}),
              ("/api/predict", {"prompt": IOI, "token_id": 10 ** 6}),  # bad: 422
              ("/api/attention", {"prompt": "x", "heads": [{"layer": 9, "head": 0}]}),  # bad: 422
              ("/api/model", None)]
    with running_server(app) as url, httpx.Client(base_url=url, timeout=60) as http:
        def call(i):
            path, body = bodies[i % len(bodies)]
            return (http.get(path) if body is None else http.post(path, json=body)).status_code

        with ThreadPoolExecutor(max_workers=16) as pool:
            codes = list(pool.map(call, range(50)))
        assert len(codes) == 50 and set(codes) <= {200, 422}
        assert codes.count(422) == 20
        assert http.get("/api/model").status_code == 200


def test_evaluation_job_equals_library_and_single_head_predictions(lm):
    from openmav.interventions.evaluate import evaluate_all_heads
    from openmav.web import tasks

    client = TestClient(create_app(lm, max_prompt_tokens=64, max_jobs=2))
    tasks.EVALUATE_BATCH, before = 3, tasks.EVALUATE_BATCH  # 8 heads: batches of 3, 3, 2
    try:
        r = client.post("/api/evaluations", json={"prompt": IOI, "kind": "zero"})
        assert r.status_code == 200
        job_id = r.json()["job_id"]
        with client.stream("GET", f"/api/jobs/{job_id}/events") as stream:
            text = "".join(stream.iter_text())
    finally:
        tasks.EVALUATE_BATCH = before
    assert [line for line in text.splitlines() if "batch " in line and "/3" in line]
    for k in (1, 2, 3):
        assert f"batch {k}/3" in text
    state = client.get(f"/api/jobs/{job_id}").json()
    assert state["status"] == "done" and state["kind"] == "evaluate", state["error"]
    res = state["result"]
    ids = lm.tokenizer(IOI, return_tensors="pt").input_ids
    ref = evaluate_all_heads(lm, ids, kind="zero")
    np.testing.assert_allclose(np.array(res["kl"]), ref.kl, atol=1e-5)
    np.testing.assert_allclose(np.array(res["delta_top_prob"]), ref.delta_top_prob, atol=1e-5)
    assert res["top_id"] == ref.top_id and res["top_label"]
    kl = np.array(res["kl"])
    assert kl.shape == (2, 4) and kl.max() > 0
    for layer, head in [(0, 0), (1, 3)]:  # and against a single-head ablation through /api/predict
        p = client.post("/api/predict", json={"prompt": IOI, "ablations": [{"layer": layer, "head": head}]}).json()
        assert kl[layer, head] == pytest.approx(p["kl"], abs=1e-5)
    # a second request for the same prompt is a job too, answered from the cache
    again = wait_job(client, client.post("/api/evaluations", json={"prompt": IOI}).json()["job_id"])
    assert again["status"] == "done" and again["result"]["kl"] == res["kl"]
    assert "cached" in again["last_event"]["message"]


def test_evaluation_job_can_be_cancelled_and_rejects_bad_input(lm):
    from openmav.web import tasks

    client = TestClient(create_app(lm, max_prompt_tokens=64, max_jobs=2))
    assert client.post("/api/evaluations", json={"prompt": ""}).status_code == 422
    assert client.post("/api/evaluations", json={"prompt": IOI, "kind": "melt"}).status_code == 422
    gate = client.app.state.gate
    tasks.EVALUATE_BATCH, before = 1, tasks.EVALUATE_BATCH  # 8 forwards, cancelled after the first
    try:
        started = threading.Event()
        with gate.hold("test"):  # hold the model so the job stays queued until we let it go
            job_id = client.post("/api/evaluations", json={"prompt": IOI + " her"}).json()["job_id"]
            job = client.app.state.jobs.jobs[job_id]
            real = job.progress

            def progress(event):  # cancel as soon as the first batch is reported
                real(event)
                if event.get("step") == 1:
                    job.cancel.set()
                    started.set()
            job.progress = progress
        state = wait_job(client, job_id)
    finally:
        tasks.EVALUATE_BATCH = before
    assert started.is_set()
    assert state["status"] == "cancelled" and state["result"] is None
    assert state["last_event"]["step"] == 1 and state["n_events"] == 2  # start, batch 1/8, then nothing
    assert state["last_event"]["message"].startswith("batch 1/8")
    # cancelled while it waits for the model (the worker already took it from the queue): it never runs
    with gate.hold("test"):
        job_id = client.post("/api/evaluations", json={"prompt": IOI + " him"}).json()["job_id"]
        time.sleep(0.3)  # the worker is now blocked on the gate with this job
        assert client.post(f"/api/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    time.sleep(0.3)
    waited = client.get(f"/api/jobs/{job_id}").json()
    assert waited["status"] == "cancelled" and waited["n_events"] == 0
    # nothing half-done was cached: the next evaluation of that prompt runs every batch
    again = wait_job(client, client.post("/api/evaluations", json={"prompt": IOI + " her"}).json()["job_id"])
    assert again["status"] == "done" and again["last_event"]["message"].startswith("batch 1/1")  # 8 heads, 1 batch


def test_targeted_study_result_agrees_with_predict(client):
    base = client.post("/api/predict", json={"prompt": IOI, "top_k": 5}).json()
    target = base["before"][1]["id"]
    r = client.post("/api/studies", json={"prompt": IOI, "mode": "targeted", "target_id": target,
                                          "max_heads": 4, "candidates": 8})
    assert r.status_code == 200
    state = wait_job(client, r.json()["job_id"])
    assert state["status"] == "done", state["error"]
    res = state["result"]
    assert res["target_id"] == target and res["before_tokens"][0]["id"] == base["before"][0]["id"]
    heads = [{"layer": l, "head": h} for l, h in res["heads"]]
    after = client.post("/api/predict", json={"prompt": IOI, "ablations": heads, "top_k": 5}).json()
    assert [t["id"] for t in after["after"]] == [t["id"] for t in res["after_tokens"][:5]]
    np.testing.assert_allclose([t["prob"] for t in after["after"]], [t["prob"] for t in res["after_tokens"][:5]],
                               atol=1e-5)
    assert res["success"] == (after["after"][0]["id"] == target)


def test_study_rejects_bad_target(client):
    r = client.post("/api/studies", json={"prompt": IOI, "mode": "targeted", "target_id": 99999})
    assert r.status_code == 422 and "0-399" in r.json()["detail"]
    r = client.post("/api/studies", json={"prompt": IOI, "mode": "targeted"})
    assert r.status_code == 422 and "target_id" in r.json()["detail"]


def test_evaluation_and_study_take_every_ablation_kind(client, lm):
    """kind, factor and threshold reach the library: scale by 0.5 differs from zero and equals a direct call."""
    from openmav.interventions.evaluate import evaluate_all_heads

    ids = lm.tokenizer(IOI, return_tensors="pt").input_ids
    results = {}
    for shape in ({"kind": "scale", "factor": 0.5}, {"kind": "zero"}):
        r = client.post("/api/evaluations", json={"prompt": IOI, **shape})
        assert r.status_code == 200, r.text
        results[shape["kind"]] = wait_job(client, r.json()["job_id"])["result"]
    direct = evaluate_all_heads(lm, ids, kind="scale", factor=0.5)
    np.testing.assert_allclose(np.array(results["scale"]["kl"]), direct.kl, atol=1e-5)
    assert not np.allclose(np.array(results["scale"]["kl"]), np.array(results["zero"]["kl"]))
    r = client.post("/api/studies", json={"prompt": IOI, "mode": "generic", "max_heads": 2, "candidates": 4,
                                          "kind": "sparsify", "threshold": 0.05})
    assert r.status_code == 200, r.text
    assert wait_job(client, r.json()["job_id"])["status"] == "done"
    bad = client.post("/api/studies", json={"prompt": IOI, "kind": "sparsify", "threshold": -1})
    assert bad.status_code == 422


# ---- model view, logit lens, direct logit attribution ------------------------------------------------------------
def test_model_view_is_every_heads_attention_pooled_by_max(client, lm):
    ids, ref = reference_attention(lm, IOI)
    n = ids.shape[1]
    full = client.post("/api/model_view", json={"prompt": IOI, "size": 64}).json()
    assert (full["n_layers"], full["n_heads"], full["size"], full["pooled"]) == (2, 4, n, False)
    for layer in range(2):
        for head in range(4):
            np.testing.assert_allclose(np.array(full["heads"][layer][head]), ref[layer][head], atol=6e-5)
    small = client.post("/api/model_view", json={"prompt": IOI, "size": 5}).json()
    assert small["size"] == 5 and small["pooled"] and [t["id"] for t in small["tokens"]] == ids[0].tolist()
    edges = np.linspace(0, n, 6).round().astype(int)
    for layer, head in [(0, 0), (1, 3)]:
        want = [[ref[layer][head][edges[i]:edges[i + 1], edges[j]:edges[j + 1]].max() for j in range(5)]
                for i in range(5)]
        np.testing.assert_allclose(np.array(small["heads"][layer][head]), want, atol=6e-5)
    for body in ({"prompt": IOI, "size": 3}, {"prompt": IOI, "size": 65}, {"prompt": ""}):
        assert client.post("/api/model_view", json=body).status_code == 422


def block_outputs(lm, ids):
    """The residual stream after each block [L, P, d], read by forward hooks on the blocks."""
    seen = {}
    hooks = [b.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out[0] if isinstance(out, tuple)
                                                                              else out))
             for i, b in enumerate(lm.parts.blocks)]
    try:
        with torch.no_grad():
            logits = lm.model(input_ids=ids).logits[0]
    finally:
        for h in hooks:
            h.remove()
    return torch.stack([seen[i][0] for i in range(len(seen))]), logits


def test_logit_lens_matches_the_final_norm_and_unembedding_by_hand(client, lm):
    ids = lm.tokenizer(IOI, return_tensors="pt").input_ids
    resid, logits = block_outputs(lm, ids)
    r = client.post("/api/logit_lens", json={"prompt": IOI, "position": 5, "token_id": 7, "top_k": 4})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["position"] == 5 and data["token"]["id"] == ids[0, 5].item() and len(data["layers"]) == 2
    norm, head = lm.model.model.norm, lm.model.lm_head
    for row in data["layers"]:
        with torch.no_grad():
            probs = torch.softmax(head(norm(resid[row["layer"], 5])).double(), -1)
        top = torch.topk(probs, 4)
        assert [t["id"] for t in row["top"]] == top.indices.tolist()
        np.testing.assert_allclose([t["prob"] for t in row["top"]], top.values.numpy(), atol=1e-6)
        assert row["target"]["prob"] == pytest.approx(float(probs[7]), abs=1e-7)
        assert row["target"]["rank"] == int((probs > probs[7]).sum()) + 1
    last = torch.softmax(logits[5].double(), -1)  # the last layer's lens is the model's own prediction
    assert data["layers"][-1]["top"][0]["id"] == int(last.argmax())
    assert data["layers"][-1]["top"][0]["prob"] == pytest.approx(float(last.max()), abs=1e-6)
    default = client.post("/api/logit_lens", json={"prompt": IOI}).json()
    assert default["position"] == ids.shape[1] - 1 and default["layers"][0]["target"] is None
    for body, needle in (({"prompt": IOI, "position": 99}, "positions 0-20"),
                         ({"prompt": IOI, "token_id": 400}, "valid token ids are 0-399"),
                         ({"prompt": IOI, "top_k": 0}, "top_k")):
        bad = client.post("/api/logit_lens", json=body)
        assert bad.status_code == 422 and needle in bad.json()["detail"], bad.text


def test_attribution_endpoint_sums_to_the_logit_and_equals_the_library(client, lm):
    from openmav.interventions.attribution import direct_logit_attribution

    ids = lm.tokenizer(IOI, return_tensors="pt").input_ids
    top = client.post("/api/predict", json={"prompt": IOI, "top_k": 1}).json()["before"][0]
    data = client.post("/api/attribution", json={"prompt": IOI}).json()
    assert data["target"]["id"] == top["id"] and data["target"]["prob"] == pytest.approx(top["prob"], abs=1e-9)
    assert data["position"] == ids.shape[1] - 1 and data["token"]["label"] == "␣to_2"
    heads = np.array(data["heads"])
    assert abs(heads.sum() + sum(c["value"] for c in data["components"]) - data["logit"]) < 1e-4
    assert data["error"] < 1e-4 and data["softcap"] is None
    ref = direct_logit_attribution(lm, ids, 9, 4)
    chosen = client.post("/api/attribution", json={"prompt": IOI, "position": 4, "token_id": 9}).json()
    np.testing.assert_allclose(np.array(chosen["heads"]), ref.heads, atol=1e-9)
    assert chosen["logit"] == pytest.approx(ref.logit) and chosen["target"]["label"]
    for body, needle in (({"prompt": IOI, "position": 21}, "positions 0-20"),
                         ({"prompt": IOI, "token_id": 400}, "valid token ids are 0-399")):
        bad = client.post("/api/attribution", json=body)
        assert bad.status_code == 422 and needle in bad.json()["detail"], bad.text


def test_hybrid_model_views_leave_layers_without_attention_null(tiny):
    lm = tiny("jamba")
    mixer = next(i for i in range(lm.parts.n_layers) if i not in lm.parts.attention_layers)
    attn = lm.parts.attention_layers[0]
    client = TestClient(create_app(lm))
    assert client.get("/api/model").json()["attention_layers"] == list(lm.parts.attention_layers)
    view = client.post("/api/model_view", json={"prompt": "hello world"}).json()
    assert all(h is None for h in view["heads"][mixer]) and all(h is not None for h in view["heads"][attn])
    dla = client.post("/api/attribution", json={"prompt": "hello world"}).json()
    assert all(v is None for v in dla["heads"][mixer]) and all(v is not None for v in dla["heads"][attn])
    assert any(c["kind"] == "mixer" for c in dla["components"])
    bad = client.post("/api/attention", json={"prompt": "hello world", "heads": [{"layer": mixer, "head": 0}]})
    assert bad.status_code == 422 and "no attention heads" in bad.json()["detail"]
    lens = client.post("/api/logit_lens", json={"prompt": "hello world"}).json()
    assert len(lens["layers"]) == lm.parts.n_layers


# ---- the logit difference in evaluations, studies and circuits ---------------------------------------------------
def test_evaluation_and_study_take_the_logit_difference(client, lm):
    from openmav.interventions.evaluate import evaluate_all_heads
    from openmav.interventions.studies import logit_diff_study

    ids = lm.tokenizer(IOI, return_tensors="pt").input_ids
    r = client.post("/api/evaluations", json={"prompt": IOI, "token_a": 17, "token_b": 250})
    res = wait_job(client, r.json()["job_id"])["result"]
    ref = evaluate_all_heads(lm, ids, tokens=(17, 250))
    np.testing.assert_allclose(np.array(res["delta_logit_diff"]), ref.delta_logit_diff, atol=1e-5)
    assert res["logit_diff_tokens"] == [17, 250] and len(res["logit_diff_labels"]) == 2
    default = wait_job(client, client.post("/api/evaluations", json={"prompt": IOI}).json()["job_id"])["result"]
    top2 = client.post("/api/predict", json={"prompt": IOI, "top_k": 2}).json()["before"]
    assert default["logit_diff_tokens"] == [t["id"] for t in top2]
    bad = client.post("/api/evaluations", json={"prompt": IOI, "token_a": 17})
    assert bad.status_code == 422 and "both token_a and token_b" in bad.json()["detail"]
    r = client.post("/api/studies", json={"prompt": IOI, "mode": "logit_diff", "token_a": 17, "token_b": 250,
                                          "max_heads": 2, "candidates": 4})
    state = wait_job(client, r.json()["job_id"])
    assert state["status"] == "done", state["error"]
    study = logit_diff_study(lm, ids, 17, 250, max_heads=2, candidates=4)
    assert state["result"]["heads"] == [list(h) for h in study.heads]
    assert state["result"]["metric_after"] == pytest.approx(study.metric_after, abs=1e-5)
    assert state["result"]["token_labels"] and state["result"]["metric_name"] == "logit_diff"
    bad = client.post("/api/studies", json={"prompt": IOI, "mode": "logit_diff"})
    assert bad.status_code == 422 and "token_a and token_b" in bad.json()["detail"]


def test_circuit_tokens_come_from_the_prompt_pair_and_verify_k_is_kept(client, lm):
    mary, john = (lm.tokenizer(" " + n, add_special_tokens=False).input_ids[0] for n in ("Mary", "John"))
    r = client.post("/api/circuit", json={"prompt": IOI, "top_n": 2, "verify_k": 3})
    assert r.status_code == 200, r.text
    state = wait_job(client, r.json()["job_id"])
    assert state["status"] == "done", state["error"]
    res = state["result"]
    assert (res["token_a"], res["token_b"]) == (mary, john) and "position 2" in res["tokens_from"]
    assert state["params"]["token_a"] == mary and res["metric_label"] == "logit(␣Mary) − logit(␣John)"
    assert res["n_verified"] == 3 and sum(v is not None for row in res["verified"] for v in row) == 3
    effects = [abs(n["effect"]) for n in res["nodes"]]
    assert len(effects) == 2 and effects == sorted(effects, reverse=True) and "negative means" in res["sign"]
    chosen = wait_job(client, client.post("/api/circuit", json={"prompt": IOI, "top_n": 2, "token_a": john,
                                                                "token_b": mary}).json()["job_id"])["result"]
    assert chosen["tokens_from"] == "chosen" and chosen["clean_metric"] == pytest.approx(-res["clean_metric"])
    for body, needle in (({"prompt": IOI, "top_n": 4, "verify_k": 3}, "verify_k must be in 4-8"),
                         ({"prompt": IOI, "token_a": mary}, "both token_a and token_b, or neither"),
                         ({"prompt": IOI, "top_n": 9}, "top_n 9 is more than the model's 8 heads")):
        bad = client.post("/api/circuit", json=body)
        assert bad.status_code == 422 and needle in bad.json()["detail"], bad.text
