//! Every output of a private space (`"public": false`) needs its token:
//! `live.opus`, `live.ws`, the LL-HLS playlist and its media, the recording
//! and the HLS replay. Playlists are fetched with a participant's token and
//! name their media with the space's media key (`?t=`), which a CDN passes
//! through; a removed participant is refused at once.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{ADMIN, Server, call, join, wait_for};
use serde_json::json;

/// The status of a GET, reading no more than the head.
fn status(url: &str, token: Option<&str>) -> u16 {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().map(|r| r.status().as_u16()).unwrap_or(0)
}

fn text(url: &str) -> (u16, String) {
    let r = reqwest::blocking::get(url).unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

/// The status line's code of a WebSocket upgrade of `path`.
fn ws_status(s: &Server, path: &str) -> u16 {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    let mut buf = [0u8; 64];
    let n = c.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The URIs a playlist names (media lines and `URI="…"` attributes).
fn uris(playlist: &str) -> Vec<String> {
    let mut out = Vec::new();
    for l in playlist.lines() {
        if !l.starts_with('#') && !l.is_empty() {
            out.push(l.to_owned());
        }
        for part in l.split("URI=\"").skip(1) {
            out.push(part.split('"').next().unwrap().to_owned());
        }
    }
    out
}

#[test]
fn every_output_of_a_private_space_needs_its_token() {
    let s = Server::start(&[]);
    let r = call(
        "POST",
        &s.url("/api/v1/spaces"),
        Some(ADMIN),
        Some(json!({"title": "Members only", "public": false})),
    );
    assert_eq!(r.status, 201);
    let id = r.body["space"]["id"].as_str().unwrap().to_owned();
    let host = r.body["host"]["token"].as_str().unwrap().to_owned();
    let api = |p: &str| s.url(&format!("/api/v1/spaces/{id}{p}"));
    let out = |p: &str| s.url(&format!("/spaces/{id}/{p}"));
    assert_eq!(call("POST", &api("/start"), Some(&host), None).status, 200);
    let (_, guest) = join(&s, &id, "Guest");
    let (gone_pid, gone) = join(&s, &id, "Gone");
    let r = call(
        "POST",
        &api(&format!("/participants/{gone_pid}/remove")),
        Some(&host),
        Some(json!({})),
    );
    assert_eq!(r.status, 200);

    // The listener streams.
    assert_eq!(status(&out("live.opus"), None), 401);
    assert_eq!(status(&out(&format!("live.opus?token={guest}")), None), 200);
    assert_eq!(status(&out(&format!("live.opus?token={gone}")), None), 403);
    assert_eq!(ws_status(&s, &format!("/spaces/{id}/live.ws")), 401);
    assert_eq!(
        ws_status(&s, &format!("/spaces/{id}/live.ws?token={guest}")),
        101
    );

    // LL-HLS: the playlist by token, its media by the key it names.
    assert_eq!(status(&out("hls/live.m3u8"), None), 401);
    assert_eq!(status(&out("hls/live.m3u8"), Some(&gone)), 403);
    let mut playlist = String::new();
    wait_for(10, "a live playlist with parts", || {
        let (code, body) = text(&out(&format!("hls/live.m3u8?token={guest}")));
        assert_eq!(code, 200, "{body}");
        playlist = body;
        playlist.contains("#EXT-X-PART:")
    });
    let named = uris(&playlist);
    assert!(named.len() >= 3, "{playlist}");
    for uri in &named {
        assert!(uri.contains("?t="), "{uri} carries no key");
    }
    let init = named.iter().find(|u| u.starts_with("init.mp4")).unwrap();
    let part = named
        .iter()
        .find(|u| {
            u.starts_with("part-")
                && !playlist.contains(&format!("PRELOAD-HINT:TYPE=PART,URI=\"{u}\""))
        })
        .unwrap();
    for uri in [init, part] {
        let bare = uri.split('?').next().unwrap();
        assert_eq!(status(&out(&format!("hls/{uri}")), None), 200, "{uri}");
        assert_eq!(status(&out(&format!("hls/{bare}")), None), 401, "{bare}");
        assert_eq!(status(&out(&format!("hls/{bare}?t=forged")), None), 401);
    }
    // A key is good for its space only.
    let other = call(
        "POST",
        &s.url("/api/v1/spaces"),
        Some(ADMIN),
        Some(json!({"title": "Elsewhere", "public": false})),
    );
    let other_id = other.body["space"]["id"].as_str().unwrap();
    let key = init.split_once('?').unwrap().1;
    assert_eq!(
        status(
            &s.url(&format!("/spaces/{other_id}/hls/init.mp4?{key}")),
            None
        ),
        401
    );

    // The recording and its HLS replay.
    assert_eq!(call("POST", &api("/end"), Some(&host), None).status, 200);
    let rec = out(&format!("recording.opus?token={guest}"));
    wait_for(5, "the recording", || status(&rec, None) == 200);
    assert_eq!(status(&out("recording.opus"), None), 401);
    assert_eq!(status(&out("recording.opus"), Some(&guest)), 200);
    assert_eq!(status(&out("recording.opus"), Some(&gone)), 403);
    assert_eq!(status(&out("hls/replay.m3u8"), None), 401);
    let (code, replay) = text(&out(&format!("hls/replay.m3u8?token={guest}")));
    assert_eq!(code, 200, "{replay}");
    let seg = uris(&replay)
        .into_iter()
        .find(|u| u.starts_with("seg-") || u.contains("/seg-"))
        .unwrap_or_else(|| panic!("no segment in {replay}"));
    assert!(seg.contains("?t="), "{seg}");
    let bare = seg.split('?').next().unwrap();
    assert_eq!(status(&out(&format!("hls/{seg}")), None), 200, "{seg}");
    assert_eq!(status(&out(&format!("hls/{bare}")), None), 401);
}
