// Export buttons for every view: PNG (a canvas, or an SVG drawn on one), SVG (a chart, or a heatmap redrawn
// as vector rectangles) and CSV (the numbers behind the view). Files are made in the page; nothing is sent.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

// a new SVG element `tag` with attributes `attrs` (and text content `text`), appended to `parent`
function svgAdd(parent, tag, attrs, text) {
  const n = document.createElementNS(SVG_NS, tag);
  Object.entries(attrs).forEach(([k, v]) => n.setAttribute(k, v));
  if (text !== undefined) n.textContent = text;
  parent.appendChild(n);
  return n;
}

// the page's SVG rules, written into each exported SVG so it looks the same outside the page
const SVG_STYLE = `text { font: 11px system-ui, sans-serif; fill: #333; }
.node-label { font-size: 10px; fill: #111; } .legend, .hint-text { fill: #667; } .title { font-weight: 600; }
.tick { font-size: 10px; fill: #556; }`;

const Export = {
  // a file saved by the browser (a link with a download name, clicked)
  download(filename, blob) {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = filename;
    document.body.appendChild(a);
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  },

  // one CSV cell: quoted when it holds a comma, quote or line break; text that a spreadsheet would run as a
  // formula (=, +, -, @ first) gets a leading apostrophe; numbers are written as they are
  cell(v) {
    if (v === null || v === undefined) return "";
    if (typeof v === "number") return Number.isFinite(v) ? String(v) : "";
    let s = String(v);
    if (/^[=+\-@\t\r]/.test(s)) s = "'" + s;
    return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  },
  csvText(rows) {
    return rows.map((r) => r.map((v) => Export.cell(v)).join(",")).join("\n") + "\n";
  },

  // standalone SVG text: namespace, size, white background and the page's styles inside
  svgText(svg) {
    const copy = svg.cloneNode(true);
    copy.setAttribute("xmlns", SVG_NS);
    const w = svg.getAttribute("width") || svg.getBoundingClientRect().width;
    const h = svg.getAttribute("height") || svg.getBoundingClientRect().height;
    copy.setAttribute("width", w);
    copy.setAttribute("height", h);
    const style = document.createElementNS(SVG_NS, "style");
    style.textContent = SVG_STYLE;
    const bg = document.createElementNS(SVG_NS, "rect");
    Object.entries({x: 0, y: 0, width: w, height: h, fill: "#fff"}).forEach(([k, v]) => bg.setAttribute(k, v));
    copy.insertBefore(bg, copy.firstChild);
    copy.insertBefore(style, copy.firstChild);
    return new XMLSerializer().serializeToString(copy);
  },

  // PNG of an SVG: drawn on a canvas at twice its size
  async pngFromSvg(svg) {
    const text = Export.svgText(svg);
    const img = new Image();
    img.src = "data:image/svg+xml;charset=utf-8," + encodeURIComponent(text);
    await img.decode();
    const canvas = document.createElement("canvas");
    canvas.width = img.width * 2;
    canvas.height = img.height * 2;
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
    return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  },

  // PNG of a canvas, on a white background (a heatmap's canvas is transparent where a cell is blank)
  pngFromCanvas(source) {
    const canvas = document.createElement("canvas");
    canvas.width = source.width;
    canvas.height = source.height;
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(source, 0, 0);
    return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  },

  // the three buttons of one view: fig() returns the canvas or SVG shown, svg() an SVG element (the chart
  // itself, or a vector copy of a canvas), csv() the rows (the first is the header)
  buttons(name, {fig, svg, csv}) {
    const save = async (format) => {
      if (format === "csv") return Export.download(`${name}.csv`, new Blob([Export.csvText(csv())], {type: "text/csv"}));
      const source = format === "svg" ? svg() : fig();
      if (format === "svg") return Export.download(`${name}.svg`, new Blob([Export.svgText(source)], {type: "image/svg+xml"}));
      const blob = source instanceof HTMLCanvasElement ? await Export.pngFromCanvas(source) : await Export.pngFromSvg(source);
      Export.download(`${name}.png`, blob);
    };
    const button = (format) => {
      const b = document.createElement("button");
      b.className = "export";
      b.dataset.format = format;
      b.title = `save as ${format.toUpperCase()}`;
      b.textContent = format.toUpperCase();
      b.addEventListener("click", () => save(format));
      return b;
    };
    const bar = document.createElement("span");
    bar.className = "exports";
    bar.dataset.name = name;
    bar.append(button("png"), button("svg"), button("csv"));
    return bar;
  },

  // a file name part from free text (token labels): letters, digits, dot, dash and underscore only
  slug(text) {
    return String(text).replace(/[^A-Za-z0-9._-]+/g, "_").replace(/^_+|_+$/g, "").slice(0, 40) || "x";
  },
};
window.Export = Export;
