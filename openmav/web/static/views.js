// Whole-model views: every head's attention as a thumbnail (click to enlarge), the logit lens per layer at a
// chosen position, and direct logit attribution per head for a chosen token. Each has PNG/SVG/CSV export.
"use strict";

const V = {modelView: null, lens: null, dla: null, zoom: null, dlaMap: null};
window.mav.views = V;

// the prompt's positions in a select (the last chosen), after each "Show attention"
function onPromptRun() {
  for (const sel of [$("#lens-position"), $("#dla-position")]) {
    sel.replaceChildren(...S.tokens.map((t) => el("option", {value: t.position, text: `${t.position}: ${t.label}`})));
    sel.value = String(S.tokens.length - 1);
  }
  V.modelView = V.lens = V.dla = null;
  ["#mv-grid", "#mv-zoom", "#lens-result", "#dla-result"].forEach((s) => $(s).replaceChildren());
  const open = document.querySelector(".tabs button.active");
  if (open && ["model", "lens", "dla"].includes(open.dataset.tab)) showTab(open.dataset.tab);
}

// a tab's view is computed when the tab is opened (and again when its inputs change)
function showTab(name) {
  if (!S.prompt) return;
  if (name === "model" && !V.modelView) return loadModelView();
  if (name === "lens" && !V.lens) return loadLens();
  if (name === "dla" && !V.dla) return loadAttribution();
}

// ---- model view: layers x heads thumbnails -----------------------------------------------------------------
async function loadModelView() {
  const data = await api("/api/model_view", {prompt: S.prompt, size: +$("#mv-size").value});
  V.modelView = data;
  const thumb = Math.max(2, Math.ceil(48 / data.size));  // px per cell: thumbnails about 48 px wide
  const px = thumb * data.size;
  const grid = $("#mv-grid");
  grid.style.gridTemplateColumns = `2.6em repeat(${data.n_heads}, ${px + 4}px)`;
  const cells = [el("span", {class: "corner", text: "L\\H"})];
  for (let h = 0; h < data.n_heads; h++) cells.push(el("span", {class: "axis", text: `H${h}`}));
  data.heads.forEach((row, l) => {
    cells.push(el("span", {class: "axis", text: `L${l}`}));
    row.forEach((values, h) => {
      if (values === null) {  // a layer without attention heads
        cells.push(el("span", {class: "thumb none", title: `layer ${l}: no attention`, style: `width:${px}px;height:${px}px`}));
        return;
      }
      const canvas = el("canvas", {class: "thumb", "data-layer": l, "data-head": h, width: px, height: px,
        title: `layer ${l} head ${h}: click to enlarge`});
      drawThumb(canvas, values, thumb);
      canvas.addEventListener("click", () => zoomHead(l, h));
      cells.push(canvas);
    });
  });
  grid.replaceChildren(...cells);
  $("#mv-note").textContent = data.pooled
    ? `${data.tokens.length} tokens: each thumbnail cell is the largest weight of a block of queries × keys (${data.size} × ${data.size}).`
    : `${data.tokens.length} tokens: every query × key weight.`;
  $("#mv-exports").replaceChildren(Export.buttons("model_view", {
    fig: () => modelViewCanvas(data), svg: () => modelViewSVG(data), csv: () => modelViewRows(data)}));
}

function drawThumb(canvas, values, cell) {
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  values.forEach((row, r) => row.forEach((v, c) => {
    if (!v) return;
    ctx.fillStyle = Heatmap.colour(v, 1, false);
    ctx.fillRect(c * cell, r * cell, cell, cell);
  }));
}

// the whole model view as one picture (for PNG): thumbnails on a grid with layer and head labels
function modelViewCanvas(data) {
  const cell = Math.max(2, Math.ceil(48 / data.size)), px = cell * data.size, gap = 4, left = 34, top = 18;
  const canvas = document.createElement("canvas");
  canvas.width = left + data.n_heads * (px + gap);
  canvas.height = top + data.n_layers * (px + gap);
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#333";
  for (let h = 0; h < data.n_heads; h++) ctx.fillText(`H${h}`, left + h * (px + gap), 12);
  data.heads.forEach((row, l) => {
    ctx.fillStyle = "#333";
    ctx.fillText(`L${l}`, 4, top + l * (px + gap) + px / 2 + 4);
    row.forEach((values, h) => {
      const x0 = left + h * (px + gap), y0 = top + l * (px + gap);
      ctx.strokeStyle = "#ccc";
      ctx.strokeRect(x0 - 0.5, y0 - 0.5, px + 1, px + 1);
      if (!values) return;
      values.forEach((r, i) => r.forEach((v, j) => {
        if (!v) return;
        ctx.fillStyle = Heatmap.colour(v, 1, false);
        ctx.fillRect(x0 + j * cell, y0 + i * cell, cell, cell);
      }));
    });
  });
  return canvas;
}

function modelViewSVG(data) {
  const cell = Math.max(2, Math.ceil(48 / data.size)), px = cell * data.size, gap = 4, left = 34, top = 18;
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("width", left + data.n_heads * (px + gap));
  svg.setAttribute("height", top + data.n_layers * (px + gap));
  const add = (tag, attrs, text) => svgAdd(svg, tag, attrs, text);
  for (let h = 0; h < data.n_heads; h++) add("text", {x: left + h * (px + gap), y: 12}, `H${h}`);
  data.heads.forEach((row, l) => {
    add("text", {x: 4, y: top + l * (px + gap) + px / 2 + 4}, `L${l}`);
    row.forEach((values, h) => {
      const x0 = left + h * (px + gap), y0 = top + l * (px + gap);
      add("rect", {x: x0 - 0.5, y: y0 - 0.5, width: px + 1, height: px + 1, fill: "none", stroke: "#ccc"});
      if (!values) return;
      values.forEach((r, i) => r.forEach((v, j) => {
        if (v) add("rect", {x: x0 + j * cell, y: y0 + i * cell, width: cell, height: cell, fill: Heatmap.colour(v, 1, false)});
      }));
    });
  });
  return svg;
}

function modelViewRows(data) {
  const rows = [["layer", "head", data.pooled ? "query_block" : "query", data.pooled ? "key_block" : "key", "weight"]];
  data.heads.forEach((row, l) => row.forEach((values, h) => {
    if (values) values.forEach((r, i) => r.forEach((v, j) => rows.push([l, h, i, j, v])));
  }));
  return rows;
}

// one head enlarged: its full query x key map with token labels
async function zoomHead(l, h) {
  await ensureAttention([[l, h]]);
  const weights = S.att.get(key(l, h)), labels = S.tokens.map((t) => t.label);
  const box = $("#mv-zoom");
  const title = el("div", {class: "map-title"}, el("b", {text: `layer ${l} · head ${h}`}));
  const card = el("div", {class: "map zoom", "data-layer": l, "data-head": h}, title);
  box.replaceChildren(card);
  const cell = Math.max(8, Math.min(26, Math.floor(560 / labels.length)));
  const map = new Heatmap(card, {rows: labels, cols: labels, values: weights, cell, vmax: 1,
    onHover: (at) => hover(at, l, h)});
  V.zoom = map;
  title.append(el("span", {class: "map-tools"},
    el("button", {text: "open with the maps", onclick: () => openHead(l, h)}),
    Export.buttons(`attention_L${l}_H${h}`, {fig: () => map.canvas, svg: () => map.toSVG(), csv: () => attentionRows(weights)}),
    el("button", {class: "close", title: "close", text: "×", onclick: () => { box.replaceChildren(); V.zoom = null; }})));
  document.querySelectorAll("#mv-grid canvas.thumb").forEach((c) =>
    c.classList.toggle("picked", +c.dataset.layer === l && +c.dataset.head === h));
}

// ---- logit lens ------------------------------------------------------------------------------------------
async function loadLens() {
  const body = {prompt: S.prompt, position: +$("#lens-position").value, top_k: +$("#lens-k").value};
  if ($("#lens-token").value !== "") body.token_id = +$("#lens-token").value;
  const data = await api("/api/logit_lens", body);
  V.lens = data;
  const chart = lensChart(data);
  $("#lens-result").replaceChildren(
    el("p", {class: "hint", text: `After the token ${data.token.label} (position ${data.position}): ${data.note}.`}),
    chart, el("div", {class: "row"}, Export.buttons(`logit_lens_pos${data.position}`, {
      fig: () => chart, svg: () => chart, csv: () => lensRows(data)})));
}

// the lens as an SVG table: one row per layer, the top-k tokens shaded by probability, then the chosen token
function lensChart(data) {
  const k = data.layers[0].top.length, target = data.layers[0].target;
  const rowH = 20, left = 46, colW = 104, top = 22, tcol = target ? 128 : 0;
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("width", left + k * colW + tcol + 4);
  svg.setAttribute("height", top + data.layers.length * rowH + 4);
  svg.classList.add("lens");
  const add = (tag, attrs, text, parent = svg) => svgAdd(parent, tag, attrs, text);
  for (let i = 0; i < k; i++) add("text", {x: left + i * colW + 4, y: 14, class: "title"}, `#${i + 1}`);
  if (target) add("text", {x: left + k * colW + 4, y: 14, class: "title"}, `${target.label}: p (rank)`);
  data.layers.forEach((row, r) => {
    const y = top + r * rowH;
    add("text", {x: 4, y: y + 14}, `L${row.layer}`);
    row.top.forEach((t, i) => {
      const g = add("g", {class: "lens-cell", "data-layer": row.layer, "data-rank": i + 1});
      add("rect", {x: left + i * colW, y, width: colW - 2, height: rowH - 2, fill: Heatmap.colour(t.prob, 1, false)}, undefined, g);
      add("text", {x: left + i * colW + 4, y: y + 14, fill: t.prob > 0.5 ? "#fff" : "#222"},
        `${t.label.slice(0, 9)} ${(100 * t.prob).toFixed(1)}%`, g);
      add("title", {}, `layer ${row.layer}, #${i + 1}: ${t.label} (id ${t.id}) p = ${fmt(t.prob)}`, g);
    });
    if (row.target) {
      add("rect", {x: left + k * colW, y, width: tcol - 4, height: rowH - 2, fill: Heatmap.colour(row.target.prob, 1, false)});
      add("text", {x: left + k * colW + 4, y: y + 14, class: "lens-target", fill: row.target.prob > 0.5 ? "#fff" : "#222"},
        `${(100 * row.target.prob).toFixed(2)}% (#${row.target.rank})`);
    }
  });
  return svg;
}

function lensRows(data) {
  const rows = [["layer", "rank", "token_id", "token", "prob", "target_id", "target", "target_prob", "target_rank"]];
  data.layers.forEach((row) => row.top.forEach((t, i) => rows.push([row.layer, i + 1, t.id, t.label, t.prob,
    ...(row.target ? [row.target.id, row.target.label, row.target.prob, row.target.rank] : [])])));
  return rows;
}

// ---- direct logit attribution ------------------------------------------------------------------------------
async function loadAttribution() {
  const body = {prompt: S.prompt, position: +$("#dla-position").value};
  if ($("#dla-token").value !== "") body.token_id = +$("#dla-token").value;
  const data = await api("/api/attribution", body);
  V.dla = data;
  const L = data.heads.length, H = data.heads[0].length;
  const headSum = data.heads.flat().filter((v) => v !== null).reduce((a, b) => a + b, 0);
  const vmax = Math.max(1e-9, ...data.heads.flat().filter((v) => v !== null).map(Math.abs));
  const box = $("#dla-result");
  box.replaceChildren(
    el("p", {class: "dla-summary", text: `logit of ${data.target.label} (p ${pct(data.target.prob)}) after ` +
      `${data.token.label} (position ${data.position}): ${fmt(data.logit, 4)} = heads ${fmt(headSum, 4)} + other parts ` +
      `${fmt(data.total - headSum, 4)} (sum ${fmt(data.total, 4)}, difference ${data.error.toExponential(1)})` +
      (data.softcap ? `; before the soft-cap ${fmt(data.pre_softcap_logit, 4)}` : "")}),
    el("p", {class: "hint", text: data.note + ". Blue raises the logit, red lowers it; click a head to open it."}));
  const mapBox = el("div", {class: "dla-map"});
  const row = el("div", {class: "row wrap"}, mapBox);
  box.append(row);
  const map = new Heatmap(mapBox, {rows: [...Array(L).keys()].map((l) => `L${l}`), cols: [...Array(H).keys()].map((h) => `H${h}`),
    values: data.heads, cell: Math.max(8, Math.min(18, Math.floor(360 / Math.max(L, H)))), vmax, diverging: true,
    onHover: (at) => dlaHover(at), onClick: (l, h) => openHead(l, h)});
  V.dlaMap = map;
  const legend = Heatmap.legend({vmax, diverging: true, label: "contribution to the logit"});
  const figure = () => Heatmap.stack(map.toSVG(), legend);  // exported with its colour bar
  mapBox.append(legend, el("div", {class: "row"}, Export.buttons(`attribution_heads_pos${data.position}`, {
    fig: figure, svg: figure, csv: () => dlaRows(data)})));
  const parts = [];
  data.heads.forEach((r, l) => r.forEach((v, h) => { if (v !== null) parts.push({label: `L${l} H${h}`, value: v, layer: l, head: h}); }));
  data.components.forEach((c) => parts.push({label: c.name, value: c.value}));
  parts.sort((a, b) => Math.abs(b.value) - Math.abs(a.value));
  const bars = barChart(parts.slice(0, 16), 260, (it) => { if (it.layer !== undefined) openHead(it.layer, it.head); });
  row.append(el("div", {}, el("h3", {text: "Largest contributions (heads and other parts)"}), bars,
    el("div", {class: "row"}, Export.buttons(`attribution_parts_pos${data.position}`, {
      fig: () => bars, svg: () => bars, csv: () => dlaRows(data)}))));
}

function dlaHover(at) {
  const tip = $("#tooltip");
  if (!at) { tip.hidden = true; return; }
  tip.textContent = at.value === null ? `layer ${at.r}: no attention heads` : `layer ${at.r} head ${at.c}: ${fmtSigned(at.value, 4)}`;
  Object.assign(tip.style, {left: at.x + 14 + "px", top: at.y + 14 + "px"});
  tip.hidden = false;
}

// every head, then every other part, then the sum and the model's logit
function dlaRows(data) {
  const rows = [["part", "kind", "layer", "head", "contribution"]];
  data.heads.forEach((r, l) => r.forEach((v, h) => { if (v !== null) rows.push([`L${l} H${h}`, "head", l, h, v]); }));
  data.components.forEach((c) => rows.push([c.name, c.kind, c.layer, "", c.value]));
  rows.push(["sum", "total", "", "", data.total], ["model logit", "logit", "", "", data.logit]);
  return rows;
}

function initViews() {
  document.querySelectorAll(".tabs button").forEach((b) => b.addEventListener("click", () => showTab(b.dataset.tab)));
  $("#mv-size").onchange = () => { V.modelView = null; showTab("model"); };
  ["#lens-position", "#lens-token", "#lens-k"].forEach((s) => { $(s).onchange = () => { V.lens = null; showTab("lens"); }; });
  ["#dla-position", "#dla-token"].forEach((s) => { $(s).onchange = () => { V.dla = null; showTab("dla"); }; });
}
