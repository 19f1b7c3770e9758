//! An edge (a node that relays a space mixed elsewhere) cuts the origin's
//! frames into the very same units, whatever overlap its history fetch and
//! the live feed have, and a `live.ws` listener resumes from any frame in
//! the history with no gap and no overlap.

mod common;

use std::time::{Duration, Instant};

use amphi_program::{Event, Output, Program, ProgramConfig, Stores, UnitKind, resume_ws};
use common::*;

fn units(log: &[Output], kind: fn(&UnitKind) -> bool) -> Vec<bytes::Bytes> {
    log.iter()
        .filter_map(|o| match o {
            Output::Unit { kind: k, bytes, .. } if kind(k) => Some(bytes.clone()),
            _ => None,
        })
        .collect()
}

fn drain(p: &mut Program, log: &mut Vec<Output>) {
    loop {
        match p.poll_output() {
            Output::Timeout(_) => return,
            o => log.push(o),
        }
    }
}

#[test]
fn an_edge_cuts_the_origins_units_and_resumes_from_its_history() {
    // The origin mixes a speaker for 3 s before the edge's first listener.
    let mut origin = Sim::mixing();
    origin.add_voice(SPACE, A, 440.0, false);
    origin.set_audible(A, true);
    origin.run_for(Duration::from_secs(3));

    let mut edge = Program::new(ProgramConfig::default(), Instant::now());
    let stores = Stores::new(1500, 100);
    edge.start_edge(SPACE, stores.clone());
    assert!(edge.is_edge(SPACE) && !edge.is_mixing(SPACE));
    let mut log = Vec::new();
    // The edge subscribes first, so the live feed's first frames arrive
    // while its history request is out: both carry them.
    let history = origin.frames(SPACE);
    origin.run_for(Duration::from_millis(100));
    let live_early: Vec<_> = origin.frames(SPACE)[history.len()..].to_vec();
    for f in history.iter().chain(&live_early).cloned() {
        edge.remote_frame(SPACE, f);
    }
    // Then the live feed, with a duplicate and a stale frame on the way.
    origin.run_for(Duration::from_secs(3));
    let all = origin.frames(SPACE);
    for f in all[history.len() - 3..].iter().cloned() {
        edge.remote_frame(SPACE, f);
    }
    drain(&mut edge, &mut log);

    // The same bytes as the origin's, unit for unit.
    assert_eq!(units(&log, is_ogg), origin.units(SPACE, is_ogg));
    assert_eq!(units(&log, is_ws), origin.units(SPACE, is_ws));
    assert_eq!(units(&log, is_hls), origin.units(SPACE, is_hls));
    assert_eq!(
        stores.hls.lock().live_playlist(),
        origin_hls_playlist(&origin),
        "the edge's LL-HLS playlist differs"
    );
    let st = edge.stats();
    assert_eq!(st.remote_frames, all.len() as u64);
    assert_eq!(st.remote_dropped, (live_early.len() + 3) as u64);
    // An edge neither records nor republishes, and mixes nothing.
    assert!(!log.iter().any(|o| matches!(o, Output::Frame { .. })));
    assert!(
        log.iter()
            .any(|o| matches!(o, Output::Event(Event::Talking { .. })))
    );

    // A live.ws listener that saw frame 199 comes back: its resume is
    // the history from 200 up to the newest published message, and the
    // live messages after it follow without a gap or an overlap.
    let newest_ws_last = all.len() as u64 - 1;
    let resumed = resume_ws(&stores.history.lock(), 200, newest_ws_last);
    let got = ws_frames(&resumed);
    assert_eq!(got.first().map(|(s, _)| *s), Some(200));
    assert_eq!(got.last().map(|(s, _)| *s), Some(newest_ws_last));
    assert!(gap_free(got.iter().map(|(s, _)| *s)));
    for (seq, opus) in &got {
        assert_eq!(&all[*seq as usize].opus, opus);
    }

    // The space ends at the origin: the edge finishes its outputs the
    // same way (last page, HLS end, the WebSocket close) and says so.
    origin.program.stop_space(SPACE);
    origin.drain();
    edge.stop_space(SPACE);
    let mut end = Vec::new();
    drain(&mut edge, &mut end);
    let origin_end: Vec<&Output> = origin
        .log
        .iter()
        .map(|(_, o)| o)
        .skip_while(|o| !matches!(o, Output::Event(Event::Closed { .. })))
        .collect();
    assert_eq!(origin_end.len(), 1, "Closed comes last");
    let ws_end = units(&end, is_ws);
    assert_eq!(ws_end.len(), 1);
    assert_eq!(
        &ws_end[0][..4],
        &[0x88, 0x0d, 0x0f, 0xa0],
        "a close frame, code 4000"
    );
    assert!(matches!(
        end.last(),
        Some(Output::Event(Event::Closed { space, ended: true, record: false, last_seq: Some(l) }))
            if *space == SPACE && *l == newest_ws_last
    ));
    assert!(stores.hls.lock().is_finished());
    // Frames after the end are dropped.
    edge.remote_frame(SPACE, all[0].clone());
    assert_eq!(edge.stats().remote_dropped, st.remote_dropped + 1);
}

fn origin_hls_playlist(origin: &Sim) -> bytes::Bytes {
    // The origin's stores are the ones Sim::mixing made; rebuild the same
    // playlist from its frames with a fresh segmenter.
    let mut seg = amphi_hls::Segmenter::new(100);
    for f in origin.frames(SPACE) {
        seg.push(&f);
    }
    seg.live_playlist()
}
