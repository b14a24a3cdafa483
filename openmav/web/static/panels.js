// The page's lower tabs: evaluate all heads, ablation studies (streamed); bar charts; jobs; and start-up.
"use strict";

const asHead = (x) => (Array.isArray(x) ? {layer: x[0], head: x[1]} : {layer: x.layer, head: x.head});

// The ablation panel's kind, factor and threshold: evaluations and studies ablate heads the same way.
function ablationShape() {
  return {kind: $("#abl-kind").value, factor: +$("#abl-factor").value || 0,
          threshold: Math.max(0, +$("#abl-threshold").value || 0)};
}

// ---- evaluate all heads (a job: progress per batched forward, cancellable) ----------------------------------
const EVAL_METRICS = {
  kl: {label: "KL(baseline‖ablated), nats", short: "KL", diverging: false},
  delta_top_prob: {label: "Δp of the baseline top token", short: "Δp(top)", diverging: true},
  delta_logit_diff: {label: "Δ logit difference", short: "Δ logit diff", diverging: true},
};

// the two tokens of a logit difference from a pair of selects; {} when "from ..." (the server's default) is chosen
function tokenPair(selA, selB) {
  const a = selA.value, b = selB.value;
  return a === "" || b === "" ? {} : {token_a: +a, token_b: +b};
}

async function evaluateHeads() {
  if (!S.prompt) return showError("run a prompt first");
  const shape = ablationShape(), kind = shape.kind;
  const button = $("#evaluate"), status = $("#eval-status"), progress = $("#eval-progress");
  button.disabled = true;
  progress.value = 0;
  let job;
  try {
    job = await api("/api/evaluations", {prompt: S.prompt, ...shape, ...tokenPair($("#eval-a"), $("#eval-b"))});
  } catch (err) {
    button.disabled = false;
    throw err;
  }
  $("#eval-map").dataset.jobId = job.job_id;
  status.textContent = job.queued_ahead ? `queued behind ${job.queued_ahead} job(s)` : "starting…";
  const state = await new Promise((resolve) => followJob(job.job_id, {
    progress, cancel: $("#eval-cancel"),
    onEvent: (ev) => { status.textContent = describeEvent(ev); },
    onEnd: resolve, onLost: () => resolve({status: "lost", error: "the progress stream was lost"}),
  }));
  button.disabled = false;
  if (state.status !== "done") {
    status.textContent = state.status === "cancelled" ? "cancelled" : `${state.status}: ${state.error || ""}`;
    return;
  }
  status.textContent = "done";
  S.evaluation = Object.assign(state.result, {kindShown: kind});
  showEvaluation();
}

// the evaluation drawn for the metric and scale chosen (switching either redraws without a new job)
function showEvaluation() {
  const result = S.evaluation;
  if (!result) return;
  const name = $("#eval-metric").value, metric = EVAL_METRICS[name];
  const values = result[name], L = values.length, H = values[0].length;
  const [la, lb] = result.logit_diff_labels || ["a", "b"];
  const label = name === "delta_logit_diff" ? `Δ logit(${la}) − logit(${lb})` : metric.label;
  const finite = values.flat().filter((v) => v !== null && Number.isFinite(v)).map(Math.abs);
  const vmax = Math.max(1e-12, ...finite);
  const positive = finite.filter((v) => v > 0);
  const scale = $("#eval-scale").value;
  // log: from half the smallest nonzero size (so it still shows), at most four decades below the largest
  const vmin = scale === "log" ? Math.max(vmax * 1e-4, Math.min(vmax, ...positive) / 2) : 0;
  const box = $("#eval-map");
  const extra = name === "delta_logit_diff" ? ` (baseline ${fmt(result.baseline_logit_diff, 3)})` : "";
  box.replaceChildren(el("h3", {text: `${label} when one head is ablated (${result.kindShown || result.kind}; ` +
    `baseline top “${result.top_label}”)${extra}`}));
  const map = new Heatmap(box, {
    rows: [...Array(L).keys()].map((l) => `L${l}`), cols: [...Array(H).keys()].map((h) => `H${h}`), values,
    cell: Math.max(8, Math.min(18, Math.floor(360 / Math.max(L, H)))), vmax, vmin, scale, diverging: metric.diverging,
    onHover: (at) => evalHover(at), onClick: (l, h) => openHead(l, h),
  });
  window.mav.evalMap = map;
  const legend = Heatmap.legend({vmax, vmin, scale, diverging: metric.diverging, label: metric.short});
  const figure = () => Heatmap.stack(map.toSVG(), legend);  // exported with its colour bar
  box.append(el("div", {class: "row legend-row"}, legend, Export.buttons(`evaluation_${name}`, {
    fig: figure, svg: figure, csv: () => evaluationRows(result)})));
  const ranked = [];
  values.forEach((row, l) => row.forEach((v, h) => {
    if (v !== null && Number.isFinite(v)) ranked.push({layer: l, head: h, value: v});
  }));
  ranked.sort((a, b) => Math.abs(b.value) - Math.abs(a.value));
  const note = (r) => (name === "kl" && result.delta_top_prob ? `Δp(top) ${fmtSigned(result.delta_top_prob[r.layer][r.head], 3)}` : "");
  const bars = barChart(ranked.slice(0, 20).map((r) => ({label: `L${r.layer} H${r.head}`, value: r.value, note: note(r),
    layer: r.layer, head: r.head})), 320, (it) => openHead(it.layer, it.head));
  $("#eval-bars").replaceChildren(el("h3", {text: `Heads sorted by |${metric.short}| (top 20; click one to open it)`}), bars,
    el("div", {class: "row"}, Export.buttons(`evaluation_${name}_top20`, {
      fig: () => bars, svg: () => bars, csv: () => evaluationRows(result)})));
  renderGrid();
}

const fmtSigned = (x, d) => (x === null || x === undefined ? "—" : (x >= 0 ? "+" : "") + fmt(x, d));

function evaluationRows(result) {
  const [la, lb] = result.logit_diff_labels || ["a", "b"];
  const rows = [["layer", "head", "kl", "delta_top_prob", `delta_logit_diff (${la} - ${lb})`]];
  result.kl.forEach((row, l) => row.forEach((v, h) => rows.push([l, h, v, result.delta_top_prob[l][h],
    result.delta_logit_diff ? result.delta_logit_diff[l][h] : null])));
  return rows;
}

function evalHover(at) {
  const tip = $("#tooltip");
  if (!at) { tip.hidden = true; return; }
  const e = S.evaluation, l = at.r, h = at.c;
  if (e.kl[l][h] === null) { tip.textContent = `layer ${l}: no attention heads`; }
  else {
    tip.textContent = `layer ${l} head ${h}: KL ${fmt(e.kl[l][h])} · Δp(top) ${fmtSigned(e.delta_top_prob[l][h], 4)}` +
      (e.delta_logit_diff ? ` · Δ logit diff ${fmtSigned(e.delta_logit_diff[l][h], 4)}` : "");
  }
  Object.assign(tip.style, {left: at.x + 14 + "px", top: at.y + 14 + "px"});
  tip.hidden = false;
}

// a horizontal bar chart (SVG): items {label, value, note}; onClick(item) makes the bars clickable
function barChart(items, width = 320, onClick = null) {
  const longest = Math.max(4, ...items.map((i) => String(i.label).length));
  const ns = SVG_NS, row = 18, labelW = Math.min(240, 14 + 6.6 * longest), max = Math.max(1e-9, ...items.map((i) => Math.abs(i.value)));
  const signed = items.some((i) => i.value < 0), zero = labelW + (signed ? width / 2 : 0), span = signed ? width / 2 : width;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", labelW + width + 150);
  svg.setAttribute("height", items.length * row + 4);
  svg.classList.add("bars");
  items.forEach((it, i) => {
    const y = i * row + 2, w = Math.max(1, (Math.abs(it.value) / max) * span);
    const g = document.createElementNS(ns, "g");
    if (onClick) {
      g.classList.add("clickable");
      if (it.layer !== undefined) { g.dataset.layer = it.layer; g.dataset.head = it.head; }
      g.addEventListener("click", () => onClick(it));
    }
    svg.appendChild(g);
    const add = (tag, attrs, text) => svgAdd(g, tag, attrs, text);
    if (onClick) add("rect", {x: 0, y: y - 1, width: labelW + width + 150, height: row, fill: "transparent", class: "hit"});
    add("text", {x: labelW - 6, y: y + 12, "text-anchor": "end", class: "bar-label"}, it.label);
    add("rect", {x: it.value < 0 ? zero - w : zero, y, width: w, height: row - 4, fill: it.value < 0 ? "#c0392b" : "#2c6fbb"});
    const tx = it.value < 0 && signed ? zero + 4 : zero + w + 4;
    add("text", {x: tx, y: y + 12, class: "bar-value"}, `${fmt(it.value, 3)} ${it.note || ""}`);
  });
  if (signed) {
    const axis = document.createElementNS(ns, "line");
    Object.entries({x1: zero, x2: zero, y1: 0, y2: items.length * row + 4, stroke: "#999"}).forEach(([k, v]) => axis.setAttribute(k, v));
    svg.appendChild(axis);
  }
  return svg;
}

// ---- jobs: evaluation, studies and circuits -----------------------------------------------------------------
function followJob(jobId, {progress, log, cancel, onEvent, onEnd, onLost}) {
  const source = new EventSource(`/api/jobs/${jobId}/events`);
  cancel.disabled = false;
  cancel.onclick = () => api(`/api/jobs/${jobId}/cancel`, {});
  source.addEventListener("progress", (e) => {
    const ev = JSON.parse(e.data);
    if (ev.total) { progress.max = ev.total; progress.value = ev.done ?? ev.step ?? 0; }
    if (log) log.textContent += describeEvent(ev) + "\n";
    if (log) log.scrollTop = log.scrollHeight;
    if (onEvent) onEvent(ev);
  });
  source.addEventListener("end", (e) => {
    source.close();
    cancel.disabled = true;
    const job = JSON.parse(e.data);
    progress.value = progress.max;
    if (job.status === "error") showError(job.error);
    onEnd(job);
  });
  source.onerror = () => { source.close(); cancel.disabled = true; if (onLost) onLost(); };
}

function describeEvent(ev) {
  if (ev.message) return ev.message;
  const heads = (ev.heads || []).map((h) => `L${h[0]} H${h[1]}`).join(", ");
  const metric = ev.metric === null || ev.metric === undefined ? "" : ` · ${ev.metric_name || "metric"} ${fmt(ev.metric)}`;
  return `${ev.phase || "step"} ${ev.step ?? ""}/${ev.total ?? ""}${heads ? ` · heads ${heads}` : ""}${metric}`;
}

async function startStudy() {
  if (!S.prompt) return showError("run a prompt first");
  const mode = $("#study-mode").value;
  const body = {prompt: S.prompt, mode, max_heads: +$("#study-max").value, candidates: +$("#study-candidates").value,
    ...ablationShape()};
  if (mode === "targeted") body.target_id = +$("#study-target").value;
  if (mode === "logit_diff") Object.assign(body, {token_a: +$("#study-a").value, token_b: +$("#study-b").value});
  $("#study-log").textContent = "";
  $("#study-result").replaceChildren(el("p", {class: "hint", text: "running…"}));
  const job = await api("/api/studies", body);
  $("#study-result").dataset.jobId = job.job_id;
  followJob(job.job_id, {progress: $("#study-progress"), log: $("#study-log"), cancel: $("#study-cancel"),
    onEnd: (state) => showStudy(state)});
}

async function showStudy(state) {
  const box = $("#study-result");
  const r = state.result;
  if (!r) { box.replaceChildren(el("p", {text: `study ${state.status}`})); return; }
  const heads = (r.heads || []).map(asHead);
  const cancelled = state.status === "cancelled" || r.cancelled;
  let outcome;
  if (r.study === "targeted") {
    outcome = r.success ? `“${r.target_label}” is now the most likely token` : `“${r.target_label}” did not become the most likely token`;
  } else if (r.study === "logit_diff") {
    const [a, b] = r.token_labels || ["a", "b"];
    outcome = `logit(${a}) − logit(${b}): ${fmt(r.metric_before, 3)} → ${fmt(r.metric_after, 3)} with these heads ablated`;
  } else {
    outcome = `KL(before‖after) ${fmt(r.kl)} nats`;
  }
  const items = [...r.before_tokens.slice(0, 5).map((t) => ({label: `before ${t.label}`, value: t.prob ?? 0})),
    ...r.after_tokens.slice(0, 5).map((t) => ({label: `after ${t.label}`, value: t.prob ?? 0}))];
  const chart = barChart(items, 240);
  box.replaceChildren(
    el("h3", {class: "study-heads", text: `${cancelled ? "Cancelled; best so far" : "Heads found"}: ` +
      (heads.map((h) => `L${h.layer} H${h.head}`).join(", ") || "none")}),
    el("p", {class: "study-summary", text: `${outcome} · ${r.forwards} batched forwards · search: ${r.search}`}),
    el("div", {class: "row"},
      el("button", {text: "view these heads", onclick: () => viewHeads(heads)}),
      el("button", {text: "ablate these heads", onclick: () => ablateHeads(heads)}),
      Export.buttons(`study_${r.study}`, {fig: () => chart, svg: () => chart, csv: () => studyRows(r)})),
    distTables({before: r.before_tokens.slice(0, 5), after: r.after_tokens.slice(0, 5)}),
  );  // the chart is only exported (the tables show the same numbers)
  await viewHeads(heads);
}

// a study as CSV: the greedy steps (heads and score), then the next-token distributions before and after
function studyRows(r) {
  const rows = [["section", "step", "heads", r.metric_name || "metric", "token_id", "token", "prob"]];
  (r.steps || []).forEach((s) => rows.push(["step", s.step, (s.heads || []).map((h) => `L${h[0]}H${h[1]}`).join(" "), s.metric]));
  r.before_tokens.forEach((t) => rows.push(["before", "", "", "", t.id, t.label, t.prob]));
  r.after_tokens.forEach((t) => rows.push(["after", "", "", "", t.id, t.label, t.prob]));
  return rows;
}

async function viewHeads(heads) {
  heads.forEach((h) => { if (!S.picked.some(([l, hh]) => l === h.layer && hh === h.head)) S.picked.push([h.layer, h.head]); });
  const first = S.picked.findIndex(([l, hh]) => heads.length && l === heads[0].layer && hh === heads[0].head);
  S.page = first >= 0 ? Math.floor(first / perPage()) : S.page;
  renderGrid();
  await ensureAttention(S.picked);
  renderMaps();
}

async function ablateHeads(heads) {
  S.ablated = heads.map((h) => ({layer: h.layer, head: h.head, ...ablationShape(), positions: null}));
  renderAblations();
  await updatePrediction();
}

// ---- start-up ----------------------------------------------------------------------------------------------
window.mavInit = async function () {
  S.model = await api("/api/model");
  const m = S.model;
  $("#model-name").textContent = `${m.name}: ${m.n_layers} layers × ${m.n_heads} heads · prompts up to ${m.max_prompt_tokens} tokens`;
  document.title = `OpenMAV explorer · ${m.name}`;
  const preset = $("#preset");
  Object.entries(m.presets).forEach(([name, text]) => preset.append(el("option", {value: text, text: name})));
  preset.onchange = () => { if (preset.value) $("#prompt").value = preset.value; };
  $("#prompt").value = m.presets.IOI;
  buildGrid();
  renderGrid();
  $("#run").onclick = runPrompt;
  $("#prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) runPrompt(); });
  $("#overlay").onchange = setOverlay;
  $("#clear-picked").onclick = () => { S.picked = []; renderGrid(); renderMaps(); };
  $("#clear-ablated").onclick = async () => { S.ablated = []; renderAblations(); await updatePrediction(); await showDetails(); };
  $("#threshold").oninput = (e) => {
    S.threshold = +e.target.value;
    $("#threshold-value").textContent = S.threshold.toFixed(2);
    S.maps.forEach((mp) => { mp.opts.threshold = S.threshold; mp.draw(); });
  };
  $("#per-page").onchange = () => { S.page = 0; renderMaps(); };
  $("#page-prev").onclick = () => { S.page--; renderMaps(); };
  $("#page-next").onclick = () => { S.page++; renderMaps(); };
  document.querySelectorAll(".tabs button").forEach((b) => b.addEventListener("click", () => {
    document.querySelectorAll(".tabs button").forEach((x) => x.classList.toggle("active", x === b));
    document.querySelectorAll(".tab").forEach((t) => { t.hidden = t.id !== `tab-${b.dataset.tab}`; });
  }));
  $("#evaluate").onclick = evaluateHeads;
  $("#study-start").onclick = startStudy;
  $("#circuit-start").onclick = startCircuit;
  const studyMode = () => {
    const mode = $("#study-mode").value;
    $("#study-target").disabled = mode !== "targeted";
    $("#study-a").disabled = $("#study-b").disabled = mode !== "logit_diff";
  };
  $("#study-mode").onchange = studyMode;
  studyMode();
  $("#circuit-metric").onchange = () => { $("#circuit-b").disabled = $("#circuit-metric").value !== "logit_diff"; };
  $("#eval-metric").onchange = showEvaluation;
  $("#eval-scale").onchange = showEvaluation;
  initViews();
  Object.entries(m.features).forEach(([name, ok]) => document.body.classList.toggle(`no-${name}`, !ok));
  document.body.dataset.ready = "1";
};
