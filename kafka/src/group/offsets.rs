//! Which offset of each owned partition may be committed.
//!
//! A consumer hands records out in offset order, one partition at a time,
//! and they settle (their acknowledgement comes back from the sinks) in
//! any order. Committing offset `n` tells the group "everything below `n`
//! is done", so the commit point of a partition is one past the last
//! offset below which every record handed out settled as delivered. A
//! record that failed stops the partition's commit point for good: it and
//! everything after it are read again by whoever owns the partition next
//! (after a restart or a rebalance), which the sinks' idempotent writes
//! make harmless.
//!
//! Pure and synchronous: the group consumer keeps one behind a mutex,
//! shared by its async side (hand-outs, settlements) and librdkafka's
//! rebalance callback (which waits for a revoked partition to settle).

use std::collections::{BTreeMap, HashMap};

/// A topic and partition.
pub type TopicPartition = (String, i32);

/// How a handed-out record ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Every sink holds it.
    Delivered,
    /// A sink could not hold it (or it was dropped on the way).
    Failed,
}

/// Which ownership of its partition a handed-out record belongs to: a
/// record settling after its partition was revoked and assigned again must
/// not move (or hold) the new ownership's commit point, even at an offset
/// the new owner has handed out again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

/// One owned partition's records in flight.
#[derive(Debug, Default)]
struct Partition {
    /// Which ownership this is (see [`Ticket`]).
    generation: u64,
    /// Records handed out and not yet released from the front, by offset:
    /// `None` while in flight, `Some` once settled.
    in_flight: BTreeMap<i64, Option<Settled>>,
    /// The next offset to commit (one past the last delivered record of
    /// the settled prefix), once anything settled.
    commit_point: Option<i64>,
    /// The commit point last stored for commit, to report only changes.
    stored: Option<i64>,
    /// A record failed: the commit point stays below it.
    stuck: bool,
    /// The partition is being revoked: nothing more is handed out.
    revoking: bool,
}

impl Partition {
    /// Moves the commit point past the settled, delivered prefix.
    fn advance(&mut self) {
        while let Some(entry) = self.in_flight.first_entry() {
            match entry.get() {
                Some(Settled::Delivered) if !self.stuck => {
                    let offset = *entry.key();
                    entry.remove();
                    self.commit_point = Some(offset + 1);
                }
                Some(Settled::Failed) => {
                    self.stuck = true;
                    return;
                }
                _ => return,
            }
        }
    }

    fn pending(&self) -> usize {
        self.in_flight.values().filter(|s| s.is_none()).count()
    }
}

/// The commit points of the partitions a consumer owns.
#[derive(Debug, Default)]
pub struct Offsets {
    partitions: HashMap<TopicPartition, Partition>,
    /// The generation the next assignment gets.
    next_generation: u64,
}

impl Offsets {
    /// The group assigned `tp` to this member: records of it may be handed
    /// out from now on (a fresh start: nothing of a previous ownership
    /// carries over).
    pub fn assign(&mut self, tp: TopicPartition) {
        self.next_generation += 1;
        let partition = Partition {
            generation: self.next_generation,
            ..Partition::default()
        };
        self.partitions.insert(tp, partition);
    }

    /// `tp` is being revoked: nothing more of it is handed out, and
    /// [`Offsets::pending`] tells when what is in flight has settled.
    pub fn start_revoke(&mut self, tp: &TopicPartition) {
        if let Some(p) = self.partitions.get_mut(tp) {
            p.revoking = true;
        }
    }

    /// `tp` is no longer owned; its commit point, if any, for a last commit.
    pub fn revoke(&mut self, tp: &TopicPartition) -> Option<i64> {
        self.partitions.remove(tp).and_then(|p| p.commit_point)
    }

    /// Whether a record of `tp` at `offset` may be handed out (the partition
    /// is owned and not being revoked); if so, it is now in flight, and the
    /// ticket goes with its settlement.
    pub fn hand_out(&mut self, tp: &TopicPartition, offset: i64) -> Option<Ticket> {
        match self.partitions.get_mut(tp) {
            Some(p) if !p.revoking => {
                p.in_flight.insert(offset, None);
                Some(Ticket(p.generation))
            }
            _ => None,
        }
    }

    /// The record of `tp` at `offset`, handed out with `ticket`, settled. A
    /// settlement of an ownership that ended (the partition revoked
    /// meanwhile, perhaps assigned again since) changes nothing.
    pub fn settle(&mut self, tp: &TopicPartition, ticket: Ticket, offset: i64, settled: Settled) {
        if let Some(p) = self.partitions.get_mut(tp)
            && p.generation == ticket.0
            && let Some(slot) = p.in_flight.get_mut(&offset)
        {
            *slot = Some(settled);
            p.advance();
        }
    }

    /// Records of the partitions in `tps` still in flight.
    pub fn pending<'a>(&self, tps: impl IntoIterator<Item = &'a TopicPartition>) -> usize {
        tps.into_iter()
            .filter_map(|tp| self.partitions.get(tp))
            .map(Partition::pending)
            .sum()
    }

    /// Records of every owned partition still in flight.
    pub fn pending_all(&self) -> usize {
        self.partitions.values().map(Partition::pending).sum()
    }

    /// Commit points that moved since the last call, to store for commit.
    pub fn take_changed(&mut self) -> Vec<(TopicPartition, i64)> {
        let mut changed = Vec::new();
        for (tp, p) in &mut self.partitions {
            if p.commit_point != p.stored
                && let Some(point) = p.commit_point
            {
                p.stored = Some(point);
                changed.push((tp.clone(), point));
            }
        }
        changed.sort();
        changed
    }

    /// Every owned partition's commit point, for the last commit at shutdown.
    pub fn commit_points(&self) -> Vec<(TopicPartition, i64)> {
        let mut points: Vec<_> = self
            .partitions
            .iter()
            .filter_map(|(tp, p)| p.commit_point.map(|c| (tp.clone(), c)))
            .collect();
        points.sort();
        points
    }

    /// Whether a failed record holds `tp`'s commit point back.
    pub fn is_stuck(&self, tp: &TopicPartition) -> bool {
        self.partitions.get(tp).is_some_and(|p| p.stuck)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn tp(p: i32) -> TopicPartition {
        ("t".to_owned(), p)
    }

    /// Hands out `offsets` of `tp`, all of one ownership: its ticket.
    fn hand_out(
        o: &mut Offsets,
        tp: &TopicPartition,
        offsets: impl IntoIterator<Item = i64>,
    ) -> Ticket {
        let mut ticket = None;
        for offset in offsets {
            ticket = Some(o.hand_out(tp, offset).expect("owned"));
        }
        ticket.expect("at least one offset")
    }

    #[test]
    fn the_commit_point_follows_the_delivered_prefix_whatever_the_order() {
        let mut o = Offsets::default();
        o.assign(tp(0));
        let t = hand_out(&mut o, &tp(0), [10, 11, 12, 14]);
        o.settle(&tp(0), t, 12, Settled::Delivered);
        o.settle(&tp(0), t, 11, Settled::Delivered);
        assert_eq!(o.take_changed(), vec![], "10 is still in flight");
        o.settle(&tp(0), t, 10, Settled::Delivered);
        assert_eq!(o.take_changed(), vec![(tp(0), 13)]);
        assert_eq!(o.take_changed(), vec![], "reported once");
        // A gap in the offsets (compaction, transaction markers) is no hole.
        o.settle(&tp(0), t, 14, Settled::Delivered);
        assert_eq!(o.take_changed(), vec![(tp(0), 15)]);
        assert_eq!(o.pending_all(), 0);
    }

    #[test]
    fn a_failed_record_holds_the_commit_point_below_it_for_good() {
        let mut o = Offsets::default();
        o.assign(tp(0));
        let t = hand_out(&mut o, &tp(0), 0..4);
        o.settle(&tp(0), t, 0, Settled::Delivered);
        o.settle(&tp(0), t, 1, Settled::Failed);
        o.settle(&tp(0), t, 2, Settled::Delivered);
        o.settle(&tp(0), t, 3, Settled::Delivered);
        assert_eq!(o.take_changed(), vec![(tp(0), 1)]);
        assert!(o.is_stuck(&tp(0)));
        let t = hand_out(&mut o, &tp(0), [4]);
        o.settle(&tp(0), t, 4, Settled::Delivered);
        assert_eq!(o.take_changed(), vec![]);
        assert_eq!(o.commit_points(), vec![(tp(0), 1)]);
    }

    #[test]
    fn partitions_are_independent() {
        let mut o = Offsets::default();
        o.assign(tp(0));
        o.assign(tp(1));
        hand_out(&mut o, &tp(0), [5]);
        let t1 = hand_out(&mut o, &tp(1), [7]);
        o.settle(&tp(1), t1, 7, Settled::Delivered);
        assert_eq!(o.take_changed(), vec![(tp(1), 8)]);
        assert_eq!(o.pending([&tp(0)]), 1);
        assert_eq!(o.pending([&tp(1)]), 0);
    }

    #[test]
    fn a_revoked_partition_hands_out_nothing_and_forgets_its_records() {
        let mut o = Offsets::default();
        o.assign(tp(0));
        let t = hand_out(&mut o, &tp(0), [0, 1]);
        o.start_revoke(&tp(0));
        assert!(
            o.hand_out(&tp(0), 2).is_none(),
            "not after the revoke started"
        );
        assert_eq!(o.pending([&tp(0)]), 2);
        o.settle(&tp(0), t, 0, Settled::Delivered);
        o.settle(&tp(0), t, 1, Settled::Delivered);
        assert_eq!(o.pending([&tp(0)]), 0);
        assert_eq!(o.revoke(&tp(0)), Some(2));
        // Unowned now: late settlements and hand-outs change nothing.
        o.settle(&tp(0), t, 1, Settled::Failed);
        assert!(o.hand_out(&tp(0), 3).is_none());
        assert_eq!(o.commit_points(), vec![]);
        // Assigned again: a fresh start, not the old state.
        o.assign(tp(0));
        assert!(o.hand_out(&tp(0), 2).is_some());
        assert_eq!(o.commit_points(), vec![]);
    }

    #[test]
    fn a_settlement_of_a_previous_ownership_does_not_count_for_the_next() {
        let mut o = Offsets::default();
        o.assign(tp(0));
        let old = hand_out(&mut o, &tp(0), [5, 6]);
        o.start_revoke(&tp(0));
        assert_eq!(o.revoke(&tp(0)), None, "nothing settled in time");
        // Assigned back, and the same records handed out again.
        o.assign(tp(0));
        let new = hand_out(&mut o, &tp(0), [5, 6]);
        assert_ne!(old, new);
        // The old ownership's records settle late: a dropped one must not
        // hold the new commit point, a delivered one must not move it.
        o.settle(&tp(0), old, 5, Settled::Failed);
        o.settle(&tp(0), old, 6, Settled::Delivered);
        assert!(!o.is_stuck(&tp(0)));
        assert_eq!(o.take_changed(), vec![]);
        assert_eq!(o.pending([&tp(0)]), 2);
        o.settle(&tp(0), new, 5, Settled::Delivered);
        o.settle(&tp(0), new, 6, Settled::Delivered);
        assert_eq!(o.take_changed(), vec![(tp(0), 7)]);
    }

    #[test]
    fn records_of_a_partition_never_assigned_are_not_handed_out() {
        let mut o = Offsets::default();
        assert!(o.hand_out(&tp(3), 0).is_none());
        assert_eq!(o.pending_all(), 0);
    }
}
