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
    /// A mono 48 kHz encoder at `bitrate` bit/s (16000..=128000).
    pub fn new(bitrate: i32) -> Result<Self, MediaError> {
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
        let enc = Encoder {
            st,
            out: [0; MAX_PACKET_BYTES],
        };
        // SAFETY: `st` is a live encoder; the request takes one i32.
        let rc = unsafe {
            unsafe_ffi::opus_encoder_ctl!(st, unsafe_ffi::OPUS_SET_BITRATE_REQUEST, bitrate)
        };
        if rc != unsafe_ffi::OPUS_OK {
            return Err(MediaError::Opus(rc));
        }
        Ok(enc)
    }

    /// Encodes one 20 ms frame into one packet.
    pub fn encode(&mut self, pcm: &[f32; FRAME]) -> Result<Bytes, MediaError> {
        // SAFETY: `pcm` holds FRAME samples and `out` MAX_PACKET_BYTES bytes,
        // as the lengths passed say.
        let n = unsafe {
            unsafe_ffi::opus_encode_float(
                self.st,
                pcm.as_ptr(),
                FRAME as i32,
                self.out.as_mut_ptr(),
                MAX_PACKET_BYTES as i32,
            )
        };
        if n < 0 {
            return Err(MediaError::Opus(n));
        }
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
    /// A mono 48 kHz decoder.
    pub fn new() -> Result<Self, MediaError> {
        let mut err = 0i32;
        // SAFETY: valid arguments; the pointer is checked.
        let st = unsafe { unsafe_ffi::opus_decoder_create(48_000, 1, &mut err) };
        if st.is_null() || err != unsafe_ffi::OPUS_OK {
            return Err(MediaError::Opus(err));
        }
        Ok(Decoder { st })
    }

    /// Decodes one packet of any legal duration (up to 120 ms) into `out`,
    /// returning the number of samples written. Stereo packets are mixed
    /// down by libopus. A malformed packet is an error, never a panic.
    pub fn decode(
        &mut self,
        packet: &[u8],
        out: &mut [f32; MAX_PACKET_SAMPLES],
    ) -> Result<usize, MediaError> {
        if packet.is_empty() || packet.len() > MAX_PACKET_BYTES * 6 {
            return Err(MediaError::Opus(unsafe_ffi::OPUS_INVALID_PACKET));
        }
        // SAFETY: `packet` and `out` are valid for the lengths given.
        let n = unsafe {
            unsafe_ffi::opus_decode_float(
                self.st,
                packet.as_ptr(),
                packet.len() as i32,
                out.as_mut_ptr(),
                MAX_PACKET_SAMPLES as i32,
                0,
            )
        };
        if n < 0 {
            return Err(MediaError::Opus(n));
        }
        Ok(n as usize)
    }

    /// Packet-loss concealment: 20 ms of plausible audio for a lost packet.
    pub fn conceal(&mut self, out: &mut [f32; MAX_PACKET_SAMPLES]) -> usize {
        // SAFETY: a null packet asks libopus for PLC of FRAME samples into
        // `out`, which is larger.
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
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: created by opus_decoder_create and dropped once.
        unsafe { unsafe_ffi::opus_decoder_destroy(self.st) }
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
        let mut buf = [0f32; MAX_PACKET_SAMPLES];
        for k in 0..100 {
            let pkt = enc.encode(&sine(440.0, 0.5, k * FRAME)).unwrap();
            assert_eq!(packet_samples(&pkt), Some(960));
            let n = dec.decode(&pkt, &mut buf).unwrap();
            out.extend_from_slice(&buf[..n]);
        }
        let tail = &out[9600..];
        assert!(tone_ratio(tail, 440.0, 48_000) > 0.8);
        assert!(tone_ratio(tail, 1000.0, 48_000) < 0.01);
        assert!(dec.conceal(&mut buf) == FRAME);
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
        }
    }
}
