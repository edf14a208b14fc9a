// A/B experiments: each one's arms, the sequential test's numbers per metric (the
// deciding metric marked), the decision and the winner's rollout. A running experiment
// can be stopped here (operator role, like `edgefleet experiment stop`).

import { get, has, post } from "../api.js";
import { ago, el, number, pill, replace, section, table } from "../util.js";

export const title = "Experiments";
export const pollMs = 4000;

function arms(experiment) {
  return el("span", {}, ...experiment.arms.map((arm) => el("div", {},
    `${arm.arm}: ${arm.bundle_id} · ${arm.devices.length} devices `,
    ...arm.rollout_ids.map((id) => el("a", { href: `#/rollouts/${id}` }, `#${id} `)))));
}

function numbers(experiment) {
  const rows = Object.entries(experiment.results ?? {}).map(([metric, r]) => ({ metric, ...r }));
  return table([
    { label: "Metric", cell: (r) => (r.metric === experiment.metric ? `${r.metric} *` : r.metric) },
    { label: "A", class: "num", cell: (r) => `${number(r.mean_a, 4)} (n=${r.n_a})` },
    { label: "B", class: "num", cell: (r) => `${number(r.mean_b, 4)} (n=${r.n_b})` },
    { label: "Evidence", class: "num",
      cell: (r) => `${number(r.likelihood_ratio, 3)} / ${number(1 / r.alpha, 3)}` },
    { label: "Verdict", cell: (r) => pill(r.significant ? "significant" : "collecting") },
  ], rows, { empty: "No telemetry from the cohort yet." });
}

export function mount(root, { onError, refreshNow }) {
  const body = el("div");
  root.append(el("h1", {}, "A/B experiments"), section("Experiments", body));

  async function stop(experiment) {
    try {
      await post(`/experiments/${experiment.id}/stop`, { reason: "stopped in the console" });
      await refreshNow();
    } catch (error) {
      onError(error);
    }
  }

  return async function refresh() {
    if (!has("/experiments")) {
      replace(body, el("p", { class: "empty" }, "This control plane has no experiments API."));
      return;
    }
    const experiments = await get("/experiments");
    replace(body, table([
      { label: "#", class: "num", cell: (e) => e.id },
      { label: "Name", cell: (e) => `${e.name} (${e.model})` },
      { label: "State", cell: (e) => pill(e.state) },
      { label: "Mode", cell: (e) => `${e.mode} · B ${number(e.share_b * 100, 0)} %` },
      { label: "Arms", cell: arms },
      { label: "Numbers", cell: numbers },
      { label: "Decision", class: "wrap", cell: (e) => e.reason || "—" },
      { label: "Promotion", cell: (e) => (e.promotion_rollout_id
        ? el("a", { href: `#/rollouts/${e.promotion_rollout_id}` }, `#${e.promotion_rollout_id}`)
        : "—") },
      { label: "Started", cell: (e) => ago(e.started_at) },
      { label: "", cell: (e) => (e.state === "running" ? el("button", { type: "button",
        class: "danger", dataset: { action: "stop" }, onclick: () => stop(e) }, "Stop") : "") },
    ], [...experiments].reverse(), {
      empty: "No experiments. Start one with `edgefleet experiment create`.",
      rowAttrs: (e) => ({ dataset: { experiment: e.id } }),
    }));
  };
}
