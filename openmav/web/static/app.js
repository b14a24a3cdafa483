// The OpenMAV explorer page: prompt, head grid, attention maps, ablation; the tabs are in panels.js
// (evaluation, studies), circuit.js (circuits) and views.js (model view, logit lens, logit attribution).
// Everything it shows comes from the JSON API (/docs); no network beyond this server.
"use strict";

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...kids) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  kids.flat().forEach((kid) => node.append(kid));
  return node;
};
const fmt = (x, d = 4) => (x === null || x === undefined ? "—" : Number(x).toFixed(d));
const pct = (x) => (100 * x).toFixed(2) + "%";
const key = (l, h) => `${l}.${h}`;

const S = {
  model: null, prompt: "", tokens: [], att: new Map(), picked: [], ablated: [], page: 0,
  threshold: 0, mark: null, maps: [], scores: null, evaluation: null, top: [], busy: 0,
};
window.mav = {state: S};

// ---- API ----------------------------------------------------------------------------------------------
async function api(path, body) {
  S.busy++;
  $("#busy").hidden = false;
  try {
    const res = await fetch(path, body === undefined ? {} : {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
    });
    const data = await res.json().catch(() => ({detail: res.statusText}));
    if (!res.ok) {
      const wait = res.status === 429 && res.headers.get("Retry-After");  // a full line: when to try again
      throw new Error((data.detail || `HTTP ${res.status}`) + (wait ? ` (retry in ${wait} s)` : ""));
    }
    $("#error").hidden = true;
    return data;
  } catch (err) {
    showError(err.message);
    err.shown = true;
    throw err;
  } finally {
    if (--S.busy === 0) $("#busy").hidden = true;
  }
}
function showError(msg) {
  const box = $("#error");
  box.textContent = msg;
  console.warn("error shown:", msg);
  box.hidden = false;
}

// ---- prompt and tokens --------------------------------------------------------------------------------
async function runPrompt() {
  S.prompt = $("#prompt").value;
  S.att.clear();
  S.mark = null;
  $("#details").hidden = true;
  S.ablated.forEach((a) => { if (a.positions) a.positions = null; });
  const data = await api("/api/attention", {prompt: S.prompt, heads: S.picked.map(([layer, head]) => ({layer, head}))});
  S.tokens = data.tokens;
  data.heads.forEach((h) => S.att.set(key(h.layer, h.head), h.weights));
  renderTokens();
  renderMaps();
  await updatePrediction();
  onPromptRun();
}

function renderTokens() {
  $("#tokens").replaceChildren(...S.tokens.map((t) =>
    el("span", {class: "tok", title: `position ${t.position}, id ${t.id}`, text: t.label})));
}

async function ensureAttention(heads) {
  const missing = heads.filter(([l, h]) => !S.att.has(key(l, h)));
  if (!S.prompt || !missing.length) return;
  const data = await api("/api/attention", {prompt: S.prompt, heads: missing.map(([layer, head]) => ({layer, head}))});
  data.heads.forEach((h) => S.att.set(key(h.layer, h.head), h.weights));
}

// ---- head grid ------------------------------------------------------------------------------------------
function buildGrid() {
  const {n_layers: L, n_heads: H} = S.model;
  const grid = $("#grid");
  grid.style.gridTemplateColumns = `2.6em repeat(${H}, minmax(14px, 1fr))`;
  const cells = [el("span", {class: "corner", text: "L\\H"})];
  for (let h = 0; h < H; h++) cells.push(el("span", {class: "axis", text: String(h)}));
  for (let l = 0; l < L; l++) {
    cells.push(el("span", {class: "axis", text: String(l)}));
    const heads = !S.model.attention_layers || S.model.attention_layers.includes(l);
    for (let h = 0; h < H; h++) {
      const cell = el("button", {class: "cell", "data-layer": l, "data-head": h, title: `layer ${l} head ${h}`,
        onclick: () => clickHead(l, h)});
      if (!heads) { cell.disabled = true; cell.classList.add("none"); }
      cells.push(cell);
    }
  }
  grid.replaceChildren(...cells);
}

function overlayValues() {
  const name = $("#overlay").value;
  if (!name) return null;
  if (name === "kl") return S.evaluation ? S.evaluation.kl : null;
  return S.scores ? S.scores[name] : null;
}

function renderGrid() {
  const values = overlayValues();
  const vmax = values ? Math.max(1e-9, ...values.flat().map(Math.abs)) : 1;
  const picked = new Set(S.picked.map(([l, h]) => key(l, h)));
  const ablated = new Set(S.ablated.map((a) => key(a.layer, a.head)));
  document.querySelectorAll("#grid .cell").forEach((b) => {
    const l = +b.dataset.layer, h = +b.dataset.head, k = key(l, h);
    b.classList.toggle("picked", picked.has(k));
    b.classList.toggle("ablated", ablated.has(k));
    const v = values ? values[l][h] : null;
    b.style.background = v === null ? "" : Heatmap.colour(v, vmax, false);
    b.title = b.disabled ? `layer ${l}: no attention heads`
      : `layer ${l} head ${h}` + (v === null ? "" : `: ${$("#overlay").selectedOptions[0].text} ${fmt(v)}`);
  });
  $("#picked-count").textContent = `${S.picked.length} head${S.picked.length === 1 ? "" : "s"} picked`;
}

async function clickHead(l, h) {
  if ($("#grid-mode").value === "ablate") return toggleAblation(l, h);
  const i = S.picked.findIndex(([a, b]) => a === l && b === h);
  if (i >= 0) S.picked.splice(i, 1);
  else {
    S.picked.push([l, h]);
    S.page = Math.floor((S.picked.length - 1) / perPage());
  }
  renderGrid();
  await ensureAttention(S.picked);
  renderMaps();
}

// "open that head": from any chart (evaluation map and bars, circuit nodes and table, attribution map, model
// view). The head joins the picked heads (never toggled off), its page of maps is shown and it is outlined.
async function openHead(l, h) {
  if (!S.prompt) return showError("run a prompt first");
  if (S.model.attention_layers && !S.model.attention_layers.includes(l)) return;
  let i = S.picked.findIndex(([a, b]) => a === l && b === h);
  if (i < 0) { S.picked.push([l, h]); i = S.picked.length - 1; }
  S.page = Math.floor(i / perPage());
  renderGrid();
  await ensureAttention(S.picked);
  renderMaps();
  const card = document.querySelector(`#maps .map[data-layer='${l}'][data-head='${h}']`);
  if (card) {
    card.classList.add("opened");
    setTimeout(() => card.classList.remove("opened"), 1500);
    card.scrollIntoView({block: "nearest"});
  }
}
window.mav.openHead = openHead;

async function setOverlay() {
  const name = $("#overlay").value;
  if (name && name !== "kl" && !S.scores) S.scores = await api("/api/head_scores");
  if (name === "kl" && !S.evaluation) await evaluateHeads();
  renderGrid();
}

// ---- attention maps -----------------------------------------------------------------------------------
const perPage = () => +$("#per-page").value;

function renderMaps() {
  const box = $("#maps");
  S.maps = [];
  if (!S.tokens.length || !S.picked.length) {
    box.replaceChildren(el("p", {class: "hint", text: S.tokens.length
      ? "Click heads in the grid to see their attention." : "Type a prompt and press “Show attention”."}));
    updatePager();
    return;
  }
  const pages = Math.ceil(S.picked.length / perPage());
  S.page = Math.min(Math.max(0, S.page), pages - 1);
  const shown = S.picked.slice(S.page * perPage(), (S.page + 1) * perPage());
  const n = S.tokens.length, cols = perPage() <= 2 ? 1 : 2;
  const cell = Math.max(5, Math.min(24, Math.floor((cols === 1 ? 620 : 330) / n)));
  const labels = S.tokens.map((t) => t.label);
  box.replaceChildren(...shown.map(([l, h]) => {
    const title = el("div", {class: "map-title"}, el("b", {text: `layer ${l} · head ${h}`}));
    const card = el("div", {class: "map", "data-layer": l, "data-head": h}, title);
    const weights = S.att.get(key(l, h));
    if (!weights) return card;
    const map = new Heatmap(card, {
      rows: labels, cols: labels, values: weights, cell, vmax: 1, threshold: S.threshold,
      onHover: (at) => hover(at, l, h), onClick: (r, c) => markCell(r, c),
    });
    title.append(el("span", {class: "map-tools"}, Export.buttons(`attention_L${l}_H${h}`, {
      fig: () => map.canvas, svg: () => map.toSVG(), csv: () => attentionRows(weights)}),
      el("button", {class: "close", title: "remove", text: "×", onclick: () => clickHead(l, h)})));
    map.layer = l;
    map.head = h;
    map.mark = S.mark;
    map.draw();
    S.maps.push(map);
    return card;
  }));
  updatePager();
}
window.mav.redrawAll = () => S.maps.map((m) => m.draw());

// a query x key map as CSV rows: the key tokens across, one row per query token
function attentionRows(weights) {
  const labels = S.tokens.map((t) => t.label);
  return [["query \\ key", ...labels], ...weights.map((row, q) => [labels[q], ...row])];
}
window.mav.maps = () => S.maps;

function updatePager() {
  const pages = Math.max(1, Math.ceil(S.picked.length / perPage()));
  $("#page-info").textContent = `page ${S.page + 1}/${pages}`;
  $("#page-prev").disabled = S.page === 0;
  $("#page-next").disabled = S.page >= pages - 1;
}

function hover(at, l, h) {
  const tip = $("#tooltip");
  if (!at) { tip.hidden = true; return; }
  const q = S.tokens[at.r], k = S.tokens[at.c];
  tip.textContent = `L${l} H${h}  ${q.label} (${at.r}) → ${k.label} (${at.c}): ${fmt(at.value)}`;
  tip.style.left = at.x + 14 + "px";
  tip.style.top = at.y + 14 + "px";
  tip.hidden = false;
}

async function markCell(r, c) {
  S.mark = {r, c};
  S.maps.forEach((m) => { m.mark = S.mark; m.draw(); });
  await showDetails();
}

async function showDetails() {
  if (!S.mark) return;
  const {r, c} = S.mark, q = S.tokens[r], k = S.tokens[c];
  const p = await api("/api/predict", {prompt: S.prompt, ablations: S.ablated, position: r, token_id: k.id, top_k: 5});
  const rank = p.rank;
  $("#details").replaceChildren(
    el("h3", {text: `Query ${q.label} (position ${r}, id ${q.id}) → key ${k.label} (position ${c}, id ${k.id})`}),
    el("p", {class: "hint", text: `Next token after position ${r}, with ${p.n_ablations} head(s) ablated.`}),
    distTables(p),
    el("dl", {class: "stats"},
      el("dt", {text: "KL(before‖after)"}), el("dd", {class: "kl", text: fmt(p.kl) + " nats"}),
      el("dt", {text: "entropy change"}), el("dd", {class: "dH", text: `${fmt(p.entropy_before, 3)} → ${fmt(p.entropy_after, 3)} (${p.entropy_change >= 0 ? "+" : ""}${fmt(p.entropy_change, 3)}) nats`}),
      el("dt", {text: `rank of ${rank.label}`}), el("dd", {class: "rank", text: `${rank.rank_before} → ${rank.rank_after} (p ${pct(rank.prob_before)} → ${pct(rank.prob_after)})`})));
  $("#details").hidden = false;
}

function distTables(p) {
  const table = (title, rows, cls) => el("table", {class: "dist " + cls},
    el("caption", {text: title}),
    ...rows.map((t) => el("tr", {},
      el("td", {class: "label", text: t.label}), el("td", {class: "id", text: String(t.id)}),
      el("td", {class: "prob", text: pct(t.prob)}),
      el("td", {}, el("span", {class: "bar", style: `width:${Math.round(80 * t.prob)}px`})))));
  return el("div", {class: "row wrap"}, table("before", p.before, "before"), table("after ablation", p.after, "after"));
}

// ---- ablation -------------------------------------------------------------------------------------------
function parsePositions(text) {
  text = text.trim();
  if (!text) return null;
  const out = [];
  for (const part of text.split(/[ ,]+/).filter(Boolean)) {
    const m = part.match(/^(\d+)(?:-(\d+))?$/);
    if (!m) throw new Error(`positions: cannot read "${part}"; write e.g. 3, 5-7`);
    for (let i = +m[1]; i <= +(m[2] ?? m[1]); i++) out.push(i);
  }
  return out;
}

async function toggleAblation(l, h) {
  const i = S.ablated.findIndex((a) => a.layer === l && a.head === h);
  if (i >= 0) S.ablated.splice(i, 1);
  else {
    let positions;
    try { positions = parsePositions($("#abl-positions").value); } catch (err) { return showError(err.message); }
    S.ablated.push({layer: l, head: h, kind: $("#abl-kind").value, factor: +$("#abl-factor").value,
      threshold: +$("#abl-threshold").value, positions});
  }
  renderAblations();
  await updatePrediction();
  await showDetails();
}

function renderAblations() {
  const describe = (a) => `L${a.layer} H${a.head} ${a.kind}` + (a.kind === "scale" ? ` ×${a.factor}` : "")
    + (a.kind === "sparsify" ? ` <${a.threshold}` : "") + (a.positions ? ` @${a.positions.join(",")}` : "");
  $("#ablated").replaceChildren(...S.ablated.map((a) => el("span", {class: "chip"}, describe(a),
    el("button", {title: "remove", text: "×", onclick: () => toggleAblation(a.layer, a.head)}))));
  renderGrid();
}

async function updatePrediction() {
  if (!S.prompt) return;
  const p = await api("/api/predict", {prompt: S.prompt, ablations: S.ablated, top_k: 10});
  S.top = p.before;
  $("#prediction").replaceChildren(
    el("h3", {text: `Next token after “${S.tokens[S.tokens.length - 1].label}”`}),
    distTables({before: p.before.slice(0, 5), after: p.after.slice(0, 5)}),
    el("p", {class: "kl-line", text: `KL ${fmt(p.kl)} nats · entropy ${fmt(p.entropy_before, 3)} → ${fmt(p.entropy_after, 3)}`}));
  const rest = p.before.slice(1).concat(p.before.slice(0, 1));
  fillTokenSelect($("#study-target"), p.before.slice(1));
  fillTokenSelect($("#study-a"), p.before);
  fillTokenSelect($("#study-b"), rest);
  fillTokenSelect($("#eval-a"), p.before, "baseline top two");
  fillTokenSelect($("#eval-b"), rest, "baseline top two");
  fillTokenSelect($("#circuit-a"), p.before, "from the prompt pair");
  fillTokenSelect($("#circuit-b"), rest, "from the prompt pair");
  fillTokenSelect($("#lens-token"), p.before, "none");
  fillTokenSelect($("#dla-token"), p.before, "the model's top token");
}

// a select of tokens (label and probability); `empty` names a first option with no token (the server's default)
function fillTokenSelect(select, tokens, empty = null) {
  const keep = select.value;
  const options = tokens.map((t) => el("option", {value: t.id, text: `${t.label} (${pct(t.prob)})`}));
  if (empty !== null) options.unshift(el("option", {value: "", text: empty}));
  select.replaceChildren(...options);
  if ([...select.options].some((o) => o.value === keep)) select.value = keep;
}

// an API error is already shown in the error line; anything else gets shown there too
window.addEventListener("unhandledrejection", (e) => {
  if (!(e.reason && e.reason.shown)) showError(String(e.reason && e.reason.message || e.reason));
  e.preventDefault();
});
window.addEventListener("DOMContentLoaded", () => window.mavInit && window.mavInit());
