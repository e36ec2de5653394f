//! Benchmark support for fleetpipe.
//!
//! - [`fixtures`]: deterministic, realistic wire-contract v1 payloads (JSON
//!   from phones, Protobuf from vehicle firmware) for the criterion
//!   benchmarks, the fuzz seed corpus and, later, the fleet simulator.

pub mod fixtures;
