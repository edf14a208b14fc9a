// Rollouts: start one (bundle + devices) and follow them all.

import { accepts, get, post } from "../api.js";
import { ago, el, pill, replace, section, short, table } from "../util.js";

export const title = "Rollouts";
export const pollMs = 3000;

function progress(rollout) {
  const total = rollout.devices?.length ?? 0;
  const active = rollout.counts?.active ?? 0;
  const failed = rollout.counts?.failed ?? 0;
  const pct = (n) => (total ? `${(100 * n) / total}%` : "0%");
  return el("div", { class: "progress", title: `${active} active, ${failed} failed of ${total}` },
    el("span", { class: "bar good", style: `width:${pct(active)}` }),
    el("span", { class: "bar bad", style: `width:${pct(failed)}` }),
    el("span", { class: "progress-label" }, `${active}/${total}`));
}

// Waves, soak, mode and gates, offered when this control plane's API accepts them.
function waveOptions() {
  const fields = [];
  const input = (name, attrs) => el("input", { name, id: `rollout-${name}`, ...attrs });
  if (accepts("RolloutCreate", "waves")) {
    fields.push(["Waves (cumulative)", input("waves", { value: "100%", placeholder: "1, 50%, 100%" }),
      (v) => ({ waves: v.split(",").map((w) => w.trim()).filter(Boolean)
        .map((w) => (/^\d+$/.test(w) ? Number(w) : w)) })]);
  }
  if (accepts("RolloutCreate", "soak_seconds")) {
    fields.push(["Soak per wave (s)", input("soak", { type: "number", min: 0, value: 0 }),
      (v) => ({ soak_seconds: Number(v || 0) })]);
  }
  if (accepts("RolloutCreate", "mode")) {
    const select = el("select", { name: "mode", id: "rollout-mode" },
      el("option", { value: "automatic" }, "automatic: next wave when gates pass"),
      el("option", { value: "manual" }, "manual: wait for promote"));
    fields.push(["Promotion", select, (v) => ({ mode: v })]);
  }
  if (accepts("RolloutCreate", "gates")) {
    fields.push(["Max install failure rate", input("max-install-failure", {
      type: "number", min: 0, max: 1, step: 0.01, placeholder: "off" }),
    (v) => (v === "" ? {} : { gates: { max_install_failure_rate: Number(v) } })]);
  }
  const node = fields.length ? el("details", { class: "advanced" },
    el("summary", {}, "Waves and gates"),
    el("div", { class: "stack" }, fields.map(([label, control]) =>
      el("label", { class: "field" }, el("span", {}, label), control)))) : "";
  return {
    node,
    values: () => Object.assign({}, ...fields.map(([, control, read]) => read(control.value))),
  };
}

function newRolloutForm(onError) {
  const bundleSelect = el("select", { name: "bundle", id: "rollout-bundle", required: true });
  const deviceBox = el("div", { class: "checks", id: "rollout-devices" });
  const status = el("span", { class: "form-status" });
  let bundles = [];
  let devices = [];

  function drawDevices() {
    const bundle = bundles.find((b) => b.id === bundleSelect.value);
    const eligible = devices.filter((d) => bundle && d.profile === bundle.profile);
    if (!bundle) return replace(deviceBox, el("p", { class: "empty" }, "Build a bundle first."));
    if (!eligible.length) {
      return replace(deviceBox,
        el("p", { class: "empty" }, `No device runs profile ${bundle.profile}.`));
    }
    return replace(deviceBox, eligible.map((d) => el("label", { class: "check" },
      el("input", { type: "checkbox", name: "device", value: d.id }),
      el("span", { class: "mono" }, d.id), " ", pill(d.online ? "online" : "offline"),
      d.bundle_id ? el("span", { class: "muted small" }, ` runs ${short(d.bundle_id, 28)}`) : "")));
  }

  async function load() {
    [bundles, devices] = await Promise.all([get("/bundles"), get("/devices")]);
    const chosen = bundleSelect.value;
    replace(bundleSelect, el("option", { value: "" }, "— choose a bundle —"),
      [...bundles].reverse().map((b) => el("option", { value: b.id, selected: b.id === chosen },
        `${b.model} v${b.model_version} · ${b.profile} · release ${b.release}`)));
    drawDevices();
  }

  bundleSelect.addEventListener("change", drawDevices);
  const options = waveOptions();
  const form = el("form", { class: "stack", id: "new-rollout" },
    el("label", { class: "field" }, el("span", {}, "Bundle"), bundleSelect),
    el("div", { class: "field" }, el("span", {}, "Devices (same profile as the bundle)"), deviceBox),
    options.node,
    el("div", { class: "actions" },
      el("button", { type: "submit", class: "primary", id: "start-rollout" }, "Start rollout"),
      status));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const deviceIds = [...deviceBox.querySelectorAll("input[name=device]:checked")]
      .map((i) => i.value);
    if (!bundleSelect.value || !deviceIds.length) {
      status.textContent = "Choose a bundle and at least one device.";
      return;
    }
    status.textContent = "Starting…";
    try {
      const rollout = await post("/rollouts", {
        bundle_id: bundleSelect.value, device_ids: deviceIds, ...options.values(),
      });
      status.textContent = "";
      window.location.hash = `#/rollouts/${rollout.id}`;
    } catch (error) {
      status.textContent = "";
      onError(error);
    }
  });
  return { form, load };
}

export function mount(root, { onError }) {
  const list = el("div");
  const { form, load } = newRolloutForm(onError);
  root.append(el("h1", {}, "Rollouts"),
    el("div", { class: "columns" },
      section("New rollout", form),
      section("All rollouts", list)));
  let formLoaded = false;

  return async function refresh() {
    if (!formLoaded) {
      await load();
      formLoaded = true;
    }
    const rollouts = await get("/rollouts");
    replace(list, table([
      { label: "#", class: "num", cell: (r) => el("a", { href: `#/rollouts/${r.id}` }, r.id) },
      { label: "Bundle", class: "mono", cell: (r) => el("span", { title: r.bundle_id },
        short(r.bundle_id, 30)) },
      { label: "State", cell: (r) => pill(r.state) },
      { label: "Progress", cell: progress },
      { label: "Updated", cell: (r) => ago(r.updated_at) },
    ], [...rollouts].reverse(), {
      empty: "No rollouts yet.",
      rowAttrs: (r) => ({ dataset: { rollout: r.id } }),
    }));
  };
}
