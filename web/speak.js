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

/** Parses RFC 8288 Link header values with rel="ice-server" (RFC 9725
 * §4.6) into RTCIceServer entries. */
export function iceServersFromLinks(header) {
  if (!header) return [];
  const out = [];
  // Links are comma-separated; commas inside <…> or "…" do not split.
  const parts = [];
  let cur = "", inUrl = false, inQuote = false;
  for (const ch of header) {
    if (ch === "<" && !inQuote) inUrl = true;
    else if (ch === ">" && !inQuote) inUrl = false;
    else if (ch === '"' && !inUrl) inQuote = !inQuote;
    if (ch === "," && !inUrl && !inQuote) { parts.push(cur); cur = ""; } else cur += ch;
  }
  parts.push(cur);
  for (const part of parts) {
    const m = part.match(/<([^>]*)>/);
    if (!m) continue;
    const params = {};
    for (const p of part.slice(part.indexOf(">") + 1).split(";")) {
      const kv = p.match(/^\s*([a-zA-Z-]+)\s*=\s*"?([^"]*)"?\s*$/);
      if (kv) params[kv[1].toLowerCase()] = kv[2];
    }
    if (params.rel !== "ice-server") continue;
    const server = { urls: m[1] };
    if (params.username) server.username = params.username;
    if (params.credential) server.credential = params.credential;
    out.push(server);
  }
  return out;
}

/** Why this page cannot use a microphone, or null if it can. Browsers
 * give the microphone only to secure pages (https://, or localhost). */
export function micUnavailableReason() {
  if (!window.isSecureContext) {
    return "Your browser only allows the microphone on a secure page (https://, or this machine's localhost). This page is plain http:// — ask the operator to turn on HTTPS, then open the https:// address.";
  }
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    return "This browser offers no microphone access (navigator.mediaDevices is missing).";
  }
  return null;
}

/** The microphone constraints: a speech space lets the browser clean the
 * voice (echo cancellation, noise suppression, automatic gain); a music
 * space takes the source as it is, in stereo (those filters would pump and
 * smear music, and the server asks for stereo at 128 kbit/s). */
export function captureConstraints(music) {
  return music
    ? { echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: 2 }
    : { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
}

export class Mic {
  constructor(spaceId, token, { returnEl, onState, music } = {}) {
    this.spaceId = spaceId;
    this.token = token;
    this.music = Boolean(music);
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
    const why = micUnavailableReason();
    if (why) throw new ApiError(0, "insecure", why);
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: captureConstraints(this.music),
    });
    if (this.cancelled) {
      this.stop();
      throw new ApiError(0, "cancelled", "You are no longer on stage.");
    }
    const track = this.stream.getAudioTracks()[0];
    track.addEventListener("ended", () => this.onState("mic-ended"));
    await this.connect(track);
    this.watch();
  }

  /** One WHIP session for `track`: ICE servers, offer, answer. */
  async connect(track) {
    // TURN servers (if the node offers any) before gathering: a speaker
    // behind a firewall that blocks UDP reaches the node through them.
    let iceServers = [];
    try {
      const o = await fetch(`/api/v1/spaces/${this.spaceId}/whip`, {
        method: "OPTIONS",
        headers: { Authorization: `Bearer ${this.token}` },
      });
      iceServers = iceServersFromLinks(o.headers.get("Link"));
    } catch { /* no ICE servers: host candidates only */ }
    const pc = new RTCPeerConnection({ iceServers });
    this.pc = pc;
    pc.addTransceiver(track, { direction: "sendrecv", streams: [this.stream] });
    pc.ontrack = (e) => {
      if (!this.returnEl) return;
      this.returnEl.srcObject = e.streams[0] || new MediaStream([e.track]);
      this.returnEl.play().catch(() => {});
    };
    pc.onconnectionstatechange = () => {
      if (pc !== this.pc) return;
      // A failed connection is retried (the node that mixed may have died).
      if (pc.connectionState === "failed") this.reconnect();
      else this.onState(pc.connectionState);
    };
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
      if (!this.reconnecting) this.stop();
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

  /** Checks twice a second that the WHIP session still publishes (a GET on
   * its resource, which any node forwards to the space's owner): 404 (the
   * session is gone: another node took the space over) or 503 (the owner
   * does not answer) starts a reconnection. */
  watch() {
    this.watchdog = setInterval(async () => {
      if (this.reconnecting || !this.location || this.cancelled) return;
      let status = 0;
      try {
        const r = await fetch(this.location, { headers: { Authorization: `Bearer ${this.token}` } });
        status = r.status;
      } catch { /* the page's node is unreachable: try again */ }
      if (status === 404 || status === 503) this.reconnect();
    }, 500);
  }

  /** Publishes the same microphone again through the page's node, with
   * backoff (250 ms doubling to 1 s, for up to 2 minutes), once the
   * session is gone. */
  async reconnect() {
    if (this.reconnecting || this.cancelled || !this.stream) return;
    this.reconnecting = true;
    this.onState("reconnecting");
    this.pc?.close();
    this.pc = null;
    this.location = null;
    const track = this.stream.getAudioTracks()[0];
    const deadline = Date.now() + 120000;
    let backoff = 250;
    try {
      while (!this.cancelled && Date.now() < deadline) {
        // A session is also gone when the space ended: ask before offering
        // again, so an ended space is left quietly rather than refused.
        if (!(await this.spaceLive())) break;
        try {
          await this.connect(track);
          this.onState("reconnected");
          return;
        } catch (e) {
          this.pc?.close();
          this.pc = null;
          // Not on stage any more, or the space is over: give up.
          if (e && [401, 403, 404, 409, 410].includes(e.status)) break;
        }
        await new Promise((r) => setTimeout(r, backoff));
        backoff = Math.min(backoff * 2, 1000);
      }
      if (!this.cancelled) this.onState("failed");
    } finally {
      this.reconnecting = false;
    }
  }

  /** Whether the space is still live (true when the page's node cannot
   * say: a node that does not answer is a reason to retry, not to stop). */
  async spaceLive() {
    try {
      const r = await fetch(`/api/v1/spaces/${this.spaceId}`, {
        headers: { Authorization: `Bearer ${this.token}` },
      });
      if (r.status === 404 || r.status === 410) return false;
      if (!r.ok) return true;
      return (await r.json()).state === "live";
    } catch {
      return true;
    }
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
    clearInterval(this.watchdog);
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
