"""The maps page opened in headless Chromium, and the CLI's one-line errors."""

from __future__ import annotations

import os

import pytest

from openmav.cli import main
from openmav.maps.run import MapsOptions, run_maps

CHROMIUM = "/usr/bin/chromium"


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium at /usr/bin/chromium")
def test_page_in_headless_chromium(tiny, tmp_path):
    from playwright.sync_api import sync_playwright

    lm = tiny("llama", n_layers=3)
    result = run_maps(MapsOptions(None, "The cat sat on the mat. The cat", str(tmp_path), max_new_tokens=4,
                                  window=8, stride=3, workers=0), lm=lm)
    html = open(result.page, encoding="utf-8").read()
    assert "http://" not in html and "https://" not in html  # nothing fetched from the network
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run"])
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: errors.append("request " + r.url) if not r.url.startswith("file:") else None)
            page.goto("file://" + result.page)
            rows = page.locator("#grid tr")
            assert rows.count() == 3 + 2  # header, three layers, the output row
            first = page.locator("#info").inner_text()
            assert "token 0" in first
            page.click("#next")
            assert "token 1" in page.locator("#info").inner_text()
            page.locator("#grid tr").nth(2).locator("td").first.hover()
            tip = page.locator("#tip")
            assert tip.is_visible()
            text = tip.inner_text()
            assert "layer 1" in text and "attention" in text and "top-5" in text
            assert len(tip.locator("tr").all()) == 5
            page.keyboard.press("ArrowRight")
            assert "token 2" in page.locator("#info").inner_text()
        finally:
            browser.close()
    assert errors == []


def test_cli_bad_input_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cases = [
        (["--output-dir", str(blocker / "sub")], "cannot write"),
        (["--output-dir", str(tmp_path / "a"), "--window", "0"], "--window must be at least 1"),
        (["--output-dir", str(tmp_path / "a"), "--head", "1", "--reduce", "mean"], "goes with --reduce head"),
        (["--output-dir", str(tmp_path / "a"), "--load-in-8bit", "--device", "cpu"], "--load-in-8bit needs"),
    ]
    for extra, message in cases:
        code = main(["maps", "--prompt", "hi", *extra])
        err = capsys.readouterr().err.strip()
        assert code != 0 and message in err and len(err.splitlines()) == 1, err
    assert sorted(os.listdir(tmp_path)) == ["file"]  # nothing made on the way


def test_existing_maps_kept(tmp_path, capsys):
    (tmp_path / "maps.json").write_text("{}")
    assert main(["maps", "--prompt", "hi", "--output-dir", str(tmp_path)]) != 0
    assert "already holds maps" in capsys.readouterr().err
    assert (tmp_path / "maps.json").read_text() == "{}"
