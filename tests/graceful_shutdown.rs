//! SIGTERM drains: the process exits by itself, promptly, and the recording
//! keeps everything up to the signal (the open segment is closed and
//! fsynced, unlike a kill -9 which may lose it).

mod common;

use std::process::Command;

use common::{Server, live_space, publish_tone, wait_for, wait_for_audio};

#[test]
fn sigterm_exits_cleanly_and_closes_the_recording_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Server::start_in(tmp.path(), &[]);
    let (id, host, _) = live_space(&s, "Drain");
    let mut speaker = publish_tone(&s, &id, &host, 440, 30);
    // 1 s, then 3.5 s of speech: one full 2 s segment and one open
    // segment.
    wait_for_audio(&s, 225.0);
    let pid = s.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut status = None;
    wait_for(5, "amphi to exit within 5 s of SIGTERM", || {
        status = s.child.try_wait().unwrap();
        status.is_some()
    });
    let status = status.expect("wait_for returns once it has exited");
    assert!(status.success(), "exit status {status}");
    speaker.kill();

    let s2 = Server::start_in(tmp.path(), &[]);
    let tone = common::end_and_measure_recording(&s2, &id, &host, 440.0);
    assert!(
        tone >= 3.0,
        "only {tone} s of the 3.5 s before SIGTERM were kept"
    );
    drop(s);
}
