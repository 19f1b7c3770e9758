// A WHIP publisher with an RSA DTLS certificate is heard (run by
// scripts/e2e-rsa-dtls). Stock headless Chromium (the journey's flags: fake
// microphone playing $WAV, a 440 Hz tone; no loopback flag) publishes to a
// live space with `RTCPeerConnection({certificates: [rsa]})`, where `rsa` is
// `generateCertificate({name: "RSASSA-PKCS1-v1_5", modulusLength: 2048,
// ...})`: the DTLS client's certificate and its CertificateVerify are then
// RSA, as with GStreamer's webrtcbin (≤ 1.22) and other RSA peers. Then
// ffmpeg listens to the space's live.opus and the tone must be there. The
// same with Chromium's default (ECDSA P-256) certificate as a control.
import { spawn } from "node:child_process";
import { launch, api as callApi } from "./chromium.mjs";

const { BASE, ADMIN, WAV } = process.env;

const api = (method, path, token, body) => callApi(BASE, method, path, token, body);

/** `seconds` of the space's Ogg stream, decoded by ffmpeg (mono, 48 kHz). */
function listen(id, seconds) {
  return new Promise((resolve, reject) => {
    const ff = spawn("ffmpeg", ["-v", "error", "-nostdin", "-i", `${BASE}/spaces/${id}/live.opus`,
      "-t", String(seconds), "-f", "f32le", "-ac", "1", "-ar", "48000", "-"]);
    const chunks = [];
    ff.stdout.on("data", (c) => chunks.push(c));
    ff.stderr.on("data", (c) => process.stderr.write(c));
    ff.on("error", reject);
    ff.on("exit", (code) => {
      if (code !== 0) return reject(new Error(`ffmpeg exited with ${code}`));
      const buf = Buffer.concat(chunks);
      resolve(new Float32Array(buf.buffer, buf.byteOffset, Math.floor(buf.length / 4)));
    });
  });
}

/** Seconds of `pcm` (48 kHz) whose 100 ms windows are mostly a `freq` tone:
 * the Goertzel power at `freq` against the window's energy. */
function secondsOfTone(pcm, freq) {
  const n = 4800;
  const k = (2 * Math.cos((2 * Math.PI * freq) / 48000));
  let tone = 0;
  for (let at = 0; at + n <= pcm.length; at += n) {
    let s1 = 0, s2 = 0, energy = 0;
    for (let i = at; i < at + n; i++) {
      const s0 = pcm[i] + k * s1 - s2;
      s2 = s1;
      s1 = s0;
      energy += pcm[i] * pcm[i];
    }
    const power = s1 * s1 + s2 * s2 - k * s1 * s2;
    // A pure tone gives power = energy × n / 2.
    if (energy > n * 1e-4 && power / (energy * n / 2) > 0.5) tone += 0.1;
  }
  return tone;
}

async function publish(browser, kind) {
  const created = await api("POST", "/api/v1/spaces", ADMIN, { title: `DTLS ${kind}` });
  const id = created.space.id;
  const host = created.host.token;
  await api("POST", `/api/v1/spaces/${id}/start`, host);
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(`${BASE}/healthz`);
  const result = await page.evaluate(async ({ id, host, kind }) => {
    const certificates = kind === "rsa"
      ? [await RTCPeerConnection.generateCertificate({
        name: "RSASSA-PKCS1-v1_5", modulusLength: 2048,
        publicExponent: new Uint8Array([1, 0, 1]), hash: "SHA-256",
      })]
      : [];
    const pc = new RTCPeerConnection({ certificates });
    window.pc = pc;
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    pc.addTransceiver(stream.getAudioTracks()[0], { direction: "sendonly", streams: [stream] });
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((resolve) => {
      if (pc.iceGatheringState === "complete") return resolve();
      pc.addEventListener("icegatheringstatechange", () => { if (pc.iceGatheringState === "complete") resolve(); });
      setTimeout(resolve, 3000);
    });
    const res = await fetch(`/api/v1/spaces/${id}/whip`, {
      method: "POST",
      headers: { "Content-Type": "application/sdp", Authorization: `Bearer ${host}` },
      body: pc.localDescription.sdp,
    });
    const answer = await res.text();
    if (res.status !== 201) return { whip: res.status, body: answer };
    await pc.setRemoteDescription({ type: "answer", sdp: answer });
    const t0 = performance.now();
    const states = [];
    while (performance.now() - t0 < 15000) {
      if (states.at(-1) !== pc.connectionState) states.push(pc.connectionState);
      if (pc.connectionState === "connected" || pc.connectionState === "failed") break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const stats = await pc.getStats();
    let transport = null;
    const certs = [];
    stats.forEach((s) => {
      if (s.type === "transport") transport = s;
      if (s.type === "certificate") certs.push(s);
    });
    const local = certs.find((c) => c.id === transport?.localCertificateId);
    return {
      whip: res.status,
      states,
      connected_ms: Math.round(performance.now() - t0),
      dtls: transport && {
        state: transport.dtlsState, role: transport.dtlsRole, tls: transport.tlsVersion,
        cipher: transport.dtlsCipher, srtp: transport.srtpCipher,
      },
      // The DER of our certificate: rsaEncryption's OID (1.2.840.113549.1.1.1)
      // is in it for an RSA key.
      local_rsa: local ? atob(local.base64Certificate).includes("\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01") : null,
    };
  }, { id, host, kind });
  let tone = 0;
  if (result.states?.at(-1) === "connected") {
    tone = secondsOfTone(await listen(id, 4), 440);
  }
  await ctx.close();
  await api("POST", `/api/v1/spaces/${id}/end`, host).catch(() => {});
  return { kind, ...result, tone, errors };
}

const browser = await launch({ wav: WAV });
let failed = false;
try {
  for (const kind of ["rsa", "ecdsa"]) {
    const r = await publish(browser, kind);
    console.log(JSON.stringify(r));
    const why = [];
    if (r.whip !== 201) why.push(`WHIP answered ${r.whip}: ${r.body}`);
    else if (r.states.at(-1) !== "connected") why.push(`never connected (${r.states.join(" → ")})`);
    if (kind === "rsa" && r.local_rsa === false) why.push("the certificate in use is not RSA");
    if (r.whip === 201 && r.tone < 2) why.push(`heard ${r.tone.toFixed(1)} s of the 440 Hz tone in 4 s`);
    if (r.errors.length) why.push(r.errors.join("; "));
    if (why.length) {
      failed = true;
      console.error(`rsa-dtls: ${kind}: FAILED: ${why.join("; ")}`);
    } else {
      console.log(`rsa-dtls: ${kind}: connected in ${r.connected_ms} ms (${r.dtls?.tls} ${r.dtls?.cipher}, DTLS ${r.dtls?.role}), heard ${r.tone.toFixed(1)} s of tone in 4 s`);
    }
  }
} finally {
  await browser.close();
}
if (failed) process.exitCode = 1;
