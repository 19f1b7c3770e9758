#![no_main]
//! Opus payloads from speakers' RTP, as the mixer decodes them.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = amphi_media::opus::packet_samples(data);
    let mut d = amphi_media::opus::Decoder::new().expect("decoder");
    let mut out = [0f32; amphi_media::opus::MAX_PACKET_SAMPLES];
    if d.decode(data, &mut out).is_err() {
        d.conceal(&mut out);
    }
});
