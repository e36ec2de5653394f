//! One client's outgoing queue. Pure, no I/O.
//!
//! Positions are coalesced per vehicle: a newer position of a vehicle
//! replaces the one still waiting (and takes the newer sequence number),
//! so a slow client always gets the newest and the positions waiting are
//! at most one per vehicle. Events are never coalesced: they wait in order,
//! at most `max_events` of them and `max_bytes` in all; one more and the
//! queue overflows: everything waiting is dropped (counted), nothing more
//! is taken, and the client is to be told what it missed and the resume
//! token of the last message it was handed, then disconnected.
//!
//! Messages leave in sequence order, so a client's resume token (the
//! sequence number of the last message it got) never skips one it has
//! not seen.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

/// A message waiting: its sequence number, its kind (the SSE event name)
/// and its JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// Sequence number.
    pub seq: u64,
    /// `position` or `event`.
    pub kind: &'static str,
    /// The message.
    pub json: Arc<str>,
}

/// What the queue reports after it overflowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Overflow {
    /// Events dropped.
    pub missed_events: u64,
    /// Positions dropped (at most one per vehicle was waiting).
    pub missed_positions: u64,
    /// The sequence number of the last message handed out.
    pub resume_seq: u64,
    /// Whether the process-wide budget (not the client's own) was the
    /// bound hit.
    pub total: bool,
}

/// The result of offering a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued; carries the change in queued bytes.
    Queued(isize),
    /// Replaced a waiting position of the same vehicle.
    Coalesced(isize),
    /// The queue overflowed now (or had before); carries the change in
    /// queued bytes (what was dropped).
    Overflowed(isize),
}

/// One client's queue.
#[derive(Debug)]
pub struct ClientQueue {
    events: VecDeque<Queued>,
    positions: BTreeMap<u64, (Arc<str>, Queued)>,
    by_vehicle: HashMap<Arc<str>, u64>,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
    last_seq: u64,
    overflow: Option<Overflow>,
}

impl ClientQueue {
    /// A queue of at most `max_events` events and `max_bytes` in all.
    pub fn new(max_events: usize, max_bytes: usize) -> Self {
        Self {
            events: VecDeque::new(),
            positions: BTreeMap::new(),
            by_vehicle: HashMap::new(),
            bytes: 0,
            max_events,
            max_bytes,
            last_seq: 0,
            overflow: None,
        }
    }

    /// Bytes waiting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.events.len() + self.positions.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The overflow, once it happened.
    pub fn overflow(&self) -> Option<Overflow> {
        self.overflow
    }

    /// The sequence number of the last message handed out (or set by
    /// [`ClientQueue::restart`]).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Drops what waits (a new subscription) and starts after `seq`.
    /// Returns the change in bytes.
    pub fn restart(&mut self, seq: u64) -> isize {
        let freed = self.bytes;
        self.events.clear();
        self.positions.clear();
        self.by_vehicle.clear();
        self.bytes = 0;
        self.last_seq = seq;
        -(freed as isize)
    }

    /// A replay that could not keep up with the resume window: an
    /// overflow with nothing counted (what was missed is not known).
    pub fn fell_behind(&mut self) {
        if self.overflow.is_none() {
            self.overflowed(0, false);
        }
    }

    fn overflowed(&mut self, missed_events: u64, total: bool) -> Offer {
        if let Some(o) = &mut self.overflow {
            o.missed_events += missed_events;
            return Offer::Overflowed(0);
        }
        let overflow = Overflow {
            missed_events: self.events.len() as u64 + missed_events,
            missed_positions: self.positions.len() as u64,
            resume_seq: self.last_seq,
            total,
        };
        let freed = self.restart(self.last_seq);
        self.overflow = Some(overflow);
        Offer::Overflowed(freed)
    }

    /// Offers an event; `budget` is what the process-wide bound still
    /// allows.
    pub fn event(&mut self, message: Queued, budget: usize) -> Offer {
        if self.overflow.is_some() {
            return self.overflowed(1, false);
        }
        let size = message.json.len();
        if self.events.len() >= self.max_events || self.bytes + size > self.max_bytes {
            return self.overflowed(1, false);
        }
        if size > budget {
            return self.overflowed(1, true);
        }
        self.bytes += size;
        self.events.push_back(message);
        Offer::Queued(size as isize)
    }

    /// Offers a position of `vehicle`, replacing the one waiting.
    pub fn position(&mut self, vehicle: &Arc<str>, message: Queued, budget: usize) -> Offer {
        if self.overflow.is_some() {
            return Offer::Overflowed(0);
        }
        let size = message.json.len();
        let old = self
            .by_vehicle
            .get(vehicle)
            .and_then(|seq| self.positions.get(seq))
            .map_or(0, |(_, q)| q.json.len());
        let grows = size.saturating_sub(old);
        if self.bytes + grows > self.max_bytes {
            return self.overflowed(0, false);
        }
        if grows > budget {
            return self.overflowed(0, true);
        }
        let replaced = self
            .by_vehicle
            .insert(Arc::clone(vehicle), message.seq)
            .and_then(|seq| self.positions.remove(&seq));
        self.positions
            .insert(message.seq, (Arc::clone(vehicle), message));
        self.bytes = self.bytes + size - old;
        let delta = size as isize - old as isize;
        if replaced.is_some() {
            Offer::Coalesced(delta)
        } else {
            Offer::Queued(delta)
        }
    }

    /// The oldest message waiting, and the change in bytes.
    pub fn pop(&mut self) -> Option<(Queued, isize)> {
        let event = self.events.front().map(|q| q.seq);
        let position = self.positions.keys().next().copied();
        let message = match (event, position) {
            (Some(e), Some(p)) if p < e => self.take_position(p),
            (None, Some(p)) => self.take_position(p),
            (Some(_), _) => self.events.pop_front(),
            (None, None) => None,
        }?;
        self.bytes -= message.json.len();
        self.last_seq = message.seq;
        let size = message.json.len() as isize;
        Some((message, -size))
    }

    fn take_position(&mut self, seq: u64) -> Option<Queued> {
        let (vehicle, message) = self.positions.remove(&seq)?;
        self.by_vehicle.remove(&vehicle);
        Some(message)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    fn q(seq: u64, kind: &'static str) -> Queued {
        Queued {
            seq,
            kind,
            json: format!("{kind}-{seq}").into(),
        }
    }

    #[test]
    fn positions_coalesce_per_vehicle_and_leave_in_order() {
        let mut c = ClientQueue::new(10, 10_000);
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        assert!(matches!(
            c.position(&a, q(1, "position"), usize::MAX),
            Offer::Queued(_)
        ));
        assert!(matches!(
            c.event(q(2, "event"), usize::MAX),
            Offer::Queued(_)
        ));
        assert!(matches!(
            c.position(&b, q(3, "position"), usize::MAX),
            Offer::Queued(_)
        ));
        assert!(matches!(
            c.position(&a, q(4, "position"), usize::MAX),
            Offer::Coalesced(_)
        ));
        let order: Vec<u64> = std::iter::from_fn(|| c.pop().map(|(m, _)| m.seq)).collect();
        assert_eq!(order, [2, 3, 4]);
        assert_eq!((c.bytes(), c.last_seq()), (0, 4));
    }

    #[test]
    fn events_overflow_and_report_what_was_missed() {
        let mut c = ClientQueue::new(2, 10_000);
        let a: Arc<str> = "a".into();
        c.event(q(1, "event"), usize::MAX);
        c.pop();
        c.event(q(2, "event"), usize::MAX);
        c.position(&a, q(3, "position"), usize::MAX);
        c.event(q(4, "event"), usize::MAX);
        assert!(matches!(c.event(q(5, "event"), usize::MAX), Offer::Overflowed(d) if d < 0));
        c.event(q(6, "event"), usize::MAX);
        let o = c.overflow().unwrap();
        assert_eq!(
            (o.missed_events, o.missed_positions, o.resume_seq, o.total),
            (4, 1, 1, false)
        );
        assert!(c.pop().is_none());
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn the_process_budget_overflows_too() {
        let mut c = ClientQueue::new(10, 10_000);
        assert!(matches!(c.event(q(1, "event"), 3), Offer::Overflowed(_)));
        assert!(c.overflow().unwrap().total);
    }

    proptest! {
        /// Whatever is offered, the queue stays within its bounds, hands
        /// out increasing sequence numbers, never more than one position
        /// per vehicle, and every event offered before an overflow either
        /// comes out or is counted missed.
        #[test]
        fn bounded_ordered_and_accounted(ops in proptest::collection::vec((0u8..4, 0u8..3), 1..300)) {
            let mut c = ClientQueue::new(5, 400);
            let vehicles: Vec<Arc<str>> = ["a", "b", "c"].iter().map(|v| Arc::from(*v)).collect();
            let (mut seq, mut last, mut offered, mut out) = (0u64, 0u64, 0u64, 0u64);
            let mut bytes: isize = 0;
            for (op, v) in ops {
                match op {
                    0 => if let Some((m, d)) = c.pop() {
                        prop_assert!(m.seq > last);
                        last = m.seq;
                        bytes += d;
                        if m.kind == "event" { out += 1; }
                    },
                    1 => {
                        seq += 1;
                        offered += 1;
                        match c.event(q(seq, "event"), usize::MAX) {
                            Offer::Queued(d) | Offer::Coalesced(d) | Offer::Overflowed(d) => bytes += d,
                        }
                    }
                    _ => {
                        seq += 1;
                        match c.position(&vehicles[v as usize], q(seq, "position"), usize::MAX) {
                            Offer::Queued(d) | Offer::Coalesced(d) | Offer::Overflowed(d) => bytes += d,
                        }
                    }
                }
                prop_assert!(c.bytes() <= 400 && c.events.len() <= 5 && c.positions.len() <= 3);
                prop_assert_eq!(bytes, c.bytes() as isize);
            }
            let waiting = c.events.len() as u64;
            let missed = c.overflow().map_or(0, |o| o.missed_events);
            prop_assert_eq!(offered, out + waiting + missed);
        }
    }
}
