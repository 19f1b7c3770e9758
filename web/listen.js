// The web player: live.ws frames → WebCodecs AudioDecoder → AudioWorklet.
// On a drop it reconnects with from_seq and continues where it left off.
// Without WebCodecs it falls back to <audio src=live.opus>.

function parseMessage(buf) {
  const v = new DataView(buf);
  if (v.byteLength < 19 || v.getUint8(0) !== 1) return null;
  const n = v.getUint8(1);
  const firstSeq = Number(v.getBigUint64(2));
  const capturedUs = Number(v.getBigUint64(10));
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
  return { firstSeq, capturedUs, frames };
}

export class Player {
  constructor(spaceId, token, { onDelay, onStatus, fallbackEl }) {
    this.spaceId = spaceId;
    this.token = token;
    this.onDelay = onDelay || (() => {});
    this.onStatus = onStatus || (() => {});
    this.fallbackEl = fallbackEl;
    this.nextSeq = null;
    this.stopped = false;
    this.backoff = 250;
  }

  async start() {
    this.ctx = new AudioContext({ sampleRate: 48000, latencyHint: "interactive" });
    this.analyser = this.ctx.createAnalyser();
    this.analyser.fftSize = 8192;
    this.analyser.connect(this.ctx.destination);
    if (typeof AudioDecoder === "undefined" || !this.ctx.audioWorklet) {
      this.fallback();
      return;
    }
    await this.ctx.audioWorklet.addModule("/assets/player-worklet.js");
    this.node = new AudioWorkletNode(this.ctx, "amphi-player", { outputChannelCount: [1] });
    this.node.connect(this.analyser);
    this.decoder = new AudioDecoder({
      output: (data) => {
        const pcm = new Float32Array(data.numberOfFrames);
        data.copyTo(pcm, { planeIndex: 0, format: "f32-planar" });
        data.close();
        this.node.port.postMessage(pcm, [pcm.buffer]);
      },
      error: (e) => this.onStatus(`decoder error: ${e.message}`, true),
    });
    this.decoder.configure({ codec: "opus", sampleRate: 48000, numberOfChannels: 1 });
    await this.ctx.resume();
    this.connect();
  }

  fallback() {
    const el = this.fallbackEl;
    el.src = `/spaces/${this.spaceId}/live.opus?token=${encodeURIComponent(this.token)}`;
    const src = this.ctx.createMediaElementSource(el);
    src.connect(this.analyser);
    el.play().catch((e) => this.onStatus(`cannot play: ${e.message}`, true));
    this.onStatus("Playing over Ogg (this browser has no WebCodecs).");
  }

  connect() {
    if (this.stopped) return;
    const proto = location.protocol === "https:" ? "wss" : "ws";
    let url = `${proto}://${location.host}/spaces/${this.spaceId}/live.ws?token=${encodeURIComponent(this.token)}`;
    if (this.nextSeq !== null) url += `&from_seq=${this.nextSeq}`;
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    let opened = false;
    ws.onopen = () => { opened = true; this.backoff = 250; this.onStatus(""); };
    ws.onmessage = (ev) => this.message(ev.data);
    ws.onclose = async (ev) => {
      if (this.stopped) return;
      if (ev.code === 4000) {
        // The space ended: nothing to reconnect to.
        this.stopped = true;
        this.onStatus("The space has ended.");
        return;
      }
      let wait = this.backoff;
      this.backoff = Math.min(this.backoff * 2, 5000);
      if (!opened) {
        // A refused WebSocket hides its status: ask the same door with a
        // HEAD request to tell the listener why.
        try {
          const r = await fetch(`/spaces/${this.spaceId}/live.opus?token=${encodeURIComponent(this.token)}`, { method: "HEAD" });
          if (r.status === 503) {
            const s = Number(r.headers.get("Retry-After")) || 5;
            wait = s * 1000;
            this.onStatus(`This space is full on this server right now; retrying in ${s} s.`, true);
          } else if (r.status === 409 || r.status === 403 || r.status === 401) {
            this.onStatus(r.status === 409 ? "The space is not live." : "You can no longer listen to this space.", true);
            return;
          } else {
            this.onStatus("Reconnecting…");
          }
        } catch {
          this.onStatus("Reconnecting…");
        }
      } else {
        this.onStatus("Reconnecting…");
      }
      setTimeout(() => this.connect(), wait);
    };
  }

  message(buf) {
    const m = parseMessage(buf);
    if (!m) return;
    m.frames.forEach((data, k) => {
      const seq = m.firstSeq + k;
      if (this.nextSeq !== null && seq < this.nextSeq) return; // already played
      this.decoder.decode(new EncodedAudioChunk({ type: "key", timestamp: seq * 20000, duration: 20000, data }));
      this.nextSeq = seq + 1;
    });
    const lastCaptured = m.capturedUs + (m.frames.length - 1) * 20000;
    this.onDelay(Math.max(0, Date.now() - lastCaptured / 1000));
  }

  // Magnitude (dB) of the program at each frequency, for tests and meters.
  probe(freqs) {
    if (!this.analyser) return freqs.map(() => -Infinity);
    const bins = new Float32Array(this.analyser.frequencyBinCount);
    this.analyser.getFloatFrequencyData(bins);
    const hz = this.ctx.sampleRate / this.analyser.fftSize;
    return freqs.map((f) => {
      const i = Math.round(f / hz);
      return Math.max(bins[i - 1] ?? -Infinity, bins[i] ?? -Infinity, bins[i + 1] ?? -Infinity);
    });
  }

  stop() {
    this.stopped = true;
    this.ws?.close();
    this.fallbackEl?.pause();
    this.ctx?.close();
  }
}
