//! What one live space costs in memory, measured with a counting
//! allocator (libopus allocates through Rust's allocator too): a space
//! just started, one after 30 s of silence (its history ring full), and
//! one speaker passed through for 30 s.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use amphi_core::SpaceId;
use amphi_program::{ProgramConfig, StartSpace, Stores};
use common::*;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

const SPACES: u64 = 50;
/// The node's stores: 30 s of history, a 3600-segment HLS DVR window.
const HISTORY: usize = 1500;
const DVR: usize = 3600;

/// Bytes allocated by `f`'s result.
fn size_of<T>(f: impl FnOnce() -> T) -> isize {
    let b = live();
    let v = f();
    let n = live() - b;
    drop(v);
    n
}

#[test]
fn an_idle_live_space_costs_about_200_kilobytes() {
    eprintln!(
        "parts: mixer {} B (the program encoder, made at the first mix, {} B more), stores {} B \
         (history of {HISTORY} frames, HLS window of {DVR} segments), a speaker's decoder {} B",
        size_of(|| amphi_media::Mixer::new(amphi_media::MixerConfig::default())),
        size_of(|| amphi_media::Encoder::new(32_000)),
        size_of(|| Stores::new(HISTORY, DVR)),
        size_of(amphi_media::Decoder::new),
    );
    let mut sim = Sim::new(ProgramConfig::default());
    let before = live();
    for s in 0..SPACES {
        sim.program
            .start_space(StartSpace {
                space: SpaceId(1000 + s),
                first_seq: 0,
                record: false,
                stores: Stores::new(HISTORY, DVR),
            })
            .expect("a mixer");
    }
    let started = (live() - before) / SPACES as isize;
    sim.run_for(Duration::from_secs(31));
    sim.log.clear();
    sim.log.shrink_to_fit();
    let idle = (live() - before) / SPACES as isize;
    eprintln!(
        "one live space: {started} B when started, {idle} B after 31 s of silence (history full)"
    );
    // Measured: 145 kB started, 206 kB idle (mostly the history ring's
    // 1500 frames; no program encoder until the first mix).
    assert!(started < 160_000, "{started} B per started space");
    assert!(idle < 225_000, "{idle} B per idle space");
}

#[test]
fn a_passed_through_speaker_adds_their_decoder_and_buffers() {
    let mut sim = Sim::mixing();
    let before = live();
    sim.add_voice(SPACE, A, 440.0, false);
    sim.set_audible(A, true);
    sim.run_for(Duration::from_secs(31));
    sim.log.clear();
    sim.log.shrink_to_fit();
    let st = sim.program.stats();
    assert!(st.passed_frames > 1400, "{st:?}");
    let talking = live() - before;
    eprintln!(
        "a space with one speaker passed through for 31 s: +{talking} B over an idle one \
         (history of 1500 real packets, the speaker's decoder and jitter buffer, 31 s of HLS)"
    );
    assert!(talking < 2_000_000, "{talking} B");
}
