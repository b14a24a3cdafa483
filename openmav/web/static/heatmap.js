// A matrix drawn on a canvas with row and column labels; hover and click report the cell.
// Used for query x key attention maps and for the layers x heads evaluation map.
"use strict";

class Heatmap {
  // opts: rows (labels), cols (labels), values (array of rows), cell (px), vmax, threshold,
  //       diverging (colour negative values red), onHover(r, c, value, evt), onClick(r, c, value)
  constructor(container, opts) {
    this.opts = Object.assign({cell: 12, vmax: 1, threshold: 0, diverging: false}, opts);
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

  static colour(v, vmax, diverging) {
    const t = Math.max(0, Math.min(1, Math.abs(v) / (vmax || 1)));
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
        ctx.fillStyle = Heatmap.colour(v, o.vmax, o.diverging);
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
}
window.Heatmap = Heatmap;
