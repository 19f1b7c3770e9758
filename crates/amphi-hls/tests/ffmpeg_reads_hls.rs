//! A real client (ffprobe/ffmpeg) reads our init segment, segments and VOD
//! playlist: the duration is right and the tone we encoded comes back.

use std::process::Command;
use std::sync::Arc;

use amphi_core::Frame;
use amphi_hls::fmp4::init_segment;
use amphi_hls::playlist::Segmenter;
use amphi_media::analysis::tone_ratio;
use amphi_media::opus::Encoder;

#[test]
fn ffmpeg_plays_the_vod_with_the_right_duration_and_tone() {
    let mut enc = Encoder::new(32_000).unwrap();
    let mut seg = Segmenter::new(1000);
    for k in 0..300u64 {
        let mut pcm = [0f32; 960];
        for (i, s) in pcm.iter_mut().enumerate() {
            *s = 0.5
                * (2.0 * std::f32::consts::PI * 440.0 * (k as usize * 960 + i) as f32 / 48_000.0)
                    .sin();
        }
        let f = Frame {
            seq: k,
            captured_at_us: 1_700_000_000_000_000 + k * 20_000,
            opus: enc.encode(&pcm).unwrap(),
            program_level: 0,
            speakers: Arc::from(Vec::new()),
        };
        seg.push(&f);
    }
    seg.finish();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("init.mp4"), init_segment()).unwrap();
    for s in seg.segments() {
        std::fs::write(dir.path().join(format!("seg-{}.m4s", s.msn)), &s.bytes).unwrap();
    }
    let pl = dir.path().join("replay.m3u8");
    std::fs::write(&pl, seg.vod_playlist()).unwrap();

    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(&pl)
        .output()
        .expect("ffprobe is required: run scripts/test (it installs ffmpeg)");
    assert!(
        probe.status.success(),
        "{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let dur: f64 = String::from_utf8_lossy(&probe.stdout)
        .trim()
        .parse()
        .unwrap();
    assert!((dur - 6.0).abs() < 0.3, "duration {dur}");

    let out = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-nostdin",
            "-allowed_extensions",
            "ALL",
            "-i",
        ])
        .arg(&pl)
        .args(["-f", "f32le", "-ac", "1", "-ar", "48000", "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pcm: Vec<f32> = out
        .stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert!(pcm.len() > 48_000 * 5, "decoded {} samples", pcm.len());
    assert!(tone_ratio(&pcm[4800..], 440.0, 48_000) > 0.7);
}
