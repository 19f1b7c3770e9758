//! Pass-through on simulated time: a lone speaker's packets are the
//! program as they came; a second voice makes it a mix and its end a
//! pass-through again; nobody audible costs no codec work; and every
//! output's numbering and timestamps run on across every switch.

mod common;

use std::time::Duration;

use amphi_media::analysis::tone_amplitude;
use amphi_media::opus::FRAME;
use amphi_program::Session;
use common::*;

#[test]
fn a_lone_speakers_packets_are_the_program() {
    let mut sim = Sim::mixing();
    sim.add_voice(SPACE, A, 440.0, true);
    sim.add_voice(SPACE, B, 660.0, true);
    sim.set_audible(A, true);
    // B may be heard but says nothing (their client sends nothing).
    sim.voice(B).sending = false;
    sim.set_audible(B, true);
    sim.run_for(Duration::from_secs(2));

    let frames = sim.frames(SPACE);
    assert_eq!(frames.len(), 100);
    let sent = &sim.voice(A).sent;
    // The last second: A's packets themselves, in order, none skipped.
    let tail = &frames[50..];
    let first = sent
        .iter()
        .position(|p| *p == tail[0].opus)
        .expect("the program carries A's packet as it came");
    for (k, f) in tail.iter().enumerate() {
        assert_eq!(f.opus, sent[first + k], "frame {} is A's packet", f.seq);
    }
    let st = sim.program.stats();
    assert!(st.passed_frames >= 90, "{st:?}");
    // B hears A's packets as they are (every frame once A is heard);
    // A hears silence, sent one frame in 20 (DTX); neither encoded.
    let to_b = sim.mix_minus(Session(B.0));
    let to_a = sim.mix_minus(Session(A.0));
    assert!(to_b.len() >= 90, "{}", to_b.len());
    let heard: Vec<_> = frames[50..].iter().map(|f| &f.opus).collect();
    assert_eq!(to_b[to_b.len() - 50..].iter().collect::<Vec<_>>(), heard);
    assert!(to_a.iter().all(|p| p.len() < 10), "silence for A");
    assert!(
        (4..=8).contains(&to_a.len()),
        "{} silence frames sent to A in 2 s",
        to_a.len()
    );
    assert!(st.encodes <= st.mixed_frames * 3 + 2 * st.switches);
}

#[test]
fn silence_encodes_nothing_and_keeps_the_cadence() {
    let mut sim = Sim::mixing();
    sim.add_voice(SPACE, A, 440.0, true);
    sim.voice(A).sending = false;
    sim.set_audible(A, true);
    sim.run_for(Duration::from_secs(2));
    let st = sim.program.stats();
    assert_eq!(
        (st.silent_frames, st.encodes, st.decodes, st.mixed_frames),
        (100, 0, 0, 0),
        "{st:?}"
    );
    let frames = sim.frames(SPACE);
    assert!(gap_free(frames.iter().map(|f| f.seq)));
    assert!(
        frames.windows(2).all(|w| w[0].opus == w[1].opus),
        "one shared frame"
    );
    let ogg = ogg_packets(&sim.units(SPACE, is_ogg));
    assert_eq!(ogg.len(), 100);
    assert_eq!(ogg[99].1, 100 * FRAME as u64);
    assert!(decode_frames(&frames).iter().all(|x| x.abs() < 1e-3));
}

#[test]
fn a_second_voice_mixes_and_every_output_runs_on_across_the_switches() {
    let mut sim = Sim::mixing();
    sim.add_voice(SPACE, A, 440.0, false);
    sim.add_voice(SPACE, B, 660.0, false);
    sim.set_audible(A, true);
    sim.set_audible(B, true);
    // A talks throughout; B talks one second in two; then both stop.
    let mut b_on = Vec::new();
    for second in 0..8 {
        let on = second % 2 == 1;
        sim.voice(B).amp = if on { 0.5 } else { 0.0 };
        b_on.push(on);
        sim.run_for(Duration::from_secs(1));
    }
    sim.voice(A).sending = false;
    sim.voice(B).sending = false;
    sim.run_for(Duration::from_secs(1));

    let st = sim.program.stats();
    assert!(st.switches >= 4, "into a mix at each of B's turns: {st:?}");
    assert!(st.passed_frames >= 150, "{st:?}");
    assert!(st.mixed_frames >= 150, "{st:?}");
    assert!(st.silent_frames >= 20, "{st:?}");

    let frames = sim.frames(SPACE);
    assert_eq!(frames.len(), 450);
    assert!(gap_free(frames.iter().map(|f| f.seq)));
    assert!(
        frames
            .windows(2)
            .all(|w| w[1].captured_at_us >= w[0].captured_at_us)
    );
    // Ogg: every frame, in order, granules 960 apart.
    let ogg = ogg_packets(&sim.units(SPACE, is_ogg));
    assert_eq!(ogg.len(), 450);
    for (f, (p, _)) in frames.iter().zip(&ogg) {
        assert_eq!(&f.opus, p);
    }
    // (A page's packets share its granule: the end of its last frame.)
    let mut granules: Vec<u64> = ogg.iter().map(|(_, g)| *g).collect();
    granules.dedup();
    assert!(
        granules.windows(2).all(|w| w[1] - w[0] == 5 * FRAME as u64),
        "pages of five frames, granules on the frames' clock: {granules:?}"
    );
    assert_eq!(*granules.last().expect("granules"), 450 * FRAME as u64);
    // live.ws: every frame, numbered on.
    let ws = ws_frames(&sim.units(SPACE, is_ws));
    assert_eq!(ws.len(), 450);
    assert!(gap_free(ws.iter().map(|(s, _)| *s)));
    // LL-HLS: every part and segment once.
    let cut = amphi_hls::SegmenterConfig::default();
    let parts = 450 / u64::from(cut.part_frames);
    let segments = 450 / cut.segment_frames();
    assert_eq!(sim.units(SPACE, is_hls).len() as u64, parts + segments);

    // What a listener hears: A all along; B in its seconds only.
    let pcm = decode_frames(&frames);
    let second = 48_000;
    for (s, on) in b_on.iter().enumerate() {
        // The middle of each second (past the jitter delay and hangover).
        let mid = &pcm[s * second + second / 2..s * second + second * 9 / 10];
        let (a, b) = (
            tone_amplitude(mid, 440.0, 48_000),
            tone_amplitude(mid, 660.0, 48_000),
        );
        assert!(a > 0.3, "second {s}: A at {a}");
        if *on {
            assert!(b > 0.3, "second {s}: B at {b}");
        } else {
            assert!(b < 0.02, "second {s}: B heard at {b}");
        }
    }
}
