//! The one bounded reader every codec of this crate parses with: each read
//! checks its length first, so any bytes give a value or a [`WireError`],
//! never a panic, and slices share the message's buffer.

use bytes::Bytes;

use crate::WireError;

pub(crate) struct Reader<'a> {
    b: &'a Bytes,
    at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(b: &'a Bytes) -> Self {
        Reader { b, at: 0 }
    }

    /// The next `n` bytes, sharing the message's buffer.
    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<Bytes, WireError> {
        let end = self.at.checked_add(n).ok_or(WireError::Truncated(what))?;
        if end > self.b.len() {
            return Err(WireError::Truncated(what));
        }
        let s = self.b.slice(self.at..end);
        self.at = end;
        Ok(s)
    }

    /// A big-endian unsigned integer of `width` (≤ 8) bytes.
    pub(crate) fn uint(&mut self, width: usize, what: &'static str) -> Result<u64, WireError> {
        debug_assert!(width <= 8);
        let s = self.take(width, what)?;
        Ok(s.iter().fold(0u64, |a, &x| (a << 8) | u64::from(x)))
    }

    /// The version byte, which must be `expected`.
    pub(crate) fn version(&mut self, expected: u8) -> Result<(), WireError> {
        if self.b.is_empty() {
            return Err(WireError::Short(0));
        }
        match self.uint(1, "version")? as u8 {
            v if v == expected => Ok(()),
            v => Err(WireError::Version(v)),
        }
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.b.len() - self.at
    }

    /// The message must end here.
    pub(crate) fn end(&self) -> Result<(), WireError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(WireError::Trailing(n)),
        }
    }
}
