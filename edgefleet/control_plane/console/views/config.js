// Remote configuration: the fleet's values, and per device the desired version, what it
// reported, what it refused and why, and what waits for its restart. Read-only: changes
// go through `edgefleet config set` or PATCH /api/v1/config/..., which audit them.

import { get, has } from "../api.js";
import { ago, el, pill, replace, section, table } from "../util.js";

export const title = "Configuration";
export const pollMs = 5000;

function values(object) {
  const entries = Object.entries(object ?? {});
  if (!entries.length) return "—";
  return el("span", { class: "tags" },
    entries.map(([k, v]) => el("span", { class: "tag mono" }, `${k}=${JSON.stringify(v)}`)));
}

function refusals(view) {
  const entries = Object.entries(view.refused ?? {});
  if (!entries.length) return "—";
  return el("ul", { class: "reasons" }, entries.map(([k, why]) => el("li", {}, `${k}: ${why}`)));
}

export function mount(root) {
  const fleet = el("div");
  const body = el("div");
  root.append(el("h1", {}, "Configuration"), section("Fleet values", fleet),
    section("Devices: desired and reported", body));
  return async function refresh() {
    if (!has("/config/devices")) {
      replace(body, el("p", { class: "empty" },
        "This control plane does not manage device configuration yet."));
      return;
    }
    const [scope, devices] = await Promise.all([get("/config/fleet"), get("/config/devices")]);
    replace(fleet, el("p", {}, `version ${scope.version} `), values(scope.settings));
    const columns = [
      { label: "Device", class: "mono", cell: (d) => d.device_id },
      { label: "Desired", class: "num", cell: (d) => d.desired_version || "—" },
      { label: "Applied", class: "num", cell: (d) => d.applied_version ?? "—" },
      { label: "State", cell: (d) => pill(d.in_sync ? "in_sync"
        : d.reported_version === null ? "not_reported" : "differs") },
      { label: "Effective values", cell: (d) => values(d.desired) },
      { label: "Refused", cell: refusals },
      { label: "At restart", cell: (d) => (d.pending_restart?.length ? d.pending_restart.join(", ") : "—") },
      { label: "Reported", cell: (d) => el("span", { title: d.reported_at ?? "" }, ago(d.reported_at)) },
    ];
    replace(body, table(columns, devices.filter((d) => d.desired_version || d.reported_version), {
      empty: "No configuration is set for any device. `edgefleet config set --fleet key=value` sets one.",
      rowAttrs: (d) => ({ dataset: { device: d.device_id } }),
    }));
  };
}
