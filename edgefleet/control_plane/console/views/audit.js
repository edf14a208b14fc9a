// The audit log (who did what to the fleet), when the control plane has one.

import { get, has } from "../api.js";
import { auditList } from "./rollout.js";
import { el, replace, section } from "../util.js";

export const title = "Audit log";
export const pollMs = 5000;

export function mount(root) {
  const body = el("div");
  root.append(el("h1", {}, "Audit log"), section("Entries, newest first", body));
  return async function refresh() {
    if (!has("/audit")) {
      replace(body, el("p", { class: "empty" },
        "This control plane does not keep an audit log yet."));
      return;
    }
    const payload = await get("/audit");
    const entries = Array.isArray(payload) ? payload : payload?.entries ?? payload?.items ?? [];
    replace(body, auditList(entries));
  };
}
