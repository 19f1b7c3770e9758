//! Publishers whose DTLS certificate is RSA are heard. GStreamer's
//! `webrtcbin` up to 1.22 (Debian 12's packages) makes an RSA-2048
//! certificate with OpenSSL and signs its CertificateVerify with
//! RSASSA-PKCS1-v1_5; amphi's DTLS (str0m's dimpl, patched in
//! `vendor/dimpl`) must ask for and verify that. Chromium given an RSA
//! certificate is checked by `scripts/e2e-rsa-dtls`.

mod common;

use std::net::{IpAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Peer, Server, ffmpeg_listen, live_space, tone_share, wait_for_audio};

/// This host's address on its default route (no packet is sent: a UDP
/// `connect` only picks the source address).
fn host_ipv4() -> IpAddr {
    let s = UdpSocket::bind("0.0.0.0:0").expect("udp socket");
    s.connect("198.51.100.1:9")
        .expect("a non-loopback IPv4 route");
    let ip = s.local_addr().expect("local addr").ip();
    assert!(
        !ip.is_loopback() && !ip.is_unspecified(),
        "no host address: {ip}"
    );
    ip
}

fn gstreamer_ready() -> bool {
    Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import gi; gi.require_version('GstWebRTC', '1.0'); from gi.repository import Gst; \
             Gst.init(None); assert Gst.ElementFactory.find('webrtcbin') and Gst.ElementFactory.find('nicesrc')",
        ])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn a_gstreamer_webrtcbin_publisher_with_an_rsa_certificate_is_heard() {
    assert!(
        gstreamer_ready(),
        "GStreamer's webrtcbin and libnice for /usr/bin/python3 are required: run scripts/test \
         (it installs gstreamer1.0-plugins-bad, gstreamer1.0-nice, python3-gst-1.0)"
    );
    // libnice's host candidates never reach a node bound to loopback (its
    // checks from this host's interface address to 127.0.0.1 are not
    // delivered), so WebRTC listens on this host's own address; HTTP stays
    // on loopback.
    let ip = host_ipv4();
    let s = Server::start(&["--rtc", &format!("{ip}:0")]);
    let (id, host, _) = live_space(&s, "GStreamer");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gst_whip_client.py");
    let mut gst = Peer(
        Command::new("/usr/bin/python3")
            .arg(script)
            .args(["--url", &s.url(&format!("/api/v1/spaces/{id}/whip"))])
            .args(["--token", &host, "--freq", "440", "--seconds", "8"])
            .arg("--require-rsa")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the GStreamer publisher"),
    );
    wait_for_audio(&s, 50.0);

    let pcm = ffmpeg_listen(&s.url(&format!("/spaces/{id}/live.opus")), 3.0);
    let share = tone_share(&pcm, 440.0);
    assert!(share > 0.5, "440 Hz share {share} of what a listener hears");

    // It connected with an RSA certificate (exit 5 otherwise) and published
    // to the end.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = gst.0.try_wait().expect("wait") {
            break st;
        }
        assert!(Instant::now() < deadline, "the publisher did not finish");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "GStreamer publisher: {status}");
}
