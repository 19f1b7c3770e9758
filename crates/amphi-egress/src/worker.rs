//! A fan-out worker: one thread, many listeners, non-blocking writes.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError};

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
}

impl Units for Recent {
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
}

struct OutState {
    output: Arc<Output>,
    recent: Recent,
    slots: Vec<Slot>,
}

pub(crate) struct Worker {
    rx: Receiver<Msg>,
    stall: Duration,
    ring: usize,
    stats: Arc<EgressStats>,
    outputs: HashMap<u64, OutState>,
    /// Where TLS listeners' units are sealed, one at a time.
    scratch: Vec<u8>,
}

/// How often stalled listeners are retried and timed out between units.
const HOUSEKEEPING: Duration = Duration::from_millis(200);

impl Worker {
    pub(crate) fn new(
        rx: Receiver<Msg>,
        stall: Duration,
        ring: usize,
        stats: Arc<EgressStats>,
    ) -> Self {
        Worker {
            rx,
            stall,
            ring: ring.max(2),
            stats,
            outputs: HashMap::new(),
            scratch: Vec::with_capacity(64 * 1024),
        }
    }

    pub(crate) fn run(mut self) {
        let mut last_sweep = Instant::now();
        loop {
            match self.rx.recv_timeout(HOUSEKEEPING) {
                Ok(Msg::Unit { output, unit }) => {
                    let st = self.state(&output);
                    st.recent.push(unit.seq, unit.bytes);
                    self.service_output(output.id, false);
                }
                Ok(Msg::Add { output, listener }) => {
                    let st = self.state(&output);
                    let NewListener {
                        stream,
                        pending,
                        next_unit,
                        tag,
                        tls,
                    } = listener;
                    st.slots
                        .push(Slot::new(stream, pending, next_unit, tag).with_tls(tls));
                    self.service_output(output.id, true);
                }
                Ok(Msg::CloseOutput { output }) => {
                    if let Some(st) = self.outputs.remove(&output) {
                        for _ in st.slots.iter() {
                            self.closed(&st.output, Service::Gone);
                        }
                    }
                }
                Ok(Msg::CloseTag { tag }) => {
                    for st in self.outputs.values_mut() {
                        let before = st.slots.len();
                        st.slots.retain(|s| s.tag != tag);
                        let n = (before - st.slots.len()) as u64;
                        st.output.listeners.fetch_sub(n, Ordering::Relaxed);
                        self.stats.listeners.fetch_sub(n, Ordering::Relaxed);
                        self.stats.closed_gone.fetch_add(n, Ordering::Relaxed);
                    }
                }
                Ok(Msg::Shutdown) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
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
        let ring = self.ring;
        self.outputs.entry(output.id).or_insert_with(|| OutState {
            output: output.clone(),
            recent: Recent {
                units: VecDeque::with_capacity(ring),
                cap: ring,
            },
            slots: Vec::new(),
        })
    }

    /// Services the listeners of one output. `only_behind` limits the walk
    /// to listeners with bytes in flight (housekeeping and new listeners).
    fn service_output(&mut self, id: u64, only_behind: bool) {
        let Some(st) = self.outputs.get_mut(&id) else {
            return;
        };
        let now = Instant::now();
        let mut tally = Tally::default();
        let mut closed: Vec<Service> = Vec::new();
        let mut i = 0;
        while i < st.slots.len() {
            let slot = &mut st.slots[i];
            if only_behind && !slot.in_flight() && slot.next_unit > st.recent.newest().unwrap_or(0)
            {
                i += 1;
                continue;
            }
            match slot.service(&st.recent, now, self.stall, &mut tally, &mut self.scratch) {
                Service::Keep => i += 1,
                verdict => {
                    st.slots.swap_remove(i);
                    closed.push(verdict);
                }
            }
        }
        let output = st.output.clone();
        for verdict in closed {
            self.closed(&output, verdict);
        }
        self.stats
            .bytes_written
            .fetch_add(tally.bytes, Ordering::Relaxed);
        self.stats.writes.fetch_add(tally.writes, Ordering::Relaxed);
        self.stats
            .units_skipped
            .fetch_add(tally.skipped, Ordering::Relaxed);
    }

    fn closed(&self, output: &Output, why: Service) {
        output.listeners.fetch_sub(1, Ordering::Relaxed);
        self.stats.listeners.fetch_sub(1, Ordering::Relaxed);
        match why {
            Service::Stalled => self.stats.closed_slow.fetch_add(1, Ordering::Relaxed),
            _ => self.stats.closed_gone.fetch_add(1, Ordering::Relaxed),
        };
    }
}
