//! A failing store (here: the recording directory replaced by a file, so
//! every segment write fails) never stops the live space: listeners keep
//! hearing it, the failure is counted, and once storage is back the
//! recording resumes in the same recording, uncorrupted.

mod common;

use common::{Server, ffmpeg_listen, live_space, metric, publish_tone, tone_share, wait_for};

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
