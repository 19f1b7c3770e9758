// Speaking: the microphone is published over WHIP (one non-trickle offer,
// RFC 9725); the other speakers come back on the same connection (the
// server's mix-minus) and play through an <audio> element. The server decides
// whether this audio is heard; muting here as well only spares the uplink.
import { ApiError } from "/assets/api.js";

/** Resolves once ICE gathering is complete, or after `ms` (whatever was
 * gathered by then is sent: host candidates come first on loopback/LAN). */
function gathered(pc, ms) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") {
        clearTimeout(t);
        resolve();
      }
    });
  });
}

export class Mic {
  constructor(spaceId, token, { returnEl, onState } = {}) {
    this.spaceId = spaceId;
    this.token = token;
    this.returnEl = returnEl;
    this.onState = onState || (() => {});
    this.stream = null;
    this.pc = null;
    this.location = null;
  }

  /** Asks for the microphone and publishes it. Throws a DOMException named
   * NotAllowedError when the user (or policy) refuses the microphone, or an
   * ApiError when the server refuses the session. */
  async start() {
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    if (this.cancelled) {
      this.stop();
      throw new ApiError(0, "cancelled", "You are no longer on stage.");
    }
    const track = this.stream.getAudioTracks()[0];
    track.addEventListener("ended", () => this.onState("mic-ended"));
    const pc = new RTCPeerConnection();
    this.pc = pc;
    pc.addTransceiver(track, { direction: "sendrecv", streams: [this.stream] });
    pc.ontrack = (e) => {
      if (!this.returnEl) return;
      this.returnEl.srcObject = e.streams[0] || new MediaStream([e.track]);
      this.returnEl.play().catch(() => {});
    };
    pc.onconnectionstatechange = () => this.onState(pc.connectionState);
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc, 3000);
    if (!this.pc) throw new ApiError(0, "cancelled", "You are no longer on stage.");
    const res = await fetch(`/api/v1/spaces/${this.spaceId}/whip`, {
      method: "POST",
      headers: { "Content-Type": "application/sdp", Authorization: `Bearer ${this.token}` },
      body: pc.localDescription.sdp,
    });
    const body = await res.text();
    if (res.status !== 201) {
      let msg = body || res.statusText;
      let code = "whip";
      try {
        const e = JSON.parse(body).error;
        msg = e.message;
        code = e.code;
      } catch { /* not JSON: keep the text */ }
      this.stop();
      throw new ApiError(res.status, code, msg, res.headers.get("Retry-After"));
    }
    const loc = res.headers.get("Location");
    this.location = loc ? new URL(loc, location.href).href : null;
    if (!this.pc) {
      // Stopped while the offer was in flight: end the session just made.
      this.release();
      return;
    }
    await pc.setRemoteDescription({ type: "answer", sdp: body });
  }

  get live() {
    return this.stream !== null;
  }

  /** Enables or disables the track locally (the server enforces mutes too). */
  setEnabled(on) {
    this.stream?.getAudioTracks().forEach((t) => { t.enabled = on; });
  }

  /** Releases the microphone and ends the WHIP session. */
  stop() {
    this.cancelled = true;
    this.stream?.getTracks().forEach((t) => t.stop());
    this.pc?.close();
    if (this.returnEl) this.returnEl.srcObject = null;
    this.stream = null;
    this.pc = null;
    this.release();
  }

  release() {
    if (!this.location) return;
    const url = this.location;
    this.location = null;
    // keepalive: the DELETE still goes out if the page is being unloaded.
    fetch(url, { method: "DELETE", keepalive: true, headers: { Authorization: `Bearer ${this.token}` } })
      .catch(() => {});
  }
}
