/* A tiny line chart in inline SVG: axes with round ticks, a legend, and a crosshair that
 * shows every series' value at the step under the pointer. No dependencies.
 *
 *   TinyChart.line(element, {
 *     series: [{name, color, points: [[x, y], ...], dashed, markers, scatter}],
 *     xLabel: "step", yFormat: (v) => string, height: 240, logY: false,
 *   })
 *
 * Each series' path carries data-series (its name) and data-count (its points), which the
 * browser test reads to see a curve grow.
 */
(function () {
  "use strict";
  const NS = "http://www.w3.org/2000/svg";

  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (parent) parent.appendChild(node);
    return node;
  }

  function niceStep(span, count) {
    const raw = span / Math.max(1, count);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const norm = raw / mag;
    const step = norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10;
    return step * mag;
  }

  function ticks(lo, hi, count) {
    if (!(hi > lo)) return [lo];
    const step = niceStep(hi - lo, count);
    const out = [];
    for (let i = Math.ceil(lo / step - 1e-9); i * step <= hi + step * 1e-9; i++) {
      out.push(Number((i * step).toPrecision(12)));
    }
    return out;
  }

  function defaultFormat(v) {
    if (v === 0) return "0";
    const a = Math.abs(v);
    if (a >= 1e5 || a < 1e-3) return v.toExponential(1);
    if (a >= 100) return v.toFixed(0);
    if (a >= 10) return v.toFixed(1);
    return Number(v.toPrecision(3)).toString();
  }

  function esc(text) {
    return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }

  function finite(p) {
    return Array.isArray(p) && Number.isFinite(p[0]) && Number.isFinite(p[1]);
  }

  function line(container, options) {
    const series = (options.series || []).map((s) => ({ ...s, points: (s.points || []).filter(finite) }));
    const height = options.height || 240;
    const width = Math.max(280, container.clientWidth || 560);
    const pad = { top: 12, right: 18, bottom: 38, left: 56 };
    const fmt = options.yFormat || defaultFormat;
    container.textContent = "";
    container.classList.add("tchart");

    const all = series.flatMap((s) => s.points);
    if (!all.length) {
      const empty = document.createElement("div");
      empty.className = "tchart-empty";
      empty.style.height = height + "px";
      empty.textContent = options.emptyText || "Waiting for the first values…";
      container.appendChild(empty);
      return;
    }
    let x0 = Math.min(...all.map((p) => p[0]));
    let x1 = Math.max(...all.map((p) => p[0]));
    let y0 = Math.min(...all.map((p) => p[1]));
    let y1 = Math.max(...all.map((p) => p[1]));
    if (options.yMin !== undefined) y0 = Math.min(y0, options.yMin);
    if (options.yMax !== undefined) y1 = Math.max(y1, options.yMax);
    if (x1 === x0) { x0 -= 1; x1 += 1; }
    if (y1 === y0) { const d = Math.abs(y0) * 0.1 || 0.5; y0 -= d; y1 += d; }
    const margin = (y1 - y0) * 0.06;
    if (options.yMin === undefined) y0 -= margin;
    if (options.yMax === undefined) y1 += margin;

    const iw = width - pad.left - pad.right;
    const ih = height - pad.top - pad.bottom;
    const sx = (x) => pad.left + ((x - x0) / (x1 - x0)) * iw;
    const sy = (y) => pad.top + (1 - (y - y0) / (y1 - y0)) * ih;

    const svg = el("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", class: "tchart-svg" }, container);
    if (options.title) el("title", {}, svg).textContent = options.title;
    const grid = el("g", { class: "tchart-grid" }, svg);
    for (const t of ticks(y0, y1, 5)) {
      const y = sy(t);
      el("line", { x1: pad.left, x2: width - pad.right, y1: y, y2: y }, grid);
      const label = el("text", { x: pad.left - 8, y: y + 4, "text-anchor": "end", class: "tchart-tick" }, svg);
      label.textContent = fmt(t);
    }
    const xt = ticks(x0, x1, Math.max(2, Math.floor(iw / 80))).filter((t) => Number.isInteger(t) || x1 - x0 < 5);
    for (const t of xt) {
      const x = sx(t);
      el("line", { x1: x, x2: x, y1: pad.top + ih, y2: pad.top + ih + 4, class: "tchart-axis" }, svg);
      const label = el("text", { x, y: pad.top + ih + 17, "text-anchor": "middle", class: "tchart-tick" }, svg);
      label.textContent = Number.isInteger(t) ? String(t) : defaultFormat(t);
    }
    el("line", { x1: pad.left, x2: width - pad.right, y1: pad.top + ih, y2: pad.top + ih, class: "tchart-axis" }, svg);
    if (options.xLabel) {
      const xl = el("text", { x: pad.left + iw / 2, y: height - 4, "text-anchor": "middle", class: "tchart-label" }, svg);
      xl.textContent = options.xLabel;
    }

    for (const s of series) {
      if (!s.points.length) continue;
      const pts = [...s.points].sort((a, b) => a[0] - b[0]);
      const d = pts.map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
      el("path", {
        // a scatter keeps its (unstroked) path: the browser test counts points on it
        d, fill: "none", stroke: s.scatter ? "none" : s.color, "stroke-width": s.width || 2,
        "stroke-dasharray": s.dashed ? "5 4" : "none", "stroke-linejoin": "round",
        "stroke-linecap": "round", "data-series": s.name, "data-count": pts.length, class: "tchart-line",
      }, svg);
      if (s.markers || s.scatter || pts.length === 1) {
        for (const p of pts) {
          el("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 3.5, fill: "#fff", stroke: s.color, "stroke-width": 2 }, svg);
        }
      }
    }

    // crosshair: the nearest step of each series under the pointer
    const cross = el("line", { y1: pad.top, y2: pad.top + ih, class: "tchart-cross", visibility: "hidden" }, svg);
    const dots = series.map((s) => el("circle", { r: 4, fill: s.color, visibility: "hidden" }, svg));
    const tip = document.createElement("div");
    tip.className = "tchart-tip";
    container.appendChild(tip);
    const hit = el("rect", { x: pad.left, y: pad.top, width: iw, height: ih, fill: "transparent" }, svg);
    hit.addEventListener("mousemove", (ev) => {
      const box = svg.getBoundingClientRect();
      const x = x0 + ((ev.clientX - box.left - pad.left) / iw) * (x1 - x0);
      const rows = [];
      let anchor = null;
      series.forEach((s, i) => {
        if (!s.points.length) { dots[i].setAttribute("visibility", "hidden"); return; }
        let best = s.points[0];
        for (const p of s.points) if (Math.abs(p[0] - x) < Math.abs(best[0] - x)) best = p;
        dots[i].setAttribute("cx", sx(best[0]));
        dots[i].setAttribute("cy", sy(best[1]));
        dots[i].setAttribute("visibility", "visible");
        if (anchor === null || Math.abs(best[0] - x) < Math.abs(anchor - x)) anchor = best[0];
        rows.push(`<div><i style="background:${esc(s.color)}"></i>${esc(s.name)} <b>${esc(fmt(best[1]))}</b> <span>@${esc(Number.isInteger(best[0]) ? String(best[0]) : defaultFormat(best[0]))}</span></div>`);
      });
      if (anchor === null) return;
      cross.setAttribute("x1", sx(anchor));
      cross.setAttribute("x2", sx(anchor));
      cross.setAttribute("visibility", "visible");
      tip.innerHTML = rows.join("");
      tip.style.display = "block";
      const left = sx(anchor) + 12;
      tip.style.left = (left + tip.offsetWidth > width ? sx(anchor) - tip.offsetWidth - 12 : left) + "px";
      tip.style.top = pad.top + 4 + "px";
    });
    hit.addEventListener("mouseleave", () => {
      cross.setAttribute("visibility", "hidden");
      dots.forEach((d) => d.setAttribute("visibility", "hidden"));
      tip.style.display = "none";
    });

    const legend = document.createElement("div");
    legend.className = "tchart-legend";
    for (const s of series) {
      const item = document.createElement("span");
      const swatch = document.createElement("i");
      swatch.style.background = s.color;
      if (s.dashed) swatch.className = "dashed";
      item.appendChild(swatch);
      const last = s.points.length ? s.points[s.points.length - 1][1] : null;
      item.appendChild(document.createTextNode(s.name + (last === null ? "" : " " + fmt(last))));
      legend.appendChild(item);
    }
    container.appendChild(legend);
  }

  window.TinyChart = { line, ticks, format: defaultFormat };
})();
