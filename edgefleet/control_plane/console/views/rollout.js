// One rollout: its waves with gate values against thresholds, its devices, its
// history from the audit log, and the operator actions its state allows.

import { get, has, post } from "../api.js";
import { ago, el, number, pill, replace, section, short, table, time } from "../util.js";

export const title = "Rollout";
export const pollMs = 2000;

// Shown by their own panels; anything else the API adds lands under "Details".
const SHOWN = new Set(["id", "bundle_id", "state", "counts", "devices", "created_at",
  "updated_at", "wave_status", "wave", "wave_count", "phase", "gates"]);

// Which action the API accepts in which rollout state (edgefleet/states/rollout.py).
const ACTIONS = [
  { verb: "start", label: "Start", states: ["draft"] },
  { verb: "pause", label: "Pause", states: ["in_progress"] },
  { verb: "resume", label: "Resume", states: ["paused"] },
  { verb: "promote", label: "Promote wave", states: ["in_progress", "paused"],
    phase: "awaiting_promotion" },
  { verb: "retry", label: "Retry failed / timed out", states: ["in_progress", "paused", "failed"],
    when: (r) => (r.counts?.failed ?? 0) + (r.counts?.timed_out ?? 0) > 0 },
  { verb: "abort", label: "Abort", danger: true, states: ["draft", "in_progress", "paused"] },
  { verb: "rollback", label: "Roll back", danger: true,
    states: ["in_progress", "paused", "complete", "aborted", "failed"] },
];

export function scalar(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "number") return Number.isInteger(value) ? value : number(value, 3);
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (typeof value === "string" && /^\d{4}-\d\d-\d\dT/.test(value)) return time(value);
  if (Array.isArray(value) && value.every((v) => typeof v !== "object")) return value.join(", ");
  if (typeof value === "object") {
    const entries = Object.entries(value).filter(([, v]) => v !== null && v !== undefined);
    if (!entries.length) return "—";
    const compact = (v) => JSON.stringify(v, (_k, x) => (x === null ? undefined : x));
    return el("code", {}, entries.map(([k, v]) => `${k}=${typeof v === "object"
      ? compact(v) : v}`).join("  "));
  }
  return String(value);
}

function actionAvailable(verb) {
  return has("/rollouts/{rollout_id}/{action}", "post") || has(`/rollouts/{rollout_id}/${verb}`, "post");
}

// Gates: a list of {name, value, threshold, ok, detail} (or a {name: {...}} map).
function gatesTable(gates) {
  const rows = Array.isArray(gates)
    ? gates
    : Object.entries(gates ?? {}).map(([name, g]) => ({ name, ...(typeof g === "object" ? g : { value: g }) }));
  return table([
    { label: "Gate", cell: (g) => g.name.replaceAll("_", " ") },
    { label: "Value", class: "num", cell: (g) => scalar(g.value) },
    { label: "Threshold", class: "num", cell: (g) => scalar(g.threshold) },
    { label: "", cell: (g) => (g.ok === undefined ? "" : pill(g.ok ? "passed" : "breached")) },
    { label: "Detail", cell: (g) => g.detail ?? "" },
  ], rows, { empty: "No gates measured for this wave yet." });
}

function wavesView(rollout) {
  const waves = rollout.wave_status ?? [];
  return el("ol", { class: "waves" }, waves.map((w, i) => el("li", {
    class: `wave${w.wave === rollout.wave ? " current" : ""}`, dataset: { wave: w.wave ?? i + 1 },
  },
  el("div", { class: "wave-head" },
    el("strong", {}, `Wave ${w.wave ?? i + 1}`), " ", pill(w.state),
    el("span", { class: "muted small" }, ` ${w.size ?? "?"} device(s)`,
      Object.entries(w.counts ?? {}).map(([s, n]) => ` · ${n} ${s.replaceAll("_", " ")}`),
      w.soak_until && w.state === "soaking" ? ` · soaks until ${time(w.soak_until)}` : "",
      w.deadline ? ` · installs end by ${time(w.deadline)}` : "")),
  (w.gates ?? []).length ? gatesTable(w.gates) : "")));
}

export function auditList(entries) {
  return table([
    { label: "When", cell: (e) => el("span", { title: e.ts ?? "" }, time(e.ts ?? e.at ?? e.created_at)) },
    { label: "Who", cell: (e) => e.actor ?? e.who ?? e.by ?? "—" },
    { label: "Action", cell: (e) => el("code", {}, e.action ?? "—") },
    { label: "Rollout", class: "num", cell: (e) => (e.rollout_id ? el("a", {
      href: `#/rollouts/${e.rollout_id}` }, `#${e.rollout_id}`) : "—") },
    { label: "Target", class: "mono", cell: (e) => (e.target ? short(e.target, 40) : "—") },
    { label: "Reason", class: "wrap", cell: (e) => e.reason ?? "" },
    { label: "Detail", class: "wrap", cell: (e) => scalar(e.detail) },
  ], entries, { empty: "No entries yet.", rowAttrs: (e) => ({ dataset: { action: e.action } }) });
}

export function mount(root, { params, onError, refreshNow }) {
  const id = Number(params[0]);
  const head = el("div", { class: "rollout-head" });
  const actions = el("div", { class: "actions", id: "rollout-actions" });
  const waves = el("div");
  const devices = el("div");
  const details = el("div");
  const history = el("div");
  root.append(el("p", { class: "crumb" }, el("a", { href: "#/rollouts" }, "← all rollouts")),
    head, actions, waves, section("Devices", devices), details, history);

  async function act(action) {
    if (action.danger && !window.confirm(`${action.label} rollout #${id}?`)) return;
    try {
      await post(`/rollouts/${id}/${action.verb}`, { reason: `${action.verb} from the console` });
      await refreshNow();
    } catch (error) {
      onError(error);
    }
  }

  return async function refresh() {
    const [rollout, audit] = await Promise.all([
      get(`/rollouts/${id}`),
      has("/audit") ? get(`/audit?rollout_id=${id}&limit=100`) : Promise.resolve(null),
    ]);
    replace(head, el("h1", {}, `Rollout #${rollout.id} `, pill(rollout.state)),
      el("dl", { class: "kv inline" },
        el("dt", {}, "bundle"), el("dd", { class: "mono", title: rollout.bundle_id }, short(rollout.bundle_id, 48)),
        rollout.wave_count ? [el("dt", {}, "wave"), el("dd", {}, `${rollout.wave} of ${rollout.wave_count}`)] : "",
        rollout.phase && rollout.phase !== "done" ? [el("dt", {}, "phase"), el("dd", {}, rollout.phase.replaceAll("_", " "))] : "",
        el("dt", {}, "started"), el("dd", {}, time(rollout.created_at)),
        el("dt", {}, "updated"), el("dd", {}, ago(rollout.updated_at)),
        Object.entries(rollout.counts ?? {}).map(([state, n]) => [el("dt", {}, state.replaceAll("_", " ")), el("dd", {}, n)])));
    replace(actions, ACTIONS
      .filter((a) => actionAvailable(a.verb) && a.states.includes(rollout.state))
      .filter((a) => !a.phase || a.phase === rollout.phase)
      .filter((a) => !a.when || a.when(rollout))
      .map((a) => el("button", { type: "button", class: a.danger ? "danger" : "primary",
        dataset: { action: a.verb }, onclick: () => act(a) }, a.label)));
    const hasWaves = Array.isArray(rollout.wave_status) && rollout.wave_status.length;
    replace(waves, hasWaves ? section("Waves", wavesView(rollout)) : "");
    const showWave = (rollout.wave_count ?? 1) > 1;
    replace(devices, table([
      { label: "Device", class: "mono", cell: (d) => d.device_id },
      showWave && { label: "Wave", class: "num", cell: (d) => (d.wave ?? 0) + 1 },
      { label: "State", cell: (d) => [pill(d.state), d.timed_out_in
        ? el("span", { class: "muted small" }, ` in ${d.timed_out_in.replaceAll("_", " ")}`
          + (d.late_state ? `, later ${d.late_state.replaceAll("_", " ")}` : "")) : ""] },
      { label: "Deadline", cell: (d) => (d.clock_paused ? "paused (offline)"
        : d.deadline_at ? time(d.deadline_at) : "—") },
      { label: "Install time", class: "num", cell: (d) => (d.install_seconds == null ? "—"
        : `${number(d.install_seconds, 2)} s`) },
      { label: "Reason", class: "wrap", cell: (d) => d.reason ?? "" },
      { label: "Updated", cell: (d) => ago(d.updated_at) },
    ].filter(Boolean), rollout.devices ?? [], { rowAttrs: (d) => ({ dataset: { device: d.device_id } }) }));
    const extra = Object.entries(rollout).filter(([k, v]) => !SHOWN.has(k) && v !== null && v !== "");
    if (rollout.gates && !Array.isArray(rollout.gates)) extra.push(["gate thresholds", rollout.gates]);
    replace(details, extra.length ? section("Details", el("dl", { class: "kv" },
      extra.map(([k, v]) => [el("dt", {}, k.replaceAll("_", " ")), el("dd", {}, scalar(v))]))) : "");
    replace(history, audit ? section("History", auditList(audit)) : "");
  };
}
