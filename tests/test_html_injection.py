"""No prompt, token text or model name becomes markup in any HTML that openmav writes.

Prompts full of HTML go through each HTML output: the ``mav maps`` page, the notebook reprs, the
interactive Plotly page (saved by the visualizer and by ``mav compare``, and as a notebook repr)
and the explorer's web page.  Each page is parsed with :class:`html.parser.HTMLParser`, and its
elements and attributes must be exactly those of the same page made from a harmless prompt: no
``img``, no ``onerror``, no extra ``script`` and no ``</textarea>`` from the text, and no ``</script``
inside a script.  The text must still be shown as written (it is escaped, not dropped).
"""

from __future__ import annotations

import dataclasses
import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from openmav.analysis.extractor import AttentionExtractor
from openmav.analysis.visualizer import AttentionVisualizer
from openmav.capture.tokens import disambiguate
from openmav.maps.html import page_data, render_html
from openmav.maps.run import MapsOptions, run_maps

NASTY = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "\"quotes' and </textarea>", "</script>"]
PROMPTS = NASTY + [" ".join(NASTY)]
ALL = PROMPTS[-1]
NASTY_MODEL = "<img src=x onerror=alert(1)>\"'\u2028\u2029</script><!-- & &amp;"
BENIGN = "The cat sat on the mat"
VOID = {"meta", "input", "br", "img", "link", "hr", "col", "area", "base", "embed", "source", "track", "wbr"}


class Page(HTMLParser):
    """What a browser would build from ``text``: tags in order, script contents, text per element."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple] = []  # ("div", {"id": ...}) for a start tag, ("/div",) for an end tag
        self.scripts: list[str] = []
        self.text: list[tuple[str | None, str]] = []  # (innermost open element, its text)
        self.other: list[str] = []  # comments, processing instructions, unexpected declarations
        self._open: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self.scripts.append("")
        if tag not in VOID:
            self._open.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        self.tags.append(("/" + tag,))
        if tag in self._open:
            while self._open.pop() != tag:
                pass

    def handle_data(self, data):
        where = self._open[-1] if self._open else None
        if where == "script":
            self.scripts[-1] += data
        elif where != "style":
            self.text.append((where, data))

    def handle_comment(self, data):
        self.other.append("<!--" + data)

    def handle_decl(self, decl):
        if decl.lower() != "doctype html":
            self.other.append(decl)

    def unknown_decl(self, data):
        self.other.append(data)

    def handle_pi(self, data):
        self.other.append(data)

    def shape(self, keep_values: bool = True) -> list[tuple]:
        """Elements and attributes in order; attribute values too unless ``keep_values`` is false."""
        return [t if len(t) == 1 or keep_values else (t[0], sorted(t[1])) for t in self.tags]

    def texts(self, tag: str) -> list[str]:
        return [data for where, data in self.text if where == tag]


def assert_inert(page: Page, benign: Page, keep_values: bool = True) -> None:
    """``page`` has the elements and attributes of ``benign`` and nothing from the prompt."""
    starts = [t for t in page.tags if len(t) == 2]
    assert not [t for t, _ in starts if t in ("img", "textarea")], page.tags
    assert not [a for _, attrs in starts for a in attrs if a.startswith("on")]
    assert not [t for t in page.tags if t[0] == "/textarea"]
    assert len(page.scripts) == len(benign.scripts)
    for script in page.scripts:
        assert "</script" not in script.lower()
    assert page.other == benign.other == []
    assert page.shape(keep_values) == benign.shape(keep_values)


# ---- mav maps: maps.html --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lm(tiny):
    return tiny("llama")


def _maps(lm, prompt: str, out: Path) -> tuple[str, dict]:
    result = run_maps(MapsOptions(model=None, prompt=prompt, output_dir=str(out), max_new_tokens=3, window=8,
                                  stride=4, workers=0), lm=lm)
    with open(result.sidecar, encoding="utf-8") as fh:
        sidecar = json.load(fh)
    with open(result.page, encoding="utf-8") as fh:
        return fh.read(), sidecar


@pytest.fixture(scope="module")
def benign_maps(lm, tmp_path_factory):
    return Page(_maps(lm, BENIGN, tmp_path_factory.mktemp("benign"))[0])


def _check_maps_page(text: str, sidecar: dict, benign: Page) -> None:
    page = Page(text)
    assert_inert(page, benign)
    data, _ = page.scripts  # the page data, then the page's own code
    assert not set(data) & set("<>&\u2028\u2029"), "the JSON in <script> must hold these as \\uXXXX"
    assert json.loads(data) == json.loads(json.dumps(page_data(sidecar)))  # the escapes read back exactly
    assert page.texts("code") == [sidecar["prompt"]]  # shown as written
    title = f"mav maps · {sidecar['model']}"
    assert page.texts("title") == [title] and page.texts("h1") == [title]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_maps_page_keeps_prompt_and_tokens_as_text(lm, benign_maps, tmp_path, prompt):
    text, sidecar = _maps(lm, prompt, tmp_path)
    assert sidecar["prompt"] == prompt
    assert any(c in t["display"] for t in sidecar["tokens"] for c in "<>")  # the tokens hold markup characters
    _check_maps_page(text, sidecar, benign_maps)


def test_maps_page_keeps_model_name_and_token_text_as_text(lm, benign_maps, tmp_path):
    _, sidecar = _maps(lm, ALL, tmp_path)
    sidecar["model"] = NASTY_MODEL
    for i, token in enumerate(sidecar["tokens"]):  # whole-tag tokens, as a tokenizer with such merges shows them
        token["display"] = NASTY[i % len(NASTY)] + NASTY_MODEL
    for entry in sidecar["vocab"].values():
        entry["display"] = NASTY_MODEL
    _check_maps_page(render_html(sidecar), sidecar, benign_maps)


# ---- notebook reprs and the interactive Plotly page -----------------------------------------------------------------
@pytest.fixture(scope="module")
def extractor(lm):
    return AttentionExtractor(model=lm)


def _reprs(ex, prompt: str) -> list:
    res = dataclasses.replace(ex.extract_activations(prompt), model=NASTY_MODEL)
    whole = dataclasses.replace(res, tokens=[NASTY[i % len(NASTY)] for i in range(len(res.tokens))])
    return [res, whole, ex.get_attention_stats(prompt), ex.compare_prompts([prompt, ALL]),
            dataclasses.replace(ex.get_neuron_activations(prompt, 0), model=NASTY_MODEL)]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_notebook_reprs_keep_text_as_text(extractor, prompt):
    benign = [Page(obj._repr_html_()) for obj in _reprs(extractor, BENIGN)]
    shown = _reprs(extractor, prompt)
    for obj, plain in zip(shown, benign):
        page = Page(obj._repr_html_())
        assert_inert(page, plain)
        assert {t[0].lstrip("/") for t in page.tags} <= {"table", "caption", "thead", "tbody", "tr", "th", "td", "p"}
        text = "".join(data for _, data in page.text)
        assert repr(prompt) in text or prompt in text, type(obj).__name__
    res, whole = shown[:2]
    text = "".join(data for _, data in Page(whole._repr_html_()).text)
    assert NASTY_MODEL in text and all(piece in text for piece in NASTY)
    assert " ".join(res.tokens) in "".join(Page(res._repr_html_()).texts("p"))


def _figure_texts(fig) -> list[str]:
    """Every string of the figure that plotly.js draws as its subset of HTML."""
    out = [fig.layout.title.text]
    for trace in fig.data:
        out += list(trace.x) + list(trace.y)
    for menu in fig.layout.updatemenus:
        out += [b.label for b in menu.buttons] + [b.args[1]["title.text"] for b in menu.buttons]
    return out


@pytest.mark.parametrize("prompt", PROMPTS)
def test_interactive_figure_text_is_not_plotly_markup(extractor, prompt):
    res = extractor.extract_activations(prompt)
    fig = AttentionVisualizer().plot_interactive_attention(res, layers=[0])
    texts = _figure_texts(fig)
    assert not [t for t in texts if "<" in t or ">" in t]
    labels = disambiguate(list(res.tokens))
    assert [html.unescape(x) for x in fig.data[0].x] == labels == [html.unescape(y) for y in fig.data[0].y]
    assert html.unescape(fig.layout.title.text) == f"{prompt!r}: layer 0, head 0"


@pytest.fixture(scope="module")
def benign_interactive(extractor, tmp_path_factory):
    path = tmp_path_factory.mktemp("interactive") / "i.html"
    fig = AttentionVisualizer().plot_interactive_attention(extractor.extract_activations(BENIGN), layers=[0],
                                                           save_path=path)
    return Page(fig._repr_html_()), Page(path.read_text(encoding="utf-8"))


def _check_plotly_page(page: Page, benign: Page) -> None:
    assert_inert(page, benign, keep_values=False)  # Plotly's div ids are fresh for each page
    data = [s for s in page.scripts if "Plotly.newPlot" in s]
    assert len(data) == 1 and not set(data[0]) & set("<>\u2028\u2029")


def test_interactive_html_keeps_text_as_text(extractor, benign_interactive, tmp_path):
    res = extractor.extract_activations(ALL)
    pieces = [*NASTY, NASTY_MODEL]  # whole-tag tokens, as a tokenizer with such merges shows them
    res = dataclasses.replace(res, tokens=[pieces[i % len(pieces)] for i in range(len(res.tokens))])
    fig = AttentionVisualizer().plot_interactive_attention(res, layers=[0], save_path=tmp_path / "i.html")
    assert [html.unescape(x) for x in fig.data[0].x] == disambiguate(res.tokens)  # "&amp;" shows as "&amp;"
    benign_snippet, benign_page = benign_interactive
    _check_plotly_page(Page(fig._repr_html_()), benign_snippet)
    _check_plotly_page(Page((tmp_path / "i.html").read_text(encoding="utf-8")), benign_page)


def test_mav_compare_interactive_page_keeps_prompt_as_text(lm, benign_interactive, tmp_path):
    from openmav.cli import main

    model_dir = tmp_path / "model"
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    code = main(["compare", "--mode", "interactive", "--model", str(model_dir), "--output-dir",
                 str(tmp_path / "out"), "--prompts", ALL])
    assert code == 0
    page = Page((tmp_path / "out" / "interactive" / "interactive_attention.html").read_text(encoding="utf-8"))
    _check_plotly_page(page, benign_interactive[1])
    assert "&lt;img src=x onerror=alert(1)&gt;" in page.scripts[-1]  # the title is there, as Plotly text


# ---- the explorer web page ------------------------------------------------------------------------------------------
def test_web_page_shows_api_text_only_as_text(lm):
    """The page is a static file; the prompt and token text reach it only as JSON, put in with textContent."""
    from fastapi.testclient import TestClient

    from openmav.web.app import STATIC, create_app

    client = TestClient(create_app(lm, max_prompt_tokens=128), base_url="http://127.0.0.1:8050")
    index = (Path(str(STATIC)) / "index.html").read_text(encoding="utf-8")
    for prompt in PROMPTS:
        r = client.post("/api/attention", json={"prompt": prompt, "heads": [{"layer": 0, "head": 0}]})
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
        labels = [t["label"] for t in r.json()["tokens"]]
        assert any("<" in x for x in labels)  # raw text, so the page must not read it as markup
    served = client.get("/")
    assert served.text == index  # no prompt or token text is ever written into the page itself
    page = Page(served.text)
    assert not [t for t, *_ in page.tags if t == "img"] and page.other == []
    scripts = [a.get("src") for t, *rest in page.tags if t == "script" for a in rest]
    assert scripts and all(src.startswith("/static/") and src.endswith(".js") for src in scripts)
    assert not [a for t in page.tags if len(t) == 2 for a in t[1] if a.startswith("on")]
    for name in sorted(p.name for p in Path(str(STATIC)).glob("*.js")):  # every script the page can load
        source = (Path(str(STATIC)) / name).read_text(encoding="utf-8")
        assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|DOMParser|"
                             r"createContextualFragment|srcdoc", source), name
