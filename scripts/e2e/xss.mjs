// Stored XSS probe: opens each page of URLS (JSON array, env) in headless
// Chromium and reports whether any injected script ran (the payloads set
// window.__pwned or open a dialog) and whether each payload in SHOWN (JSON
// array) is shown as text. Prints one JSON line.
import { launch } from "./chromium.mjs";

const urls = JSON.parse(process.env.URLS);
const shown = JSON.parse(process.env.SHOWN || "[]");
const browser = await launch();
const report = { pages: [] };
try {
  for (const url of urls) {
    const p = await browser.newPage();
    let dialogs = 0;
    p.on("dialog", (d) => { dialogs += 1; d.dismiss().catch(() => {}); });
    await p.goto(url, { waitUntil: "load" });
    await p.waitForTimeout(1500);
    const got = await p.evaluate((shown) => ({
      pwned: window.__pwned ?? null,
      text: shown.map((s) => document.body.innerText.includes(s)),
      injected: document.querySelectorAll("img[src='x'], svg[onload], script:not([src])").length,
    }), shown);
    report.pages.push({ url, dialogs, ...got });
    await p.close();
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));
