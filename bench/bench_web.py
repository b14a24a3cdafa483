"""Measure the web explorer on SmolLM2 and take the README's screenshots.

    .venv/bin/python bench/bench_web.py [--screenshots docs/images]

Starts the explorer on a free loopback port, drives the page in Debian's headless
Chromium (Playwright), and prints: API latencies (attention, predict, evaluate all
heads), a 50-request concurrent load on loopback, and the browser's draw time of
a 64-token heatmap (performance.now() around the canvas draw).
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from openmav.backends.loading import load_model
from openmav.web.app import create_app
from openmav.web.server import running_server

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]
IOI = "When Mary and John went to the store, John gave a drink to"


def timed(fn, n=3):
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return statistics.median(out)


def api_figures(url: str) -> None:
    with httpx.Client(base_url=url, timeout=120) as http:
        att = timed(lambda: http.post("/api/attention", json={"prompt": IOI, "heads": [{"layer": 9, "head": 1}]}))
        pred = timed(lambda: http.post("/api/predict", json={"prompt": IOI, "ablations": [{"layer": 9, "head": 1}],
                                                              "position": 7}))
        t0 = time.perf_counter()
        job = http.post("/api/evaluations", json={"prompt": IOI + " her", "kind": "zero"})
        job.raise_for_status()
        job_id = job.json()["job_id"]
        while http.get(f"/api/jobs/{job_id}").json()["status"] not in ("done", "error", "cancelled"):
            time.sleep(0.05)
        ev = (time.perf_counter() - t0) * 1000
        print(f"attention (cached prompt) {att:.1f} ms, predict with an ablation {pred:.1f} ms (median of 3); "
              f"evaluate all 270 heads (first call) {ev:.0f} ms")

        def call(i):
            body = {"prompt": f"{IOI} {i % 7}", "ablations": [{"layer": i % 30, "head": i % 9}]}
            return http.post("/api/predict", json=body).status_code

        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=25) as pool:
            codes = list(pool.map(call, range(50)))
        print(f"load: 50 concurrent predict requests (25 threads): {codes.count(200)}/50 answered 200 "
              f"in {time.perf_counter() - t0:.1f} s")


def browser_figures(url: str, lm, shots: Path | None) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']")
        idle = "!mav.state.busy"

        # 64 tokens: draw time in the browser
        words = [w for w in "cat dog sun moon tree river stone cloud".split()
                 if len(lm.tokenizer(" " + w).input_ids) == 1]
        prompt = "".join(f" {words[i % len(words)]}" for i in range(64)).strip()
        page.fill("#prompt", prompt)
        page.click("#run")
        page.wait_for_function(f"document.querySelector('#prediction h3') && {idle}")
        page.click("#grid .cell[data-layer='3'][data-head='0']")
        page.wait_for_function(f"mav.maps().length === 1 && {idle}")
        draws = page.evaluate("""() => { const out = [];
            for (let i = 0; i < 10; i++) { const t = performance.now(); mav.redrawAll(); out.push(performance.now() - t); }
            return out; }""")
        print(f"browser: heatmap of {page.evaluate('mav.maps()[0].opts.rows.length')} tokens draws in "
              f"median {statistics.median(draws):.1f} ms, max {max(draws):.1f} ms")
        if shots is None:
            return
        page.click("#clear-picked")

        # the IOI view: evaluate, pick the strongest heads, click a cell, ablate the strongest head
        page.select_option("#preset", label="IOI")
        page.click("#run")
        page.wait_for_function(f"document.querySelector('#prediction h3') && {idle}")
        page.click("#evaluate")
        page.wait_for_function(f"mav.state.evaluation && {idle}", timeout=120000)
        page.select_option("#overlay", "induction")
        page.wait_for_function(f"mav.state.scores && {idle}", timeout=120000)
        top = page.evaluate("""() => { const kl = mav.state.evaluation.kl, r = [];
            kl.forEach((row, l) => row.forEach((v, h) => r.push([v, l, h])));
            return r.sort((a, b) => b[0] - a[0]).slice(0, 4).map((x) => [x[1], x[2]]); }""")
        for i, (layer, head) in enumerate(top):
            page.click(f"#grid .cell[data-layer='{layer}'][data-head='{head}']")
            page.wait_for_function(f"mav.maps().length === {i + 1} && {idle}")
        n = page.evaluate("mav.state.tokens.length")
        at = page.evaluate(f"mav.maps()[0].cellCentre({n - 1}, 1)")
        page.mouse.click(at["x"], at["y"])
        page.wait_for_selector("#details:not([hidden])")
        page.select_option("#grid-mode", "ablate")
        page.click(f"#grid .cell[data-layer='{top[0][0]}'][data-head='{top[0][1]}']")
        page.wait_for_function(f"mav.state.ablated.length === 1 && {idle}")
        page.mouse.move(at["x"] + 40, at["y"] - 60)
        time.sleep(0.3)
        page.screenshot(path=str(shots / "web.png"), full_page=True)

        # a targeted study: make " John" the most likely next token
        page.click("#clear-ablated")
        page.click(".tabs button[data-tab='study']")
        page.select_option("#study-target", label=page.locator("#study-target option", has_text="John").first.inner_text())
        page.click("#study-start")
        page.wait_for_selector("#study-result h3.study-heads", timeout=180000)
        page.wait_for_function(idle)
        page.locator("#tab-study").screenshot(path=str(shots / "web_study.png"))

        # circuit discovery: logit(Mary) - logit(John), names swapped
        page.click(".tabs button[data-tab='circuit']")
        page.select_option("#circuit-a", label=page.locator("#circuit-a option", has_text="Mary").first.inner_text())
        page.select_option("#circuit-b", label=page.locator("#circuit-b option", has_text="John").first.inner_text())
        page.click("#circuit-start")
        page.wait_for_selector("#circuit-result table", timeout=300000)
        page.locator("#tab-circuit").screenshot(path=str(shots / "web_circuit.png"))
        print(f"screenshots written to {shots}")
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--screenshots", type=Path, default=None, help="folder for web*.png")
    args = parser.parse_args()
    lm = load_model("smollm2-135m", device="cpu")
    with running_server(create_app(lm)) as url:
        api_figures(url)
        browser_figures(url, lm, args.screenshots)


if __name__ == "__main__":
    main()
