// DOM and formatting helpers. Everything the API returns is put into the page as
// text nodes, never as HTML, so a device id or a failure reason cannot inject markup.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

export function ago(iso) {
  if (!iso) return "never";
  const seconds = Math.round((Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 5) return "just now";
  if (seconds < 90) return `${seconds} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 129600) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} d ago`;
}

// Local time as "2026-11-23 10:25:18": sortable, and narrow enough for a table cell.
export function time(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  const two = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} `
    + `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
}

export function short(id, keep = 22) {
  const text = String(id ?? "");
  return text.length > keep ? `${text.slice(0, keep - 1)}…` : text;
}

export function number(value, digits = 2) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "—";
}

// A state word as a coloured pill; the colour follows what the state means.
const TONE = {
  online: "good", active: "good", complete: "good", approved: "good", rolled_out: "good",
  passed: "good", ok: "good", stable: "good", committed: "good",
  offline: "bad", failed: "bad", aborted: "bad", rejected: "bad", breached: "bad",
  rolled_back: "bad", drifting: "bad",
  in_progress: "busy", downloading: "busy", verified: "busy", staged: "busy", running: "busy",
  smoke_tested: "busy", installing: "busy", soaking: "busy", rolling_back: "busy",
  shadowing: "busy",
  offered: "wait", deferred: "wait", armed: "wait", paused: "wait", pending_approval: "wait", awaiting_model: "wait",
  pending: "wait", draft: "wait", awaiting_promotion: "wait", waiting_offline: "wait",
};

export function pill(state) {
  const word = String(state ?? "unknown");
  return el("span", { class: `pill ${TONE[word] ?? "muted"}`, dataset: { state: word } },
    word.replaceAll("_", " "));
}

export function table(columns, rows, { empty = "Nothing here yet.", rowAttrs } = {}) {
  if (!rows.length) return el("p", { class: "empty" }, empty);
  return el("table", { class: "grid" },
    el("thead", {}, el("tr", {}, columns.map((c) => el("th", { class: c.class }, c.label)))),
    el("tbody", {}, rows.map((row) => el("tr", rowAttrs ? rowAttrs(row) : {},
      columns.map((c) => el("td", { class: c.class }, c.cell(row)))))));
}

export function section(title, ...children) {
  return el("section", { class: "card" }, el("h2", {}, title), ...children);
}
