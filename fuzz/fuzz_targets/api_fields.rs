#![no_main]
//! Short strings from request paths and JSON bodies: space and participant
//! ids, display names, reaction emojis.
//! Properties: an id that parses prints back as the same id (in lowercase
//! hex); a name that validates is trimmed and printable; reactions stay
//! bounded however many arrive.
use amphi_core::reactions::{MAX_DISTINCT, MAX_EMOJI_BYTES, Reactions, validate_emoji};
use amphi_core::room::validate_name;
use amphi_core::{ParticipantId, SpaceId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = s.parse::<SpaceId>() {
        assert_eq!(id.to_string(), s.to_ascii_lowercase());
        assert_eq!(id.to_string().parse::<SpaceId>().ok(), Some(id));
    }
    if let Ok(id) = s.parse::<ParticipantId>() {
        assert_eq!(id.to_string(), s.to_ascii_lowercase());
    }
    if let Ok(name) = validate_name(s) {
        assert!(!name.is_empty() && name == name.trim());
        assert!(!name.chars().any(char::is_control));
    }
    let mut r = Reactions::default();
    for emoji in s.split(',') {
        let counted = r.add(emoji);
        assert_eq!(counted.is_ok(), validate_emoji(emoji).is_ok());
        if counted.is_ok() {
            assert!(!emoji.is_empty() && emoji.len() <= MAX_EMOJI_BYTES);
        }
    }
    let counts = r.take();
    assert!(counts.len() <= MAX_DISTINCT);
    assert!(r.is_empty());
});
