//! A real client reads what we publish: ffprobe and ffmpeg open the VOD
//! playlist, the init segment and the fMP4 segments cut from ~6 s of a
//! 440 Hz tone encoded with libopus; the duration is right and the tone
//! comes back out of the decoder.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use amphi_core::Frame;
use amphi_hls::fmp4::{InitConfig, init_segment_for};
use amphi_hls::{HlsEvent, Segmenter, SegmenterConfig};
use bytes::Bytes;
use unsafe_libopus as unsafe_ffi;

const FRAMES: u64 = 300; // 6 s

/// Encodes `FRAMES` 20 ms frames of a 440 Hz sine (mono, 48 kHz, 32 kbit/s)
/// and the encoder's look-ahead (the pre-skip a decoder must drop).
fn encode_sine() -> (Vec<Bytes>, u16) {
    let mut err = 0;
    // SAFETY: plain constructor; the result is checked for null below.
    let enc = unsafe {
        unsafe_ffi::opus_encoder_create(48_000, 1, unsafe_ffi::OPUS_APPLICATION_AUDIO, &mut err)
    };
    assert!(
        !enc.is_null() && err == unsafe_ffi::OPUS_OK,
        "opus_encoder_create: {err}"
    );
    let mut lookahead = 0i32;
    // SAFETY: `enc` is a live encoder; the pointer is to a local i32.
    let rc = unsafe {
        unsafe_ffi::opus_encoder_ctl!(enc, unsafe_ffi::OPUS_GET_LOOKAHEAD_REQUEST, &mut lookahead)
    };
    assert_eq!(rc, unsafe_ffi::OPUS_OK);
    // SAFETY: as above.
    let rc =
        unsafe { unsafe_ffi::opus_encoder_ctl!(enc, unsafe_ffi::OPUS_SET_BITRATE_REQUEST, 32_000) };
    assert_eq!(rc, unsafe_ffi::OPUS_OK);
    let mut packets = Vec::new();
    for k in 0..FRAMES as usize {
        let pcm: Vec<f32> = (0..960)
            .map(|i| {
                let t = (k * 960 + i) as f32 / 48_000.0;
                0.5 * (2.0 * std::f32::consts::PI * 440.0 * t).sin()
            })
            .collect();
        let mut out = [0u8; 1500];
        // SAFETY: `pcm` holds 960 samples (one 20 ms mono frame) and `out`
        // has room for `out.len()` bytes, as the call is told.
        let n = unsafe {
            unsafe_ffi::opus_encode_float(
                enc,
                pcm.as_ptr(),
                960,
                out.as_mut_ptr(),
                out.len() as i32,
            )
        };
        assert!(n > 0, "opus_encode_float: {n}");
        packets.push(Bytes::copy_from_slice(&out[..n as usize]));
    }
    // SAFETY: created above and not used after this.
    unsafe { unsafe_ffi::opus_encoder_destroy(enc) };
    (packets, lookahead as u16)
}

/// Relative power of `freq` in `pcm` (Goertzel), as a share of the total.
fn tone_share(pcm: &[f32], freq: f32) -> f32 {
    let w = 2.0 * std::f32::consts::PI * freq / 48_000.0;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0f64, 0f64);
    for &x in pcm {
        let s0 = f64::from(x) + f64::from(coeff) * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - f64::from(coeff) * s1 * s2;
    // A pure sine of amplitude A over N samples gives (A·N/2)²; its energy
    // is A²·N/2. Normalise so a pure tone scores 1.
    let energy: f64 = pcm.iter().map(|x| f64::from(*x).powi(2)).sum();
    (power / (energy * pcm.len() as f64 / 2.0)) as f32
}

fn tool(name: &str) -> Command {
    let found = Command::new(name).arg("-version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "{name} is required for this test and was not found on PATH: install ffmpeg \
         (apt-get install ffmpeg); this test refuses to pass without a real client"
    );
    Command::new(name)
}

fn write_vod(dir: &Path) -> std::path::PathBuf {
    let (packets, pre_skip) = encode_sine();
    let mut seg = Segmenter::new(SegmenterConfig {
        keep_all: true,
        ..SegmenterConfig::default()
    });
    let mut published = 0;
    for (k, opus) in packets.into_iter().enumerate() {
        let f = Frame {
            seq: k as u64,
            captured_at_us: 1_700_000_000_000_000 + k as u64 * 20_000,
            opus,
            program_level: 0,
            speakers: Arc::from(Vec::new()),
        };
        for e in seg.push(&f) {
            if let HlsEvent::SegmentReady { msn, bytes, .. } = e {
                std::fs::write(dir.join(format!("seg-{msn}.m4s")), &bytes).unwrap();
                published += 1;
            }
        }
    }
    for e in seg.finish() {
        if let HlsEvent::SegmentReady { msn, bytes, .. } = e {
            std::fs::write(dir.join(format!("seg-{msn}.m4s")), &bytes).unwrap();
            published += 1;
        }
    }
    assert_eq!(published, 3);
    let init = init_segment_for(&InitConfig {
        pre_skip,
        ..InitConfig::default()
    });
    std::fs::write(dir.join("init.mp4"), init).unwrap();
    let pl = dir.join("playlist.m3u8");
    std::fs::write(&pl, seg.vod_playlist()).unwrap();
    pl
}

#[test]
fn ffmpeg_plays_the_vod_with_the_right_duration_and_tone() {
    let dir = tempfile::tempdir().unwrap();
    let pl = write_vod(dir.path());

    let probe = tool("ffprobe")
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
        .unwrap();
    assert!(
        probe.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let out = String::from_utf8_lossy(&probe.stdout);
    let dur: f64 = out
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("ffprobe printed {out:?}"));
    eprintln!("ffprobe duration: {dur} s");
    assert!((dur - 6.0).abs() <= 0.3, "duration {dur} s, expected 6 s");

    let out = tool("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(&pl)
        .args(["-f", "f32le", "-ac", "1", "-ar", "48000", "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffmpeg failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pcm: Vec<f32> = out
        .stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let secs = pcm.len() as f64 / 48_000.0;
    assert!((secs - 6.0).abs() <= 0.3, "decoded {secs} s");
    // Skip the codec's warm-up; a 440 Hz tone dominates the rest, and a
    // neighbouring frequency does not.
    let body = &pcm[4800..];
    let share = tone_share(body, 440.0);
    eprintln!("decoded {secs} s; 440 Hz share of power {share}");
    assert!(share > 0.7, "440 Hz carries only {share} of the power");
    assert!(tone_share(body, 660.0) < 0.05);
}
