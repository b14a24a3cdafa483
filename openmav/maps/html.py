"""One self-contained HTML page over a run's maps: no network, inline CSS and JS.

The page is built from the sidecar dict (:func:`openmav.maps.sidecar.sidecar_dict`):
a slider (and the arrow keys) moves through generated tokens; the grid of layers by
key positions scrolls both ways with the row names and positions kept in view, and
keeps the query's column (outlined) in view: the page opens scrolled to the end of the
prompt, where the first token is generated, not at position 0; hovering a cell shows
the attention value and the logit-lens top-5 with probabilities.  Token text is
inserted with ``textContent``, never as markup.

Everything from the run (prompt, token text, model name) is escaped where it is written:
the title, heading and prompt with :func:`html.escape` (quotes included), the data in the
``<script type="application/json">`` block with :func:`script_json`, so that no text can
open or close an element.
"""

from __future__ import annotations

import json
from html import escape

from ..capture.trace import replacing
from .render import colormap_lut, drawable
from .write import CMAP

_CSS = """
body{font-family:"DejaVu Sans",Verdana,sans-serif;margin:12px;color:#222}
h1{font-size:16px;margin:0 0 6px}
#controls{display:flex;gap:8px;align-items:center;margin:6px 0;flex-wrap:wrap}
#slider{width:420px}
#info{font-size:13px;margin:4px 0}
#wrap{overflow:auto;max-height:78vh;border:1px solid #ccc}
table{border-collapse:collapse;font-size:11px}
td,th{border:1px solid #fff;padding:1px 3px;min-width:42px;max-width:60px;height:16px;text-align:center;
 white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
th{background:#f4f4f4;font-weight:normal;position:sticky;top:0;z-index:1}
th.row{position:sticky;left:0;z-index:2;background:#f4f4f4;min-width:30px}
tr.out td{background:#ececec;color:#111;font-weight:bold}
td.query{outline:2px solid #dc1e1e;outline-offset:-2px}
#tip{position:fixed;display:none;background:#fffff4;border:1px solid #888;padding:6px;font-size:12px;
 pointer-events:none;z-index:9;box-shadow:2px 2px 6px #0003}
#tip table{font-size:12px}#tip td{border:0;min-width:0;max-width:none;text-align:left;padding:0 6px 0 0}
#bar{display:inline-block;width:160px;height:10px;vertical-align:middle}
"""

_JS = r"""
const D = JSON.parse(document.getElementById('maps-data').textContent);
const slider = document.getElementById('slider'), grid = document.getElementById('grid');
const info = document.getElementById('info'), tip = document.getElementById('tip');
const wrap = document.getElementById('wrap');
slider.max = D.steps.length - 1;
const short = (s, n) => s.length > n ? s.slice(0, n - 1) + '\u2026' : s;
const word = id => (D.vocab[id] || '?');
document.getElementById('bar').style.background =
  'linear-gradient(to right,' + D.lut.filter((_, i) => i % 32 == 0 || i == 255).join(',') + ')';
function cell(tag, text, cls) { const c = document.createElement(tag); c.textContent = text; if (cls) c.className = cls; return c; }
function show(i) {
  i = Math.max(0, Math.min(D.steps.length - 1, i)); slider.value = i;
  const st = D.steps[i], S = st.att[0].length;
  info.textContent = 'token ' + i + ' = \u201c' + D.tokens[D.P + i] + '\u201d (p ' + st.p.toFixed(3) +
    ') \u00b7 attention from position ' + (S - 1) + ', ' + D.reduce + ' \u00b7 ' + st.images.join(', ');
  grid.textContent = '';
  const head = document.createElement('tr'); head.appendChild(cell('th', '', 'row'));
  for (let k = 0; k < S; k++) { const h = cell('th', k + '\n' + short(D.tokens[k], 8)); h.title = D.tokens[k]; head.appendChild(h); }
  grid.appendChild(head);
  for (let l = 0; l <= D.L; l++) {
    const tr = document.createElement('tr'); if (l == D.L) tr.className = 'out';
    tr.appendChild(cell('th', l == D.L ? 'out' : 'L' + l, 'row'));
    for (let k = 0; k < S; k++) {
      const id = l == D.L ? D.final_ids[k][0] : D.lens_ids[k][l][0];
      const td = cell('td', short(word(id), 7), k == S - 1 ? 'query' : '');
      td.dataset.l = l; td.dataset.k = k;
      if (l < D.L) {
        const v = st.att[l][k] / 1000, c = D.lut[Math.round(v * 255)];
        td.style.background = c;
        const r = parseInt(c.slice(1, 3), 16), g = parseInt(c.slice(3, 5), 16), b = parseInt(c.slice(5, 7), 16);
        td.style.color = (0.299 * r + 0.587 * g + 0.114 * b) < 128 ? '#fff' : '#000';
      }
      tr.appendChild(td);
    }
    grid.appendChild(tr);
  }
  reveal(S);
}
// keep the query's column in view, right of the sticky row names, with some room after it
function reveal(S) {
  const th = grid.rows[0].cells[S], names = grid.rows[0].cells[0].offsetWidth;
  const left = th.offsetLeft, right = left + th.offsetWidth;
  if (right > wrap.scrollLeft + wrap.clientWidth || left < wrap.scrollLeft + names)
    wrap.scrollLeft = Math.max(0, right - wrap.clientWidth + Math.min(wrap.clientWidth / 4, 160));
}
grid.addEventListener('mousemove', e => {
  const td = e.target.closest('td'); if (!td) { tip.style.display = 'none'; return; }
  const l = +td.dataset.l, k = +td.dataset.k, st = D.steps[+slider.value];
  const ids = l == D.L ? D.final_ids[k] : D.lens_ids[k][l], ps = l == D.L ? D.final_probs[k] : D.lens_probs[k][l];
  tip.textContent = '';
  tip.appendChild(cell('div', (l == D.L ? 'model output' : 'layer ' + l) + ' \u00b7 position ' + k + ' \u201c' + D.tokens[k] + '\u201d'));
  if (l < D.L) tip.appendChild(cell('div', 'attention ' + (st.att[l][k] / 1000).toFixed(3)));
  tip.appendChild(cell('div', (l == D.L ? 'output' : 'logit lens') + ' top-5:'));
  const t = document.createElement('table');
  ids.forEach((id, j) => { const tr = document.createElement('tr'); tr.appendChild(cell('td', word(id)));
    tr.appendChild(cell('td', ps[j].toFixed(3))); t.appendChild(tr); });
  tip.appendChild(t);
  tip.style.display = 'block';
  const x = e.clientX + 14 + tip.offsetWidth > innerWidth ? e.clientX - 14 - tip.offsetWidth : e.clientX + 14;
  const y = e.clientY + 14 + tip.offsetHeight > innerHeight ? e.clientY - 14 - tip.offsetHeight : e.clientY + 14;
  tip.style.left = Math.max(0, x) + 'px'; tip.style.top = Math.max(0, y) + 'px';
});
grid.addEventListener('mouseleave', () => tip.style.display = 'none');
slider.addEventListener('input', () => show(+slider.value));
document.getElementById('prev').onclick = () => show(+slider.value - 1);
document.getElementById('next').onclick = () => show(+slider.value + 1);
document.addEventListener('keydown', e => { if (e.key == 'ArrowLeft') show(+slider.value - 1);
  if (e.key == 'ArrowRight') show(+slider.value + 1); });
show(0);
"""


# characters JSON leaves raw that a <script> block should not hold: "<" could start "</script>"
# or "<!--"; ">" and "&" are escaped too for good measure; U+2028/2029 end lines in older JavaScript
_SCRIPT_UNSAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                                "\u2028": "\\u2028", "\u2029": "\\u2029"})


def script_json(value) -> str:
    """``value`` as JSON that is safe inside a ``<script>`` element.

    ``<``, ``>``, ``&``, U+2028 and U+2029 only ever occur inside JSON strings, where their
    ``\\uXXXX`` escapes mean the same characters: ``JSON.parse`` (and :func:`json.loads`) read
    back exactly ``value``, and the text can never hold ``</script`` or ``<!--``.
    """
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).translate(_SCRIPT_UNSAFE)


def page_data(sidecar: dict) -> dict:
    """The compact data the page needs (attention in thousandths, probabilities to 3 places); token text as the
    images write it (:func:`~openmav.maps.render.drawable`: a character no font here draws, a control or format
    character, as its escaped code point), so the page shows no empty box where an image shows ``\\u732b``."""
    how = sidecar["reduce"] if sidecar["reduce"] != "head" else f"head {sidecar['head']}"
    rnd = lambda rows: [[round(x, 3) for x in r] for r in rows]  # noqa: E731
    return {
        "model": sidecar["model"], "P": sidecar["prompt_length"], "L": sidecar["n_layers"],
        "reduce": f"{how} over heads" if how in ("max", "mean") else how,
        "tokens": [drawable(t["display"]) for t in sidecar["tokens"]],
        "vocab": {i: drawable(v["display"]) for i, v in sidecar["vocab"].items()},
        "lens_ids": sidecar["lens"]["ids"], "lens_probs": [rnd(p) for p in sidecar["lens"]["probs"]],
        "final_ids": sidecar["final"]["ids"], "final_probs": rnd(sidecar["final"]["probs"]),
        "steps": [{"p": s["prob"], "att": [[round(v * 1000) for v in row] for row in s["attention"]],
                   "images": [im["file"] for im in s["images"]]} for s in sidecar["steps"]],
        "lut": ["#%02x%02x%02x" % tuple(int(c) for c in rgb) for rgb in colormap_lut(CMAP)],
    }


def render_html(sidecar: dict) -> str:
    """The whole page as one string; text from the run is escaped (see the module docstring)."""
    data = script_json(page_data(sidecar))
    title = escape(f"mav maps · {sidecar['model']}", quote=True)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{_CSS}</style></head>
<body><h1>{title}</h1>
<div>prompt: <code>{escape(sidecar['prompt'], quote=True)}</code></div>
<div id="controls"><button id="prev">&larr; prev</button>
<input id="slider" type="range" min="0" value="0"><button id="next">next &rarr;</button>
<span>attention 0 <span id="bar"></span> 1 · cell text: logit-lens top-1 · last row: model output</span></div>
<div id="info"></div><div id="wrap"><table id="grid"></table></div><div id="tip"></div>
<script type="application/json" id="maps-data">{data}</script>
<script>{_JS}</script></body></html>
"""


def write_html(path: str, sidecar: dict) -> None:
    """Write the page atomically (temporary name, then rename)."""
    page = render_html(sidecar)
    with replacing(path, sweep=False) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(page)
