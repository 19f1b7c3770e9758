//! A failing store (here: the recording directory replaced by a file, so
//! every segment write fails) never stops the live space: listeners keep
//! hearing it, the failure is counted, and once storage is back the
//! recording resumes in the same recording, uncorrupted.

mod common;

use common::{Server, call, ffmpeg_listen, live_space, metric, publish_tone, tone_share, wait_for};
use serde_json::json;

#[test]
fn storage_failure_keeps_the_space_live_and_the_recording_sound() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start_in(tmp.path(), &[]);
    let (id, host, _) = live_space(&s, "Bad disk");
    // Break the store before the first segment closes.
    let space_dir = tmp.path().join("recordings").join(&id);
    std::fs::create_dir_all(&space_dir).unwrap();
    std::fs::write(space_dir.join("frames"), b"not a directory").unwrap();

    let _speaker = publish_tone(&s, &id, &host, 440, 30);
    wait_for(15, "a failed segment write", || {
        metric(&s, "amphi_recording_errors_total") >= 1.0
    });
    // The space is live and audible regardless.
    common::wait_for_audio(&s, 50.0);
    let pcm = ffmpeg_listen(&s.url(&format!("/spaces/{id}/live.opus")), 2.0);
    assert!(
        tone_share(&pcm, 440.0) > 0.5,
        "the live space suffered from the storage failure"
    );

    // Storage comes back: recording resumes.
    std::fs::remove_file(space_dir.join("frames")).unwrap();
    let before = metric(&s, "amphi_recording_segments_total");
    wait_for(10, "segments written again", || {
        metric(&s, "amphi_recording_segments_total") >= before + 2.0
    });
    let tone = common::end_and_measure_recording(&s, &id, &host, 440.0);
    assert!(
        tone >= 3.0,
        "the recording kept {tone} s after storage came back"
    );
}

/// Sets the server's soft file-size limit (RLIMIT_FSIZE), as a full disk
/// would refuse every write that grows a file.
fn limit_file_size(s: &Server, limit: &str) {
    let ok = std::process::Command::new("prlimit")
        .arg("--pid")
        .arg(s.child.id().to_string())
        .arg(format!("--fsize={limit}:"))
        .status()
        .expect("prlimit")
        .success();
    assert!(ok, "prlimit failed");
}

/// A command the disk refuses changes nothing and says so (507): a ban that
/// could not be saved is not enforced, and after a restart memory and disk
/// agree (the refused ban is absent, a later saved one holds).
#[test]
fn a_change_the_disk_refuses_is_not_made() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Server::start_in(tmp.path(), &[]);
    let (id, host, _) = live_space(&s, "Full disk");
    let (pid, token) = common::join(&s, &id, "Guest");
    let url = |s: &Server, p: &str| s.url(&format!("/api/v1/spaces/{id}{p}"));
    assert_eq!(
        call("POST", &url(&s, "/hand"), Some(&token), None).status,
        200
    );
    let rejoin = |s: &Server| {
        call(
            "POST",
            &url(s, "/join"),
            Some(&token),
            Some(json!({"name": "Guest"})),
        )
        .status
    };
    let hands = |s: &Server| {
        call("GET", &url(s, ""), None, None).body["hands_raised"]
            .as_array()
            .map_or(0, Vec::len)
    };
    let ban = |s: &Server| {
        call(
            "POST",
            &url(s, &format!("/participants/{pid}/remove")),
            Some(&host),
            Some(json!({"ban": true})),
        )
    };

    limit_file_size(&s, "0");
    let r = ban(&s);
    assert_eq!(r.status, 507, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "not_saved");
    // Not enforced: the guest is still here, hand up, and may rejoin.
    assert_eq!(hands(&s), 1, "the refused ban removed the guest");
    assert_eq!(rejoin(&s), 200, "the refused ban was enforced");

    // After a restart, the disk says the same as memory did.
    limit_file_size(&s, "unlimited");
    s.kill();
    let mut s = Server::start_in(tmp.path(), &[]);
    assert_eq!(hands(&s), 1);
    assert_eq!(rejoin(&s), 200);

    // The disk is back: the ban is saved, enforced, and survives a restart.
    assert_eq!(ban(&s).status, 200);
    assert_eq!(rejoin(&s), 403);
    s.kill();
    let s = Server::start_in(tmp.path(), &[]);
    assert_eq!(hands(&s), 0);
    assert_eq!(rejoin(&s), 403, "the saved ban was lost in the restart");
}
