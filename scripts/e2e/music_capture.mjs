// A speaker's microphone in the web app: which capture constraints the page
// asked for (a music space: no echo cancellation, noise suppression or
// automatic gain, 2 channels), read back from the live track's settings.
// Prints one JSON line (the settings), then keeps the microphone on for
// HOLD seconds so the caller can listen to what it sends. Used by
// tests/music_capture.rs.
//
//   ORIGIN  the node (http://127.0.0.1:PORT)
//   SPACE   the space id; TOKEN a stage member's token (the host's)
//   WAV     the fake microphone (a stereo file for a music space)
//   HOLD    seconds to keep publishing after the settings are read
import { launch, until } from "./chromium.mjs";

const { ORIGIN, SPACE, TOKEN, WAV, HOLD } = process.env;
const b = await launch({ wav: WAV });
try {
  const ctx = await b.newContext();
  await ctx.addInitScript(([s, t]) => localStorage.setItem(`amphi.token.${s}`, t), [SPACE, TOKEN]);
  const p = await ctx.newPage();
  await p.goto(`${ORIGIN}/s/${SPACE}`);
  await p.waitForSelector("[data-testid=mic]:not([hidden])", { timeout: 15000 });
  await p.click("[data-testid=mic]");
  await until("the microphone to be live", () => p.evaluate(() => window.amphi.micLive()));
  const settings = await p.evaluate(() => window.amphi.micSettings());
  console.log(JSON.stringify(settings));
  await new Promise((r) => setTimeout(r, Number(HOLD || 0) * 1000));
} finally {
  await b.close();
}
