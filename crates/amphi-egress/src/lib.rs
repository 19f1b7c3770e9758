//! Listener fan-out: a few worker threads own every listener's socket.
//!
//! An output (a space's Ogg stream, its WebSocket stream) is a sequence of
//! *units* — an Ogg page, a WebSocket message — each built once by the media
//! thread and shared as [`Bytes`]. [`Egress::publish`] hands a unit to every
//! worker; a worker walks its listeners of that output and writes with
//! non-blocking sends. There is no task and no wakeup per listener per unit.
//!
//! Per-listener state is a socket, the unit being written, an offset and the
//! next unit's number ([`slot::Slot`], well under 2 KB). A listener whose
//! socket is full keeps its partial unit (units are never cut, so Ogg pages
//! and WebSocket frames stay whole) and, once it is through, skips straight
//! to the newest unit; one stuck for longer than the stall timeout is closed.
//! Memory per listener never grows with how far behind it is.
//!
//! Listeners are read too, driven by readiness (one epoll set per worker,
//! polled between units, never a task per listener): an HTTP listener's
//! input is drained, a WebSocket listener's control frames are answered
//! ([`control`]) — a Pong per Ping, a Close echoed — with the reply queued
//! behind the unit in flight so frames never interleave.

pub mod control;
#[cfg(test)]
mod sim;
mod slot;
mod worker;

use std::collections::VecDeque;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::Sender;
use parking_lot::Mutex;

pub use slot::Slot;
use worker::{Msg, Worker};

/// How the fan-out behaves.
#[derive(Debug, Clone)]
pub struct EgressConfig {
    /// Worker threads (about one per core).
    pub workers: usize,
    /// A listener that cannot take a byte for this long is closed.
    pub stall_timeout: Duration,
    /// Units each output keeps for new listeners and catch-up.
    pub ring: usize,
    /// Kernel send buffer per listener socket (SO_SNDBUF), if set. Small
    /// buffers bound kernel memory per listener and make a stuck listener
    /// skip sooner; the kernel doubles the value.
    pub sndbuf: Option<usize>,
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig {
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            stall_timeout: Duration::from_secs(5),
            ring: 32,
            sndbuf: Some(16 * 1024),
        }
    }
}

/// Units of an output's ring a connect burst leaves out (see
/// [`Output::burst_range`]).
pub const BURST_MARGIN: usize = 8;

/// One unit of an output: an Ogg page or a WebSocket message.
#[derive(Debug, Clone)]
pub struct Unit {
    /// Unit number within the output, consecutive from 0.
    pub seq: u64,
    /// Program sequence number of the last frame the unit carries.
    pub last_frame: u64,
    /// The bytes every listener receives.
    pub bytes: Bytes,
}

/// A stream many listeners receive: the recent units and a listener count.
#[derive(Debug)]
pub struct Output {
    id: u64,
    recent: Mutex<VecDeque<Unit>>,
    ring: usize,
    listeners: AtomicU64,
    next_seq: AtomicU64,
}

impl Output {
    /// The output's node-unique id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Listeners currently attached.
    pub fn listeners(&self) -> u64 {
        self.listeners.load(Ordering::Relaxed)
    }

    /// Units this output keeps.
    pub fn ring(&self) -> usize {
        self.ring
    }

    /// The newest `n` units, oldest first: a new listener's burst.
    pub fn recent(&self, n: usize) -> Vec<Unit> {
        let r = self.recent.lock();
        r.iter().skip(r.len().saturating_sub(n)).cloned().collect()
    }

    /// The unit numbers of the newest `n` units (first, last), if any:
    /// a connect burst the fan-out sends from its own ring. At most the
    /// ring less a margin, so units published while the listener is handed
    /// over do not push the burst's start out of a worker's ring.
    pub fn burst_range(&self, n: usize) -> Option<(u64, u64)> {
        let n = n.min(self.ring.saturating_sub(BURST_MARGIN)).max(1);
        let r = self.recent.lock();
        let last = r.back()?.seq;
        let first = r.iter().rev().take(n).last()?.seq;
        Some((first, last))
    }

    /// Where a resume from frame `from` can start in the ring: the oldest
    /// unit whose frames all come at or after `from`, at least
    /// [`BURST_MARGIN`] units in from the oldest kept (so it stays in a
    /// worker's ring while the listener is handed over). Its number and the
    /// last frame of the unit before it (the frames before that the caller
    /// sends itself).
    pub fn resume_point(&self, from: u64) -> Option<(u64, u64)> {
        let r = self.recent.lock();
        let mut prev: Option<&Unit> = None;
        for (i, u) in r.iter().enumerate() {
            if let Some(p) = prev
                && i >= BURST_MARGIN
                && p.last_frame.saturating_add(1) >= from
            {
                return Some((u.seq, p.last_frame));
            }
            prev = Some(u);
        }
        None
    }

    /// The newest unit, if any was published.
    pub fn newest(&self) -> Option<Unit> {
        self.recent.lock().back().cloned()
    }

    /// Number the next unit published will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq.load(Ordering::Acquire)
    }
}

/// Counters of the fan-out, for `/metrics`.
#[derive(Debug, Default)]
pub struct EgressStats {
    pub units_published: AtomicU64,
    pub bytes_written: AtomicU64,
    pub writes: AtomicU64,
    pub units_skipped: AtomicU64,
    pub listeners_added: AtomicU64,
    pub closed_slow: AtomicU64,
    pub closed_gone: AtomicU64,
    pub listeners: AtomicU64,
    /// Pongs sent to WebSocket listeners.
    pub pongs: AtomicU64,
    /// WebSocket listeners closed by a close handshake (theirs echoed, or
    /// ours for a protocol violation).
    pub closed_ws: AtomicU64,
}

/// What a listener speaks once its handshake is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// A plain HTTP response body: whatever the client sends is dropped.
    Http,
    /// WebSocket: the client's control frames are answered; data from it
    /// is a policy violation.
    WebSocket,
}

/// A listener ready to be served: its HTTP or WebSocket handshake is done.
#[derive(Debug)]
pub struct NewListener {
    /// A connected, non-blocking socket.
    pub stream: TcpStream,
    /// Bytes to send before any unit (response head, stream headers).
    pub pending: Bytes,
    /// The first unit to send after `pending`.
    pub next_unit: u64,
    /// Units from `next_unit` up to this one are all sent, in order, as
    /// fast as the socket takes them (a connect burst from the output's
    /// ring, shared, not copied); after it the skip-to-newest rule applies.
    pub burst_to: Option<u64>,
    /// Who it is (a participant id), so a ban can close it; 0 if anonymous.
    pub tag: u64,
    /// What the client speaks.
    pub protocol: Protocol,
    /// Over TLS: the sealer of the connection's records (its keys left
    /// rustls after the handshake; `pending` is sealed like every unit).
    pub tls: Option<Box<amphi_tls::RecordSealer>>,
    /// Over TLS: the opener of the client's records, so a `wss` listener's
    /// control frames are read (without it they are dropped unread).
    pub tls_in: Option<Box<amphi_tls::RecordOpener>>,
}

/// The fan-out workers.
pub struct Egress {
    workers: Vec<Sender<Msg>>,
    handles: Vec<JoinHandle<()>>,
    next_worker: AtomicUsize,
    next_output: AtomicU64,
    ring: usize,
    sndbuf: Option<usize>,
    stats: Arc<EgressStats>,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("workers", &self.workers.len())
            .finish()
    }
}

/// Why the fan-out could not take a listener.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EgressError {
    #[error("the fan-out is shutting down")]
    ShuttingDown,
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

impl Egress {
    /// Starts the workers.
    pub fn start(cfg: EgressConfig) -> Result<Self, EgressError> {
        let stats = Arc::new(EgressStats::default());
        let mut workers = Vec::new();
        let mut handles = Vec::new();
        for i in 0..cfg.workers.max(1) {
            // Bounded: a worker busy for seconds makes publish drop units
            // for it (its listeners skip) instead of queueing without end.
            let (tx, rx) = crossbeam_channel::bounded(4096);
            let worker = Worker::new(rx, cfg.stall_timeout, stats.clone())?;
            let handle = std::thread::Builder::new()
                .name(format!("amphi-fanout-{i}"))
                .spawn(move || worker.run())?;
            workers.push(tx);
            handles.push(handle);
        }
        Ok(Egress {
            workers,
            handles,
            next_worker: AtomicUsize::new(0),
            next_output: AtomicU64::new(1),
            ring: cfg.ring.max(2),
            sndbuf: cfg.sndbuf,
            stats,
        })
    }

    /// The fan-out's counters.
    pub fn stats(&self) -> &Arc<EgressStats> {
        &self.stats
    }

    /// A new output with no unit yet.
    pub fn new_output(&self) -> Arc<Output> {
        self.new_output_with_ring(self.ring)
    }

    /// A new output keeping `ring` units (at least the fan-out's ring):
    /// room for a longer connect burst.
    pub fn new_output_with_ring(&self, ring: usize) -> Arc<Output> {
        let ring = ring.max(self.ring);
        Arc::new(Output {
            id: self.next_output.fetch_add(1, Ordering::Relaxed),
            recent: Mutex::new(VecDeque::with_capacity(ring)),
            ring,
            listeners: AtomicU64::new(0),
            next_seq: AtomicU64::new(0),
        })
    }

    /// Publishes the next unit of `output` to every listener.
    pub fn publish(&self, output: &Arc<Output>, bytes: Bytes, last_frame: u64) {
        let seq = output.next_seq.load(Ordering::Acquire);
        let unit = Unit {
            seq,
            last_frame,
            bytes,
        };
        {
            let mut r = output.recent.lock();
            if r.len() == output.ring {
                r.pop_front();
            }
            r.push_back(unit.clone());
            // SeqCst with the listener count below and in `hand_over`: a
            // unit not sent to the workers is one a new listener's worker
            // knows to take from the ring.
            output.next_seq.store(seq + 1, Ordering::SeqCst);
        }
        self.stats.units_published.fetch_add(1, Ordering::Relaxed);
        // No listener: the ring above is all (a listener handed over later
        // is counted before its worker hears of it, and that worker takes
        // the units it lacks from the ring).
        if output.listeners.load(Ordering::SeqCst) == 0 {
            return;
        }
        for w in &self.workers {
            // A full queue means the worker is far behind: dropping this unit
            // makes its listeners skip ahead, which is the policy anyway.
            let _ = w.try_send(Msg::Unit {
                output: output.clone(),
                unit: unit.clone(),
            });
        }
    }

    /// Takes one listener place if fewer than `max` are held. Admission
    /// and counting are one atomic step, so concurrent joins never exceed
    /// `max`. Give the place to [`Egress::add_reserved_listener`] or back
    /// with [`Egress::release`].
    pub fn try_reserve(&self, max: u64) -> bool {
        self.stats
            .listeners
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Returns a place taken with [`Egress::try_reserve`] and not used.
    pub fn release(&self) {
        self.stats.listeners.fetch_sub(1, Ordering::AcqRel);
    }

    /// Hands a listener whose place was reserved to a worker.
    pub fn add_reserved_listener(
        &self,
        output: &Arc<Output>,
        listener: NewListener,
    ) -> Result<(), EgressError> {
        self.hand_over(output, listener, true)
    }

    /// Hands a listener to a worker (round-robin).
    pub fn add_listener(
        &self,
        output: &Arc<Output>,
        listener: NewListener,
    ) -> Result<(), EgressError> {
        self.hand_over(output, listener, false)
    }

    fn hand_over(
        &self,
        output: &Arc<Output>,
        listener: NewListener,
        reserved: bool,
    ) -> Result<(), EgressError> {
        if !reserved {
            self.stats.listeners.fetch_add(1, Ordering::AcqRel);
        }
        // From here on the node-wide count includes this listener; every
        // failure gives the place back.
        let undo = |e: EgressError| {
            self.stats.listeners.fetch_sub(1, Ordering::AcqRel);
            e
        };
        listener
            .stream
            .set_nonblocking(true)
            .map_err(|e| undo(e.into()))?;
        let _ = listener.stream.set_nodelay(true);
        if let Some(n) = self.sndbuf {
            let _ = socket2::SockRef::from(&listener.stream).set_send_buffer_size(n);
        }
        let i = self.next_worker.fetch_add(1, Ordering::Relaxed) % self.workers.len();
        output.listeners.fetch_add(1, Ordering::SeqCst);
        // Every unit from here on is sent to the workers (`publish` sees
        // the count); those before may not have been.
        let sent_from = output.next_seq.load(Ordering::SeqCst);
        self.stats.listeners_added.fetch_add(1, Ordering::Relaxed);
        let msg = Msg::Add {
            output: output.clone(),
            listener,
            sent_from,
        };
        if self.workers[i].send(msg).is_err() {
            output.listeners.fetch_sub(1, Ordering::Relaxed);
            return Err(undo(EgressError::ShuttingDown));
        }
        Ok(())
    }

    /// Closes every listener of `output` (the space ended).
    pub fn close_output(&self, output: &Arc<Output>) {
        for w in &self.workers {
            let _ = w.send(Msg::CloseOutput { output: output.id });
        }
    }

    /// Closes every listener tagged `tag` on any output (a removal or ban).
    pub fn close_tag(&self, tag: u64) {
        if tag == 0 {
            return;
        }
        for w in &self.workers {
            let _ = w.send(Msg::CloseTag { tag });
        }
    }

    /// Stops the workers, closing every listener.
    pub fn shutdown(self) {
        for w in &self.workers {
            let _ = w.send(Msg::Shutdown);
        }
        for h in self.handles {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod resume_tests {
    use super::*;

    fn output(units: &[u64]) -> Output {
        let recent = units
            .iter()
            .enumerate()
            .map(|(i, last)| Unit {
                seq: i as u64,
                last_frame: *last,
                bytes: Bytes::new(),
            })
            .collect();
        Output {
            id: 0,
            recent: Mutex::new(recent),
            ring: 64,
            listeners: AtomicU64::new(0),
            next_seq: AtomicU64::new(units.len() as u64),
        }
    }

    #[test]
    fn a_resume_starts_at_the_first_whole_unit_past_the_margin() {
        // 20 units of 5 frames: unit i carries frames 5i..=5i+4.
        let o = output(&(0..20).map(|i| 5 * i + 4).collect::<Vec<_>>());
        // From frame 0: the margin's units are left to the caller.
        assert_eq!(o.resume_point(0), Some((BURST_MARGIN as u64, 39)));
        // From frame 52: unit 11 (frames 55..=59) is the first whole one.
        assert_eq!(o.resume_point(52), Some((11, 54)));
        // From frame 55: unit 11 exactly.
        assert_eq!(o.resume_point(55), Some((11, 54)));
        // Past every unit: nothing to share.
        assert_eq!(o.resume_point(98), None);
        assert_eq!(output(&[4, 9]).resume_point(0), None);
    }
}
