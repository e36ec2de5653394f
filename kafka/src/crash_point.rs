//! Crash points for the kill tests: `FLEETPIPE_CRASH_AT=<point>:<n>` makes
//! the process abort (as `kill -9` would: no cleanup, no final commit) the
//! `n`th time it reaches `<point>`. Unset, a crash point is one relaxed
//! atomic load.
//!
//! Points: `enrich.outputs_stored` (outputs in Kafka, snapshot not yet
//! written), `enrich.snapshots_written` (snapshot written, raw offsets not
//! yet committed), `group.settled` (a record is stored by every sink, its
//! offset not yet stored for commit: the writer between its database commit
//! and its offset commit), `sink.kafka.delivered` (a record is in Kafka,
//! its sender not yet told: the gateway between produce and answer).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that arms a crash point.
pub const CRASH_AT: &str = "FLEETPIPE_CRASH_AT";

struct Armed {
    point: String,
    at: u64,
    reached: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let value = std::env::var(CRASH_AT).ok()?;
            let (point, at) = value.rsplit_once(':')?;
            Some(Armed {
                point: point.to_owned(),
                at: at.parse().ok()?,
                reached: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Aborts the process if `FLEETPIPE_CRASH_AT` names `point` and this is
/// the time it asks for.
pub fn crash_point(point: &str) {
    let Some(armed) = armed() else {
        return;
    };
    if armed.point == point && armed.reached.fetch_add(1, Ordering::Relaxed) + 1 == armed.at {
        eprintln!("{CRASH_AT}: aborting at {point}");
        std::process::abort();
    }
}
