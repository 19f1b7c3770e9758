//! A slow listener skips whole units and is closed when it stalls; a fast
//! one beside it receives every unit, in order, whole.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use amphi_egress::{Egress, EgressConfig, NewListener, Protocol};
use bytes::Bytes;

/// A unit is `[len u32][seq u64][filler]` so the reader can check that it
/// arrives whole and in order.
fn unit(seq: u64, size: usize) -> Bytes {
    let mut v = Vec::with_capacity(size);
    v.extend_from_slice(&(size as u32).to_be_bytes());
    v.extend_from_slice(&seq.to_be_bytes());
    v.resize(size, (seq % 251) as u8);
    Bytes::from(v)
}

fn pair(l: &TcpListener) -> (TcpStream, TcpStream) {
    let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (server, _) = l.accept().unwrap();
    (server, client)
}

/// Reads units until EOF or `deadline`, checking each is whole.
fn read_units(mut s: TcpStream, deadline: Instant) -> Vec<u64> {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    while Instant::now() < deadline {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => {}
        }
    }
    let mut seqs = Vec::new();
    let mut at = 0;
    while at + 12 <= buf.len() {
        let len = u32::from_be_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
        if at + len > buf.len() {
            break;
        }
        let seq = u64::from_be_bytes(buf[at + 4..at + 12].try_into().unwrap());
        assert!(
            buf[at + 12..at + len]
                .iter()
                .all(|b| *b == (seq % 251) as u8),
            "unit {seq} arrived corrupted"
        );
        seqs.push(seq);
        at += len;
    }
    seqs
}

#[test]
fn fast_listener_gets_everything_slow_one_skips_and_is_closed() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let egress = Egress::start(EgressConfig {
        workers: 2,
        stall_timeout: Duration::from_millis(600),
        ring: 8,
        sndbuf: Some(16 * 1024),
    })
    .unwrap();
    let out = egress.new_output();

    let (fast_srv, fast_cli) = pair(&l);
    let (slow_srv, slow_cli) = pair(&l);
    // A tiny receive buffer on the slow side fills quickly.
    for (srv, tag) in [(fast_srv, 1), (slow_srv, 2)] {
        egress
            .add_listener(
                &out,
                NewListener {
                    stream: srv,
                    pending: Bytes::new(),
                    next_unit: 0,
                    burst_to: None,
                    tag,
                    protocol: Protocol::Http,
                    tls: None,
                    tls_in: None,
                },
            )
            .unwrap();
    }
    let reader =
        std::thread::spawn(move || read_units(fast_cli, Instant::now() + Duration::from_secs(4)));

    // 200 units of 8 KiB, one every 5 ms: 1.6 MiB the slow peer never reads.
    for seq in 0..200 {
        egress.publish(&out, unit(seq, 8 * 1024), seq);
        std::thread::sleep(Duration::from_millis(5));
    }
    let fast = reader.join().unwrap();
    assert_eq!(
        fast,
        (0..200).collect::<Vec<_>>(),
        "the fast listener missed units"
    );

    // The slow listener was skipped ahead and, stuck, closed.
    let deadline = Instant::now() + Duration::from_secs(3);
    while out.listeners() > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(out.listeners(), 1, "the stalled listener was not closed");
    let stats = egress.stats();
    assert!(stats.units_skipped.load(Ordering::Relaxed) > 0);
    assert_eq!(stats.closed_slow.load(Ordering::Relaxed), 1);

    // What the slow peer did receive is whole units, in increasing order.
    let got = read_units(slow_cli, Instant::now() + Duration::from_secs(2));
    assert!(got.windows(2).all(|w| w[0] < w[1]));
    assert!(got.len() < 200);
    egress.shutdown();
}

#[test]
fn new_listener_gets_its_burst_then_live_units_and_ban_closes_it() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let egress = Egress::start(EgressConfig {
        workers: 1,
        ..Default::default()
    })
    .unwrap();
    let out = egress.new_output();
    for seq in 0..3 {
        egress.publish(&out, unit(seq, 100), seq);
    }
    let newest = out.newest().unwrap();
    assert_eq!(newest.seq, 2);
    let burst: Vec<u8> = out
        .recent(2)
        .iter()
        .flat_map(|u| u.bytes.to_vec())
        .collect();
    let (srv, cli) = pair(&l);
    egress
        .add_listener(
            &out,
            NewListener {
                stream: srv,
                pending: Bytes::from(burst),
                next_unit: newest.seq + 1,
                burst_to: None,
                tag: 42,
                protocol: Protocol::Http,
                tls: None,
                tls_in: None,
            },
        )
        .unwrap();
    for seq in 3..6 {
        egress.publish(&out, unit(seq, 100), seq);
    }
    std::thread::sleep(Duration::from_millis(100));
    egress.close_tag(42);
    let got = read_units(cli, Instant::now() + Duration::from_secs(2));
    assert_eq!(got, vec![1, 2, 3, 4, 5]);
    assert_eq!(out.listeners(), 0);
    egress.shutdown();
}

#[test]
fn reservations_never_exceed_the_cap_under_contention() {
    let egress = std::sync::Arc::new(
        Egress::start(EgressConfig {
            workers: 1,
            ..Default::default()
        })
        .unwrap(),
    );
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let e = egress.clone();
            std::thread::spawn(move || (0..200).filter(|_| e.try_reserve(60)).count())
        })
        .collect();
    let granted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(granted, 60);
    assert_eq!(egress.stats().listeners.load(Ordering::Relaxed), 60);
    egress.release();
    assert!(egress.try_reserve(60));
    assert!(!egress.try_reserve(60));
}

/// An output nobody listens to costs its workers nothing (no copy, no
/// ring): its first listener's worker takes the units it needs from the
/// output's ring, so a connect burst from before the listener, and the
/// units published while it is handed over, all arrive once, in order.
#[test]
fn first_listener_of_an_unheard_output_gets_its_burst_and_every_live_unit() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let egress = Egress::start(EgressConfig {
        workers: 2,
        ..Default::default()
    })
    .unwrap();
    let out = egress.new_output();
    for seq in 0..10 {
        egress.publish(&out, unit(seq, 100), seq);
    }
    let mut clients = Vec::new();
    let mut next = 10;
    // A listener on each worker, units published around each hand-over.
    for _ in 0..2 {
        let (srv, cli) = pair(&l);
        egress
            .add_listener(
                &out,
                NewListener {
                    stream: srv,
                    pending: Bytes::new(),
                    next_unit: 5,
                    burst_to: Some(next - 1),
                    tag: 7,
                    protocol: Protocol::Http,
                    tls: None,
                    tls_in: None,
                },
            )
            .unwrap();
        for _ in 0..3 {
            egress.publish(&out, unit(next, 100), next);
            next += 1;
        }
        clients.push(cli);
    }
    std::thread::sleep(Duration::from_millis(100));
    egress.close_tag(7);
    for cli in clients {
        let got = read_units(cli, Instant::now() + Duration::from_secs(2));
        assert_eq!(got, (5..next).collect::<Vec<_>>());
    }
    egress.shutdown();
}
