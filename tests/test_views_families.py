"""Every view on families of every block shape: parallel, post-LN, MoE, multi-latent, hybrid, attention-free.

Numbers are checked elsewhere against recomputations; here each view runs on each
shape and either shows the model or says, in one sentence, why a part does not apply.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from rich.console import Console

from openmav.analysis.extractor import AttentionExtractor
from openmav.analysis.head_scores import compute_head_scores
from openmav.errors import InputError, OpenMavError
from openmav.maps.run import MapsOptions, run_maps
from openmav.training import show_model
from openmav.web.app import create_app
from web_jobs import wait_job

SHAPES = ["gpt_neo", "falcon", "bert", "mixtral", "deepseek_v3", "jamba", "gemma2"]
PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def models(tiny):
    return {t: tiny(t) for t in [*SHAPES, "mamba"]}


@pytest.mark.parametrize("model_type", [*SHAPES, "mamba"])
def test_live_view_renders(models, model_type):
    lm = models[model_type]
    console = Console(record=True, width=120, file=open("/dev/null", "w"))
    show_model(lm.model, lm.tokenizer, "The cat sat", max_new_tokens=3, console=console,
               selected_panels=["generated_text", "top_predictions", "attention_entropy", "logit_lens"])
    text = console.export_text()
    assert "Traceback" not in text and text.strip()


@pytest.mark.parametrize("model_type", SHAPES)
def test_maps_extractor_and_head_scores(models, model_type, tmp_path):
    lm = models[model_type]
    out = tmp_path / "maps"
    result = run_maps(MapsOptions(model=None, prompt=PROMPT, output_dir=str(out), max_new_tokens=3, window=8,
                                  stride=4, workers=0), lm=lm, console=Console(file=open("/dev/null", "w")))
    side = json.loads(open(result.sidecar, encoding="utf-8").read())
    assert side["n_layers"] == lm.parts.n_layers
    ex = AttentionExtractor(model=lm)
    acts = ex.extract_activations(PROMPT)
    assert len(acts.attention) == len(lm.parts.attention_layers)  # a hybrid: its attention layers only
    comparison = ex.compare_prompts([PROMPT, "The cat sat on the mat"])
    assert len(comparison) == 2
    scores = compute_head_scores(lm, seq_len=6, n_repeats=2, batch=1)
    att = list(lm.parts.attention_layers)
    assert np.isfinite(scores.induction[att]).all()
    if len(att) < lm.parts.n_layers:
        assert np.isnan(np.delete(scores.induction, att, axis=0)).all()


@pytest.mark.parametrize("model_type", SHAPES)
def test_web_explorer_ablation_evaluation_studies_circuits(models, model_type):
    lm = models[model_type]
    client = TestClient(create_app(lm, max_prompt_tokens=64, max_jobs=2))
    info = client.get("/api/model").json()
    assert info["n_layers"] == lm.parts.n_layers
    layer = lm.parts.attention_layers[-1]
    r = client.post("/api/predict", json={"prompt": PROMPT, "ablations": [{"layer": layer, "head": 0}]})
    assert r.status_code == 200, r.text
    ev = wait_job(client, client.post("/api/evaluations", json={"prompt": PROMPT}).json()["job_id"])
    assert ev["status"] == "done", ev.get("error")
    kl = ev["result"]["kl"]
    assert all((v is None) == (i not in lm.parts.attention_layers) for i, row in enumerate(kl) for v in row)
    st = wait_job(client, client.post("/api/studies", json={"prompt": PROMPT, "max_heads": 2, "candidates": 3}
                                   ).json()["job_id"])
    assert st["status"] == "done", st.get("error")
    token = lm.tokenizer(" Mary").input_ids[-1]
    other = lm.tokenizer(" John").input_ids[-1]
    ci = wait_job(client, client.post("/api/circuit", json={"prompt": PROMPT, "token_a": token, "token_b": other,
                                                         "top_n": 3}).json()["job_id"])
    assert ci["status"] == "done", ci.get("error")


def test_attention_free_model_says_why(models, tmp_path):
    lm = models["mamba"]
    with pytest.raises(InputError, match="no attention layers"):
        run_maps(MapsOptions(model=None, prompt=PROMPT, output_dir=str(tmp_path / "m"), max_new_tokens=2),
                 lm=lm, console=Console(file=open("/dev/null", "w")))
    with pytest.raises(OpenMavError, match="no attention layers"):
        compute_head_scores(lm, seq_len=6, n_repeats=2, batch=1)
    client = TestClient(create_app(lm, max_prompt_tokens=64, max_jobs=2))
    r = client.post("/api/evaluations", json={"prompt": PROMPT})
    assert r.status_code in (200, 422, 501)
    if r.status_code == 200:
        state = wait_job(client, r.json()["job_id"])
        assert state["status"] == "error" and "no attention layers" in state["error"]
