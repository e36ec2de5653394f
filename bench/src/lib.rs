//! Benchmark support for fleetpipe.
//!
//! - [`fixtures`]: deterministic, realistic wire-contract v1 payloads (JSON
//!   from phones, Protobuf from vehicle firmware) for the criterion
//!   benchmarks, the fuzz seed corpus and, later, the fleet simulator.
//! - [`peers`]: what the end-to-end benchmark compares fleetpipe with on the
//!   same machine: plain binary COPY into fleetpipe's `telemetry` table (the
//!   database's ceiling) and geofencing in PostGIS.
//! - [`host`]: what a benchmark report says about the machine.
//! - [`procfs`]: CPU time and memory of a process, busy CPU of the machine.

pub mod fixtures;
pub mod host;
pub mod peers;
pub mod process;
pub mod procfs;
