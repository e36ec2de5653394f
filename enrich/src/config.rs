//! Configuration of the enrichment stage (the `[enrich]` section).

use serde::Deserialize;

use crate::error::EnrichError;

/// Highest resolution H3 defines.
const MAX_H3_RESOLUTION: u8 = 15;

/// Resolutions indexed when none are configured: 7 (~5 km², districts) for
/// coarse aggregation and 9 (~0.1 km², blocks) for street-level analysis.
const DEFAULT_H3_RESOLUTIONS: [u8; 2] = [7, 9];

/// Settings of the enrichment stage.
///
/// Every field has a default, so an empty or missing `[enrich]` section is
/// valid. Call [`EnrichConfig::validate`] (done by [`crate::Enricher::new`]
/// and [`crate::EnrichService::start`]) before use.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrichConfig {
    /// Worker tasks; each vehicle always goes to the same worker, so its pings
    /// stay in order. 0 = one per CPU core.
    pub workers: usize,
    /// Capacity of each worker's input queue (pings). Bounded: a full queue
    /// stops the dispatcher, which stops ingest.
    pub queue_capacity: usize,
    /// H3 resolutions (0-15) to index every position at, in output order.
    /// Empty disables H3 indexing.
    pub h3_resolutions: Vec<u8>,
}

impl EnrichConfig {
    /// Default of [`EnrichConfig::workers`]: one per CPU core.
    pub const fn default_workers() -> usize {
        0
    }

    /// Default of [`EnrichConfig::queue_capacity`].
    pub const fn default_queue_capacity() -> usize {
        4096
    }

    /// Default of [`EnrichConfig::h3_resolutions`].
    pub const fn default_h3_resolutions() -> [u8; 2] {
        DEFAULT_H3_RESOLUTIONS
    }

    /// Checks the settings, naming the offending key on error.
    ///
    /// # Errors
    ///
    /// A resolution above 15 or listed twice, or a `queue_capacity` of 0.
    pub fn validate(&self) -> Result<(), EnrichError> {
        if self.queue_capacity == 0 {
            return Err(EnrichError::ZeroQueueCapacity);
        }
        // At most 16 distinct values are valid, so a bitset finds duplicates.
        let mut seen: u16 = 0;
        for &res in &self.h3_resolutions {
            if res > MAX_H3_RESOLUTION {
                return Err(EnrichError::ResolutionOutOfRange(res));
            }
            let bit = 1u16 << res;
            if seen & bit != 0 {
                return Err(EnrichError::DuplicateResolution(res));
            }
            seen |= bit;
        }
        Ok(())
    }
}

impl Default for EnrichConfig {
    fn default() -> Self {
        Self {
            workers: Self::default_workers(),
            queue_capacity: Self::default_queue_capacity(),
            h3_resolutions: Self::default_h3_resolutions().to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_documented_values_and_valid() {
        let config = EnrichConfig::default();
        assert_eq!(config.workers, 0);
        assert_eq!(config.queue_capacity, 4096);
        assert_eq!(config.h3_resolutions, vec![7, 9]);
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn all_resolutions_zero_to_fifteen_are_accepted() {
        let config = EnrichConfig {
            h3_resolutions: (0..=15).rev().collect(),
            ..EnrichConfig::default()
        };
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn empty_resolutions_are_accepted() {
        let config = EnrichConfig {
            h3_resolutions: Vec::new(),
            ..EnrichConfig::default()
        };
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn resolution_above_fifteen_is_rejected_naming_the_key() {
        let config = EnrichConfig {
            h3_resolutions: vec![7, 16],
            ..EnrichConfig::default()
        };
        let err = config.validate();
        assert_eq!(err, Err(EnrichError::ResolutionOutOfRange(16)));
        let msg = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("enrich.h3_resolutions"), "{msg}");
        assert!(msg.contains("16"), "{msg}");
    }

    #[test]
    fn duplicate_resolution_is_rejected_naming_the_key() {
        let config = EnrichConfig {
            h3_resolutions: vec![9, 7, 9],
            ..EnrichConfig::default()
        };
        let err = config.validate();
        assert_eq!(err, Err(EnrichError::DuplicateResolution(9)));
        let msg = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("enrich.h3_resolutions"), "{msg}");
    }

    #[test]
    fn missing_keys_take_defaults() {
        let config: Result<EnrichConfig, _> = serde_json::from_str(r#"{"workers": 3}"#);
        assert_eq!(
            config.ok(),
            Some(EnrichConfig {
                workers: 3,
                ..EnrichConfig::default()
            })
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let config: Result<EnrichConfig, _> = serde_json::from_str(r#"{"worker": 3}"#);
        let msg = config.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("unknown field `worker`"), "{msg}");
    }

    #[test]
    fn zero_queue_capacity_is_rejected_naming_the_key() {
        let config = EnrichConfig {
            queue_capacity: 0,
            ..EnrichConfig::default()
        };
        let err = config.validate();
        assert_eq!(err, Err(EnrichError::ZeroQueueCapacity));
        let msg = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("enrich.queue_capacity"), "{msg}");
    }
}
