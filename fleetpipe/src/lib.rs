//! fleetpipe, the binary's library half: configuration, the wiring of the
//! stages, the pipeline's own metrics ([`metrics`]), and the operational
//! endpoints. `main.rs` is only the CLI.
//!
//! Stages never import each other; they meet here, connected by bounded
//! queues, and acknowledgements travel back inside the records.

pub mod config;
pub mod demo;
pub mod metrics;
pub mod ops;
pub mod pipeline;

pub use config::Config;
pub use pipeline::{Pipeline, PipelineError};
