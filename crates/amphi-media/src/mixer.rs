//! The mixer of one space: every 20 ms, one frame of each audible speaker,
//! summed with a limiter, encoded once into the program; and for speakers
//! who want it, a mix-minus (everyone but themselves) to hear the others.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use amphi_core::{Frame, ParticipantId, SpeakerLevel};
use bytes::Bytes;

use crate::MediaError;
use crate::jitter::{Jitter, Pop};
use crate::opus::{Decoder, Encoder, FRAME, MAX_PACKET_SAMPLES};

/// Settings of a mixer.
#[derive(Debug, Clone)]
pub struct MixerConfig {
    /// Program bitrate, bit/s.
    pub bitrate: i32,
    /// Mix-minus bitrate, bit/s.
    pub return_bitrate: i32,
    /// Jitter buffer depth in packets (20 ms each).
    pub jitter_depth: usize,
}

impl Default for MixerConfig {
    fn default() -> Self {
        MixerConfig {
            bitrate: 32_000,
            return_bitrate: 32_000,
            jitter_depth: 2,
        }
    }
}

/// Counters of a mixer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MixerStats {
    pub frames: u64,
    pub packets: u64,
    pub concealed: u64,
    pub decode_errors: u64,
    pub dropped_inaudible: u64,
    pub limited_frames: u64,
}

/// What one tick produced.
#[derive(Debug)]
pub struct Tick {
    /// The program frame.
    pub frame: Frame,
    /// Mix-minus packets for the speakers who asked for return audio.
    pub mix_minus: Vec<(ParticipantId, Bytes)>,
}

struct Speaker {
    jitter: Jitter,
    decoder: Decoder,
    pcm: VecDeque<f32>,
    audible: bool,
    ret: Option<Encoder>,
    frame: [f32; FRAME],
}

/// The mixer of one space.
pub struct Mixer {
    cfg: MixerConfig,
    encoder: Encoder,
    speakers: BTreeMap<ParticipantId, Speaker>,
    seq: u64,
    gain: f32,
    mix: [f32; FRAME],
    decoded: Box<[f32; MAX_PACKET_SAMPLES]>,
    stats: MixerStats,
}

impl std::fmt::Debug for Mixer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mixer")
            .field("speakers", &self.speakers.len())
            .field("seq", &self.seq)
            .finish()
    }
}

/// The limiter keeps the sum below this.
const CEILING: f32 = 0.95;
/// Per-sample gain recovery after limiting (~0.25 s from half gain).
const RELEASE: f32 = 0.00005;

fn level(samples: &[f32]) -> u8 {
    let rms = (samples.iter().map(|x| x * x).sum::<f32>() / samples.len() as f32).sqrt();
    if rms <= 1e-5 {
        return 0;
    }
    // -60 dBFS .. 0 dBFS onto 0..127.
    let db = 20.0 * rms.log10();
    (((db + 60.0) / 60.0).clamp(0.0, 1.0) * 127.0) as u8
}

impl Mixer {
    /// A mixer with no speakers; it already produces (silent) frames.
    pub fn new(cfg: MixerConfig) -> Result<Self, MediaError> {
        Ok(Mixer {
            encoder: Encoder::new(cfg.bitrate)?,
            cfg,
            speakers: BTreeMap::new(),
            seq: 0,
            gain: 1.0,
            mix: [0.0; FRAME],
            decoded: Box::new([0.0; MAX_PACKET_SAMPLES]),
            stats: MixerStats::default(),
        })
    }

    /// Continues a program from `seq` (after a restart).
    pub fn set_next_seq(&mut self, seq: u64) {
        self.seq = seq;
    }

    /// Counters so far.
    pub fn stats(&self) -> MixerStats {
        self.stats
    }

    /// Per-speaker jitter-buffer counters (received, late, duplicate,
    /// missing/concealed).
    pub fn speaker_stats(&self) -> Vec<(ParticipantId, crate::jitter::JitterStats)> {
        self.speakers
            .iter()
            .map(|(pid, s)| (*pid, s.jitter.stats()))
            .collect()
    }

    /// Adds (or updates) a speaker. Starts inaudible until told otherwise.
    pub fn add_speaker(
        &mut self,
        pid: ParticipantId,
        wants_return: bool,
    ) -> Result<(), MediaError> {
        if let Some(s) = self.speakers.get_mut(&pid) {
            if wants_return && s.ret.is_none() {
                s.ret = Some(Encoder::new(self.cfg.return_bitrate)?);
            }
            return Ok(());
        }
        let ret = if wants_return {
            Some(Encoder::new(self.cfg.return_bitrate)?)
        } else {
            None
        };
        self.speakers.insert(
            pid,
            Speaker {
                jitter: Jitter::new(self.cfg.jitter_depth),
                decoder: Decoder::new()?,
                pcm: VecDeque::with_capacity(MAX_PACKET_SAMPLES * 2),
                audible: false,
                ret,
                frame: [0.0; FRAME],
            },
        );
        Ok(())
    }

    /// Removes a speaker and everything buffered for them.
    pub fn remove_speaker(&mut self, pid: ParticipantId) {
        self.speakers.remove(&pid);
    }

    /// Whether `pid` may be heard. Turning it off drops their buffered audio
    /// at once, so nothing said before a mute plays after it.
    pub fn set_audible(&mut self, pid: ParticipantId, audible: bool) {
        if let Some(s) = self.speakers.get_mut(&pid) {
            if !audible && s.audible {
                s.jitter.reset();
                s.pcm.clear();
            }
            s.audible = audible;
        }
    }

    /// A packet from `pid`'s ingest.
    pub fn push_packet(&mut self, pid: ParticipantId, rtp_seq: u16, _rtp_ts: u32, payload: Bytes) {
        match self.speakers.get_mut(&pid) {
            Some(s) if s.audible => {
                self.stats.packets += 1;
                s.jitter.push(rtp_seq, payload);
            }
            _ => self.stats.dropped_inaudible += 1,
        }
    }

    /// Produces the next program frame, stamped `captured_at_us`.
    pub fn tick(&mut self, captured_at_us: u64) -> Tick {
        self.mix = [0.0; FRAME];
        let mut levels = Vec::new();
        for (pid, s) in self.speakers.iter_mut() {
            s.frame = [0.0; FRAME];
            if !s.audible {
                continue;
            }
            while s.pcm.len() < FRAME {
                let n = match s.jitter.pop() {
                    Pop::Packet(p) => match s.decoder.decode(&p, &mut self.decoded) {
                        Ok(n) => n,
                        Err(_) => {
                            self.stats.decode_errors += 1;
                            s.decoder.conceal(&mut self.decoded)
                        }
                    },
                    Pop::Missing => {
                        self.stats.concealed += 1;
                        s.decoder.conceal(&mut self.decoded)
                    }
                    Pop::Idle => break,
                };
                if n == 0 {
                    break;
                }
                s.pcm.extend(&self.decoded[..n]);
            }
            let take = s.pcm.len().min(FRAME);
            for (dst, src) in s.frame.iter_mut().zip(s.pcm.drain(..take)) {
                *dst = src;
            }
            // A sender far ahead (long packets, clock drift) must not build
            // latency: keep at most two frames of decoded audio.
            while s.pcm.len() > 2 * FRAME {
                s.pcm.pop_front();
            }
            let l = level(&s.frame);
            if l > 0 {
                levels.push(SpeakerLevel {
                    participant: *pid,
                    level: l,
                });
            }
            for (m, x) in self.mix.iter_mut().zip(s.frame.iter()) {
                *m += x;
            }
        }

        let mut program = self.mix;
        if self.limit(&mut program) {
            self.stats.limited_frames += 1;
        }
        let opus = match self.encoder.encode(&program) {
            Ok(p) => p,
            // The encoder cannot fail on a valid 20 ms float frame; if it
            // ever does, a packet of digital silence keeps the stream going.
            Err(_) => Bytes::from_static(&[0xf8, 0xff, 0xfe]),
        };
        let frame = Frame {
            seq: self.seq,
            captured_at_us,
            opus,
            program_level: level(&program),
            speakers: Arc::from(levels),
        };
        self.seq += 1;
        self.stats.frames += 1;

        let mut mix_minus = Vec::new();
        for (pid, s) in self.speakers.iter_mut() {
            let Some(enc) = s.ret.as_mut() else { continue };
            let mut mm = [0f32; FRAME];
            for ((o, m), own) in mm.iter_mut().zip(self.mix.iter()).zip(s.frame.iter()) {
                *o = (m - own).clamp(-CEILING, CEILING);
            }
            if let Ok(p) = enc.encode(&mm) {
                mix_minus.push((*pid, p));
            }
        }
        Tick { frame, mix_minus }
    }

    /// A peak limiter: instant attack, slow release. Returns whether it
    /// had to reduce the gain.
    fn limit(&mut self, pcm: &mut [f32; FRAME]) -> bool {
        let mut limited = false;
        for x in pcm.iter_mut() {
            let y = *x * self.gain;
            if y.abs() > CEILING {
                self.gain = CEILING / x.abs();
                limited = true;
            }
            *x = (*x * self.gain).clamp(-CEILING, CEILING);
            self.gain = (self.gain + RELEASE).min(1.0);
        }
        limited
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::{peak, tone_ratio};
    use crate::opus::Decoder;

    fn sine(freq: f32, amp: f32, k: usize) -> [f32; FRAME] {
        let mut f = [0f32; FRAME];
        for (i, s) in f.iter_mut().enumerate() {
            *s =
                amp * (2.0 * std::f32::consts::PI * freq * (k * FRAME + i) as f32 / 48_000.0).sin();
        }
        f
    }

    struct Sender {
        enc: Encoder,
        freq: f32,
        amp: f32,
    }

    impl Sender {
        fn new(freq: f32, amp: f32) -> Self {
            Sender {
                enc: Encoder::new(64_000).unwrap(),
                freq,
                amp,
            }
        }
        fn packet(&mut self, k: usize) -> Bytes {
            self.enc.encode(&sine(self.freq, self.amp, k)).unwrap()
        }
    }

    fn decode_all(packets: &[Bytes]) -> Vec<f32> {
        let mut d = Decoder::new().unwrap();
        let mut buf = [0f32; MAX_PACKET_SAMPLES];
        let mut out = Vec::new();
        for p in packets {
            let n = d.decode(p, &mut buf).unwrap();
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    #[test]
    fn two_speakers_mix_unclipped_mute_removes_one_and_mix_minus_excludes_self() {
        let (a, b) = (ParticipantId(1), ParticipantId(2));
        let mut m = Mixer::new(MixerConfig::default()).unwrap();
        m.add_speaker(a, true).unwrap();
        m.add_speaker(b, false).unwrap();
        m.set_audible(a, true);
        m.set_audible(b, true);
        let (mut sa, mut sb) = (Sender::new(440.0, 0.9), Sender::new(1000.0, 0.9));
        let mut program = Vec::new();
        let mut returned = Vec::new();
        for k in 0..100 {
            m.push_packet(a, k as u16, 0, sa.packet(k));
            m.push_packet(b, k as u16, 0, sb.packet(k));
            let t = m.tick(k as u64);
            assert_eq!(t.frame.seq, k as u64);
            program.push(t.frame.opus);
            for (pid, p) in t.mix_minus {
                assert_eq!(pid, a);
                returned.push(p);
            }
        }
        let pcm = decode_all(&program);
        let tail = &pcm[pcm.len() / 2..];
        assert!(tone_ratio(tail, 440.0, 48_000) > 0.3, "440 missing");
        assert!(tone_ratio(tail, 1000.0, 48_000) > 0.3, "1000 missing");
        assert!(peak(tail) < 1.0, "the program clipped: {}", peak(tail));
        let ret = decode_all(&returned);
        let rtail = &ret[ret.len() / 2..];
        assert!(tone_ratio(rtail, 1000.0, 48_000) > 0.8, "A must hear B");
        assert!(
            tone_ratio(rtail, 440.0, 48_000) < 0.02,
            "A must not hear itself"
        );

        // Mute B: from the next tick on, B is gone from the program.
        m.set_audible(b, false);
        let mut after = Vec::new();
        for k in 100..200 {
            m.push_packet(a, k as u16, 0, sa.packet(k));
            m.push_packet(b, k as u16, 0, sb.packet(k));
            after.push(m.tick(k as u64).frame.opus);
        }
        let pcm = decode_all(&after);
        let tail = &pcm[9600..];
        assert!(
            tone_ratio(tail, 1000.0, 48_000) < 0.01,
            "a muted speaker is heard"
        );
        assert!(tone_ratio(tail, 440.0, 48_000) > 0.8);
        assert!(m.stats().dropped_inaudible >= 100);
    }

    #[test]
    fn silence_is_still_a_continuous_stream() {
        let mut m = Mixer::new(MixerConfig::default()).unwrap();
        let seqs: Vec<u64> = (0..50).map(|k| m.tick(k).frame.seq).collect();
        assert_eq!(seqs, (0..50).collect::<Vec<_>>());
        let f = m.tick(99).frame;
        assert_eq!(f.program_level, 0);
        assert!(f.speakers.is_empty());
        assert!(!f.opus.is_empty());
    }

    #[test]
    fn lost_packets_are_concealed() {
        let a = ParticipantId(1);
        let mut m = Mixer::new(MixerConfig::default()).unwrap();
        m.add_speaker(a, false).unwrap();
        m.set_audible(a, true);
        let mut s = Sender::new(440.0, 0.5);
        for k in 0..50 {
            if k % 10 != 5 {
                m.push_packet(a, k as u16, 0, s.packet(k));
            }
            m.tick(0);
        }
        assert!(m.stats().concealed >= 3);
    }
}
