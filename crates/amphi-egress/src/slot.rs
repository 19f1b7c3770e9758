//! One listener as a worker sees it: O(1) state, never a queue.

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use amphi_tls::{ContentType, RecordSealer, sealed_len};
use bytes::Bytes;

/// What servicing a listener decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Keep the listener.
    Keep,
    /// The peer went away or errored.
    Gone,
    /// The peer could not keep up for too long.
    Stalled,
}

/// A listener: its socket, the unit in flight and where to go next.
/// Generic over the writer so tests can play any slow peer.
#[derive(Debug)]
pub struct Slot<S: Write = TcpStream> {
    pub(crate) stream: S,
    pub(crate) cur: Bytes,
    pub(crate) offset: usize,
    pub(crate) next_unit: u64,
    pub(crate) tag: u64,
    pub(crate) behind_since: Option<Instant>,
    /// Over TLS: the connection's sealer, numbered at the start of `cur`.
    /// Then `offset` counts sealed bytes; the unit is sealed into the
    /// worker's scratch for each pass (the same bytes every time), so a
    /// partly written unit costs an offset, not a copy.
    pub(crate) tls: Option<Box<RecordSealer>>,
}

/// Source of units for a slot: the worker's recent units of that output.
pub(crate) trait Units {
    /// The newest unit number, if any.
    fn newest(&self) -> Option<u64>;
    /// Unit `seq`, if still kept.
    fn get(&self, seq: u64) -> Option<&Bytes>;
}

/// Counters a service pass adds to.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Tally {
    pub bytes: u64,
    pub writes: u64,
    pub skipped: u64,
}

impl<S: Write> Slot<S> {
    pub(crate) fn new(stream: S, pending: Bytes, next_unit: u64, tag: u64) -> Self {
        Slot {
            stream,
            cur: pending,
            offset: 0,
            next_unit,
            tag,
            behind_since: None,
            tls: None,
        }
    }

    /// A listener whose bytes are sealed into TLS records by `sealer`.
    pub(crate) fn with_tls(mut self, sealer: Option<Box<RecordSealer>>) -> Self {
        self.tls = sealer;
        self
    }

    /// Bytes of the unit in flight on the wire (sealed, over TLS).
    fn wire_len(&self) -> usize {
        match self.tls {
            None => self.cur.len(),
            Some(_) => sealed_len(self.cur.len()),
        }
    }

    /// Whether part of the unit in flight is still to be written.
    pub(crate) fn in_flight(&self) -> bool {
        self.offset < self.wire_len()
    }

    /// Writes what it can: the rest of the unit in flight, then the next
    /// units. A listener two or more units behind jumps to the newest unit.
    /// `scratch` is the worker's buffer for sealing TLS records.
    pub(crate) fn service<U: Units>(
        &mut self,
        units: &U,
        now: Instant,
        stall: Duration,
        t: &mut Tally,
        scratch: &mut Vec<u8>,
    ) -> Service {
        let mut sealed = false;
        loop {
            if self.offset < self.wire_len() {
                let bytes: &[u8] = match &self.tls {
                    None => &self.cur[self.offset..],
                    Some(sealer) => {
                        if !sealed {
                            scratch.clear();
                            sealer.seal_at(
                                sealer.seq(),
                                ContentType::ApplicationData,
                                &self.cur,
                                scratch,
                            );
                            sealed = true;
                        }
                        &scratch[self.offset..]
                    }
                };
                match self.stream.write(bytes) {
                    Ok(0) => return Service::Gone,
                    Ok(n) => {
                        t.writes += 1;
                        t.bytes += n as u64;
                        self.offset += n;
                        continue;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        let since = *self.behind_since.get_or_insert(now);
                        if now.duration_since(since) > stall {
                            return Service::Stalled;
                        }
                        return Service::Keep;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => return Service::Gone,
                }
            }
            self.behind_since = None;
            let Some(newest) = units.newest() else {
                return Service::Keep;
            };
            if self.next_unit > newest {
                return Service::Keep;
            }
            if newest - self.next_unit >= 2 || units.get(self.next_unit).is_none() {
                t.skipped += newest - self.next_unit;
                self.next_unit = newest;
            }
            match units.get(self.next_unit) {
                Some(b) => {
                    if let Some(sealer) = &mut self.tls {
                        sealer.advance(RecordSealer::records_for(self.cur.len()));
                    }
                    sealed = false;
                    self.cur = b.clone();
                    self.offset = 0;
                    self.next_unit += 1;
                }
                None => return Service::Keep,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    /// A peer that takes a scripted number of bytes per write (0 = full).
    struct Peer {
        got: Vec<u8>,
        script: VecDeque<usize>,
    }

    impl Write for Peer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            match self.script.pop_front() {
                Some(0) | None => Err(ErrorKind::WouldBlock.into()),
                Some(n) => {
                    let n = n.min(buf.len());
                    self.got.extend_from_slice(&buf[..n]);
                    Ok(n)
                }
            }
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    struct Ring(VecDeque<(u64, Bytes)>);

    impl Units for Ring {
        fn newest(&self) -> Option<u64> {
            self.0.back().map(|(s, _)| *s)
        }
        fn get(&self, seq: u64) -> Option<&Bytes> {
            self.0.iter().find(|(s, _)| *s == seq).map(|(_, b)| b)
        }
    }

    /// Unit `seq` is `[seq; 4 bytes BE][len byte][filler]`, so the stream
    /// can be cut back into units and checked.
    fn unit(seq: u64, len: usize) -> Bytes {
        let mut v = (seq as u32).to_be_bytes().to_vec();
        v.push(len as u8);
        v.resize(len.max(5), seq as u8);
        Bytes::from(v)
    }

    proptest! {
        /// Whatever the peer accepts, it receives whole units in increasing
        /// order; the slot holds at most one unit and skips to the newest.
        #[test]
        fn slow_peers_get_whole_units_in_order(
            lens in proptest::collection::vec(5usize..200, 1..60),
            script in proptest::collection::vec(0usize..300, 0..400),
        ) {
            let peer = Peer { got: Vec::new(), script: script.into() };
            let mut slot = Slot::new(peer, Bytes::new(), 0, 0);
            let mut ring = Ring(VecDeque::new());
            let now = Instant::now();
            let mut tally = Tally::default();
            for (seq, len) in lens.iter().enumerate() {
                ring.0.push_back((seq as u64, unit(seq as u64, *len)));
                if ring.0.len() > 8 { ring.0.pop_front(); }
                let _ = slot.service(&ring, now, Duration::from_secs(60), &mut tally, &mut Vec::new());
                prop_assert!(slot.next_unit <= seq as u64 + 1);
            }
            // Cut what the peer got back into units.
            let got = &slot.stream.got;
            let mut at = 0;
            let mut last: Option<u64> = None;
            while at + 5 <= got.len() {
                let seq = u64::from(u32::from_be_bytes(got[at..at + 4].try_into().unwrap()));
                let len = lens[seq as usize].max(5);
                prop_assert_eq!(got[at + 4] as usize, lens[seq as usize]);
                if let Some(l) = last { prop_assert!(seq > l, "unit {} after {}", seq, l); }
                last = Some(seq);
                if at + len > got.len() {
                    // Only the unit still in flight may be partial.
                    prop_assert_eq!(slot.cur.clone(), unit(seq, lens[seq as usize]));
                    break;
                }
                at += len;
            }
            prop_assert_eq!(tally.bytes as usize, got.len());
        }
    }
}
