// The web app's journey over a network (run by scripts/e2e-netns): two
// headless Chromiums, each in its own network namespace (their executables
// are wrappers that `ip netns exec` Chromium with a $HOME whose NSS database
// trusts the test CA), open the node at its host-side veth address over
// HTTPS, with no certificate flag. The host's page must be a secure context, go live and speak with a
// fake microphone (440 Hz); the remote listener must hear 440 Hz. Then a
// guest whose namespace drops all UDP (GUEST_CHROME) is brought on stage:
// the web app asks OPTIONS for the node's TURN server and publishes through
// it over TCP (a relayed pair), and the listener hears its 880 Hz too.
//
// BASE=https://10.77.n.1:PORT ADMIN OUT WAVS UNTRUSTING_CHROME HOST_CHROME LISTEN_CHROME GUEST_CHROME
import { launch, until as poll, check, probe, heard, joinAndListen, createSpace } from "./chromium.mjs";

const { BASE, ADMIN, OUT, WAVS, UNTRUSTING_CHROME, HOST_CHROME, LISTEN_CHROME, GUEST_CHROME } = process.env;
const errors = [];
const pages = [];
const step = (s) => console.log(`-- ${s}`);

const browser = (exe, wav) => launch({ exe, wav });

async function page(b, who) {
  const ctx = await b.newContext({ viewport: { width: 375, height: 812 } });
  const p = await ctx.newPage();
  p.on("console", (m) => { if (m.type() === "error") errors.push(`${who}: console: ${m.text()}`); });
  p.on("pageerror", (e) => errors.push(`${who}: uncaught: ${e.message}`));
  p.on("dialog", (d) => d.accept());
  p.on("response", (r) => {
    if (r.status() >= 400) console.error(`   ${who}: HTTP ${r.status()} ${r.request().method()} ${r.url()}`);
  });
  if (process.env.DEBUG_REQUESTS) p.on("requestfinished", async (r) => {
    const res = await r.response();
    console.log(`   ${who}: ${r.method()} ${r.url()} ${res && res.status()} link=${res && res.headers()["link"]}`);
  });
  p.setDefaultTimeout(20000);
  pages.push([who, p]);
  return p;
}

const until = (what, fn, ms = 20000) => poll(what, fn, ms);

const fmt = (dbs) => dbs.map((d) => `${d.toFixed(0)} dB`).join(" / ");

// The ICE pair the host's RTCPeerConnection uses: candidate types and addresses.
const selectedPair = (p) => p.evaluate(async () => {
  const pc = window.amphi.state.mic && window.amphi.state.mic.pc;
  if (!pc) return null;
  const stats = await pc.getStats();
  let pair = null;
  stats.forEach((s) => { if (s.type === "transport" && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId); });
  if (!pair) stats.forEach((s) => { if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s; });
  if (!pair) return null;
  const l = stats.get(pair.localCandidateId), r = stats.get(pair.remoteCandidateId);
  return { relayProtocol: l.relayProtocol, local: `${l.candidateType} ${l.protocol}${l.relayProtocol ? ` (to TURN over ${l.relayProtocol})` : ""} ${l.address}:${l.port}`, remote: `${r.candidateType} ${r.protocol} ${r.address}:${r.port}`, bytesSent: pair.bytesSent };
});

// The control first: without the test CA, Chromium refuses the node's certificate.
{
  const b = await browser(UNTRUSTING_CHROME, `${WAVS}/host.wav`);
  const p = await b.newPage();
  const refused = await p.goto(BASE + "/").then(() => null, (e) => e.message);
  await b.close();
  console.log(`-- 0. a Chromium without the test CA: ${refused ? refused.split("\n")[0] : "loaded the page"}`);
  if (!refused || !refused.includes("ERR_CERT_AUTHORITY_INVALID")) {
    console.error("netns browser journey FAILED: a browser that does not trust the test CA was not refused");
    process.exit(1);
  }
}

const hostB = await browser(HOST_CHROME, `${WAVS}/host.wav`);
const listenB = await browser(LISTEN_CHROME, `${WAVS}/host.wav`);
const guestB = await browser(GUEST_CHROME, `${WAVS}/guest.wav`);
try {
  step(`1. a remote host opens ${BASE}/ over HTTPS: a secure context with a microphone`);
  const host = await page(hostB, "host");
  await host.goto(BASE + "/");
  const ctx = await host.evaluate(() => ({
    secure: window.isSecureContext,
    mic: Boolean(navigator.mediaDevices && navigator.mediaDevices.getUserMedia),
    origin: location.origin,
  }));
  console.log(`   ${JSON.stringify(ctx)}`);
  check(ctx.secure === true, "window.isSecureContext is not true over https");
  check(ctx.mic, "navigator.mediaDevices.getUserMedia is missing");
  const link = await createSpace(host, BASE, ADMIN, "Over a network", "Hana");
  check(/^\/s\/[^/]+$/.test(link), `space link ${link}`);
  await host.goto(BASE + link);
  check(await host.evaluate(() => window.isSecureContext), "the space page is not a secure context");
  await host.click("[data-testid=go-live]");
  await host.click("[data-testid=mic]");
  await until("the host publishes", () => host.evaluate(() => document.getElementById("status").textContent.includes("live on stage")), 30000);
  const pair = await until("the host's ICE pair", () => selectedPair(host));
  console.log(`   host's ICE pair: ${pair.local} -> ${pair.remote}`);
  check(!/127\.0\.0\.1|::1/.test(pair.local + pair.remote), "the host's media went over loopback");

  step("2. a listener in another namespace hears the host's 440 Hz over wss");
  const listener = await page(listenB, "listener");
  await joinAndListen(listener, BASE + link, "Lia");
  const tones = await until("the listener hears 440 Hz", async () => { const t = await probe(listener); return heard(t[0]) && !heard(t[1]) && t; }, 30000);
  console.log(`   listener hears ${fmt(tones)} (440 / 880)`);
  const s = await until("the listener's delay", () => listener.evaluate(() => { const s = window.amphi.stats(); return s && s.delayMs !== null && s; }));
  console.log(`   listener: ${s.received} frames, ${s.lost} lost, delay ${s.delayMs} ms`);
  check(s.delayMs < 2000, `listener delay ${s.delayMs} ms`);
  const sent = (await selectedPair(host)).bytesSent;
  console.log(`   host has sent ${sent} bytes of media`);

  step("3. a guest whose namespace drops all UDP is brought on stage and is heard through TURN over TCP");
  const guest = await page(guestB, "guest");
  const options = guest.waitForResponse((r) => r.request().method() === "OPTIONS" && r.url().endsWith("/whip"), { timeout: 30000 });
  await guest.goto(BASE + link);
  await guest.fill("[data-testid=join-name]", "Gus");
  await guest.click("[data-testid=join]");
  await guest.click("[data-testid=hand]");
  await host.click("[data-testid=accept-Gus]");
  await guest.click("[data-testid=mic]");
  const links = (await options).headers()["link"] || "";
  console.log(`   OPTIONS Link: ${links.replace(/credential="[^"]*"/g, 'credential="…"')}`);
  check(/rel="ice-server"/.test(links) && /transport=tcp/.test(links), "no TURN server in the OPTIONS answer");
  await until("the guest publishes", () => guest.evaluate(() => document.getElementById("status").textContent.includes("live on stage")), 40000);
  const gpair = await until("the guest's ICE pair", () => selectedPair(guest));
  console.log(`   guest's ICE pair: ${gpair.local} -> ${gpair.remote}`);
  // Through the TURN server over TCP; or, once the node offers ICE-TCP
  // (passive TCP candidates), straight to the node over TCP.
  const viaTurn = gpair.local.startsWith("relay") && ["tcp", "tls"].includes(gpair.relayProtocol);
  const iceTcp = / tcp /.test(` ${gpair.remote} `) && gpair.remote.startsWith("host");
  check(viaTurn || iceTcp, "the UDP-less guest's pair is neither relayed over TCP nor ICE-TCP");
  console.log(`   the guest publishes ${viaTurn ? `through TURN over ${gpair.relayProtocol.toUpperCase()}` : "over ICE-TCP"}`);
  await until("the listener hears both tones", async () => { const t = await probe(listener); return heard(t[0]) && heard(t[1]) && t; }, 30000);
  // Over 3 s, not one look: the median level of each tone.
  const looks = [];
  for (let i = 0; i < 12; i++) {
    looks.push(await probe(listener));
    await new Promise((r) => setTimeout(r, 250));
  }
  const median = (k) => looks.map((t) => t[k]).sort((a, b) => a - b)[looks.length >> 1];
  const both = [median(0), median(1)];
  // Two voices share the mix, each lower than alone (medians of -44..-62 dB
  // seen over runs); an absent tone sits below -100 dB (the 880 Hz before the
  // guest spoke: -117..-128 dB), so -70 dB still tells present from absent.
  check(both[0] > -70 && both[1] > -70, `the listener does not keep hearing both tones: medians ${fmt(both)}`);
  const ls = await listener.evaluate(() => window.amphi.stats());
  console.log(`   listener hears ${fmt(both)} (440 / 880, medians over 3 s); ${ls.received} frames received, ${ls.lost} lost, delay ${ls.delayMs} ms`);
  await guest.screenshot({ path: `${OUT}/netns-guest.png`, fullPage: true });
  await host.screenshot({ path: `${OUT}/netns-host.png`, fullPage: true });
  await listener.screenshot({ path: `${OUT}/netns-listener.png`, fullPage: true });
  if (errors.length) throw new Error("console errors:\n" + errors.join("\n"));
  console.log("netns browser journey: passed");
} catch (e) {
  console.error("netns browser journey FAILED:", e.message);
  for (const [who, p] of pages) {
    const d = await p.evaluate(async () => ({
      url: location.href,
      secure: window.isSecureContext,
      status: document.getElementById("status")?.textContent,
      stats: window.amphi?.stats?.(),
      tones: window.amphi?.toneProbe?.([440, 880]),
      optionsLink: await fetch(location.pathname.replace("/s/", "/api/v1/spaces/") + "/whip", {
        method: "OPTIONS", headers: { Authorization: `Bearer ${localStorage.getItem("amphi.token." + location.pathname.split("/")[2])}` },
      }).then((r) => `${r.status} ${r.headers.get("Link")}`).catch((x) => x.message),
    })).catch((x) => x.message);
    console.error(`   ${who}: ${JSON.stringify(d)}`);
  }
  if (errors.length) console.error(errors.join("\n"));
  process.exitCode = 1;
} finally {
  await hostB.close();
  await listenB.close();
  await guestB.close();
}
