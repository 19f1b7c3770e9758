//! Writes the seed corpora under `fuzz/corpus/<target>/` from amphi's own
//! encoders (so every seed is a valid input of today's formats), then
//! checks each seed is accepted by the parser it seeds.
//!
//! Run: `cargo run --manifest-path fuzz/Cargo.toml --example seeds`
use std::path::Path;
use std::sync::Arc;

use amphi_cluster::{CountsReport, ForwardReply, ForwardRequest, Lease, SpaceCounts};
use amphi_core::token::{Claims, IdentityClaims, TokenKey};
use amphi_core::{Frame, SpeakerLevel};
use amphi_core::{ParticipantId, SpaceId};
use amphi_fuzz::room::{Input, run};
use amphi_media::OggPager;
use amphi_media::opus::{Encoder, FRAME};
use arbitrary::{Arbitrary, Unstructured};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;

/// A WHIP offer shaped like a browser's (one audio m-line, Opus and PCMU).
const BROWSER_OFFER: &str = "v=0\r
o=- 4611731400430051336 2 IN IP4 127.0.0.1\r
s=-\r
t=0 0\r
a=group:BUNDLE 0\r
a=extmap-allow-mixed\r
a=msid-semantic: WMS\r
m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r
c=IN IP4 0.0.0.0\r
a=rtcp:9 IN IP4 0.0.0.0\r
a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\r
a=ice-ufrag:abcd\r
a=ice-pwd:abcdefghijklmnopqrstuvwx\r
a=ice-options:trickle\r
a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r
a=setup:actpass\r
a=mid:0\r
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r
a=extmap:3 urn:ietf:params:rtp-hdrext:sdes:mid\r
a=sendonly\r
a=msid:- t0\r
a=rtcp-mux\r
a=rtpmap:111 opus/48000/2\r
a=rtcp-fb:111 transport-cc\r
a=fmtp:111 minptime=10;useinbandfec=1\r
a=rtpmap:0 PCMU/8000\r
a=ssrc:1 cname:x\r
";

fn write(dir: &Path, target: &str, name: &str, data: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).expect("corpus directory is writable");
    std::fs::write(d.join(name), data).expect("corpus file is writable");
}

/// Ten 20 ms frames of a 440 Hz tone, encoded as the mixer would.
fn frames() -> Vec<Frame> {
    let mut enc = Encoder::new(32_000).expect("32 kbit/s is a valid bitrate");
    (0..10u64)
        .map(|seq| {
            let mut pcm = [0f32; FRAME];
            for (i, s) in pcm.iter_mut().enumerate() {
                let t = (seq as usize * FRAME + i) as f32 / 48_000.0;
                *s = 0.3 * (t * 440.0 * std::f32::consts::TAU).sin();
            }
            Frame {
                seq: 1000 + seq,
                captured_at_us: 1_700_000_000_000_000 + seq * 20_000,
                opus: enc.encode(&pcm).expect("a tone encodes"),
                program_level: 40,
                speakers: Arc::from(Vec::new()),
            }
        })
        .collect()
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let frames = frames();

    // ogg_page: first byte picks the chunk size, the rest is a stream.
    let mut pager = OggPager::new(7, 5);
    let headers = pager.headers();
    let mut stream = headers.to_vec();
    for f in &frames {
        if let Some(p) = pager.push(f) {
            stream.extend_from_slice(&p);
        }
    }
    write(
        &dir,
        "ogg_page",
        "headers",
        &[&[26u8][..], &headers].concat(),
    );
    write(&dir, "ogg_page", "stream", &[&[96u8][..], &stream].concat());
    let mut garbled = vec![3u8];
    garbled.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
    garbled.extend_from_slice(&stream[..stream.len() / 2]);
    garbled.extend_from_slice(&stream);
    write(&dir, "ogg_page", "garbled", &garbled);

    // opus_packet: a real packet, and the same frame twice as code 3 CBR.
    let p = &frames[3].opus;
    write(&dir, "opus_packet", "tone", p);
    let mut code3 = vec![p[0] | 3, 2];
    code3.extend_from_slice(&p[1..]);
    code3.extend_from_slice(&p[1..]);
    write(&dir, "opus_packet", "code3", &code3);

    // ws_message: five frames as one live.ws message.
    write(
        &dir,
        "ws_message",
        "five_frames",
        &amphi_media::wire::encode_message(&frames[..5]),
    );

    // recording_frames: a segment file with a restart (a gap in seq).
    let mut rec = frames.clone();
    rec[7..].iter_mut().for_each(|f| f.seq += 500);
    write(
        &dir,
        "recording_frames",
        "gap",
        &amphi_hls::frames::encode(&rec),
    );

    // token: mode byte (even: as sent; odd: claims signed by the target).
    let key = TokenKey::from_bytes([9; 32]);
    let claims = Claims {
        space: SpaceId(1),
        pid: ParticipantId(2),
        name: "Ada".into(),
        exp: 4_000_000_000,
        idsub: None,
    };
    let valid = key.sign(&claims);
    write(&dir, "token", "valid", &[b"\0", valid.as_bytes()].concat());
    let mut parts = valid.split('.');
    let (_, payload) = (parts.next(), parts.next().unwrap_or_default());
    let none = format!("{}.{payload}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#));
    write(
        &dir,
        "token",
        "alg_none",
        &[b"\0", none.as_bytes()].concat(),
    );
    let json = serde_json::to_vec(&claims).expect("claims serialise");
    write(
        &dir,
        "token",
        "signed_claims",
        &[b"\x01", &json[..]].concat(),
    );
    let identity = IdentityClaims {
        sub: "u-42".into(),
        name: Some("Ada".into()),
        exp: 4_000_000_000,
    };
    let json = serde_json::to_vec(&identity).expect("claims serialise");
    write(
        &dir,
        "token",
        "signed_identity",
        &[b"\x01", &json[..]].concat(),
    );

    // api_fields: ids, a name, reactions.
    write(
        &dir,
        "api_fields",
        "space_id",
        SpaceId(0x00c0ffee12345678).to_string().as_bytes(),
    );
    write(&dir, "api_fields", "reactions", "👏,🔥,👏,❤️".as_bytes());
    write(&dir, "api_fields", "name", " Ada Lovelace ".as_bytes());

    // hls_names: a part name and a blocking-reload query.
    write(&dir, "hls_names", "part", b"part-12-3.m4s");
    write(
        &dir,
        "hls_names",
        "query",
        b"_HLS_msn=4&_HLS_part=1&token=x",
    );

    // whip_sdp
    write(&dir, "whip_sdp", "browser_offer", BROWSER_OFFER.as_bytes());

    // room_commands: of many deterministic byte strings (small numbers and
    // letters, so that titles and names tend to be valid), the one whose
    // decoded commands are most often accepted: a live room to mutate from.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut best = (0, Vec::new());
    for _ in 0..20_000 {
        let bytes: Vec<u8> = (0..160)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let b = (x >> 24) as u8;
                if x & 1 == 0 { b % 12 } else { b'a' + b % 26 }
            })
            .collect();
        let n = Input::arbitrary_take_rest(Unstructured::new(&bytes)).map_or(0, run);
        if n > best.0 {
            best = (n, bytes);
        }
    }
    write(&dir, "room_commands", "lively", &best.1);

    // cluster_frames: a bus frame with two speakers, a history reply.
    let mut spoken = frames[2].clone();
    spoken.speakers = Arc::from(vec![
        SpeakerLevel {
            participant: ParticipantId(2),
            level: 90,
        },
        SpeakerLevel {
            participant: ParticipantId(5),
            level: 12,
        },
    ]);
    write(
        &dir,
        "cluster_frames",
        "frame",
        &amphi_cluster::encode_frame(&spoken),
    );
    write(
        &dir,
        "cluster_frames",
        "history",
        &amphi_cluster::encode_frames(&frames[..5]),
    );

    // cluster_forward: a forwarded command and the owner's refusal.
    let req = ForwardRequest {
        method: "POST".into(),
        path: "/api/v1/spaces/00c0ffee12345678/hand".into(),
        headers: vec![
            ("authorization".into(), format!("Bearer {valid}")),
            ("content-type".into(), "application/json".into()),
        ],
        body: Bytes::from_static(b"{}"),
    };
    write(&dir, "cluster_forward", "request", &req.encode());
    let rep = ForwardReply {
        status: 409,
        headers: vec![("content-type".into(), "application/json".into())],
        body: Bytes::from_static(br#"{"error":{"code":"conflict","message":"the stage is full"}}"#),
    };
    write(&dir, "cluster_forward", "reply", &rep.encode());

    // cluster_control: a lease, a count report, a history request.
    let lease = Lease {
        node: "node-1".into(),
        http: "http://10.0.0.1:8080".into(),
        seq: 1009,
        at_ms: 1_700_000_000_000,
        ended: false,
    };
    write(&dir, "cluster_control", "lease", &lease.encode());
    let counts = CountsReport {
        node: "node-2".into(),
        spaces: vec![SpaceCounts {
            space: SpaceId(0x00c0ffee12345678),
            listeners: 1200,
            reactions: vec![("👏".into(), 3)],
            mixing: true,
        }],
    };
    write(&dir, "cluster_control", "counts", &counts.encode());
    write(
        &dir,
        "cluster_control",
        "history_request",
        &amphi_cluster::encode_history_request(1000),
    );

    check(&dir, best.0);
}

/// Each seed reaches past its parser's first refusal.
fn check(dir: &Path, room_accepted: usize) {
    let read = |t: &str, n: &str| std::fs::read(dir.join(t).join(n)).expect("seed was written");
    let stream = read("ogg_page", "stream");
    let mut r = amphi_media::PageReader::new();
    r.push(&stream[1..]);
    let pages = std::iter::from_fn(|| r.next_page()).count();
    assert!(pages >= 3, "ogg seed has {pages} pages");
    let mut d = amphi_media::opus::Decoder::new().expect("a decoder is created");
    let mut out = vec![0f32; amphi_media::opus::MAX_PACKET_SAMPLES];
    assert_eq!(
        d.decode(&read("opus_packet", "code3"), &mut out).ok(),
        Some(2 * FRAME)
    );
    assert!(amphi_media::wire::decode_message(&read("ws_message", "five_frames")).is_ok());
    let rec = amphi_hls::frames::decode(&Bytes::from(read("recording_frames", "gap")));
    assert_eq!(rec.map(|f| f.len()).ok(), Some(10));
    let key = TokenKey::from_bytes([9; 32]);
    let valid = String::from_utf8(read("token", "valid")[1..].to_vec()).expect("ascii token");
    assert!(key.verify::<Claims>(&valid, 1_700_000_000).is_ok());
    let offer = String::from_utf8(read("whip_sdp", "browser_offer")).expect("ascii offer");
    assert!(amphi_rtc::summarize_offer(&offer).is_ok());
    assert!(str0m::change::SdpOffer::from_sdp_string(&offer).is_ok());
    let bus = |n: &str| Bytes::from(read("cluster_frames", n));
    assert!(amphi_cluster::decode_frame(&bus("frame")).is_ok_and(|f| f.speakers.len() == 2));
    assert_eq!(
        amphi_cluster::decode_frames(&bus("history")).map(|f| f.len()),
        Ok(5)
    );
    assert!(ForwardRequest::decode(&Bytes::from(read("cluster_forward", "request"))).is_ok());
    assert!(ForwardReply::decode(&Bytes::from(read("cluster_forward", "reply"))).is_ok());
    assert!(Lease::decode(&read("cluster_control", "lease")).is_some());
    assert!(CountsReport::decode(&read("cluster_control", "counts")).is_some());
    assert_eq!(
        amphi_cluster::decode_history_request(&read("cluster_control", "history_request")),
        Ok(1000)
    );
    assert!(
        room_accepted >= 2,
        "the room seed has only {room_accepted} accepted commands"
    );
    println!(
        "seeds written to {} (room seed: {room_accepted} accepted commands)",
        dir.display()
    );
}
