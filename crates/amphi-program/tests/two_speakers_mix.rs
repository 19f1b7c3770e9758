//! Two speakers are both heard in the program, and one who asked for return
//! audio hears the other but not themselves.

mod common;

use std::time::Duration;

use amphi_media::analysis::{peak, tone_ratio};
use amphi_program::{Output, Session};
use common::*;

#[test]
fn two_speakers_mix_and_each_hears_the_other() {
    let mut sim = Sim::mixing();
    sim.add_voice(SPACE, A, 440.0, true);
    sim.add_voice(SPACE, B, 660.0, false);
    sim.voice(A).amp = 0.9;
    sim.voice(B).amp = 0.9;
    sim.set_audible(A, true);
    sim.set_audible(B, true);
    sim.run_for(Duration::from_secs(3));

    let frames = sim.frames(SPACE);
    assert_eq!(frames.len(), 150);
    assert!(frames[10..].iter().all(|f| f.speakers.len() == 2));
    let pcm = decode_frames(&frames);
    let tail = &pcm[pcm.len() / 2..];
    let (r440, r660) = (
        tone_ratio(tail, 440.0, 48_000),
        tone_ratio(tail, 660.0, 48_000),
    );
    assert!(r440 > 0.35 && r660 > 0.35, "440: {r440}, 660: {r660}");
    assert!(peak(&pcm) <= 1.0, "the limiter let the sum clip");
    assert_eq!(sim.program.stats().passed_frames, 0);

    // A's return audio: B only, one packet per frame once B is heard
    // (before, silence: sent one frame in 20).
    let ret = sim.mix_minus(Session(A.0));
    assert!((145..=150).contains(&ret.len()), "{}", ret.len());
    let heard = decode(ret);
    let tail = &heard[heard.len() / 2..];
    assert!(tone_ratio(tail, 660.0, 48_000) > 0.8, "A must hear B");
    assert!(
        tone_ratio(tail, 440.0, 48_000) < 0.01,
        "A must not hear itself"
    );
    assert!(sim.mix_minus(Session(B.0)).is_empty(), "B did not ask");
}

#[test]
fn a_third_session_replaces_the_oldest_and_the_last_one_closing_leaves_the_mix() {
    let mut sim = Sim::mixing();
    for s in 1..=3 {
        sim.program
            .add_session(SPACE, A, Session(s), false)
            .unwrap();
    }
    sim.drain();
    let closed: Vec<Session> = sim
        .log
        .iter()
        .filter_map(|(_, o)| match o {
            Output::CloseSession(s) => Some(*s),
            _ => None,
        })
        .collect();
    assert_eq!(closed, vec![Session(1)]);
    assert_eq!(sim.program.stats().sessions_replaced, 1);
    sim.program.session_closed(Session(2));
    sim.program.session_closed(Session(3));
    assert!(sim.program.speaker_stats().is_empty());
}
