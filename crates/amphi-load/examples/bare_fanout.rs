//! The floor: a bare fan-out loop with nothing else in it. It accepts HTTP
//! clients, answers 200 `audio/ogg`, and every 100 ms writes one shared Ogg
//! page of the program's size to every client with a non-blocking send.
//! Measured with `amphi load --path /bare.opus --pid <its pid>` beside amphi
//! in the same run, it is the kernel's cost of sending, which amphi's
//! fan-out is compared to.
//!
//! Usage: bare_fanout ADDR [PAGE_BYTES]

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9000".into());
    let page_bytes: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(400);
    let listener = TcpListener::bind(&addr).expect("bind");
    eprintln!("bare fan-out on {addr}, {page_bytes}-byte pages every 100 ms");
    let clients: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));

    // Valid Ogg: headers for each new client, then one page of five
    // equal packets per 100 ms, built once and shared.
    let serial = 7;
    let mut pager = amphi_media::OggPager::new(serial, 5);
    let headers = pager.headers();
    let packet = bytes::Bytes::from(vec![0xfcu8; page_bytes / 5]);

    let accept_clients = clients.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let mut s = s;
            let mut buf = [0u8; 2048];
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Type: audio/ogg\r\n\r\n");
            let _ = s.write_all(&headers);
            let _ = s.set_nonblocking(true);
            if let Ok(mut c) = accept_clients.lock() {
                c.push(s);
            }
        }
    });

    let mut seq = 0u64;
    let mut next = Instant::now();
    loop {
        let mut page = None;
        for _ in 0..5 {
            let f = amphi_core::Frame {
                seq,
                captured_at_us: 0,
                opus: packet.clone(),
                program_level: 0,
                speakers: Arc::from(Vec::new()),
            };
            seq += 1;
            page = pager.push(&f).or(page);
        }
        if let Some(page) = page
            && let Ok(mut c) = clients.lock()
        {
            c.retain_mut(|s| match s.write(&page) {
                Ok(_) => true,
                Err(e) => e.kind() == ErrorKind::WouldBlock,
            });
        }
        next += Duration::from_millis(100);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}
