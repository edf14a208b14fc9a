// Drift: per model version and cohort, the share of features drifted per device and
// the PSI of the features that moved most, over time, against the PSI threshold.
// The same picture as ``edgefleet drift plot``, drawn in the browser.

import { get } from "../api.js";
import { PALETTE, legend, lineChart } from "../charts.js";
import { el, number, pill, replace, section } from "../util.js";

export const title = "Drift";
export const pollMs = 10000;

const PSI_THRESHOLD = 0.2; // edgefleet.drift.DEFAULT_PSI_THRESHOLD
const BUCKETS = 60;
const TOP_FEATURES = 6;
const SERIES_LIMIT = 20000;

function groupKey(p) {
  return `${p.model} v${p.model_version} · ${p.cohort}`;
}

// Mean of each row of ``values`` per time bucket, as the PNG plot does.
function bucketed(points, valueOf) {
  const times = points.map((p) => Date.parse(p.ts));
  const t0 = Math.min(...times);
  const span = Math.max(...times) - t0 || 1;
  const sums = new Map();
  points.forEach((p, i) => {
    const bucket = Math.min(BUCKETS - 1, Math.floor(((times[i] - t0) / span) * BUCKETS));
    const value = valueOf(p);
    const entry = sums.get(bucket) ?? { t: 0, n: 0, v: null };
    entry.t += times[i];
    entry.n += 1;
    entry.v = entry.v === null ? value : entry.v.map((x, j) => x + (value[j] ?? 0));
    sums.set(bucket, entry);
  });
  return [...sums.values()].map((e) => [e.t / e.n, e.v.map((x) => x / e.n)]);
}

function shareChart(points) {
  const byDevice = new Map();
  for (const p of points) {
    if (!byDevice.has(p.device_id)) byDevice.set(p.device_id, []);
    byDevice.get(p.device_id).push([Date.parse(p.ts), p.share_drifted]);
  }
  const series = [...byDevice.entries()].map(([device, pts], i) => ({
    label: device, color: PALETTE[(i + 1) % PALETTE.length], width: 1.2, opacity: 0.55, points: pts,
  }));
  series.push({ label: "fleet mean", color: "#111827", width: 3,
    points: bucketed(points, (p) => [p.share_drifted]).map(([t, v]) => [t, v[0]]) });
  return [lineChart({ series, yLabel: "share of features drifted", yMax: 1 }), legend(series)];
}

function featureChart(points) {
  const width = Math.max(...points.map((p) => p.psi.length));
  if (!width) return el("p", { class: "empty" }, "These windows carry no per-feature scores.");
  const buckets = bucketed(points, (p) => Array.from({ length: width }, (_, j) => p.psi[j] ?? 0));
  const peak = Array.from({ length: width }, (_, j) => Math.max(...buckets.map(([, v]) => v[j])));
  const top = peak.map((v, j) => [v, j]).sort((a, b) => b[0] - a[0]).slice(0, TOP_FEATURES);
  const series = top.map(([, j], i) => ({
    label: `feature ${j}`, color: PALETTE[i % PALETTE.length], width: 2,
    points: buckets.map(([t, v]) => [t, v[j]]),
  }));
  return [lineChart({ series, yLabel: "PSI (fleet mean)",
    threshold: { value: PSI_THRESHOLD, label: `threshold ${PSI_THRESHOLD}` } }), legend(series)];
}

function verdictLine(verdict) {
  if (!verdict) return el("p", { class: "muted" }, "No fleet verdict yet.");
  return el("p", { class: "verdict" },
    pill(verdict.fires ? "drifting" : "stable"), " ",
    `${verdict.devices_drifted.length} of ${verdict.devices_reporting} devices drifted`,
    ` (share ${number(verdict.share, 2)})`,
    verdict.devices_drifted.length ? el("span", { class: "muted small mono" },
      ` ${verdict.devices_drifted.join(", ")}`) : "");
}

export function mount(root) {
  const modelSelect = el("select", { id: "drift-model", "aria-label": "model" });
  const body = el("div", { id: "drift-groups" });
  root.append(el("div", { class: "title-row" }, el("h1", {}, "Drift"),
    el("label", { class: "field inline" }, el("span", {}, "Model"), modelSelect)), body);
  let latest = null;

  function draw() {
    const { series, verdicts } = latest;
    const chosen = modelSelect.value;
    const groups = new Map();
    for (const p of series) {
      if (chosen && p.model !== chosen) continue;
      const key = groupKey(p);
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(p);
    }
    if (!groups.size) {
      return replace(body, el("p", { class: "empty card" },
        "No drift windows reported yet. Devices send one per full window of inputs."));
    }
    return replace(body, [...groups.entries()].sort().map(([key, points]) => {
      const verdict = verdicts.find((v) => groupKey(v) === key);
      const card = section(key, verdictLine(verdict),
        el("div", { class: "charts" },
          el("figure", {}, el("figcaption", {}, "Share of features drifted per window"),
            ...shareChart(points)),
          el("figure", {}, el("figcaption", {}, `Most-drifted features (top ${TOP_FEATURES})`),
            ...featureChart(points))));
      card.dataset.cohort = points[0].cohort;
      card.dataset.model = points[0].model;
      card.classList.add("drift-group");
      return card;
    }));
  }

  modelSelect.addEventListener("change", draw);
  return async function refresh() {
    const [series, verdicts] = await Promise.all([
      get(`/drift/series?limit=${SERIES_LIMIT}`), get("/drift/status"),
    ]);
    latest = { series, verdicts };
    const models = [...new Set(series.map((p) => p.model))].sort();
    const chosen = modelSelect.value;
    replace(modelSelect, el("option", { value: "" }, "all models"),
      models.map((m) => el("option", { value: m, selected: m === chosen }, m)));
    draw();
  };
}
