//! A real player decodes the live Ogg stream: headers plus 50 pages (5 s)
//! of the pager's output, joined mid-program as an Icecast listener would,
//! go through ffmpeg and come back as the tone that was encoded.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;

use amphi_core::Frame;
use amphi_media::analysis::{dominant_frequency, tone_ratio};
use amphi_media::{Encoder, OggPager};

fn ffmpeg_present() -> bool {
    Command::new("ffmpeg")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn ffmpeg_decodes_the_ogg_stream_to_the_same_tone() {
    if !ffmpeg_present() {
        eprintln!("skipped: ffmpeg is not installed");
        return;
    }
    let mut enc = Encoder::new(32_000).unwrap();
    // The listener joins at program frame 1000: absolute granules.
    let first_seq = 1_000u64;
    let mut pager = OggPager::new(0x5eed, 5);
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&pager.headers()).unwrap();
    let mut pages = 0;
    let mut seq = first_seq;
    while pages < 50 {
        let mut pcm = [0f32; 960];
        for (i, s) in pcm.iter_mut().enumerate() {
            let n = (seq - first_seq) as usize * 960 + i;
            *s = 0.5 * (2.0 * std::f32::consts::PI * 440.0 * n as f32 / 48_000.0).sin();
        }
        let frame = Frame {
            seq,
            captured_at_us: seq * 20_000,
            opus: enc.encode(&pcm).unwrap(),
            program_level: 100,
            speakers: Arc::from(Vec::new()),
        };
        if let Some(page) = pager.push(&frame) {
            file.write_all(&page).unwrap();
            pages += 1;
        }
        seq += 1;
    }
    file.flush().unwrap();

    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(file.path())
        .args(["-f", "f32le", "-ac", "1", "-ar", "48000", "-"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pcm: Vec<f32> = out
        .stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    // 250 frames of 20 ms, less up to the pre-skip.
    assert!(
        pcm.len() >= 250 * 960 - 960 && pcm.len() <= 250 * 960,
        "{} samples",
        pcm.len()
    );
    let body = &pcm[4800..];
    let r = tone_ratio(body, 440.0, 48_000);
    assert!(r > 0.9, "440 Hz share {r}");
    assert!(tone_ratio(body, 660.0, 48_000) < 0.01);
    assert_eq!(
        dominant_frequency(body, 48_000, &[220.0, 440.0, 660.0, 880.0]),
        Some(440.0)
    );
}
