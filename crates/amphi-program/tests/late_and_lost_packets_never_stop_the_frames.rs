//! A bad network (jitter, loss, an outage) and a stalled machine cost the
//! listeners concealed audio, never the program's cadence: one frame per
//! 20 ms, numbered without a gap.

mod common;

use std::time::{Duration, Instant};

use amphi_media::analysis::tone_ratio;
use common::*;

fn cadence_is_exact(frames: &[(Instant, amphi_core::Frame)]) {
    assert!(gap_free(frames.iter().map(|(_, f)| f.seq)));
    for w in frames.windows(2) {
        assert_eq!(
            w[1].0 - w[0].0,
            Duration::from_millis(20),
            "a frame late or early"
        );
    }
}

#[test]
fn late_and_lost_packets_are_concealed_and_the_cadence_never_stops() {
    let mut sim = Sim::mixing();
    sim.add_voice(SPACE, A, 440.0, false);
    sim.set_audible(A, true);
    {
        let link = &mut sim.voice(A).link;
        link.jitter = Duration::from_millis(50);
        link.loss = 0.05;
        // 400 ms of nothing, 4 s in.
        link.outage = Some((Duration::from_millis(4_000), Duration::from_millis(4_400)));
    }
    sim.run_for(Duration::from_secs(10));

    let frames = sim.frames_at(SPACE);
    assert_eq!(frames.len(), 500);
    cadence_is_exact(&frames);

    let stats = sim.program.speaker_stats();
    let (_, _, jitter) = stats.iter().find(|(_, p, _)| *p == A).expect("A's stats");
    assert!(jitter.missing > 20, "losses were not concealed: {jitter:?}");
    // The tone survives: concealment and the adapted buffer fill the holes.
    let frames: Vec<_> = frames.into_iter().map(|(_, f)| f).collect();
    let pcm = decode_frames(&frames);
    let before = &pcm[48_000..4 * 48_000];
    let after = &pcm[6 * 48_000..];
    for (what, part) in [("before the outage", before), ("after it", after)] {
        let r = tone_ratio(part, 440.0, 48_000);
        assert!(r > 0.6, "{what}: {r}");
    }
}

#[test]
fn a_stalled_machine_resyncs_instead_of_bursting() {
    let mut sim = Sim::mixing();
    sim.add_voice(SPACE, A, 440.0, false);
    sim.set_audible(A, true);
    sim.run_for(Duration::from_secs(1));
    // 1 s without a chance to run.
    sim.stall(Duration::from_secs(1));
    sim.run_for(Duration::from_secs(1));

    let frames = sim.frames_at(SPACE);
    // No burst of 50 catch-up frames: at most the 200 ms the clock
    // tolerates, then it restarts from now.
    assert!(frames.len() < 100 + 12, "{}", frames.len());
    assert!(gap_free(frames.iter().map(|(_, f)| f.seq)));
    let st = sim.program.stats();
    assert_eq!(st.resyncs, 1);
    assert!(st.late_ticks >= 1);
    // Once resynced, the cadence is exact again.
    cadence_is_exact(&frames[frames.len() - 40..]);
}
