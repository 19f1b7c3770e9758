// The browser journey (run by scripts/e2e-browser). Real Chromium, real
// `amphi serve`, fake microphones playing tones: the host says 440 Hz, the
// guest 880 Hz; listeners' pages report what their program output carries
// through window.amphi.toneProbe. Exits non-zero on the first failure or on
// any console error.
//
// AMPHI_WEB_DIR=web serves the pages from the working tree instead of the
// copy embedded in the binary (quick iteration on web/ without a rebuild).
import { readFile } from "node:fs/promises";
import { join, extname } from "node:path";
import { createServer } from "node:http";
import { launch, until, check, probe, heard, joinAndListen, createSpace } from "./chromium.mjs";

const { BASE, ADMIN, OUT, WAVS, AMPHI_WEB_DIR } = process.env;
const errors = [];
const pages = [];
const step = (s) => console.log(`-- ${s}`);

async function browser(wav) {
  // Pages fulfilled by the test (AMPHI_WEB_DIR) have no address space of
  // their own, so Chromium would treat their WebSockets to 127.0.0.1 as
  // a public page reaching into the local network.
  return launch({ wav, extra: AMPHI_WEB_DIR ? ["--disable-features=LocalNetworkAccessChecks"] : [] });
}

const TYPES = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css" };
async function serveWorkingTree(ctx) {
  await ctx.route(`${BASE}/**`, async (route) => {
    const path = new URL(route.request().url()).pathname;
    let file = null;
    if (path === "/") file = "index.html";
    else if (/^\/s\/[^/]+$/.test(path)) file = "space.html";
    else if (path.startsWith("/assets/")) file = path.slice("/assets/".length);
    if (!file || file.includes("..")) return route.continue();
    try {
      const body = await readFile(join(AMPHI_WEB_DIR, file));
      return route.fulfill({ status: 200, body, contentType: TYPES[extname(file)] || "application/octet-stream" });
    } catch {
      return route.fulfill({ status: 404, body: "no such file" });
    }
  });
}

async function page(b, who) {
  const ctx = await b.newContext({ viewport: { width: 375, height: 812 } });
  if (AMPHI_WEB_DIR) await serveWorkingTree(ctx);
  const p = await ctx.newPage();
  // A moderator's page polls the audience and the analytics; a poll in
  // flight when the role is taken away is refused (403) before the page
  // hears of the change. A speaker's page asks twice a second whether its
  // WHIP session still publishes (GET on the session): 404 is the answer
  // "gone" (the space ended, or moved to another node). Those answers are
  // expected; any other refusal is not.
  let raced = 0;
  let gone = 0;
  p.on("console", (m) => {
    if (m.type() !== "error") return;
    if (raced > 0 && m.text().includes("status of 403")) { raced--; return; }
    if (gone > 0 && m.text().includes("status of 404")) { gone--; return; }
    errors.push(`${who}: console: ${m.text()}`);
  });
  p.on("pageerror", (e) => errors.push(`${who}: uncaught: ${e.message}`));
  p.on("dialog", (d) => d.accept());
  p.on("response", (r) => {
    if (r.status() === 403 && /\/(audience|stats)(\?|$)/.test(r.url())) raced++;
    if (r.status() === 404 && r.request().method() === "GET" && /\/whip\/[0-9a-f]+$/.test(r.url())) gone++;
    if (r.status() >= 400) console.error(`   ${who}: HTTP ${r.status()} ${r.request().method()} ${r.url()}`);
  });
  p.setDefaultTimeout(15000);
  pages.push([who, p]);
  return p;
}

const silent = (db) => db < -75;
const fmt = (dbs) => dbs.map((d) => `${d.toFixed(0)} dB`).join(" / ");

async function noSideScroll(p, who) {
  const w = await p.evaluate(() => document.documentElement.scrollWidth);
  check(w <= 375, `${who}: the page is ${w} px wide at a 375 px viewport`);
}

const hostB = await browser(`${WAVS}/host.wav`);
const guestB = await browser(`${WAVS}/guest.wav`);
try {
  step("1. the host creates a space in the lobby, goes live and speaks");
  const host = await page(hostB, "host");
  const link = await createSpace(host, BASE, ADMIN, "Browser journey", "Hana");
  await until("the lobby lists the new space", () => host.evaluate(() =>
    document.querySelector("[data-testid=scheduled-list]").textContent.includes("Browser journey")));
  await noSideScroll(host, "lobby");
  await host.screenshot({ path: `${OUT}/lobby.png`, fullPage: true });

  step("1a. before it starts, a listener asks to be reminded (Remind me)");
  const early = await page(guestB, "early");
  await early.goto(BASE + link);
  await early.fill("[data-testid=join-name]", "Remi");
  await early.click("[data-testid=join]");
  await early.click("[data-testid=remind]");
  await until("the reminder is set", () => early.evaluate(() =>
    document.querySelector("[data-testid=remind]").getAttribute("aria-pressed") === "true"));
  await early.close();

  await host.goto(BASE + link);
  await host.click("[data-testid=go-live]");
  await host.click("[data-testid=mic]");
  await until("the host publishes", () => host.evaluate(() => document.getElementById("status").textContent.includes("live on stage")));

  step("2. a listener in another browser hears the host's 440 Hz");
  const guest = await page(guestB, "guest");
  await joinAndListen(guest, BASE + link, "Gus");
  const first = await until("the listener hears 440 Hz", async () => { const t = await probe(guest); return heard(t[0]) && !heard(t[1]) && t; });
  console.log(`   listener hears ${fmt(first)} (440 / 880)`);
  const delay = await until("the LIVE badge shows the delay", () => guest.evaluate(() => {
    const s = window.amphi.stats();
    return !document.querySelector("[data-testid=live-badge]").hidden && s && s.delayMs !== null && s;
  }));
  console.log(`   delay ${delay.delayMs} ms (jitter buffer ${delay.bufferedMs.toFixed(0)} ms)`);
  check(delay.delayMs < 2000, `listener delay ${delay.delayMs} ms`);

  step("2b. the listener's connection drops; it resumes from the next frame");
  const before = await guest.evaluate(() => window.amphi.stats());
  await guest.evaluate(() => window.amphi.state.player.drop());
  const after = await until("the player resumes", () => guest.evaluate((n) => {
    const s = window.amphi.stats();
    return s.resumed >= 1 && s.received > n + 50 && s;
  }, before.received));
  check(after.lost === 0, `${after.lost} frames lost across the reconnect`);
  await until("440 Hz after the resume", async () => heard((await probe(guest))[0]));
  console.log(`   resumed with ${after.lost} frames lost, ${after.underruns} underruns so far`);

  step("2c. a reaction floats on the host's page");
  await host.evaluate(() => {
    window.floated = [];
    new MutationObserver((ms) => ms.forEach((m) => {
      m.addedNodes.forEach((n) => window.floated.push({ text: n.textContent, at: performance.now() }));
      m.removedNodes.forEach((n) => window.floated.push({ gone: n.textContent, at: performance.now() }));
    })).observe(document.getElementById("floats"), { childList: true });
  });
  await guest.click("[data-testid=react-clap]");
  await until("the host sees the clap", () => host.evaluate(() => window.amphi.state.reactionsSeen["👏"] >= 1), 5000);
  const floated = await until("a clap floats up on the host's page", () => host.evaluate(() => {
    const f = window.floated;
    return f.length >= 2 && f;
  }), 5000);
  console.log(`   floated: ${JSON.stringify(floated)}`);

  step("3. hand raised, accepted, the guest speaks: a third listener hears both");
  await guest.click("[data-testid=hand]");
  await host.click("[data-testid=accept-Gus]");
  await guest.click("[data-testid=mic]");
  await until("the guest publishes", () => guest.evaluate(() => document.getElementById("status").textContent.includes("live on stage")));
  check(await guest.evaluate(() => window.amphi.state.player === null), "the new speaker still plays the program");
  const third = await page(hostB, "listener");
  await joinAndListen(third, BASE + link, "Lia");
  const both = await until("the third listener hears both tones", async () => { const t = await probe(third); return heard(t[0]) && heard(t[1]) && t; });
  console.log(`   third listener hears ${fmt(both)}`);
  await until("the stage shows someone talking", () => third.evaluate(() => document.querySelectorAll("#stage li.talking").length > 0));
  for (const [p, who] of [[host, "host"], [guest, "speaker"], [third, "listener"]]) {
    await noSideScroll(p, who);
    await p.screenshot({ path: `${OUT}/${who}.png`, fullPage: true });
  }

  step("4. the host mutes the guest: 880 Hz leaves the program, 440 stays");
  await host.click("[data-testid=mute-Gus]");
  const muted = await until("880 Hz gone after the mute", async () => { const t = await probe(third); return heard(t[0]) && silent(t[1]) && t; });
  console.log(`   after the mute ${fmt(muted)}`);
  await until("the guest's page shows the mute", () => guest.evaluate(() => window.amphi.state.you.muted));
  check(await guest.evaluate(() => window.amphi.state.mic.stream.getAudioTracks()[0].enabled === false),
    "the muted guest's track is still enabled locally");

  step("4b. the host makes the guest co-host: the guest gets the moderator's controls, then loses them");
  await host.click("[data-testid=appoint-Gus]");
  await until("the guest is co-host", () => guest.evaluate(() => window.amphi.state.you.role === "cohost"));
  await third.click("[data-testid=hand]");
  await until("the co-host can accept Lia's hand", () => guest.evaluate(() => Boolean(document.querySelector("[data-testid=accept-Lia]"))));
  check(!(await third.evaluate(() => Boolean(document.querySelector("[data-testid=accept-Lia]")))), "a listener sees moderator controls");
  await host.click("[data-testid=dismiss-Gus]");
  await until("the guest is a speaker again", () => guest.evaluate(() => window.amphi.state.you.role === "speaker"));
  await until("the guest lost the moderator's controls", () => guest.evaluate(() => !document.querySelector("[data-testid=accept-Lia]")));

  step("5. moved to the audience, the guest's microphone is released");
  const deleted = guest.waitForResponse((r) => r.request().method() === "DELETE" && r.url().includes("/whip/"), { timeout: 10000 });
  await host.click("[data-testid=demote-Gus]");
  await until("the guest is back in the audience", () => guest.evaluate(() => window.amphi.state.you && !window.amphi.state.you.on_stage));
  check(!(await guest.evaluate(() => window.amphi.micLive())), "the guest's microphone is still live");
  const del = await deleted;
  check(del.status() < 300, `DELETE of the WHIP session answered ${del.status()}`);
  await until("the guest's hand button is back", () => guest.evaluate(() => !document.querySelector("[data-testid=hand]").hidden));

  step("5b. the host invites Ivy, who never raised a hand, from the audience list: she accepts and is heard");
  const ivy = await page(guestB, "invited");
  await joinAndListen(ivy, BASE + link, "Ivy");
  await until("the host sees Ivy in the audience", () => host.evaluate(() => Boolean(document.querySelector("[data-testid=invite-Ivy]"))));
  check(await ivy.evaluate(() => !window.amphi.state.you.hand_raised), "Ivy raised a hand");
  check(!(await third.evaluate(() => Boolean(document.querySelector("[data-testid=invite-Ivy]")))), "a listener sees the Invite buttons");
  await host.screenshot({ path: `${OUT}/audience.png`, fullPage: true });
  await host.click("[data-testid=invite-Ivy]");
  await until("Ivy sees the invitation", () => ivy.evaluate(() => !document.querySelector("[data-testid=invitation]").hidden));
  await ivy.screenshot({ path: `${OUT}/invitation.png`, fullPage: true });
  await ivy.click("[data-testid=invitation-accept]");
  await until("Ivy is on stage", () => ivy.evaluate(() => window.amphi.state.you && window.amphi.state.you.on_stage));
  await ivy.click("[data-testid=mic]");
  await until("Ivy publishes", () => ivy.evaluate(() => document.getElementById("status").textContent.includes("live on stage")));
  const ivyHeard = await until("the listener hears Ivy's 880 Hz", async () => { const t = await probe(third); return heard(t[1]) && t; });
  console.log(`   after Ivy accepted ${fmt(ivyHeard)}`);

  step("5c. a declined invitation changes nothing");
  const stageBefore = await host.evaluate(() => window.amphi.state.space.stage.map((m) => m.participant_id).join(","));
  await until("the host can invite Lia", () => host.evaluate(() => Boolean(document.querySelector("[data-testid=invite-Lia]"))));
  await host.click("[data-testid=invite-Lia]");
  await until("Lia sees the invitation", () => third.evaluate(() => !document.querySelector("[data-testid=invitation]").hidden));
  await third.click("[data-testid=invitation-decline]");
  await until("Lia's invitation is gone", () => third.evaluate(() => window.amphi.state.you && !window.amphi.state.you.invitation));
  await new Promise((r) => setTimeout(r, 1000));
  check(await third.evaluate(() => window.amphi.state.you.role === "listener"), "Lia is no longer a listener after declining");
  const stageAfter = await host.evaluate(() => window.amphi.state.space.stage.map((m) => m.participant_id).join(","));
  check(stageBefore === stageAfter, `the stage changed after a decline: ${stageBefore} → ${stageAfter}`);

  step("5d. another site frames the embeddable player; the link's card tags and image render");
  const spaceId = link.split("/").pop();
  // A real page of another origin (its own HTTP server) frames the player.
  const blog = createServer((_, res) => {
    res.writeHead(200, { "Content-Type": "text/html" });
    res.end(`<!doctype html><title>Some blog</title><h1>Some blog</h1><iframe src="${BASE}/embed/${spaceId}" width="480" height="180"></iframe>`);
  });
  await new Promise((ok) => blog.listen(0, "127.0.0.1", ok));
  const site = await page(hostB, "embedder");
  await site.goto(`http://127.0.0.1:${blog.address().port}/`);
  const frame = await until("the player loads in the iframe", () => site.frames().find((f) => f.url().includes("/embed/")));
  await frame.waitForSelector("[data-testid=embed-title]");
  check((await frame.textContent("[data-testid=embed-title]")) === "Browser journey", "the embed's title");
  await until("the embed shows live and the count", () => frame.evaluate(() =>
    document.querySelector("[data-testid=embed-state]").textContent.includes("LIVE") &&
    /\d+ listening/.test(document.querySelector("[data-testid=embed-count]").textContent)));
  await frame.click("[data-testid=embed-play]");
  await until("the embedded player plays", () => frame.evaluate(() => {
    const a = document.getElementById("live");
    return !a.paused && a.currentTime > 0.5;
  }), 20000);
  await site.screenshot({ path: `${OUT}/embed.png` });
  await site.goto(BASE + link);
  const tags = await site.evaluate(() => Object.fromEntries(
    [...document.querySelectorAll("meta[property^=og], meta[name^=twitter]")].map((m) => [m.getAttribute("property") || m.getAttribute("name"), m.content])));
  check(tags["og:title"] === "Browser journey" && tags["twitter:card"] === "summary_large_image", `card tags: ${JSON.stringify(tags)}`);
  const size = await site.evaluate((src) => new Promise((ok) => {
    const i = new Image();
    i.onload = () => ok([i.naturalWidth, i.naturalHeight]);
    i.onerror = () => ok(null);
    i.src = src;
  }), tags["og:image"]);
  check(size && size[0] === 1200 && size[1] === 630, `card image ${JSON.stringify(size)}`);
  await site.evaluate((src) => new Promise((ok) => {
    const i = Object.assign(new Image(), { src, width: 375, onload: ok, onerror: ok });
    document.body.replaceChildren(i);
  }), tags["og:image"]);
  await site.screenshot({ path: `${OUT}/card.png` });
  console.log(`   embed plays; card: ${tags["og:description"]}; image ${size.join("×")}`);
  blog.close();

  step("6. the host ends the space: listeners get a seekable replay");
  await host.click("[data-testid=end]");
  await until("replay offered to the listener", () => third.evaluate(() => !document.getElementById("replay").hidden));
  const duration = await until("replay duration known", () => third.evaluate(async () => {
    const a = document.getElementById("replay");
    if (!a.src) return false;
    if (!(a.duration > 1 && Number.isFinite(a.duration))) {
      a.load();
      await new Promise((r) => { a.onloadedmetadata = r; setTimeout(r, 3000); });
    }
    if (!(a.duration > 1 && Number.isFinite(a.duration))) return false;
    a.currentTime = a.duration / 2;
    await new Promise((r) => { a.onseeked = r; setTimeout(r, 3000); });
    return Math.abs(a.currentTime - a.duration / 2) < 1 && a.duration;
  }), 20000);
  console.log(`   replay: ${duration.toFixed(1)} s, seekable`);
  await third.screenshot({ path: `${OUT}/replay.png`, fullPage: true });

  step("6b. the host's analytics chart: listeners over time, drawn by the page");
  check(await third.evaluate(() => document.querySelector("[data-testid=stats]").hidden), "a listener sees the analytics");
  const chart = await until("the host's chart is drawn", () => host.evaluate(async () => {
    await window.amphi.refreshStats();
    const c = document.querySelector("[data-testid=chart]");
    const n = Number(c.dataset.points || 0);
    const px = c.getContext("2d").getImageData(0, 0, c.width, c.height).data.some((v, i) => i % 4 === 3 && v > 0);
    return !document.querySelector("[data-testid=stats]").hidden && n >= 1 && px &&
      { points: n, summary: document.querySelector("[data-testid=stats-summary]").textContent };
  }));
  console.log(`   chart: ${chart.points} points; ${chart.summary}`);
  await host.screenshot({ path: `${OUT}/stats.png`, fullPage: true });
  if (errors.length) throw new Error("console errors:\n" + errors.join("\n"));
  console.log("browser journey: passed");
} catch (e) {
  console.error("browser journey FAILED:", e.message);
  for (const [who, p] of pages) {
    const d = await p.evaluate(() => ({
      status: document.getElementById("status")?.textContent,
      you: window.amphi?.state?.you,
      reactions: window.amphi?.state?.reactionsSeen,
      stats: window.amphi?.stats?.(),
      tones: window.amphi?.toneProbe?.([440, 880]),
    })).catch((x) => x.message);
    console.error(`   ${who}: ${JSON.stringify(d)}`);
  }
  if (errors.length) console.error(errors.join("\n"));
  process.exitCode = 1;
} finally {
  await hostB.close();
  await guestB.close();
}
