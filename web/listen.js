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
    ws.onopen = () => { this.backoff = 250; this.onStatus(""); };
    ws.onmessage = (ev) => this.message(ev.data);
    ws.onclose = (ev) => {
      if (this.stopped) return;
      if (ev.code === 1006 || ev.code === 1000 || ev.code === 1001) {
        this.onStatus("Reconnecting…");
        setTimeout(() => this.connect(), this.backoff);
        this.backoff = Math.min(this.backoff * 2, 5000);
      }
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
