// Plays decoded program audio with a small adaptive jitter buffer.
// Mono Float32 chunks arrive over the port; output is 128-sample quanta.
class AmphiPlayer extends AudioWorkletProcessor {
  constructor() {
    super();
    this.queue = [];
    this.offset = 0;
    this.buffered = 0;
    this.playing = false;
    this.target = 0.1 * sampleRate;   // start after 100 ms
    this.max = 0.5 * sampleRate;      // never hold more than 500 ms
    this.underruns = 0;
    this.port.onmessage = (e) => {
      if (e.data === "reset") { this.queue = []; this.offset = 0; this.buffered = 0; this.playing = false; return; }
      this.queue.push(e.data);
      this.buffered += e.data.length;
      while (this.buffered > this.max && this.queue.length > 1) {
        // Too far behind live: drop the oldest audio to catch up.
        const dropped = this.queue.shift();
        this.buffered -= dropped.length - this.offset;
        this.offset = 0;
      }
    };
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    if (!this.playing) {
      if (this.buffered >= this.target) this.playing = true;
      else { out.fill(0); return true; }
    }
    let i = 0;
    while (i < out.length && this.queue.length) {
      const chunk = this.queue[0];
      const n = Math.min(out.length - i, chunk.length - this.offset);
      out.set(chunk.subarray(this.offset, this.offset + n), i);
      i += n;
      this.offset += n;
      this.buffered -= n;
      if (this.offset >= chunk.length) { this.queue.shift(); this.offset = 0; }
    }
    if (i < out.length) {
      // Underrun: play silence and rebuild a slightly deeper buffer.
      out.fill(0, i);
      this.playing = false;
      this.underruns++;
      this.target = Math.min(this.target + 0.02 * sampleRate, 0.3 * sampleRate);
      this.port.postMessage({ underruns: this.underruns });
    }
    return true;
  }
}
registerProcessor("amphi-player", AmphiPlayer);
