// Circuit discovery on the page: every head estimated, the largest estimates verified by real patching, the
// largest verified effects drawn; a table of estimate and verified effect side by side, and the graph by layer.
"use strict";

async function startCircuit() {
  if (!S.prompt) return showError("run a prompt first");
  const metric = $("#circuit-metric").value;
  const body = {prompt: S.prompt, metric, top_n: +$("#circuit-top").value};
  const a = $("#circuit-a").value, b = $("#circuit-b").value;
  if (metric === "logit_diff" && a !== "" && b !== "") Object.assign(body, {token_a: +a, token_b: +b});
  if (metric === "logit_diff" && (a === "") !== (b === "")) {
    return showError("choose both A and B, or leave both “from the prompt pair”");
  }
  if (metric === "prob" && a !== "") body.token_a = +a;
  const verify = $("#circuit-verify").value.trim();
  if (verify) body.verify_k = +verify;
  const corrupt = $("#circuit-corrupt").value.trim();
  if (corrupt) body.corrupt_prompt = corrupt;
  $("#circuit-result").replaceChildren(el("p", {class: "hint", text: "running…"}));
  const job = await api("/api/circuit", body);
  $("#circuit-result").dataset.jobId = job.job_id;
  followJob(job.job_id, {progress: $("#circuit-progress"), log: null, cancel: $("#circuit-cancel"),
    onEnd: (state) => showCircuit(state)});
}

function showCircuit(state) {
  const box = $("#circuit-result"), r = state.result;
  if (!r) { box.replaceChildren(el("p", {text: `circuit discovery ${state.status}`})); return; }
  const nodes = (r.nodes || []).map((n) => Object.assign(asHead(n), n));
  const graph = circuitGraph(nodes, r.edges || []);
  box.replaceChildren(
    el("p", {class: "hint circuit-summary", text: `${r.cancelled ? "Cancelled. " : ""}Corrupted prompt: “${r.corrupt_prompt}”. ` +
      `Metric ${r.metric_label} (tokens: ${r.tokens_from}): clean ${fmt(r.clean_metric, 3)}, corrupted ${fmt(r.corrupt_metric, 3)}. ` +
      `Every head estimated by attribution patching; the ${r.n_verified} largest estimates verified by real patching; ` +
      `the ${nodes.length} largest verified effects drawn. Edges: the sender's measured effect through that receiver alone (path patching).`}),
    el("p", {class: "sign", text: `Sign: ${r.sign}.`}),
    el("p", {class: "corr", text: `attribution vs verified: Pearson r ${fmt(r.correlation, 3)} over ${r.n_verified} heads`}),
    el("div", {class: "row wrap"}, circuitTable(nodes, r), el("div", {}, graph,
      el("div", {class: "row"}, Export.buttons("circuit", {fig: () => graph, svg: () => graph, csv: () => circuitRows(r)})))));
}

function circuitTable(nodes, r) {
  return el("div", {},
    el("table", {class: "circuit-table"},
      el("caption", {text: `Heads drawn: the largest |verified effect| of ${r.n_verified} verified (click one to open it)`}),
      el("tr", {}, el("th", {text: "#"}), el("th", {text: "head"}), el("th", {text: "verified effect"}),
        el("th", {text: "estimate"}), el("th", {text: "estimate rank", title: "rank of |estimate| among all heads"})),
      ...nodes.map((n, i) => el("tr", {class: "clickable", "data-layer": n.layer, "data-head": n.head,
        onclick: () => openHead(n.layer, n.head)},
        el("td", {text: String(i + 1)}), el("td", {text: `L${n.layer} H${n.head}`}),
        el("td", {class: "num verified", text: fmt(n.effect, 4)}), el("td", {class: "num estimate", text: fmt(n.attribution, 4)}),
        el("td", {class: "num", text: String(n.attribution_rank ?? "—")})))));
}

// the nodes, then every verified head (estimate and effect), then the edges
function circuitRows(r) {
  const rows = [["kind", "layer", "head", "verified_effect", "estimate", "estimate_rank", "target_layer", "target_head", "path_effect"]];
  (r.nodes || []).forEach((n) => rows.push(["node", n.layer, n.head, n.effect, n.attribution, n.attribution_rank]));
  (r.attribution || []).forEach((row, l) => row.forEach((v, h) => {
    if (v !== null) rows.push(["head", l, h, r.verified ? r.verified[l][h] : null, v]);
  }));
  (r.edges || []).forEach((e) => rows.push(["edge", e.source[0], e.source[1], "", "", "", e.target[0], e.target[1], e.effect]));
  return rows;
}

function circuitGraph(nodes, edges) {
  const ns = SVG_NS;
  const layers = [...new Set(nodes.map((n) => n.layer))].sort((a, b) => a - b);
  const colW = 92, W = Math.max(420, 60 + layers.length * colW), H = 310, top = 40, bottom = 70;
  const pos = new Map();
  layers.forEach((l, i) => {
    const here = nodes.filter((n) => n.layer === l).sort((a, b) => a.head - b.head), k = here.length;
    const zig = k === 1 ? (i % 2 ? 45 : -45) : 0;  // single nodes zigzag so edges do not run through them
    here.forEach((n, j) => pos.set(`${n.layer}.${n.head}`,
      {x: 46 + i * colW, y: top + ((j + 0.5) * (H - top - bottom)) / k + zig}));
  });
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", W);
  svg.setAttribute("height", H);
  svg.classList.add("circuit-graph");
  const add = (tag, attrs, text, parent = svg) => svgAdd(parent, tag, attrs, text);
  const wmax = Math.max(1e-9, ...edges.map((e) => Math.abs(e.effect)));
  edges.forEach((e) => {
    const s = asHead(e.source), t = asHead(e.target);
    const a = pos.get(`${s.layer}.${s.head}`), b = pos.get(`${t.layer}.${t.head}`);
    if (!a || !b) return;
    const mx = (a.x + b.x) / 2, my = (a.y + b.y) / 2, dx = b.x - a.x, dy = b.y - a.y;
    const bend = 0.18;  // curve each edge to one side so parallel edges stay apart
    const path = add("path", {d: `M${a.x},${a.y} Q${mx - dy * bend},${my + dx * bend} ${b.x},${b.y}`, fill: "none",
      "stroke-width": 0.7 + 7 * Math.abs(e.effect) / wmax, stroke: e.effect < 0 ? "#c0392b" : "#2c6fbb",
      "stroke-opacity": 0.6, class: "edge", "data-effect": e.effect});
    add("title", {}, `L${s.layer} H${s.head} → L${t.layer} H${t.head}: path effect ${fmt(e.effect)}`, path);
  });
  const vmax = Math.max(1e-9, ...nodes.map((n) => Math.abs(n.effect ?? 0)));
  nodes.forEach((n) => {
    const p = pos.get(`${n.layer}.${n.head}`), v = n.effect ?? 0;
    const g = add("g", {class: "node-group", "data-layer": n.layer, "data-head": n.head});
    g.addEventListener("click", () => openHead(n.layer, n.head));
    const c = add("circle", {cx: p.x, cy: p.y, r: 5 + 13 * Math.sqrt(Math.abs(v) / vmax),
      fill: v < 0 ? "#e8a29a" : "#9fc0e6", stroke: v < 0 ? "#c0392b" : "#2c6fbb", "stroke-width": 1.5, class: "node"}, undefined, g);
    add("title", {}, `L${n.layer} H${n.head}: verified ${fmt(n.effect)}, estimate ${fmt(n.attribution)} (click to open)`, c);
    add("text", {x: p.x, y: p.y - 20, "text-anchor": "middle", class: "node-label"}, `L${n.layer} H${n.head}`, g);
  });
  layers.forEach((l, i) => add("text", {x: 46 + i * colW, y: H - 42, "text-anchor": "middle", class: "axis-label"}, `layer ${l}`));
  add("text", {x: 8, y: H - 16, class: "legend"}, "node area: |verified effect| · edge width: path effect");
  add("text", {x: 8, y: H - 3, class: "legend"}, "blue raises the metric, red lowers it (see Sign)");
  return svg;
}
