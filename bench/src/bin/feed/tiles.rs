//! The clients' bounding boxes: the city's extent cut into a grid of one
//! tile per client, each tile widened by `overlap` of its size on every
//! side, so neighbouring boxes overlap and a ping matches a few clients
//! (about `(1 + 2 × overlap)²` where vehicles are; more near depots, where
//! they gather).

/// `n` boxes over `extent`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tiles {
    /// West, south, east, north, degrees.
    pub extent: [f64; 4],
    pub cols: usize,
    pub rows: usize,
    /// Boxes (the first `n` tiles, row by row from the south-west).
    pub n: usize,
    /// Widening of each tile on every side, as a share of its size (0–1).
    pub overlap: f64,
}

impl Tiles {
    /// `n` tiles over `extent` (west < east, south < north), as square a
    /// grid as `n` factors into (1,000 → 40 × 25), so every tile is used.
    pub fn new(extent: [f64; 4], n: usize, overlap: f64) -> Result<Self, String> {
        if n == 0 {
            return Err("at least one client".to_owned());
        }
        if !(0.0..=1.0).contains(&overlap) {
            return Err(format!("overlap {overlap}: between 0 and 1"));
        }
        if !(extent[0] < extent[2] && extent[1] < extent[3]) {
            return Err(format!("extent {extent:?}: west < east, south < north"));
        }
        // The largest divisor of n not above its square root.
        let mut rows = 1;
        let mut d = 1;
        while d * d <= n {
            if n.is_multiple_of(d) {
                rows = d;
            }
            d += 1;
        }
        Ok(Self {
            extent,
            cols: n / rows,
            rows,
            n,
            overlap,
        })
    }

    fn size(&self) -> (f64, f64) {
        #[allow(clippy::cast_precision_loss)] // a few thousand tiles
        (
            (self.extent[2] - self.extent[0]) / self.cols as f64,
            (self.extent[3] - self.extent[1]) / self.rows as f64,
        )
    }

    /// Box `i`: `[minLon, minLat, maxLon, maxLat]`, as a subscribe message
    /// has it.
    pub fn bbox(&self, i: usize) -> [f64; 4] {
        let (w, h) = self.size();
        #[allow(clippy::cast_precision_loss)]
        let (col, row) = ((i % self.cols) as f64, (i / self.cols) as f64);
        let (mx, my) = (w * self.overlap, h * self.overlap);
        [
            self.extent[0] + col * w - mx,
            self.extent[1] + row * h - my,
            self.extent[0] + (col + 1.0) * w + mx,
            self.extent[1] + (row + 1.0) * h + my,
        ]
    }

    /// How many boxes hold the point (edges included, as the feed's
    /// filter): the clients a position at it is delivered to.
    pub fn containing(&self, lon: f64, lat: f64) -> usize {
        let (w, h) = self.size();
        // A box reaches at most one tile (overlap ≤ 1) beyond its own, so
        // only the point's tile and its neighbours can hold it.
        #[allow(clippy::cast_possible_truncation)] // clamped to the grid ± 1
        let (col, row) = (
            ((lon - self.extent[0]) / w)
                .floor()
                .clamp(-2.0, self.cols as f64 + 1.0) as i64,
            ((lat - self.extent[1]) / h)
                .floor()
                .clamp(-2.0, self.rows as f64 + 1.0) as i64,
        );
        let mut count = 0;
        for r in row - 1..=row + 1 {
            for c in col - 1..=col + 1 {
                let (Ok(r), Ok(c)) = (usize::try_from(r), usize::try_from(c)) else {
                    continue;
                };
                if r >= self.rows || c >= self.cols {
                    continue;
                }
                let i = r * self.cols + c;
                if i >= self.n {
                    continue;
                }
                let b = self.bbox(i);
                if (b[0]..=b[2]).contains(&lon) && (b[1]..=b[3]).contains(&lat) {
                    count += 1;
                }
            }
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CITY: [f64; 4] = [13.36, 52.49, 13.45, 52.55];

    #[test]
    fn a_thousand_clients_are_forty_by_twenty_five() {
        let t = Tiles::new(CITY, 1000, 0.25).unwrap();
        assert_eq!((t.cols, t.rows), (40, 25));
        assert_eq!(Tiles::new(CITY, 7, 0.0).unwrap().cols, 7);
        assert!(Tiles::new(CITY, 0, 0.0).is_err());
        assert!(Tiles::new(CITY, 10, 1.5).is_err());
        assert!(Tiles::new([1.0, 1.0, 0.0, 2.0], 10, 0.0).is_err());
    }

    #[test]
    fn containing_agrees_with_testing_every_box() {
        for (n, overlap) in [(1000, 0.25), (12, 0.0), (30, 1.0), (1, 0.5)] {
            let t = Tiles::new(CITY, n, overlap).unwrap();
            let mut seed = 7u64;
            let mut next = || {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                #[allow(clippy::cast_precision_loss)]
                let unit = (seed >> 11) as f64 / (1u64 << 53) as f64;
                unit
            };
            for _ in 0..2000 {
                // Some points outside the city too.
                let lon = CITY[0] - 0.02 + next() * (CITY[2] - CITY[0] + 0.04);
                let lat = CITY[1] - 0.02 + next() * (CITY[3] - CITY[1] + 0.04);
                let brute = (0..n)
                    .filter(|&i| {
                        let b = t.bbox(i);
                        (b[0]..=b[2]).contains(&lon) && (b[1]..=b[3]).contains(&lat)
                    })
                    .count();
                assert_eq!(t.containing(lon, lat), brute, "n {n}, ({lon}, {lat})");
            }
        }
    }

    #[test]
    fn without_overlap_every_inner_point_is_in_one_box_and_with_a_quarter_in_one_to_four() {
        let t = Tiles::new(CITY, 1000, 0.0).unwrap();
        assert_eq!(t.containing(13.4012345, 52.5123456), 1);
        let t = Tiles::new(CITY, 1000, 0.25).unwrap();
        let mut total = 0;
        for i in 0..100 {
            let f = f64::from(i) / 100.0 + 0.003;
            let k = t.containing(CITY[0] + f * 0.09, CITY[1] + (1.0 - f) * 0.06);
            assert!((1..=4).contains(&k), "{k}");
            total += k;
        }
        // (1 + 2 × 0.25)² = 2.25 on average.
        assert!((180..=270).contains(&total), "{total}");
    }
}
