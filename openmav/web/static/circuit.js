// Circuit discovery on the page: attribution vs verified table, and the graph of heads by layer.
"use strict";

async function startCircuit() {
  if (!S.prompt) return showError("run a prompt first");
  const metric = $("#circuit-metric").value;
  const body = {prompt: S.prompt, metric, token_a: +$("#circuit-a").value, top_n: +$("#circuit-top").value};
  if (metric === "logit_diff") body.token_b = +$("#circuit-b").value;
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
  const corr = r.correlation;
  box.replaceChildren(
    el("p", {class: "hint circuit-summary", text: `${r.cancelled ? "Cancelled. " : ""}Corrupted prompt: “${r.corrupt_prompt}”. ` +
      `Metric ${r.metric_label}: clean ${fmt(r.clean_metric, 3)}, corrupted ${fmt(r.corrupt_metric, 3)}. ` +
      "Edges: the sender's measured effect through that receiver alone (path patching)."}),
    el("div", {class: "row wrap"}, circuitTable(nodes, corr, r.n_verified), circuitGraph(nodes, r.edges || [])));
}

function circuitTable(nodes, corr, nVerified) {
  return el("table", {class: "circuit-table"},
    el("caption", {text: `Top heads: attribution estimate vs verified patching effect ` +
      `(Pearson r ${fmt(corr, 3)} over ${nVerified} heads)`}),
    el("tr", {}, el("th", {text: "head"}), el("th", {text: "attribution"}), el("th", {text: "verified"})),
    ...nodes.map((n) => el("tr", {}, el("td", {text: `L${n.layer} H${n.head}`}),
      el("td", {class: "num", text: fmt(n.attribution, 4)}), el("td", {class: "num", text: fmt(n.effect, 4)}))));
}

function circuitGraph(nodes, edges) {
  const ns = "http://www.w3.org/2000/svg";
  const layers = [...new Set(nodes.map((n) => n.layer))].sort((a, b) => a - b);
  const W = 560, colW = Math.max(70, (W - 60) / Math.max(1, layers.length)), rowH = 46;
  const byLayer = new Map(layers.map((l) => [l, nodes.filter((n) => n.layer === l)]));
  const H = 50 + rowH * Math.max(1, ...[...byLayer.values()].map((v) => v.length));
  const pos = new Map();
  layers.forEach((l, i) => byLayer.get(l).forEach((n, j) => pos.set(`${n.layer}.${n.head}`, {x: 40 + i * colW, y: 40 + j * rowH})));
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", Math.max(W, 80 + layers.length * colW));
  svg.setAttribute("height", H);
  svg.classList.add("circuit-graph");
  const add = (tag, attrs, text) => {
    const n = document.createElementNS(ns, tag);
    Object.entries(attrs).forEach(([k, v]) => n.setAttribute(k, v));
    if (text !== undefined) n.textContent = text;
    svg.appendChild(n);
    return n;
  };
  const wmax = Math.max(1e-9, ...edges.map((e) => Math.abs(e.effect)));
  edges.forEach((e) => {
    const s = asHead(e.source), t = asHead(e.target);
    const a = pos.get(`${s.layer}.${s.head}`), b = pos.get(`${t.layer}.${t.head}`);
    if (!a || !b) return;
    const line = add("line", {x1: a.x, y1: a.y, x2: b.x, y2: b.y, "stroke-width": 0.5 + 6 * Math.abs(e.effect) / wmax,
      stroke: e.effect < 0 ? "#c0392b" : "#2c6fbb", "stroke-opacity": 0.75, class: "edge"});
    add("title", {}, `L${s.layer} H${s.head} → L${t.layer} H${t.head}: path effect ${fmt(e.effect)}`);
    line.appendChild(svg.lastChild);
  });
  const vmax = Math.max(1e-9, ...nodes.map((n) => Math.abs(n.effect ?? 0)));
  nodes.forEach((n) => {
    const p = pos.get(`${n.layer}.${n.head}`), v = n.effect ?? 0;
    const c = add("circle", {cx: p.x, cy: p.y, r: 7 + 9 * Math.abs(v) / vmax, fill: Heatmap.colour(v, vmax, true),
      stroke: "#333", class: "node"});
    c.appendChild(document.createElementNS(ns, "title")).textContent = `L${n.layer} H${n.head}: attribution ${fmt(n.attribution)}, verified ${fmt(n.effect)}`;
    add("text", {x: p.x, y: p.y + 4, "text-anchor": "middle", class: "node-label"}, `${n.layer}.${n.head}`);
  });
  layers.forEach((l, i) => add("text", {x: 40 + i * colW, y: H - 6, "text-anchor": "middle", class: "axis-label"}, `layer ${l}`));
  return svg;
}
