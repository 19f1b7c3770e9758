//! Compact identifiers. Both are random 64-bit values shown as 16 lowercase
//! hex digits, so they are `Copy`, cheap to hash and never allocate.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! hex_id {
    ($name:ident, $what:literal) => {
        #[doc = concat!("Identifier of a ", $what, ", shown as 16 hex digits.")]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:016x}", self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:016x})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, InvalidId> {
                if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(InvalidId);
                }
                u64::from_str_radix(s, 16).map($name).map_err(|_| InvalidId)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hex_id!(SpaceId, "space");
hex_id!(ParticipantId, "participant");
hex_id!(ClipId, "clip");

/// A string that is not 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid id: expected 16 hex digits")]
pub struct InvalidId;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn display_parse_roundtrip(v: u64) {
            let id = SpaceId(v);
            prop_assert_eq!(id.to_string().parse::<SpaceId>().unwrap(), id);
        }

        #[test]
        fn parse_never_panics(s in ".{0,40}") {
            let _ = s.parse::<ParticipantId>();
        }
    }

    #[test]
    fn rejects_non_hex_and_wrong_length() {
        assert!("0123456789abcdeg".parse::<SpaceId>().is_err());
        assert!("0123".parse::<SpaceId>().is_err());
        assert!("+123456789abcdef".parse::<SpaceId>().is_err());
    }
}
