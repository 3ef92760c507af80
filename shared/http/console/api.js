// The API client of the console: every call carries the key as a bearer token; the key lives in
// sessionStorage only (this tab, until it closes), never in a URL, a cookie or a log.

const KEY = 'opscore.apiKey';

export const auth = {
  get: () => sessionStorage.getItem(KEY),
  set: (key) => sessionStorage.setItem(KEY, key),
  clear: () => sessionStorage.removeItem(KEY),
};

/** An answer other than 2xx: the status and the API's `detail`. */
export class ApiError extends Error {
  constructor(status, detail, code) {
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

const enc = encodeURIComponent;

/** Calls the API on this origin; resolves to the JSON answer, rejects with an ApiError. */
export async function api(path, { method = 'GET', body, key = auth.get(), headers = {} } = {}) {
  const h = { Accept: 'application/json', Authorization: `Bearer ${key}`, ...headers };
  if (body !== undefined) h['Content-Type'] = 'application/json';
  const resp = await fetch(path, {
    method,
    headers: h,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
    credentials: 'omit',
  });
  const text = await resp.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { detail: text.slice(0, 200) };
    }
  }
  if (!resp.ok) throw new ApiError(resp.status, data && data.detail, data && data.code);
  return data;
}

function query(params) {
  const q = Object.entries(params)
    .filter(([, v]) => v !== undefined && v !== null && v !== '')
    .map(([k, v]) => `${enc(k)}=${enc(v)}`)
    .join('&');
  return q ? `?${q}` : '';
}

export const paths = {
  agents: (p = {}) => `/v1/opscore/agents${query(p)}`,
  agent: (id) => `/v1/opscore/agent/${enc(id)}`,
  history: (id, p = {}) => `/v1/opscore/agent/${enc(id)}/state/history${query(p)}`,
  agentSessions: (id, p = {}) => `/v1/opscore/agent/${enc(id)}/sessions${query(p)}`,
  trigger: (id) => `/v1/opscore/agent/${enc(id)}/workflow`,
  sessions: (p = {}) => `/v1/opscore/sessions${query(p)}`,
  session: (id) => `/v1/opscore/sessions/${enc(id)}`,
  cancel: (id) => `/v1/opscore/sessions/${enc(id)}/cancel`,
  workflows: (p = {}) => `/v1/opscore/workflows${query(p)}`,
  workflow: (id, version) => `/v1/opscore/workflows/${enc(id)}${query({ version })}`,
  startRouted: (id) => `/v1/opscore/workflows/${enc(id)}/sessions`,
};

/** Every item of a paginated list, following cursors (at most `maxPages` pages of 100). */
export async function all(pathOf, params = {}, maxPages = 20) {
  const items = [];
  let cursor;
  for (let n = 0; n < maxPages; n += 1) {
    const page = await api(pathOf({ ...params, limit: 100, cursor }));
    items.push(...page.items);
    cursor = page.nextCursor;
    if (!cursor) return { items, complete: true };
  }
  return { items, complete: false };
}
