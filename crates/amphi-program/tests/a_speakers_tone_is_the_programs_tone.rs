//! A speaker's 440 Hz tone, encoded and sent as a client sends it, comes
//! out of the program as the same tone, in every output.

mod common;

use std::time::Duration;

use amphi_media::analysis::{peak, tone_ratio};
use amphi_program::Event;
use common::*;

#[test]
fn a_speakers_tone_is_the_programs_tone() {
    let mut sim = Sim::mixing();
    sim.add_voice(SPACE, A, 440.0, false);
    sim.set_audible(A, true);
    sim.run_for(Duration::from_secs(3));

    let frames = sim.frames(SPACE);
    assert_eq!(frames.len(), 150, "one frame per 20 ms");
    assert!(gap_free(frames.iter().map(|f| f.seq)));
    assert_eq!(frames[0].seq, 0);

    let pcm = decode_frames(&frames);
    // After the jitter buffer's fill (40 ms) and the codec's warm-up.
    let heard = &pcm[48_000 / 2..];
    let r = tone_ratio(heard, 440.0, 48_000);
    assert!(r > 0.9, "the program is not the speaker's tone: {r}");
    assert!(peak(heard) > 0.3 && peak(heard) <= 1.0);
    for block in heard.chunks(960) {
        assert!(peak(block) > 0.3, "a gap in the tone");
    }

    // Capture stamps trail the wall clock by the jitter buffer's depth and
    // advance 20 ms a frame.
    let last = frames.last().expect("frames");
    assert!(last.captured_at_us < sim.wall_us());
    assert!(sim.wall_us() - last.captured_at_us < 200_000);
    assert!(frames.windows(2).skip(10).all(|w| {
        let d = w[1].captured_at_us as i64 - w[0].captured_at_us as i64;
        (0..=40_000).contains(&d)
    }));

    // The speaker is named in the frames and in the talking events.
    assert!(frames[25..].iter().all(|f| {
        f.speakers
            .iter()
            .any(|s| s.participant == A && s.level > 90)
    }));
    assert!(
        sim.events()
            .iter()
            .any(|e| matches!(e, Event::Talking { space, levels } if *space == SPACE && levels[0].participant == A))
    );

    // Every output carries exactly the program's packets: Ogg pages of 5
    // frames with absolute granules, live.ws messages of 5 frames.
    let ogg = ogg_packets(&sim.units(SPACE, is_ogg));
    assert_eq!(ogg.len(), 150);
    for (f, (p, _)) in frames.iter().zip(&ogg) {
        assert_eq!(&f.opus, p);
    }
    assert_eq!(ogg[4].1, 5 * 960, "a page ends on its last frame's granule");
    let ws = ws_frames(&sim.units(SPACE, is_ws));
    assert_eq!(ws.len(), 150);
    for (f, (seq, p)) in frames.iter().zip(&ws) {
        assert_eq!((f.seq, &f.opus), (*seq, p));
    }
    // LL-HLS: every complete part, and every complete segment, once.
    let cut = amphi_hls::SegmenterConfig::default();
    let parts = 150 / u64::from(cut.part_frames);
    let segments = 150 / cut.segment_frames();
    assert_eq!(sim.units(SPACE, is_hls).len() as u64, parts + segments);
    // One voice: its packets pass through, after the jitter buffer's fill
    // (silence until then). A fresh encoder's first packets are large
    // (over 1.5 times the program's bitrate): those few are mixed.
    let st = sim.program.stats();
    assert!(st.mixed_frames <= 5, "{st:?}");
    assert!(st.encodes <= st.mixed_frames + 2 * st.switches, "{st:?}");
    assert_eq!(st.passed_frames + st.silent_frames + st.mixed_frames, 150);
    assert!(st.passed_frames >= 140, "{st:?}");
}
