// The one place that talks to central's API (/api/v1/, see docs/API-CONTRACT in the briefs and
// /api/v1/openapi.json). Errors arrive as problem+json and are thrown as ApiError.

const TOKEN_KEY = 'vigil.token';

/** An error answer of the API: HTTP status and the problem document. */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

let unauthorized = () => {};

/** Called when a request answers 401 (the session ended): the app shows the login screen. */
export function onUnauthorized(f) { unauthorized = f; }

export function setToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token); else sessionStorage.removeItem(TOKEN_KEY);
}

function url(path, query) {
  const u = new URL(`/api/v1${path}`, location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== '') u.searchParams.set(k, v);
  }
  return u;
}

async function request(method, path, { query, body, raw } = {}) {
  const headers = { Accept: 'application/json' };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let r;
  try {
    r = await fetch(url(path, query), {
      method, headers, credentials: 'same-origin', body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, { title: 'network', detail: String(e.message || e) });
  }
  if (!r.ok) {
    let problem = {};
    try { problem = await r.json(); } catch { problem = { title: r.statusText }; }
    if (r.status === 401 && path !== '/auth/login') unauthorized();
    throw new ApiError(r.status, problem);
  }
  if (raw) return r;
  if (r.status === 204) return null;
  const text = await r.text();
  return text ? JSON.parse(text) : null;
}

export const get = (path, query) => request('GET', path, { query });
export const post = (path, body = {}) => request('POST', path, { body });
export const patch = (path, body = {}) => request('PATCH', path, { body });

/** All items of a paged list (`{items, next_cursor}`), at most `max`. */
export async function getAll(path, query = {}, max = 5000) {
  const out = [];
  let cursor = null;
  do {
    const page = await get(path, { ...query, limit: 1000, cursor });
    const items = page.items || [];
    out.push(...items);
    cursor = page.next_cursor;
  } while (cursor && out.length < max);
  return out;
}

/** Downloads `path` (e.g. `?format=csv`) as a file named `filename`. */
export async function download(path, query, filename) {
  const r = await request('GET', path, { query, raw: true });
  const blob = await r.blob();
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}
