//! The resume window: the most recent feed messages, bounded by count and
//! by age, and the resume tokens that point into it. Pure, no I/O.
//!
//! Every message the feed takes in gets the next sequence number of the
//! process; its resume token is `<epoch>-<seq>`, the epoch being random
//! per process start, so a token of another process (a restart, another
//! read node) is told from one of this process. A client resuming from
//! `seq` gets every message after it, if the window still holds all of
//! them; otherwise it is told there is a gap.

use std::collections::VecDeque;
use std::fmt;

/// A position in the feed: the process epoch and a sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeToken {
    /// The process's epoch.
    pub epoch: u64,
    /// The sequence number of the last message the client received.
    pub seq: u64,
}

impl ResumeToken {
    /// Parses `<epoch as 16 hex digits>-<seq>`.
    pub fn parse(text: &str) -> Option<Self> {
        let (epoch, seq) = text.split_once('-')?;
        if epoch.len() != 16 {
            return None;
        }
        Some(Self {
            epoch: u64::from_str_radix(epoch, 16).ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl fmt::Display for ResumeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{}", self.epoch, self.seq)
    }
}

/// Why a resume is not possible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gap {
    /// The token is older than the window: messages after it were dropped.
    TooOld,
    /// The token is of another process, or points past the newest message.
    Foreign,
}

/// The recent messages, oldest first.
#[derive(Debug)]
pub struct Ring<T> {
    entries: VecDeque<(u64, i64, T)>,
    max_count: usize,
    max_age_ms: i64,
    /// The newest sequence number handed out (0: none yet).
    last: u64,
}

impl<T> Ring<T> {
    /// A window of at most `max_count` messages, none older than
    /// `max_age_ms`.
    pub fn new(max_count: usize, max_age_ms: i64) -> Self {
        Self {
            entries: VecDeque::new(),
            max_count: max_count.max(1),
            max_age_ms,
            last: 0,
        }
    }

    /// The newest sequence number (0 before the first message).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Messages held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The next sequence number, taken.
    pub fn next_seq(&mut self) -> u64 {
        self.last += 1;
        self.last
    }

    /// Keeps `item` (sequence number `seq`, from [`Ring::next_seq`]) taken
    /// at `now_ms`, dropping the oldest beyond the bounds.
    pub fn push(&mut self, seq: u64, now_ms: i64, item: T) {
        self.entries.push_back((seq, now_ms, item));
        while self.entries.len() > self.max_count {
            self.entries.pop_front();
        }
        self.expire(now_ms);
    }

    /// Drops what is older than the window at `now_ms`.
    pub fn expire(&mut self, now_ms: i64) {
        while self
            .entries
            .front()
            .is_some_and(|(_, at, _)| now_ms.saturating_sub(*at) > self.max_age_ms)
        {
            self.entries.pop_front();
        }
    }

    /// Every message after `seq`, oldest first, if the window holds all of
    /// them (call [`Ring::expire`] first).
    ///
    /// # Errors
    ///
    /// [`Gap::Foreign`] past the newest, [`Gap::TooOld`] when some were
    /// dropped.
    pub fn after(&self, seq: u64) -> Result<impl Iterator<Item = &T>, Gap> {
        if seq > self.last {
            return Err(Gap::Foreign);
        }
        if seq < self.last {
            let first = self.entries.front().map_or(u64::MAX, |(s, _, _)| *s);
            if first > seq + 1 {
                return Err(Gap::TooOld);
            }
        }
        Ok(self
            .entries
            .iter()
            .filter(move |(s, _, _)| *s > seq)
            .map(|(_, _, item)| item))
    }

    /// The messages after `seq` with their sequence numbers, oldest first,
    /// found by binary search (a replay reads them a batch at a time).
    ///
    /// # Errors
    ///
    /// As [`Ring::after`].
    pub fn after_seq(&self, seq: u64) -> Result<impl Iterator<Item = (u64, &T)>, Gap> {
        let _ = self.after(seq)?;
        let start = self.entries.partition_point(|(s, _, _)| *s <= seq);
        Ok(self.entries.range(start..).map(|(s, _, item)| (*s, item)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    fn ring(n: u64, max: usize) -> Ring<u64> {
        let mut r = Ring::new(max, 1000);
        for _ in 0..n {
            let s = r.next_seq();
            r.push(s, 0, s);
        }
        r
    }

    #[test]
    fn tokens_round_trip_and_refuse_garbage() {
        let t = ResumeToken {
            epoch: 0xabc,
            seq: 42,
        };
        assert_eq!(t.to_string(), "0000000000000abc-42");
        assert_eq!(ResumeToken::parse(&t.to_string()), Some(t));
        for bad in [
            "",
            "abc-1",
            "0000000000000abc-",
            "0000000000000abc-x",
            "zzzzzzzzzzzzzzzz-1",
        ] {
            assert_eq!(ResumeToken::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_resume_gets_exactly_what_came_after() {
        let r = ring(10, 100);
        assert_eq!(r.after(7).unwrap().copied().collect::<Vec<_>>(), [8, 9, 10]);
        assert_eq!(r.after(10).unwrap().count(), 0);
        assert_eq!(r.after(0).unwrap().count(), 10);
        assert!(matches!(r.after(11), Err(Gap::Foreign)));
    }

    #[test]
    fn the_window_is_bounded_by_count_and_age() {
        let r = ring(10, 4);
        assert_eq!(r.len(), 4);
        assert!(matches!(r.after(5), Err(Gap::TooOld)));
        assert_eq!(r.after(6).unwrap().count(), 4);
        let mut r = Ring::new(100, 1000);
        let s = r.next_seq();
        r.push(s, 0, 1);
        let s = r.next_seq();
        r.push(s, 600, 2);
        r.expire(1500);
        assert_eq!(r.len(), 1);
        assert!(matches!(r.after(0), Err(Gap::TooOld)));
        assert_eq!(r.after(1).unwrap().copied().collect::<Vec<_>>(), [2]);
        r.expire(5000);
        // Nothing held, but nothing missed either: the client is current.
        assert_eq!(r.after(2).unwrap().count(), 0);
        assert!(matches!(r.after(1), Err(Gap::TooOld)));
    }

    proptest! {
        /// Whatever the bounds, a resume either yields every message after
        /// the token, in order, or says there is a gap.
        #[test]
        fn resumes_are_complete_or_a_gap(n in 0u64..200, max in 1usize..50, from in 0u64..220) {
            let r = ring(n, max);
            match r.after(from) {
                Ok(items) => {
                    let got: Vec<u64> = items.copied().collect();
                    let want: Vec<u64> = (from + 1..=n).collect();
                    prop_assert_eq!(got, want);
                }
                Err(Gap::Foreign) => prop_assert!(from > n),
                Err(Gap::TooOld) => prop_assert!(from + (max as u64) < n),
            }
        }
    }
}
