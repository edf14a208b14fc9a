// Small inline-SVG line charts drawn here, so the console needs no chart library and
// no network beyond the control plane.

const SVG = "http://www.w3.org/2000/svg";
export const PALETTE = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2",
  "#db2777", "#4b5563", "#65a30d", "#9333ea"];

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const step = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * step >= value) return m * step;
  return 10 * step;
}

function clock(ms, spanMs) {
  const d = new Date(ms);
  return spanMs > 2 * 86400e3
    ? d.toLocaleDateString([], { month: "short", day: "numeric" })
    : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

// series: [{label, color, width, dash, points: [[ms, value], ...]}]
// threshold: {value, label} drawn as a dashed line.
export function lineChart({ series, yLabel, threshold, yMax, width = 760, height = 240 }) {
  const pad = { left: 52, right: 20, top: 14, bottom: 30 };
  const all = series.flatMap((s) => s.points);
  const root = svg("svg", {
    viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img",
    "aria-label": yLabel,
  });
  if (!all.length) {
    root.append(svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle",
      class: "chart-empty" }, "no windows yet"));
    return root;
  }
  let t0 = Math.min(...all.map((p) => p[0]));
  let t1 = Math.max(...all.map((p) => p[0]));
  if (t1 === t0) { t0 -= 30e3; t1 += 30e3; }
  const top = yMax ?? niceMax(Math.max(threshold?.value ?? 0, ...all.map((p) => p[1])) * 1.1);
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const x = (t) => pad.left + ((t - t0) / (t1 - t0)) * plotW;
  const y = (v) => pad.top + plotH - (Math.min(v, top) / top) * plotH;

  const axes = svg("g", { class: "axes" });
  for (let i = 0; i <= 4; i += 1) {
    const v = (top * i) / 4;
    axes.append(svg("line", { x1: pad.left, x2: width - pad.right, y1: y(v), y2: y(v),
      class: "gridline" }));
    axes.append(svg("text", { x: pad.left - 6, y: y(v) + 4, "text-anchor": "end" },
      String(Number(v.toPrecision(3)))));
  }
  for (let i = 0; i <= 4; i += 1) {
    const t = t0 + ((t1 - t0) * i) / 4;
    const anchor = i === 0 ? "start" : i === 4 ? "end" : "middle";
    axes.append(svg("text", { x: x(t), y: height - 8, "text-anchor": anchor },
      clock(t, t1 - t0)));
  }
  axes.append(svg("text", { x: 12, y: pad.top + plotH / 2, "text-anchor": "middle",
    transform: `rotate(-90 12 ${pad.top + plotH / 2})` }, yLabel));
  root.append(axes);

  if (threshold) {
    root.append(svg("line", { x1: pad.left, x2: width - pad.right, y1: y(threshold.value),
      y2: y(threshold.value), class: "threshold" }));
    root.append(svg("text", { x: width - pad.right - 4, y: y(threshold.value) - 5,
      "text-anchor": "end", class: "threshold-label" }, threshold.label));
  }
  for (const s of series) {
    const points = [...s.points].sort((a, b) => a[0] - b[0]);
    const d = points.map(([t, v], i) => `${i ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`);
    const path = svg("path", { d: d.join(""), fill: "none", stroke: s.color,
      "stroke-width": s.width ?? 2, class: "series", "data-label": s.label,
      "stroke-linejoin": "round", "stroke-linecap": "round" });
    if (s.dash) path.setAttribute("stroke-dasharray", s.dash);
    if (s.opacity) path.setAttribute("stroke-opacity", s.opacity);
    path.append(svg("title", {}, s.label));
    root.append(path);
    if (points.length === 1) {
      root.append(svg("circle", { cx: x(points[0][0]), cy: y(points[0][1]), r: 3,
        fill: s.color }));
    }
  }
  return root;
}

export function legend(series) {
  const list = document.createElement("ul");
  list.className = "legend";
  for (const s of series) {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = s.color;
    item.append(swatch, document.createTextNode(s.label));
    list.append(item);
  }
  return list;
}
