// What every browser script shares: headless Chromium launched the same
// way, polling until a condition holds, and the web app's tone probe.
import { chromium } from "playwright-core";

/** Launches headless Chromium. `wav`, when given, is the fake microphone
 * (the page's getUserMedia plays that file); `exe` is the executable (a
 * network-namespace wrapper in scripts/e2e-netns); `extra` are more flags. */
export function launch({ wav = null, exe = process.env.CHROMIUM || "/usr/bin/chromium", extra = [] } = {}) {
  return chromium.launch({
    executablePath: exe,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--autoplay-policy=no-user-gesture-required",
      ...(wav
        ? ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
          `--use-file-for-fake-audio-capture=${wav}`]
        : []),
      ...extra,
    ],
  });
}

/** Polls `fn` every `every` ms until it returns something truthy (which is
 * returned), or throws after `ms` with the last value seen. */
export async function until(what, fn, ms = 15000, every = 250) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    last = await fn();
    if (last) return last;
    await new Promise((r) => setTimeout(r, every));
  }
  throw new Error(`timed out: ${what} (last: ${JSON.stringify(last)})`);
}

export function check(cond, what) {
  if (!cond) throw new Error(what);
}

/** The levels (dB) of 440 Hz and 880 Hz in what the page's player outputs. */
export const probe = (p) => p.evaluate(() => window.amphi.toneProbe([440, 880]));
/** A tone above -60 dB is heard. */
export const heard = (db) => db > -60;

/** The web app's own flow for a listener: open the space's link, join
 * with a name, press listen. */
export async function joinAndListen(p, link, name) {
  await p.goto(link);
  await p.fill("[data-testid=join-name]", name);
  await p.click("[data-testid=join]");
  await p.click("[data-testid=listen]");
}

/** The lobby's own flow for a host: create a space with the admin token;
 * returns the space page's link (a path). */
export async function createSpace(p, base, admin, title, hostName) {
  await p.goto(base + "/");
  await p.fill("[data-testid=admin-token]", admin);
  await p.fill("[data-testid=title]", title);
  await p.fill("[data-testid=host-name]", hostName);
  await p.click("[data-testid=create]");
  return (await p.waitForSelector("[data-testid=space-link]")).getAttribute("href");
}

/** Calls the node's JSON API from the script (not a page): `base` + `path`,
 * a bearer `token` and a JSON `body` when given. Throws on a non-2xx. */
export async function api(base, method, path, token, body) {
  const res = await fetch(`${base}${path}`, {
    method,
    headers: {
      ...(token ? { authorization: `Bearer ${token}` } : {}),
      ...(body ? { "content-type": "application/json" } : {}),
    },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
  return text ? JSON.parse(text) : null;
}
