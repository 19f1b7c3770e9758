// Native playback start: Chromium's own <audio> element (no app code, no
// MSE) given `live.opus`. Prints one JSON line: how long after setting
// `src` the element's currentTime first advanced (started_ms), its clock
// rate over the next 2 s, and how far behind live it plays (behind_s: the
// live edge read from `live.ws` in the same page, frame seq × 20 ms — the
// Ogg granules are the same clock — minus currentTime). Used by
// tests/native_playback.rs.
//
//   URL   the live.opus URL
//   WAIT  seconds to wait for playback before giving up (default 10)
import { launch } from "./chromium.mjs";

const { URL: SRC, WAIT } = process.env;
const b = await launch();
try {
  const p = await b.newPage();
  // A page of the node itself, so no cross-origin or local-network rules
  // apply to the stream or the WebSocket.
  await p.goto(`${new globalThis.URL(SRC).origin}/healthz`);
  const res = await p.evaluate(async ({ src, wait }) => {
    // The live edge: the newest frame seq seen on live.ws.
    let edge = null;
    const ws = new WebSocket(src.replace(/^http/, "ws").replace(/live\.opus(\?.*)?$/, "live.ws"));
    ws.binaryType = "arraybuffer";
    ws.onmessage = (m) => {
      const v = new DataView(m.data);
      edge = Number(v.getBigUint64(2)) + v.getUint8(1);
    };
    const a = new Audio();
    a.muted = false;
    const t0 = performance.now();
    a.src = src;
    const play = a.play().catch((e) => String(e));
    let startedAt = null, err = null;
    a.addEventListener("error", () => { err = a.error ? `${a.error.code} ${a.error.message}` : "error"; });
    while (performance.now() - t0 < wait * 1000 && startedAt === null && !err) {
      await new Promise((r) => setTimeout(r, 10));
      if (a.currentTime > 0) startedAt = performance.now() - t0;
    }
    // Keep playing 2 s more: the clock must keep advancing in real time.
    const ct0 = a.currentTime, w0 = performance.now();
    if (startedAt !== null) await new Promise((r) => setTimeout(r, 2000));
    const rate = startedAt !== null ? (a.currentTime - ct0) / ((performance.now() - w0) / 1000) : 0;
    let buffered = a.buffered.length ? a.buffered.end(a.buffered.length - 1) : 0;
    const behind = edge === null ? null : edge * 0.02 - a.currentTime;
    ws.close();
    const out = { started_ms: startedAt, error: err, play: await play, rate, current: a.currentTime, buffered_end: buffered, behind_s: behind };
    a.pause(); a.src = "";
    return out;
  }, { src: SRC, wait: Number(WAIT || 10) });
  console.log(JSON.stringify(res));
} finally {
  await b.close();
}
