// The console's only way to the control plane: the same /api/v1 routes, tokens and
// roles as the CLI. The token lives in this browser's localStorage, nowhere else.

const BASE = new URL("../api/v1", document.baseURI).pathname;
const TOKEN_KEY = "edgefleet.token";

export class ApiError extends Error {
  constructor(status, detail) {
    super(status ? `${status}: ${detail}` : detail);
    this.status = status;
    this.detail = detail;
  }
}

export function getToken() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(token) {
  if (token) localStorage.setItem(TOKEN_KEY, token);
  else localStorage.removeItem(TOKEN_KEY);
}

export async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(BASE + path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    throw new ApiError(0, `control plane unreachable (${error.message})`);
  }
  const text = await response.text();
  let payload = null;
  try {
    payload = text ? JSON.parse(text) : null;
  } catch {
    payload = text;
  }
  if (!response.ok) {
    const detail = payload && typeof payload === "object" ? payload.detail : payload;
    throw new ApiError(response.status,
      typeof detail === "string" ? detail : JSON.stringify(detail ?? response.statusText));
  }
  return payload;
}

export const get = (path) => call("GET", path);
export const post = (path, body = {}) => call("POST", path, body);

// Which routes this control plane has, from its OpenAPI document (served without a
// token). Views for features still being built elsewhere (audit, rollout waves and
// their actions) appear when the route does.
let routes = null;
let schemas = {};

export async function loadRoutes() {
  try {
    const response = await fetch(`${BASE}/openapi.json`);
    const doc = await response.json();
    routes = new Map(Object.entries(doc.paths ?? {}).map(([p, ops]) => [p, Object.keys(ops)]));
    schemas = doc.components?.schemas ?? {};
  } catch {
    routes = new Map();
  }
  return routes;
}

export function has(path, method = "get") {
  const methods = routes?.get(BASE + path);
  return Boolean(methods && methods.includes(method));
}

// Whether a request body the API accepts has a field (``RolloutCreate.waves`` ...).
export function accepts(schema, field) {
  return Boolean(schemas[schema]?.properties?.[field]);
}
