"""The explorer page in Debian's headless Chromium (Playwright): click through it and check that
what it shows equals what the API returns; a 64-token heatmap draws in under 200 ms."""

from __future__ import annotations

import os
import re

import httpx
import pytest

from openmav.web.app import create_app
from openmav.web.server import running_server

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]
IOI = "When Mary and John went to the store, John gave a drink to"

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed")]


@pytest.fixture(scope="module")
def lm():
    from openmav.testing import tiny_model

    return tiny_model("llama", n_layers=2, n_heads=4)


@pytest.fixture(scope="module")
def app(lm):
    return create_app(lm, max_prompt_tokens=96)


@pytest.fixture(scope="module")
def server(app):
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
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server)
    page.wait_for_selector("body[data-ready='1']")
    yield page
    page.close()
    assert not errors, errors


def api(server, path, body=None):
    with httpx.Client(base_url=server, timeout=60) as http:
        r = http.get(path) if body is None else http.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def run_prompt(page, prompt):
    page.fill("#prompt", prompt)
    page.click("#run")
    page.wait_for_function("document.querySelector('#prediction h3') !== null && !mav.state.busy")


def pick(page, layer, head, n_maps):
    page.click(f"#grid .cell[data-layer='{layer}'][data-head='{head}']")
    page.wait_for_function(f"mav.maps().length === {n_maps} && !mav.state.busy")


def test_prompt_heads_heatmaps_details_ablation_study(page, server):
    run_prompt(page, IOI)
    tokens = api(server, "/api/attention", {"prompt": IOI, "heads": [{"layer": 1, "head": 2}]})
    shown = page.locator("#tokens .tok").all_inner_texts()
    assert shown == [t["label"] for t in tokens["tokens"]] and "␣John_2" in shown

    pick(page, 1, 2, 1)
    pick(page, 0, 3, 2)
    assert page.locator("canvas.heatmap").count() == 2
    assert page.locator(".map-title b").all_inner_texts() == ["layer 1 · head 2", "layer 0 · head 3"]

    # hover a cell: the tooltip shows the API's weight
    r, c = 12, 4
    at = page.evaluate(f"mav.maps()[0].cellCentre({r}, {c})")
    page.mouse.move(at["x"], at["y"])
    tip = page.locator("#tooltip").inner_text()
    weight = tokens["heads"][0]["weights"][r][c]
    assert tip.endswith(f"{weight:.4f}") and f"({r})" in tip and f"({c})" in tip

    # click it: details equal /api/predict for that query position and key token
    page.mouse.click(at["x"], at["y"])
    page.wait_for_selector("#details:not([hidden])")
    page.wait_for_function("!mav.state.busy")
    ref = api(server, "/api/predict", {"prompt": IOI, "position": r, "token_id": tokens["tokens"][c]["id"]})
    labels = page.locator("#details table.before td.label").all_inner_texts()
    probs = page.locator("#details table.before td.prob").all_inner_texts()
    assert labels == [t["label"] for t in ref["before"]]
    assert probs == [f"{100 * t['prob']:.2f}%" for t in ref["before"]]
    assert page.locator("#details dd.rank").inner_text().startswith(
        f"{ref['rank']['rank_before']} → {ref['rank']['rank_after']}")

    # ablate a head: the side panel's "after" equals the API's prediction with that head zeroed
    page.select_option("#grid-mode", "ablate")
    page.click("#grid .cell[data-layer='0'][data-head='1']")
    page.wait_for_function("mav.state.ablated.length === 1 && !mav.state.busy")
    page.wait_for_function("document.querySelector('#prediction .kl-line').textContent.indexOf('KL 0.0000') < 0")
    ref = api(server, "/api/predict", {"prompt": IOI, "top_k": 10,
                                       "ablations": [{"layer": 0, "head": 1, "kind": "zero"}]})
    after = page.locator("#prediction table.after td.prob").all_inner_texts()
    assert after == [f"{100 * t['prob']:.2f}%" for t in ref["after"][:5]]
    assert f"KL {ref['kl']:.4f}" in page.locator("#prediction .kl-line").inner_text()
    assert page.locator("#grid .cell.ablated").count() == 1

    # targeted study: the page's heads and distributions equal the job's result from the API
    page.click(".tabs button[data-tab='study']")
    page.select_option("#study-mode", "targeted")
    target = page.locator("#study-target option").first.get_attribute("value")
    page.select_option("#study-target", target)
    page.fill("#study-max", "3")
    page.fill("#study-candidates", "6")
    page.click("#study-start")
    page.wait_for_selector("#study-result h3.study-heads", timeout=60000)
    job = api(server, f"/api/jobs/{page.get_attribute('#study-result', 'data-job-id')}")
    assert job["status"] == "done" and job["result"]["target_id"] == int(target)
    heads = ", ".join(f"L{l} H{h}" for l, h in job["result"]["heads"]) or "none"
    assert page.locator("#study-result h3").inner_text().endswith(heads)
    shown_after = page.locator("#study-result table.after td.prob").all_inner_texts()
    assert shown_after == [f"{100 * t['prob']:.2f}%" for t in job["result"]["after_tokens"][:5]]
    assert page.locator("#study-log").inner_text().count("\n") >= 1  # progress arrived through SSE


def test_evaluate_all_heads_is_a_job_with_progress_and_cancel(page, server, app):
    prompt = IOI + " the"
    run_prompt(page, prompt)
    # while the model is held, the evaluation waits in the queue; Cancel stops it there
    with app.state.gate.hold("test"):
        page.click("#evaluate")
        page.wait_for_function("!document.querySelector('#eval-cancel').disabled")
        assert page.locator("#evaluate").is_disabled()
        page.click("#eval-cancel")
        page.wait_for_function("document.querySelector('#eval-status').textContent === 'cancelled'")
    job = api(server, f"/api/jobs/{page.get_attribute('#eval-map', 'data-job-id')}")
    assert job["status"] == "cancelled" and job["kind"] == "evaluate"
    assert page.locator("#eval-map canvas").count() == 0
    # run it: the heatmap and the sorted bars show the job's result
    page.click("#evaluate")
    page.wait_for_selector("#eval-map canvas.heatmap", timeout=60000)
    job = api(server, f"/api/jobs/{page.get_attribute('#eval-map', 'data-job-id')}")
    assert job["status"] == "done" and page.locator("#eval-status").inner_text() == "done"
    assert job["last_event"]["message"].startswith("batch 1/1")
    assert page.evaluate("document.querySelector('#eval-progress').value") == 1
    kl = job["result"]["kl"]
    ranked = sorted(((v, f"L{l} H{h}") for l, row in enumerate(kl) for h, v in enumerate(row)), key=lambda x: -x[0])
    assert page.locator("#eval-bars .bar-label").all_text_contents() == [name for _, name in ranked]
    assert page.evaluate("mav.state.evaluation.kl") == kl
    assert page.locator("#evaluate").is_enabled() and page.locator("#eval-cancel").is_disabled()


def test_bad_input_shows_one_line_error(page):
    page.fill("#prompt", "")
    page.click("#run")
    page.wait_for_selector("#error:not([hidden])")
    assert "prompt" in page.locator("#error").inner_text()


def test_heatmap_of_64_tokens_draws_under_200_ms(page, server, lm):
    words = [w for w in "cat mat sat sun the on a is to and was".split()
             if len(lm.tokenizer(" " + w).input_ids) == 1]
    assert len(words) >= 4
    prompt = "".join(f" {words[i % len(words)]}" for i in range(64))
    n = len(lm.tokenizer(prompt).input_ids)
    assert n == 64, n
    run_prompt(page, prompt)
    pick(page, 1, 0, 1)
    timings = page.evaluate("""() => {
        const out = [];
        for (let i = 0; i < 5; i++) { const t0 = performance.now(); mav.redrawAll(); out.push(performance.now() - t0); }
        return out;
    }""")
    assert page.evaluate("mav.maps()[0].opts.rows.length") == 64
    assert max(timings) < 200, timings
    # the threshold slider hides cells below it, redrawing in place
    page.fill("#threshold", "0.5")
    page.dispatch_event("#threshold", "input")
    assert re.fullmatch(r"0\.50", page.locator("#threshold-value").inner_text())
    assert page.evaluate("mav.maps()[0].opts.threshold") == 0.5
