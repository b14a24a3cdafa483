"""Corpus scans in the explorer (``mav serve --scan DIR``): the scan API against the scan's own queries and an
independent recomputation of a neuron's logit effect from the weights; bad input answered 404/422 in one line;
``--scan`` refused before the model loads; and in Debian's headless Chromium the Neurons and Heads tabs, a
unit's page (contexts shaded, histogram, logit effect), a context opened in the attention view, and token
texts that look like HTML shown as text.  ``MAV_SCREENSHOTS=DIR`` keeps a screenshot of each tab there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from urllib.parse import urlencode

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

import openmav.scan
from openmav.errors import InputError
from openmav.scan.plan import EDGES
from openmav.web.app import create_app
from openmav.web.neuron_effect import neuron_logit_effect
from openmav.web.scans import histogram_bins

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]
XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script> & "quoted"'
DOCS = [f"The cat number {i} sat on the mat, and the dog watched it from the door." for i in range(12)] + \
       [f"When Mary and John went to the store, John gave a drink to Mary {i} times." for i in range(6)] + \
       [XSS * 2] * 4 + ["a b c d e f g a b c d e f g a b c d e f g"] * 3


@pytest.fixture(scope="module")
def lm():
    from openmav.testing import tiny_model

    return tiny_model("llama", n_layers=2, n_heads=4)


@pytest.fixture(scope="module")
def scan_dir(lm, tmp_path_factory):
    folder = tmp_path_factory.mktemp("scan")
    corpus = folder / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS), encoding="utf-8")
    openmav.scan(lm, corpus, folder / "out", context=16, top_k=3, force=True)
    return folder / "out"


@pytest.fixture(scope="module")
def scan(scan_dir):
    return openmav.scan.open(scan_dir)


@pytest.fixture(scope="module")
def app(lm, scan_dir):
    return create_app(lm, max_prompt_tokens=96, scans=[scan_dir])


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app)


def get(client, path, status=200):
    r = client.get(path)
    assert r.status_code == status, r.text
    return r.json()


# ---- the API ------------------------------------------------------------------------------------------------


def test_scans_listed_with_their_model_and_contents(client, scan, scan_dir, lm):
    (info,) = get(client, "/api/scans")
    assert info["folder"] == str(scan_dir) and info["model"] == lm.name and info["same_model"]
    assert info["layers"] == [0, 1] and info["top_k"] == 3 and info["context"] == 16
    assert info["tokens"] == scan.manifest["tokens"] and info["documents"] == len(DOCS)
    assert info["neurons"] == {"0": 128, "1": 128} and info["heads"] == {"0": 4, "1": 4}


@pytest.mark.parametrize("by,order", [("max", "desc"), ("density", "desc"), ("mean", "asc"), ("std", "desc")])
def test_units_sorted_as_the_scan_sorts_them(client, scan, by, order):
    rows = get(client, f"/api/scans/0/units?by={by}&order={order}&limit=40")
    ref = scan.sort_units(by=by, kind="neuron", limit=40, descending=order == "desc")
    assert [(r["layer"], r["unit"]) for r in rows] == [(r["layer"], r["unit"]) for r in ref]
    column = {"density": "frac_pos"}.get(by, by)
    values = [r[column] for r in rows]
    assert values == sorted(values, reverse=order == "desc")
    one_layer = get(client, "/api/scans/0/units?by=max&layer=1&limit=5")
    assert {r["layer"] for r in one_layer} == {1}


def test_heads_sorted_by_any_score(client, scan):
    every = scan.sql("SELECT layer, unit, induction, prev_token FROM units WHERE kind = 'head'").df()
    for by in ("induction", "prev_token"):
        rows = get(client, f"/api/scans/0/heads?by={by}")
        assert len(rows) == 8 and [r[by] for r in rows] == sorted(every[by], reverse=True)
    asc = get(client, "/api/scans/0/heads?by=layer&order=asc")
    assert [(r["layer"], r["head"]) for r in asc] == [(l, h) for l in range(2) for h in range(4)]


def test_unit_page_equals_the_scan(client, scan):
    top = scan.sort_units(by="max", limit=1)[0]
    layer, unit = top["layer"], top["unit"]
    page = get(client, f"/api/scans/0/unit/neuron/{layer}/{unit}")
    summary = scan.summary("neuron", layer, unit)
    assert page["summary"]["max"] == pytest.approx(summary["max"]) and page["scores"] is None
    assert [b["count"] for b in page["histogram"]] == list(summary["hist"])
    assert sum(b["count"] for b in page["histogram"]) == summary["count"]
    ref = scan.top_contexts("neuron", layer, unit, limit=3)  # top_k=3
    assert len(page["contexts"]) == len(ref) == 3
    for got, want in zip(page["contexts"], ref):
        assert got["value"] == pytest.approx(want["value"]) and got["token"] == want["token"]
        assert [t["text"] for t in got["tokens"]] == want["context_tokens"]
        assert got["text"] == "".join(want["context_tokens"])
        values = [t["value"] for t in got["tokens"]]
        assert [v is None for v in values] == [not np.isfinite(v) for v in want["context_values"]]
        assert got["tokens"][got["hit_offset"]]["value"] == pytest.approx(want["value"], rel=1e-2)  # kept coarser
        assert got["tokens"][got["hit_offset"]]["id"] == want["token_id"]
    head = get(client, "/api/scans/0/unit/head/1/2")
    assert head["scores"]["induction"] == pytest.approx(scan.summary("head", 1, 2)["induction"])


def test_histogram_bins_follow_the_fixed_edges():
    bins = histogram_bins(range(len(EDGES) + 1))
    assert bins[0]["lo"] is None and bins[0]["hi"] == -2.0 ** 14 and bins[0]["label"].startswith("below ")
    assert bins[-1]["hi"] is None and bins[-1]["lo"] == 2.0 ** 14 and bins[-1]["label"].endswith(" and above")
    middle = bins[len(bins) // 2]  # |x| < 2^-10, zero inside
    assert middle["lo"] == pytest.approx(-2.0 ** -10) and middle["hi"] == pytest.approx(2.0 ** -10)
    assert [b["lo"] for b in bins[1:]] == pytest.approx([float(e) for e in EDGES])
    assert [b["count"] for b in bins] == list(range(len(EDGES) + 1))


def test_token_search_finds_the_units_that_fire_on_it(client, scan):
    found = get(client, "/api/scans/0/token?text=the&limit=5")
    matched = {t["token"] for t in found["tokens"]}
    assert matched and matched <= {"the", " the"}
    ref = scan.sql("SELECT layer, unit, count(*) AS n, max(value) AS m FROM top_contexts WHERE kind = 'neuron' "
                   "AND token IN ('the', ' the') AND rank < 3 GROUP BY layer, unit ORDER BY n DESC, m DESC, layer, unit "
                   "LIMIT 5").fetchall()
    assert [(u["layer"], u["unit"], u["hits"]) for u in found["units"]] == [(a, b, n) for a, b, n, _ in ref]
    exact = get(client, "/api/scans/0/token?text=%20the&kind=neuron&limit=3")
    assert [t["token"] for t in exact["tokens"]] in ([" the"], [])
    assert get(client, "/api/scans/0/token?text=zzzzqqq") == {"tokens": [], "units": []}


def by_hand_effect(lm, layer, unit):
    """W_U (g * W_down[:, unit]) from the weights themselves (Llama: RMS norm, no biases)."""
    m = lm.model
    column = m.model.layers[layer].mlp.down_proj.weight[:, unit].double()
    return m.lm_head.weight.double() @ (m.model.norm.weight.double() * column)


def test_logit_effect_equals_the_weights(client, lm):
    page = get(client, "/api/scans/0/effect/1/7?k=5")
    ref = by_hand_effect(lm, 1, 7)
    top, bottom = torch.topk(ref, 5), torch.topk(-ref, 5)
    assert [t["id"] for t in page["top"]] == top.indices.tolist()
    assert [t["id"] for t in page["bottom"]] == bottom.indices.tolist()
    assert [t["value"] for t in page["top"]] == pytest.approx(top.values.tolist(), abs=1e-5)
    assert [t["value"] for t in page["bottom"]] == pytest.approx((-bottom.values).tolist(), abs=1e-5)
    assert "down projection" in page["applied"] and "final norm's elementwise weight" in page["applied"]
    assert all(t["label"] for t in page["top"])


def test_logit_effect_through_a_layernorm_and_conv1d():
    """GPT-2: Conv1D down projection with a bias, LayerNorm with a bias: the column, centred, times the weight."""
    from openmav.testing import tiny_model

    lm = tiny_model("gpt2", n_layers=2, n_heads=4)
    m = lm.model
    with torch.no_grad():  # weights and biases far from the defaults, so nothing passes by luck
        m.transformer.ln_f.weight.uniform_(0.5, 2.0)
        m.transformer.ln_f.bias.uniform_(-1, 1)
        m.transformer.h[0].mlp.c_proj.bias.uniform_(-1, 1)
    got = neuron_logit_effect(lm, 0, 11, k=6)
    column = m.transformer.h[0].mlp.c_proj.weight[11].double()  # Conv1D keeps [in, out]
    ref = m.lm_head.weight.double() @ (m.transformer.ln_f.weight.double() * (column - column.mean()))
    assert [i for i, _ in got["top"]] == torch.topk(ref, 6).indices.tolist()
    assert [v for _, v in got["top"]] == pytest.approx(torch.topk(ref, 6).values.tolist(), abs=1e-5)
    assert "centred" in got["applied"]


@pytest.mark.parametrize("path,status,words", [
    ("/api/scans/1/units", 404, "no scan 1: this server has scans 0-0"),
    ("/api/scans/0/unit/neuron/5/0", 422, "layer 5 was not scanned"),
    ("/api/scans/0/unit/neuron/0/128", 422, "no neuron 128 in layer 0"),
    ("/api/scans/0/unit/head/0/4", 422, "no head 4 in layer 0"),
    ("/api/scans/0/unit/axon/0/0", 422, "kind"),
    ("/api/scans/0/unit/neuron/-1/0", 422, "layer"),
    ("/api/scans/0/units?by=colour", 422, "by"),
    ("/api/scans/0/units?layer=9", 422, "layer 9 was not scanned"),
    ("/api/scans/0/units?limit=0", 422, "limit"),
    ("/api/scans/0/heads?by=entropy;DROP", 422, "by"),
    ("/api/scans/0/token?text=", 422, "text"),
    ("/api/scans/0/token", 422, "text"),
    ("/api/scans/0/token?text=" + "x" * 201, 422, "text"),
    ("/api/scans/0/token?text=a&kind=resid", 422, "neuron or head"),
    ("/api/scans/0/effect/0/999", 422, "no neuron 999"),
    ("/api/scans/0/effect/0/1?k=1000", 422, "k"),
])
def test_bad_input_is_one_line(client, path, status, words):
    r = client.get(path)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert words in detail and "\n" not in detail and "Traceback" not in detail


def test_scan_of_another_model_has_no_logit_effect(lm, scan_dir, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    for f in scan_dir.iterdir():
        if f.is_file():
            (other / f.name).write_bytes(f.read_bytes())
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["model"]["name"] = "some-other-model"
    (other / "manifest.json").write_text(json.dumps(manifest))
    c = TestClient(create_app(lm, scans=[scan_dir, other]))
    assert [s["same_model"] for s in get(c, "/api/scans")] == [True, False]
    detail = get(c, "/api/scans/1/effect/0/3", 422)["detail"]
    assert "made with some-other-model" in detail and lm.name in detail
    assert get(c, "/api/scans/1/unit/neuron/0/3")["summary"]["unit"] == 3  # the rest reads as usual


def test_an_unfinished_or_missing_scan_is_refused(lm, tmp_path):
    with pytest.raises(InputError, match="not a scan folder"):
        create_app(lm, scans=[tmp_path])


def test_host_and_origin_rules_hold_for_the_scan_routes(client):
    assert client.get("/api/scans", headers={"Host": "evil.example"}).status_code == 400
    assert client.get("/api/scans/0/units", headers={"Host": "evil.example:80"}).status_code == 400
    r = client.get("/api/scans")
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    assert client.get("/vendor/plotly.js").headers["content-type"].startswith("text/javascript")


def test_openapi_declares_the_scan_routes(client):
    paths = get(client, "/openapi.json")["paths"]
    for path in ("/api/scans", "/api/scans/{index}/units", "/api/scans/{index}/heads",
                 "/api/scans/{index}/unit/{kind}/{layer}/{unit}", "/api/scans/{index}/token",
                 "/api/scans/{index}/effect/{layer}/{unit}"):
        assert "200" in paths[path]["get"]["responses"], path


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_scan_routes_match_their_openapi_schema(app, mode):
    """Schemathesis over the scan routes of an app with a scan: no server error, and every status code, header
    and body as the schema declares, for valid and for invalid requests (each refused with a 4xx)."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import GenerationMode, checks

    checks.load_all_checks()
    run_checks = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
                  checks.response_headers_conformance, checks.response_schema_conformance,
                  checks.negative_data_rejection]
    schema = schemathesis.openapi.from_asgi("/openapi.json", app).include(path_regex="^/api/scans")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 6
    for operation in operations:
        inputs = (operation.path_parameters, operation.query, operation.body)
        if mode == "negative" and not any(len(part) for part in inputs):
            continue

        @settings(max_examples=20, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
        def call(case):
            case.call_and_validate(base_url="http://127.0.0.1:8050", checks=run_checks)

        call()


# ---- mav serve --scan ----------------------------------------------------------------------------------------


def serve(*argv):
    """``mav serve ...`` in a fresh interpreter: exit code, stderr, and whether torch was imported."""
    code = ("import sys, json\nfrom openmav.cli import main\ncode = main(sys.argv[1:])\n"
            "print(json.dumps({'code': code, 'torch': 'torch' in sys.modules}))")
    from openmav.web.server import free_port

    proc = subprocess.run([sys.executable, "-c", code, "serve", "--port", str(free_port()), *argv], check=False,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_serve_refuses_a_folder_that_is_no_finished_scan_before_torch(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "manifest.json").write_text(json.dumps({"complete": False, "model": {"name": "x"}}))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "manifest.json").write_text("{not json")
    for folder, words in ((tmp_path / "nothing", "is not a scan folder"), (tmp_path / "half", "is not finished"),
                          (tmp_path / "junk", "cannot read its manifest.json")):
        out, err = serve("--model", "x", "--scan", str(folder))
        lines = err.strip().splitlines()
        assert out["code"] != 0 and not out["torch"] and len(lines) == 1, err
        assert lines[0].startswith("mav serve: error: ") and words in lines[0]


def test_serve_refuses_a_scan_of_another_model_in_one_line(scan_dir):
    out, err = serve("--model", "smollm2-135m", "--scan", str(scan_dir))
    lines = err.strip().splitlines()
    assert out["code"] != 0 and not out["torch"] and len(lines) == 1, err
    assert "was made with tiny-llama, not smollm2-135m" in lines[0] and "--model tiny-llama" in lines[0]


# ---- the page ---------------------------------------------------------------------------------------------------

needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed")


@pytest.fixture(scope="module")
def server(app):
    from openmav.web.server import running_server

    with running_server(app) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server)
    page.wait_for_selector("body[data-ready='1'][data-scans='1']")
    yield page
    page.close()
    assert not errors, errors


def api(server, path):
    with httpx.Client(base_url=server, timeout=60) as http:
        r = http.get(path)
    assert r.status_code == 200, r.text
    return r.json()


def idle(page):
    page.wait_for_function("!mav.state.busy")


def shot(page, name):
    folder = os.environ.get("MAV_SCREENSHOTS")
    if folder:
        os.makedirs(folder, exist_ok=True)
        page.screenshot(path=os.path.join(folder, f"{name}.png"), full_page=True)


@pytest.mark.browser
@needs_chromium
def test_neurons_tab_unit_page_and_context_in_attention_view(page, server):
    page.click(".tabs button[data-tab='neurons']")
    page.wait_for_selector("#neuron-table table.scan-units tbody tr")
    idle(page)
    ref = api(server, "/api/scans/0/units?kind=neuron&by=max&order=desc&limit=25")
    cells = page.locator("#neuron-table tbody tr td:nth-child(2)").all_inner_texts()
    assert cells == [str(r["unit"]) for r in ref]

    # sort by density: the table follows the API
    page.select_option("#neuron-sort", "density")
    page.wait_for_function("document.querySelector('#neuron-table caption').textContent.includes('density')")
    idle(page)
    ref = api(server, "/api/scans/0/units?kind=neuron&by=density&order=desc&limit=25")
    shown = page.locator("#neuron-table tbody tr td:nth-child(4)").all_inner_texts()
    assert shown == [f"{r['frac_pos']:.3f}" for r in ref]

    # a neuron by number: its page has the contexts, the histogram and the logit effect the API gives
    layer, unit = ref[0]["layer"], ref[0]["unit"]
    page.select_option("#neuron-layer", str(layer))
    page.fill("#neuron-unit", str(unit))
    page.click("#neuron-open")
    page.wait_for_selector("#neuron-unit-page table.effect.raises tr")
    page.wait_for_selector("#neuron-unit-page .scan-hist .main-svg")
    idle(page)
    want = api(server, f"/api/scans/0/unit/neuron/{layer}/{unit}?limit=20")
    assert page.locator("#neuron-unit-page h3").inner_text() == f"layer {layer} · neuron {unit}"
    texts = page.locator("#neuron-unit-page li.context .ctx-text").all_text_contents()
    assert texts == [c["text"].replace("\n", "↵").replace("\t", "⇥") for c in want["contexts"]]
    hits = page.locator("#neuron-unit-page li.context .ctok.hit").all_text_contents()
    assert hits == [c["tokens"][c["hit_offset"]]["text"] for c in want["contexts"]]
    plotted = page.evaluate("document.querySelector('#neuron-unit-page .scan-hist').data[0].y")
    counts = [b["count"] for b in want["histogram"]]
    assert sum(plotted) == sum(counts) == want["summary"]["count"] and max(plotted) == max(counts)
    effect = api(server, f"/api/scans/0/effect/{layer}/{unit}?k=10")
    labels = page.locator("#neuron-unit-page table.raises td.label").all_inner_texts()
    assert labels == [t["label"] for t in effect["top"]]
    assert "unembedding" in page.locator("#neuron-unit-page p.applied").inner_text()
    shot(page, "scan_neurons")

    # a context clicked: its text is the prompt, run in the attention view; the hit token marked
    page.click("#neuron-unit-page li.context >> nth=0")
    page.wait_for_function("document.querySelector('#prediction h3') !== null && !mav.state.busy")
    assert page.input_value("#prompt") == want["contexts"][0]["text"]
    assert page.locator("#tokens .tok.scan-hit").count() == 1


@pytest.mark.browser
@needs_chromium
def test_token_search_and_untrusted_token_text(page, server, scan):
    # a neuron whose top contexts hold the corpus's markup, and the token of that hit
    hits = scan.sql("SELECT layer, unit, rank, token, context_ids FROM top_contexts WHERE kind = 'neuron' "
                    "AND rank < 3 ORDER BY layer, unit, rank").fetchall()
    vocab = dict(scan.sql("SELECT token_id, text FROM vocab").fetchall())
    layer, unit, token = next((l, u, t) for l, u, _, t, ids in hits
                              if "<img" in "".join(vocab[i] for i in ids) and t.strip())
    page.click(".tabs button[data-tab='neurons']")
    page.wait_for_selector("#neuron-table caption")
    page.fill("#neuron-token", token)
    page.click("#neuron-search")
    page.wait_for_function("(document.querySelector('#neuron-table caption') || {textContent: ''})"
                           ".textContent.includes('fall')")
    idle(page)
    found = api(server, "/api/scans/0/token?" + urlencode({"text": token, "kind": "neuron", "limit": 25}))
    rows = page.locator("#neuron-table tbody tr")
    assert rows.count() == len(found["units"]) > 0
    shown = rows.evaluate_all("rows => rows.map(r => [+r.dataset.layer, +r.dataset.unit])")
    assert shown == [[u["layer"], u["unit"]] for u in found["units"]]
    shot(page, "scan_token_search")

    page.select_option("#neuron-layer", str(layer))
    page.fill("#neuron-unit", str(unit))
    page.press("#neuron-unit", "Enter")
    page.wait_for_function(f"document.querySelector('#neuron-unit-page').dataset.unit === 'neuron/{layer}/{unit}'")
    idle(page)
    text = " ".join(page.locator("#neuron-unit-page .ctx-text").all_text_contents())
    assert "<img" in text  # the markup is shown as text ...
    assert page.locator("#tab-neurons img, #tab-neurons script").count() == 0  # ... and never made into elements
    assert page.evaluate("window.__xss === undefined")


@pytest.mark.browser
@needs_chromium
def test_heads_tab_sorts_and_opens_a_head_in_the_attention_view(page, server):
    page.click(".tabs button[data-tab='heads']")
    page.wait_for_selector("#head-table tbody tr")
    idle(page)
    ref = api(server, "/api/scans/0/heads?by=induction&order=desc")
    shown = page.locator("#head-table tbody tr").evaluate_all("rows => rows.map(r => [+r.dataset.layer, +r.dataset.unit])")
    assert shown == [[r["layer"], r["head"]] for r in ref]
    page.click("#head-table th[data-sort='prev_token']")
    page.wait_for_function("document.querySelector('#head-table th.sorted').dataset.sort === 'prev_token'")
    idle(page)
    ref = api(server, "/api/scans/0/heads?by=prev_token&order=desc")
    values = page.locator("#head-table tbody tr td:nth-child(6)").all_inner_texts()
    assert values == [f"{r['prev_token']:.3f}" for r in ref]
    page.click("#head-table th[data-sort='prev_token']")  # again: smallest first
    page.wait_for_function("document.querySelector('#head-table th.sorted').textContent.includes('▲')")
    idle(page)
    asc = page.locator("#head-table tbody tr td:nth-child(6)").all_inner_texts()
    assert asc == sorted(asc, key=float)

    layer, head = ref[0]["layer"], ref[0]["head"]
    page.click(f"#head-table tr[data-layer='{layer}'][data-unit='{head}']")
    page.wait_for_selector("#head-unit-page li.context")
    page.wait_for_selector("#head-unit-page .scan-hist .main-svg")
    idle(page)
    want = api(server, f"/api/scans/0/unit/head/{layer}/{head}?limit=20")
    assert page.locator("#head-unit-page li.context").count() == len(want["contexts"])
    assert page.locator("#head-unit-page table.effect").count() == 0  # a head has no neuron logit effect
    shot(page, "scan_heads")
    page.click("#head-unit-page li.context >> nth=0")
    page.wait_for_function(f"mav.maps().some(m => m.layer === {layer} && m.head === {head}) && !mav.state.busy")
    assert page.input_value("#prompt") == want["contexts"][0]["text"]
    card = page.locator(f"#maps .map[data-layer='{layer}'][data-head='{head}']")
    assert card.count() == 1
    shot(page, "scan_attention")
