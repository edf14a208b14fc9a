// Retraining requests from the drift loop; the ones the model's policy holds for a
// person can be approved or rejected here (operator role, like the CLI).

import { get, has, post } from "../api.js";
import { ago, el, pill, replace, section, table } from "../util.js";

export const title = "Retraining";
export const pollMs = 4000;

export function mount(root, { onError, refreshNow }) {
  const body = el("div");
  root.append(el("h1", {}, "Retraining requests"), section("Requests", body));

  async function decide(request, approve) {
    try {
      const payload = approve ? {}
        : { reason: "rejected in the console" };
      await post(`/retraining/${request.id}/${approve ? "approve" : "reject"}`, payload);
      await refreshNow();
    } catch (error) {
      onError(error);
    }
  }

  return async function refresh() {
    if (!has("/retraining")) {
      replace(body, el("p", { class: "empty" }, "This control plane has no retraining API."));
      return;
    }
    const requests = await get("/retraining");
    replace(body, table([
      { label: "#", class: "num", cell: (r) => r.id },
      { label: "Model", cell: (r) => `${r.model} v${r.from_version}${r.new_version ? ` → v${r.new_version}` : ""}` },
      { label: "Cohort", cell: (r) => r.cohort ?? "—" },
      { label: "Trigger", cell: (r) => r.trigger },
      { label: "State", cell: (r) => pill(r.state) },
      { label: "Reason", class: "wrap", cell: (r) => r.reason || "—" },
      { label: "Rollout", cell: (r) => (r.rollout_id ? el("a", { href: `#/rollouts/${r.rollout_id}` },
        `#${r.rollout_id}`) : "—") },
      { label: "Decided by", cell: (r) => r.decided_by ?? "—" },
      { label: "Opened", cell: (r) => ago(r.created_at) },
      { label: "", cell: (r) => (r.state === "pending_approval" ? el("span", { class: "actions" },
        el("button", { type: "button", class: "primary", dataset: { action: "approve" },
          onclick: () => decide(r, true) }, "Approve"),
        el("button", { type: "button", class: "danger", dataset: { action: "reject" },
          onclick: () => decide(r, false) }, "Reject")) : "") },
    ], [...requests].reverse(), {
      empty: "No retraining requests. The drift loop opens one when a cohort drifts.",
      rowAttrs: (r) => ({ dataset: { request: r.id } }),
    }));
  };
}
