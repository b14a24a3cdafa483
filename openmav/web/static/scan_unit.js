// A unit's page from a corpus scan: its statistics, its histogram (Plotly, loaded from this server on first
// use), a neuron's direct effect on the logits, and its top contexts as text shaded by the unit's value. A
// context clicked opens in the attention view above (its text becomes the prompt and runs).
"use strict";

let plotlyLoading = null;
function loadPlotly() {
  if (window.Plotly) return Promise.resolve(window.Plotly);
  if (!plotlyLoading) {
    plotlyLoading = new Promise((resolve, reject) => {
      const s = el("script", {src: "/vendor/plotly.js"});
      s.onload = () => resolve(window.Plotly);
      s.onerror = () => { plotlyLoading = null; reject(new Error("could not load the chart library (/vendor/plotly.js)")); };
      document.head.append(s);
    });
  }
  return plotlyLoading;
}

const unitName = (kind, layer, unit) => `layer ${layer} · ${kind === "head" ? "head" : "neuron"} ${unit}`;

async function openUnit(kind, layer, unit) {
  const box = kind === "head" ? $("#head-unit-page") : $("#neuron-unit-page");
  const place = box.id, n = ask(place);
  const page = await scanApi(`/unit/${kind}/${layer}/${unit}`, {limit: 20});
  if (stale(place, n)) return;
  if (kind === "neuron") {
    $("#neuron-layer").value = String(layer);
    $("#neuron-unit").value = String(unit);
  }
  document.querySelectorAll(`.scan-units tr.picked`).forEach((r) => r.classList.remove("picked"));
  document.querySelectorAll(`.scan-units tr[data-layer='${layer}'][data-unit='${unit}']`)
    .forEach((r) => r.classList.add("picked"));
  const hist = el("div", {class: "scan-hist"});
  const effect = el("div", {class: "scan-effect"});
  box.replaceChildren(
    el("h3", {class: "unit-title", text: unitName(kind, layer, unit)}),
    unitStats(page),
    el("h4", {text: `Top ${page.contexts.length} contexts`}),
    el("p", {class: "hint", text: "Each token shaded by the unit's value on it (orange above zero, blue below); the hit " +
      "is outlined. Click a context to open it in the attention view" + (kind === "head" ? " with this head." : ".")}),
    contextList(page.contexts, kind, layer, unit),
    el("div", {class: "row wrap unit-charts"},
      el("div", {class: "unit-hist"},
        el("h4", {text: kind === "head" ? "Norm of the head's output over the corpus" : "Activation over the corpus"}),
        hist),
      kind === "neuron" ? effect : ""));
  box.dataset.unit = `${kind}/${layer}/${unit}`;
  if (box.getBoundingClientRect().top > window.innerHeight - 120) box.scrollIntoView({block: "start"});  // below the fold
  drawHistogram(hist, page.histogram, kind).catch((err) => showError(err.message));
  if (kind === "neuron") showEffect(effect, layer, unit, n);
}
window.mav.openUnit = openUnit;

function unitStats(page) {
  const s = page.summary, items = [["positions", String(s.count)], ["max", fmt(s.max, 4)], ["mean", fmt(s.mean, 4)],
    ["std", fmt(s.std, 4)], ["density (> 0)", s.frac_pos === null ? "—" : pct(s.frac_pos)]];
  if (page.scores) {
    const h = page.scores;
    items.push(["entropy", fmt(h.entropy, 3) + " nats"], ["max weight", fmt(h.max_weight, 3)],
      ["first weight", fmt(h.first_weight, 3)], ["prev-token", fmt(h.prev_token, 3)], ["induction", fmt(h.induction, 3)]);
  }
  return el("div", {class: "unit-stats"}, ...items.map(([k, v]) =>
    el("span", {class: "stat"}, el("span", {class: "k", text: k}), " ", el("span", {class: "v", text: v}))));
}

// the fixed bins on a signed log scale: bin i drawn at x = i; ticks at the edges that are 0 or a power of ten
async function drawHistogram(box, bins, kind) {
  const used = bins.map((b, i) => (b.count ? i : -1)).filter((i) => i >= 0);
  if (!used.length) { box.replaceChildren(el("p", {class: "hint", text: "no values"})); return; }
  const lo = Math.max(0, used[0] - 1), hi = Math.min(bins.length - 1, used[used.length - 1] + 1);
  const shown = bins.slice(lo, hi + 1);
  const edges = [];  // [x, label] of the edges at 0 and at powers of ten; zero first, so it keeps its tick
  shown.forEach((b, j) => {
    if (b.lo === null) return;
    const exp = Math.log10(Math.abs(b.lo));
    if (b.lo === 0) edges.unshift([lo + j - 0.5, "0"]);
    else if (Math.abs(exp - Math.round(exp)) < 1e-9) {
      edges.push([lo + j - 0.5, (b.lo < 0 ? "−" : "") + formatPower(Math.round(exp))]);
    }
  });
  const kept = edges.filter(([x], i) => edges.slice(0, i).every(([y]) => Math.abs(x - y) >= 2));  // ±1e-3 sit by 0
  const ticks = kept.map(([x]) => x), texts = kept.map(([, t]) => t);
  const Plotly = await loadPlotly();
  const trace = {type: "bar", x: shown.map((b, j) => lo + j), y: shown.map((b) => b.count), width: 0.92,
    marker: {color: shown.map((b) => (b.hi !== null && b.hi <= 0 ? "#2c6fbb" : "#e67e22"))},
    customdata: shown.map((b) => b.label), hovertemplate: "%{customdata}: %{y} positions<extra></extra>"};
  const layout = {height: 220, margin: {l: 50, r: 10, t: 8, b: 58}, bargap: 0,
    xaxis: {tickvals: ticks, ticktext: texts, title: {text: (kind === "head" ? "output norm" : "activation") +
      " (signed log scale)", standoff: 6}, range: [lo - 0.6, hi + 0.6], zeroline: false},
    yaxis: {title: {text: "positions"}, rangemode: "tozero"}};
  await Plotly.newPlot(box, [trace], layout, {displaylogo: false, responsive: true,
    modeBarButtonsToRemove: ["select2d", "lasso2d"], toImageButtonOptions: {filename: "scan_histogram"}});
}

// 10^k as a short label: 0.001, 0.01, 0.1, 1, 10, 100, 1k, 10k
function formatPower(k) {
  if (k >= 3) return `${10 ** (k - 3)}k`;
  return k >= 0 ? String(10 ** k) : (10 ** k).toFixed(-k);
}

async function showEffect(box, layer, unit, n) {
  if (!scanInfo().same_model) {
    box.replaceChildren(el("p", {class: "hint", text: `No logit effect: the scan was made with ${scanInfo().model}, ` +
      "not the served model."}));
    return;
  }
  box.replaceChildren(el("p", {class: "hint", text: "computing the direct effect on the logits…"}));
  const e = await scanApi(`/effect/${layer}/${unit}`, {k: 10});
  if (stale("neuron-unit-page", n)) return;
  const vmax = Math.max(1e-12, ...e.top.map((t) => Math.abs(t.value)), ...e.bottom.map((t) => Math.abs(t.value)));
  const table = (title, rows, cls) => el("table", {class: "dist effect " + cls}, el("caption", {text: title}),
    ...rows.map((t) => el("tr", {},
      el("td", {class: "label", text: t.label}), el("td", {class: "id", text: String(t.id)}),
      el("td", {class: "prob", text: (t.value >= 0 ? "+" : "") + fmt(t.value, 3)}),
      el("td", {}, el("span", {class: "bar", style: `width:${Math.round(70 * Math.abs(t.value) / vmax)}px`})))));
  box.replaceChildren(el("h4", {text: "Direct effect on the logits"}),
    el("div", {class: "row wrap"}, table("raises most", e.top, "raises"), table("lowers most", e.bottom, "lowers")),
    el("p", {class: "hint applied", text: e.applied + "."}));
}

// ---- top contexts ----------------------------------------------------------------------------------------------
// line breaks and tabs as visible marks, other control characters as their Unicode control pictures (␈ for \b)
const shownText = (t) => t.replace(/\n/g, "↵").replace(/\t/g, "⇥")
  .replace(/[\x00-\x08\x0b-\x1f]/g, (c) => String.fromCharCode(0x2400 + c.charCodeAt(0))).replace(/\x7f/g, "␡");

function contextList(contexts, kind, layer, unit) {
  const vmax = Math.max(1e-12, ...contexts.flatMap((c) => c.tokens.map((t) => Math.abs(t.value ?? 0))));
  return el("ol", {class: "contexts"}, ...contexts.map((c) => {
    const tokens = c.tokens.map((t, i) => {
      const span = el("span", {class: "ctok" + (i === c.hit_offset ? " hit" : ""), text: shownText(t.text),
        title: `${JSON.stringify(t.text)} (id ${t.id}): ${t.value === null ? "not recorded" : fmt(t.value, 4)}`});
      if (t.value !== null) {
        const a = Math.min(1, Math.abs(t.value) / vmax);
        span.style.background = t.value >= 0 ? `rgba(230, 126, 34, ${a.toFixed(3)})` : `rgba(44, 111, 187, ${a.toFixed(3)})`;
      }
      return span;
    });
    const where = `document ${c.doc}` + (c.source ? ` (${c.source})` : "") + `, characters ${c.char_start}–${c.char_end}`;
    return el("li", {class: "context clickable", "data-rank": c.rank, title: `${where}: click to open in the attention view`,
      onclick: () => openContext(c, kind, layer, unit)},
    el("span", {class: "ctx-value", text: fmt(c.value, 3)}), el("span", {class: "ctx-text"}, ...tokens));
  }));
}

// the context's text as the prompt, run; the hit token marked in the prompt's tokens; a head opened
async function openContext(c, kind, layer, unit) {
  $("#prompt").value = c.text;
  await runPrompt();
  const pos = hitPosition(c);
  document.querySelectorAll("#tokens .tok.scan-hit").forEach((t) => t.classList.remove("scan-hit"));
  if (pos !== null) {
    const tok = document.querySelectorAll("#tokens .tok")[pos];
    if (tok) { tok.classList.add("scan-hit"); tok.title += ` · the ${unitName(kind, layer, unit)} hit`; }
  }
  if (kind === "head") await openHead(layer, unit);
  window.scrollTo({top: 0, behavior: "instant"});
}

// where the hit token is in the prompt as the model tokenized it again: counted from the end (the context ends a
// few tokens after the hit), else the nearest token with the hit's id
function hitPosition(c) {
  const after = c.tokens.length - 1 - c.hit_offset, guess = S.tokens.length - 1 - after;
  if (S.tokens[guess] && S.tokens[guess].id === c.token_id) return guess;
  let best = null;
  S.tokens.forEach((t, i) => {
    if (t.id === c.token_id && (best === null || Math.abs(i - guess) < Math.abs(best - guess))) best = i;
  });
  return best;
}
