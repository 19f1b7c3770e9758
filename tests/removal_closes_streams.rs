//! A removal takes effect on every output at once: the participant's
//! listener streams are closed and new ones are refused.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Server, WsReader, call, join, live_space};
use serde_json::json;

fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let end = Instant::now() + limit;
    let mut buf = [0u8; 8192];
    while Instant::now() < end {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn removing_a_participant_closes_their_streams_at_once() {
    let s = Server::start(&[]);
    let (id, host, _) = live_space(&s, "Removal");
    let (pid, lee) = join(&s, &id, "Lee");
    let (_, other) = join(&s, &id, "Other");

    let mut ws = WsReader::connect(s.port, &format!("/spaces/{id}/live.ws?token={lee}"), None);
    ws.next();
    let mut ogg = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    write!(
        ogg,
        "GET /spaces/{id}/live.opus?token={lee} HTTP/1.0\r\n\r\n"
    )
    .unwrap();
    let mut bystander =
        WsReader::connect(s.port, &format!("/spaces/{id}/live.ws?token={other}"), None);
    bystander.next();

    let r = call(
        "POST",
        &s.url(&format!("/api/v1/spaces/{id}/participants/{pid}/remove")),
        Some(&host),
        Some(json!({"ban": true})),
    );
    assert_eq!(r.status, 200);
    assert!(
        closed_within(&mut ws.stream, Duration::from_secs(2)),
        "the removed participant's WebSocket stayed open"
    );
    assert!(
        closed_within(&mut ogg, Duration::from_secs(2)),
        "the removed participant's Ogg stream stayed open"
    );
    // The others keep listening; the removed one cannot come back.
    bystander.next();
    let mut again = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    write!(
        again,
        "GET /spaces/{id}/live.opus?token={lee} HTTP/1.1\r\n\r\n"
    )
    .unwrap();
    let mut buf = [0u8; 256];
    let n = again.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 403"));
}
