//! One listener as a worker sees it: O(1) state, never a queue.

use std::io::{ErrorKind, IoSlice, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use amphi_tls::{ContentType, RecordOpener, RecordSealer, sealed_len};
use bytes::Bytes;

use crate::Protocol;
use crate::control::{Control, Event, MAX_CONTROL_PER_SEC, close_code};

/// What servicing a listener decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Keep the listener.
    Keep,
    /// The peer went away or errored.
    Gone,
    /// The peer could not keep up for too long.
    Stalled,
    /// A WebSocket close was sent (an echo, or a protocol violation):
    /// the socket closes now.
    Closed,
}

/// What the worker reads from a listener.
#[derive(Debug)]
pub(crate) enum Reader {
    /// An HTTP listener: whatever it sends is read and dropped.
    Drain,
    /// An HTTP listener that half-closed: nothing more to read.
    Done,
    /// A WebSocket listener: control frames, at most
    /// [`MAX_CONTROL_PER_SEC`] in any one-second window.
    Ws {
        ctl: Control,
        window: Option<Instant>,
        count: u8,
        /// Over TLS: the client's records, opened here.
        tls_in: Option<Box<TlsIn>>,
    },
}

/// Largest TLS record a `wss` listener may send: a control frame (131
/// bytes) sealed, with room to spare. A listener has no reason to send more.
const MAX_IN_RECORD: usize = 256;

/// A `wss` listener's incoming side: its opener and one record.
pub(crate) struct TlsIn {
    opener: Box<RecordOpener>,
    rec: [u8; MAX_IN_RECORD],
    /// Bytes of the record read so far.
    fill: u16,
    /// The opened record's content not yet given to the control reader.
    plain: (u16, u16),
}

impl std::fmt::Debug for TlsIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIn")
            .field("fill", &self.fill)
            .finish_non_exhaustive()
    }
}

/// Counts one complete control frame against the rate limit; over it, the
/// reply becomes a Close 1008.
fn note(ev: Event, ctl: &mut Control, window: &mut Option<Instant>, count: &mut u8, now: Instant) {
    if matches!(ev, Event::Partial | Event::Violation(_)) {
        return;
    }
    let start = *window.get_or_insert(now);
    if now.duration_since(start) >= Duration::from_secs(1) {
        *window = Some(now);
        *count = 0;
    }
    *count = count.saturating_add(1);
    if *count > MAX_CONTROL_PER_SEC && !ctl.closing() {
        ctl.violation(close_code::POLICY_VIOLATION, "too many control frames");
    }
}

/// Most units in one write: the unit in flight and the units that follow
/// it without a skip (a connect burst of 8 s of 100 ms pages takes two).
const MAX_CHAIN: usize = 64;
/// Chaining stops once a write holds this many bytes: about what a
/// listener's send buffer takes (`--listener-sndbuf`, doubled by the
/// kernel), so little sealed over TLS is left unwritten.
const CHAIN_BYTES: usize = 32 * 1024;

/// Bytes an HTTP listener's reads may drop per readiness event; more waits
/// for the next event (HTTP clients send nothing after the request).
const DRAIN_PER_EVENT: usize = 64 * 1024;

/// A listener: its socket, the unit in flight and where to go next.
/// Generic over the stream so tests can play any slow peer.
#[derive(Debug)]
pub struct Slot<S: Read + Write = TcpStream> {
    pub(crate) stream: S,
    pub(crate) cur: Bytes,
    pub(crate) offset: usize,
    pub(crate) next_unit: u64,
    /// Units up to this number are all sent, in order, before the
    /// skip-to-newest rule applies (the connect burst).
    pub(crate) burst_to: Option<u64>,
    pub(crate) tag: u64,
    pub(crate) behind_since: Option<Instant>,
    pub(crate) reader: Reader,
    /// The worker's poll token for this socket.
    pub(crate) token: usize,
    /// Over TLS: sealed bytes of the control reply already written.
    pub(crate) reply_off: u16,
    /// Over TLS: the connection's sealer, numbered at the start of `cur`.
    /// Then `offset` counts sealed bytes; the unit is sealed into the
    /// worker's scratch for each pass (the same bytes every time), so a
    /// partly written unit costs an offset, not a copy.
    pub(crate) tls: Option<Box<RecordSealer>>,
    /// A WebSocket Close from the server (a space ended, or this node
    /// lost the cluster) was written whole, as a unit. Nothing more may
    /// follow it (RFC 6455 §5.5.1): not a unit, not a Pong, not the echo
    /// of the client's Close (a second Close is a protocol error to a
    /// browser). The client's Close completes the handshake.
    pub(crate) sent_close: bool,
}

/// Source of units for a slot: the worker's recent units of that output.
pub(crate) trait Units {
    /// The oldest unit number kept, if any.
    fn oldest(&self) -> Option<u64>;
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
    pub pongs: u64,
}

impl<S: Read + Write> Slot<S> {
    pub(crate) fn new(
        stream: S,
        pending: Bytes,
        next_unit: u64,
        tag: u64,
        protocol: Protocol,
    ) -> Self {
        Slot {
            stream,
            cur: pending,
            offset: 0,
            next_unit,
            burst_to: None,
            tag,
            behind_since: None,
            reader: match protocol {
                Protocol::Http => Reader::Drain,
                Protocol::WebSocket => Reader::Ws {
                    ctl: Control::default(),
                    window: None,
                    count: 0,
                    tls_in: None,
                },
            },
            token: usize::MAX,
            reply_off: 0,
            tls: None,
            sent_close: false,
        }
    }

    /// A listener whose bytes are sealed into TLS records by `sealer` (by
    /// the kernel if `None` with an `opener`); a `wss` listener's records
    /// are opened by `opener` (without one, its input is drained and its
    /// pings go unanswered).
    pub(crate) fn with_tls(
        mut self,
        sealer: Option<Box<RecordSealer>>,
        opener: Option<Box<RecordOpener>>,
    ) -> Self {
        // With kernel TLS there is no sealer (the kernel seals what is
        // written) but the client's records still arrive as records.
        let over_tls = sealer.is_some() || opener.is_some();
        if over_tls && let Reader::Ws { tls_in, .. } = &mut self.reader {
            match opener {
                Some(opener) => {
                    *tls_in = Some(Box::new(TlsIn {
                        opener,
                        rec: [0; MAX_IN_RECORD],
                        fill: 0,
                        plain: (0, 0),
                    }));
                }
                None => self.reader = Reader::Drain,
            }
        }
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

    /// Whether the slot has bytes in flight: the rest of a unit, or a
    /// control reply waiting behind it.
    pub(crate) fn busy(&self) -> bool {
        self.in_flight()
            || self.sent_close
            || matches!(&self.reader, Reader::Ws { ctl, .. } if !ctl.pending_reply().is_empty())
    }

    /// Reads what the peer sent, until the socket is empty or a control
    /// reply waits to be sent. `Err` ends the listener.
    pub(crate) fn read(&mut self, now: Instant) -> Result<(), Service> {
        match &mut self.reader {
            Reader::Done => Ok(()),
            Reader::Drain => {
                let mut scratch = [0u8; 2048];
                let mut total = 0;
                while total < DRAIN_PER_EVENT {
                    match self.stream.read(&mut scratch) {
                        Ok(0) => {
                            // A half-close: the response still goes out.
                            self.reader = Reader::Done;
                            return Ok(());
                        }
                        Ok(n) => total += n,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => return Err(Service::Gone),
                    }
                }
                Ok(())
            }
            Reader::Ws {
                ctl,
                window,
                count,
                tls_in: Some(tin),
            } => loop {
                // Decrypted bytes first, as far as the control reader takes.
                if tin.plain.0 < tin.plain.1 {
                    let buf = ctl.read_buf();
                    if buf.is_empty() {
                        return Ok(());
                    }
                    let avail = &tin.rec[usize::from(tin.plain.0)..usize::from(tin.plain.1)];
                    let n = buf.len().min(avail.len());
                    buf[..n].copy_from_slice(&avail[..n]);
                    tin.plain.0 += n as u16;
                    let ev = ctl.advance(n);
                    note(ev, ctl, window, count, now);
                    continue;
                }
                if !ctl.pending_reply().is_empty() {
                    return Ok(());
                }
                let fill = usize::from(tin.fill);
                let need = match RecordOpener::record_len(&tin.rec[..fill]) {
                    Ok(Some(n)) => n,
                    Ok(None) => 5,
                    Err(_) => return Err(Service::Gone),
                };
                if need > MAX_IN_RECORD {
                    return Err(Service::Gone);
                }
                if fill < need {
                    match self.stream.read(&mut tin.rec[fill..need]) {
                        Ok(0) => return Err(Service::Gone),
                        Ok(n) => tin.fill += n as u16,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => return Err(Service::Gone),
                    }
                    continue;
                }
                tin.fill = 0;
                let opened = tin
                    .opener
                    .open(&mut tin.rec[..need])
                    .map_err(|_| Service::Gone)?;
                match opened.content {
                    ContentType::ApplicationData => {
                        tin.plain = (opened.range.start as u16, opened.range.end as u16);
                    }
                    // An alert (close_notify) or a key update: the end.
                    _ => return Err(Service::Gone),
                }
            },
            Reader::Ws {
                ctl,
                window,
                count,
                tls_in: None,
            } => loop {
                let buf = ctl.read_buf();
                if buf.is_empty() {
                    return Ok(());
                }
                match self.stream.read(buf) {
                    // The peer closed TCP without a close frame.
                    Ok(0) => return Err(Service::Gone),
                    Ok(n) => {
                        let ev = ctl.advance(n);
                        note(ev, ctl, window, count, now);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => return Err(Service::Gone),
                }
            },
        }
    }

    /// Whether `unit` is a WebSocket Close frame (on a WebSocket listener).
    fn is_close(&self, unit: &[u8]) -> bool {
        matches!(self.reader, Reader::Ws { .. }) && unit.first() == Some(&0x88)
    }

    /// After the server's Close: waits for the client's, answering
    /// nothing, and gives up after `stall`.
    fn after_close(&mut self, now: Instant, stall: Duration) -> Service {
        loop {
            let Reader::Ws { ctl, .. } = &mut self.reader else {
                return Service::Closed;
            };
            if ctl.pending_reply().is_empty() {
                break;
            }
            if ctl.closing() {
                // The client's Close (or a violation): the handshake is
                // done, and no echo goes out.
                return Service::Closed;
            }
            ctl.drop_reply();
            if let Err(v) = self.read(now) {
                return v;
            }
        }
        let since = *self.behind_since.get_or_insert(now);
        if now.duration_since(since) > stall {
            return Service::Closed;
        }
        Service::Keep
    }

    /// Notes that the socket took nothing: a stall if it lasts.
    fn blocked(&mut self, now: Instant, stall: Duration) -> Service {
        let since = *self.behind_since.get_or_insert(now);
        if now.duration_since(since) > stall {
            return Service::Stalled;
        }
        Service::Keep
    }

    /// Whether unit `seq` would be the next unit sent after the one before
    /// it, without a skip: within the connect burst, or live and less than
    /// two behind the newest. Such units go out with the unit in flight in
    /// one write.
    fn follows<U: Units>(&self, units: &U, seq: u64, newest: u64) -> Option<usize> {
        if matches!(&self.reader, Reader::Ws { ctl, .. } if !ctl.pending_reply().is_empty()) {
            // A control reply goes out right after the unit in flight.
            return None;
        }
        let before = if seq == self.next_unit {
            Some(&self.cur)
        } else {
            units.get(seq.wrapping_sub(1))
        };
        if before.is_some_and(|b| self.is_close(b)) {
            // A Close ends the stream: nothing is chained after it.
            return None;
        }
        let b = units.get(seq)?;
        let in_burst = self.burst_to.is_some_and(|to| seq <= to);
        (in_burst || newest.saturating_sub(seq) < 2).then_some(b.len())
    }

    /// Counts `n` written bytes: the unit in flight, then as many of the
    /// units that followed it in the same write (the chain). Units written
    /// whole are done; the one the write ended in becomes the unit in
    /// flight. `base` is where the unit in flight starts in the scratch
    /// (over TLS), moved along with it.
    fn consume<U: Units>(&mut self, units: &U, mut n: usize, base: &mut Option<usize>) {
        loop {
            let wire = self.wire_len();
            let rest = wire - self.offset;
            if n <= rest {
                self.offset += n;
                return;
            }
            n -= rest;
            // The next unit of the chain: in the ring, as it was when the
            // chain was written (the ring does not change during a pass).
            let Some(b) = units.get(self.next_unit) else {
                // Cannot happen (the write held only chained units); stop
                // counting rather than guess.
                self.offset = wire;
                return;
            };
            if let Some(sealer) = &mut self.tls {
                sealer.advance(RecordSealer::records_for(self.cur.len()));
            }
            if let Some(at) = base {
                *at += wire;
            }
            self.cur = b.clone();
            self.offset = 0;
            self.next_unit += 1;
            if self.burst_to.is_some_and(|to| self.next_unit > to) {
                self.burst_to = None;
            }
        }
    }

    /// Writes what it can: the rest of the unit in flight, then a control
    /// reply if one waits (never inside a unit), then the next units. A
    /// listener two or more units behind jumps to the newest unit, except
    /// within its connect burst. The unit in flight and the units that
    /// follow it without a skip (a connect burst, a listener one behind)
    /// go out in one write: `writev` of the shared units, or over TLS one
    /// record per unit sealed back to back into `scratch`, the worker's
    /// buffer.
    pub(crate) fn service<U: Units>(
        &mut self,
        units: &U,
        now: Instant,
        stall: Duration,
        t: &mut Tally,
        scratch: &mut Vec<u8>,
    ) -> Service {
        // Over TLS: where the unit in flight starts in `scratch`, sealed at
        // the sealer's number and followed by its chain, once sealed.
        let mut base: Option<usize> = None;
        let mut sealed_reply = false;
        loop {
            if self.offset < self.wire_len() {
                let newest = units.newest().unwrap_or(0);
                let written = match &self.tls {
                    None => {
                        let mut iov = [IoSlice::new(&[]); MAX_CHAIN];
                        iov[0] = IoSlice::new(&self.cur[self.offset..]);
                        let (mut k, mut bytes) = (1, iov[0].len());
                        let mut seq = self.next_unit;
                        while k < MAX_CHAIN && bytes < CHAIN_BYTES {
                            let Some(len) = self.follows(units, seq, newest) else {
                                break;
                            };
                            if let Some(b) = units.get(seq) {
                                iov[k] = IoSlice::new(b);
                            }
                            k += 1;
                            bytes += len;
                            seq += 1;
                        }
                        self.stream.write_vectored(&iov[..k])
                    }
                    Some(sealer) => {
                        let at = match base {
                            Some(at) => at,
                            None => {
                                scratch.clear();
                                let mut rec = sealer.seq();
                                rec += sealer.seal_at(
                                    rec,
                                    ContentType::ApplicationData,
                                    &self.cur,
                                    scratch,
                                );
                                let mut seq = self.next_unit;
                                let mut k = 1;
                                while k < MAX_CHAIN && scratch.len() < CHAIN_BYTES {
                                    if self.follows(units, seq, newest).is_none() {
                                        break;
                                    }
                                    let Some(b) = units.get(seq) else { break };
                                    rec += sealer.seal_at(
                                        rec,
                                        ContentType::ApplicationData,
                                        b,
                                        scratch,
                                    );
                                    k += 1;
                                    seq += 1;
                                }
                                base = Some(0);
                                0
                            }
                        };
                        self.stream.write(&scratch[at + self.offset..])
                    }
                };
                match written {
                    Ok(0) => return Service::Gone,
                    Ok(n) => {
                        t.writes += 1;
                        t.bytes += n as u64;
                        self.consume(units, n, &mut base);
                        continue;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return self.blocked(now, stall),
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => return Service::Gone,
                }
            }
            if !self.sent_close && self.is_close(&self.cur) {
                // The whole Close is out: the clock for the client's
                // answer starts now.
                self.sent_close = true;
                self.behind_since = Some(now);
            }
            if self.sent_close {
                return self.after_close(now, stall);
            }
            if let Reader::Ws { ctl, .. } = &mut self.reader
                && !ctl.pending_reply().is_empty()
            {
                let bytes: &[u8] = match &mut self.tls {
                    None => ctl.pending_reply(),
                    Some(sealer) => {
                        if !self.cur.is_empty() {
                            // The unit is through: its records are spent.
                            sealer.advance(RecordSealer::records_for(self.cur.len()));
                            self.cur = Bytes::new();
                            self.offset = 0;
                        }
                        if !sealed_reply {
                            scratch.clear();
                            sealer.seal_at(
                                sealer.seq(),
                                ContentType::ApplicationData,
                                ctl.reply(),
                                scratch,
                            );
                            sealed_reply = true;
                            base = None;
                        }
                        &scratch[usize::from(self.reply_off)..]
                    }
                };
                match self.stream.write(bytes) {
                    Ok(0) => return Service::Gone,
                    Ok(n) => {
                        t.writes += 1;
                        t.bytes += n as u64;
                        let done = match &mut self.tls {
                            None => ctl.sent(n),
                            Some(sealer) => {
                                self.reply_off += n as u16;
                                if usize::from(self.reply_off) < scratch.len() {
                                    false
                                } else {
                                    sealer.advance(1);
                                    self.reply_off = 0;
                                    sealed_reply = false;
                                    ctl.sent(usize::from(u8::MAX))
                                }
                            }
                        };
                        if done {
                            if ctl.closing() {
                                return Service::Closed;
                            }
                            t.pongs += 1;
                            // Reads paused behind the reply: resume.
                            if let Err(v) = self.read(now) {
                                return v;
                            }
                        }
                        continue;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        return self.blocked(now, stall);
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
            let in_burst = self.burst_to.is_some_and(|to| self.next_unit <= to);
            if in_burst
                && units.get(self.next_unit).is_none()
                && let Some(oldest) = units.oldest()
                && oldest > self.next_unit
            {
                // The burst's start fell out of the ring: go on from the
                // oldest unit kept.
                t.skipped += oldest - self.next_unit;
                self.next_unit = oldest;
            }
            let keep_order = in_burst && units.get(self.next_unit).is_some();
            let from = self.next_unit;
            if !keep_order && (newest - self.next_unit >= 2 || units.get(self.next_unit).is_none())
            {
                t.skipped += newest - self.next_unit;
                self.next_unit = newest;
            }
            match units.get(self.next_unit) {
                Some(b) => {
                    let wire = self.wire_len();
                    if let Some(sealer) = &mut self.tls {
                        sealer.advance(RecordSealer::records_for(self.cur.len()));
                    }
                    // The next unit of a chain already sealed (no skip, and
                    // its records follow in the scratch): no second seal.
                    base = match base {
                        Some(at) if self.next_unit == from && at + wire < scratch.len() => {
                            Some(at + wire)
                        }
                        _ => None,
                    };
                    self.cur = b.clone();
                    self.offset = 0;
                    self.next_unit += 1;
                    if self.burst_to.is_some_and(|to| self.next_unit > to) {
                        self.burst_to = None;
                    }
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

    /// A peer that takes a scripted number of bytes per write (0 = full)
    /// and has `input` for the server to read.
    struct Peer {
        got: Vec<u8>,
        script: VecDeque<usize>,
        input: VecDeque<u8>,
        /// Calls to `write` and `write_vectored`.
        writes: usize,
    }

    impl Peer {
        fn new(script: impl Into<VecDeque<usize>>) -> Self {
            Peer {
                got: Vec::new(),
                script: script.into(),
                input: VecDeque::new(),
                writes: 0,
            }
        }
    }

    impl Write for Peer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.writes += 1;
            match self.script.pop_front() {
                Some(0) | None => Err(ErrorKind::WouldBlock.into()),
                Some(n) => {
                    let n = n.min(buf.len());
                    self.got.extend_from_slice(&buf[..n]);
                    Ok(n)
                }
            }
        }
        /// As `writev`: one scripted budget over all the buffers.
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
            self.writes += 1;
            match self.script.pop_front() {
                Some(0) | None => Err(ErrorKind::WouldBlock.into()),
                Some(mut n) => {
                    let mut took = 0;
                    for b in bufs {
                        let k = n.min(b.len());
                        self.got.extend_from_slice(&b[..k]);
                        took += k;
                        n -= k;
                        if n == 0 {
                            break;
                        }
                    }
                    Ok(took)
                }
            }
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Read for Peer {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.input.is_empty() {
                return Err(ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.input.len());
            for b in buf.iter_mut().take(n) {
                *b = self.input.pop_front().unwrap_or(0);
            }
            Ok(n)
        }
    }

    struct Ring(VecDeque<(u64, Bytes)>);

    impl Units for Ring {
        fn oldest(&self) -> Option<u64> {
            self.0.front().map(|(s, _)| *s)
        }
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

    /// A masked ping from a client carrying `payload`.
    fn ping(payload: &[u8]) -> Vec<u8> {
        let key = [0x11, 0x22, 0x33, 0x44];
        let mut v = vec![0x89, 0x80 | payload.len() as u8];
        v.extend_from_slice(&key);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        v
    }

    proptest! {
        /// Whatever the peer accepts and whenever it pings, it receives
        /// whole units in increasing order with pongs only between units;
        /// the slot holds at most one unit and skips to the newest.
        #[test]
        fn slow_peers_get_whole_units_in_order(
            lens in proptest::collection::vec(5usize..200, 1..60),
            script in proptest::collection::vec(0usize..300, 0..400),
            pings in proptest::collection::vec(any::<bool>(), 60),
        ) {
            let mut slot = Slot::new(Peer::new(script), Bytes::new(), 0, 0, Protocol::WebSocket);
            let mut ring = Ring(VecDeque::new());
            // Pings spaced over more than a second each, so none is over the rate.
            let mut now = Instant::now();
            let mut tally = Tally::default();
            let mut sent_pings = 0;
            let mut closed = false;
            for (seq, len) in lens.iter().enumerate() {
                ring.0.push_back((seq as u64, unit(seq as u64, *len)));
                if ring.0.len() > 8 { ring.0.pop_front(); }
                if pings[seq] {
                    slot.stream.input.extend(ping(&[seq as u8; 3]));
                    sent_pings += 1;
                    now += Duration::from_millis(1100);
                    prop_assert!(slot.read(now).is_ok());
                }
                let v = slot.service(&ring, now, Duration::from_secs(600), &mut tally, &mut Vec::new());
                prop_assert!(slot.next_unit <= seq as u64 + 1);
                if v == Service::Closed {
                    // Pings queued behind a blocked peer came in a flood.
                    closed = true;
                    break;
                }
                prop_assert_eq!(v, Service::Keep);
            }
            // Cut what the peer got back into units and pongs.
            let got = &slot.stream.got;
            let mut at = 0;
            let mut last: Option<u64> = None;
            let mut pongs = 0;
            while at < got.len() {
                if got[at] == 0x88 {
                    // A close (1008, a flood) ends the stream.
                    prop_assert!(closed);
                    prop_assert_eq!(&got[at + 2..at + 4], &[0x03, 0xf0]);
                    prop_assert_eq!(at + 2 + got[at + 1] as usize, got.len());
                    break;
                }
                if got[at] == 0x8a {
                    // A pong: whole, and carrying a ping's payload.
                    prop_assert!(at + 5 <= got.len() || slot.busy());
                    if at + 5 > got.len() { break; }
                    prop_assert_eq!(got[at + 1], 3);
                    prop_assert_eq!(got[at + 2], got[at + 4]);
                    pongs += 1;
                    at += 5;
                    continue;
                }
                if at + 5 > got.len() { break; }
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
            prop_assert!(pongs <= sent_pings);
            prop_assert_eq!(tally.bytes as usize, got.len());
        }
    }

    #[test]
    fn a_pong_waits_for_the_unit_in_flight() {
        // The peer takes 3 bytes, then nothing, then everything.
        let mut slot = Slot::new(
            Peer::new([3, 0, 10_000, 10_000, 10_000]),
            Bytes::new(),
            0,
            0,
            Protocol::WebSocket,
        );
        let ring = Ring(VecDeque::from([(0, unit(0, 20))]));
        let now = Instant::now();
        let mut t = Tally::default();
        assert_eq!(
            slot.service(&ring, now, Duration::from_secs(5), &mut t, &mut Vec::new()),
            Service::Keep
        );
        assert_eq!(slot.stream.got.len(), 3);
        slot.stream.input.extend(ping(b"abc"));
        slot.read(now).unwrap();
        assert!(slot.busy());
        assert_eq!(
            slot.service(&ring, now, Duration::from_secs(5), &mut t, &mut Vec::new()),
            Service::Keep
        );
        let mut expect = unit(0, 20).to_vec();
        expect.extend_from_slice(&[0x8a, 3, b'a', b'b', b'c']);
        assert_eq!(slot.stream.got, expect);
        assert_eq!(t.pongs, 1);
    }

    /// A WebSocket listener whose peer takes everything, sent units 0 to 2
    /// in order (its connect burst).
    fn ws_slot_in_burst() -> Slot<Peer> {
        let mut slot = Slot::new(
            Peer::new([10_000; 8]),
            Bytes::new(),
            0,
            0,
            Protocol::WebSocket,
        );
        slot.burst_to = Some(2);
        slot
    }

    #[test]
    fn after_the_servers_close_nothing_follows_and_the_clients_close_is_not_echoed() {
        // The space ended: its last unit is the server's Close (4000). A
        // browser that closed at the same moment (its Close crossing
        // ours) must not get a second Close: Chromium fails the socket
        // with "Close received after close".
        let close = Bytes::from_static(&[0x88, 0x02, 0x0f, 0xa0]);
        let ring = Ring(VecDeque::from([
            (0, unit(0, 9)),
            (1, close.clone()),
            (2, unit(2, 9)),
        ]));
        let now = Instant::now();
        let stall = Duration::from_secs(5);
        let mut t = Tally::default();
        let mut slot = ws_slot_in_burst();
        // The client's Close is already waiting when the units go out.
        slot.stream
            .input
            .extend([0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]);
        slot.read(now).unwrap();
        assert!(slot.busy());
        let mut got = Vec::new();
        let mut verdict = Service::Keep;
        for _ in 0..4 {
            verdict = slot.service(&ring, now, stall, &mut t, &mut Vec::new());
            if verdict != Service::Keep {
                break;
            }
        }
        got.extend_from_slice(&slot.stream.got);
        // The echo goes out first (a reply waits for no unit), or our
        // Close does; either way one Close, and nothing after it.
        let mut unit0_then_close = unit(0, 9).to_vec();
        unit0_then_close.extend_from_slice(&close);
        let mut unit0_then_echo = unit(0, 9).to_vec();
        unit0_then_echo.extend_from_slice(&[0x88, 2, 0x03, 0xe8]);
        let echo_only = vec![0x88, 2, 0x03, 0xe8];
        assert!(
            got == echo_only || got == unit0_then_close || got == unit0_then_echo,
            "one Close only, then nothing: {got:?}"
        );
        assert_eq!(verdict, Service::Closed);

        // Our Close first, the client's afterwards: not echoed, no more
        // units, no Pong; the client's Close ends the slot.
        let mut slot = ws_slot_in_burst();
        assert_eq!(
            slot.service(&ring, now, stall, &mut t, &mut Vec::new()),
            Service::Keep
        );
        let mut expect = unit(0, 9).to_vec();
        expect.extend_from_slice(&close);
        assert_eq!(slot.stream.got, expect, "unit 2 never follows the Close");
        assert!(slot.busy(), "waits for the client's Close");
        slot.stream.input.extend(ping(b"p"));
        slot.read(now).unwrap();
        assert_eq!(
            slot.service(&ring, now, stall, &mut t, &mut Vec::new()),
            Service::Keep
        );
        assert_eq!(slot.stream.got, expect, "no Pong after the Close");
        slot.stream.input.extend([0x88, 0x80, 0, 0, 0, 0]);
        slot.read(now).unwrap();
        assert_eq!(
            slot.service(&ring, now, stall, &mut t, &mut Vec::new()),
            Service::Closed
        );
        assert_eq!(slot.stream.got, expect, "the client's Close is not echoed");

        // A client that never answers is let go after the stall timeout.
        let mut slot = ws_slot_in_burst();
        assert_eq!(
            slot.service(&ring, now, stall, &mut t, &mut Vec::new()),
            Service::Keep
        );
        let later = now + stall + Duration::from_millis(1);
        assert_eq!(
            slot.service(&ring, later, stall, &mut t, &mut Vec::new()),
            Service::Closed
        );
    }

    #[test]
    fn a_close_is_echoed_after_the_unit_then_the_slot_closes() {
        let mut slot = Slot::new(
            Peer::new([4, 10_000, 10_000]),
            Bytes::new(),
            0,
            0,
            Protocol::WebSocket,
        );
        let ring = Ring(VecDeque::from([(0, unit(0, 9)), (1, unit(1, 9))]));
        let now = Instant::now();
        let mut t = Tally::default();
        // Part of unit 0 goes out; then the client closes with 1001.
        slot.stream.script = VecDeque::from([4]);
        assert_eq!(
            slot.service(&ring, now, Duration::from_secs(5), &mut t, &mut Vec::new()),
            Service::Keep
        );
        slot.stream
            .input
            .extend([0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe9]);
        slot.read(now).unwrap();
        slot.stream.script = VecDeque::from([10_000, 10_000, 10_000]);
        assert_eq!(
            slot.service(&ring, now, Duration::from_secs(5), &mut t, &mut Vec::new()),
            Service::Closed
        );
        let mut expect = unit(0, 9).to_vec();
        expect.extend_from_slice(&[0x88, 2, 0x03, 0xe9]);
        assert_eq!(
            slot.stream.got, expect,
            "the rest of unit 0, the echo, nothing after"
        );
    }

    #[test]
    fn a_ping_flood_is_closed_with_1008() {
        let mut slot = Slot::new(
            Peer::new(vec![10_000; 100]),
            Bytes::new(),
            0,
            0,
            Protocol::WebSocket,
        );
        let ring = Ring(VecDeque::new());
        let now = Instant::now();
        let mut t = Tally::default();
        for _ in 0..10 {
            slot.stream.input.extend(ping(b"x"));
        }
        slot.read(now).unwrap();
        assert_eq!(
            slot.service(&ring, now, Duration::from_secs(5), &mut t, &mut Vec::new()),
            Service::Closed
        );
        assert_eq!(t.pongs, u64::from(MAX_CONTROL_PER_SEC));
        let tail = &slot.stream.got[slot.stream.got.len() - 27..];
        assert_eq!(&tail[..4], &[0x88, 25, 0x03, 0xf0]);
    }

    #[test]
    fn data_from_a_listener_is_closed_with_1008_and_http_input_is_drained() {
        let mut slot = Slot::new(
            Peer::new(vec![10_000; 4]),
            Bytes::new(),
            0,
            0,
            Protocol::WebSocket,
        );
        slot.stream.input.extend([0x82, 0x81, 1, 2, 3, 4, 5]);
        slot.read(Instant::now()).unwrap();
        let mut t = Tally::default();
        let ring = Ring(VecDeque::new());
        assert_eq!(
            slot.service(
                &ring,
                Instant::now(),
                Duration::from_secs(5),
                &mut t,
                &mut Vec::new()
            ),
            Service::Closed
        );
        assert_eq!(&slot.stream.got[..4], &[0x88, 38, 0x03, 0xf0]);

        let mut http = Slot::new(
            Peer::new(vec![10_000; 4]),
            Bytes::new(),
            0,
            0,
            Protocol::Http,
        );
        http.stream.input.extend(vec![b'x'; 100_000]);
        http.read(Instant::now()).unwrap();
        assert!(http.stream.input.len() < 100_000, "drained");
        assert!(http.stream.got.is_empty(), "and nothing answered");
    }

    #[test]
    fn a_burst_is_sent_whole_and_in_order_then_live() {
        let mut slot = Slot::new(
            Peer::new(vec![10_000; 100]),
            Bytes::new(),
            2,
            0,
            Protocol::Http,
        );
        slot.burst_to = Some(6);
        let mut ring = Ring((0..8).map(|s| (s, unit(s, 10))).collect());
        let now = Instant::now();
        let mut t = Tally::default();
        slot.service(&ring, now, Duration::from_secs(5), &mut t, &mut Vec::new());
        let expect: Vec<u8> = (2..8).flat_map(|s| unit(s, 10).to_vec()).collect();
        assert_eq!(slot.stream.got, expect);
        assert_eq!(t.skipped, 0);
        assert_eq!(slot.burst_to, None);
        // After the burst, a listener two behind skips as always.
        slot.stream.script = VecDeque::new();
        ring.0.extend((8..12).map(|s| (s, unit(s, 10))));
        slot.service(&ring, now, Duration::from_secs(5), &mut t, &mut Vec::new());
        slot.stream.script = VecDeque::from(vec![10_000; 10]);
        slot.service(&ring, now, Duration::from_secs(5), &mut t, &mut Vec::new());
        assert_eq!(t.skipped, 3);
    }

    #[test]
    fn a_connect_burst_goes_out_in_few_writes() {
        // 80 pages of 400 bytes (8 s of 100 ms pages) behind a response
        // head: two writes (the chain stops at 32 KiB), not 81.
        let mut slot = Slot::new(
            Peer::new(vec![1 << 20; 10]),
            Bytes::from_static(b"HTTP/1.1 200 OK\r\n\r\n"),
            0,
            0,
            Protocol::Http,
        );
        slot.burst_to = Some(79);
        let ring = Ring((0..80).map(|s| (s, unit(s, 400))).collect());
        let mut t = Tally::default();
        let v = slot.service(
            &ring,
            Instant::now(),
            Duration::from_secs(5),
            &mut t,
            &mut Vec::new(),
        );
        assert_eq!(v, Service::Keep);
        let mut expect = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        expect.extend((0..80).flat_map(|s| unit(s, 400).to_vec()));
        assert_eq!(slot.stream.got, expect);
        assert!(slot.stream.writes <= 3, "{} writes", slot.stream.writes);
        assert_eq!(t.writes as usize, slot.stream.writes);
        assert_eq!((slot.next_unit, slot.burst_to), (80, None));
    }

    /// A sealer and an opener with the same (made-up) traffic secret: the
    /// opener reads back what the sealer sealed.
    fn tls_pair() -> (Box<RecordSealer>, RecordOpener) {
        let secrets = || rustls::ConnectionTrafficSecrets::Aes256Gcm {
            key: rustls::crypto::cipher::AeadKey::from([7u8; 32]),
            iv: rustls::crypto::cipher::Iv::from([9u8; 12]),
        };
        (
            Box::new(RecordSealer::new((0, secrets())).unwrap()),
            RecordOpener::new((0, secrets())).unwrap(),
        )
    }

    /// Opens every whole record of `wire`; returns their contents and
    /// whether a partial record is left at the end.
    fn open_all(opener: &mut RecordOpener, wire: &[u8]) -> (Vec<Vec<u8>>, bool) {
        let mut out = Vec::new();
        let mut at = 0;
        while at < wire.len() {
            let Ok(Some(n)) = RecordOpener::record_len(&wire[at..]) else {
                return (out, true);
            };
            if at + n > wire.len() {
                return (out, true);
            }
            let mut rec = wire[at..at + n].to_vec();
            let opened = opener.open(&mut rec).expect("a record the client can open");
            assert_eq!(opened.content, ContentType::ApplicationData);
            out.push(rec[opened.range].to_vec());
            at += n;
        }
        (out, false)
    }

    proptest! {
        /// Over TLS, whatever the peer accepts per write: a burst and then
        /// live units arrive as whole records, one unit per record, in
        /// order, every burst unit present, numbered without a gap (the
        /// opener checks the record numbers); a unit cut by a short write
        /// is sealed again to the same bytes.
        #[test]
        fn tls_chains_are_whole_records_in_order(
            lens in proptest::collection::vec(5usize..2000, 12..40),
            script in proptest::collection::vec(0usize..5000, 0..300),
            burst in 1usize..10,
        ) {
            let (sealer, mut opener) = tls_pair();
            let head = b"HTTP/1.1 200 OK\r\n\r\n";
            let mut slot = Slot::new(Peer::new(script), Bytes::from_static(head), 0, 0, Protocol::Http)
                .with_tls(Some(sealer), None);
            slot.burst_to = Some(burst as u64 - 1);
            let mut ring = Ring((0..burst as u64).map(|s| (s, unit(s, lens[s as usize]))).collect());
            let now = Instant::now();
            let mut tally = Tally::default();
            let mut scratch = Vec::new();
            for (seq, len) in lens.iter().enumerate().skip(burst) {
                let v = slot.service(&ring, now, Duration::from_secs(600), &mut tally, &mut scratch);
                prop_assert_eq!(v, Service::Keep);
                // The ring keeps every unit: the burst never falls out.
                ring.0.push_back((seq as u64, unit(seq as u64, *len)));
            }
            // Then the peer takes everything.
            slot.stream.script = VecDeque::from(vec![1 << 20; 4]);
            prop_assert_eq!(
                slot.service(&ring, now, Duration::from_secs(600), &mut tally, &mut scratch),
                Service::Keep
            );
            prop_assert!(!slot.busy());
            let (records, partial) = open_all(&mut opener, &slot.stream.got);
            prop_assert!(!partial);
            prop_assert_eq!(&records[0][..], &head[..]);
            let mut last: Option<u64> = None;
            for r in &records[1..] {
                let seq = u64::from(u32::from_be_bytes(r[..4].try_into().unwrap()));
                prop_assert_eq!(&r[..], &unit(seq, lens[seq as usize])[..]);
                match last {
                    None => prop_assert_eq!(seq, 0),
                    Some(l) if l + 1 < burst as u64 => prop_assert_eq!(seq, l + 1),
                    Some(l) => prop_assert!(seq > l),
                }
                last = Some(seq);
            }
            prop_assert_eq!(last, Some(lens.len() as u64 - 1));
            prop_assert_eq!(tally.bytes as usize, slot.stream.got.len());
        }
    }

    #[test]
    fn a_listener_stays_small() {
        // The socket, the unit in flight, the counters, the control-frame
        // buffer: a few hundred bytes, whatever the listener sends.
        let size = std::mem::size_of::<Slot>();
        eprintln!("a Slot is {size} bytes");
        assert!(size <= 320, "a Slot is {size} bytes");
    }
}
