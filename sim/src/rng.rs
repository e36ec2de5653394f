//! The simulation's random numbers: ChaCha8 streams (a fixed algorithm, so
//! the same seed gives the same numbers on every platform and release, which
//! `StdRng` does not promise), with the few distributions the model needs.

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

/// Stream of the city layout; vehicle `i` uses stream `i`.
pub(crate) const CITY_STREAM: u64 = u64::MAX;

/// A ChaCha8 generator with helpers.
#[derive(Debug, Clone)]
pub(crate) struct Rand(ChaCha8Rng);

impl Rand {
    /// Stream `stream` of the generator keyed by `key`, at word `pos`.
    ///
    /// Every vehicle has its own stream of one key; keeping only the word
    /// position per vehicle (8 bytes instead of ChaCha8Rng's ~300-byte
    /// buffer) is what keeps a million vehicles small. Re-creating the
    /// generator costs one ChaCha block computation per tick.
    pub(crate) fn at(key: [u8; 32], stream: u64, pos: u64) -> Self {
        let mut rng = ChaCha8Rng::from_seed(key);
        rng.set_stream(stream);
        rng.set_word_pos(u128::from(pos));
        Self(rng)
    }

    /// The key derived from a user seed.
    pub(crate) fn key(seed: u64) -> [u8; 32] {
        ChaCha8Rng::seed_from_u64(seed).get_seed()
    }

    /// Current word position, to resume the stream later with [`Rand::at`].
    pub(crate) fn pos(&self) -> u64 {
        // 2^64 words per vehicle is beyond any run's reach.
        u64::try_from(self.0.get_word_pos()).unwrap_or(u64::MAX)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn f64(&mut self) -> f64 {
        // The top 53 bits fill an f64 mantissa exactly.
        (self.0.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)` (`lo` when the range is empty).
    pub(crate) fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.f64()
    }

    /// Uniform in `[r[0], r[1]]`, for config ranges of whole numbers.
    pub(crate) fn range_u(&mut self, r: [u32; 2]) -> u32 {
        let span = u64::from(r[1].saturating_sub(r[0])) + 1;
        r[0].saturating_add(u32::try_from(self.0.next_u64() % span).unwrap_or(0))
    }

    /// Uniform in `[0, n)`; 0 when `n` is 0.
    pub(crate) fn below(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        u32::try_from(self.0.next_u64() % u64::from(n)).unwrap_or(0)
    }

    /// `true` with probability `p`.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }

    /// Approximately standard normal (sum of three uniforms; bounded at ±3,
    /// so a fix is never absurdly far off).
    pub(crate) fn normal(&mut self) -> f64 {
        (self.range(-1.0, 1.0) + self.range(-1.0, 1.0) + self.range(-1.0, 1.0)).clamp(-3.0, 3.0)
    }
}

/// A hash of a vehicle index to `[0, 1)`, for per-vehicle traits (driving
/// style) that are constant and so need no state (SplitMix64 finaliser).
pub(crate) fn trait01(seed: u64, vehicle: u32, salt: u64) -> f64 {
    let mut z = seed ^ (u64::from(vehicle) << 8) ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}
