// A matrix drawn on a canvas with row and column labels; hover and click report the cell.
// Used for query x key attention maps, the layers x heads evaluation and attribution maps and the
// model view's thumbnails; toSVG() redraws it as vector rectangles, Heatmap.legend() draws its colour scale.
"use strict";

class Heatmap {
  // opts: rows (labels), cols (labels), values (array of rows; null: no value, left blank), cell (px), vmax,
  //       threshold, diverging (colour negative values red), scale ("linear" or "log": |v| from vmin to vmax
  //       on a log axis), vmin (log only), onHover(r, c, value, evt), onClick(r, c, value)
  constructor(container, opts) {
    this.opts = Object.assign({cell: 12, vmax: 1, threshold: 0, diverging: false, scale: "linear", vmin: 0}, opts);
    this.canvas = document.createElement("canvas");
    this.canvas.className = "heatmap";
    container.appendChild(this.canvas);
    this.mark = null; // {r, c}: highlighted row and column
    this.canvas.addEventListener("mousemove", (e) => this._hover(e));
    this.canvas.addEventListener("mouseleave", () => this.opts.onHover && this.opts.onHover(null));
    this.canvas.addEventListener("click", (e) => {
      const at = this.cellAt(e);
      if (at && this.opts.onClick) this.opts.onClick(at.r, at.c, this.opts.values[at.r][at.c]);
    });
    this.draw();
  }

  // the share 0..1 of the colour scale that value v takes
  static fraction(v, vmax, scale = "linear", vmin = 0) {
    const a = Math.abs(v);
    if (scale === "log") {
      const lo = vmin > 0 ? vmin : (vmax || 1) * 1e-4;
      if (!(a > lo)) return 0;
      return Math.min(1, Math.log(a / lo) / Math.log((vmax || 1) / lo));
    }
    return Math.max(0, Math.min(1, a / (vmax || 1)));
  }

  static colour(v, vmax, diverging, scale = "linear", vmin = 0) {
    const t = Heatmap.fraction(v, vmax, scale, vmin);
    if (diverging && v < 0) {  // white -> red
      return `rgb(${255 - Math.round(t * 75)},${255 - Math.round(t * 210)},${255 - Math.round(t * 200)})`;
    }
    // white -> deep blue
    return `rgb(${255 - Math.round(t * 247)},${255 - Math.round(t * 207)},${255 - Math.round(t * 148)})`;
  }

  _layout(ctx) {
    ctx.font = "11px system-ui, sans-serif";
    const width = (labels) => Math.max(0, ...labels.map((s) => ctx.measureText(s).width));
    this.left = Math.ceil(width(this.opts.rows)) + 8;
    this.top = Math.ceil(width(this.opts.cols)) + 8;
  }

  draw() {
    const start = performance.now();
    const o = this.opts, cell = o.cell, ratio = window.devicePixelRatio || 1;
    const ctx = this.canvas.getContext("2d");
    this._layout(ctx);
    const w = this.left + o.cols.length * cell + 2, h = this.top + o.rows.length * cell + 2;
    if (this.canvas.width !== Math.round(w * ratio) || this.canvas.height !== Math.round(h * ratio)) {
      this.canvas.width = Math.round(w * ratio);
      this.canvas.height = Math.round(h * ratio);
      this.canvas.style.width = w + "px";
      this.canvas.style.height = h + "px";
    }
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, w, h);
    for (let r = 0; r < o.rows.length; r++) {
      const row = o.values[r];
      for (let c = 0; c < o.cols.length; c++) {
        const v = row[c];
        if (v === null || v === undefined || Math.abs(v) < o.threshold) continue;
        ctx.fillStyle = Heatmap.colour(v, o.vmax, o.diverging, o.scale, o.vmin);
        ctx.fillRect(this.left + c * cell, this.top + r * cell, cell, cell);
      }
    }
    ctx.strokeStyle = "#bbb";
    ctx.strokeRect(this.left - 0.5, this.top - 0.5, o.cols.length * cell + 1, o.rows.length * cell + 1);
    ctx.fillStyle = "#222";
    ctx.font = "11px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    ctx.textAlign = "right";
    o.rows.forEach((s, r) => {
      ctx.fillStyle = this.mark && this.mark.r === r ? "#c0392b" : "#222";
      ctx.fillText(s, this.left - 4, this.top + r * cell + cell / 2);
    });
    ctx.save();
    ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "left";
    o.cols.forEach((s, c) => {
      ctx.fillStyle = this.mark && this.mark.c === c ? "#c0392b" : "#222";
      ctx.fillText(s, -this.top + 4, this.left + c * cell + cell / 2);
    });
    ctx.restore();
    if (this.mark) {
      ctx.strokeStyle = "#e67e22";
      ctx.lineWidth = 1.5;
      ctx.strokeRect(this.left, this.top + this.mark.r * cell, o.cols.length * cell, cell);
      ctx.strokeRect(this.left + this.mark.c * cell, this.top, cell, o.rows.length * cell);
      ctx.strokeStyle = "#c0392b";
      ctx.lineWidth = 2;
      ctx.strokeRect(this.left + this.mark.c * cell, this.top + this.mark.r * cell, cell, cell);
      ctx.lineWidth = 1;
    }
    this.lastDrawMs = performance.now() - start;
    this.canvas.dataset.drawMs = this.lastDrawMs.toFixed(2);
    return this.lastDrawMs;
  }

  cellAt(e) {
    const rect = this.canvas.getBoundingClientRect();
    const x = e.clientX - rect.left - this.left, y = e.clientY - rect.top - this.top;
    const c = Math.floor(x / this.opts.cell), r = Math.floor(y / this.opts.cell);
    if (x < 0 || y < 0 || r >= this.opts.rows.length || c >= this.opts.cols.length) return null;
    return {r, c};
  }

  // page coordinates of the centre of cell (r, c), for tests and tooltips
  cellCentre(r, c) {
    const rect = this.canvas.getBoundingClientRect();
    return {x: rect.left + this.left + (c + 0.5) * this.opts.cell, y: rect.top + this.top + (r + 0.5) * this.opts.cell};
  }

  _hover(e) {
    if (!this.opts.onHover) return;
    const at = this.cellAt(e);
    this.opts.onHover(at ? {r: at.r, c: at.c, value: this.opts.values[at.r][at.c], x: e.pageX, y: e.pageY} : null);
  }

  // the same picture as SVG: one rectangle per coloured cell, the labels as text
  toSVG() {
    const o = this.opts, cell = o.cell, left = this.left, top = this.top;
    const w = left + o.cols.length * cell + 2, h = top + o.rows.length * cell + 2;
    const svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("width", w);
    svg.setAttribute("height", h);
    const add = (tag, attrs, text) => svgAdd(svg, tag, attrs, text);
    for (let r = 0; r < o.rows.length; r++) {
      for (let c = 0; c < o.cols.length; c++) {
        const v = o.values[r][c];
        if (v === null || v === undefined || Math.abs(v) < o.threshold) continue;
        add("rect", {x: left + c * cell, y: top + r * cell, width: cell, height: cell,
          fill: Heatmap.colour(v, o.vmax, o.diverging, o.scale, o.vmin)});
      }
    }
    add("rect", {x: left - 0.5, y: top - 0.5, width: o.cols.length * cell + 1, height: o.rows.length * cell + 1,
      fill: "none", stroke: "#bbb"});
    o.rows.forEach((s, r) => add("text", {x: left - 4, y: top + r * cell + cell / 2, "text-anchor": "end",
      "dominant-baseline": "middle"}, s));
    o.cols.forEach((s, c) => add("text", {x: 0, y: 0, "dominant-baseline": "middle",
      transform: `translate(${left + c * cell + cell / 2},${top - 4}) rotate(-90)`}, s));
    return svg;
  }

  // one SVG of several stacked top to bottom (a map and its colour bar, for export)
  static stack(...parts) {
    const out = document.createElementNS(SVG_NS, "svg");
    let y = 0, w = 0;
    parts.forEach((part) => {
      const copy = part.cloneNode(true);
      copy.setAttribute("x", 0);
      copy.setAttribute("y", y);
      out.appendChild(copy);
      y += +part.getAttribute("height") + 6;
      w = Math.max(w, +part.getAttribute("width"));
    });
    out.setAttribute("width", w);
    out.setAttribute("height", y);
    return out;
  }

  // an SVG colour bar for a scale: opts {vmax, vmin (log), scale, diverging, label, width}
  static legend(opts) {
    const o = Object.assign({scale: "linear", vmin: 0, diverging: false, label: "", width: 180}, opts);
    const W = o.width, barH = 10, x0 = 28, svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("width", W + 2 * x0);
    svg.setAttribute("height", 44);
    svg.classList.add("legend-bar");
    const add = (tag, attrs, text) => svgAdd(svg, tag, attrs, text);
    const steps = 60;
    const lo = o.scale === "log" ? (o.vmin > 0 ? o.vmin : o.vmax * 1e-4) : 0;
    // the value at fraction t of the bar: linear or log from lo to vmax; a diverging bar runs -vmax..vmax
    const mag = (x) => (o.scale === "log" ? lo * Math.pow(o.vmax / lo, x) : x * o.vmax);
    const valueAt = (t) => (!o.diverging ? mag(t) : t < 0.5 ? -mag(1 - 2 * t) : mag(2 * t - 1));
    for (let i = 0; i < steps; i++) {
      const t = (i + 0.5) / steps;
      add("rect", {x: x0 + (i * W) / steps, y: 16, width: W / steps + 0.5, height: barH,
        fill: Heatmap.colour(valueAt(t), o.vmax, o.diverging, o.scale, lo)});
    }
    add("rect", {x: x0, y: 16, width: W, height: barH, fill: "none", stroke: "#bbb"});
    add("text", {x: x0, y: 11, class: "legend"}, o.label + (o.scale === "log" ? " (log scale)" : ""));
    const num = (v) => (v !== 0 && (Math.abs(v) >= 1000 || Math.abs(v) < 0.01) ? v.toExponential(0) : String(+v.toPrecision(2)));
    const ticks = o.diverging
      ? [[0, num(-o.vmax)], [0.5, o.scale === "log" ? `|v|≤${num(lo)}` : "0"], [1, num(o.vmax)]]
      : [[0, o.scale === "log" ? `≤${num(lo)}` : "0"], [0.5, num(mag(0.5))], [1, num(o.vmax)]];
    ticks.forEach(([t, label]) => {
      add("line", {x1: x0 + t * W, x2: x0 + t * W, y1: 26, y2: 30, stroke: "#667"});
      add("text", {x: x0 + t * W, y: 40, "text-anchor": "middle", class: "tick"}, label);
    });
    return svg;
  }
}
window.Heatmap = Heatmap;
