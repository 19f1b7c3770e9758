#![no_main]
//! Bearer tokens and ids from requests.
use amphi_core::token::{Claims, IdentityClaims, TokenKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let key = TokenKey::from_bytes([9; 32]);
    let _ = key.verify::<Claims>(s, 0);
    let _ = key.verify::<IdentityClaims>(s, 0);
    let _ = s.parse::<amphi_core::SpaceId>();
});
