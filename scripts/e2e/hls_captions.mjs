// hls.js in Chromium reads the live WebVTT captions rendition
// (tests/live_captions.rs). BASE, SRC (the master playlist's URL, with its
// query), EXPECT (a word of the spoken sentence, lower case), TIMEOUT_MS.
// A page of the server's own origin plays SRC with hls.js (from
// node_modules, no CDN) in an <audio>, selects subtitle track 0 with
// subtitleDisplay on, and waits until a cue containing EXPECT is in the
// element's text track. Prints one JSON line: the subtitle tracks hls.js
// parsed from the master playlist, the element's text tracks (kind, label,
// language, mode) and the cues' text and times, the playhead, and errors.
import { createRequire } from "node:module";
import { launch } from "./chromium.mjs";

const { BASE, SRC, EXPECT } = process.env;
const TIMEOUT_MS = Number(process.env.TIMEOUT_MS || 45000);
// The player's distance behind the live edge (s) when it starts. The
// subtitles playlist ends ~6 s behind the audio edge (a segment is listed
// 3 s after it ends: its cues come ~1.5 s after the phrase), and hls.js only
// loads subtitle segments at or after its playhead: at LL-HLS's default
// ~1.5 s it never finds one. (hls.js applies it at start only: start the
// page once the stream is older than this.)
const LIVE_SYNC = Number(process.env.LIVE_SYNC || 10);
const HLS_JS = createRequire(import.meta.url).resolve("hls.js/dist/hls.min.js");

const out = { errors: [] };
const b = await launch();
try {
  const page = await b.newPage();
  page.on("pageerror", (e) => out.errors.push(`uncaught: ${e.message}`));
  // The subtitle requests hls.js made (path and status), to tell a player
  // that never asked from cues that did not land.
  out.vtt_requests = [];
  page.on("response", (r) => {
    const u = new URL(r.url());
    if (u.pathname.includes("captions")) out.vtt_requests.push(`${r.status()} ${u.pathname.split("/hls/")[1]}`);
  });
  await page.goto(`${BASE}/healthz`);
  await page.setContent("<!doctype html><audio id=a></audio>");
  await page.addScriptTag({ path: HLS_JS });
  out.hls_tracks = await page.evaluate(async ([src, liveSync]) => {
    const audio = document.getElementById("a");
    const hls = new window.Hls({ subtitleDisplay: true, liveSyncDuration: liveSync });
    window.hls = hls;
    window.fatal = [];
    hls.on(window.Hls.Events.ERROR, (_, d) => {
      if (d.fatal) window.fatal.push(`${d.type}/${d.details}`);
      else window.nonfatal.push(`${d.type}/${d.details}`);
    });
    window.nonfatal = [];
    window.subs_processed = [];
    hls.on(window.Hls.Events.SUBTITLE_FRAG_PROCESSED, (_, d) => {
      window.subs_processed.push({ sn: d.frag.sn, start: d.frag.start, ok: d.success });
    });
    const parsed = new Promise((resolve) => hls.on(window.Hls.Events.MANIFEST_PARSED, (_, d) => resolve(d)));
    hls.loadSource(src);
    hls.attachMedia(audio);
    const d = await parsed;
    hls.subtitleTrack = 0;
    hls.subtitleDisplay = true;
    audio.play().catch(() => {});
    return (d.subtitleTracks || hls.subtitleTracks).map((t) => ({ name: t.name, lang: t.lang, default: t.default }));
  }, [SRC, LIVE_SYNC]);
  const snapshot = () => page.evaluate(() => {
    const audio = document.getElementById("a");
    return {
      current_time: audio.currentTime,
      subtitle_track: window.hls.subtitleTrack,
      fatal: window.fatal,
      nonfatal: window.nonfatal.slice(-10),
      subs_processed: window.subs_processed.slice(-5),
      // Where hls.js put the two playlists on the media timeline.
      subs_window: ((d) => d && d.fragments.length
        ? [d.fragments[0].sn, d.fragments[0].start, d.fragments.at(-1).sn, d.fragments.at(-1).start, d.live] : null)(window.hls.subtitleTracks[0]?.details),
      main_window: ((d) => d && d.fragments.length
        ? [d.fragments[0].sn, d.fragments[0].start, d.fragments.at(-1).sn, d.fragments.at(-1).start] : null)(window.hls.levels[0]?.details),
      text_tracks: [...audio.textTracks].map((t) => ({
        kind: t.kind,
        label: t.label,
        language: t.language,
        mode: t.mode,
        cues: t.cues ? [...t.cues].map((c) => ({ text: c.text, start: c.startTime, end: c.endTime })) : null,
      })),
    };
  });
  const end = Date.now() + TIMEOUT_MS;
  let s = await snapshot();
  const found = (s) => s.text_tracks.some((t) => (t.cues || []).some((c) => c.text.toLowerCase().includes(EXPECT)));
  while (!found(s) && Date.now() < end && s.fatal.length === 0) {
    await page.waitForTimeout(500);
    s = await snapshot();
  }
  Object.assign(out, s);
  out.found = found(s);
} catch (e) {
  out.errors.push(String(e));
}
await b.close();
console.log(JSON.stringify(out));
