// The web player: live.ws frames (docs/live-ws.md) → WebCodecs AudioDecoder
// → AudioWorklet jitter buffer (player-worklet.js) → an AnalyserNode → the
// speakers. On a dropped connection it reconnects with from_seq = last + 1,
// so while the server still holds those frames nothing is lost. Without
// WebCodecs it plays the Ogg stream in an <audio> element instead.
//
// A music space's program is stereo: the first packet whose Opus TOC byte
// has the stereo bit set (RFC 6716 §3.1) switches the player, once, to a
// 2-channel decoder and a 2-channel worklet node. A mono program never sees
// that bit and plays exactly as before (1 channel end to end).

const FRAME_US = 20000;
const STALL_MS = 2000;
/** The `s` bit of an Opus packet's TOC byte: the packet codes stereo. */
const TOC_STEREO = 0x04;

/** Parses one live.ws message; null if it is malformed (never throws). */
export function parseMessage(buf) {
  if (!(buf instanceof ArrayBuffer) || buf.byteLength < 19) return null;
  const v = new DataView(buf);
  if (v.getUint8(0) !== 1) return null;
  const n = v.getUint8(1);
  if (n === 0) return null;
  const firstSeq = Number(v.getBigUint64(2));
  const capturedUs = Number(v.getBigUint64(10));
  const level = v.getUint8(18);
  const frames = [];
  let at = 19;
  for (let k = 0; k < n; k++) {
    if (at + 2 > v.byteLength) return null;
    const len = v.getUint16(at);
    at += 2;
    if (at + len > v.byteLength) return null;
    frames.push(new Uint8Array(buf, at, len));
    at += len;
  }
  return { firstSeq, capturedUs, level, frames };
}

/** An analyser's magnitude (dB) at each frequency (the loudest of the
 * nearest three bins). */
function levels(analyser, sampleRate, freqs) {
  const bins = new Float32Array(analyser.frequencyBinCount);
  analyser.getFloatFrequencyData(bins);
  const hz = sampleRate / analyser.fftSize;
  return freqs.map((f) => {
    const i = Math.round(f / hz);
    return Math.max(bins[i - 1] ?? -Infinity, bins[i] ?? -Infinity, bins[i + 1] ?? -Infinity);
  });
}

/** Why a stream door refused us, from a HEAD on the Ogg URL (a refused
 * WebSocket hides its HTTP status from scripts). */
async function refusal(url) {
  try {
    const r = await fetch(url, { method: "HEAD" });
    return { status: r.status, retryAfter: Number(r.headers.get("Retry-After")) || 0 };
  } catch {
    return { status: 0, retryAfter: 0 };
  }
}

export class Player {
  constructor(spaceId, token, { onDelay, onStatus, onEnded, fallbackEl }) {
    this.spaceId = spaceId;
    this.token = token;
    this.onDelay = onDelay || (() => {});
    this.onStatus = onStatus || (() => {});
    this.onEnded = onEnded || (() => {});
    this.fallbackEl = fallbackEl;
    this.nextSeq = null;
    this.stopped = false;
    this.channels = 1;
    this.backoff = 250;
    this.stats = {
      mode: "idle", channels: 1, received: 0, lost: 0, reconnects: 0, resumed: 0,
      bufferedMs: 0, targetMs: 0, underruns: 0, droppedMs: 0, delayMs: null, netDelayMs: null,
    };
  }

  get oggUrl() {
    return `/spaces/${this.spaceId}/live.opus?token=${encodeURIComponent(this.token)}`;
  }

  async start() {
    this.ctx = new AudioContext({ sampleRate: 48000, latencyHint: "interactive" });
    this.analyser = this.ctx.createAnalyser();
    this.analyser.fftSize = 8192;
    this.analyser.smoothingTimeConstant = 0.5;
    this.analyser.connect(this.ctx.destination);
    if (typeof AudioDecoder === "undefined" || !this.ctx.audioWorklet) {
      this.fallback();
      return;
    }
    await this.ctx.audioWorklet.addModule("/assets/player-worklet.js");
    if (this.stopped) return;
    this.makeNode();
    this.makeDecoder();
    await this.ctx.resume();
    this.stats.mode = "webcodecs";
    this.connect();
  }

  makeNode() {
    this.node = new AudioWorkletNode(this.ctx, "amphi-player", { outputChannelCount: [this.channels] });
    this.node.port.onmessage = (e) => this.worklet(e.data);
    this.node.connect(this.analyser);
  }

  makeDecoder() {
    this.decoder = new AudioDecoder({
      output: (data) => {
        if (data.numberOfChannels < 2) {
          const pcm = new Float32Array(data.numberOfFrames);
          data.copyTo(pcm, { planeIndex: 0, format: "f32-planar" });
          data.close();
          this.node?.port.postMessage(pcm, [pcm.buffer]);
          return;
        }
        const l = new Float32Array(data.numberOfFrames);
        const r = new Float32Array(data.numberOfFrames);
        data.copyTo(l, { planeIndex: 0, format: "f32-planar" });
        data.copyTo(r, { planeIndex: 1, format: "f32-planar" });
        data.close();
        this.node?.port.postMessage([l, r], [l.buffer, r.buffer]);
      },
      // A corrupt packet closes the decoder: the next message gets a new one.
      error: (e) => console.warn("amphi: decoder error, restarting it:", e.message),
    });
    this.decoder.configure({ codec: "opus", sampleRate: 48000, numberOfChannels: this.channels });
  }

  /** The program turned out stereo (a music space): a 2-channel decoder and
   * worklet node from now on. Happens at most once; what the mono node still
   * buffered (normally nothing: the first packet is stereo) is dropped. */
  goStereo() {
    this.channels = 2;
    this.stats.channels = 2;
    if (this.decoder.state !== "closed") this.decoder.close();
    this.node.port.onmessage = null;
    this.node.disconnect();
    this.makeNode();
    this.makeDecoder();
  }

  fallback() {
    const el = this.fallbackEl;
    el.src = this.oggUrl;
    const src = this.ctx.createMediaElementSource(el);
    src.connect(this.analyser);
    this.stats.mode = "ogg";
    el.onerror = async () => {
      const r = await refusal(this.oggUrl);
      this.onStatus(r.status === 503
        ? `This space is full on this server right now. Try again in ${r.retryAfter || 5} s.`
        : "The stream stopped.", true);
    };
    el.play().catch((e) => this.onStatus(`Cannot play: ${e.message}`, true));
    this.onStatus("Playing the Ogg stream (this browser has no WebCodecs).");
  }

  connect() {
    if (this.stopped) return;
    const proto = location.protocol === "https:" ? "wss" : "ws";
    let url = `${proto}://${location.host}/spaces/${this.spaceId}/live.ws?token=${encodeURIComponent(this.token)}`;
    const resuming = this.nextSeq !== null;
    if (resuming) url += `&from_seq=${this.nextSeq}`;
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.backoff = 250;
      this.lastMessageAt = performance.now();
      if (resuming) this.stats.resumed++;
      this.onStatus("");
    };
    ws.onmessage = (ev) => {
      this.lastMessageAt = performance.now();
      this.message(ev.data);
    };
    ws.onclose = (ev) => {
      if (this.ws === ws) this.lost(ev.code, opened);
    };
    // The program never pauses while a space is live: a connection that
    // goes quiet is dead (a half-open TCP path, a sleeping laptop's Wi-Fi)
    // even if the browser has not noticed yet.
    clearInterval(this.watchdog);
    this.watchdog = setInterval(() => {
      if (this.ws === ws && opened && performance.now() - this.lastMessageAt > STALL_MS) this.drop();
    }, 500);
  }

  /** Abandons the current connection as a network failure would, and
   * resumes from the next frame on a new one. */
  drop() {
    const ws = this.ws;
    if (!ws || this.stopped) return;
    this.ws = null;
    ws.onmessage = null;
    ws.onclose = null;
    ws.close();
    this.lost(1006, true);
  }

  async lost(code, opened) {
    if (this.stopped) return;
    clearInterval(this.watchdog);
    if (code === 4000) {
      // The space ended: there is nothing to reconnect to.
      this.stopped = true;
      this.onEnded();
      return;
    }
    this.stats.reconnects++;
    // A connection that had been open is retried at once (the jitter buffer
    // is still playing); repeated refusals back off.
    let wait = opened ? 0 : this.backoff;
    if (!opened) this.backoff = Math.min(this.backoff * 2, 5000);
    if (!opened) {
      const r = await refusal(this.oggUrl);
      if (r.status === 503) {
        const s = r.retryAfter || 5;
        wait = s * 1000;
        this.onStatus(`This space is full on this server right now; retrying in ${s} s.`, true);
      } else if (r.status === 409) {
        this.onStatus("The space is not live.", true);
        return;
      } else if (r.status === 401 || r.status === 403 || r.status === 404) {
        this.onStatus("You can no longer listen to this space.", true);
        return;
      } else {
        this.onStatus("Connection lost; reconnecting…");
      }
    } else {
      this.onStatus("Connection lost; reconnecting…");
    }
    setTimeout(() => this.connect(), wait);
  }

  message(buf) {
    const m = parseMessage(buf);
    if (!m || !this.decoder) return;
    if (this.decoder.state === "closed") this.makeDecoder();
    if (this.nextSeq !== null && m.firstSeq > this.nextSeq) this.stats.lost += m.firstSeq - this.nextSeq;
    m.frames.forEach((data, k) => {
      const seq = m.firstSeq + k;
      if (this.nextSeq !== null && seq < this.nextSeq) return; // already played (resume overlap)
      if (this.channels === 1 && data.byteLength && data[0] & TOC_STEREO) this.goStereo();
      this.decoder.decode(new EncodedAudioChunk({ type: "key", timestamp: seq * FRAME_US, duration: FRAME_US, data }));
      this.nextSeq = seq + 1;
      this.stats.received++;
    });
    const lastCapturedMs = (m.capturedUs + (m.frames.length - 1) * FRAME_US) / 1000;
    this.stats.netDelayMs = Math.max(0, Date.now() - lastCapturedMs);
    this.report();
  }

  worklet(s) {
    Object.assign(this.stats, s);
    this.report();
  }

  // The delay a listener actually hears: capture → arrival, plus what waits
  // in the jitter buffer and the audio output.
  report() {
    if (this.stats.netDelayMs === null) return;
    const out = ((this.ctx?.outputLatency || 0) + (this.ctx?.baseLatency || 0)) * 1000;
    this.stats.delayMs = Math.round(this.stats.netDelayMs + this.stats.bufferedMs + out);
    this.onDelay(this.stats.delayMs);
  }

  /** Magnitude (dB) of the program output at each frequency (tests, meters). */
  probe(freqs) {
    if (!this.analyser) return freqs.map(() => -Infinity);
    return levels(this.analyser, this.ctx.sampleRate, freqs);
  }

  /** Magnitude (dB) at each frequency in the left and the right channel of
   * what the speakers get (a mono program is heard in both). The probe is
   * made on the first call (tests), so a player nobody probes pays nothing. */
  channelProbe(freqs) {
    if (!this.analyser) return { left: freqs.map(() => -Infinity), right: freqs.map(() => -Infinity) };
    if (!this.sides) {
      // Up-mixed as the destination does ("speakers": mono → both sides).
      const two = new GainNode(this.ctx, { channelCount: 2, channelCountMode: "explicit", channelInterpretation: "speakers" });
      const split = this.ctx.createChannelSplitter(2);
      this.sides = [0, 1].map((c) => {
        const a = this.ctx.createAnalyser();
        a.fftSize = this.analyser.fftSize;
        a.smoothingTimeConstant = this.analyser.smoothingTimeConstant;
        split.connect(a, c);
        return a;
      });
      this.analyser.connect(two);
      two.connect(split);
    }
    const [left, right] = this.sides.map((a) => levels(a, this.ctx.sampleRate, freqs));
    return { left, right };
  }

  stop() {
    this.stopped = true;
    clearInterval(this.watchdog);
    this.ws?.close();
    if (this.fallbackEl) {
      this.fallbackEl.pause();
      this.fallbackEl.removeAttribute("src");
    }
    if (this.decoder && this.decoder.state !== "closed") this.decoder.close();
    this.node?.disconnect();
    this.node = null;
    this.ctx?.close();
    this.stats.mode = "idle";
  }
}
