// The page's lower tabs: evaluate all heads, ablation studies (streamed), circuit discovery; and start-up.
"use strict";

const asHead = (x) => (Array.isArray(x) ? {layer: x[0], head: x[1]} : {layer: x.layer, head: x.head});

// The ablation panel's kind, factor and threshold: evaluations and studies ablate heads the same way.
function ablationShape() {
  return {kind: $("#abl-kind").value, factor: +$("#abl-factor").value || 0,
          threshold: Math.max(0, +$("#abl-threshold").value || 0)};
}

// ---- evaluate all heads (a job: progress per batched forward, cancellable) ----------------------------------
async function evaluateHeads() {
  if (!S.prompt) return showError("run a prompt first");
  const shape = ablationShape(), kind = shape.kind;
  const button = $("#evaluate"), status = $("#eval-status"), progress = $("#eval-progress");
  button.disabled = true;
  progress.value = 0;
  let job;
  try {
    job = await api("/api/evaluations", {prompt: S.prompt, ...shape});
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
  showEvaluation(state.result, kind);
}

function showEvaluation(result, kind) {
  S.evaluation = result;
  const kl = result.kl, L = kl.length, H = kl[0].length;
  const box = $("#eval-map");
  box.replaceChildren(el("h3", {text: `KL when one head is ablated (${kind}; baseline top “${result.top_label}”)`}));
  const vmax = Math.max(1e-9, ...kl.flat());
  new Heatmap(box, {
    rows: [...Array(L).keys()].map((l) => `L${l}`), cols: [...Array(H).keys()].map((h) => `H${h}`), values: kl,
    cell: Math.max(8, Math.min(18, Math.floor(360 / Math.max(L, H)))), vmax,
    onHover: (at) => evalHover(at), onClick: (l, h) => clickHead(l, h),
  });
  const ranked = [];
  kl.forEach((row, l) => row.forEach((v, h) => ranked.push({layer: l, head: h, kl: v,
    dp: result.delta_top_prob ? result.delta_top_prob[l][h] : null})));
  ranked.sort((a, b) => b.kl - a.kl);
  $("#eval-bars").replaceChildren(el("h3", {text: "Heads sorted by KL (top 20)"}),
    barChart(ranked.slice(0, 20).map((r) => ({label: `L${r.layer} H${r.head}`, value: r.kl,
      note: r.dp === null ? "" : `Δp(top) ${r.dp >= 0 ? "+" : ""}${fmt(r.dp, 3)}`}))));
  renderGrid();
}

function evalHover(at) {
  const tip = $("#tooltip");
  if (!at) { tip.hidden = true; return; }
  const dp = S.evaluation.delta_top_prob ? ` · Δp(top) ${fmt(S.evaluation.delta_top_prob[at.r][at.c])}` : "";
  tip.textContent = `layer ${at.r} head ${at.c}: KL ${fmt(at.value)}${dp}`;
  Object.assign(tip.style, {left: at.x + 14 + "px", top: at.y + 14 + "px"});
  tip.hidden = false;
}

function barChart(items, width = 320) {
  const ns = "http://www.w3.org/2000/svg", row = 18, labelW = 70, max = Math.max(1e-9, ...items.map((i) => Math.abs(i.value)));
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", labelW + width + 130);
  svg.setAttribute("height", items.length * row + 4);
  svg.classList.add("bars");
  items.forEach((it, i) => {
    const y = i * row + 2, w = Math.max(1, (Math.abs(it.value) / max) * width);
    const add = (tag, attrs, text) => {
      const n = document.createElementNS(ns, tag);
      Object.entries(attrs).forEach(([k, v]) => n.setAttribute(k, v));
      if (text !== undefined) n.textContent = text;
      svg.appendChild(n);
    };
    add("text", {x: labelW - 6, y: y + 12, "text-anchor": "end", class: "bar-label"}, it.label);
    add("rect", {x: labelW, y, width: w, height: row - 4, fill: it.value < 0 ? "#c0392b" : "#2c6fbb"});
    add("text", {x: labelW + w + 4, y: y + 12, class: "bar-value"}, `${fmt(it.value, 3)} ${it.note || ""}`);
  });
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
  const outcome = r.study === "targeted"
    ? (r.success ? `“${r.target_label}” is now the most likely token` : `“${r.target_label}” did not become the most likely token`)
    : `KL(before‖after) ${fmt(r.kl)} nats`;
  box.replaceChildren(
    el("h3", {class: "study-heads", text: `${cancelled ? "Cancelled; best so far" : "Heads found"}: ` +
      (heads.map((h) => `L${h.layer} H${h.head}`).join(", ") || "none")}),
    el("p", {class: "study-summary", text: `${outcome} · ${r.forwards} batched forwards · search: ${r.search}`}),
    el("div", {class: "row"},
      el("button", {text: "view these heads", onclick: () => viewHeads(heads)}),
      el("button", {text: "ablate these heads", onclick: () => ablateHeads(heads)})),
    distTables({before: r.before_tokens.slice(0, 5), after: r.after_tokens.slice(0, 5)}),
  );
  await viewHeads(heads);
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
  $("#study-mode").onchange = () => { $("#study-target").disabled = $("#study-mode").value !== "targeted"; };
  $("#circuit-metric").onchange = () => { $("#circuit-b").disabled = $("#circuit-metric").value !== "logit_diff"; };
  Object.entries(m.features).forEach(([name, ok]) => document.body.classList.toggle(`no-${name}`, !ok));
  document.body.dataset.ready = "1";
};
