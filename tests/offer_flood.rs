//! A WHIP offer flood from one host does not silence another space: offers
//! are limited per participant, network and node before they reach the RTC
//! thread, the thread creates at most a few sessions per turn after
//! draining its socket, and sessions that never connect are reaped.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Server, ffmpeg_listen, live_space, metric, publish_tone, tone_share, wait_for_audio};

/// A valid Opus offer whose ICE never completes (nothing answers its
/// candidate): each one accepted costs the node a session until reaped.
const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\na=setup:actpass\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n";

#[test]
fn an_offer_flood_does_not_silence_another_space() {
    let s = Server::start(&[]);
    let (quiet, quiet_host, _) = live_space(&s, "Listened to");
    let (noisy, noisy_host, _) = live_space(&s, "Flooded");
    let _speaker = publish_tone(&s, &quiet, &quiet_host, 440, 60);
    wait_for_audio(&s, 100.0);

    // 16 threads post offers at the rate, 10,000 in 12 s (833 a
    // second), for as long as the listener listens.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let created = Arc::new(AtomicU64::new(0));
    let url = s.url(&format!("/api/v1/spaces/{noisy}/whip"));
    let flood: Vec<_> = (0..16)
        .map(|_| {
            let (stop, sent, created, url, token) = (
                stop.clone(),
                sent.clone(),
                created.clone(),
                url.clone(),
                noisy_host.clone(),
            );
            std::thread::spawn(move || {
                let c = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                let start = Instant::now();
                let every = Duration::from_secs_f64(16.0 / 833.0);
                for k in 0u32.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Some(wait) = (start + every * k).checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let r = c
                        .post(&url)
                        .bearer_auth(&token)
                        .header("content-type", "application/sdp")
                        .body(OFFER)
                        .send();
                    sent.fetch_add(1, Ordering::Relaxed);
                    if r.is_ok_and(|r| r.status() == 201) {
                        created.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let packets = metric(&s, "amphi_ingest_packets_total");
    let t0 = Instant::now();
    let pcm = ffmpeg_listen(&s.url(&format!("/spaces/{quiet}/live.opus")), 8.0);
    let rate = (metric(&s, "amphi_ingest_packets_total") - packets) / t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for t in flood {
        t.join().unwrap();
    }
    let windows: Vec<bool> = pcm
        .chunks_exact(4800)
        .map(|b| tone_share(b, 440.0) > 0.5)
        .collect();
    let heard = windows.iter().filter(|h| **h).count() as f64 / windows.len().max(1) as f64;
    eprintln!(
        "offer flood: {} offers sent, {} sessions created; the other space's speaker at {rate:.1} packets/s, its tone in {:.1} % of {} windows of 100 ms",
        sent.load(Ordering::Relaxed),
        created.load(Ordering::Relaxed),
        heard * 100.0,
        windows.len()
    );
    assert!(
        windows.len() >= 70,
        "only {} windows decoded",
        windows.len()
    );
    assert!(
        heard >= 0.95,
        "the tone was heard in {:.1} % of windows",
        heard * 100.0
    );
    // The participant's offers were limited: 2 a second after a burst of 5.
    assert!(
        created.load(Ordering::Relaxed) <= 40,
        "{created:?} sessions created"
    );
}
