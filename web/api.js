// Helpers shared by the pages: API calls that surface the server's JSON
// errors, the participant tokens kept in localStorage, the status region.

export class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

/** Calls the API; resolves to the parsed JSON body, or throws an ApiError
 * carrying the server's `error.code` and `error.message`. */
export async function api(method, path, { token, body } = {}) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new ApiError(0, "network", "The server cannot be reached. Check your connection and try again.");
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!res.ok) {
    const err = data && data.error ? data.error : { code: `http_${res.status}`, message: text || res.statusText };
    throw new ApiError(res.status, err.code, err.message, res.headers.get("Retry-After"));
  }
  return data;
}

export const tokens = {
  get: (space) => localStorage.getItem(`amphi.token.${space}`),
  set: (space, t) => localStorage.setItem(`amphi.token.${space}`, t),
  drop: (space) => localStorage.removeItem(`amphi.token.${space}`),
};

/** Writes to a status region (role=status, aria-live), marking errors. */
export function say(el, text, isError = false) {
  el.textContent = text;
  el.classList.toggle("error", Boolean(isError && text));
}

/** A sentence for the user from any error, with the server's own words. */
export function describe(err) {
  if (err instanceof ApiError) {
    if (err.status === 503) {
      return `${err.message || "The space is full right now"} — try again in ${err.retryAfter || "a few"} s.`;
    }
    if (err.status === 429) return `${err.message || "Too many requests"} — slow down a moment.`;
    return err.message || `Request failed (${err.status}).`;
  }
  if (err && err.name === "NotAllowedError") {
    return "Microphone access was refused. Allow the microphone for this site to speak.";
  }
  if (err && err.name === "NotFoundError") return "No microphone was found.";
  return String(err && err.message ? err.message : err);
}
