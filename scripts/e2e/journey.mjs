// The browser journey (see scripts/e2e-browser). Exits non-zero on failure.
import { chromium } from "playwright-core";

const { BASE, ADMIN, OUT, WAVS } = process.env;
const errors = [];

async function browser(wav) {
  return chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--autoplay-policy=no-user-gesture-required",
      "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
      `--use-file-for-fake-audio-capture=${wav}`,
      "--allow-loopback-in-peer-connection",
    ],
  });
}

async function page(b, who) {
  const ctx = await b.newContext({ viewport: { width: 420, height: 900 } });
  const p = await ctx.newPage();
  p.on("console", (m) => { if (m.type() === "error") errors.push(`${who}: ${m.text()}`); });
  p.on("pageerror", (e) => errors.push(`${who}: ${e.message}`));
  p.on("dialog", (d) => d.accept());
  p.on("response", (r) => { if (r.status() >= 400) console.error(`${who}: HTTP ${r.status()} ${r.request().method()} ${r.url()}`); });
  return p;
}

async function until(what, fn, ms = 15000) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    last = await fn();
    if (last) return last;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`timed out: ${what} (last: ${JSON.stringify(last)})`);
}

// dB at 440 and 880 Hz in a listener page's program analyser.
const probe = (p) => p.evaluate(() => window.amphi.toneProbe([440, 880]));
const heard = (db) => db > -60;

const hostB = await browser(`${WAVS}/host.wav`);
const guestB = await browser(`${WAVS}/guest.wav`);
try {
  // 1. The host creates a space in the lobby and goes live.
  const host = await page(hostB, "host");
  await host.goto(BASE + "/");
  await host.fill("[data-testid=admin-token]", ADMIN);
  await host.fill("[data-testid=title]", "Browser journey");
  await host.fill("[data-testid=host-name]", "Hana");
  await host.click("[data-testid=create]");
  const link = await (await host.waitForSelector("[data-testid=space-link]")).getAttribute("href");
  await host.goto(link);
  await host.click("[data-testid=go-live]");
  await host.click("[data-testid=mic]");
  await until("host publishing", () => host.evaluate(() => document.getElementById("status").textContent.includes("live on stage")));

  // 2. A listener joins from another browser and hears the host.
  const guest = await page(guestB, "guest");
  await guest.goto(link);
  await guest.fill("[data-testid=join-name]", "Gus");
  await guest.click("[data-testid=join]");
  await guest.click("[data-testid=listen]");
  await until("listener hears 440 Hz", async () => { const [a] = await probe(guest); return heard(a) && a; });

  // 3. Hand up, brought on stage, speaks: a third listener hears both.
  await guest.click("[data-testid=hand]");
  await host.click("[data-testid=accept-Gus]", { timeout: 10000 });
  await guest.click("[data-testid=mic]", { timeout: 10000 });
  const third = await page(hostB, "listener");
  await third.goto(link);
  await third.fill("[data-testid=join-name]", "Lia");
  await third.click("[data-testid=join]");
  await third.click("[data-testid=listen]");
  await until("third listener hears both tones", async () => { const [a, b] = await probe(third); return heard(a) && heard(b) && [a, b]; });

  // 4. The host mutes Gus: 880 Hz leaves the program, 440 stays.
  await host.click("[data-testid=mute-Gus]");
  await until("880 Hz gone after mute", async () => { const [a, b] = await probe(third); return heard(a) && b < -75 && [a, b]; });

  await host.screenshot({ path: `${OUT}/host.png`, fullPage: true });
  await guest.screenshot({ path: `${OUT}/speaker.png`, fullPage: true });
  await third.screenshot({ path: `${OUT}/listener.png`, fullPage: true });

  // 5. The host ends the space: listeners get the replay, which the
  //    browser can load and seek (Range requests on recording.opus).
  await host.click("[data-testid=end]");
  await until("replay offered to the listener", () => third.evaluate(() => !document.getElementById("ended").hidden));
  const duration = await until("replay duration known", () => third.evaluate(async () => {
    const a = document.getElementById("replay");
    if (!a.src) return false;
    a.preload = "metadata";
    a.load();
    await new Promise((r) => { a.onloadedmetadata = r; setTimeout(r, 3000); });
    if (!(a.duration > 1 && Number.isFinite(a.duration))) return false;
    a.currentTime = a.duration / 2;
    await new Promise((r) => { a.onseeked = r; setTimeout(r, 3000); });
    return Math.abs(a.currentTime - a.duration / 2) < 1 && a.duration;
  }));
  console.log(`replay: ${duration.toFixed(1)} s, seekable`);
  await third.screenshot({ path: `${OUT}/replay.png`, fullPage: true });
  if (errors.length) throw new Error("console errors:\n" + errors.join("\n"));
  console.log("browser journey: 1 passed, 0 failed");
} catch (e) {
  console.error("browser journey failed:", e.message);
  console.error(errors.join("\n"));
  process.exitCode = 1;
} finally {
  await hostB.close();
  await guestB.close();
}
