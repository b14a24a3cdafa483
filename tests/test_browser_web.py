"""The explorer page in Debian's headless Chromium (Playwright): click through it and check that
what it shows equals what the API returns; a 64-token heatmap draws in under 200 ms; the model view, the
logit lens and logit attribution; a head clicked in any chart opens its attention; every view's PNG, SVG and
CSV export. ``MAV_SCREENSHOTS=DIR`` keeps a screenshot of each view there."""

from __future__ import annotations

import csv
import io
import os
import re
import xml.etree.ElementTree as ET

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


# ---- model view, logit lens, attribution, click-through, export ------------------------------------------------
def screenshot(page, name):
    """A screenshot of the page, kept in $MAV_SCREENSHOTS when set (to be looked at), else only taken."""
    folder = os.environ.get("MAV_SCREENSHOTS")
    data = page.screenshot(full_page=True, path=os.path.join(folder, f"{name}.png") if folder else None)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"


def open_tab(page, name):
    page.click(f".tabs button[data-tab='{name}']")
    assert page.locator(f"#tab-{name}").is_visible()


def saved(page, selector, fmt):
    """Click an export button and return the file's name and bytes."""
    with page.expect_download() as info:
        page.click(f"{selector} button.export[data-format='{fmt}']")
    download = info.value
    with open(download.path(), "rb") as f:
        return download.suggested_filename, f.read()


def check_exports(page, selector, name, n_rows=None, header=None):
    """PNG (magic bytes), SVG (parses, has shapes) and CSV (parses; header and row count) of one view."""
    fname, data = saved(page, selector, "png")
    assert fname == f"{name}.png" and data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 500
    fname, data = saved(page, selector, "svg")
    root = ET.fromstring(data)
    assert fname == f"{name}.svg" and root.tag == "{http://www.w3.org/2000/svg}svg"
    shapes = sum(len(root.findall(f".//{{http://www.w3.org/2000/svg}}{tag}")) for tag in ("rect", "circle", "path"))
    assert shapes > 2
    fname, data = saved(page, selector, "csv")
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))
    assert fname == f"{name}.csv"
    if header is not None:
        assert rows[0][:len(header)] == header
    if n_rows is not None:
        assert len(rows) == n_rows + 1
    return rows


def opened(page, layer, head):
    """Wait until (layer, head)'s attention map is shown among the maps."""
    page.wait_for_function(f"!mav.state.busy && document.querySelector(\"#maps .map[data-layer='{layer}']"
                           f"[data-head='{head}'] canvas\") !== null")
    assert [layer, head] in page.evaluate("mav.state.picked")


def test_model_view_thumbnails_enlarge_and_export(page, server):
    run_prompt(page, IOI)
    open_tab(page, "model")
    page.wait_for_selector("#mv-grid canvas.thumb")
    ref = api(server, "/api/model_view", {"prompt": IOI, "size": 24})
    assert page.locator("#mv-grid canvas.thumb").count() == 8
    assert page.evaluate("mav.views.modelView.heads") == ref["heads"]
    n = len(ref["tokens"])
    assert ref["size"] == n and "every query × key weight" in page.locator("#mv-note").inner_text()
    # a thumbnail's pixels follow its weights: the brightest cell of L1 H2's first query row is the first key
    page.click("#mv-grid canvas.thumb[data-layer='1'][data-head='2']")
    page.wait_for_selector("#mv-zoom .map canvas.heatmap")
    att = api(server, "/api/attention", {"prompt": IOI, "heads": [{"layer": 1, "head": 2}]})["heads"][0]["weights"]
    assert page.evaluate("mav.views.zoom.opts.values") == att
    assert page.evaluate("mav.views.zoom.opts.rows.length") == n
    assert page.locator("#mv-zoom .map-title b").inner_text() == "layer 1 · head 2"
    screenshot(page, "model_view")
    check_exports(page, "#mv-exports", "model_view", n_rows=8 * n * n, header=["layer", "head", "query", "key"])
    rows = check_exports(page, "#mv-zoom", "attention_L1_H2", n_rows=n)
    assert [float(x) for x in rows[3][1:]] == pytest.approx(att[2], abs=1e-9)
    page.click("#mv-zoom button:has-text('open with the maps')")
    opened(page, 1, 2)


def test_logit_lens_in_the_page(page, server):
    run_prompt(page, IOI)
    open_tab(page, "lens")
    page.wait_for_selector("#lens-result svg.lens")
    assert page.evaluate("mav.views.lens.layers[0].top.length") == 5
    page.select_option("#lens-k", "3")
    page.wait_for_function("mav.views.lens && mav.views.lens.layers[0].top.length === 3")
    follow = page.locator("#lens-token option").nth(2).get_attribute("value")
    page.select_option("#lens-position", "5")
    page.wait_for_function("mav.views.lens && mav.views.lens.position === 5")
    page.select_option("#lens-token", follow)
    page.wait_for_function(f"mav.views.lens && mav.views.lens.layers[0].target && "
                           f"mav.views.lens.layers[0].target.id === {follow}")
    ref = api(server, "/api/logit_lens", {"prompt": IOI, "position": 5, "token_id": int(follow), "top_k": 3})
    assert page.evaluate("mav.views.lens") == ref
    cells = page.locator("#lens-result g.lens-cell text").all_text_contents()
    want = [f"{t['label'][:9]} {100 * t['prob']:.1f}%" for row in ref["layers"] for t in row["top"]]
    assert cells == want
    targets = page.locator("#lens-result text.lens-target").all_text_contents()
    assert targets == [f"{100 * r['target']['prob']:.2f}% (#{r['target']['rank']})" for r in ref["layers"]]
    screenshot(page, "logit_lens")
    check_exports(page, "#lens-result", "logit_lens_pos5", n_rows=2 * 3,
                  header=["layer", "rank", "token_id", "token", "prob"])


def test_attribution_view_and_click_through(page, server):
    run_prompt(page, IOI)
    open_tab(page, "dla")
    page.wait_for_selector("#dla-result canvas.heatmap")
    ref = api(server, "/api/attribution", {"prompt": IOI, "position": len(api(server, "/api/tokenize",
                                                                                {"prompt": IOI})) - 1})
    assert page.evaluate("mav.views.dla.heads") == ref["heads"]
    summary = page.locator("#dla-result p.dla-summary").inner_text()
    assert f"{ref['logit']:.4f}" in summary and ref["target"]["label"] in summary
    # the bars list the largest parts; a head's bar opens that head
    heads = [(abs(v), l, h) for l, row in enumerate(ref["heads"]) for h, v in enumerate(row)]
    _, l, h = max(heads)
    page.click(f"#dla-result svg.bars g.clickable[data-layer='{l}'][data-head='{h}']")
    opened(page, l, h)
    # the map: clicking a cell opens that head too
    at = page.evaluate("mav.views.dlaMap.cellCentre(0, 2)")
    page.mouse.click(at["x"], at["y"])
    opened(page, 0, 2)
    screenshot(page, "attribution")
    check_exports(page, "#dla-result .dla-map", f"attribution_heads_pos{ref['position']}", n_rows=8 + len(
        ref["components"]) + 2, header=["part", "kind", "layer", "head", "contribution"])


def test_evaluation_scale_legend_and_clicks_open_heads(page, server):
    run_prompt(page, IOI)
    page.click("#evaluate")
    page.wait_for_selector("#eval-map canvas.heatmap", timeout=60000)
    assert page.locator("#eval-map svg.legend-bar").count() == 1
    assert "(log scale)" not in page.locator("#eval-map svg.legend-bar").inner_html()
    page.select_option("#eval-scale", "log")
    page.wait_for_function("document.querySelector('#eval-map svg.legend-bar').textContent.includes('log scale')")
    page.select_option("#eval-metric", "delta_logit_diff")
    page.wait_for_function("document.querySelector('#eval-map h3').textContent.includes('logit(')")
    job = api(server, f"/api/jobs/{page.get_attribute('#eval-map', 'data-job-id')}")
    dld = job["result"]["delta_logit_diff"]
    ranked = sorted(((abs(v), f"L{l} H{h}") for l, row in enumerate(dld) for h, v in enumerate(row)), reverse=True)
    assert page.locator("#eval-bars .bar-label").all_text_contents() == [name for _, name in ranked]
    screenshot(page, "evaluation_log")
    # a bar opens its head; so does a cell of the map
    page.click("#eval-bars g.clickable[data-layer='0'][data-head='3']")
    opened(page, 0, 3)
    at = page.evaluate("mav.evalMap.cellCentre(1, 2)")
    page.mouse.click(at["x"], at["y"])
    opened(page, 1, 2)
    rows = check_exports(page, "#eval-map", "evaluation_delta_logit_diff", n_rows=8)
    assert rows[0][:4] == ["layer", "head", "kl", "delta_top_prob"]
    check_exports(page, "#eval-bars", "evaluation_delta_logit_diff_top20", n_rows=8)


def test_circuit_nodes_and_rows_open_heads_and_export(page, server):
    run_prompt(page, IOI)
    open_tab(page, "circuit")
    assert page.locator("#circuit-a").input_value() == "" and page.locator("#circuit-b").input_value() == ""
    page.fill("#circuit-top", "3")
    page.fill("#circuit-verify", "6")
    page.click("#circuit-start")
    page.wait_for_selector("#circuit-result svg.circuit-graph", timeout=60000)
    job = api(server, f"/api/jobs/{page.get_attribute('#circuit-result', 'data-job-id')}")
    res = job["result"]
    assert res["n_verified"] == 6 and "␣Mary in the prompt" in res["tokens_from"]
    shown = page.locator("#circuit-result table.circuit-table tr.clickable")
    assert shown.count() == 3
    cells = [shown.nth(i).locator("td").all_text_contents() for i in range(3)]
    assert [c[1] for c in cells] == [f"L{n['layer']} H{n['head']}" for n in res["nodes"]]
    assert [c[2] for c in cells] == [f"{n['effect']:.4f}" for n in res["nodes"]]
    assert [c[3] for c in cells] == [f"{n['attribution']:.4f}" for n in res["nodes"]]
    assert "negative means" in page.locator("#circuit-result p.sign").inner_text()
    screenshot(page, "circuit")
    first, last = res["nodes"][0], res["nodes"][-1]
    page.click(f"#circuit-result g.node-group[data-layer='{first['layer']}'][data-head='{first['head']}'] circle")
    opened(page, first["layer"], first["head"])
    page.click(f"#circuit-result tr.clickable[data-layer='{last['layer']}'][data-head='{last['head']}']")
    opened(page, last["layer"], last["head"])
    rows = check_exports(page, "#circuit-result", "circuit", header=["kind", "layer", "head", "verified_effect"])
    assert sum(r[0] == "node" for r in rows) == 3 and sum(r[0] == "head" for r in rows) == 8


def test_attention_map_and_study_export(page, server):
    run_prompt(page, IOI)
    pick(page, 0, 1, 1)
    n = len(api(server, "/api/tokenize", {"prompt": IOI}))
    rows = check_exports(page, "#maps .map[data-layer='0'][data-head='1']", "attention_L0_H1", n_rows=n)
    assert rows[0][0] == "query \\ key" and len(rows[0]) == n + 1
    open_tab(page, "study")
    page.select_option("#study-mode", "logit_diff")
    assert page.locator("#study-target").is_disabled() and page.locator("#study-a").is_enabled()
    page.fill("#study-max", "2")
    page.fill("#study-candidates", "4")
    page.click("#study-start")
    page.wait_for_selector("#study-result h3.study-heads", timeout=60000)
    job = api(server, f"/api/jobs/{page.get_attribute('#study-result', 'data-job-id')}")
    assert job["status"] == "done" and job["result"]["study"] == "logit_diff"
    summary = page.locator("#study-result p.study-summary").inner_text()
    assert f"{job['result']['metric_before']:.3f} → {job['result']['metric_after']:.3f}" in summary
    rows = check_exports(page, "#study-result", "study_logit_diff")
    assert rows[0][3] == "logit_diff" and sum(r[0] == "before" for r in rows) == 10


def test_hybrid_layers_without_heads_in_the_page(browser, tiny):
    """A hybrid (Jamba: attention in some layers): its other layers are hatched, not clickable, null in the views."""
    lm = tiny("jamba")
    mixer = next(i for i in range(lm.parts.n_layers) if i not in lm.parts.attention_layers)
    with running_server(create_app(lm)) as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']")
        run_prompt(page, "hello world, hello mello")
        assert page.locator(f"#grid .cell[data-layer='{mixer}']").first.is_disabled()
        open_tab(page, "model")
        page.wait_for_selector("#mv-grid canvas.thumb")
        n_heads = lm.parts.n_heads
        assert page.locator("#mv-grid span.thumb.none").count() == n_heads * (lm.parts.n_layers - len(
            lm.parts.attention_layers))
        open_tab(page, "dla")
        page.wait_for_selector("#dla-result canvas.heatmap")
        assert page.evaluate(f"mav.views.dla.heads[{mixer}]") == [None] * n_heads
        assert page.evaluate("mav.views.dla.components.some((c) => c.kind === 'mixer')")
        open_tab(page, "lens")
        page.wait_for_selector("#lens-result svg.lens")
        assert page.evaluate("mav.views.lens.layers.length") == lm.parts.n_layers
        page.close()
    assert not errors, errors
