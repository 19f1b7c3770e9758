//! The WHIP answer and the session resource agree (RFC 9725): amphi is
//! ICE-lite and non-trickle, so its answer does not claim trickle and a
//! PATCH on the session answers 405.

mod common;

use common::{Server, live_space};

const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=ice-options:trickle\r\na=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\na=setup:actpass\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\r\n";

#[test]
fn the_answer_does_not_claim_trickle_and_patch_is_refused() {
    let s = Server::start(&[]);
    let (id, host, _) = live_space(&s, "Trickle");
    let client = reqwest::blocking::Client::new();
    let res = client
        .post(s.url(&format!("/api/v1/spaces/{id}/whip")))
        .bearer_auth(&host)
        .header("content-type", "application/sdp")
        .body(OFFER)
        .send()
        .expect("POST");
    assert_eq!(res.status().as_u16(), 201);
    let location = res.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let answer = res.text().expect("answer");
    assert!(answer.contains("a=ice-lite"), "{answer}");
    assert!(answer.contains("a=candidate:"), "{answer}");
    assert!(!answer.contains("trickle"), "{answer}");
    let patch = client
        .patch(s.url(&location))
        .bearer_auth(&host)
        .header("content-type", "application/trickle-ice-sdpfrag")
        .body("a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=end-of-candidates\r\n")
        .send()
        .expect("PATCH");
    assert_eq!(patch.status().as_u16(), 405);
    let delete = client
        .delete(s.url(&location))
        .bearer_auth(&host)
        .send()
        .expect("DELETE");
    assert!(delete.status().is_success());
}
