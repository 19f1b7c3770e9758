// Speaking: the microphone published over WHIP; the other speakers come
// back on the same connection (a mix-minus) and play in an <audio>.
import { ApiError } from "/assets/api.js";

function gathered(pc, ms) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") { clearTimeout(t); resolve(); }
    });
  });
}

export class Mic {
  constructor(spaceId, token, returnEl) {
    this.spaceId = spaceId;
    this.token = token;
    this.returnEl = returnEl;
  }

  async start() {
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    const pc = new RTCPeerConnection();
    this.pc = pc;
    pc.addTransceiver(this.stream.getAudioTracks()[0], { direction: "sendrecv", streams: [this.stream] });
    pc.ontrack = (e) => {
      this.returnEl.srcObject = e.streams[0] || new MediaStream([e.track]);
      this.returnEl.play().catch(() => {});
    };
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc, 3000);
    const res = await fetch(`/api/v1/spaces/${this.spaceId}/whip`, {
      method: "POST",
      headers: { "Content-Type": "application/sdp", Authorization: `Bearer ${this.token}` },
      body: pc.localDescription.sdp,
    });
    const body = await res.text();
    if (res.status !== 201) {
      let msg = body;
      try { msg = JSON.parse(body).error.message; } catch { /* plain text */ }
      this.stop();
      throw new ApiError(res.status, "whip", msg, res.headers.get("Retry-After"));
    }
    this.location = res.headers.get("Location");
    await pc.setRemoteDescription({ type: "answer", sdp: body });
  }

  setEnabled(on) {
    this.stream?.getAudioTracks().forEach((t) => { t.enabled = on; });
  }

  // Releases the microphone and ends the WHIP session.
  stop() {
    this.stream?.getTracks().forEach((t) => t.stop());
    this.pc?.close();
    if (this.location) {
      fetch(this.location, { method: "DELETE", headers: { Authorization: `Bearer ${this.token}` } }).catch(() => {});
    }
    this.stream = null;
    this.pc = null;
    this.location = null;
  }
}
