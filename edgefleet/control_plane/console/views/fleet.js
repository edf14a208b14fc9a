// Fleet: every device the control plane has heard from, with what it runs.

import { get } from "../api.js";
import { ago, el, pill, replace, section, short, table } from "../util.js";

export const title = "Fleet";
export const pollMs = 3000;

// Device labels/groups are being added elsewhere; show them when the API has them.
function labels(device) {
  const value = device.labels ?? device.groups ?? device.tags;
  if (!value) return "";
  const items = Array.isArray(value)
    ? value.map(String)
    : Object.entries(value).map(([k, v]) => `${k}=${v}`);
  return el("span", { class: "tags" }, items.map((t) => el("span", { class: "tag" }, t)));
}

function tile(label, value, tone = "") {
  return el("div", { class: `tile ${tone}` }, el("div", { class: "tile-value" }, value),
    el("div", { class: "tile-label" }, label));
}

export function mount(root) {
  const tiles = el("div", { class: "tiles" });
  const body = el("div");
  root.append(el("h1", {}, "Fleet"), tiles, section("Devices", body));

  return async function refresh() {
    const [devices, rollouts] = await Promise.all([get("/devices"), get("/rollouts")]);
    const online = devices.filter((d) => d.online).length;
    // A device hosts several models: every bundle it serves is in service.
    const bundles = new Set(devices.flatMap((d) =>
      d.models?.length ? d.models.map((m) => m.bundle_id) : [d.bundle_id]).filter(Boolean));
    const running = rollouts.filter((r) => ["in_progress", "paused"].includes(r.state));
    replace(tiles,
      tile("devices", devices.length),
      tile("online", `${online} / ${devices.length}`, online < devices.length ? "warn" : "ok"),
      tile("bundles in service", bundles.size),
      tile("rollouts in progress", running.length, running.length ? "busy" : ""));
    // Every model the device serves, one line each (a one-model device: one line).
    const modelsCell = (d) => (d.models?.length
      ? el("div", {}, ...d.models.map((m) => el("div", { title: m.bundle_id ?? "" },
        `${m.name} v${m.version ?? "?"} · r${m.release ?? "?"}`)))
      : (d.model ? `${d.model} v${d.model_version}` : "—"));
    const hasLabels = devices.some((d) => Object.keys(d.labels ?? {}).length > 0);
    const columns = [
      { label: "Device", class: "mono", cell: (d) => d.id },
      { label: "Profile", cell: (d) => d.profile ?? "—" },
      hasLabels && { label: "Labels", cell: labels },
      { label: "Status", cell: (d) => pill(d.online ? "online" : "offline") },
      { label: "Active bundle", class: "mono",
        cell: (d) => (d.bundle_id ? el("span", { title: d.bundle_id }, short(d.bundle_id, 34)) : "—") },
      { label: "Models", cell: modelsCell },
      { label: "Release", class: "num", cell: (d) => d.release ?? "—" },
      { label: "Agent", cell: (d) => d.agent_version ?? "—" },
      // The depth the device's status says now (republished as it changes), not the
      // last drop report's.
      { label: "Spool depth", class: "num", cell: (d) => d.spool_depth ?? "—" },
      { label: "Last seen", cell: (d) => el("span", { title: d.last_seen ?? "" }, ago(d.last_seen)) },
    ].filter(Boolean);
    replace(body, table(columns, devices, {
      empty: "No device has reported yet. Start an agent pointed at this control plane's broker.",
      rowAttrs: (d) => ({ dataset: { device: d.id } }),
    }));
  };
}
