#![no_main]
//! Datagrams and ICE-TCP byte streams at the WebRTC ingest, as anyone on
//! the network can send them: the STUN peek that routes them, the RFC 4571
//! deframer, and the sans-IO `Ingest` with one open session.
//! Properties: nothing panics; every datagram is either routed or counted
//! as garbage; a datagram from a source the session never answered, naming
//! no session's ufrag, gets no reply.
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use amphi_core::{ParticipantId, SpaceId};
use amphi_rtc::framing::Deframer;
use amphi_rtc::ingest::{IngestConfig, Output, Transport};
use amphi_rtc::{Ingest, RtcStats, SessionRequest, stun};
use libfuzzer_sys::fuzz_target;

const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendrecv\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\na=setup:actpass\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=candidate:1 1 udp 2130706431 10.0.0.2 5000 typ host\r\n";

fuzz_target!(|data: &[u8]| {
    // The byte stream as one ICE-TCP connection.
    let mut d = Deframer::default();
    let mut rest = data;
    'stream: while !rest.is_empty() {
        let n = d.push(rest);
        rest = &rest[n..];
        loop {
            match d.next_frame() {
                Ok(Some(f)) => {
                    let _ = stun::classify(f);
                }
                Ok(None) => break,
                Err(_) => break 'stream,
            }
        }
    }

    // The bytes as datagrams: [source selector, length, bytes...]...
    let server: SocketAddr = "10.0.0.1:4000".parse().unwrap();
    let cfg = IngestConfig {
        udp: server,
        tcp: Some("10.0.0.1:4001".parse().unwrap()),
        loopback: false,
        connect_timeout: Duration::from_secs(30),
        max_sessions: 4,
        speaker_max_bitrate: 32_000,
    };
    let stats = Arc::new(RtcStats::default());
    let mut ingest = Ingest::new(cfg, stats.clone());
    let mut now = Instant::now();
    let _ = ingest.create(
        now,
        SessionRequest {
            space: SpaceId(1),
            participant: ParticipantId(1),
            offer_sdp: OFFER.into(),
            audible: Arc::new(AtomicBool::new(true)),
            music: false,
        },
    );
    while ingest.poll_output().is_some() {}
    let mut rest = data;
    let mut sent = 0u64;
    while rest.len() >= 2 {
        let (sel, len) = (rest[0], usize::from(rest[1]) * 6);
        rest = &rest[2..];
        let (dgram, tail) = rest.split_at(len.min(rest.len()));
        rest = tail;
        let transport = if sel & 1 == 0 { Transport::Udp } else { Transport::Tcp };
        let source = SocketAddr::from(([10, 0, 0, 2 + (sel >> 6)], 5000 + u16::from(sel & 0x3e)));
        ingest.handle_datagram(now, transport, source, server, dgram);
        sent += 1;
        while let Some(out) = ingest.poll_output() {
            if let Output::Transmit(t) = out {
                // Only a STUN check naming the session's ufrag, or a source
                // it already answered, gets a reply; fuzzed bytes cannot
                // pass MESSAGE-INTEGRITY, so nothing is answered at all.
                panic!("a reply to fuzzed bytes: {t:?}");
            }
        }
        now += Duration::from_millis(u64::from(sel));
        ingest.handle_timeout(now);
        while ingest.poll_output().is_some() {}
    }
    let garbage = stats.garbage_datagrams.load(Ordering::Relaxed);
    assert!(garbage <= sent);
});
