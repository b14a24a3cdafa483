// Corpus scans (mav serve --scan DIR): the Neurons and Heads tabs. Their tab buttons and sections are added
// here when the script loads (before the page's start-up binds every tab button) and shown once /api/scans
// names a scan. A unit's page (scan_unit.js) opens beside each tab's table. Every text from a scan (token
// texts, sources, paths) is written with textContent, never as HTML.
"use strict";

const SC = {scans: [], index: 0, headSort: {by: "induction", order: "desc"}, loaded: {}, asked: {}};
window.mav.scans = SC;

const scanInfo = () => SC.scans[SC.index];
const scanApi = (path, params = {}) => {
  const query = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== null && v !== undefined && v !== ""));
  return api(`/api/scans/${SC.index}${path}` + (query.toString() ? `?${query}` : ""));
};
const option = (value, text) => el("option", {value, text});
// a number per place on the page (a table, a unit page): an answer is drawn only if no later request for the
// same place was made meanwhile, so a slow answer never replaces a newer one
const ask = (place) => { SC.asked[place] = (SC.asked[place] || 0) + 1; return SC.asked[place]; };
const stale = (place, n) => SC.asked[place] !== n;

// ---- the tabs' markup -------------------------------------------------------------------------------------
(function addScanTabs() {
  const nav = document.querySelector("nav.tabs");
  for (const [name, label] of [["neurons", "Neurons"], ["heads", "Heads"]]) {
    const b = el("button", {"data-tab": name, class: "scan-tab", text: label});
    b.hidden = true;
    b.addEventListener("click", () => showScanTab(name));
    nav.append(b);
  }
  const scanPick = (id) => el("label", {class: "scan-pick"}, "Scan ", el("select", {id, class: "scan-select"}));
  const neurons = el("section", {id: "tab-neurons", class: "tab"},
    el("p", {class: "hint scan-about"}),
    el("div", {class: "row"}, scanPick("neuron-scan"),
      el("label", {}, "Layer ", el("select", {id: "neuron-layer"})),
      el("label", {}, "Neuron ", el("input", {id: "neuron-unit", type: "number", min: "0", value: "0"})),
      el("button", {id: "neuron-open", class: "primary", text: "Open neuron"}),
      el("span", {class: "scan-gap"}),
      el("label", {}, "Token ", el("input", {id: "neuron-token", placeholder: "e.g. the", maxlength: "200"})),
      el("button", {id: "neuron-search", text: "Which neurons fire on it"})),
    el("div", {class: "row"},
      el("label", {}, "Sort by ", el("select", {id: "neuron-sort"}, option("max", "maximum"),
        option("density", "density (fraction above 0)"), option("mean", "mean"), option("std", "standard deviation"))),
      el("label", {}, "Order ", el("select", {id: "neuron-order"}, option("desc", "largest first"),
        option("asc", "smallest first"))),
      el("label", {}, "In layer ", el("select", {id: "neuron-sort-layer"})),
      el("label", {}, "Show ", el("select", {id: "neuron-limit"}, option("25", "25"), option("50", "50"),
        option("100", "100"), option("250", "250")))),
    el("div", {class: "row wrap scan-split"}, el("div", {id: "neuron-table", class: "scan-table"}),
      el("div", {id: "neuron-unit-page", class: "scan-unit"})));
  const heads = el("section", {id: "tab-heads", class: "tab"},
    el("p", {class: "hint scan-about"}),
    el("div", {class: "row"}, scanPick("head-scan")),
    el("p", {class: "hint", text: "Corpus means over the scan's windows: attention entropy (nats), each query's largest " +
      "weight, the weight on the first position and on the previous one, and the induction score (weight on the " +
      "token after an earlier copy of the current one); mean and max are of the norm of the head's own output. " +
      "Click a column to sort by it, a row to see the head's top contexts."}),
    el("div", {class: "row wrap scan-split"}, el("div", {id: "head-table", class: "scan-table"}),
      el("div", {id: "head-unit-page", class: "scan-unit"})));
  neurons.hidden = heads.hidden = true;
  document.querySelector("#content").append(neurons, heads);
})();

// ---- start-up: which scans, then the selects ---------------------------------------------------------------
async function initScans() {
  SC.scans = await api("/api/scans");
  if (!SC.scans.length) return;
  document.querySelectorAll(".scan-tab").forEach((b) => {
    const kind = b.dataset.tab === "neurons" ? "neurons" : "heads";
    b.hidden = !SC.scans.some((s) => s.units.includes(kind));
  });
  document.querySelectorAll(".scan-select").forEach((sel) => {
    sel.replaceChildren(...SC.scans.map((s) => option(s.index, `${s.index}: ${s.model} · ${baseName(s.data)}`)));
    sel.closest("label").hidden = SC.scans.length < 2;
    sel.onchange = () => pickScan(+sel.value);
  });
  $("#neuron-open").onclick = openNeuronFromInputs;
  $("#neuron-unit").addEventListener("keydown", (e) => { if (e.key === "Enter") openNeuronFromInputs(); });
  $("#neuron-search").onclick = searchToken;
  $("#neuron-token").addEventListener("keydown", (e) => { if (e.key === "Enter") searchToken(); });
  ["#neuron-sort", "#neuron-order", "#neuron-sort-layer", "#neuron-limit"].forEach((s) => { $(s).onchange = loadUnits; });
  $("#neuron-layer").onchange = limitNeuronInput;
  pickScan(0);
  document.body.dataset.scans = String(SC.scans.length);
}

function baseName(path) {
  const parts = String(path).split(/[\\/]/);
  return parts[parts.length - 1] || String(path);
}

function pickScan(index) {
  SC.index = index;
  SC.loaded = {};
  Object.keys(SC.asked).forEach((place) => ask(place));  // answers about the scan shown before are dropped
  document.querySelectorAll(".scan-select").forEach((sel) => { sel.value = String(index); });
  const s = scanInfo();
  const layers = Object.keys(s.neurons).map(Number);
  const about = `Scan of ${s.model} over ${s.tokens ?? "?"} tokens of ${baseName(s.data)} (${s.documents} documents): ` +
    `layers ${s.layers[0]}–${s.layers[s.layers.length - 1]}, ${s.units.join(" and ")}, top ${s.top_k} contexts per unit` +
    (s.same_model ? "." : ` — made with ${s.model}, not the served model: no logit effects.`);
  document.querySelectorAll(".scan-about").forEach((p) => { p.textContent = about; p.title = s.folder; });
  $("#neuron-layer").replaceChildren(...layers.map((l) => option(l, String(l))));
  $("#neuron-sort-layer").replaceChildren(option("", "all"), ...layers.map((l) => option(l, String(l))));
  limitNeuronInput();
  ["#neuron-table", "#neuron-unit-page", "#head-table", "#head-unit-page"].forEach((id) => $(id).replaceChildren());
  const open = document.querySelector(".tabs button.active");
  if (open && ["neurons", "heads"].includes(open.dataset.tab)) showScanTab(open.dataset.tab);
}

function limitNeuronInput() {
  const n = scanInfo().neurons[$("#neuron-layer").value];
  const input = $("#neuron-unit");
  input.max = n ? String(n - 1) : "";
  input.title = n ? `neurons 0–${n - 1}` : "";
}

// a tab's table is loaded the first time it is opened (and again after another scan is picked)
function showScanTab(name) {
  if (!SC.scans.length || SC.loaded[name]) return;
  SC.loaded[name] = true;
  if (name === "neurons") loadUnits();
  else loadHeads();
}

// ---- Neurons: sorted units, a token search, a neuron by number -------------------------------------------------
async function loadUnits() {
  const by = $("#neuron-sort").value, order = $("#neuron-order").value, layer = $("#neuron-sort-layer").value;
  const n = ask("neuron-table");
  const rows = await scanApi("/units", {kind: "neuron", by, order, layer, limit: $("#neuron-limit").value});
  if (stale("neuron-table", n)) return;
  const what = `${rows.length} neurons${layer === "" ? "" : ` of layer ${layer}`} by ${$("#neuron-sort").selectedOptions[0].text}`;
  $("#neuron-table").replaceChildren(unitTable(what, rows, [
    ["layer", (r) => r.layer], ["neuron", (r) => r.unit], ["max", (r) => fmt(r.max, 3)],
    ["density", (r) => fmt(r.frac_pos, 3)], ["mean", (r) => fmt(r.mean, 3)], ["std", (r) => fmt(r.std, 3)]],
  (r) => openUnit("neuron", r.layer, r.unit)));
}

async function searchToken() {
  const text = $("#neuron-token").value;
  if (!text) return showError("type a token's text, e.g. the");
  const layer = $("#neuron-sort-layer").value;
  const n = ask("neuron-table");
  const found = await scanApi("/token", {text, kind: "neuron", layer, limit: $("#neuron-limit").value});
  if (stale("neuron-table", n)) return;
  const matched = found.tokens.map((t) => `“${t.token}” (${t.hits} hits)`).join(", ");
  const what = found.units.length
    ? `Neurons whose top contexts fall most on ${matched}`
    : `No neuron's top contexts fall on “${text}”${text.startsWith(" ") ? "" : ` or “ ${text}”`} in this scan`;
  $("#neuron-table").replaceChildren(unitTable(what, found.units, [
    ["layer", (r) => r.layer], ["neuron", (r) => r.unit], ["hits", (r) => r.hits], ["max", (r) => fmt(r.max_value, 3)]],
  (r) => openUnit("neuron", r.layer, r.unit)));
}

function openNeuronFromInputs() {
  const layer = +$("#neuron-layer").value, unit = $("#neuron-unit").value;
  if (unit === "" || !Number.isInteger(+unit) || +unit < 0) return showError("neuron: give a whole number from 0");
  return openUnit("neuron", layer, +unit);
}

// a table of units: caption, one header row, one clickable row per unit (data-layer, data-unit)
function unitTable(caption, rows, columns, onPick, header = null) {
  const head = header || el("tr", {}, ...columns.map(([name]) => el("th", {text: name})));
  return el("table", {class: "scan-units"}, el("caption", {text: caption}), el("thead", {}, head),
    el("tbody", {}, ...rows.map((r) => el("tr", {class: "clickable", "data-layer": r.layer, "data-unit": r.unit ?? r.head,
      onclick: () => onPick(r)}, ...columns.map(([, cell]) => el("td", {class: "num", text: String(cell(r))}))))));
}

// ---- Heads: every head's corpus scores, sortable ----------------------------------------------------------------
const HEAD_COLUMNS = [["layer", "layer"], ["head", null], ["entropy", "entropy"], ["max weight", "max_weight"],
  ["first weight", "first_weight"], ["prev-token", "prev_token"], ["induction", "induction"],
  ["mean norm", "mean"], ["max norm", "max"]];

async function loadHeads() {
  const {by, order} = SC.headSort;
  const n = ask("head-table");
  const rows = await scanApi("/heads", {by, order});
  if (stale("head-table", n)) return;
  if (!rows.length) {
    $("#head-table").replaceChildren(el("p", {class: "hint", text: "This scan has no heads (it was made with --units neurons)."}));
    return;
  }
  const header = el("tr", {}, ...HEAD_COLUMNS.map(([label, field]) => {
    if (!field) return el("th", {text: label});
    const mark = field === by ? (order === "desc" ? " ▼" : " ▲") : "";
    return el("th", {class: "sortable" + (field === by ? " sorted" : ""), "data-sort": field, text: label + mark,
      title: `sort by ${label}`, onclick: () => sortHeads(field)});
  }));
  const columns = HEAD_COLUMNS.map(([, field], i) => [field, i === 1 ? (r) => r.head
    : field === "layer" ? (r) => r.layer : (r) => fmt(r[field], 3)]);
  const what = `${rows.length} heads, by ${HEAD_COLUMNS.find(([, f]) => f === by)[0]} (${order === "desc" ? "largest" : "smallest"} first)`;
  $("#head-table").replaceChildren(unitTable(what, rows, columns, (r) => openUnit("head", r.layer, r.head), header));
}

function sortHeads(field) {
  const same = SC.headSort.by === field;
  SC.headSort = {by: field, order: same ? (SC.headSort.order === "desc" ? "asc" : "desc") : (field === "layer" ? "asc" : "desc")};
  return loadHeads();
}

window.addEventListener("DOMContentLoaded", () => { initScans(); });
