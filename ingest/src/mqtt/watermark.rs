//! Per-vehicle durable-sequence watermarks for the embedded broker's
//! acknowledgement topic.
//!
//! rumqttd acknowledges a publish on receipt, so firmware cannot use the
//! PUBACK to drop its store-and-forward buffer. Instead fleetpipe publishes
//! `{"ack": N}` on `{prefix}/{vehicle_id}/ack`, where N means: **every ping of
//! this vehicle with `seq <= N` that fleetpipe received is durable.**
//!
//! Messages settle out of order (they are written in parallel), so the
//! watermark only moves over a prefix of settled messages in arrival order. A
//! message that failed stops it: nothing above the failed message's lowest
//! seq is acknowledged until a message starting at or below that seq (the
//! device's resend from its last ack) is durable. A vehicle with nothing in
//! flight is forgotten, so after a replay of old data (or a fleetpipe
//! restart) an ack may be lower than one sent before: devices keep the
//! highest ack they have seen. Pure and synchronous.

use std::collections::{BTreeMap, HashMap};

use fleetpipe_model::AckStatus;

/// A message of one vehicle, from its arrival to its outcome.
#[derive(Debug, Clone, Copy)]
struct Slot {
    min_seq: u64,
    max_seq: u64,
    status: Option<AckStatus>,
}

#[derive(Debug, Default)]
struct VehicleState {
    next_id: u64,
    /// Unsettled (or settled but not yet at the front) messages by arrival.
    inflight: BTreeMap<u64, Slot>,
    /// Highest acknowledged seq.
    watermark: Option<u64>,
    /// Lowest seq of a failed message not yet resent durably.
    failed_floor: Option<u64>,
}

/// Identifies a message registered with [`Watermarks::arrived`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageTicket {
    vehicle: String,
    id: u64,
}

/// Watermarks of every vehicle with messages in flight or acknowledged.
#[derive(Debug, Default)]
pub struct Watermarks {
    /// foldhash: SipHash was most of this map's cost per message.
    vehicles: HashMap<String, VehicleState, foldhash::fast::RandomState>,
}

impl Watermarks {
    /// Registers a message carrying seqs `min_seq..=max_seq`, in arrival order.
    pub fn arrived(&mut self, vehicle: &str, min_seq: u64, max_seq: u64) -> MessageTicket {
        let state = self.vehicles.entry(vehicle.to_owned()).or_default();
        let id = state.next_id;
        state.next_id += 1;
        state.inflight.insert(
            id,
            Slot {
                min_seq,
                max_seq,
                status: None,
            },
        );
        MessageTicket {
            vehicle: vehicle.to_owned(),
            id,
        }
    }

    /// Records a message's outcome; returns the vehicle's new watermark if it moved.
    pub fn settled(&mut self, ticket: &MessageTicket, status: AckStatus) -> Option<u64> {
        let state = self.vehicles.get_mut(&ticket.vehicle)?;
        if let Some(slot) = state.inflight.get_mut(&ticket.id) {
            slot.status = Some(status);
        }
        let before = state.watermark;
        while let Some(entry) = state.inflight.first_entry() {
            let Some(status) = entry.get().status else {
                break;
            };
            let slot = entry.remove();
            match status {
                AckStatus::Delivered => {
                    if state
                        .failed_floor
                        .is_some_and(|floor| slot.min_seq <= floor)
                    {
                        state.failed_floor = None;
                    }
                    if state.failed_floor.is_none() {
                        state.watermark = Some(
                            state
                                .watermark
                                .map_or(slot.max_seq, |w| w.max(slot.max_seq)),
                        );
                    }
                }
                AckStatus::Failed => {
                    state.failed_floor = Some(
                        state
                            .failed_floor
                            .map_or(slot.min_seq, |f| f.min(slot.min_seq)),
                    );
                }
            }
        }
        let moved = if state.watermark != before {
            state.watermark
        } else {
            None
        };
        if state.inflight.is_empty() && state.failed_floor.is_none() {
            // Nothing pending: forget the vehicle, so memory follows the
            // vehicles in flight, not the fleet. Its next durable message
            // starts a new watermark at that message's highest seq.
            self.vehicles.remove(&ticket.vehicle);
        }
        moved
    }

    /// Records the outcomes of messages that settled together and returns
    /// the acks to publish for them: one per vehicle whose watermark moved,
    /// with its newest watermark (what the last of its individual acks would
    /// have said). Acks of messages that settle together thus go out as one
    /// publish per vehicle, however many of its messages settled.
    pub fn settled_together(
        &mut self,
        outcomes: impl IntoIterator<Item = (MessageTicket, AckStatus)>,
    ) -> Vec<(String, u64)> {
        let mut acks: HashMap<String, u64, foldhash::fast::RandomState> = HashMap::default();
        for (ticket, status) in outcomes {
            if let Some(seq) = self.settled(&ticket, status) {
                acks.insert(ticket.vehicle, seq);
            }
        }
        acks.into_iter().collect()
    }

    /// Vehicles currently tracked.
    pub fn len(&self) -> usize {
        self.vehicles.len()
    }

    /// Whether no vehicle is tracked.
    pub fn is_empty(&self) -> bool {
        self.vehicles.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AckStatus::{Delivered, Failed};

    #[test]
    fn in_order_delivery_advances() {
        let mut w = Watermarks::default();
        let a = w.arrived("v", 1, 3);
        let b = w.arrived("v", 4, 4);
        assert_eq!(w.settled(&a, Delivered), Some(3));
        assert_eq!(w.settled(&b, Delivered), Some(4));
    }

    #[test]
    fn waits_for_earlier_messages() {
        let mut w = Watermarks::default();
        let a = w.arrived("v", 1, 1);
        let b = w.arrived("v", 2, 2);
        assert_eq!(
            w.settled(&b, Delivered),
            None,
            "message 1 is not durable yet"
        );
        assert_eq!(w.settled(&a, Delivered), Some(2));
    }

    #[test]
    fn a_failure_stops_the_watermark_until_the_resend_is_durable() {
        let mut w = Watermarks::default();
        let a = w.arrived("v", 1, 2);
        let b = w.arrived("v", 3, 4);
        let c = w.arrived("v", 5, 6);
        assert_eq!(w.settled(&a, Delivered), Some(2));
        assert_eq!(w.settled(&b, Failed), None);
        assert_eq!(
            w.settled(&c, Delivered),
            None,
            "5..6 durable, but 3..4 is not"
        );
        // The device resends from its last ack (2) + 1.
        let resend = w.arrived("v", 3, 6);
        assert_eq!(w.settled(&resend, Delivered), Some(6));
    }

    #[test]
    fn a_partial_resend_above_the_floor_does_not_clear_it() {
        let mut w = Watermarks::default();
        let a = w.arrived("v", 1, 2);
        assert_eq!(w.settled(&a, Failed), None);
        let b = w.arrived("v", 2, 3);
        assert_eq!(w.settled(&b, Delivered), None, "seq 1 still missing");
        let c = w.arrived("v", 1, 1);
        assert_eq!(w.settled(&c, Delivered), Some(1));
    }

    #[test]
    fn vehicles_are_independent_and_idle_ones_forgotten() {
        let mut w = Watermarks::default();
        let a = w.arrived("a", 1, 1);
        let b = w.arrived("b", 9, 9);
        assert_eq!(w.settled(&b, Delivered), Some(9));
        assert_eq!(w.settled(&a, Delivered), Some(1));
        assert!(w.is_empty(), "nothing in flight: nothing kept");
        let next = w.arrived("a", 2, 5);
        assert_eq!(w.settled(&next, Delivered), Some(5));
    }

    #[test]
    fn messages_settled_together_give_one_ack_per_vehicle_with_its_newest_watermark() {
        let mut w = Watermarks::default();
        let a1 = w.arrived("a", 1, 1);
        let b1 = w.arrived("b", 7, 7);
        let a2 = w.arrived("a", 2, 3);
        let a3 = w.arrived("a", 4, 4);
        let c1 = w.arrived("c", 1, 1);
        let c2 = w.arrived("c", 2, 2);
        // a: all three durable; b: its one; c: only its second (no ack yet).
        let mut acks = w.settled_together([
            (a2, Delivered),
            (a1, Delivered),
            (b1, Delivered),
            (c2, Delivered),
            (a3, Delivered),
        ]);
        acks.sort();
        assert_eq!(acks, [("a".to_owned(), 4), ("b".to_owned(), 7)]);
        // The same rules as one by one: a failure holds the watermark back.
        let c3 = w.arrived("c", 3, 3);
        assert_eq!(w.settled_together([(c1, Failed), (c3, Delivered)]), []);
        // The device resends everything since its last ack (none).
        let resend = w.arrived("c", 1, 3);
        assert_eq!(
            w.settled_together([(resend, Delivered)]),
            [("c".to_owned(), 3)]
        );
        assert!(w.is_empty());
    }
}
