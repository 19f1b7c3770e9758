//! WebSocket listeners are read by the fan-out workers over real sockets:
//! a Ping gets a Pong with its payload, placed between units even while
//! big units are written slowly; a Close is echoed and the socket closed;
//! data from a listener is closed with 1008; an HTTP listener's input is
//! ignored; a connect burst comes from the output's ring, whole and in
//! order.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use amphi_egress::{Egress, EgressConfig, NewListener, Protocol};
use bytes::Bytes;

/// A unit is `[len u32][seq u64][filler]` (its first byte is 0, never a
/// WebSocket opcode byte, so units and control frames can be told apart).
fn unit(seq: u64, size: usize) -> Bytes {
    let mut v = Vec::with_capacity(size);
    v.extend_from_slice(&(size as u32).to_be_bytes());
    v.extend_from_slice(&seq.to_be_bytes());
    v.resize(size, (seq % 251) as u8);
    Bytes::from(v)
}

/// A masked client frame.
fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0xa1, 0xb2, 0xc3, 0xd4];
    let mut v = vec![b0, 0x80 | payload.len() as u8];
    v.extend_from_slice(&key);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    v
}

#[derive(Debug, PartialEq)]
enum Got {
    Unit(u64),
    Control(u8, Vec<u8>),
}

/// Cuts the bytes a listener received into units and control frames,
/// checking every unit is whole.
fn cut(buf: &[u8]) -> Vec<Got> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        if buf[at] != 0 {
            let len = buf[at + 1] as usize;
            out.push(Got::Control(buf[at], buf[at + 2..at + 2 + len].to_vec()));
            at += 2 + len;
            continue;
        }
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
        out.push(Got::Unit(seq));
        at += len;
    }
    out
}

struct Rig {
    egress: Egress,
    out: std::sync::Arc<amphi_egress::Output>,
    l: TcpListener,
}

impl Rig {
    fn new() -> Rig {
        let egress = Egress::start(EgressConfig {
            workers: 1,
            stall_timeout: Duration::from_secs(10),
            ring: 16,
            sndbuf: Some(4096),
        })
        .unwrap();
        let out = egress.new_output();
        Rig {
            egress,
            out,
            l: TcpListener::bind("127.0.0.1:0").unwrap(),
        }
    }

    fn listener(&self, protocol: Protocol, rcvbuf: Option<usize>) -> TcpStream {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        if let Some(n) = rcvbuf {
            sock.set_recv_buffer_size(n).unwrap();
        }
        sock.connect(&self.l.local_addr().unwrap().into()).unwrap();
        let client: TcpStream = sock.into();
        let (server, _) = self.l.accept().unwrap();
        self.egress
            .add_listener(
                &self.out,
                NewListener {
                    stream: server,
                    pending: Bytes::new(),
                    next_unit: self.out.next_seq(),
                    burst_to: None,
                    tag: 0,
                    protocol,
                    tls: None,
                    tls_in: None,
                },
            )
            .unwrap();
        client
    }
}

/// Reads until EOF or `secs`; returns the bytes and whether EOF came.
fn read_all(s: &mut TcpStream, secs: f64) -> (Vec<u8>, bool) {
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    while Instant::now() < deadline {
        match s.read(&mut chunk) {
            Ok(0) => return (buf, true),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (buf, true),
            Err(_) => {}
        }
    }
    (buf, false)
}

#[test]
fn pings_are_answered_between_big_units_written_slowly() {
    let rig = Rig::new();
    // A small receive buffer: 32 KiB units go out in many partial writes.
    let mut cli = rig.listener(Protocol::WebSocket, Some(4096));
    let reader = {
        let mut cli = cli.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut chunk = [0u8; 1024];
            cli.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(4);
            while Instant::now() < deadline {
                if let Ok(n) = cli.read(&mut chunk) {
                    all.extend_from_slice(&chunk[..n]);
                    // Read slowly, so units stay partly written.
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            all
        })
    };
    for seq in 0..40u64 {
        rig.egress.publish(&rig.out, unit(seq, 32 * 1024), seq);
        if seq % 10 == 5 {
            cli.write_all(&client_frame(0x89, format!("p{seq}").as_bytes()))
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = cut(&reader.join().unwrap());
    let pongs: Vec<&Got> = got
        .iter()
        .filter(|g| matches!(g, Got::Control(..)))
        .collect();
    assert_eq!(
        pongs,
        vec![
            &Got::Control(0x8a, b"p5".to_vec()),
            &Got::Control(0x8a, b"p15".to_vec()),
            &Got::Control(0x8a, b"p25".to_vec()),
            &Got::Control(0x8a, b"p35".to_vec()),
        ]
    );
    let units: Vec<u64> = got
        .iter()
        .filter_map(|g| match g {
            Got::Unit(s) => Some(*s),
            _ => None,
        })
        .collect();
    assert!(units.windows(2).all(|w| w[0] < w[1]), "{units:?}");
    assert!(units.len() > 5);
    assert_eq!(rig.egress.stats().pongs.load(Ordering::Relaxed), 4);
    rig.egress.shutdown();
}

#[test]
fn close_is_echoed_at_once_and_the_socket_closed() {
    let rig = Rig::new();
    let mut cli = rig.listener(Protocol::WebSocket, None);
    rig.egress.publish(&rig.out, unit(0, 100), 0);
    let mut close = client_frame(0x88, &[0x0f, 0xa2]);
    close.extend_from_slice(b"");
    let t0 = Instant::now();
    cli.write_all(&close).unwrap();
    let (buf, eof) = read_all(&mut cli, 2.0);
    assert!(eof, "the socket was not closed");
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    let got = cut(&buf);
    assert_eq!(got.last(), Some(&Got::Control(0x88, vec![0x0f, 0xa2])));
    // Nothing is sent after the close.
    rig.egress.publish(&rig.out, unit(1, 100), 1);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(rig.out.listeners(), 0);
    assert_eq!(rig.egress.stats().closed_ws.load(Ordering::Relaxed), 1);
    rig.egress.shutdown();
}

#[test]
fn data_frames_close_1008_unmasked_1002_and_eof_drops() {
    let rig = Rig::new();
    for (frame, code) in [
        (client_frame(0x81, b"hello"), 1008u16),
        (vec![0x89, 0x00], 1002),
    ] {
        let mut cli = rig.listener(Protocol::WebSocket, None);
        cli.write_all(&frame).unwrap();
        let (buf, eof) = read_all(&mut cli, 2.0);
        assert!(eof);
        match cut(&buf).last() {
            Some(Got::Control(0x88, p)) => assert_eq!(u16::from_be_bytes([p[0], p[1]]), code),
            other => panic!("no close frame: {other:?}"),
        }
    }
    // A client that just goes away is dropped.
    let cli = rig.listener(Protocol::WebSocket, None);
    cli.shutdown(Shutdown::Both).unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while rig.out.listeners() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(rig.out.listeners(), 0);
    rig.egress.shutdown();
}

#[test]
fn an_http_listener_that_sends_and_half_closes_keeps_receiving() {
    let rig = Rig::new();
    let mut cli = rig.listener(Protocol::Http, None);
    cli.write_all(b"GET /again HTTP/1.1\r\n\r\n\x89\x00")
        .unwrap();
    cli.shutdown(Shutdown::Write).unwrap();
    std::thread::sleep(Duration::from_millis(150));
    for seq in 0..3 {
        rig.egress.publish(&rig.out, unit(seq, 100), seq);
    }
    let (buf, _) = read_all(&mut cli, 0.5);
    assert_eq!(cut(&buf), vec![Got::Unit(0), Got::Unit(1), Got::Unit(2)]);
    assert_eq!(rig.out.listeners(), 1);
    rig.egress.shutdown();
}

#[test]
fn a_burst_from_the_ring_arrives_whole_and_in_order() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let egress = Egress::start(EgressConfig {
        workers: 1,
        ring: 8,
        ..Default::default()
    })
    .unwrap();
    let out = egress.new_output_with_ring(64);
    assert_eq!(out.ring(), 64);
    for seq in 0..60 {
        egress.publish(&out, unit(seq, 2000), seq);
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut cli = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (srv, _) = l.accept().unwrap();
    let burst = out.recent(50);
    egress
        .add_listener(
            &out,
            NewListener {
                stream: srv,
                pending: Bytes::from_static(b"\x00\x00\x00\x0cheadhead"),
                next_unit: burst[0].seq,
                burst_to: Some(burst.last().unwrap().seq),
                tag: 0,
                protocol: Protocol::Http,
                tls: None,
                tls_in: None,
            },
        )
        .unwrap();
    let (buf, _) = read_all(&mut cli, 0.5);
    let got = cut(&buf[12..]);
    let expect: Vec<Got> = (10..60).map(Got::Unit).collect();
    assert_eq!(got, expect, "100 KB of burst, every unit, in order");
    egress.shutdown();
}
