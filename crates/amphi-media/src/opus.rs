//! Safe wrappers over libopus (transpiled to Rust by `unsafe-libopus`, so no
//! C toolchain is needed). Mono, 48 kHz, 20 ms frames.

use bytes::Bytes;
use unsafe_libopus as unsafe_ffi;

use crate::MediaError;

/// Samples in one 20 ms frame at 48 kHz.
pub const FRAME: usize = 960;
/// Most samples one Opus packet can carry (120 ms).
pub const MAX_PACKET_SAMPLES: usize = 5760;
const MAX_PACKET_BYTES: usize = 1275;

/// An Opus encoder for the program (or a speaker's mix-minus).
pub struct Encoder {
    st: *mut unsafe_ffi::OpusEncoder,
    lookahead: usize,
    encodes: u64,
    /// The TOC configuration the encoder is held to (see
    /// [`Encoder::hold_config`]).
    held: Option<u8>,
    out: [u8; MAX_PACKET_BYTES],
}

// SAFETY: the encoder state is a heap block owned exclusively by this value;
// libopus keeps no thread-local or shared state for it.
unsafe impl Send for Encoder {}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("opus::Encoder")
    }
}

impl Encoder {
    /// A mono 48 kHz encoder (application AUDIO: the program is speech,
    /// music and jingles alike) at `bitrate_bps` bit/s, 16000..=128000 as
    /// the spec allows.
    pub fn new(bitrate_bps: i32) -> Result<Self, MediaError> {
        let bitrate = bitrate_bps;
        if !(16_000..=128_000).contains(&bitrate) {
            return Err(MediaError::Bitrate(bitrate));
        }
        let mut err = 0i32;
        // SAFETY: valid arguments; the returned pointer is checked below.
        let st = unsafe {
            unsafe_ffi::opus_encoder_create(48_000, 1, unsafe_ffi::OPUS_APPLICATION_AUDIO, &mut err)
        };
        if st.is_null() || err != unsafe_ffi::OPUS_OK {
            return Err(MediaError::Opus(err));
        }
        let mut enc = Encoder {
            st,
            lookahead: 0,
            encodes: 0,
            held: None,
            out: [0; MAX_PACKET_BYTES],
        };
        // SAFETY: `st` is a live encoder; the request takes one i32.
        let rc = unsafe {
            unsafe_ffi::opus_encoder_ctl!(st, unsafe_ffi::OPUS_SET_BITRATE_REQUEST, bitrate)
        };
        if rc != unsafe_ffi::OPUS_OK {
            return Err(MediaError::Opus(rc));
        }
        let mut lookahead = 0i32;
        // SAFETY: `st` is a live encoder; the request takes one `&mut i32`.
        let rc = unsafe {
            unsafe_ffi::opus_encoder_ctl!(
                st,
                unsafe_ffi::OPUS_GET_LOOKAHEAD_REQUEST,
                &mut lookahead
            )
        };
        if rc != unsafe_ffi::OPUS_OK {
            return Err(MediaError::Opus(rc));
        }
        enc.lookahead = usize::try_from(lookahead).unwrap_or(0).min(FRAME);
        Ok(enc)
    }

    /// Samples the codec delays its input by (312 at 48 kHz: 2.5 ms of
    /// CELT overlap and 4 ms of lookahead): a packet decodes to the input
    /// this many samples before the end of the frame that made it.
    pub fn lookahead(&self) -> usize {
        self.lookahead
    }

    /// Packets encoded so far (tests count them: silence and pass-through
    /// encode nothing).
    pub fn encodes(&self) -> u64 {
        self.encodes
    }

    /// Holds the encoder to the mode (SILK, hybrid, CELT) and bandwidth of
    /// a TOC configuration (`toc >> 3`), so that its packets and a
    /// speaker's can follow each other in one stream without the decoder
    /// crossing modes; `None` lets it choose again. A no-op when already
    /// so (no control call per frame).
    pub fn hold_config(&mut self, config: Option<u8>) {
        if self.held == config {
            return;
        }
        self.held = config;
        const AUTO: i32 = -1000;
        let (mode, bandwidth) = match config {
            None => (AUTO, AUTO),
            Some(c @ 0..=11) => (1000, 1101 + i32::from(c / 4)),
            Some(c @ 12..=15) => (1001, 1104 + i32::from((c - 12) / 2)),
            Some(c) => (
                1002,
                [1101, 1103, 1104, 1105][usize::from((c.min(31) - 16) / 4)],
            ),
        };
        // SAFETY: `st` is a live encoder; both requests take one i32.
        unsafe {
            unsafe_ffi::opus_encoder_ctl!(self.st, 11002, mode);
            unsafe_ffi::opus_encoder_ctl!(
                self.st,
                unsafe_ffi::OPUS_SET_BANDWIDTH_REQUEST,
                bandwidth
            );
        }
    }

    /// Forgets everything encoded so far, as a new encoder would.
    pub fn reset(&mut self) {
        // SAFETY: `st` is a live encoder; OPUS_RESET_STATE takes no
        // argument.
        unsafe {
            unsafe_ffi::opus_encoder_ctl_impl(
                self.st,
                unsafe_ffi::OPUS_RESET_STATE,
                unsafe_ffi::varargs!(),
            );
        }
    }

    /// Encodes one 20 ms frame into one packet (one `Bytes`, the only
    /// allocation).
    pub fn encode(&mut self, pcm: &[f32; FRAME]) -> Result<Bytes, MediaError> {
        self.encode_samples(pcm)
    }

    /// Encodes `pcm` of any duration Opus allows (2.5 to 60 ms); tests use
    /// it to make the 10, 40 and 60 ms packets some speakers send.
    pub fn encode_samples(&mut self, pcm: &[f32]) -> Result<Bytes, MediaError> {
        if ![120, 240, 480, 960, 1920, 2880].contains(&pcm.len()) {
            return Err(MediaError::Opus(unsafe_ffi::OPUS_BAD_ARG));
        }
        // SAFETY: `pcm` holds `pcm.len()` samples and `out` MAX_PACKET_BYTES
        // bytes, as the lengths passed say.
        let n = unsafe {
            unsafe_ffi::opus_encode_float(
                self.st,
                pcm.as_ptr(),
                pcm.len() as i32,
                self.out.as_mut_ptr(),
                MAX_PACKET_BYTES as i32,
            )
        };
        if n < 0 {
            return Err(MediaError::Opus(n));
        }
        self.encodes += 1;
        Ok(Bytes::copy_from_slice(&self.out[..n as usize]))
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        // SAFETY: created by opus_encoder_create and dropped once.
        unsafe { unsafe_ffi::opus_encoder_destroy(self.st) }
    }
}

/// An Opus decoder for one speaker.
///
/// Speakers may send packets of any legal duration (2.5 to 120 ms), so
/// [`Decoder::decode`] writes into a caller's slice and refuses, with
/// [`MediaError::OutputTooSmall`], a packet longer than that slice: a
/// 40 ms packet into a 960-sample frame is an error, never a truncation or
/// a panic. The mixer decodes into a [`MAX_PACKET_SAMPLES`] buffer and so
/// accepts every duration.
pub struct Decoder {
    st: *mut unsafe_ffi::OpusDecoder,
}

// SAFETY: as for Encoder: exclusively owned heap state.
unsafe impl Send for Decoder {}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("opus::Decoder")
    }
}

impl Decoder {
    /// A mono 48 kHz decoder (stereo packets are mixed down).
    pub fn new() -> Result<Self, MediaError> {
        let mut err = 0i32;
        // SAFETY: valid arguments; the pointer is checked.
        let st = unsafe { unsafe_ffi::opus_decoder_create(48_000, 1, &mut err) };
        if st.is_null() || err != unsafe_ffi::OPUS_OK {
            return Err(MediaError::Opus(err));
        }
        Ok(Decoder { st })
    }

    /// Decodes one packet into `out`, returning the number of samples
    /// written. A malformed packet, or one longer than `out`, is an error;
    /// the decoder stays usable either way.
    pub fn decode(&mut self, packet: &[u8], out: &mut [f32]) -> Result<usize, MediaError> {
        if packet.is_empty() || packet.len() > MAX_PACKET_BYTES * 6 {
            return Err(MediaError::Opus(unsafe_ffi::OPUS_INVALID_PACKET));
        }
        let samples =
            packet_samples(packet).ok_or(MediaError::Opus(unsafe_ffi::OPUS_INVALID_PACKET))?;
        let room = out.len().min(MAX_PACKET_SAMPLES);
        if samples as usize > room {
            return Err(MediaError::OutputTooSmall {
                needed: samples as usize,
                room: out.len(),
            });
        }
        // SAFETY: `packet` holds `packet.len()` bytes and `out` at least
        // `room` samples, as the lengths passed say; libopus writes at most
        // `room` samples.
        let n = unsafe {
            unsafe_ffi::opus_decode_float(
                self.st,
                packet.as_ptr(),
                packet.len() as i32,
                out.as_mut_ptr(),
                room as i32,
                0,
            )
        };
        if n < 0 {
            return Err(MediaError::Opus(n));
        }
        Ok(n as usize)
    }

    /// Packet-loss concealment: writes 20 ms of plausible audio for a lost
    /// packet (continuing the last decoded signal, fading out) and returns
    /// the number of samples, [`FRAME`]; 0 if `out` is shorter than that.
    pub fn conceal(&mut self, out: &mut [f32]) -> usize {
        if out.len() < FRAME {
            return 0;
        }
        // SAFETY: a null packet asks libopus for PLC of FRAME samples into
        // `out`, which holds at least FRAME.
        let n = unsafe {
            unsafe_ffi::opus_decode_float(
                self.st,
                std::ptr::null(),
                0,
                out.as_mut_ptr(),
                FRAME as i32,
                0,
            )
        };
        n.max(0) as usize
    }

    /// Forgets the signal decoded so far, so that a speaker unmuted later
    /// does not start with concealment or ringing from before the mute.
    pub fn reset(&mut self) {
        // SAFETY: `st` is a live decoder; OPUS_RESET_STATE takes no
        // argument (the crate's varargs panic only on a missing or mistyped
        // one).
        unsafe {
            unsafe_ffi::opus_decoder_ctl_impl(
                self.st,
                unsafe_ffi::OPUS_RESET_STATE,
                unsafe_ffi::varargs!(),
            );
        }
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: created by opus_decoder_create and dropped once.
        unsafe { unsafe_ffi::opus_decoder_destroy(self.st) }
    }
}

/// Whether `packet` can stand, as it is, for one frame of a mono 20 ms
/// program: one 20 ms frame (TOC code 0), mono, at most `max_bytes`
/// long. Any Opus mode (SILK, hybrid, CELT) and bandwidth will do: every
/// decoder follows them. 10, 40 and 60 ms packets, stereo packets and
/// packets far above the program's bitrate are mixed instead.
pub fn passable(packet: &[u8], max_bytes: usize) -> bool {
    let Some(&toc) = packet.first() else {
        return false;
    };
    packet.len() <= max_bytes
        && toc & 0x4 == 0
        && toc & 0x3 == 0
        && packet_samples(packet) == Some(FRAME as u32)
}

/// Whether `packet` carries no sound worth decoding to find out: a DTX
/// packet (the TOC byte alone, or with one byte more).
pub fn is_dtx(packet: &[u8]) -> bool {
    packet.len() <= 2
}

/// Whether `packet` is known to carry no voice without decoding it: a DTX
/// packet ([`is_dtx`]); a mono SILK or hybrid packet whose every SILK frame
/// has its voice-activity flag clear (the encoder's own VAD: the first
/// symbols of the range-coded frame, RFC 6716 §4.2.3); a CELT packet with
/// its silence flag set (§4.3, the first symbol). Only the first Opus frame
/// of a packet is read (TOC codes 1–3 carry frames of the same mode, and
/// a speaker only listened to for voice is judged again on the next packet).
/// `false` when it cannot tell: the packet is decoded.
pub fn voice_inactive(packet: &[u8]) -> bool {
    if is_dtx(packet) {
        return true;
    }
    let toc = packet[0];
    let config = toc >> 3;
    let body = match toc & 0x3 {
        // One frame, or two of equal size: the first starts at byte 1.
        0 | 1 => &packet[1..],
        // Two frames, the first's length coded in one or two bytes.
        2 => match packet.get(1) {
            Some(&l) if l < 252 => &packet[2..],
            Some(_) if packet.len() > 2 => &packet[3..],
            _ => return false,
        },
        // Code 3 (frame count, padding, lengths): not worth parsing here.
        _ => return false,
    };
    if body.len() < 2 {
        return false;
    }
    let mut ec = RangeDecoder::new(body);
    if config >= 16 {
        // CELT only: the silence flag, probability 1/2^15.
        return ec.bit_logp(15);
    }
    if toc & 0x4 != 0 {
        // Stereo: the side channel's flags come later; decode.
        return false;
    }
    // SILK frames (each 20 ms at most, 10 ms frames alone) in this Opus
    // frame: one VAD flag each, probability 1/2.
    let silk_frames = match config {
        0..=11 => [1, 1, 2, 3][usize::from(config % 4)],
        _ => 1,
    };
    (0..silk_frames).all(|_| !ec.bit_logp(1))
}

/// The start of the Opus range decoder (RFC 6716 §4.1): enough to read the
/// first few binary symbols of a frame.
struct RangeDecoder<'a> {
    buf: &'a [u8],
    pos: usize,
    rem: u32,
    rng: u32,
    val: u32,
}

impl<'a> RangeDecoder<'a> {
    fn new(buf: &'a [u8]) -> Self {
        let mut d = RangeDecoder {
            buf,
            pos: 0,
            rem: 0,
            rng: 128,
            val: 0,
        };
        d.rem = d.byte();
        d.val = 127 - (d.rem >> 1);
        d.normalize();
        d
    }

    fn byte(&mut self) -> u32 {
        let b = self.buf.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        u32::from(b)
    }

    fn normalize(&mut self) {
        while self.rng <= 1 << 23 {
            self.rng <<= 8;
            let prev = self.rem;
            self.rem = self.byte();
            let sym = ((prev << 8) | self.rem) >> 1;
            self.val = ((self.val << 8) + (255 & !sym)) & 0x7fff_ffff;
        }
    }

    /// One binary symbol whose probability of being 1 is 1/2^`logp`.
    fn bit_logp(&mut self, logp: u32) -> bool {
        let s = self.rng >> logp;
        let one = self.val < s;
        if one {
            self.rng = s;
        } else {
            self.val -= s;
            self.rng -= s;
        }
        self.normalize();
        one
    }
}

/// Samples (at 48 kHz) in an Opus packet, from its TOC byte and frame count
/// code (RFC 6716 §3.1). `None` for an empty or malformed packet.
pub fn packet_samples(packet: &[u8]) -> Option<u32> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    let per_frame: u32 = match config {
        0..=11 => [480, 960, 1920, 2880][usize::from(config % 4)],
        12..=15 => [480, 960][usize::from(config % 2)],
        _ => [120, 240, 480, 960][usize::from(config % 4)],
    };
    let frames: u32 = match toc & 0x3 {
        0 => 1,
        1 | 2 => 2,
        _ => u32::from(*packet.get(1)? & 0x3f),
    };
    let total = per_frame * frames;
    (frames > 0 && total <= MAX_PACKET_SAMPLES as u32).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::tone_ratio;
    use proptest::prelude::*;

    pub(crate) fn sine(freq: f32, amp: f32, start: usize) -> [f32; FRAME] {
        let mut f = [0f32; FRAME];
        for (i, s) in f.iter_mut().enumerate() {
            *s = amp * (2.0 * std::f32::consts::PI * freq * (start + i) as f32 / 48_000.0).sin();
        }
        f
    }

    #[test]
    fn a_tone_survives_encode_and_decode() {
        let mut enc = Encoder::new(32_000).unwrap();
        let mut dec = Decoder::new().unwrap();
        let mut out = Vec::new();
        let mut buf = [0f32; FRAME];
        for k in 0..100 {
            let pkt = enc.encode(&sine(440.0, 0.5, k * FRAME)).unwrap();
            assert_eq!(packet_samples(&pkt), Some(960));
            let n = dec.decode(&pkt, &mut buf).unwrap();
            out.extend_from_slice(&buf[..n]);
        }
        let tail = &out[9600..];
        let r = tone_ratio(tail, 440.0, 48_000);
        assert!(r > 0.9, "440 Hz share {r}");
        for other in [330.0, 660.0, 880.0, 1000.0] {
            let r = tone_ratio(tail, other, 48_000);
            assert!(r < 0.01, "{other} Hz share {r}");
        }
        let candidates = [330.0, 440.0, 660.0, 880.0, 1000.0];
        assert_eq!(
            crate::analysis::dominant_frequency(tail, 48_000, &candidates),
            Some(440.0)
        );
        assert!((crate::analysis::rms(tail) - 0.5 / 2f32.sqrt()).abs() < 0.05);
    }

    #[test]
    fn packets_of_every_duration_decode_or_are_refused_never_truncated() {
        let mut enc = Encoder::new(32_000).unwrap();
        let tone: Vec<f32> = (0..2880)
            .map(|i| 0.5 * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 48_000.0).sin())
            .collect();
        for samples in [480usize, 960, 1920, 2880] {
            let pkt = enc.encode_samples(&tone[..samples]).unwrap();
            assert_eq!(packet_samples(&pkt), Some(samples as u32));
            let mut dec = Decoder::new().unwrap();
            let mut frame = [0f32; FRAME];
            match dec.decode(&pkt, &mut frame) {
                Ok(n) => assert_eq!((n, samples <= FRAME), (samples, true)),
                Err(e) => assert_eq!(
                    (e, samples > FRAME),
                    (
                        MediaError::OutputTooSmall {
                            needed: samples,
                            room: FRAME
                        },
                        true
                    )
                ),
            }
            let mut big = [0f32; MAX_PACKET_SAMPLES];
            assert_eq!(dec.decode(&pkt, &mut big), Ok(samples));
        }
        assert!(enc.encode_samples(&tone[..1000]).is_err());
    }

    /// Packets of `frames` 20 ms frames of `signal(k)` from an encoder held
    /// to TOC configuration `config`.
    fn held_packets(
        config: u8,
        frames: usize,
        signal: impl Fn(usize) -> [f32; FRAME],
    ) -> Vec<Bytes> {
        let mut enc = Encoder::new(32_000).unwrap();
        enc.hold_config(Some(config));
        (0..frames)
            .map(|k| enc.encode(&signal(k)).unwrap())
            .collect()
    }

    #[test]
    fn silence_and_voice_are_told_apart_without_decoding() {
        // A tiny noise floor (a quiet room through a mic without DTX),
        // not digital zeros, so the encoder's VAD and not its silence
        // shortcut decides.
        let mut seed = 1u32;
        let mut hiss = move |_k: usize| {
            let mut f = [0f32; FRAME];
            for s in f.iter_mut() {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *s = ((seed >> 8) as f32 / (1 << 24) as f32 - 0.5) * 2e-4;
            }
            f
        };
        // SILK WB, hybrid FB (20 ms) and CELT FB (20 ms).
        for config in [9u8, 15, 31] {
            let voice = held_packets(config, 50, |k| sine(440.0, 0.3, k * FRAME));
            assert!(voice.iter().all(|p| (p[0] >> 3) == config));
            // SILK's VAD learns a steady tone as the noise floor after
            // about a second (speech never holds still that long): its
            // onset is what counts (the mixer still decodes one packet in
            // ten of those it skips).
            let active = voice[..30].iter().filter(|p| !voice_inactive(p)).count();
            assert_eq!(active, 30, "config {config}: a voice's onset is decoded");
            let zeros = held_packets(config, 50, |_| [0f32; FRAME]);
            let quiet = zeros[10..].iter().filter(|p| voice_inactive(p)).count();
            assert_eq!(quiet, 40, "config {config}: digital silence is known");
            if config < 16 {
                // CELT has no VAD flag: its noise floor is decoded.
                let noise: Vec<Bytes> = {
                    let mut enc = Encoder::new(32_000).unwrap();
                    enc.hold_config(Some(config));
                    (0..50).map(|k| enc.encode(&hiss(k)).unwrap()).collect()
                };
                let quiet = noise[10..].iter().filter(|p| voice_inactive(p)).count();
                assert!(
                    quiet >= 36,
                    "config {config}: {quiet}/40 of the hiss is known inactive"
                );
                // And what is called inactive decodes to no voice.
                let mut dec = Decoder::new().unwrap();
                let mut buf = [0f32; MAX_PACKET_SAMPLES];
                for p in &noise {
                    let n = dec.decode(p, &mut buf).unwrap();
                    if voice_inactive(p) {
                        assert!(crate::analysis::peak(&buf[..n]) < 0.01);
                    }
                }
            }
        }
        // Stereo, code 3 and too short packets are decoded to find out.
        assert!(voice_inactive(&[0xf8]) && voice_inactive(&[0x48, 0x00]));
        assert!(!voice_inactive(&[0x4c, 0x00, 0x00]));
        assert!(!voice_inactive(&[0x4b, 0x01, 0x00, 0x00]));
    }

    #[test]
    fn toc_durations_follow_rfc_6716() {
        // config 1 (SILK NB 20 ms), one frame.
        assert_eq!(packet_samples(&[1 << 3]), Some(960));
        // config 3 (SILK NB 60 ms), two frames (code 1).
        assert_eq!(packet_samples(&[(3 << 3) | 1]), Some(5760));
        // config 12 (hybrid SWB 10 ms), code 2.
        assert_eq!(packet_samples(&[(12 << 3) | 2]), Some(960));
        // config 16 (CELT NB 2.5 ms), code 3 with 48 frames = 120 ms.
        assert_eq!(packet_samples(&[(16 << 3) | 3, 48]), Some(5760));
        // 49 frames of 2.5 ms is over 120 ms: invalid.
        assert_eq!(packet_samples(&[(16 << 3) | 3, 49]), None);
        // config 31 (CELT FB 20 ms), code 3 with no frame count byte.
        assert_eq!(packet_samples(&[(31 << 3) | 3]), None);
        assert_eq!(packet_samples(&[(31 << 3) | 3, 0]), None);
    }

    #[test]
    fn only_mono_single_20ms_packets_within_the_size_pass() {
        let mut enc = Encoder::new(32_000).unwrap();
        let p = enc.encode(&sine(440.0, 0.5, 0)).unwrap();
        assert!(passable(&p, 240));
        assert!(!passable(&p, p.len() - 1), "too large");
        let mut stereo = p.to_vec();
        stereo[0] |= 0x4;
        assert!(!passable(&stereo, 240), "stereo");
        let tone: Vec<f32> = (0..2880).map(|i| (i as f32 * 0.05).sin() * 0.5).collect();
        for samples in [480usize, 1920, 2880] {
            let p = enc.encode_samples(&tone[..samples]).unwrap();
            assert!(!passable(&p, 1275), "{samples} samples");
        }
        // Two 10 ms frames in one packet (code 1) make 20 ms but not one
        // frame: mixed.
        assert!(!passable(&[(18 << 3) | 1, 0, 0], 240));
        assert!(!passable(&[], 240));
        assert!(is_dtx(&[0xf8]) && !is_dtx(&p));
    }

    #[test]
    fn a_reset_decoder_forgets_the_previous_signal() {
        let mut enc = Encoder::new(32_000).unwrap();
        let mut dec = Decoder::new().unwrap();
        let mut buf = [0f32; FRAME];
        for k in 0..10 {
            let n = dec.decode(&enc.encode(&sine(440.0, 0.8, k * FRAME)).unwrap(), &mut buf);
            assert_eq!(n, Ok(FRAME));
        }
        assert_eq!(dec.conceal(&mut buf), FRAME);
        assert!(crate::analysis::peak(&buf) > 0.05, "PLC continues the tone");
        dec.reset();
        assert_eq!(dec.conceal(&mut buf), FRAME);
        assert!(
            crate::analysis::peak(&buf) < 1e-3,
            "nothing left after reset"
        );
        assert_eq!(dec.conceal(&mut buf[..100]), 0);
    }

    #[test]
    fn bad_bitrates_and_packets_are_errors() {
        assert!(Encoder::new(8_000).is_err());
        assert!(Encoder::new(200_000).is_err());
        let mut dec = Decoder::new().unwrap();
        let mut buf = [0f32; MAX_PACKET_SAMPLES];
        assert!(dec.decode(&[], &mut buf).is_err());
        assert_eq!(packet_samples(&[]), None);
        assert_eq!(packet_samples(&[0x03]), None);
    }

    proptest! {
        #[test]
        fn decoding_garbage_never_panics(p in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut dec = Decoder::new().unwrap();
            let mut buf = [0f32; MAX_PACKET_SAMPLES];
            let _ = dec.decode(&p, &mut buf);
            let _ = packet_samples(&p);
            let _ = voice_inactive(&p);
        }
    }
}
