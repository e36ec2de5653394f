//! Errors of the enrichment stage.

/// Why the enrichment stage could not be configured or started.
///
/// Every configuration variant names the configuration key at fault, so an
/// operator can fix the file without reading the source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrichError {
    /// A resolution outside H3's 0-15.
    #[error("enrich.h3_resolutions: {0} is not an H3 resolution (allowed: 0-15)")]
    ResolutionOutOfRange(u8),
    /// The same resolution listed twice; every record would carry it twice.
    #[error("enrich.h3_resolutions: resolution {0} is listed more than once")]
    DuplicateResolution(u8),
    /// A worker queue that can hold nothing would block the dispatcher forever.
    #[error("enrich.queue_capacity must be at least 1")]
    ZeroQueueCapacity,
    /// A threshold out of its range.
    #[error("{key}: {reason}")]
    Invalid {
        /// The configuration key.
        key: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// [`crate::EnrichService::start`] was called outside a Tokio runtime.
    #[error("the enrichment stage must be started from within a Tokio runtime")]
    NoRuntime,
}
