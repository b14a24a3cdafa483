"""The small rough edges a new user hit (issue 22, part 6): each test fails without its fix."""

from __future__ import annotations

import json

import pytest


def _model_folder(path, tokenizer_config: dict | None, *extra: str):
    """A model folder with a config and tokenizer files but no weights: anything that loads it fails."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    if tokenizer_config is not None:
        (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    for name in extra:
        (path / name).write_text("{{ messages[0]['content'] }}")
    return path


def test_maps_chat_without_a_template_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import openmav.backends.loading as loading
    from openmav.cli import main

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(loading, "load_model", no_loading)
    folder = _model_folder(tmp_path / "plain", {"tokenizer_class": "PreTrainedTokenizerFast"})
    code = main(["maps", "--chat", "--prompt", "Hi", "--output-dir", str(tmp_path / "out"), "--model", str(folder)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"mav maps: error: --chat: {folder}'s tokenizer has no chat template; drop --chat"]


def test_the_chat_template_is_read_from_the_tokenizer_files(tmp_path):
    from openmav.backends.sources import has_chat_template

    assert has_chat_template(str(_model_folder(tmp_path / "none", {}))) is False
    assert has_chat_template(str(_model_folder(tmp_path / "config", {"chat_template": "{{ x }}"}))) is True
    assert has_chat_template(str(_model_folder(tmp_path / "jinja", {}, "chat_template.jinja"))) is True
    assert has_chat_template(str(_model_folder(tmp_path / "legacy", {}, "chat_template.json"))) is True
    assert has_chat_template(str(_model_folder(tmp_path / "no-config", None))) is None  # not told: checked after
    assert has_chat_template("no-such-owner/no-such-model-in-the-cache") is None


@pytest.mark.parametrize("chat", [True, False])
def test_maps_chat_check_lets_a_model_with_a_template_through_to_loading(tmp_path, monkeypatch, chat):
    import openmav.backends.loading as loading
    from openmav.errors import ModelSourceError
    from openmav.maps.run import MapsOptions, run_maps

    def loads(*args, **kwargs):
        raise ModelSourceError("loading")

    monkeypatch.setattr(loading, "load_model", loads)
    folder = _model_folder(tmp_path / "jinja", {}, "chat_template.jinja")
    with pytest.raises(ModelSourceError, match="loading"):
        run_maps(MapsOptions(model=str(folder), prompt="Hi", output_dir=str(tmp_path / "out"), chat=chat))


def test_mav_models_prints_the_stored_table_without_torch_or_transformers():
    import subprocess
    import sys

    code = ("import sys; from openmav.cli import main; main(['models']); "
            "heavy = [m for m in ('torch', 'transformers', 'numpy') if m in sys.modules]; "
            "assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "runnable causal-LM types pass every invariant" in done.stdout.splitlines()[0]


def _models_lines(capsys, *args):
    from openmav.cli import main

    assert main(["models", *args]) == 0
    return capsys.readouterr().out.rstrip("\n").split("\n")


def test_mav_models_columns_line_up_and_say_inferred_once(capsys):
    from openmav.support import load, summary

    payload = load()
    head, *rows = _models_lines(capsys)
    s = summary(payload)
    assert head.startswith(f"{s['passed']} of {s['runnable']} runnable") and f"{s['inferred']} inferred" in head
    assert len(rows) == len(payload["results"])
    for r, line in zip(payload["results"], rows):
        assert line.startswith(f"  {r['model_type']} ")
    # the status column starts at one offset on every line, whatever the length of the type's name
    assert len({line.index(r["status"], len(r["model_type"]) + 2) for r, line in zip(payload["results"], rows)}) == 1
    inferred = [line for r, line in zip(payload["results"], rows) if r["how"] == "inferred"]
    assert inferred and all("(inferred)" not in line and "inferred:" in line for line in inferred)
    assert any("llama (declared)" in line for line in rows)


def test_mav_models_reasons_whole_when_piped_and_cut_at_a_word_in_a_terminal(capsys, monkeypatch):
    import os
    import sys

    from openmav.support import load

    failing = [r for r in load()["results"] if r["status"] != "pass"]
    long = [r for r in failing if len(r["reason"]) > 100]
    assert long
    piped = _models_lines(capsys, "--failing")[1:]
    for r, line in zip(failing, piped):
        assert line.endswith(r["reason"])
    starts = {len(line) - len(r["reason"]) for r, line in zip(failing, piped)}
    assert len(starts) == 1  # every reason starts in one column
    start = starts.pop()
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setattr("shutil.get_terminal_size", lambda *a, **k: os.terminal_size((100, 30)))
    shown = _models_lines(capsys, "--failing")[1:]
    assert any(not line.endswith(r["reason"]) for r, line in zip(failing, shown))
    for r, line in zip(failing, shown):
        assert len(line) <= 100
        if not line.endswith(r["reason"]):
            kept = line[start:].removesuffix("…").rstrip()
            assert r["reason"].startswith(kept) and r["reason"][len(kept)] == " ", (kept, r["reason"])


def _slow_trace(path):
    import dataclasses
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from view_fixtures import make_record

    from openmav.capture.trace import save_trace

    records = [dataclasses.replace(make_record(i), elapsed_ms=1500.0) for i in range(2)]
    return save_trace(path, records, {"model": "hand-made", "prompt": "The cat"})


@pytest.mark.parametrize("fmt", [None, "text"])
def test_replay_not_on_a_terminal_writes_its_lines_without_the_recorded_pauses(tmp_path, capsys, monkeypatch, fmt):
    import time

    from openmav.cli import main

    trace = _slow_trace(tmp_path / "slow.npz")
    pauses = []
    monkeypatch.setattr(time, "sleep", pauses.append)
    assert main(["replay", str(trace)] + (["--format", fmt] if fmt else [])) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 3 and not any(pauses), pauses  # a line per token, then the text


def test_keys_pressed_before_interactive_mode_starts_are_read_not_dropped():
    import os
    import select
    import time

    from openmav.view.keys import KeyReader

    master, slave = os.openpty()
    try:
        os.write(master, b" \x1b[Cq")  # typed while the trace or model loaded
        time.sleep(0.05)
        with open(slave, closefd=False) as stream, KeyReader(stream) as keys:
            assert select.select([keys.fd], [], [], 2)[0], "the keys typed before were dropped"
            assert [keys.read(), keys.read(), keys.read()] == ["space", "right", "q"]
    finally:
        os.close(master)
        os.close(slave)


CHROMIUM = "/usr/bin/chromium"


def _launch(p):
    return p.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"])


def test_maps_page_writes_token_text_as_the_images_do():
    from test_maps_html import _sidecar

    from openmav.maps.html import page_data
    from openmav.maps.render import drawable

    sidecar = _sidecar(prompt_length=4, generated=1)
    sidecar["tokens"][1]["display"] = "a\u200db"  # a format character: escaped whatever the fonts
    sidecar["tokens"][2]["display"] = "\u732b"
    sidecar["vocab"]["3"]["display"] = "\x0c"
    data = page_data(sidecar)
    assert data["tokens"][1] == "a\\u200db" and data["vocab"]["3"] == "\\x0c"
    assert data["tokens"][2] == drawable("\u732b")  # \\u732b where no CJK font is installed, as in the images


@pytest.mark.browser
@pytest.mark.skipif(not __import__("os").path.exists(CHROMIUM), reason="needs Debian's chromium at /usr/bin/chromium")
def test_maps_page_shows_the_escaped_code_point_in_chromium(tmp_path):
    from playwright.sync_api import sync_playwright
    from test_maps_html import _sidecar

    from openmav.maps.html import write_html
    from openmav.maps.render import drawable

    sidecar = _sidecar(prompt_length=4, generated=1)
    sidecar["tokens"][2]["display"] = "\u732b"
    page_path = str(tmp_path / "maps.html")
    write_html(page_path, sidecar)
    with sync_playwright() as p:
        browser = _launch(p)
        try:
            page = browser.new_page(viewport={"width": 700, "height": 300})
            page.goto("file://" + page_path)
            head = page.locator("#grid tr").first.locator("th").nth(3)
            assert head.get_attribute("title") == drawable("\u732b")
            assert head.text_content() == "2\n" + drawable("\u732b")
            page.screenshot(path=str(tmp_path / "escaped.png"))
        finally:
            browser.close()


class _Attention:
    """What interactive_attention reads of an Activations result: the prompt, its tokens, ``[L, H, q, k]``."""

    def __init__(self, prompt: str):
        import numpy as np

        self.prompt, self.tokens = prompt, prompt.split()
        n = len(self.tokens)
        rows = np.tril(np.random.default_rng(0).random((2, 3, n, n)))
        self.rows = rows / rows.sum(-1, keepdims=True)

    def attention_array(self):
        return self.rows


@pytest.mark.browser
@pytest.mark.skipif(not __import__("os").path.exists(CHROMIUM), reason="needs Debian's chromium at /usr/bin/chromium")
@pytest.mark.parametrize("prompt", ["The cat sat", "The quick brown fox jumps over the lazy dog near the river bank"])
def test_compare_page_title_is_not_hidden_by_its_menu(tmp_path, prompt):
    from playwright.sync_api import sync_playwright

    from openmav.analysis.interactive import interactive_attention

    path = tmp_path / "interactive_attention.html"
    interactive_attention(_Attention(prompt)).write_html(str(path), include_plotlyjs=True, full_html=True)
    with sync_playwright() as p:
        browser = _launch(p)
        try:
            page = browser.new_page(viewport={"width": 800, "height": 740})
            page.goto(f"file://{path}")
            page.wait_for_selector(".updatemenu-header")
            title = page.locator(".gtitle").bounding_box()
            menu = page.locator(".updatemenu-header").bounding_box()
            plot = page.locator(".nsewdrag").first.bounding_box()
            page.screenshot(path=str(tmp_path / "title.png"))
        finally:
            browser.close()
    apart = lambda a, b: (a["x"] + a["width"] <= b["x"] or b["x"] + b["width"] <= a["x"]  # noqa: E731
                          or a["y"] + a["height"] <= b["y"] or b["y"] + b["height"] <= a["y"])
    assert apart(title, menu), (title, menu)
    assert menu["y"] + menu["height"] <= plot["y"]  # nor does the menu cover the map


def test_the_web_page_names_a_favicon_that_answers():
    import re
    import xml.etree.ElementTree as ET

    from fastapi.testclient import TestClient

    from openmav.testing import tiny_model
    from openmav.web.app import create_app

    client = TestClient(create_app(tiny_model("llama", n_layers=1, n_heads=2), max_prompt_tokens=16))
    page = client.get("/").text
    links = re.findall(r'<link rel="icon" href="([^"]+)" type="image/svg\+xml">', page)
    assert len(links) == 1, "the page names no icon, so a browser asks for /favicon.ico (404)"
    icon = client.get(links[0])
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    assert ET.fromstring(icon.content).tag == "{http://www.w3.org/2000/svg}svg"
