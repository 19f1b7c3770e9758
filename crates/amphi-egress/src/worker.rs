//! A fan-out worker: one thread, many listeners, non-blocking writes, and
//! reads driven by readiness (one epoll set per worker).

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use slab::Slab;

use crate::slot::{Service, Slot, Tally, Units};
use crate::{EgressStats, NewListener, Output, Unit};

pub(crate) enum Msg {
    Unit {
        output: Arc<Output>,
        unit: Unit,
    },
    Add {
        output: Arc<Output>,
        listener: NewListener,
        /// The output's next unit number once this listener was counted:
        /// units from it on come as [`Msg::Unit`], those before may not.
        sent_from: u64,
    },
    CloseOutput {
        output: u64,
    },
    CloseTag {
        tag: u64,
    },
    Shutdown,
}

/// The units a worker keeps for one output, consecutive numbers.
struct Recent {
    units: VecDeque<(u64, Bytes)>,
    cap: usize,
    /// The newest unit number that came as a [`Msg::Unit`] (kept or not).
    arrived: Option<u64>,
}

impl Units for Recent {
    fn oldest(&self) -> Option<u64> {
        self.units.front().map(|(s, _)| *s)
    }

    fn newest(&self) -> Option<u64> {
        self.units.back().map(|(s, _)| *s)
    }

    fn get(&self, seq: u64) -> Option<&Bytes> {
        let first = self.units.front()?.0;
        let i = usize::try_from(seq.checked_sub(first)?).ok()?;
        self.units.get(i).map(|(_, b)| b)
    }
}

impl Recent {
    fn push(&mut self, seq: u64, bytes: Bytes) {
        if let Some(&(last, _)) = self.units.back()
            && seq <= last
        {
            // Already taken from the output's ring (see `seed`).
            return;
        }
        if let Some((last, _)) = self.units.back()
            && seq != last + 1
        {
            // A unit was dropped on the way to this worker: restart the run
            // so lookups stay consecutive; listeners skip to this unit.
            self.units.clear();
        }
        if self.units.len() == self.cap {
            self.units.pop_front();
        }
        self.units.push_back((seq, bytes));
    }

    /// Catches up with the output's own ring: copies of the units this
    /// worker has not kept (it keeps none while it serves nobody there)
    /// that already came or will never come (published before the first
    /// listener was counted, see [`Msg::Add`]). Those still on their way
    /// are taken as they come, as before, so a new listener is not found
    /// behind units it could not have been sent yet.
    fn seed(&mut self, output: &Output, sent_from: u64) {
        let upto = self
            .arrived
            .map_or(sent_from, |a| a.saturating_add(1).max(sent_from));
        let shared = output.recent.lock();
        let newest = self.newest();
        for u in shared
            .iter()
            .filter(|u| u.seq < upto && newest.is_none_or(|n| u.seq > n))
        {
            self.push(u.seq, Bytes::copy_from_slice(&u.bytes));
        }
    }
}

struct OutState {
    output: Arc<Output>,
    recent: Recent,
    slots: Vec<Slot>,
}

/// Where a poll token's listener lives: its output and index in `slots`.
type Where = (u64, usize);

pub(crate) struct Worker {
    rx: Receiver<Msg>,
    stall: Duration,
    stats: Arc<EgressStats>,
    outputs: HashMap<u64, OutState>,
    poll: Poll,
    events: Events,
    tokens: Slab<Where>,
    /// Where TLS listeners' units are sealed, one at a time.
    scratch: Vec<u8>,
}

/// How often stalled listeners are retried and timed out between units.
const HOUSEKEEPING: Duration = Duration::from_millis(200);
/// Longest wait for readiness while no message comes: the worst delay of
/// a control reply on an output that publishes nothing.
const POLL_EVERY: Duration = Duration::from_millis(50);
/// Readiness is polled at most this often while messages keep coming.
const POLL_MIN_GAP: Duration = Duration::from_millis(5);

impl Worker {
    pub(crate) fn new(
        rx: Receiver<Msg>,
        stall: Duration,
        stats: Arc<EgressStats>,
    ) -> std::io::Result<Self> {
        Ok(Worker {
            rx,
            stall,
            stats,
            outputs: HashMap::new(),
            poll: Poll::new()?,
            events: Events::with_capacity(256),
            tokens: Slab::new(),
            scratch: Vec::with_capacity(64 * 1024),
        })
    }

    pub(crate) fn run(mut self) {
        let mut last_sweep = Instant::now();
        let mut last_poll = Instant::now();
        loop {
            let mut timed_out = false;
            match self.rx.recv_timeout(POLL_EVERY) {
                Ok(Msg::Unit { output, unit }) => match self.state(&output) {
                    st if !st.slots.is_empty() => {
                        st.recent.arrived = Some(unit.seq);
                        // A copy of its own per worker (one per unit, a few
                        // hundred bytes): the reference count every
                        // listener's handle takes and drops then stays in
                        // this core's cache instead of bouncing between the
                        // workers.
                        st.recent
                            .push(unit.seq, Bytes::copy_from_slice(&unit.bytes));
                        self.service_output(output.id, false);
                    }
                    // Nobody here listens: nothing kept, nothing to send (a
                    // listener added later is seeded from the output's
                    // ring). Most outputs of small spaces have no listener
                    // on most workers.
                    st => {
                        st.recent.arrived = Some(unit.seq);
                        if !st.recent.units.is_empty() {
                            st.recent.units = VecDeque::new();
                        }
                    }
                },
                Ok(Msg::Add {
                    output,
                    listener,
                    sent_from,
                }) => self.add(&output, listener, sent_from),
                Ok(Msg::CloseOutput { output }) => {
                    if let Some(mut st) = self.outputs.remove(&output) {
                        for slot in st.slots.drain(..) {
                            forget(&mut self.tokens, self.poll.registry(), &slot);
                            closed(&self.stats, &st.output, Service::Gone);
                            drop(slot);
                        }
                    }
                }
                Ok(Msg::CloseTag { tag }) => {
                    for st in self.outputs.values_mut() {
                        let mut i = 0;
                        while i < st.slots.len() {
                            if st.slots[i].tag == tag {
                                let slot = remove(st, &mut self.tokens, self.poll.registry(), i);
                                // Counted out before its socket closes.
                                closed(&self.stats, &st.output, Service::Gone);
                                drop(slot);
                            } else {
                                i += 1;
                            }
                        }
                    }
                }
                Ok(Msg::Shutdown) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => timed_out = true,
            }
            if (timed_out || last_poll.elapsed() >= POLL_MIN_GAP) && !self.tokens.is_empty() {
                last_poll = Instant::now();
                self.poll_reads();
            }
            if last_sweep.elapsed() >= HOUSEKEEPING {
                last_sweep = Instant::now();
                let ids: Vec<u64> = self.outputs.keys().copied().collect();
                for id in ids {
                    self.service_output(id, true);
                }
                self.outputs
                    .retain(|_, st| !st.slots.is_empty() || Arc::strong_count(&st.output) > 1);
            }
        }
        for (_, st) in self.outputs.drain() {
            let n = st.slots.len() as u64;
            st.output.listeners.fetch_sub(n, Ordering::Relaxed);
            self.stats.listeners.fetch_sub(n, Ordering::Relaxed);
        }
    }

    fn state(&mut self, output: &Arc<Output>) -> &mut OutState {
        self.outputs.entry(output.id).or_insert_with(|| OutState {
            output: output.clone(),
            recent: Recent {
                units: VecDeque::new(),
                cap: output.ring,
                arrived: None,
            },
            slots: Vec::new(),
        })
    }

    fn add(&mut self, output: &Arc<Output>, listener: NewListener, sent_from: u64) {
        let NewListener {
            stream,
            pending,
            next_unit,
            burst_to,
            tag,
            protocol,
            tls,
            tls_in,
        } = listener;
        let mut slot = Slot::new(stream, pending, next_unit, tag, protocol).with_tls(tls, tls_in);
        slot.burst_to = burst_to;
        let id = output.id;
        let st = self.state(output);
        st.recent.seed(output, sent_from);
        let index = st.slots.len();
        let token = self.tokens.insert((id, index));
        let fd = slot.stream.as_raw_fd();
        match self
            .poll
            .registry()
            .register(&mut SourceFd(&fd), Token(token), Interest::READABLE)
        {
            Ok(()) => slot.token = token,
            Err(e) => {
                // Served without reads (as before there were any): the
                // worst is an unanswered ping.
                tracing::warn!(error = %e, "could not watch a listener socket");
                self.tokens.remove(token);
            }
        }
        self.state(output).slots.push(slot);
        let Some(st) = self.outputs.get_mut(&id) else {
            return;
        };
        // Only the new listener: its head and connect burst go out now;
        // the others are serviced by their units and the housekeeping
        // (walking every slot per arrival made a join storm quadratic).
        let now = Instant::now();
        let mut tally = Tally::default();
        let verdict =
            st.slots[index].service(&st.recent, now, self.stall, &mut tally, &mut self.scratch);
        if verdict != Service::Keep {
            let slot = remove(st, &mut self.tokens, self.poll.registry(), index);
            closed(&self.stats, &st.output, verdict);
            drop(slot);
        }
        self.count(tally);
    }

    /// Reads every listener the kernel reports readable, and sends what
    /// that queued (pongs, close replies).
    fn poll_reads(&mut self) {
        if let Err(e) = self.poll.poll(&mut self.events, Some(Duration::ZERO)) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                tracing::warn!(error = %e, "fan-out poll failed");
            }
            return;
        }
        let now = Instant::now();
        let mut tally = Tally::default();
        for ev in self.events.iter() {
            let Some(&(out, i)) = self.tokens.get(ev.token().0) else {
                continue;
            };
            let Some(st) = self.outputs.get_mut(&out) else {
                continue;
            };
            let Some(slot) = st.slots.get_mut(i) else {
                continue;
            };
            let verdict = match slot.read(now) {
                Ok(()) if slot.busy() => {
                    slot.service(&st.recent, now, self.stall, &mut tally, &mut self.scratch)
                }
                Ok(()) => Service::Keep,
                Err(v) => v,
            };
            if verdict != Service::Keep {
                let slot = remove(st, &mut self.tokens, self.poll.registry(), i);
                closed(&self.stats, &st.output, verdict);
                drop(slot);
            }
        }
        self.count(tally);
    }

    /// Services the listeners of one output. `only_behind` limits the walk
    /// to listeners with bytes in flight (housekeeping and new listeners).
    fn service_output(&mut self, id: u64, only_behind: bool) {
        let Some(st) = self.outputs.get_mut(&id) else {
            return;
        };
        let now = Instant::now();
        let mut tally = Tally::default();
        let mut i = 0;
        while i < st.slots.len() {
            let slot = &mut st.slots[i];
            if only_behind && !slot.busy() && slot.next_unit > st.recent.newest().unwrap_or(0) {
                i += 1;
                continue;
            }
            match slot.service(&st.recent, now, self.stall, &mut tally, &mut self.scratch) {
                Service::Keep => i += 1,
                verdict => {
                    let slot = remove(st, &mut self.tokens, self.poll.registry(), i);
                    closed(&self.stats, &st.output, verdict);
                    drop(slot);
                }
            }
        }
        self.count(tally);
    }

    fn count(&self, tally: Tally) {
        let s = &self.stats;
        s.bytes_written.fetch_add(tally.bytes, Ordering::Relaxed);
        s.writes.fetch_add(tally.writes, Ordering::Relaxed);
        s.units_skipped.fetch_add(tally.skipped, Ordering::Relaxed);
        s.pongs.fetch_add(tally.pongs, Ordering::Relaxed);
    }
}

/// Takes slot `i` out of its output (the last slot moves into its place)
/// and stops watching its socket. The socket closes when the returned slot
/// drops: count it out first, so a peer that sees the close sees the count.
fn remove(st: &mut OutState, tokens: &mut Slab<Where>, registry: &Registry, i: usize) -> Slot {
    let slot = st.slots.swap_remove(i);
    forget(tokens, registry, &slot);
    if let Some(moved) = st.slots.get(i)
        && let Some(w) = tokens.get_mut(moved.token)
    {
        w.1 = i;
    }
    slot
}

fn forget(tokens: &mut Slab<Where>, registry: &Registry, slot: &Slot) {
    if tokens.try_remove(slot.token).is_some() {
        let _ = registry.deregister(&mut SourceFd(&slot.stream.as_raw_fd()));
    }
}

fn closed(stats: &EgressStats, output: &Output, why: Service) {
    output.listeners.fetch_sub(1, Ordering::Relaxed);
    stats.listeners.fetch_sub(1, Ordering::Relaxed);
    match why {
        Service::Stalled => stats.closed_slow.fetch_add(1, Ordering::Relaxed),
        Service::Closed => stats.closed_ws.fetch_add(1, Ordering::Relaxed),
        _ => stats.closed_gone.fetch_add(1, Ordering::Relaxed),
    };
}
