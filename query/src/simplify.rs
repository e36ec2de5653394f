//! Track simplification: at most `max_points` of a track's points, chosen
//! to keep its shape. Pure.
//!
//! A day at 1 Hz is 86,400 points; a map needs a few hundred to draw the
//! same line. Ramer–Douglas–Peucker (`geo`'s `SimplifyIdx`) keeps the
//! points that deviate most from the line between their neighbours, so
//! turns stay and straight stretches and standstills collapse. It takes a
//! tolerance, not a count, so the tolerance is found by bisection: the
//! smallest one (within the search's resolution) whose result fits
//! `max_points`. The result is a subset of the input in order (so each kept
//! point keeps its timestamp), always with the first and the last point,
//! and the input itself when it already fits.
//!
//! Distances are planar in degrees (longitude, latitude), as the map draws
//! them; that is what the tolerance is about.

use geo::{Coord, LineString, SimplifyIdx as _};

/// Bisection steps at most: each halves the tolerance interval, so 40 reach
/// a resolution far below a GPS fix's noise for any track on Earth.
const MAX_STEPS: u32 = 40;

/// The indices of the points of `points` (`(lon, lat)`, in track order) to
/// keep: at most `max_points` (`max_points` >= 2), in order, the first and
/// the last always among them, all of them when they fit.
pub fn simplify(points: &[(f64, f64)], max_points: usize) -> Vec<usize> {
    let max_points = max_points.max(2);
    if points.len() <= max_points {
        return (0..points.len()).collect();
    }
    let line: LineString<f64> = points.iter().map(|&(x, y)| Coord { x, y }).collect();
    // No deviation exceeds the extent's diagonal: at that tolerance only
    // the ends remain, which always fit.
    let (mut lo, mut hi) = (0.0_f64, diagonal(points) * 2.0 + f64::EPSILON);
    let mut best = vec![0, points.len() - 1];
    for _ in 0..MAX_STEPS {
        let mid = lo + (hi - lo) / 2.0;
        let kept = line.simplify_idx(mid);
        if kept.len() <= max_points {
            // Fits: remember it, and try a smaller tolerance (more points).
            let close_enough = kept.len() * 100 >= max_points * 95;
            best = kept;
            hi = mid;
            if close_enough {
                break;
            }
        } else {
            lo = mid;
        }
    }
    ensure_ends(best, points.len())
}

/// `kept` with index 0 and `len - 1` (RDP keeps both; this makes it a
/// property of this function whatever the library does).
fn ensure_ends(mut kept: Vec<usize>, len: usize) -> Vec<usize> {
    if kept.first() != Some(&0) {
        kept.insert(0, 0);
    }
    if kept.last() != Some(&(len - 1)) {
        kept.push(len - 1);
    }
    kept
}

/// The diagonal of the points' bounding box, degrees.
fn diagonal(points: &[(f64, f64)]) -> f64 {
    let (mut min_x, mut min_y) = (f64::INFINITY, f64::INFINITY);
    let (mut max_x, mut max_y) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    for &(x, y) in points {
        min_x = min_x.min(x);
        min_y = min_y.min(y);
        max_x = max_x.max(x);
        max_y = max_y.max(y);
    }
    (max_x - min_x).hypot(max_y - min_y)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;

    /// A square's outline at 1 Hz: 4 corners, long straight sides.
    fn square(side: usize) -> Vec<(f64, f64)> {
        let step = 0.001;
        let mut pts = Vec::new();
        let s = side as f64 * step;
        for i in 0..side {
            pts.push((i as f64 * step, 0.0));
        }
        for i in 0..side {
            pts.push((s, i as f64 * step));
        }
        for i in 0..side {
            pts.push((s - i as f64 * step, s));
        }
        for i in 0..=side {
            pts.push((0.0, s - i as f64 * step));
        }
        pts
    }

    #[test]
    fn a_track_that_fits_is_kept_whole() {
        let pts = square(10);
        assert_eq!(
            simplify(&pts, pts.len()),
            (0..pts.len()).collect::<Vec<_>>()
        );
        assert_eq!(simplify(&pts[..1], 5), vec![0]);
        assert!(simplify(&[], 5).is_empty());
    }

    #[test]
    fn the_corners_of_a_square_survive() {
        let pts = square(1000);
        let kept = simplify(&pts, 10);
        assert!(kept.len() <= 10, "{kept:?}");
        for corner in [0, 1000, 2000, 3000, 4000] {
            assert!(
                kept.iter().any(|&i| i.abs_diff(corner) <= 1),
                "corner {corner} lost: {kept:?}"
            );
        }
    }

    #[test]
    fn a_day_at_one_hertz_comes_down_to_the_bound() {
        // A wiggly day: a slow sine around a drift.
        let pts: Vec<(f64, f64)> = (0..86_400)
            .map(|i| {
                let t = f64::from(i) / 86_400.0;
                (13.0 + t, 52.0 + 0.05 * (t * 40.0).sin())
            })
            .collect();
        let kept = simplify(&pts, 500);
        assert!(kept.len() <= 500 && kept.len() >= 100, "{}", kept.len());
    }

    fn track() -> impl Strategy<Value = Vec<(f64, f64)>> {
        prop::collection::vec((-10.0f64..10.0, -10.0f64..10.0), 0..400)
    }

    proptest! {
        #[test]
        fn never_more_than_max_points_ends_kept_order_kept(pts in track(), max in 2usize..50) {
            let kept = simplify(&pts, max);
            prop_assert!(kept.len() <= max);
            prop_assert!(kept.windows(2).all(|w| w[0] < w[1]));
            if !pts.is_empty() {
                prop_assert_eq!(kept.first(), Some(&0));
                prop_assert_eq!(kept.last(), Some(&(pts.len() - 1)));
            }
            if pts.len() <= max {
                prop_assert_eq!(kept, (0..pts.len()).collect::<Vec<_>>());
            }
        }

        #[test]
        fn repeated_points_do_not_break_the_bound(n in 3usize..300, max in 2usize..10) {
            // A parked vehicle: the same point over and over.
            let pts = vec![(13.4, 52.5); n];
            let kept = simplify(&pts, max);
            prop_assert!(kept.len() <= max);
            prop_assert_eq!(kept.first(), Some(&0));
            prop_assert_eq!(kept.last(), Some(&(n - 1)));
        }
    }
}
