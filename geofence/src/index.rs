//! The grid index: [`GeofenceIndex`], [`brute_force`] (its reference:
//! every fence's exact test) and [`SharedIndex`], the index a running
//! pipeline swaps whole on reload. Pure: no I/O, no async.
//!
//! How the index covers fences:
//!
//! * the finest cells are squares of `cell_size_m / 111 320` degrees; a cell
//!   of level `k` is `2^k` finest cells wide. A point's cell at every level
//!   follows from its finest cell by bit shifts, so the levels nest exactly
//!   and a lookup needs no projection: two multiplications and one hash
//!   probe per level present;
//! * every fence is covered by a region quadtree over its bounding box: from
//!   the level at which the box spans at most 2 × 2 cells, a cell wholly
//!   inside the fence is stored as an "inside" cell (a point in it is
//!   answered without geometry), a cell wholly outside is dropped, and a
//!   cell the boundary crosses is split, down to the finest level (or at
//!   most seven levels, so a large fence gets coarser boundary cells rather
//!   than more of them), where it is stored as a "boundary" cell: a point
//!   in it is decided by the exact test [`Fence::contains`], after a
//!   bounding-box check;
//! * the classification is conservative: cells are grown by a margin far
//!   above rounding before they are tested, "inside" and "outside" are
//!   claimed only when they hold for every point of the grown cell
//!   (polygons: no ring touches the cell; circles: all four corners within
//!   the radius, or a lower bound of the distance beyond it), and
//!   everything else is a boundary cell. So the index answers exactly what
//!   the exact test answers.
//!
//! A lookup only touches the fences registered on the point's cells, so
//! its cost does not grow with the number of fences.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use geo::{Coord, Distance, Haversine, Intersects, Point, Rect};

use crate::model::{edges, polygons_contain, valid_query};
use crate::{Fence, FenceId, FenceSet, GeofenceError, Shape};

/// Brute force: every fence's exact test. The reference for the index.
#[must_use]
pub fn brute_force(set: &FenceSet, lat: f64, lon: f64) -> Vec<FenceId> {
    if !valid_query(lat, lon) {
        return Vec::new();
    }
    set.fences
        .iter()
        .enumerate()
        .filter(|(_, f)| f.contains_unchecked(lat, lon))
        .map(|(i, _)| FenceId(i as u32))
        .collect()
}

/// Default edge of the index's finest cells, metres
/// ([`GeofenceIndex::build`], `geofence.cell_size_m`).
pub const DEFAULT_CELL_SIZE_M: f64 = 100.0;
/// Smallest accepted finest-cell edge, metres.
pub const MIN_CELL_SIZE_M: f64 = 1.0;
/// Largest accepted finest-cell edge, metres.
pub const MAX_CELL_SIZE_M: f64 = 100_000.0;
/// Metres per degree of longitude at the equator: a cell of `cell_size_m`
/// spans `cell_size_m / M_PER_DEG` degrees on both axes (it is narrower in
/// metres away from the equator, which only makes it finer).
const M_PER_DEG: f64 = 111_320.0;
/// How many levels below its top level (the level at which its bounding box
/// spans at most 2 × 2 cells) a fence's boundary is refined: at most
/// 2^7 = 128 cells per axis, which bounds the cells of a fence whatever its
/// size. A large fence gets coarser boundary cells, not more of them.
const MAX_DEPTH: u32 = 7;
/// Margin (degrees, about 0.1 mm) by which a cell is grown before it is
/// classified against a fence. Mapping a point to its cell and computing a
/// cell's bounds both round, by at most ~1e-13 degrees; the margin dwarfs
/// that, so every point the lookup maps to a cell lies in the grown cell.
const CELL_MARGIN_DEG: f64 = 1e-9;

/// Hasher for packed cell keys (folded 128-bit multiply: the keys are two
/// small integers side by side, which identity hashing would cluster).
#[derive(Debug, Default, Clone, Copy)]
struct CellHasher(u64);

impl Hasher for CellHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, x: u64) {
        let m = u128::from(x ^ self.0) * 0x9E37_79B9_7F4A_7C15_u128;
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }
}

type CellMap<V> = HashMap<u64, V, BuildHasherDefault<CellHasher>>;

/// High bit of an entry: the cell is fully inside the fence.
const INSIDE: u32 = 1 << 31;

/// The grid every level shares: a point's finest cell is
/// `(floor((lon + 180) · scale), floor((lat + 90) · scale))`, and its cell
/// at level `k` is that pair shifted right by `k`. Deriving every level
/// from the one finest pair by shifts is what makes the levels nest exactly:
/// no second rounding can put a point in a coarse cell that does not hold
/// its fine one.
#[derive(Debug, Clone, Copy)]
struct Grid {
    /// Finest cells per degree.
    scale: f64,
}

impl Grid {
    /// The grid of finest cells `cell_size_m` wide (at the equator).
    fn new(cell_size_m: f64) -> Self {
        Self {
            scale: M_PER_DEG / cell_size_m,
        }
    }

    /// The finest cell of a valid point. Rounding is monotone, so a point
    /// inside a box maps between the cells of the box's corners.
    #[inline]
    fn cell(self, lat: f64, lon: f64) -> (u32, u32) {
        // Valid coordinates make both values non-negative and below
        // 360 · scale <= 4.1e7, so the casts truncate (= floor) exactly.
        (
            ((lon + 180.0) * self.scale) as u32,
            ((lat + 90.0) * self.scale) as u32,
        )
    }

    /// Cell `(x, y)` of `level`, in degrees, grown by [`CELL_MARGIN_DEG`].
    fn rect(self, level: u32, x: u32, y: u32) -> Rect<f64> {
        let lo = |c: u32| (u64::from(c) << level) as f64 / self.scale;
        let hi = |c: u32| ((u64::from(c) + 1) << level) as f64 / self.scale;
        Rect::new(
            Coord {
                x: lo(x) - 180.0 - CELL_MARGIN_DEG,
                y: lo(y) - 90.0 - CELL_MARGIN_DEG,
            },
            Coord {
                x: hi(x) - 180.0 + CELL_MARGIN_DEG,
                y: hi(y) - 90.0 + CELL_MARGIN_DEG,
            },
        )
    }
}

/// A cell's two coordinates as one hash key.
#[inline]
fn cell_key(x: u32, y: u32) -> u64 {
    (u64::from(x) << 32) | u64::from(y)
}

#[derive(Debug)]
struct Level {
    /// Cells of this level are `2^level` finest cells wide.
    level: u32,
    /// cell key -> (start, len) into `entries`.
    slots: CellMap<(u32, u32)>,
    /// fence id | INSIDE flag.
    entries: Vec<u32>,
}

/// Size statistics of a [`GeofenceIndex`].
#[derive(Debug, Clone, PartialEq)]
pub struct IndexStats {
    /// (level, distinct cells, entries) for every level present; cells of
    /// level `k` are `2^k` finest cells wide.
    pub levels: Vec<(u8, usize, usize)>,
    /// Edge of the finest cells, metres (at the equator).
    pub cell_size_m: f64,
    /// Approximate heap bytes of the cell maps (excluding the fences).
    pub approx_heap_bytes: usize,
}

/// The index: cells fully inside a fence answer without geometry, boundary
/// cells fall back to the exact test (see the module docs).
#[derive(Debug)]
pub struct GeofenceIndex {
    fences: Vec<Fence>,
    grid: Grid,
    cell_size_m: f64,
    /// Only levels that hold entries, the one with most entries first.
    levels: Vec<Level>,
}

impl GeofenceIndex {
    /// Builds the index with finest cells of about `cell_size_m` metres
    /// (see [`DEFAULT_CELL_SIZE_M`]). The cell size changes speed and
    /// memory, never the answers: a cell a little larger than the typical
    /// fence suits depot- and customer-sized fences.
    ///
    /// # Errors
    ///
    /// [`GeofenceError::Config`] if `cell_size_m` is not in
    /// [`MIN_CELL_SIZE_M`]`..=`[`MAX_CELL_SIZE_M`];
    /// [`GeofenceError::TooManyFences`].
    pub fn build(set: FenceSet, cell_size_m: f64) -> Result<Self, GeofenceError> {
        check_cell_size(cell_size_m)?;
        let fences = set.fences;
        if fences.len() > (INSIDE - 1) as usize {
            return Err(GeofenceError::TooManyFences(fences.len()));
        }
        let grid = Grid::new(cell_size_m);
        // Per level: (cell key, entry) pairs.
        let mut pairs: Vec<Vec<(u64, u32)>> = Vec::new();
        for (i, fence) in fences.iter().enumerate() {
            let id = i as u32;
            cover_fence(fence, grid, &mut |level, key, inside| {
                let level = level as usize;
                if pairs.len() <= level {
                    pairs.resize_with(level + 1, Vec::new);
                }
                pairs[level].push((key, if inside { id | INSIDE } else { id }));
            });
        }
        let mut levels = Vec::new();
        for (level, mut p) in pairs.into_iter().enumerate() {
            if p.is_empty() {
                continue;
            }
            p.sort_unstable();
            let mut slots: CellMap<(u32, u32)> = CellMap::default();
            let mut entries = Vec::with_capacity(p.len());
            for run in p.chunk_by(|a, b| a.0 == b.0) {
                slots.insert(run[0].0, (entries.len() as u32, run.len() as u32));
                entries.extend(run.iter().map(|&(_, e)| e));
            }
            slots.shrink_to_fit();
            levels.push(Level {
                level: level as u32,
                slots,
                entries,
            });
        }
        // Most points are answered by the busiest level; probing it first
        // keeps its map warm.
        levels.sort_by_key(|l| std::cmp::Reverse(l.entries.len()));
        Ok(Self {
            fences,
            grid,
            cell_size_m,
            levels,
        })
    }

    /// Ids of every fence containing the point, sorted. Exact: same answer as
    /// [`brute_force`].
    #[must_use]
    pub fn lookup(&self, lat: f64, lon: f64) -> Vec<FenceId> {
        let mut out = Vec::new();
        self.lookup_into(lat, lon, &mut out);
        out
    }

    /// Like [`GeofenceIndex::lookup`], filling (after clearing) the caller's
    /// buffer to avoid allocation.
    pub fn lookup_into(&self, lat: f64, lon: f64, out: &mut Vec<FenceId>) {
        out.clear();
        if !valid_query(lat, lon) {
            return;
        }
        let (x, y) = self.grid.cell(lat, lon);
        for level in &self.levels {
            let key = cell_key(x >> level.level, y >> level.level);
            let Some(&(start, len)) = level.slots.get(&key) else {
                continue;
            };
            let range = start as usize..(start as usize + len as usize);
            for &e in level.entries.get(range).unwrap_or(&[]) {
                let id = e & !INSIDE;
                let hit = e & INSIDE != 0
                    || self
                        .fences
                        .get(id as usize)
                        .is_some_and(|f| f.contains_unchecked(lat, lon));
                if hit {
                    out.push(FenceId(id));
                }
            }
        }
        // A fence's cells are disjoint, so no id repeats; several levels
        // can answer, so the ids need sorting.
        if out.len() > 1 {
            out.sort_unstable();
        }
    }

    /// The fence with this id (`None` if out of range).
    #[must_use]
    pub fn fence(&self, id: FenceId) -> Option<&Fence> {
        self.fences.get(id.index())
    }

    /// Every fence, indexed by [`FenceId`].
    #[must_use]
    pub fn fences(&self) -> &[Fence] {
        &self.fences
    }

    /// Number of fences.
    #[must_use]
    pub fn len(&self) -> usize {
        self.fences.len()
    }

    /// Whether the index holds no fence.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.fences.is_empty()
    }

    /// Edge of the finest cells, metres, as given to
    /// [`GeofenceIndex::build`].
    #[must_use]
    pub fn cell_size_m(&self) -> f64 {
        self.cell_size_m
    }

    /// Cell / entry counts per level and approximate memory.
    #[must_use]
    pub fn stats(&self) -> IndexStats {
        let mut bytes = 0;
        let mut levels: Vec<(u8, usize, usize)> = self
            .levels
            .iter()
            .map(|l| {
                // hashbrown: key + value + 1 control byte per bucket.
                bytes += l.slots.capacity() * (8 + 8 + 1) + l.entries.capacity() * 4;
                (l.level as u8, l.slots.len(), l.entries.len())
            })
            .collect();
        levels.sort_unstable();
        IndexStats {
            levels,
            cell_size_m: self.cell_size_m,
            approx_heap_bytes: bytes,
        }
    }
}

pub(crate) fn check_cell_size(cell_size_m: f64) -> Result<(), GeofenceError> {
    if (MIN_CELL_SIZE_M..=MAX_CELL_SIZE_M).contains(&cell_size_m) {
        Ok(())
    } else {
        Err(GeofenceError::Config {
            key: "geofence.cell_size_m",
            reason: format!(
                "{cell_size_m} is out of range (allowed: {MIN_CELL_SIZE_M} to {MAX_CELL_SIZE_M} metres)"
            ),
        })
    }
}

/// How a cell relates to a fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CellClass {
    /// No point of the cell is in the fence.
    Outside,
    /// Every point of the cell is in the fence.
    Inside,
    /// Either may hold: points in it need the exact test.
    Boundary,
}

/// Reports the cells covering `fence` as `(level, key, inside)`: a
/// region quadtree over the fence's bounding box, from the top level (the
/// box spans at most 2 × 2 cells) down to at most [`MAX_DEPTH`] levels
/// below it, never finer than level 0. Cells inside the fence stop there,
/// cells outside are dropped, boundary cells are split until the finest
/// level, where they are reported for the exact test. The cells reported
/// are disjoint and cover every point of the fence.
fn cover_fence(fence: &Fence, grid: Grid, out: &mut impl FnMut(u32, u64, bool)) {
    let (min, max) = (fence.bbox.min(), fence.bbox.max());
    let (x0, y0) = grid.cell(min.y, min.x);
    let (x1, y1) = grid.cell(max.y, max.x);
    let mut top = 0u32;
    while (x1 >> top) - (x0 >> top) > 1 || (y1 >> top) - (y0 >> top) > 1 {
        top += 1;
    }
    let finest = top.saturating_sub(MAX_DEPTH);
    for x in (x0 >> top)..=(x1 >> top) {
        for y in (y0 >> top)..=(y1 >> top) {
            refine(fence, grid, (top, x, y), finest, out);
        }
    }
}

fn refine(
    fence: &Fence,
    grid: Grid,
    (level, x, y): (u32, u32, u32),
    finest: u32,
    out: &mut impl FnMut(u32, u64, bool),
) {
    match classify(fence, grid.rect(level, x, y)) {
        CellClass::Outside => {}
        CellClass::Inside => out(level, cell_key(x, y), true),
        CellClass::Boundary if level <= finest => out(level, cell_key(x, y), false),
        CellClass::Boundary => {
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                refine(
                    fence,
                    grid,
                    (level - 1, 2 * x + dx, 2 * y + dy),
                    finest,
                    out,
                );
            }
        }
    }
}

/// Classifies a (grown) cell against a fence, conservatively: `Inside` and
/// `Outside` only when they hold for every point of the cell.
fn classify(fence: &Fence, cell: Rect<f64>) -> CellClass {
    let (b, c) = (fence.bbox, cell);
    if c.max().x < b.min().x
        || c.min().x > b.max().x
        || c.max().y < b.min().y
        || c.min().y > b.max().y
    {
        return CellClass::Outside;
    }
    match &fence.shape {
        Shape::Polygon(mp) => {
            // No ring touches the cell: the cell (connected) lies wholly on
            // one side of the fence's boundary, and its centre tells which.
            if edges(mp).any(|line| cell.intersects(&line)) {
                CellClass::Boundary
            } else if polygons_contain(mp, cell.center()) {
                CellClass::Inside
            } else {
                CellClass::Outside
            }
        }
        Shape::Circle { center, radius_m } => {
            // Rounding of the haversine distance is below a micrometre at
            // these scales; the margins are a millimetre.
            let margin = 1e-3 + radius_m * 1e-9;
            // On the sphere, the farthest point of a latitude/longitude
            // rectangle from a point is one of its corners.
            let corners = [
                cell.min(),
                cell.max(),
                Coord {
                    x: cell.min().x,
                    y: cell.max().y,
                },
                Coord {
                    x: cell.max().x,
                    y: cell.min().y,
                },
            ];
            if corners
                .iter()
                .all(|&p| Haversine.distance(*center, Point::from(p)) <= radius_m - margin)
            {
                CellClass::Inside
            } else if circle_distance_lower_bound(*center, cell) > radius_m + margin {
                CellClass::Outside
            } else {
                CellClass::Boundary
            }
        }
    }
}

/// A lower bound of the haversine distance (metres) from `center` to any
/// point of `rect`. Haversine's `a = sin²(Δφ/2) + cos φ₀ cos φ sin²(Δλ/2)`
/// is at least the sum of each term's minimum over the rectangle: the
/// smallest latitude and longitude gaps, and the smallest `cos φ`.
fn circle_distance_lower_bound(center: Point<f64>, rect: Rect<f64>) -> f64 {
    let gap = |v: f64, lo: f64, hi: f64| (lo - v).max(v - hi).max(0.0);
    let dlat = gap(center.y(), rect.min().y, rect.max().y).to_radians();
    let dlon = gap(center.x(), rect.min().x, rect.max().x).to_radians();
    let cos_min = rect
        .min()
        .y
        .to_radians()
        .cos()
        .min(rect.max().y.to_radians().cos())
        .max(0.0);
    let a = (dlat / 2.0).sin().powi(2)
        + center.y().to_radians().cos() * cos_min * (dlon / 2.0).sin().powi(2);
    2.0 * Haversine.radius() * a.min(1.0).sqrt().asin()
}

/// The current index, shared by every enrichment worker and swapped whole on
/// reload: readers take a snapshot (`load`) per lookup and never block the
/// reloader, and a reload never blocks a lookup.
pub type SharedIndex = std::sync::Arc<arc_swap::ArcSwap<GeofenceIndex>>;

/// A [`SharedIndex`] holding `index`.
#[must_use]
pub fn shared(index: GeofenceIndex) -> SharedIndex {
    std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(index))
}

impl Default for GeofenceIndex {
    /// An index with no fences: every lookup answers "none".
    fn default() -> Self {
        Self {
            fences: Vec::new(),
            grid: Grid::new(DEFAULT_CELL_SIZE_M),
            cell_size_m: DEFAULT_CELL_SIZE_M,
            levels: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lower bound never exceeds the distance to any point of the
    /// rectangle (else the index would drop cells holding fence points), and
    /// is tight enough to be worth having for a rectangle well away.
    #[test]
    fn circle_distance_lower_bound_is_a_lower_bound() {
        let centers: [(f64, f64); 4] = [(10.0, 50.0), (-70.3, -33.4), (139.7, 35.7), (0.0, 84.0)];
        for (cx, cy) in centers {
            let center = Point::new(cx, cy);
            for (dx, dy, w) in [
                (0.01, 0.0, 0.02),
                (-0.5, 0.3, 0.1),
                (2.0, -1.0, 0.7),
                (-0.001, -0.001, 0.002),
                (0.0, 0.4, 0.05),
            ] {
                let rect = Rect::new(
                    Coord {
                        x: cx + dx,
                        y: cy + dy,
                    },
                    Coord {
                        x: cx + dx + w,
                        y: (cy + dy + w).min(85.0),
                    },
                );
                let lb = circle_distance_lower_bound(center, rect);
                let mut nearest = f64::INFINITY;
                for i in 0..=20 {
                    for j in 0..=20 {
                        let p = Point::new(
                            rect.min().x + rect.width() * f64::from(i) / 20.0,
                            rect.min().y + rect.height() * f64::from(j) / 20.0,
                        );
                        nearest = nearest.min(Haversine.distance(center, p));
                    }
                }
                assert!(
                    lb <= nearest + 1e-6,
                    "{center:?} {rect:?}: {lb} > {nearest}"
                );
                if nearest > 1_000.0 {
                    assert!(lb > 0.5 * nearest, "{center:?} {rect:?}: {lb} vs {nearest}");
                }
            }
        }
    }
}
