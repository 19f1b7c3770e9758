// The program's playout: decoded Float32 chunks arrive over the port and
// leave as 128-sample render quanta, behind a small adaptive jitter buffer.
// A mono program's chunk is one Float32Array; a stereo program's (a music
// space) is [left, right], played by a node made with 2 output channels.
//
// Why adaptive: messages arrive every 100 ms (5 frames each), so the buffer
// naturally swings by 100 ms; network jitter comes on top. Start playing at
// ~100 ms buffered; each underrun deepens the target by 20 ms (up to 400 ms);
// a long calm stretch gives 10 ms back (down to 60 ms). If the buffer grows
// well past the target (a burst after a stall, a resume from history) the
// oldest audio is dropped so the listener stays close to live.
const MIN = 0.06;
const START = 0.1;
const MAX = 0.4;
const CALM_SECONDS = 15;

/** Sample frames in a chunk: a mono Float32Array or [left, right] planes. */
const frames = (chunk) => (chunk instanceof Float32Array ? chunk.length : chunk[0].length);

class AmphiPlayer extends AudioWorkletProcessor {
  constructor() {
    super();
    this.queue = [];
    this.offset = 0;
    this.buffered = 0;
    this.playing = false;
    this.target = START * sampleRate;
    this.underruns = 0;
    this.dropped = 0;
    this.calm = 0;
    this.sinceReport = 0;
    this.port.onmessage = (e) => {
      if (e.data === "reset") {
        this.queue = [];
        this.offset = 0;
        this.buffered = 0;
        this.playing = false;
        return;
      }
      this.queue.push(e.data);
      this.buffered += frames(e.data);
      // Headroom above the target: one message (100 ms) plus margin.
      const ceiling = this.target + 0.25 * sampleRate;
      while (this.buffered > ceiling && this.queue.length > 1) {
        const old = this.queue.shift();
        const n = frames(old) - this.offset;
        this.buffered -= n;
        this.dropped += n;
        this.offset = 0;
      }
    };
  }

  process(_inputs, outputs) {
    const outs = outputs[0];
    const out = outs[0];
    this.sinceReport += out.length;
    if (this.sinceReport >= sampleRate / 4) {
      this.sinceReport = 0;
      this.port.postMessage({
        bufferedMs: (this.buffered / sampleRate) * 1000,
        targetMs: (this.target / sampleRate) * 1000,
        underruns: this.underruns,
        droppedMs: (this.dropped / sampleRate) * 1000,
        playing: this.playing,
      });
    }
    if (!this.playing) {
      if (this.buffered >= this.target) {
        this.playing = true;
      } else {
        for (const o of outs) o.fill(0);
        return true;
      }
    }
    let i = 0;
    while (i < out.length && this.queue.length) {
      const chunk = this.queue[0];
      const len = frames(chunk);
      const n = Math.min(out.length - i, len - this.offset);
      if (chunk instanceof Float32Array) {
        // Mono (in a stereo node only the chunks decoded before the switch).
        for (const o of outs) o.set(chunk.subarray(this.offset, this.offset + n), i);
      } else {
        for (let c = 0; c < outs.length; c++) {
          const plane = chunk[Math.min(c, chunk.length - 1)];
          outs[c].set(plane.subarray(this.offset, this.offset + n), i);
        }
      }
      i += n;
      this.offset += n;
      this.buffered -= n;
      if (this.offset >= len) {
        this.queue.shift();
        this.offset = 0;
      }
    }
    if (i < out.length) {
      // Underrun: silence now, and rebuild a slightly deeper buffer.
      for (const o of outs) o.fill(0, i);
      this.playing = false;
      this.underruns++;
      this.calm = 0;
      this.target = Math.min(this.target + 0.02 * sampleRate, MAX * sampleRate);
    } else {
      this.calm += out.length;
      if (this.calm >= CALM_SECONDS * sampleRate) {
        this.calm = 0;
        this.target = Math.max(this.target - 0.01 * sampleRate, MIN * sampleRate);
      }
    }
    return true;
  }
}

registerProcessor("amphi-player", AmphiPlayer);
