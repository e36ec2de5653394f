//! Fence lookups as an enrichment worker makes them: [`FenceLookup`], the
//! worker's copy of the shared index (picked up again after a reload) with
//! tables from fence position to fence id and back, and [`FenceSnapshot`],
//! one version of it for the state machine, by fence id.
//!
//! Per-vehicle state names fences by their string id, never by their
//! position in the index, so a reload that keeps a fence's id keeps its
//! members, and one that removes it ends their membership.

use std::collections::HashMap;
use std::sync::Arc;

use fleetpipe_geofence::{Fence, FenceId, GeofenceIndex, SharedIndex};

/// A worker's lookups in the current index, with its id tables rebuilt when
/// the index is swapped.
#[derive(Debug)]
pub(crate) struct FenceLookup {
    shared: SharedIndex,
    index: Arc<GeofenceIndex>,
    /// Fence id strings by [`FenceId`], shared by every record and state.
    ids: Vec<Arc<str>>,
    by_id: HashMap<Arc<str>, FenceId>,
    scratch: Vec<FenceId>,
}

/// One version of the index, by fence id.
#[derive(Debug)]
pub(crate) struct FenceSnapshot<'a> {
    index: &'a GeofenceIndex,
    by_id: &'a HashMap<Arc<str>, FenceId>,
}

impl FenceSnapshot<'_> {
    /// The fence with this id in this version.
    pub(crate) fn get(&self, id: &str) -> Option<&Fence> {
        self.by_id.get(id).and_then(|&f| self.index.fence(f))
    }
}

impl FenceLookup {
    pub(crate) fn new(shared: SharedIndex) -> Self {
        let index = shared.load_full();
        let mut cache = Self {
            shared,
            index: Arc::clone(&index),
            ids: Vec::new(),
            by_id: HashMap::new(),
            scratch: Vec::new(),
        };
        cache.rebuild(index);
        cache
    }

    /// Picks up a reloaded index; cheap when nothing changed.
    pub(crate) fn refresh(&mut self) {
        let current = self.shared.load();
        if !Arc::ptr_eq(&current, &self.index) {
            let index = arc_swap::Guard::into_inner(current);
            self.rebuild(index);
        }
    }

    fn rebuild(&mut self, index: Arc<GeofenceIndex>) {
        // Keep the old Arc<str> of a fence that survived, so memberships and
        // records keep sharing one allocation per fence.
        let old: HashMap<Arc<str>, FenceId> = std::mem::take(&mut self.by_id);
        self.ids = index
            .fences()
            .iter()
            .map(|f| {
                old.get_key_value(f.id.as_str())
                    .map_or_else(|| Arc::from(f.id.as_str()), |(k, _)| Arc::clone(k))
            })
            .collect();
        self.by_id = self
            .ids
            .iter()
            .enumerate()
            .map(|(i, id)| (Arc::clone(id), FenceId(i as u32)))
            .collect();
        self.index = index;
    }

    /// Ids of the fences containing the position, in fence-file order.
    pub(crate) fn lookup(&mut self, lat: f64, lon: f64) -> Vec<Arc<str>> {
        self.index.lookup_into(lat, lon, &mut self.scratch);
        if self.scratch.is_empty() {
            return Vec::new();
        }
        self.scratch.sort_unstable();
        self.scratch
            .iter()
            .filter_map(|f| self.ids.get(f.index()).cloned())
            .collect()
    }

    /// The current version, for the state machine.
    pub(crate) fn snapshot(&self) -> FenceSnapshot<'_> {
        FenceSnapshot {
            index: &self.index,
            by_id: &self.by_id,
        }
    }
}
