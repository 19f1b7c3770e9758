#![no_main]
//! Opus payloads from speakers' RTP, as the mixer decodes them (packets of
//! any claimed duration, followed by concealment when one is refused).
//! Property: a packet the decoder accepts holds as many samples as
//! `packet_samples` predicted from its TOC byte.
use amphi_media::opus::{Decoder, MAX_PACKET_SAMPLES, packet_samples};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let predicted = packet_samples(data);
    // A decoder is a fresh heap block: creating one only fails when out of
    // memory, which is not an input this target explores.
    let Ok(mut d) = Decoder::new() else { return };
    let mut out = vec![0f32; MAX_PACKET_SAMPLES];
    match d.decode(data, &mut out) {
        Ok(n) => {
            assert!(n <= MAX_PACKET_SAMPLES);
            assert_eq!(predicted, Some(n as u32), "TOC and decoder disagree");
        }
        Err(_) => {
            assert!(d.conceal(&mut out) <= MAX_PACKET_SAMPLES);
        }
    }
});
