// Live captions in the web app (tests/live_captions.rs). Prints one JSON line.
//
//   PHASE=live    BASE, ID, TOKEN (a listener's): waits for the CC toggle and
//                 a caption containing EXPECT under the controls, then turns
//                 captions off with the toggle.
//   PHASE=replay  the ended space's page: waits for the transcript, types
//                 SEARCH into its search box, clicks the first match and
//                 reports where the replay <audio> was sent.
import { chromium } from "playwright-core";

const { PHASE, BASE, ID, TOKEN, EXPECT, SEARCH } = process.env;
const b = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--autoplay-policy=no-user-gesture-required"],
});
const out = { errors: [] };
try {
  const page = await b.newPage();
  page.on("console", (m) => { if (m.type() === "error") out.errors.push(m.text()); });
  page.on("pageerror", (e) => out.errors.push(String(e)));
  out.http_errors = [];
  page.on("response", (r) => { if (r.status() >= 400) out.http_errors.push(`${r.status()} ${new URL(r.url()).pathname}`); });
  await page.addInitScript(([id, t]) => localStorage.setItem(`amphi.token.${id}`, t), [ID, TOKEN]);
  await page.goto(`${BASE}/s/${ID}`);
  if (PHASE === "live") {
    await page.waitForSelector("[data-testid=captions-toggle]:not([hidden])", { timeout: 15000 });
    await page.waitForFunction((e) => document.querySelector("[data-testid=captions]").textContent.includes(e),
      EXPECT, { timeout: 40000 });
    out.caption = await page.textContent("[data-testid=captions]");
    await page.click("[data-testid=captions-toggle]");
    out.hidden_after_toggle = await page.isHidden("[data-testid=captions]");
  } else {
    await page.waitForSelector("[data-testid=transcript-box]:not([hidden])", { timeout: 30000 });
    out.cues = await page.locator("[data-testid=transcript] li").count();
    await page.fill("[data-testid=transcript-search]", SEARCH);
    const shown = page.locator("[data-testid=transcript] li:not([hidden]) button");
    out.matches = await shown.count();
    out.first = out.matches ? await shown.first().textContent() : null;
    if (out.matches) {
      await shown.first().click();
      await page.waitForTimeout(300);
      out.replay_time = await page.evaluate(() => document.querySelector("[data-testid=replay]").currentTime);
    }
  }
} catch (e) {
  out.error = String(e);
}
await b.close();
console.log(JSON.stringify(out));
