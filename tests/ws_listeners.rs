//! `live.ws`: a fast listener receives every sequence number, a slow one is
//! skipped ahead (never queued), and a reconnect with `from_seq` resumes
//! with no gap.

mod common;

use std::time::{Duration, Instant};

use common::{Server, WsReader, live_space, publish_tone, wait_for_audio};

#[test]
fn slow_listener_skips_ahead_fast_one_gets_everything_resume_has_no_gap() {
    let s = Server::start(&["--listener-sndbuf", "4096", "--listener-stall-ms", "30000"]);
    let (id, host, _) = live_space(&s, "WebSocket");
    // Real audio, so the program carries ~4 KB/s (silence packs to almost
    // nothing and would fit in any socket buffer).
    let mut speaker = publish_tone(&s, &id, &host, 440, 30);
    wait_for_audio(&s, 25.0);
    let path = format!("/spaces/{id}/live.ws");

    let mut fast = WsReader::connect(s.port, &path, None);
    // A 2 KB receive buffer holds well under a second of program.
    let mut slow = WsReader::connect(s.port, &path, Some(2048));

    // The fast listener sees consecutive frames for 10 s.
    let (mut expect, n) = fast.next();
    expect += n;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        let (first, n) = fast.next();
        assert_eq!(first, expect, "the fast listener saw a gap");
        expect = first + n;
    }

    // The slow one did not read for those 10 s: it must have skipped.
    let mut seqs = Vec::new();
    slow.stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    while seqs
        .last()
        .is_none_or(|(f, n): &(u64, u64)| f + n + 30 < expect)
        && seqs.len() < 1000
    {
        seqs.push(slow.next());
    }
    let jumped = seqs.windows(2).any(|w| w[1].0 > w[0].0 + w[0].1);
    assert!(jumped, "the slow listener was not skipped ahead: {seqs:?}");
    let last = seqs.last().unwrap();
    assert!(
        last.0 + 100 >= expect,
        "the slow listener is still behind: {} vs {}",
        last.0,
        expect
    );

    // Drop the fast listener, wait, and resume from the next frame.
    let (first, n) = fast.next();
    let resume_at = first + n;
    drop(fast);
    // The program moves on 1.5 s: the resume point is history by then.
    while slow.next().0 < resume_at + 75 {}
    let mut again = WsReader::connect(s.port, &format!("{path}?from_seq={resume_at}"), None);
    let (first, n) = again.next();
    assert_eq!(first, resume_at, "resume started elsewhere");
    let mut expect = first + n;
    for _ in 0..30 {
        let (first, n) = again.next();
        assert_eq!(first, expect, "gap after resume");
        expect = first + n;
    }
    speaker.kill();
}
