//! Pass-through end to end: two real WebRTC speakers (aiortc, encoding as
//! the WHIP answer asks: mono, the program's bitrate) alternate and
//! overlap; a listener (ffmpeg on `live.opus`) hears the right tones in
//! the right order through every switch between pass-through and mixing,
//! without a gap; the recording and LL-HLS decode without an error.

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{
    Server, call, ffmpeg_listen, join, live_space, metric, publish_tone_with, tone_share, wait_for,
};

/// The value of one labelled sample in `/metrics`.
fn sample(s: &Server, line_prefix: &str) -> f64 {
    let text = call("GET", &s.url("/metrics"), None, None)
        .body
        .as_str()
        .unwrap_or_default()
        .to_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Runs `program` with `args` quietly; returns its stderr, panicking if it
/// failed.
fn run_clean(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .expect("ffmpeg/ffprobe are required: run scripts/test");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{program} {args:?}: {err}");
    err
}

/// Which tones a 100 ms block carries: 'A' 440 Hz, 'B' 660 Hz, 'M' both,
/// '.' neither.
fn state(block: &[f32]) -> char {
    let (a, b) = (tone_share(block, 440.0), tone_share(block, 660.0));
    match (a > 0.2, b > 0.2) {
        (true, true) => 'M',
        (true, false) if a > 0.6 => 'A',
        (false, true) if b > 0.6 => 'B',
        (false, false) => '.',
        _ => '?',
    }
}

/// Runs of equal states as (state, 100 ms blocks), short blips (a switch,
/// a block straddling two states) dropped.
fn runs(states: &str) -> Vec<(char, usize)> {
    let mut out: Vec<(char, usize)> = Vec::new();
    for c in states.chars() {
        match out.last_mut() {
            Some((s, n)) if *s == c => *n += 1,
            _ => out.push((c, 1)),
        }
    }
    out.retain(|(_, n)| *n >= 3);
    let mut merged: Vec<(char, usize)> = Vec::new();
    for (c, n) in out {
        match merged.last_mut() {
            Some((s, m)) if *s == c => *m += n,
            _ => merged.push((c, n)),
        }
    }
    merged
}

#[test]
fn two_speakers_alternate_and_overlap_through_pass_through_and_mix() {
    let s = Server::start(&[]);
    let (id, host, _) = live_space(&s, "Pass-through");
    let sp = |p: &str| s.url(&format!("/api/v1/spaces/{id}{p}"));
    let (pid, tok) = join(&s, &id, "Second");
    assert_eq!(call("POST", &sp("/hand"), Some(&tok), None).status, 200);
    assert_eq!(
        call("POST", &sp(&format!("/stage/{pid}")), Some(&host), None).status,
        200
    );

    // One timeline for both speakers: A alone 0-2 s, both 2-4, A 4-6,
    // both 6-8, B alone 8-12 (A still sending, silence).
    let epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
        + 5.0;
    let epoch_arg = format!("{epoch:.3}");
    let mut a = publish_tone_with(
        &s,
        &id,
        &host,
        440,
        22,
        &["--honor-fmtp", "--epoch", &epoch_arg, "--schedule", "0-8"],
    );
    let mut b = publish_tone_with(
        &s,
        &id,
        &tok,
        660,
        22,
        &[
            "--honor-fmtp",
            "--epoch",
            &epoch_arg,
            "--schedule",
            "2-4,6-12",
        ],
    );
    let wait = epoch
        - 1.0
        - SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64();
    std::thread::sleep(Duration::from_secs_f64(wait.max(0.0)));
    let url = s.url(&format!("/spaces/{id}/live.opus"));
    let pcm = ffmpeg_listen(&url, 14.5);

    let states: String = pcm.chunks_exact(4800).map(state).collect();
    let seen = runs(&states);
    eprintln!("listener, 100 ms blocks: {states}\nruns: {seen:?}");
    let order: String = seen.iter().map(|(c, _)| *c).filter(|c| *c != '.').collect();
    assert!(
        order.contains("AMAMB"),
        "A, both, A, both, B expected in that order: {states}"
    );
    // Each turn lasts what the speakers were told (±0.6 s of switching,
    // buffering and the client's clock).
    let turns: Vec<usize> = seen
        .iter()
        .filter(|(c, _)| *c != '.')
        .map(|(_, n)| *n)
        .collect();
    let at = order.find("AMAMB").expect("checked");
    for (k, want) in [(0, 20), (1, 20), (2, 20), (3, 20), (4, 40)] {
        if k == 0 {
            continue; // A's first turn starts before the listener does.
        }
        let got = turns[at + k];
        assert!(
            got.abs_diff(want) <= 6,
            "turn {k} lasted {got} blocks, {want} expected: {states}"
        );
    }
    // No gap: from A's first turn to B's end every block has sound.
    let first = states.find('A').expect("A heard");
    let last = states.rfind('B').expect("B heard");
    let silent = states[first..=last].matches('.').count();
    assert!(silent == 0, "{silent} silent blocks mid-program: {states}");

    // The node passed through and mixed, and switched at least at each of
    // B's turns.
    let pass = sample(&s, "amphi_program_ticks_total{mode=\"pass\"}");
    let mix = sample(&s, "amphi_program_ticks_total{mode=\"mix\"}");
    let switches = metric(&s, "amphi_program_mix_switches_total");
    eprintln!("ticks: pass {pass}, mix {mix}; switches {switches}");
    assert!(pass >= 200.0, "passed-through frames: {pass}");
    assert!(mix >= 150.0, "mixed frames: {mix}");
    assert!(switches >= 2.0, "switches into a mix: {switches}");

    // LL-HLS across the switches: ffmpeg reads every segment listed
    // without an error.
    let hls = s.url(&format!("/spaces/{id}/hls/live.m3u8"));
    let err = run_clean(
        "ffmpeg",
        &[
            "-v",
            "error",
            "-nostdin",
            "-live_start_index",
            "0",
            "-i",
            &hls,
            "-t",
            "10",
            "-f",
            "null",
            "-",
        ],
    );
    assert!(err.trim().is_empty(), "LL-HLS decode errors: {err}");

    a.kill();
    b.kill();
    // The recording: ffprobe and ffmpeg read it without an error, and it
    // holds both voices.
    assert_eq!(
        call(
            "POST",
            &s.url(&format!("/api/v1/spaces/{id}/end")),
            Some(&host),
            None
        )
        .status,
        200
    );
    let rec = s.url(&format!("/spaces/{id}/recording.opus"));
    wait_for(5, "the recording", || {
        call("GET", &rec, None, None).status == 200
    });
    let err = run_clean(
        "ffprobe",
        &["-v", "error", "-show_entries", "format=duration", &rec],
    );
    assert!(err.trim().is_empty(), "ffprobe: {err}");
    let err = run_clean(
        "ffmpeg",
        &["-v", "error", "-nostdin", "-i", &rec, "-f", "null", "-"],
    );
    assert!(err.trim().is_empty(), "recording decode errors: {err}");
    let recorded = ffmpeg_listen(&rec, 3600.0);
    let (sa, sb) = (
        common::seconds_of_tone(&recorded, 440.0),
        common::seconds_of_tone(&recorded, 660.0),
    );
    assert!(
        sa >= 3.0 && sb >= 3.0,
        "recorded: 440 Hz {sa} s, 660 Hz {sb} s"
    );
}
