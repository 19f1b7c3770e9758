//! The state machine: every space this node mixes or relays, one clock.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use amphi_core::{Frame, ParticipantId, SpaceId};
use amphi_media::{JitterStats, Mixer, MixerConfig, Mode};
use bytes::Bytes;

use crate::ProgramError;
use crate::cutters::{CutConfig, Cutters, Stores};
use crate::output::{Event, Output, Session};
use crate::space::{Mixed, Source, SpaceProgram, Speaker};

/// The program's cadence: one frame per space every 20 ms.
pub const TICK: Duration = Duration::from_millis(20);
/// A tick that starts later than this after its deadline is counted late.
const LATE: Duration = Duration::from_millis(10);
/// Further behind than this (a stalled machine), the clock restarts
/// rather than bursting out frames to catch up.
const RESYNC: Duration = Duration::from_millis(200);
/// WHIP sessions one participant may hold at once.
pub const MAX_SESSIONS_PER_SPEAKER: usize = 2;
/// How far behind wall time a frame's capture stamp is when nobody speaks
/// (with speakers it is their jitter buffers' measured depth), so latency
/// measured from `captured_at` includes the buffering.
pub const IDLE_JITTER_DEPTH_US: u64 = 40_000;

/// Settings of the program.
#[derive(Debug, Clone)]
pub struct ProgramConfig {
    /// The mixers' settings (program bitrate, jitter buffers).
    pub mixer: MixerConfig,
    /// How frames are grouped into units.
    pub cut: CutConfig,
    /// Sessions a speaker may hold; a newer one replaces the oldest.
    pub max_sessions_per_speaker: usize,
}

impl Default for ProgramConfig {
    fn default() -> Self {
        ProgramConfig {
            mixer: MixerConfig::default(),
            cut: CutConfig::default(),
            max_sessions_per_speaker: MAX_SESSIONS_PER_SPEAKER,
        }
    }
}

/// A space to start mixing here.
#[derive(Debug, Clone)]
pub struct StartSpace {
    pub space: SpaceId,
    /// Sequence number of its first frame (a program resumed after a
    /// restart or a takeover goes on from where it stopped).
    pub first_seq: u64,
    /// Whether its frames are recorded (they come out with `record`).
    pub record: bool,
    /// Where its history and HLS are kept (fresh, or an edge's).
    pub stores: Stores,
}

/// One Opus packet from a speaker's ingest (already past the gate there).
#[derive(Debug, Clone)]
pub struct Packet {
    pub space: SpaceId,
    pub participant: ParticipantId,
    pub rtp_seq: u16,
    pub rtp_ts: u32,
    pub payload: Bytes,
    /// When the packet arrived (for a future pass-through's pacing; the
    /// jitter buffer orders by RTP numbers alone).
    pub received: Instant,
}

/// Counters of the program, over its life.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ProgramStats {
    /// Ticks run (one per 20 ms, all spaces at once).
    pub ticks: u64,
    /// Frames mixed here (all spaces).
    pub frames: u64,
    /// Ticks that started more than 10 ms late.
    pub late_ticks: u64,
    /// Times the clock restarted after falling far behind.
    pub resyncs: u64,
    /// Packets handed to a mixer.
    pub packets: u64,
    /// Packets for no space mixed here, or no speaker of it.
    pub packets_unrouted: u64,
    /// Sessions closed because their speaker opened a newer one.
    pub sessions_replaced: u64,
    /// Frames from other nodes cut here.
    pub remote_frames: u64,
    /// Frames from other nodes dropped: not newer than the last one, or
    /// for a space not relayed here.
    pub remote_dropped: u64,
    /// Frames decoded, mixed and encoded (mode `mix`).
    pub mixed_frames: u64,
    /// Frames that were one speaker's packet as it came (mode `pass`).
    pub passed_frames: u64,
    /// Frames of the shared silence (mode `silence`).
    pub silent_frames: u64,
    /// Switches into mixing, from pass-through or silence.
    pub switches: u64,
    /// Opus packets decoded by the mixers.
    pub decodes: u64,
    /// Opus packets encoded by the mixers (programs and mix-minus).
    pub encodes: u64,
    /// Silent mix-minus frames not sent (a speaker who hears nobody gets
    /// one every 400 ms, as with Opus DTX).
    pub mix_minus_dtx_skipped: u64,
}

/// The program of every space a node serves. See the crate docs.
#[derive(Debug)]
pub struct Program {
    cfg: ProgramConfig,
    spaces: HashMap<SpaceId, SpaceProgram>,
    sessions: HashMap<Session, (SpaceId, ParticipantId)>,
    out: VecDeque<Output>,
    next_tick: Instant,
    stats: ProgramStats,
}

impl Program {
    /// A program with no space; its clock starts at `now`.
    pub fn new(cfg: ProgramConfig, now: Instant) -> Self {
        Program {
            cfg,
            spaces: HashMap::new(),
            sessions: HashMap::new(),
            out: VecDeque::new(),
            next_tick: now + TICK,
            stats: ProgramStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> ProgramStats {
        self.stats
    }

    /// Whether this node mixes `space`.
    pub fn is_mixing(&self, space: SpaceId) -> bool {
        matches!(
            self.spaces.get(&space),
            Some(SpaceProgram {
                source: Source::Mixed(_),
                ..
            })
        )
    }

    /// Whether this node relays `space` from another node's frames.
    pub fn is_edge(&self, space: SpaceId) -> bool {
        matches!(
            self.spaces.get(&space),
            Some(SpaceProgram {
                source: Source::Edge,
                ..
            })
        )
    }

    /// Sequence number the next frame of `space` will carry, if it is
    /// mixed here.
    pub fn next_seq(&self, space: SpaceId) -> Option<u64> {
        match &self.spaces.get(&space)?.source {
            Source::Mixed(m) => Some(m.mixer.next_seq()),
            Source::Edge => None,
        }
    }

    /// Per-speaker jitter-buffer counters of every mixed space.
    pub fn speaker_stats(&self) -> Vec<(SpaceId, ParticipantId, JitterStats)> {
        let mut all = Vec::new();
        for (id, sp) in &self.spaces {
            if let Source::Mixed(m) = &sp.source {
                all.extend(
                    m.mixer
                        .speaker_stats()
                        .into_iter()
                        .map(|(p, st)| (*id, p, st)),
                );
            }
        }
        all
    }

    /// Starts mixing a space here. A space relayed as an edge until now
    /// keeps its stores (its listeners carry on); frames are numbered from
    /// `first_seq`, or after the last one in the stores if that is later.
    pub fn start_space(&mut self, start: StartSpace) -> Result<(), ProgramError> {
        let mut mixer = Mixer::new(self.cfg.mixer.clone())?;
        let after_stores = start
            .stores
            .history
            .lock()
            .last_seq()
            .map_or(0, |s| s.saturating_add(1));
        mixer.set_next_seq(start.first_seq.max(after_stores));
        self.forget_sessions(start.space);
        self.spaces.insert(
            start.space,
            SpaceProgram {
                source: Source::Mixed(Box::new(Mixed {
                    mixer,
                    speakers: HashMap::new(),
                    record: start.record,
                })),
                cutters: Cutters::new(start.space, &self.cfg.cut, start.stores),
            },
        );
        Ok(())
    }

    /// Starts relaying a space mixed on another node: its frames come with
    /// [`Program::remote_frame`] and are cut here like a mixed space's.
    pub fn start_edge(&mut self, space: SpaceId, stores: Stores) {
        if self.spaces.contains_key(&space) {
            return;
        }
        self.spaces.insert(
            space,
            SpaceProgram {
                source: Source::Edge,
                cutters: Cutters::new(space, &self.cfg.cut, stores),
            },
        );
    }

    /// The space ended: its outputs get their last units and their end
    /// (mixed here or relayed), then [`Event::Closed`] with `ended`.
    pub fn stop_space(&mut self, space: SpaceId) {
        let Some(mut sp) = self.spaces.remove(&space) else {
            return;
        };
        self.forget_sessions(space);
        sp.cutters.finish(&mut self.out);
        let record = matches!(&sp.source, Source::Mixed(m) if m.record);
        self.out.push_back(Output::Event(Event::Closed {
            space,
            ended: true,
            record,
            last_seq: sp.cutters.last_seq(),
        }));
    }

    /// The space goes on elsewhere (another node took it over, or nobody
    /// listens to this edge any more): nothing is finished; its outputs
    /// close as they are.
    pub fn abandon_space(&mut self, space: SpaceId) {
        let Some(sp) = self.spaces.remove(&space) else {
            return;
        };
        self.forget_sessions(space);
        self.out.push_back(Output::Event(Event::Closed {
            space,
            ended: false,
            record: false,
            last_seq: sp.cutters.last_seq(),
        }));
    }

    fn forget_sessions(&mut self, space: SpaceId) {
        self.sessions.retain(|_, (s, _)| *s != space);
    }

    /// A speaker's ingest session opened. The speaker starts inaudible
    /// until [`Program::set_audible`] says otherwise. A speaker holds at
    /// most `max_sessions_per_speaker` sessions: a newer one (a reconnect,
    /// a second tab) replaces the oldest.
    pub fn add_session(
        &mut self,
        space: SpaceId,
        pid: ParticipantId,
        session: Session,
        wants_return: bool,
    ) -> Result<(), ProgramError> {
        let Some(SpaceProgram {
            source: Source::Mixed(mix),
            ..
        }) = self.spaces.get_mut(&space)
        else {
            self.out.push_back(Output::CloseSession(session));
            return Ok(());
        };
        let sp = mix.speakers.entry(pid).or_insert_with(Speaker::default);
        while sp.sessions.len() >= self.cfg.max_sessions_per_speaker.max(1) {
            let (old, _) = sp.sessions.remove(0);
            self.sessions.remove(&old);
            self.out.push_back(Output::CloseSession(old));
            self.stats.sessions_replaced += 1;
        }
        sp.sessions.push((session, wants_return));
        let wants = sp.sessions.iter().any(|(_, w)| *w);
        self.sessions.insert(session, (space, pid));
        if let Err(e) = mix.mixer.add_speaker(pid, wants) {
            // No mixer place: the speaker cannot be heard; close what was
            // opened rather than keep a session nobody hears.
            sp.sessions.retain(|(s, _)| *s != session);
            if sp.sessions.is_empty() {
                mix.speakers.remove(&pid);
            }
            self.sessions.remove(&session);
            self.out.push_back(Output::CloseSession(session));
            return Err(e.into());
        }
        Ok(())
    }

    /// A session closed (the peer left, or it was replaced): a speaker with
    /// no session left leaves the mix.
    pub fn session_closed(&mut self, session: Session) {
        let Some((space, pid)) = self.sessions.remove(&session) else {
            return;
        };
        if let Some(SpaceProgram {
            source: Source::Mixed(mix),
            ..
        }) = self.spaces.get_mut(&space)
            && let Some(sp) = mix.speakers.get_mut(&pid)
        {
            sp.sessions.retain(|(s, _)| *s != session);
            if sp.sessions.is_empty() {
                mix.speakers.remove(&pid);
                mix.mixer.remove_speaker(pid);
            }
        }
    }

    /// Whether `pid` may be heard in `space` (the room decides; the shell
    /// passes its gate on before each tick). Closing drops what was
    /// buffered, so nothing said before a mute plays after it.
    pub fn set_audible(&mut self, space: SpaceId, pid: ParticipantId, audible: bool) {
        if let Some(SpaceProgram {
            source: Source::Mixed(mix),
            ..
        }) = self.spaces.get_mut(&space)
            && let Some(sp) = mix.speakers.get_mut(&pid)
        {
            sp.audible = audible;
            mix.mixer.set_audible(pid, audible);
        }
    }

    /// Music mode for a space mixed here: a stereo program at the music
    /// bitrate (see [`amphi_media::Mixer::set_music`]).
    pub fn set_music(&mut self, space: SpaceId, on: bool) {
        if let Some(SpaceProgram {
            source: Source::Mixed(mix),
            ..
        }) = self.spaces.get_mut(&space)
        {
            mix.mixer.set_music(on);
        }
    }

    /// Whether `pid`'s audio in `space` goes through noise suppression
    /// (the room decides; the shell passes it on with the gates). A
    /// suppressed speaker is decoded, filtered and mixed, never passed
    /// through.
    pub fn set_noise_suppression(&mut self, space: SpaceId, pid: ParticipantId, on: bool) {
        if let Some(SpaceProgram {
            source: Source::Mixed(mix),
            ..
        }) = self.spaces.get_mut(&space)
            && mix.speakers.contains_key(&pid)
        {
            mix.mixer.set_noise_suppression(pid, on);
        }
    }

    /// A packet from a speaker's ingest.
    pub fn handle_packet(&mut self, packet: Packet) {
        match self.spaces.get_mut(&packet.space) {
            Some(SpaceProgram {
                source: Source::Mixed(mix),
                ..
            }) if mix.speakers.contains_key(&packet.participant) => {
                self.stats.packets += 1;
                mix.mixer.push_packet(
                    packet.participant,
                    packet.rtp_seq,
                    packet.rtp_ts,
                    packet.payload,
                );
            }
            _ => self.stats.packets_unrouted += 1,
        }
    }

    /// A frame of a space mixed on another node (the cluster bus, or the
    /// history fetched when this edge started), cut here at once. Frames
    /// not newer than the last one cut are dropped, so the history and the
    /// live feed may overlap.
    pub fn remote_frame(&mut self, space: SpaceId, frame: Frame) {
        let Some(SpaceProgram {
            source: Source::Edge,
            cutters,
        }) = self.spaces.get_mut(&space)
        else {
            self.stats.remote_dropped += 1;
            return;
        };
        if cutters.last_seq().is_some_and(|l| frame.seq <= l) {
            self.stats.remote_dropped += 1;
            return;
        }
        self.stats.remote_frames += 1;
        if !frame.speakers.is_empty() {
            self.out.push_back(Output::Event(Event::Talking {
                space,
                levels: frame.speakers.clone(),
            }));
        }
        cutters.cut(&frame, &mut self.out);
    }

    /// Time passed: runs every tick that is due. `wall_us` is the wall
    /// clock (µs since the UNIX epoch) at `now`, for the frames' capture
    /// stamps.
    pub fn handle_timeout(&mut self, now: Instant, wall_us: u64) {
        while now >= self.next_tick {
            if now.duration_since(self.next_tick) > LATE {
                self.stats.late_ticks += 1;
            }
            self.tick(wall_us);
            self.next_tick += TICK;
            if now.saturating_duration_since(self.next_tick) > RESYNC {
                self.stats.resyncs += 1;
                self.next_tick = now + TICK;
            }
        }
    }

    /// The next thing to do; [`Output::Timeout`] when there is nothing
    /// until then.
    pub fn poll_output(&mut self) -> Output {
        self.out
            .pop_front()
            .unwrap_or(Output::Timeout(self.next_tick))
    }

    fn tick(&mut self, wall_us: u64) {
        self.stats.ticks += 1;
        let Program {
            spaces, out, stats, ..
        } = self;
        for (&space, sp) in spaces.iter_mut() {
            let Source::Mixed(mix) = &mut sp.source else {
                continue;
            };
            let depth = mix.mixer.buffered_us().unwrap_or(IDLE_JITTER_DEPTH_US);
            let before = mix.mixer.stats();
            let tick = mix.mixer.tick(wall_us.saturating_sub(depth));
            let after = mix.mixer.stats();
            stats.frames += 1;
            match tick.mode {
                Mode::Mix => stats.mixed_frames += 1,
                Mode::Pass => stats.passed_frames += 1,
                Mode::Silence => stats.silent_frames += 1,
            }
            stats.switches += after.switches - before.switches;
            stats.decodes += after.decodes - before.decodes;
            stats.encodes += after.encodes - before.encodes;
            stats.mix_minus_dtx_skipped += after.dtx_skipped - before.dtx_skipped;
            let frame = tick.frame;
            if !frame.speakers.is_empty() {
                out.push_back(Output::Event(Event::Talking {
                    space,
                    levels: frame.speakers.clone(),
                }));
            }
            out.push_back(Output::Frame {
                space,
                frame: frame.clone(),
                record: mix.record,
            });
            sp.cutters.cut(&frame, out);
            for (pid, opus) in tick.mix_minus {
                if let Some(speaker) = mix.speakers.get(&pid) {
                    for (session, wants) in &speaker.sessions {
                        if *wants {
                            out.push_back(Output::MixMinus {
                                session: *session,
                                opus: opus.clone(),
                                seq: frame.seq,
                            });
                        }
                    }
                }
            }
        }
    }
}
