//! The mixer of one space: every 20 ms, one frame of each audible speaker,
//! summed with a limiter, encoded once into the program; and for speakers
//! who want it, a mix-minus (everyone but themselves) to hear the others.
//!
//! Sans-IO: the media thread pushes packets as they arrive and calls
//! [`Mixer::tick`] every 20 ms with the capture time; nothing here reads a
//! clock or a socket.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use amphi_core::{Frame, ParticipantId, SpeakerLevel};
use bytes::Bytes;

use crate::MediaError;
use crate::denoise::Denoiser;
use crate::jitter::{Jitter, JitterConfig, JitterStats, Pop, Pushed};
use crate::opus::{
    Decoder, Encoder, FRAME, MAX_PACKET_SAMPLES, is_dtx, packet_samples, passable_with,
    voice_inactive,
};

/// Settings of a mixer.
#[derive(Debug, Clone)]
pub struct MixerConfig {
    /// Program bitrate, bit/s (16000..=128000).
    pub bitrate: i32,
    /// Mix-minus bitrate, bit/s: speakers only need to understand each
    /// other.
    pub return_bitrate: i32,
    /// Per-speaker jitter buffer.
    pub jitter: JitterConfig,
    /// Whether a lone voice is passed through and silence costs nothing
    /// (`false`: every frame is decoded, mixed and encoded, as before).
    pub pass_through: bool,
}

impl Default for MixerConfig {
    fn default() -> Self {
        MixerConfig {
            bitrate: 32_000,
            return_bitrate: 32_000,
            // A mix pulls each packet a tick before its frame (to make up
            // the program encoder's delay) and pass-through does the same
            // to match: one frame more than the jitter buffer's default,
            // and never less than two.
            jitter: JitterConfig {
                target_frames: 3,
                min_frames: 2,
                ..JitterConfig::default()
            },
            pass_through: true,
        }
    }
}

/// Counters of a mixer, over its life (removed speakers included).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MixerStats {
    /// Program frames produced.
    pub frames: u64,
    /// Packets accepted from audible speakers.
    pub packets: u64,
    /// Frames concealed (lost packets, undecodable packets, deepening).
    pub concealed: u64,
    /// Packets that arrived after their slot was concealed.
    pub late: u64,
    /// Duplicate packets.
    pub duplicate: u64,
    /// Packets libopus could not decode.
    pub decode_errors: u64,
    /// Packets from unknown or inaudible speakers, dropped at ingest.
    pub dropped_inaudible: u64,
    /// Program frames in which the limiter reduced the gain.
    pub limited_frames: u64,
    /// Frames decoded, mixed and encoded ([`Mode::Mix`]).
    pub mixed_frames: u64,
    /// Frames that were a speaker's packet as it came ([`Mode::Pass`]).
    pub passed_frames: u64,
    /// Frames of the shared silence ([`Mode::Silence`]).
    pub silent_frames: u64,
    /// Switches into mixing (each from pass-through or silence).
    pub switches: u64,
    /// Packets decoded (speakers' and the warm-ups at a switch).
    pub decodes: u64,
    /// Packets of speakers only listened to for voice taken as silence
    /// without decoding ([`voice_inactive`]).
    pub skipped: u64,
    /// Packets (and concealments) filtered by a speaker's noise suppressor.
    pub denoised: u64,
    /// Packets encoded (the program, the primers at a switch, every
    /// mix-minus).
    pub encodes: u64,
    /// Silent mix-minus frames not sent ([`DTX_EVERY`]).
    pub dtx_skipped: u64,
}

/// What one tick produced.
#[derive(Debug, Clone)]
pub struct Tick {
    /// The program frame.
    pub frame: Frame,
    /// Mix-minus packets for the speakers who asked for return audio.
    pub mix_minus: Vec<(ParticipantId, Bytes)>,
    /// How the frame was made.
    pub mode: Mode,
}

/// A music space's program bitrate (the most the spec allows).
pub const MUSIC_BITRATE: i32 = 128_000;

/// The limiter keeps every output at or below this (-1 dBFS): the margin
/// absorbs the codec's overshoot so decoded audio stays within [-1, 1].
pub const CEILING: f32 = 0.89;
/// Per-sample gain recovery after limiting (~0.2 s from half gain).
const RELEASE: f32 = 0.00005;

/// A peak limiter: instant attack (the gain drops to exactly what the
/// loudest sample needs, so nothing ever passes the ceiling), slow release
/// (no pumping between syllables).
#[derive(Debug, Clone, Copy)]
struct Limiter {
    gain: f32,
}

impl Limiter {
    const fn new() -> Self {
        Limiter { gain: 1.0 }
    }

    /// Limits `pcm` in place; returns whether the gain had to drop.
    fn apply(&mut self, pcm: &mut [f32; FRAME]) -> bool {
        let mut limited = false;
        for x in pcm.iter_mut() {
            // NaN from a broken decoder must not poison the gain.
            let v = if x.is_finite() { *x } else { 0.0 };
            if (v * self.gain).abs() > CEILING {
                self.gain = CEILING / v.abs();
                limited = true;
            }
            *x = (v * self.gain).clamp(-CEILING, CEILING);
            self.gain = (self.gain + RELEASE).min(1.0);
        }
        limited
    }
}

/// How a tick made its program frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Nobody to hear: the shared pre-encoded silence frame, no decode,
    /// no encode.
    #[default]
    Silence,
    /// One voice: that speaker's Opus packet is the frame, as it came (no
    /// decode, no encode).
    Pass,
    /// Several voices (or a packet that cannot pass): decoded, mixed,
    /// limited and encoded.
    Mix,
}

/// Loudness (see [`level`]) from which a speaker counts as a voice for the
/// choice between pass-through and mix (≈ -50 dBFS: below is room noise).
pub const VOICE_LEVEL: u8 = 20;
/// Mixed ticks with at most one voice before the program passes that
/// voice through again (so a back-and-forth does not switch every frame).
pub const HANGOVER_TICKS: u32 = 10;
/// Packets of each speaker kept (shared, not copied) to warm a decoder
/// and the program encoder when a pass-through turns into a mix.
const RECENT: usize = 3;
/// A passed-through speaker's level is measured (two decodes) once every
/// so many ticks, for the talking events.
const LEVEL_EVERY: u32 = 25;
/// Ticks with nothing from the passed-through speaker before another may
/// take their place.
const LONE_IDLE_TICKS: u32 = 10;
/// A speaker only listened to for voice whose packets say they carry none
/// (DTX, a clear SILK VAD flag, CELT silence: [`voice_inactive`]) is not
/// decoded, except one packet in so many: the encoder's VAD takes a steady
/// sound (a held tone, music) for the noise floor after about a second, and
/// the level of a decoded packet is the judge.
const SKIP_AT_MOST: u32 = 9;

struct Speaker {
    jitter: Jitter,
    decoder: Decoder,
    /// Decoded audio not yet mixed (a 40 or 60 ms packet spans ticks).
    /// While mixed, it runs `lookahead` samples ahead of the speaker's
    /// packets, so that the program encoder's own delay is made up and a
    /// mixed frame covers the same instants as the packet it replaces.
    pcm: VecDeque<f32>,
    audible: bool,
    /// Noise suppression on this speaker's decoded audio (boxed: RNNoise's
    /// state is ~100 KB). A suppressed speaker is never passed through.
    denoise: Option<Box<Denoiser>>,
    ret: Option<(Encoder, Limiter)>,
    frame: [f32; FRAME],
    /// A pull already made this tick (pass-through looks before it mixes).
    pending: Option<Pop>,
    /// The last packets decoded or passed, oldest first.
    recent: [Option<Bytes>; RECENT],
    /// The last thing appended to `pcm` was the newest of `recent` (not a
    /// concealment): what remains of it can be passed as that packet.
    held: bool,
    /// Last measured level of the speaker.
    level: u8,
    since_level: u32,
    idle: u32,
    /// Packets not decoded in a row (see [`SKIP_AT_MOST`]).
    skipped: u32,
    /// Its mix-minus was the silence frame (nobody else to hear), so its
    /// return encoder is reset before it encodes again.
    ret_resting: bool,
    /// Silence frames in a row in its mix-minus (see [`DTX_EVERY`]).
    ret_quiet: u32,
}

/// While a speaker's mix-minus is silence, it is sent one frame in this
/// many (every 400 ms, as Opus DTX does): the first silent frame, then a
/// keep-alive; the receiver plays silence in between and the RTP
/// timestamps jump over the frames not sent.
pub const DTX_EVERY: u32 = 20;

/// Whether the next frame of a mix-minus is sent, given the silence
/// frames before it in a row (`quiet`, updated).
fn dtx_sends(quiet: &mut u32, silent: bool) -> bool {
    if !silent {
        *quiet = 0;
        return true;
    }
    let send = (*quiet).is_multiple_of(DTX_EVERY);
    *quiet = (*quiet + 1) % DTX_EVERY;
    send
}

impl Speaker {
    fn pop(&mut self) -> Pop {
        self.pending.take().unwrap_or_else(|| self.jitter.pop())
    }

    fn remember(&mut self, p: &Bytes) {
        self.recent.rotate_left(1);
        self.recent[RECENT - 1] = Some(p.clone());
    }

    /// Level of the next frame's worth of decoded audio.
    fn next_level(&self) -> u8 {
        let n = self.pcm.len().min(FRAME);
        if n == 0 {
            return 0;
        }
        let sum: f32 = self
            .pcm
            .iter()
            .take(n)
            .map(|x| if x.is_finite() { x * x } else { 0.0 })
            .sum();
        level_of_rms((sum / n as f32).sqrt())
    }
}

/// The mixer of one space.
pub struct Mixer {
    cfg: MixerConfig,
    /// The program encoder, made at the first mix (a space that only ever
    /// passes one voice through, or is silent, never holds one).
    encoder: Option<Encoder>,
    limiter: Limiter,
    speakers: BTreeMap<ParticipantId, Speaker>,
    seq: u64,
    mix: [f32; FRAME],
    program: [f32; FRAME],
    scratch: [f32; FRAME],
    decoded: Box<[f32; MAX_PACKET_SAMPLES]>,
    /// Decoded history while priming a mix (kept for its capacity).
    prime: Vec<f32>,
    levels: Vec<SpeakerLevel>,
    no_levels: Arc<[SpeakerLevel]>,
    /// The program encoder's delay, in samples.
    lookahead: usize,
    /// One 20 ms frame of silence, encoded once.
    silence: Bytes,
    /// Largest packet passed through (at 1.5 times the program's bitrate).
    max_pass_bytes: usize,
    /// Music mode: stereo packets pass through (the outputs say 2 channels).
    music: bool,
    mode: Mode,
    /// The one speaker passed through (or about to be).
    lone: Option<ParticipantId>,
    /// Mixed ticks since two voices were last heard together.
    quiet_ticks: u32,
    stats: MixerStats,
}

impl std::fmt::Debug for Mixer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mixer")
            .field("speakers", &self.speakers.len())
            .field("seq", &self.seq)
            .field("mode", &self.mode)
            .finish()
    }
}

/// Loudness 0..=127 from the RMS: -60 dBFS and below is 0, full scale 127.
pub fn level(samples: &[f32]) -> u8 {
    if samples.is_empty() {
        return 0;
    }
    level_of_rms((samples.iter().map(|x| x * x).sum::<f32>() / samples.len() as f32).sqrt())
}

fn level_of_rms(rms: f32) -> u8 {
    if !rms.is_finite() || rms <= 1e-3 {
        return 0;
    }
    let db = 20.0 * rms.log10();
    (((db + 60.0) / 60.0).clamp(0.0, 1.0) * 127.0).round() as u8
}

impl Mixer {
    /// A mixer with no speakers; it already produces (silent) frames.
    pub fn new(cfg: MixerConfig) -> Result<Self, MediaError> {
        // Fail early on a bad return bitrate rather than at the first
        // speaker who asks for one.
        drop(Encoder::new(cfg.return_bitrate)?);
        let mut first = Encoder::new(cfg.bitrate)?;
        let lookahead = first.lookahead();
        let silence = first.encode(&[0.0; FRAME])?;
        let encoder = if cfg.pass_through {
            None
        } else {
            Some(Encoder::new(cfg.bitrate)?)
        };
        Ok(Mixer {
            lookahead,
            encoder,
            silence,
            max_pass_bytes: usize::try_from(cfg.bitrate).unwrap_or(0) * 3 / 400,
            music: false,
            cfg,
            limiter: Limiter::new(),
            speakers: BTreeMap::new(),
            seq: 0,
            mix: [0.0; FRAME],
            program: [0.0; FRAME],
            scratch: [0.0; FRAME],
            decoded: Box::new([0.0; MAX_PACKET_SAMPLES]),
            prime: Vec::new(),
            levels: Vec::new(),
            no_levels: Arc::from(Vec::new()),
            mode: Mode::Silence,
            lone: None,
            quiet_ticks: HANGOVER_TICKS,
            stats: MixerStats::default(),
        })
    }

    /// Music mode: the program is a stereo stream at [`MUSIC_BITRATE`], a
    /// source's stereo packets pass through as they came (up to 1.5 times
    /// that bitrate). Mixing several sources (or a source whose packets
    /// cannot pass) still makes a mono mix, at that bitrate, which a
    /// stereo player plays in both channels.
    pub fn set_music(&mut self, on: bool) {
        if self.music == on {
            return;
        }
        self.music = on;
        self.cfg.bitrate = if on {
            MUSIC_BITRATE
        } else {
            MixerConfig::default().bitrate
        };
        self.max_pass_bytes = usize::try_from(self.cfg.bitrate).unwrap_or(0) * 3 / 400;
        // Made again at the next mix, at the new bitrate.
        self.encoder = if self.cfg.pass_through {
            None
        } else {
            Encoder::new(self.cfg.bitrate).ok()
        };
    }

    /// Whether this is a music space's mixer.
    pub fn music(&self) -> bool {
        self.music
    }

    /// Continues a program from `seq` (after a restart), so that sequence
    /// numbers stay gap-free for the life of the space.
    pub fn set_next_seq(&mut self, seq: u64) {
        self.seq = seq;
    }

    /// Sequence number the next tick will carry.
    pub fn next_seq(&self) -> u64 {
        self.seq
    }

    /// Counters so far.
    pub fn stats(&self) -> MixerStats {
        self.stats
    }

    /// How the last tick made its frame.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The shared silence frame (what a silent tick carries).
    pub fn silence_frame(&self) -> &Bytes {
        &self.silence
    }

    /// How long audio waits in the deepest audible speaker's jitter buffer
    /// (plus its not yet mixed decoded samples), in µs: the program's audio
    /// was captured at least this long before it is mixed. `None` with no
    /// audible speaker.
    pub fn buffered_us(&self) -> Option<u64> {
        self.speakers
            .values()
            .filter(|s| s.audible)
            .map(|s| {
                let frames = s.jitter.queued().max(s.jitter.target_frames()) as u64;
                frames * 20_000 + s.pcm.len() as u64 * 1_000_000 / 48_000
            })
            .max()
    }

    /// Per-speaker jitter-buffer counters (received, late, duplicate,
    /// missing/concealed).
    pub fn speaker_stats(&self) -> Vec<(ParticipantId, JitterStats)> {
        self.speakers
            .iter()
            .map(|(pid, s)| (*pid, s.jitter.stats()))
            .collect()
    }

    /// Adds a speaker, or updates whether they get a mix-minus. A new
    /// speaker starts inaudible: the room core, not the client, decides
    /// when they may be heard (no hot mics).
    pub fn add_speaker(
        &mut self,
        pid: ParticipantId,
        wants_return: bool,
    ) -> Result<(), MediaError> {
        let ret = match self.speakers.get(&pid) {
            Some(s) if s.ret.is_some() == wants_return => return Ok(()),
            _ if wants_return => Some((Encoder::new(self.cfg.return_bitrate)?, Limiter::new())),
            _ => None,
        };
        if let Some(s) = self.speakers.get_mut(&pid) {
            s.ret = ret;
            return Ok(());
        }
        self.speakers.insert(
            pid,
            Speaker {
                jitter: Jitter::new(self.cfg.jitter),
                decoder: Decoder::new()?,
                pcm: VecDeque::with_capacity(MAX_PACKET_SAMPLES + 2 * FRAME),
                audible: false,
                denoise: None,
                ret,
                frame: [0.0; FRAME],
                pending: None,
                recent: Default::default(),
                held: false,
                level: 0,
                since_level: 0,
                idle: 0,
                skipped: 0,
                ret_resting: false,
                ret_quiet: 0,
            },
        );
        Ok(())
    }

    /// Removes a speaker and everything buffered for them.
    pub fn remove_speaker(&mut self, pid: ParticipantId) {
        self.speakers.remove(&pid);
        if self.lone == Some(pid) {
            self.lone = None;
        }
    }

    /// Whether `pid` may be heard. Turning it off drops their buffered and
    /// decoded audio at once, so nothing said before a mute plays after it.
    pub fn set_audible(&mut self, pid: ParticipantId, audible: bool) {
        if let Some(s) = self.speakers.get_mut(&pid) {
            if !audible && s.audible {
                s.jitter.reset();
                s.pcm.clear();
                s.decoder.reset();
                if let Some(d) = s.denoise.as_mut() {
                    d.reset();
                }
                s.pending = None;
                s.recent = Default::default();
                s.held = false;
                if self.lone == Some(pid) {
                    self.lone = None;
                }
            }
            s.audible = audible;
        }
    }

    /// Turns noise suppression on or off for `pid`. While on, the speaker
    /// is always decoded, filtered and mixed (never passed through).
    pub fn set_noise_suppression(&mut self, pid: ParticipantId, on: bool) {
        if let Some(s) = self.speakers.get_mut(&pid) {
            match (on, s.denoise.is_some()) {
                (true, false) => {
                    s.denoise = Some(Box::new(Denoiser::new()));
                    if self.lone == Some(pid) {
                        // Passed until now: mixed from the next tick.
                        self.lone = None;
                    }
                }
                (false, true) => s.denoise = None,
                _ => {}
            }
        }
    }

    /// Whether `pid`'s audio goes through noise suppression.
    pub fn noise_suppression(&self, pid: ParticipantId) -> bool {
        self.speakers.get(&pid).is_some_and(|s| s.denoise.is_some())
    }

    /// A packet from `pid`'s ingest. Packets of unknown or inaudible
    /// speakers are dropped here, before any decoding.
    pub fn push_packet(&mut self, pid: ParticipantId, rtp_seq: u16, rtp_ts: u32, payload: Bytes) {
        match self.speakers.get_mut(&pid) {
            Some(s) if s.audible => {
                self.stats.packets += 1;
                match s.jitter.push(rtp_seq, rtp_ts, payload) {
                    Pushed::Late => self.stats.late += 1,
                    Pushed::Duplicate => self.stats.duplicate += 1,
                    Pushed::Queued | Pushed::Reset | Pushed::Overflow => {}
                }
            }
            _ => self.stats.dropped_inaudible += 1,
        }
    }

    /// Produces the next program frame, stamped `captured_at_us`.
    ///
    /// With at most one voice the frame is that speaker's packet as it
    /// came, or the shared silence frame (see [`Mode`]); a second voice,
    /// a lost packet or a packet that cannot pass makes it a mix from
    /// this tick on. See docs/ARCHITECTURE.md ("Pass-through") for how
    /// the switch keeps the listener's audio continuous.
    pub fn tick(&mut self, captured_at_us: u64) -> Tick {
        self.levels.clear();
        let direct = if self.mode == Mode::Mix || !self.cfg.pass_through {
            None
        } else {
            self.direct()
        };
        let (opus, program_level, mode) = match direct {
            Some((opus, level, mode)) => {
                self.mode = mode;
                (opus, level, mode)
            }
            None => {
                if self.mode != Mode::Mix {
                    self.enter_mix();
                }
                self.mode = Mode::Mix;
                // May set the next tick's mode back to pass or silence.
                let (opus, level) = self.mixed();
                (opus, level, Mode::Mix)
            }
        };
        match mode {
            Mode::Silence => self.stats.silent_frames += 1,
            Mode::Pass => self.stats.passed_frames += 1,
            Mode::Mix => self.stats.mixed_frames += 1,
        }
        let speakers = if self.levels.is_empty() {
            self.no_levels.clone()
        } else {
            Arc::from(&self.levels[..])
        };
        let frame = Frame {
            seq: self.seq,
            captured_at_us,
            opus,
            program_level,
            speakers,
        };
        self.seq += 1;
        self.stats.frames += 1;

        let mut mix_minus = Vec::new();
        if mode == Mode::Mix {
            for (pid, s) in self.speakers.iter_mut() {
                let Some((enc, limiter)) = s.ret.as_mut() else {
                    continue;
                };
                // Everyone else below -60 dBFS (a lone voice mixed only
                // because a packet was lost, or during a switch): the
                // shared silence frame, no encode. The return encoder
                // starts afresh when there is something to hear again.
                if self.levels.iter().all(|l| l.participant == *pid) {
                    s.ret_resting = true;
                    if dtx_sends(&mut s.ret_quiet, true) {
                        mix_minus.push((*pid, self.silence.clone()));
                    } else {
                        self.stats.dtx_skipped += 1;
                    }
                    continue;
                }
                s.ret_quiet = 0;
                if std::mem::take(&mut s.ret_resting) {
                    enc.reset();
                    *limiter = Limiter::new();
                }
                for ((o, m), own) in self.scratch.iter_mut().zip(&self.mix).zip(&s.frame) {
                    *o = m - own;
                }
                limiter.apply(&mut self.scratch);
                self.stats.encodes += 1;
                if let Ok(p) = enc.encode(&self.scratch) {
                    mix_minus.push((*pid, p));
                }
            }
        } else {
            // Everyone but the lone voice hears the program itself; the
            // lone voice hears nobody.
            for (pid, s) in self.speakers.iter_mut() {
                if s.ret.is_some() {
                    let alone = Some(*pid) == self.lone && mode == Mode::Pass;
                    if !dtx_sends(&mut s.ret_quiet, alone || mode == Mode::Silence) {
                        self.stats.dtx_skipped += 1;
                        continue;
                    }
                    let p = if alone {
                        self.silence.clone()
                    } else {
                        frame.opus.clone()
                    };
                    mix_minus.push((*pid, p));
                }
            }
        }
        Tick {
            frame,
            mix_minus,
            mode,
        }
    }

    /// A frame without mixing, if this tick allows one: the lone voice's
    /// packet, or silence. `None`: mix (pulls already made are kept).
    fn direct(&mut self) -> Option<(Bytes, u8, Mode)> {
        let lookahead = self.lookahead;
        if self.lone.is_some_and(|l| {
            !self
                .speakers
                .get(&l)
                .is_some_and(|s| s.audible && s.denoise.is_none())
        }) {
            self.lone = None;
        }
        if self.lone.is_none() {
            // Whoever sends something first becomes the lone voice.
            // A suppressed speaker is never passed: decoded below.
            for (pid, s) in self
                .speakers
                .iter_mut()
                .filter(|(_, s)| s.audible && s.denoise.is_none())
            {
                let r = s.pop();
                let found = matches!(&r, Pop::Packet(p) if !is_dtx(p));
                s.pending = Some(r);
                if found {
                    s.pcm.clear();
                    s.held = false;
                    s.idle = 0;
                    // Its level is measured on its second packet.
                    s.since_level = LEVEL_EVERY - 2;
                    self.lone = Some(*pid);
                    break;
                }
            }
        }
        // Everyone else is decoded only as far as needed to hear whether
        // they speak (DTX packets are not decoded at all).
        let mut voiced = false;
        for (pid, s) in self.speakers.iter_mut() {
            if !s.audible || Some(*pid) == self.lone {
                continue;
            }
            Self::fill(s, &mut self.decoded, &mut self.stats, lookahead, true);
            let l = s.next_level();
            voiced |= l >= VOICE_LEVEL;
        }
        if voiced {
            self.quiet_ticks = 0;
            return None;
        }
        let out = match self.lone {
            None => (self.silence.clone(), 0, Mode::Silence),
            Some(lone) => {
                let s = self.speakers.get_mut(&lone)?;
                match s.pop() {
                    Pop::Packet(p) if passable_with(&p, self.max_pass_bytes, self.music) => {
                        s.idle = 0;
                        s.remember(&p);
                        s.since_level += 1;
                        if s.since_level >= LEVEL_EVERY {
                            s.since_level = 0;
                            s.level =
                                Self::measure(s, &mut self.decoded, &mut self.stats).unwrap_or(0);
                        }
                        // The next packet is pulled now, a tick ahead,
                        // as a mix pulls it (a mix needs the start of the
                        // next packet to make up the encoder's delay), so
                        // the jitter buffer's margin is the same in both
                        // modes and a switch never finds it a packet short.
                        s.pending = Some(s.jitter.pop());
                        let level = if is_dtx(&p) { 0 } else { s.level.max(1) };
                        if level > 0 {
                            self.levels.push(SpeakerLevel {
                                participant: lone,
                                level,
                            });
                        }
                        (p, level, Mode::Pass)
                    }
                    Pop::Empty => {
                        s.idle += 1;
                        if s.idle >= LONE_IDLE_TICKS {
                            self.lone = None;
                        }
                        (self.silence.clone(), 0, Mode::Silence)
                    }
                    other => {
                        // Lost, or a packet that cannot pass: mixed, the
                        // decoder concealing or decoding it.
                        s.pending = Some(other);
                        return None;
                    }
                }
            }
        };
        // The others were silent: what was decoded of them is dropped.
        for (pid, s) in self.speakers.iter_mut() {
            if Some(*pid) != self.lone {
                let take = s.pcm.len().min(FRAME);
                s.pcm.drain(..take);
            }
        }
        Some(out)
    }

    /// The level of a passed-through speaker's newest packet, decoded
    /// after the one before it (so the decoder is not cold).
    fn measure(
        s: &mut Speaker,
        decoded: &mut [f32; MAX_PACKET_SAMPLES],
        stats: &mut MixerStats,
    ) -> Option<u8> {
        s.decoder.reset();
        let mut n = 0;
        for p in s.recent[RECENT - 2..].iter().flatten() {
            n = s.decoder.decode(p, &mut decoded[..]).ok()?;
            stats.decodes += 1;
        }
        Some(level(&decoded[..n]))
    }

    /// From pass-through (or silence) to mixing, at a packet boundary: the
    /// lone voice's decoder is warmed on the packets already passed, the
    /// program encoder is reset and fed the last two frames of that voice
    /// (its output thrown away), so the first mixed packet continues what
    /// the listener's decoder just played, at the same instants.
    fn enter_mix(&mut self) {
        self.stats.switches += 1;
        if let Some(e) = self.encoder.as_mut() {
            e.reset();
        } else {
            // The bitrate was accepted by `new`; should the encoder still
            // fail, the program carries the silence frame while mixing.
            self.encoder = Encoder::new(self.cfg.bitrate).ok();
        }
        self.limiter = Limiter::new();
        for s in self.speakers.values_mut() {
            if let Some((enc, lim)) = s.ret.as_mut() {
                enc.reset();
                *lim = Limiter::new();
            }
        }
        let d = self.lookahead;
        let Some(s) = self.lone.and_then(|l| self.speakers.get_mut(&l)) else {
            return;
        };
        if self.mode != Mode::Pass {
            return;
        }
        if let Some(p) = &s.recent[RECENT - 1]
            && let Some(e) = self.encoder.as_mut()
        {
            e.hold_config(p.first().map(|t| t >> 3));
        }
        let hist = &mut self.prime;
        hist.clear();
        s.decoder.reset();
        for p in s.recent.iter().flatten() {
            let n = match s.decoder.decode(p, &mut self.decoded[..]) {
                Ok(n) => n,
                Err(_) => s.decoder.conceal(&mut self.decoded[..]),
            };
            self.stats.decodes += 1;
            hist.extend_from_slice(&self.decoded[..n]);
        }
        let cur = match s.pop() {
            Pop::Packet(p) => {
                s.remember(&p);
                s.held = true;
                self.stats.decodes += 1;
                match s.decoder.decode(&p, &mut self.decoded[..]) {
                    Ok(n) => n,
                    Err(_) => {
                        s.held = false;
                        self.stats.decode_errors += 1;
                        self.stats.concealed += 1;
                        s.decoder.conceal(&mut self.decoded[..])
                    }
                }
            }
            Pop::Missing => {
                s.held = false;
                self.stats.concealed += 1;
                s.decoder.conceal(&mut self.decoded[..])
            }
            Pop::Empty => {
                s.held = false;
                0
            }
        };
        hist.extend_from_slice(&self.decoded[..cur]);
        // `boundary`: where the current packet starts. The encoder is fed
        // what lies `d` after each boundary: its delay puts it back.
        let boundary = hist.len() - cur;
        for back in [2 * FRAME, FRAME] {
            let Some(start) = (boundary + d).checked_sub(back) else {
                continue;
            };
            for (i, x) in self.scratch.iter_mut().enumerate() {
                *x = hist.get(start + i).copied().unwrap_or(0.0);
            }
            self.limiter.apply(&mut self.scratch);
            self.stats.encodes += 1;
            if let Some(e) = self.encoder.as_mut() {
                let _ = e.encode(&self.scratch);
            }
        }
        s.pcm.clear();
        s.pcm.extend(hist.iter().skip(boundary + d));
        if cur == 0 {
            s.pcm.clear();
        }
    }

    /// One mixed frame: every audible speaker decoded, summed, limited,
    /// encoded. Afterwards, whether the next tick may pass a lone voice.
    fn mixed(&mut self) -> (Bytes, u8) {
        let lookahead = self.lookahead;
        self.mix = [0.0; FRAME];
        let mut voices = 0;
        let mut voice = None;
        for (pid, s) in self.speakers.iter_mut() {
            s.frame = [0.0; FRAME];
            if !s.audible {
                continue;
            }
            Self::fill(s, &mut self.decoded, &mut self.stats, lookahead, false);
            let take = s.pcm.len().min(FRAME);
            for (dst, src) in s.frame.iter_mut().zip(s.pcm.drain(..take)) {
                *dst = if src.is_finite() { src } else { 0.0 };
            }
            // A sender far ahead (long packets, clock drift) must not build
            // latency: keep at most two frames of decoded audio.
            while s.pcm.len() > 2 * FRAME {
                s.pcm.pop_front();
            }
            let l = level(&s.frame);
            s.level = l;
            if l > 0 {
                self.levels.push(SpeakerLevel {
                    participant: *pid,
                    level: l,
                });
            }
            if l >= VOICE_LEVEL {
                voices += 1;
                voice = Some(*pid);
            }
            for (m, x) in self.mix.iter_mut().zip(s.frame.iter()) {
                *m += x;
            }
        }

        self.program = self.mix;
        if self.limiter.apply(&mut self.program) {
            self.stats.limited_frames += 1;
        }
        self.stats.encodes += 1;
        let encoded = match self.encoder.as_mut() {
            Some(e) => e.encode(&self.program),
            None => Err(MediaError::Opus(-1)),
        };
        let opus = match encoded {
            Ok(p) => p,
            // The encoder cannot fail on a valid 20 ms float frame; if it
            // ever does, the silence frame keeps the stream going.
            Err(_) => self.silence.clone(),
        };
        let program_level = level(&self.program);

        if voices >= 2 {
            self.quiet_ticks = 0;
        } else {
            self.quiet_ticks = self.quiet_ticks.saturating_add(1);
        }
        if voices <= 1
            && let Some(s) = voice.or(self.lone).and_then(|v| self.speakers.get(&v))
            && let Some(p) = &s.recent[RECENT - 1]
        {
            // One voice: the encoder takes its mode and bandwidth, ready
            // for the switch to pass-through.
            if let Some(e) = self.encoder.as_mut() {
                e.hold_config(p.first().map(|t| t >> 3));
            }
        }
        if self.quiet_ticks >= HANGOVER_TICKS && self.cfg.pass_through {
            self.leave_mix(voice, opus.first().map(|t| t >> 3));
        }
        (opus, program_level)
    }

    /// After a mixed tick with at most one voice for a while: the next
    /// tick passes that voice through, starting with the packet whose
    /// remaining samples would have been mixed next (so nothing is skipped
    /// or repeated). Stays mixed when that packet cannot pass.
    fn leave_mix(&mut self, voice: Option<ParticipantId>, program_config: Option<u8>) {
        let (d, max, music) = (self.lookahead, self.max_pass_bytes, self.music);
        // Its last packets all pass, and the program's last packet was
        // made in the same mode and bandwidth as the one to pass next.
        let ready = |s: &Speaker| {
            s.audible
                && s.denoise.is_none()
                && s.held
                && s.pcm.len() + d == FRAME
                && s.recent
                    .iter()
                    .all(|p| p.as_ref().is_none_or(|p| passable_with(p, max, music)))
                && s.recent[RECENT - 1]
                    .as_ref()
                    .is_some_and(|p| p.first().map(|t| t >> 3) == program_config)
        };
        let lone = match voice {
            Some(v) => Some(v),
            None => self
                .lone
                .filter(|l| self.speakers.get(l).is_some_and(ready))
                .or_else(|| {
                    self.speakers
                        .iter()
                        .find(|(_, s)| ready(s))
                        .map(|(p, _)| *p)
                }),
        };
        if let Some(lone) = lone
            && let Some(s) = self.speakers.get_mut(&lone)
            && ready(s)
            && let Some(p) = s.recent[RECENT - 1].take()
        {
            s.pending = Some(Pop::Packet(p));
            // The packet is remembered again when it is passed.
            s.recent.rotate_right(1);
            s.pcm.clear();
            s.held = false;
            s.idle = 0;
            s.since_level = 0;
            self.lone = Some(lone);
            self.mode = Mode::Pass;
            return;
        }
        // Nobody speaks and nothing is buffered: silence.
        if voice.is_none()
            && self
                .speakers
                .values()
                .all(|s| !s.audible || (s.pcm.is_empty() && s.jitter.queued() == 0))
        {
            self.lone = None;
            self.mode = Mode::Silence;
        }
    }

    /// Decodes packets from the speaker's jitter buffer until a frame's
    /// worth of audio is ready (or the buffer has nothing to give). Audio
    /// that starts from an empty queue skips the program encoder's delay
    /// (`lookahead` samples), which keeps a mixed speaker's samples
    /// aligned with their packets. `cheap`: packets known to carry no
    /// voice are taken as silence without decoding (a speaker only
    /// listened to for voice; DTX always, the others up to
    /// [`SKIP_AT_MOST`] in a row).
    fn fill(
        s: &mut Speaker,
        decoded: &mut [f32; MAX_PACKET_SAMPLES],
        stats: &mut MixerStats,
        lookahead: usize,
        cheap: bool,
    ) {
        while s.pcm.len() < FRAME {
            let (n, held) = match s.pop() {
                Pop::Packet(p)
                    if cheap
                        && (is_dtx(&p) || (s.skipped < SKIP_AT_MOST && voice_inactive(&p))) =>
                {
                    s.skipped += 1;
                    stats.skipped += 1;
                    let n = packet_samples(&p).unwrap_or(FRAME as u32) as usize;
                    decoded[..n].fill(0.0);
                    (n, false)
                }
                Pop::Packet(p) => {
                    s.skipped = 0;
                    stats.decodes += 1;
                    s.remember(&p);
                    match s.decoder.decode(&p, &mut decoded[..]) {
                        Ok(n) => (n, true),
                        Err(_) => {
                            stats.decode_errors += 1;
                            stats.concealed += 1;
                            (s.decoder.conceal(&mut decoded[..]), false)
                        }
                    }
                }
                Pop::Missing => {
                    stats.concealed += 1;
                    (s.decoder.conceal(&mut decoded[..]), false)
                }
                Pop::Empty => break,
            };
            if n == 0 {
                break;
            }
            if let Some(d) = s.denoise.as_mut() {
                d.process(&mut decoded[..n]);
                stats.denoised += 1;
            }
            // Only 20 ms packets can ever pass; others keep their timing.
            let skip = if s.pcm.is_empty() && n == FRAME {
                lookahead
            } else {
                0
            };
            s.pcm.extend(&decoded[skip..n]);
            s.held = held;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::{peak, tone_amplitude, tone_ratio};
    use crate::opus::Decoder;

    fn sine(freq: f32, amp: f32, from: usize, len: usize) -> Vec<f32> {
        (from..from + len)
            .map(|i| amp * (2.0 * std::f32::consts::PI * freq * i as f32 / 48_000.0).sin())
            .collect()
    }

    /// A speaker's client: a tone, encoded in packets of `samples`.
    struct Sender {
        enc: Encoder,
        freq: f32,
        amp: f32,
        at: usize,
        seq: u16,
    }

    impl Sender {
        fn new(freq: f32, amp: f32) -> Self {
            Sender {
                enc: Encoder::new(64_000).unwrap(),
                freq,
                amp,
                at: 0,
                seq: 0,
            }
        }
        /// Next packet: (rtp seq, rtp ts, payload).
        fn packet(&mut self, samples: usize) -> (u16, u32, Bytes) {
            let pcm = sine(self.freq, self.amp, self.at, samples);
            let p = self.enc.encode_samples(&pcm).unwrap();
            let out = (self.seq, self.at as u32, p);
            self.at += samples;
            self.seq = self.seq.wrapping_add(1);
            out
        }
        fn send(&mut self, m: &mut Mixer, pid: ParticipantId) {
            let (s, t, p) = self.packet(FRAME);
            m.push_packet(pid, s, t, p);
        }
    }

    fn decode_all(packets: &[Bytes]) -> Vec<f32> {
        let mut d = Decoder::new().unwrap();
        let mut buf = [0f32; FRAME];
        let mut out = Vec::new();
        for p in packets {
            let n = d.decode(p, &mut buf).unwrap();
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    const A: ParticipantId = ParticipantId(1);
    const B: ParticipantId = ParticipantId(2);

    fn two_speakers() -> (Mixer, Sender, Sender) {
        let mut m = Mixer::new(MixerConfig::default()).unwrap();
        m.add_speaker(A, true).unwrap();
        m.add_speaker(B, false).unwrap();
        m.set_audible(A, true);
        m.set_audible(B, true);
        // Both near full scale: their sum is nearly twice that.
        (m, Sender::new(440.0, 0.98), Sender::new(660.0, 0.98))
    }

    #[test]
    fn two_loud_speakers_are_both_heard_without_clipping() {
        let (mut m, mut sa, mut sb) = two_speakers();
        let mut program = Vec::new();
        for k in 0..100u64 {
            sa.send(&mut m, A);
            sb.send(&mut m, B);
            let t = m.tick(1_000 + k * 20_000);
            assert_eq!(t.frame.seq, k);
            assert_eq!(t.frame.captured_at_us, 1_000 + k * 20_000);
            if k > 5 {
                assert_eq!(t.frame.speakers.len(), 2);
                assert!(
                    t.frame.speakers.iter().all(|l| l.level > 110),
                    "{:?}",
                    t.frame.speakers
                );
                assert!(t.frame.program_level > 110);
            }
            program.push(t.frame.opus);
        }
        let pcm = decode_all(&program);
        let tail = &pcm[pcm.len() / 2..];
        let (r440, r660) = (
            tone_ratio(tail, 440.0, 48_000),
            tone_ratio(tail, 660.0, 48_000),
        );
        assert!(r440 > 0.35 && r660 > 0.35, "440: {r440}, 660: {r660}");
        assert!(peak(&pcm) <= 1.0, "the program clipped: {}", peak(&pcm));
        assert!(m.stats().limited_frames > 0);
        assert_eq!(m.stats().concealed, 0);
    }

    #[test]
    fn a_muted_speaker_is_gone_from_the_next_frame() {
        let (mut m, mut sa, mut sb) = two_speakers();
        let mut program = Vec::new();
        for k in 0..50 {
            sa.send(&mut m, A);
            sb.send(&mut m, B);
            program.push(m.tick(k).frame.opus);
        }
        // B's packets keep coming (the client does not know it is muted),
        // and some are already buffered.
        m.set_audible(B, false);
        let muted_at = program.len();
        for k in 50..100 {
            sa.send(&mut m, A);
            sb.send(&mut m, B);
            let t = m.tick(k);
            assert!(t.frame.speakers.iter().all(|l| l.participant == A));
            program.push(t.frame.opus);
        }
        let mut d = Decoder::new().unwrap();
        let mut buf = [0f32; FRAME];
        for (i, p) in program.iter().enumerate() {
            let n = d.decode(p, &mut buf).unwrap();
            let (a, b) = (
                tone_amplitude(&buf[..n], 440.0, 48_000),
                tone_amplitude(&buf[..n], 660.0, 48_000),
            );
            if i > 10 && i < muted_at {
                assert!(b > 0.2, "frame {i}: B should be heard ({b})");
            }
            // The codec's 6.5 ms lookahead carries the end of the frame
            // before the mute into the first frame after it; from the
            // next one on, nothing of B.
            if i > muted_at {
                assert!(b < 0.005, "frame {i}: B heard after the mute ({b})");
                assert!(a > 0.3, "frame {i}: A lost ({a})");
            }
        }
        assert!(m.stats().dropped_inaudible >= 50);
    }

    #[test]
    fn mix_minus_carries_the_others_but_not_oneself() {
        let (mut m, mut sa, mut sb) = two_speakers();
        let mut returned = Vec::new();
        for k in 0..100 {
            sa.send(&mut m, A);
            sb.send(&mut m, B);
            let t = m.tick(k);
            // Silence (sent one frame in 20) until both are heard.
            if k >= 10 {
                assert_eq!(t.mix_minus.len(), 1, "only A asked for return audio");
            }
            for (pid, p) in t.mix_minus {
                assert_eq!(pid, A);
                returned.push(p);
            }
        }
        let ret = decode_all(&returned);
        let tail = &ret[ret.len() / 2..];
        assert!(tone_ratio(tail, 660.0, 48_000) > 0.8, "A must hear B");
        assert!(
            tone_ratio(tail, 440.0, 48_000) < 0.01,
            "A must not hear itself"
        );
        assert!(peak(&ret) <= 1.0);
    }

    #[test]
    fn a_lone_voice_mixed_for_a_lost_packet_gets_silence_back_without_an_encode() {
        let mut m = Mixer::new(MixerConfig::default()).unwrap();
        m.add_speaker(A, true).unwrap();
        m.set_audible(A, true);
        let mut s = Sender::new(440.0, 0.5);
        let silence = m.silence_frame().clone();
        let (mut mixed, mut sent) = (0, 0);
        for k in 0..200 {
            let (seq, ts, p) = s.packet(FRAME);
            // Every 20th packet lost: a mix (the decoder conceals it).
            if k % 20 != 10 {
                m.push_packet(A, seq, ts, p);
            }
            let before = m.stats().encodes;
            let t = m.tick(k);
            // Silence, and only one frame in DTX_EVERY of it is sent,
            // whether the tick passed or mixed.
            assert_eq!(
                t.mix_minus.len(),
                usize::from(k % DTX_EVERY as u64 == 0),
                "tick {k}"
            );
            sent += t.mix_minus.len();
            if let Some((_, p)) = t.mix_minus.first() {
                assert_eq!(*p, silence, "tick {k}: A hears nobody");
            }
            if t.mode == Mode::Mix {
                mixed += 1;
                // The program only (and the encoder's warm-up at a switch).
                assert!(m.stats().encodes - before <= 3, "tick {k}");
            }
        }
        assert!(mixed >= 9, "{mixed} mixed ticks");
        assert_eq!(sent, 10);
        assert_eq!(m.stats().dtx_skipped, 190);
    }

    #[test]
    fn silence_is_still_a_continuous_stream() {
        let mut m = Mixer::new(MixerConfig::default()).unwrap();
        m.add_speaker(A, true).unwrap();
        m.set_audible(A, true);
        let ticks: Vec<Tick> = (0..50).map(|k| m.tick(k * 20_000)).collect();
        let seqs: Vec<u64> = ticks.iter().map(|t| t.frame.seq).collect();
        assert_eq!(seqs, (0..50).collect::<Vec<_>>());
        assert!(ticks.iter().all(|t| t.frame.program_level == 0
            && t.frame.speakers.is_empty()
            && !t.frame.opus.is_empty()));
        // The speaker's silent return: one frame in DTX_EVERY.
        let sent: Vec<u64> = ticks
            .iter()
            .filter(|t| !t.mix_minus.is_empty())
            .map(|t| t.frame.seq)
            .collect();
        assert_eq!(sent, [0, 20, 40]);
        let pcm = decode_all(
            &ticks
                .iter()
                .map(|t| t.frame.opus.clone())
                .collect::<Vec<_>>(),
        );
        assert_eq!(pcm.len(), 50 * FRAME);
        assert!(peak(&pcm) < 1e-3);
        // A restarted program continues its numbering.
        m.set_next_seq(1_000);
        assert_eq!(m.tick(0).frame.seq, 1_000);
        assert_eq!(m.tick(0).frame.seq, 1_001);
    }

    #[test]
    fn a_second_speakers_silence_is_not_decoded_and_their_voice_still_mixes() {
        let mut m = Mixer::new(MixerConfig::default()).unwrap();
        for pid in [A, B] {
            m.add_speaker(pid, false).unwrap();
            m.set_audible(pid, true);
        }
        let mut a = Sender::new(440.0, 0.5);
        // B: a browser without DTX in SILK wideband, in a quiet room.
        let mut b = Encoder::new(32_000).unwrap();
        b.hold_config(Some(9));
        let mut seed = 7u32;
        let mut hiss = move || -> [f32; FRAME] {
            std::array::from_fn(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((seed >> 8) as f32 / (1 << 24) as f32 - 0.5) * 2e-4
            })
        };
        let mut decodes_at = 0;
        let mut first_mix = None;
        for k in 0..260u16 {
            a.send(&mut m, A);
            let pcm = if k < 220 {
                hiss()
            } else {
                let t = sine(660.0, 0.3, usize::from(k) * FRAME, FRAME);
                std::array::from_fn(|i| t[i])
            };
            m.push_packet(B, k, u32::from(k) * 960, b.encode(&pcm).unwrap());
            if k == 20 {
                decodes_at = m.stats().decodes;
            }
            let t = m.tick(u64::from(k));
            if (20..220).contains(&k) {
                assert_eq!(t.mode, Mode::Pass, "tick {k}: A alone is passed");
            }
            if k >= 220 && t.mode == Mode::Mix && first_mix.is_none() {
                first_mix = Some(k);
            }
            if k == 219 {
                // 200 ticks: B decoded one packet in ten, A's level
                // measured (two decodes) every 25 packets; without the
                // VAD flag B alone would be 200 decodes.
                let d = m.stats().decodes - decodes_at;
                assert!(d <= 40, "{d} decodes in 200 ticks");
                assert!(m.stats().skipped >= 170, "{:?}", m.stats());
            }
        }
        let at = first_mix.expect("B's voice makes a mix");
        assert!(at <= 224, "B heard {} ticks after it spoke", at - 220);
    }

    #[test]
    fn lost_packets_are_concealed_and_late_ones_counted() {
        let mut m = Mixer::new(MixerConfig::default()).unwrap();
        m.add_speaker(A, false).unwrap();
        m.set_audible(A, true);
        let mut s = Sender::new(440.0, 0.5);
        let mut held = None;
        let mut program = Vec::new();
        for k in 0..61 {
            let (seq, ts, p) = s.packet(FRAME);
            match k % 10 {
                5 => held = Some((seq, ts, p)),
                // Packet 5 shows up five ticks later: its slot is gone.
                0 if k > 0 => {
                    m.push_packet(A, seq, ts, p);
                    if let Some((seq, ts, p)) = held.take() {
                        m.push_packet(A, seq, ts, p);
                    }
                }
                _ => m.push_packet(A, seq, ts, p),
            }
            program.push(m.tick(k).frame.opus);
        }
        let st = m.stats();
        assert!(st.concealed >= 3, "{st:?}");
        assert!(st.late >= 3, "{st:?}");
        assert_eq!(st.packets, 61);
        // Concealment keeps the tone going.
        let pcm = decode_all(&program);
        assert!(tone_ratio(&pcm[9600..], 440.0, 48_000) > 0.7);
    }

    #[test]
    fn buffered_time_follows_the_audible_speakers_queues() {
        let mut m = Mixer::new(MixerConfig::default()).unwrap();
        assert_eq!(m.buffered_us(), None);
        m.add_speaker(A, false).unwrap();
        m.set_audible(A, true);
        let mut s = Sender::new(440.0, 0.5);
        for _ in 0..5 {
            let (seq, ts, p) = s.packet(FRAME);
            m.push_packet(A, seq, ts, p);
        }
        let deep = m.buffered_us().unwrap();
        assert!((100_000..=200_000).contains(&deep), "{deep}");
        m.set_audible(A, false);
        assert_eq!(m.buffered_us(), None);
    }

    #[test]
    fn long_and_short_packets_play_continuously() {
        for samples in [480usize, 1920, 2880] {
            let mut m = Mixer::new(MixerConfig::default()).unwrap();
            m.add_speaker(A, false).unwrap();
            m.set_audible(A, true);
            let mut s = Sender::new(440.0, 0.5);
            let mut program = Vec::new();
            let mut sent = 0;
            for k in 0..150 {
                // The sender keeps pace with the clock.
                while sent < (k + 1) * FRAME {
                    let (seq, ts, p) = s.packet(samples);
                    m.push_packet(A, seq, ts, p);
                    sent += samples;
                }
                program.push(m.tick(k as u64).frame.opus);
            }
            let st = m.stats();
            assert_eq!(
                (st.concealed, st.decode_errors),
                (0, 0),
                "{samples}: {st:?}"
            );
            let pcm = decode_all(&program);
            // Heard without a gap once started.
            let started = pcm.iter().position(|x| x.abs() > 0.1).unwrap();
            let rest = &pcm[started + 9600..];
            assert!(tone_ratio(rest, 440.0, 48_000) > 0.8, "{samples}");
            for block in rest.chunks(FRAME) {
                assert!(peak(block) > 0.3, "{samples}: a gap");
            }
        }
    }

    #[test]
    fn unknown_and_inaudible_speakers_are_dropped_at_ingest() {
        let mut m = Mixer::new(MixerConfig::default()).unwrap();
        m.add_speaker(A, false).unwrap();
        let mut s = Sender::new(440.0, 0.5);
        for k in 0..20 {
            s.send(&mut m, A);
            s.send(&mut m, ParticipantId(99));
            assert_eq!(m.tick(k).frame.program_level, 0, "not yet audible");
        }
        assert_eq!(m.stats().dropped_inaudible, 40);
        assert_eq!(m.stats().packets, 0);
        m.remove_speaker(A);
        assert!(m.speaker_stats().is_empty());
        assert!(
            Mixer::new(MixerConfig {
                bitrate: 1,
                ..MixerConfig::default()
            })
            .is_err()
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Add(u8, bool),
        Remove(u8),
        Audible(u8, bool),
        Garbage(u8, u16, Vec<u8>),
        Tone(u8, u16),
        Tick,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            1 => (0u8..4, any::<bool>()).prop_map(|(p, r)| Op::Add(p, r)),
            1 => (0u8..4).prop_map(Op::Remove),
            1 => (0u8..4, any::<bool>()).prop_map(|(p, a)| Op::Audible(p, a)),
            1 => (0u8..4, any::<u16>(), proptest::collection::vec(any::<u8>(), 0..80))
                .prop_map(|(p, s, b)| Op::Garbage(p, s, b)),
            3 => (0u8..4, 0u16..40).prop_map(|(p, s)| Op::Tone(p, s)),
            3 => Just(Op::Tick),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Whatever speakers send and whatever the room decides, the
        /// program keeps its numbering, stays under the ceiling and only
        /// names audible speakers.
        #[test]
        fn any_sequence_of_events_keeps_the_program_sound(ops in proptest::collection::vec(op(), 0..120)) {
            let loud = {
                let mut e = Encoder::new(64_000).unwrap();
                e.encode(&std::array::from_fn(|i| if i % 20 < 10 { 1.0 } else { -1.0 })).unwrap()
            };
            let mut m = Mixer::new(MixerConfig::default()).unwrap();
            let mut audible = std::collections::BTreeSet::new();
            let mut expect_seq = 0;
            for op in ops {
                match op {
                    Op::Add(p, r) => m.add_speaker(ParticipantId(p.into()), r).unwrap(),
                    Op::Remove(p) => {
                        m.remove_speaker(ParticipantId(p.into()));
                        audible.remove(&p);
                    }
                    Op::Audible(p, a) => {
                        m.set_audible(ParticipantId(p.into()), a);
                        if a && m.speakers.contains_key(&ParticipantId(p.into())) {
                            audible.insert(p);
                        } else {
                            audible.remove(&p);
                        }
                    }
                    Op::Garbage(p, s, b) => m.push_packet(ParticipantId(p.into()), s, 0, Bytes::from(b)),
                    Op::Tone(p, s) => m.push_packet(ParticipantId(p.into()), s, u32::from(s) * 960, loud.clone()),
                    Op::Tick => {
                        let t = m.tick(0);
                        proptest::prop_assert_eq!(t.frame.seq, expect_seq);
                        expect_seq += 1;
                        proptest::prop_assert!(m.program.iter().all(|x| x.abs() <= CEILING));
                        for l in t.frame.speakers.iter() {
                            proptest::prop_assert!(audible.contains(&(l.participant.0 as u8)));
                        }
                        for (pid, _) in &t.mix_minus {
                            proptest::prop_assert!(m.speakers.contains_key(pid));
                        }
                    }
                }
            }
        }
    }
}
