// A listener in the web app: joins the space, presses Listen, and prints
// one JSON line with what the player plays per channel: the levels (dB) of
// FREQS in the left and the right channel (window.amphi.channelProbe, a
// splitter and two analysers after the player) and the player's channel
// count. Used by tests/music_capture.rs.
//
//   ORIGIN  the node (http://127.0.0.1:PORT)
//   SPACE   the space id
//   FREQS   comma-separated frequencies (Hz) to measure, e.g. 440,1000
import { launch, until, joinAndListen } from "./chromium.mjs";

const { ORIGIN, SPACE, FREQS } = process.env;
const freqs = FREQS.split(",").map(Number);
const b = await launch();
try {
  const p = await (await b.newContext()).newPage();
  await joinAndListen(p, `${ORIGIN}/s/${SPACE}`, "Stereo ear");
  await until("the player to play", () =>
    p.evaluate(() => {
      const s = window.amphi.stats();
      return s && s.playing && s.received > 50;
    }), 20000);
  // Two seconds of playout through the probe's analysers (made on first use).
  await p.evaluate((f) => window.amphi.channelProbe(f), freqs);
  await new Promise((r) => setTimeout(r, 2000));
  const levels = await p.evaluate((f) => window.amphi.channelProbe(f), freqs);
  const stats = await p.evaluate(() => window.amphi.stats());
  console.log(JSON.stringify({ freqs, ...levels, channels: stats.channels, underruns: stats.underruns }));
} finally {
  await b.close();
}
