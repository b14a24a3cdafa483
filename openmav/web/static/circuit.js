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
    el("p", {class: "corr", text: `attribution vs verified: Pearson r ${fmt(corr, 3)} over ${r.n_verified} heads`}),
    el("div", {class: "row wrap"}, circuitTable(nodes), circuitGraph(nodes, r.edges || [])));
}

function circuitTable(nodes) {
  return el("div", {},
    el("table", {class: "circuit-table"},
    el("caption", {text: "Top heads by |attribution|"}),
    el("tr", {}, el("th", {text: "head"}), el("th", {text: "attribution"}), el("th", {text: "verified"})),
    ...nodes.map((n) => el("tr", {}, el("td", {text: `L${n.layer} H${n.head}`}),
      el("td", {class: "num", text: fmt(n.attribution, 4)}), el("td", {class: "num", text: fmt(n.effect, 4)})))));
}

function circuitGraph(nodes, edges) {
  const ns = "http://www.w3.org/2000/svg";
  const layers = [...new Set(nodes.map((n) => n.layer))].sort((a, b) => a - b);
  const colW = 92, W = Math.max(420, 60 + layers.length * colW), H = 300, top = 40, bottom = 60;
  const pos = new Map();
  layers.forEach((l, i) => {
    const here = nodes.filter((n) => n.layer === l), k = here.length;
    const zig = k === 1 ? (i % 2 ? 45 : -45) : 0;  // single nodes zigzag so edges do not run through them
    here.forEach((n, j) => pos.set(`${n.layer}.${n.head}`,
      {x: 46 + i * colW, y: top + ((j + 0.5) * (H - top - bottom)) / k + zig}));
  });
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", W);
  svg.setAttribute("height", H);
  svg.classList.add("circuit-graph");
  const add = (tag, attrs, text, parent = svg) => {
    const n = document.createElementNS(ns, tag);
    Object.entries(attrs).forEach(([k, v]) => n.setAttribute(k, v));
    if (text !== undefined) n.textContent = text;
    parent.appendChild(n);
    return n;
  };
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
    const c = add("circle", {cx: p.x, cy: p.y, r: 5 + 13 * Math.sqrt(Math.abs(v) / vmax),
      fill: v < 0 ? "#e8a29a" : "#9fc0e6", stroke: v < 0 ? "#c0392b" : "#2c6fbb", "stroke-width": 1.5, class: "node"});
    add("title", {}, `L${n.layer} H${n.head}: attribution ${fmt(n.attribution)}, verified ${fmt(n.effect)}`, c);
    add("text", {x: p.x, y: p.y - 20, "text-anchor": "middle", class: "node-label"}, `L${n.layer} H${n.head}`);
  });
  layers.forEach((l, i) => add("text", {x: 46 + i * colW, y: H - 34, "text-anchor": "middle", class: "axis-label"}, `layer ${l}`));
  add("text", {x: 8, y: H - 10, class: "legend"},
    "node area: verified effect · edge width: path effect · blue raises the metric, red lowers it");
  return svg;
}
