//! The room, not the client, decides who is heard: a speaker whose gate is
//! closed is silent in the program however much they send, from the frame
//! after the mute on.

mod common;

use std::time::Duration;

use amphi_media::analysis::{peak, tone_amplitude};
use amphi_program::Event;
use common::*;

#[test]
fn a_speaker_never_let_on_is_never_heard() {
    let mut sim = Sim::mixing();
    sim.add_voice(SPACE, A, 440.0, false);
    // Never audible: packets keep coming.
    sim.run_for(Duration::from_secs(2));
    let frames = sim.frames(SPACE);
    assert_eq!(frames.len(), 100);
    assert!(
        frames
            .iter()
            .all(|f| f.speakers.is_empty() && f.program_level == 0)
    );
    let pcm = decode_frames(&frames);
    assert!(peak(&pcm) < 1e-3, "a closed gate leaked: {}", peak(&pcm));
    assert!(
        !sim.events()
            .iter()
            .any(|e| matches!(e, Event::Talking { .. }))
    );
}

#[test]
fn a_muted_speaker_is_silent_from_the_next_frame() {
    let mut sim = Sim::mixing();
    sim.add_voice(SPACE, A, 440.0, false);
    sim.add_voice(SPACE, B, 660.0, false);
    sim.set_audible(A, true);
    sim.set_audible(B, true);
    sim.run_for(Duration::from_secs(1));
    let muted_at = sim.frames(SPACE).len();
    // B's client does not know; its packets keep coming, some already
    // buffered.
    sim.set_audible(B, false);
    sim.run_for(Duration::from_secs(1));

    let frames = sim.frames(SPACE);
    let mut d = amphi_media::Decoder::new().unwrap();
    let mut buf = [0f32; 960];
    for (i, f) in frames.iter().enumerate() {
        let n = d.decode(&f.opus, &mut buf).unwrap();
        let (a, b) = (
            tone_amplitude(&buf[..n], 440.0, 48_000),
            tone_amplitude(&buf[..n], 660.0, 48_000),
        );
        if (10..muted_at).contains(&i) {
            assert!(b > 0.2, "frame {i}: B should be heard ({b})");
        }
        if i >= muted_at {
            assert!(f.speakers.iter().all(|s| s.participant == A));
        }
        // The codec's lookahead carries the last few ms before the mute
        // into the first frame after it; from the next one on, nothing.
        if i > muted_at {
            assert!(b < 0.005, "frame {i}: B heard after the mute ({b})");
            assert!(a > 0.2, "frame {i}: A lost ({a})");
        }
    }
}

#[test]
fn a_speaker_of_another_space_is_not_heard_here() {
    let mut sim = Sim::mixing();
    let other = amphi_core::SpaceId(0x07e5);
    sim.add_voice(SPACE, A, 440.0, false);
    sim.set_audible(A, true);
    // Packets for a space not mixed here, by a speaker with no session.
    sim.add_voice(other, B, 660.0, false);
    sim.set_audible(B, true);
    sim.run_for(Duration::from_secs(1));
    let pcm = decode_frames(&sim.frames(SPACE));
    assert!(tone_amplitude(&pcm[24_000..], 660.0, 48_000) < 0.005);
    assert!(sim.frames(other).is_empty());
    assert!(sim.program.stats().packets_unrouted >= 49);
    // Its session was refused at once.
    assert!(sim.log.iter().any(|(_, o)| matches!(
        o,
        amphi_program::Output::CloseSession(s) if *s == amphi_program::Session(B.0)
    )));
}
