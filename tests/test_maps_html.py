"""The maps page opened in headless Chromium, labels in every script, and the CLI's one-line errors."""

from __future__ import annotations

import os
import warnings

import numpy as np
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


def _launch(p):
    return p.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"])


def _sidecar(prompt_length: int = 60, generated: int = 3, layers: int = 2) -> dict:
    """A made-up maps.json: ``prompt_length`` prompt tokens, then ``generated`` tokens."""
    n = prompt_length + generated
    rng = np.random.default_rng(0)
    tokens = [{"position": k, "id": k % 7, "text": f"t{k}", "display": f"t{k}", "generated": k >= prompt_length}
              for k in range(n)]
    steps = []
    for i in range(generated):
        att = rng.random((layers, prompt_length + i))
        steps.append({"index": i, "token_id": 1, "prob": 0.5, "query_position": prompt_length + i - 1,
                      "attention": (att / att.sum(1, keepdims=True)).round(6).tolist(),
                      "images": [{"file": f"attn_{i}.png", "start": 0, "end": prompt_length + i}]})
    read = n - 1
    return {"format": "openmav.maps/1", "model": "made-up", "prompt": "made up", "reduce": "max", "head": None,
            "n_layers": layers, "n_heads": 4, "prompt_length": prompt_length, "tokens": tokens,
            "vocab": {str(i): {"text": f"w{i}", "display": f"w{i}"} for i in range(7)},
            "lens": {"ids": [[[j % 7 for j in range(5)]] * layers] * read, "probs": [[[0.2] * 5] * layers] * read},
            "final": {"ids": [[j % 7 for j in range(5)]] * read, "probs": [[0.2] * 5] * read},
            "steps": steps}


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium at /usr/bin/chromium")
def test_page_opens_at_the_generated_tokens(tmp_path):
    """A prompt wider than the window: the page opens scrolled to the query's column, not to position 0."""
    from playwright.sync_api import sync_playwright

    from openmav.maps.html import write_html

    page_path = str(tmp_path / "maps.html")
    write_html(page_path, _sidecar())
    with sync_playwright() as p:
        browser = _launch(p)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 700})
            page.goto("file://" + page_path)

            def in_view() -> bool:
                wrap = page.locator("#wrap").bounding_box()
                names = page.locator("#grid th.row").first.bounding_box()
                cell = page.locator("#grid td.query").first.bounding_box()
                return names["x"] + names["width"] <= cell["x"] and cell["x"] + cell["width"] <= wrap["x"] + wrap["width"]

            width = page.evaluate("document.getElementById('grid').offsetWidth")
            assert width > 2 * 900  # far wider than the window
            assert page.evaluate("document.getElementById('wrap').scrollLeft") > 0
            assert in_view()
            assert page.locator("#grid td.query").first.get_attribute("data-k") == "59"  # the prompt's last token
            page.click("#next")
            page.click("#next")
            assert "token 2" in page.locator("#info").inner_text() and in_view()
            assert page.locator("#grid td.query").first.get_attribute("data-k") == "61"
            page.evaluate("document.getElementById('wrap').scrollLeft = 0")
            page.keyboard.press("ArrowLeft")
            assert in_view()  # moving to another token brings its query back into view
            page.screenshot(path=str(tmp_path / "opened.png"))
        finally:
            browser.close()


def _cell_mask(text: str) -> np.ndarray:
    from openmav.maps.render import ColumnTextDrawer, Layout

    lay = Layout(n_rows=1)
    return ColumnTextDrawer(lay).draw([text], "x", 0)[: lay.cell_h]


def test_cjk_label_is_drawn_not_a_box(monkeypatch):
    from openmav.maps import render

    cat = "\u732b"  # 猫
    covered = render._covered()
    has_font = ord(cat) in covered
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns when it draws a missing glyph (as a box)
        ours = _cell_mask(cat)
        box = _cell_mask("\u25a1")  # □, what a missing glyph used to become
    shown = render.label(cat, render.Layout(n_rows=1).label_chars)
    assert all(ord(ch) in covered for ch in shown)  # every character drawn has a glyph in a font we use
    assert ours.max() > 0 and not np.array_equal(ours, box)
    if has_font:  # a CJK font is installed: the character itself, from that font
        assert shown == cat
        return
    assert shown == "\\u732b"  # no CJK font: its escaped code point, drawn in DejaVu Sans
    np.testing.assert_array_equal(ours, _cell_mask("\\u732b"))
    monkeypatch.setattr(render, "_covered", lambda: covered | {ord(cat)})  # pretend a font had it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tofu = _cell_mask(cat)  # what matplotlib draws for a glyph no font has
    assert not np.array_equal(ours, tofu)


def test_labels_escape_what_no_font_draws():
    from openmav.maps.render import drawable, escaped, label

    assert escaped("\x0c") == "\\x0c" and escaped("\U0001f9ea") == "\\U0001f9ea"
    assert drawable("a\x0cb") == "a\\x0cb"  # control characters are never drawn as boxes either
    assert drawable("a\u200db") == "a\\u200db"  # nor format characters (zero-width joiner)
    assert drawable("\u2423the\u21b5 x\ny") == "\u2423the\u21b5 x\ny"
    assert label("abcdefghij", 7) == "abcdef\u2026" and label("$x$", 7) == "$x$"
    assert label("ab\x0c", 7) == "ab\\x0c" and label("abcd\x0c", 7) == "abcd\u2026"  # never cut inside an escape


def test_dollar_signs_are_text():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _cell_mask("$\\frac$").max() > 0  # not parsed as mathtext (which would fail on this)


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
