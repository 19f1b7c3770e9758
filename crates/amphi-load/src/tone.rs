//! The speakers' audio, encoded once by libopus (amphi-media's Opus): one
//! second of a pure tone (a whole number of cycles, so it loops without a
//! seam) and a frame of digital silence for the pauses; and the probe a
//! listener decodes the program with to tell which tones it carries.

use std::sync::Arc;

use amphi_media::opus::FRAME;
use amphi_media::{Decoder, Encoder};

/// Frames in the loop: one second.
pub const LOOP_FRAMES: usize = 50;
/// The speakers' bitrate (a browser's speech default).
const BITRATE: i32 = 32_000;
const AMPLITUDE: f32 = 0.3;
const RATE: u32 = 48_000;

/// One tone's packets.
#[derive(Debug, Clone)]
pub struct Tone {
    pub packets: Vec<Arc<[u8]>>,
    pub silence: Arc<[u8]>,
}

impl Tone {
    /// Encodes `freq` Hz (a whole number of Hz, so one second loops).
    pub fn encode(freq: u32) -> anyhow::Result<Tone> {
        let mut enc = Encoder::new(BITRATE)?;
        let mut packets = Vec::with_capacity(LOOP_FRAMES);
        let mut pcm = [0f32; FRAME];
        // The second second: the encoder has settled, and its state at the
        // loop's end is what it was at its start.
        for n in 0..2 * LOOP_FRAMES {
            for (i, s) in pcm.iter_mut().enumerate() {
                let t = ((n % LOOP_FRAMES) * FRAME + i) as f32 / RATE as f32;
                *s = AMPLITUDE * (2.0 * std::f32::consts::PI * freq as f32 * t).sin();
            }
            let p = enc.encode(&pcm)?;
            if n >= LOOP_FRAMES {
                packets.push(Arc::from(&p[..]));
            }
        }
        let mut quiet = Encoder::new(BITRATE)?;
        let zero = [0f32; FRAME];
        let mut silence: Arc<[u8]> = Arc::from(&[][..]);
        for _ in 0..10 {
            silence = Arc::from(&quiet.encode(&zero)?[..]);
        }
        Ok(Tone { packets, silence })
    }

    /// The packet of frame `n` of a talk.
    pub fn packet(&self, n: u64) -> Arc<[u8]> {
        self.packets[(n % LOOP_FRAMES as u64) as usize].clone()
    }
}

/// The tone of the `n`th speaker of a run: 400, 500, … 1100 Hz.
pub fn freq_of(n: usize) -> u32 {
    400 + 100 * (n % 8) as u32
}

/// What a probe heard over the measured window.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Heard {
    /// Seconds with signal (100 ms blocks above -40 dBFS RMS).
    pub loud_secs: f64,
    /// Seconds whose energy is mostly (> 80 %) the space's tones.
    pub tone_secs: f64,
    /// Packets that did not decode.
    pub bad_packets: u64,
}

/// Decodes a listener's Opus packets and sorts 100 ms blocks by what they
/// carry. Allocates once.
pub struct Probe {
    freqs: Vec<u32>,
    decoder: Decoder,
    block: Vec<f32>,
    frame: Vec<f32>,
    pub heard: Heard,
}

const BLOCK: usize = RATE as usize / 10;

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe").field("freqs", &self.freqs).finish()
    }
}

impl Probe {
    /// A probe for the tones `freqs` (the space's speakers).
    pub fn new(freqs: Vec<u32>) -> anyhow::Result<Probe> {
        Ok(Probe {
            freqs,
            decoder: Decoder::new()?,
            block: Vec::with_capacity(BLOCK + amphi_media::opus::MAX_PACKET_SAMPLES),
            frame: vec![0f32; amphi_media::opus::MAX_PACKET_SAMPLES],
            heard: Heard::default(),
        })
    }

    /// One packet of the program; `measure`: in the measured window.
    pub fn packet(&mut self, packet: &[u8], measure: bool) {
        let n = match self.decoder.decode(packet, &mut self.frame) {
            Ok(n) => n,
            Err(_) => {
                self.heard.bad_packets += u64::from(measure);
                self.decoder.conceal(&mut self.frame)
            }
        };
        if !measure {
            return;
        }
        self.block
            .extend_from_slice(&self.frame[..n.min(self.frame.len())]);
        while self.block.len() >= BLOCK {
            self.judge_block();
            self.block.drain(..BLOCK);
        }
    }

    fn judge_block(&mut self) {
        let b = &self.block[..BLOCK];
        if amphi_media::analysis::rms(b) < 0.01 {
            return;
        }
        self.heard.loud_secs += 0.1;
        let share: f32 = self
            .freqs
            .iter()
            .map(|f| amphi_media::analysis::tone_ratio(b, *f as f32, RATE))
            .sum();
        if share > 0.8 {
            self.heard.tone_secs += 0.1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tone_loops_and_decodes_to_itself() {
        let tone = Tone::encode(700).unwrap();
        assert_eq!(tone.packets.len(), LOOP_FRAMES);
        let mut probe = Probe::new(vec![700]).unwrap();
        // Three seconds through the loop's seam twice, then one of silence.
        for n in 0..150 {
            probe.packet(&tone.packet(n), true);
        }
        for _ in 0..50 {
            probe.packet(&tone.silence, true);
        }
        let h = &probe.heard;
        assert!(h.tone_secs >= 2.8, "{h:?}");
        assert!(h.loud_secs <= 3.15, "silence heard as signal: {h:?}");
        assert_eq!(h.bad_packets, 0);
        // Another tone is not this one.
        let mut other = Probe::new(vec![1100]).unwrap();
        for n in 0..100 {
            other.packet(&tone.packet(n), true);
        }
        assert!(other.heard.tone_secs < 0.2, "{:?}", other.heard);
        assert!(other.heard.loud_secs >= 1.8);
    }

    #[test]
    fn garbage_is_counted_not_fatal() {
        let mut probe = Probe::new(vec![400]).unwrap();
        probe.packet(&[], true);
        probe.packet(&[0xff; 3], true);
        assert!(probe.heard.bad_packets >= 1);
    }
}
