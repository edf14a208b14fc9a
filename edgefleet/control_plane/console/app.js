// The console shell: hash routes to views, polling, the token form and the error banner.
// Each view's ``mount`` builds its page once and returns a ``refresh`` that redraws
// the live parts; the shell calls it on a timer while the view is on screen.

import { ApiError, get, getToken, loadRoutes, setToken } from "./api.js";
import * as audit from "./views/audit.js";
import * as config from "./views/config.js";
import * as drift from "./views/drift.js";
import * as experiments from "./views/experiments.js";
import * as fleet from "./views/fleet.js";
import * as retraining from "./views/retraining.js";
import * as rollout from "./views/rollout.js";
import * as rollouts from "./views/rollouts.js";
import { replace } from "./util.js";

const ROUTES = [
  [/^\/fleet$/, fleet, "fleet"],
  [/^\/rollouts$/, rollouts, "rollouts"],
  [/^\/rollouts\/(\d+)$/, rollout, "rollouts"],
  [/^\/experiments$/, experiments, "experiments"],
  [/^\/drift$/, drift, "drift"],
  [/^\/retraining$/, retraining, "retraining"],
  [/^\/config$/, config, "config"],
  [/^\/audit$/, audit, "audit"],
];

const viewRoot = document.getElementById("view");
const banner = document.getElementById("banner");
const brokerPill = document.getElementById("broker");
const tokenForm = document.getElementById("token-form");
const tokenInput = document.getElementById("token");
const signOut = document.getElementById("sign-out");

let current = null; // {refresh, timer, generation}
let generation = 0;

function showError(error) {
  let text = error.message ?? String(error);
  if (error instanceof ApiError && error.status === 401) {
    text = "This control plane needs an API token: paste one above "
      + "(viewer reads; operator starts rollouts and decides retraining).";
  } else if (error instanceof ApiError && error.status === 403) {
    text = `Your token may not do that: ${error.detail}`;
  }
  banner.textContent = text;
  banner.hidden = false;
}

function clearError() {
  banner.hidden = true;
  banner.textContent = "";
}

async function runRefresh(mine) {
  if (!current || current.generation !== mine) return;
  try {
    await current.refresh();
    if (current?.generation === mine) {
      clearError();
      document.body.dataset.loaded = current.name;
    }
  } catch (error) {
    if (current?.generation === mine) showError(error);
  }
}

function schedule(mine) {
  if (!current || current.generation !== mine) return;
  current.timer = setTimeout(async () => {
    await runRefresh(mine);
    schedule(mine);
  }, current.pollMs);
}

function route() {
  const path = window.location.hash.replace(/^#/, "") || "/fleet";
  const match = ROUTES.map(([re, view, nav]) => [path.match(re), view, nav]).find(([m]) => m);
  if (!match) {
    window.location.hash = "#/fleet";
    return;
  }
  const [found, view, nav] = match;
  if (current) clearTimeout(current.timer);
  generation += 1;
  const mine = generation;
  delete document.body.dataset.loaded;
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("active", link.dataset.view === nav);
  }
  document.title = `${view.title} · edgefleet console`;
  replace(viewRoot);
  const refresh = view.mount(viewRoot, {
    params: found.slice(1),
    onError: showError,
    refreshNow: () => runRefresh(mine),
  });
  current = { refresh, timer: null, generation: mine, pollMs: view.pollMs ?? 3000, name: nav };
  runRefresh(mine).then(() => schedule(mine));
}

async function watchHealth() {
  try {
    const health = await get("/health");
    brokerPill.textContent = health.broker_connected ? "broker connected" : "broker down";
    brokerPill.className = `pill ${health.broker_connected ? "good" : "bad"}`;
  } catch {
    brokerPill.textContent = "control plane unreachable";
    brokerPill.className = "pill bad";
  }
  setTimeout(watchHealth, 5000);
}

function showTokenState() {
  const has = Boolean(getToken());
  tokenInput.placeholder = has ? "token set (paste to replace)" : "API token (eft_…)";
  signOut.hidden = !has;
}

tokenForm.addEventListener("submit", (event) => {
  event.preventDefault();
  setToken(tokenInput.value.trim());
  tokenInput.value = "";
  showTokenState();
  route();
});
signOut.addEventListener("click", () => {
  setToken("");
  showTokenState();
  route();
});
window.addEventListener("hashchange", route);

showTokenState();
await loadRoutes();
watchHealth();
route();
