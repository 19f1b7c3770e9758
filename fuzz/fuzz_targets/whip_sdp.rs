#![no_main]
//! WHIP offers: our pre-check, then str0m's parser, in the order the
//! server runs them (str0m only sees offers the pre-check accepted).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if amphi_rtc::summarize_offer(s).is_ok() {
        let _ = str0m::change::SdpOffer::from_sdp_string(s);
    }
});
