// Small helpers shared by the pages: API calls with JSON errors, tokens.

export class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

export async function api(method, path, { token, body } = {}) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!res.ok) {
    const err = data && data.error ? data.error : { code: "http_" + res.status, message: text || res.statusText };
    throw new ApiError(res.status, err.code, err.message, res.headers.get("Retry-After"));
  }
  return data;
}

export const tokens = {
  get: (space) => localStorage.getItem(`amphi.token.${space}`),
  set: (space, t) => localStorage.setItem(`amphi.token.${space}`, t),
  drop: (space) => localStorage.removeItem(`amphi.token.${space}`),
};

export function say(el, text, isError = false) {
  el.textContent = text;
  el.classList.toggle("error", isError);
}

export function describe(err) {
  if (err instanceof ApiError) {
    if (err.status === 503) return `${err.message} (retry in ${err.retryAfter || "a few"} s)`;
    return err.message;
  }
  return String(err && err.message ? err.message : err);
}
