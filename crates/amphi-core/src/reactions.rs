//! Reactions are aggregated, never relayed one by one: a space counts them
//! per emoji and the events channel sends the counts with its next update.

use std::collections::BTreeMap;

use crate::RoomError;

/// Longest reaction accepted, in bytes (an emoji with modifiers fits).
pub const MAX_EMOJI_BYTES: usize = 16;
/// Distinct emojis counted between two updates; more are dropped.
pub const MAX_DISTINCT: usize = 32;

/// Counts of reactions since the last [`Reactions::take`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reactions {
    counts: BTreeMap<String, u32>,
}

/// Checks that `emoji` looks like one emoji: short, not plain text.
pub fn validate_emoji(emoji: &str) -> Result<(), RoomError> {
    let ok = !emoji.is_empty()
        && emoji.len() <= MAX_EMOJI_BYTES
        && !emoji.is_ascii()
        && !emoji
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c.is_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(RoomError::BadInput("emoji must be a single emoji".into()))
    }
}

impl Reactions {
    /// Counts one reaction. Returns whether it was counted.
    pub fn add(&mut self, emoji: &str) -> Result<bool, RoomError> {
        validate_emoji(emoji)?;
        if let Some(n) = self.counts.get_mut(emoji) {
            *n = n.saturating_add(1);
            return Ok(true);
        }
        if self.counts.len() >= MAX_DISTINCT {
            return Ok(false);
        }
        self.counts.insert(emoji.to_owned(), 1);
        Ok(true)
    }

    /// Whether nothing was counted since the last take.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// The counts so far, resetting them.
    pub fn take(&mut self) -> BTreeMap<String, u32> {
        std::mem::take(&mut self.counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregates_and_bounds() {
        let mut r = Reactions::default();
        assert!(r.add("👏").unwrap());
        assert!(r.add("👏").unwrap());
        assert!(r.add("a").is_err());
        assert!(r.add("").is_err());
        assert!(r.add("é").is_err());
        let counts = r.take();
        assert_eq!(counts.get("👏"), Some(&2));
        assert!(r.is_empty());
    }
}
