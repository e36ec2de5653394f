//! fleetpipe, the binary's library half: configuration, the wiring of the
//! stages, the pipeline's own metrics ([`metrics`]), and the operational
//! endpoints. `main.rs` is only the CLI.
//!
//! Stages never import each other; they meet here, connected by bounded
//! queues, and acknowledgements travel back inside the records. The
//! pipeline is assembled from the configured components (sources from
//! `fleetpipe-ingest`, sinks from `fleetpipe-sink`), and every task it runs
//! is owned by a supervised set (`tasks`): one that ends early stops it.
//! Which part of the pipeline a process runs is its role ([`cluster`]):
//! the whole of it, or one part of a layout connected by Kafka topics.

// The binary only wires components: a function of its longer than
// clippy.toml's too-many-lines-threshold is wiring that belongs in a
// helper or in a component (issue 18).
#![warn(clippy::too_many_lines)]

pub mod cluster;
pub mod config;
pub mod demo;
pub mod metrics;
pub mod ops;
pub mod pipeline;
mod roles;
mod tasks;

pub use config::Config;
pub use pipeline::{Pipeline, PipelineError};
