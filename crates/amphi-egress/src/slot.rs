//! One listener as a worker sees it: O(1) state, never a queue.

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

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
#[derive(Debug)]
pub struct Slot {
    pub(crate) stream: TcpStream,
    pub(crate) cur: Bytes,
    pub(crate) offset: usize,
    pub(crate) next_unit: u64,
    pub(crate) tag: u64,
    pub(crate) behind_since: Option<Instant>,
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

impl Slot {
    pub(crate) fn new(stream: TcpStream, pending: Bytes, next_unit: u64, tag: u64) -> Self {
        Slot {
            stream,
            cur: pending,
            offset: 0,
            next_unit,
            tag,
            behind_since: None,
        }
    }

    /// Writes what it can: the rest of the unit in flight, then the next
    /// units. A listener two or more units behind jumps to the newest unit.
    pub(crate) fn service<U: Units>(
        &mut self,
        units: &U,
        now: Instant,
        stall: Duration,
        t: &mut Tally,
    ) -> Service {
        loop {
            if self.offset < self.cur.len() {
                match self.stream.write(&self.cur[self.offset..]) {
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
                    self.cur = b.clone();
                    self.offset = 0;
                    self.next_unit += 1;
                }
                None => return Service::Keep,
            }
        }
    }
}
