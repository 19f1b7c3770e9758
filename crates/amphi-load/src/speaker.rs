//! One simulated speaker: a real WebRTC client (str0m, as a browser would
//! be) that makes the WHIP offer, connects (ICE + DTLS-SRTP) from its own
//! UDP socket and sends the pre-encoded tone every 20 ms while it talks
//! and encoded silence while it pauses (a browser without DTX), until the
//! end of the run; then it leaves (WHIP DELETE).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use str0m::change::SdpAnswer;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;

use crate::http;
use crate::talk::TalkPattern;
use crate::tone::Tone;

const FRAME: Duration = Duration::from_millis(20);
/// Frames sent at once at most when the task was late.
const MAX_CATCH_UP: u32 = 5;
/// ICE + DTLS must be up within this long after the answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// What one speaker did.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct SpeakerOutcome {
    /// The WHIP POST's status (0: no answer).
    pub whip_status: u16,
    /// ICE and DTLS came up.
    pub connected: bool,
    /// WHIP POST → connected, ms.
    pub connect_ms: Option<u64>,
    /// RTP packets sent (tone and silence).
    pub packets_sent: u64,
    /// Return-audio (mix-minus) packets received.
    pub packets_heard: u64,
    /// Why it failed or ended early.
    pub error: Option<String>,
}

/// What one speaker is to do.
pub struct SpeakerPlan {
    pub server: SocketAddr,
    pub space: String,
    pub token: String,
    pub tone: Arc<Tone>,
    pub talk: TalkPattern,
    /// The space's start: the talk pattern's time zero.
    pub epoch: Instant,
    pub end_at: Instant,
    /// Offer `sendrecv` (take the mix-minus back, as the web app does).
    pub sendrecv: bool,
}

/// The address to offer from: the one the route to `server` leaves by.
fn local_ip_for(server: SocketAddr) -> IpAddr {
    if server.ip().is_loopback() {
        return server.ip();
    }
    std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| {
            s.connect(server)?;
            s.local_addr()
        })
        .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |a| a.ip())
}

/// Runs one speaker to the end of the run.
pub async fn speak(plan: SpeakerPlan) -> SpeakerOutcome {
    let mut o = SpeakerOutcome::default();
    if let Err(e) = run(plan, &mut o).await {
        o.error = Some(e.to_string());
    }
    o
}

async fn run(mut plan: SpeakerPlan, o: &mut SpeakerOutcome) -> anyhow::Result<()> {
    let sock = UdpSocket::bind((local_ip_for(plan.server), 0)).await?;
    let local = sock.local_addr()?;
    let mut rtc = Rtc::builder()
        .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
        .clear_codecs()
        .enable_opus(true, false)
        .build(Instant::now());
    rtc.add_local_candidate(
        Candidate::host(local, "udp").map_err(|e| anyhow::anyhow!("candidate: {e}"))?,
    );
    let mut change = rtc.sdp_api();
    let dir = if plan.sendrecv {
        Direction::SendRecv
    } else {
        Direction::SendOnly
    };
    let mid = change.add_media(MediaKind::Audio, dir, None, None, None);
    let (offer, pending) = change.apply().ok_or_else(|| anyhow::anyhow!("no offer"))?;
    let asked = Instant::now();
    let resp = http::request(
        plan.server,
        "POST",
        &format!("/api/v1/spaces/{}/whip", plan.space),
        Some(&plan.token),
        Some(("application/sdp", offer.to_sdp_string().as_bytes())),
    )
    .await;
    o.whip_status = resp.status;
    if resp.status != 201 {
        anyhow::bail!("whip {}", resp.status);
    }
    let answer =
        SdpAnswer::from_sdp_string(&resp.body).map_err(|e| anyhow::anyhow!("answer: {e}"))?;
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .map_err(|e| anyhow::anyhow!("answer: {e}"))?;

    let mut buf = vec![0u8; 2048];
    let mut next_frame: Option<Instant> = None;
    let mut frames: u64 = 0;
    let mut talk_frames: u64 = 0;
    let result = loop {
        // Everything str0m has to say, up to its next timer.
        let timeout = loop {
            match rtc.poll_output() {
                Ok(Output::Timeout(t)) => break Ok(t),
                Ok(Output::Transmit(t)) => {
                    let _ = sock.send_to(&t.contents, t.destination).await;
                }
                Ok(Output::Event(Event::Connected)) => {
                    o.connected = true;
                    o.connect_ms = Some(asked.elapsed().as_millis() as u64);
                    next_frame = Some(Instant::now());
                }
                Ok(Output::Event(Event::MediaData(_))) => o.packets_heard += 1,
                Ok(Output::Event(_)) => {}
                Err(e) => break Err(anyhow::anyhow!("rtc: {e}")),
            }
        };
        let timeout = match timeout {
            Ok(t) => t,
            Err(e) => break Err(e),
        };
        let now = Instant::now();
        if now >= plan.end_at {
            break Ok(());
        }
        if !o.connected && now > asked + CONNECT_TIMEOUT {
            break Err(anyhow::anyhow!("not connected"));
        }
        let mut wake = timeout.min(plan.end_at);
        if let Some(f) = next_frame {
            wake = wake.min(f);
        }
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                let Ok((n, source)) = r else { continue };
                let Ok(recv) = Receive::new(Protocol::Udp, source, local, &buf[..n]) else {
                    continue;
                };
                let _ = rtc.handle_input(Input::Receive(Instant::now(), recv));
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                let _ = rtc.handle_input(Input::Timeout(now));
                // The frames due: sent late rather than lost.
                let mut sent = 0;
                while let Some(f) = next_frame.filter(|f| *f <= now) {
                    if sent < MAX_CATCH_UP {
                        let ms = f.saturating_duration_since(plan.epoch).as_millis() as u64;
                        let packet = if plan.talk.talking(ms) {
                            talk_frames += 1;
                            plan.tone.packet(talk_frames)
                        } else {
                            plan.tone.silence.clone()
                        };
                        if send(&mut rtc, mid, frames, f, packet) {
                            o.packets_sent += 1;
                        }
                        sent += 1;
                    }
                    frames += 1;
                    next_frame = Some(f + FRAME);
                }
            }
        }
    };
    // Leave as a client does (best effort).
    if let Some(loc) = resp.location {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            http::request(plan.server, "DELETE", &loc, Some(&plan.token), None),
        )
        .await;
    }
    result
}

/// Writes frame `n` (RTP time n × 960); false if str0m refused it.
fn send(rtc: &mut Rtc, mid: str0m::media::Mid, n: u64, at: Instant, packet: Arc<[u8]>) -> bool {
    let Some(w) = rtc.writer(mid) else {
        return false;
    };
    let Some(pt) = w
        .payload_params()
        .find(|p| p.spec().codec == Codec::Opus)
        .map(|p| p.pt())
    else {
        return false;
    };
    let ts = MediaTime::new(n * 960, Frequency::FORTY_EIGHT_KHZ);
    w.write(pt, at, ts, packet).is_ok()
}
