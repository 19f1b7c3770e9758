//! ICE-TCP over real sockets: the engine with a TCP listener, and a real
//! str0m peer whose only candidate is an active TCP one (its UDP might as
//! well be blocked). The peer connects to the passive candidate of the
//! answer, frames every packet as RFC 4571 says, and publishes Opus that
//! comes out of the engine as audio.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use amphi_core::{ParticipantId, SpaceId};
use amphi_rtc::framing::{Deframer, frame, is_ice_tcp_preface};
use amphi_rtc::{IceTcp, RtcConfig, RtcEngine, RtcEvent, SessionRequest};
use str0m::change::SdpAnswer;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime};
use str0m::net::{Protocol, Receive, TcpType};
use str0m::{Candidate, Input, Output, Rtc};

/// Runs a future to completion on this thread.
fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park_timeout(Duration::from_millis(50));
    }
}

/// The answer's passive TCP candidate.
fn tcp_candidate(answer: &str) -> SocketAddr {
    let line = answer
        .lines()
        .find(|l| l.starts_with("a=candidate:") && l.contains(" tcp ") && l.contains("passive"))
        .unwrap_or_else(|| panic!("no passive TCP candidate in {answer}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    format!("{}:{}", f[4], f[5]).parse().expect("address")
}

#[test]
fn a_peer_with_only_tcp_publishes_and_is_heard() {
    let (engine, events) = RtcEngine::start(RtcConfig {
        ice_tcp: IceTcp::Listen(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..RtcConfig::default()
    })
    .expect("engine");
    let tcp_local = engine.tcp_local_addr().expect("tcp listener");
    publish_over_tcp(&engine, &events, tcp_local);
    assert_eq!(
        engine
            .handle()
            .stats()
            .tcp_connections
            .load(Ordering::Relaxed),
        1
    );
    engine.shutdown();
}

/// As the node's HTTP front door will: another server accepts on its own
/// port, peeks the first bytes, and hands ICE-TCP connections over.
#[test]
fn a_connection_handed_over_by_a_front_door_publishes() {
    let front = TcpListener::bind("127.0.0.1:0").expect("front door");
    let port = front.local_addr().unwrap().port();
    let (engine, events) = RtcEngine::start(RtcConfig {
        ice_tcp: IceTcp::Adopted { port },
        ..RtcConfig::default()
    })
    .expect("engine");
    assert_eq!(engine.tcp_local_addr(), None);
    let rtc = engine.handle();
    std::thread::spawn(move || {
        for s in front.incoming().flatten() {
            let mut peek = [0u8; 10];
            let ice = loop {
                let n = s.peek(&mut peek).unwrap_or(0);
                match is_ice_tcp_preface(&peek[..n]) {
                    Some(v) => break v,
                    None if n == 0 => break false,
                    None => std::thread::yield_now(),
                }
            };
            assert!(ice, "the peer's first bytes were not ICE-TCP: {peek:?}");
            let peer = s.peer_addr().unwrap();
            rtc.adopt_tcp(s, peer);
        }
    });
    publish_over_tcp(&engine, &events, SocketAddr::from(([127, 0, 0, 1], port)));
    assert_eq!(
        engine
            .handle()
            .stats()
            .tcp_connections
            .load(Ordering::Relaxed),
        1
    );
    engine.shutdown();
}

/// A str0m peer with only an active TCP candidate publishes 25 Opus
/// packets to the engine, whose answer must offer `tcp_candidate`.
fn publish_over_tcp(
    engine: &RtcEngine,
    events: &crossbeam_channel::Receiver<RtcEvent>,
    tcp_local: SocketAddr,
) {
    let start = Instant::now();
    // The peer's active candidate: port 9, as RFC 6544 writes it.
    let local: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut rtc = Rtc::builder()
        .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
        .clear_codecs()
        .enable_opus(true, false)
        .build(start);
    rtc.add_local_candidate(
        Candidate::builder()
            .tcp()
            .host(local)
            .tcptype(TcpType::Active)
            .build()
            .unwrap(),
    );
    let mut change = rtc.sdp_api();
    let mid = change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let (offer, pending) = change.apply().unwrap();
    let info = block_on(engine.handle().create_session(SessionRequest {
        space: SpaceId(1),
        participant: ParticipantId(2),
        offer_sdp: offer.to_sdp_string(),
        audible: Arc::new(AtomicBool::new(true)),
        music: false,
    }))
    .expect("session");
    let server = tcp_candidate(&info.answer_sdp);
    assert_eq!(server, tcp_local);
    rtc.sdp_api()
        .accept_answer(
            pending,
            SdpAnswer::from_sdp_string(&info.answer_sdp).unwrap(),
        )
        .unwrap();

    let mut stream: Option<TcpStream> = None;
    let mut deframer = Deframer::default();
    let mut out = Vec::new();
    let mut heard = 0;
    let mut connected = false;
    let mut rtp_ts = 0u64;
    let mut next_frame = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(15);
    while heard < 25 {
        assert!(
            Instant::now() < deadline,
            "connected {connected}, heard {heard}; engine stats: garbage {}",
            engine
                .handle()
                .stats()
                .garbage_datagrams
                .load(Ordering::Relaxed)
        );
        // The peer's output: framed onto the one TCP connection.
        let timeout = loop {
            match rtc.poll_output().unwrap() {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    assert_eq!(t.proto, Protocol::Tcp, "a UDP packet from a TCP-only peer");
                    assert_eq!(t.destination, server);
                    let s = stream.get_or_insert_with(|| {
                        let s = TcpStream::connect(server).expect("connect");
                        s.set_nodelay(true).unwrap();
                        s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
                        s
                    });
                    out.clear();
                    assert!(frame(&mut out, &t.contents));
                    s.write_all(&out).expect("write");
                }
                Output::Event(str0m::Event::Connected) => connected = true,
                Output::Event(_) => {}
            }
        };
        // What the engine sent back.
        if let Some(s) = &mut stream {
            match s.read(deframer.spare()) {
                Ok(0) => panic!("the engine closed the connection"),
                Ok(n) => deframer.filled(n),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("read: {e}"),
            }
            while let Some(f) = deframer.next_frame().expect("frame") {
                let input = Input::Receive(
                    Instant::now(),
                    Receive {
                        proto: Protocol::Tcp,
                        source: server,
                        destination: local,
                        contents: f.try_into().expect("packet"),
                    },
                );
                rtc.handle_input(input).unwrap();
            }
        } else {
            // Nothing sent yet: wait for the peer's next timer.
            let until_timer = timeout.saturating_duration_since(Instant::now());
            std::thread::sleep(until_timer.min(Duration::from_millis(5)));
        }
        let now = Instant::now();
        if connected && now >= next_frame {
            next_frame = now + Duration::from_millis(20);
            let w = rtc.writer(mid).expect("writer");
            let pt = w
                .payload_params()
                .find(|p| p.spec().codec == Codec::Opus)
                .map(|p| p.pt())
                .expect("opus");
            w.write(
                pt,
                now,
                MediaTime::new(rtp_ts, Frequency::FORTY_EIGHT_KHZ),
                vec![0xfc, 0xff, 0xfe],
            )
            .unwrap();
            rtp_ts += 960;
        }
        rtc.handle_input(Input::Timeout(Instant::now())).unwrap();
        while let Ok(ev) = events.try_recv() {
            if let RtcEvent::Audio { id, payload, .. } = ev {
                assert_eq!(id, info.id);
                assert_eq!(&payload[..], &[0xfc, 0xff, 0xfe]);
                heard += 1;
            }
        }
    }
    assert!(connected);
}

/// Whether the engine closes `stream` within 3 s (EOF or reset).
fn closed_by_engine(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut buf = [0u8; 64];
    matches!(stream.read(&mut buf), Ok(0))
        || matches!(stream.read(&mut buf), Err(e) if e.kind() == ErrorKind::ConnectionReset)
}

#[test]
fn a_tcp_connection_that_does_not_start_with_ice_is_closed() {
    let (engine, _events) = RtcEngine::start(RtcConfig {
        ice_tcp: IceTcp::Listen(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..RtcConfig::default()
    })
    .expect("engine");
    let addr = engine.tcp_local_addr().expect("tcp listener");
    // A well-framed packet that is no session's.
    let mut s = TcpStream::connect(addr).unwrap();
    let mut out = Vec::new();
    frame(&mut out, &[0x80; 40]);
    s.write_all(&out).unwrap();
    assert!(
        closed_by_engine(&mut s),
        "framed garbage kept the connection"
    );
    // An HTTP request: its first "length" is far over a frame.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(closed_by_engine(&mut s), "HTTP kept the connection");
    let handle = engine.handle();
    let stats = handle.stats();
    assert_eq!(stats.tcp_connections.load(Ordering::Relaxed), 2);
    assert!(stats.garbage_datagrams.load(Ordering::Relaxed) >= 2);
    engine.shutdown();
}
