//! fleetpipe's shared data model.
//!
//! Every stage (ingest, enrich, sink) speaks these types and nothing else of
//! each other: a validated [`Ping`], where it came from ([`Origin`]), the
//! records a sink writes ([`SinkRecord`]) and the acknowledgement handle
//! ([`Ack`]) that travels with each record so a gateway learns when its data
//! is durable without importing the sink.
//!
//! [`topic_record`] defines the records of fleetpipe's Kafka topics, both
//! ways (encode and decode), for the Kafka sink and the scale-out roles.
//!
//! This crate does no I/O and imports no stage.

pub mod ack;
pub mod event;
#[cfg(any(test, feature = "test-support"))]
pub mod fixtures;
pub mod metrics;
pub mod ping;
pub mod proto;
pub mod reason;
pub mod record;
pub mod topic_record;
pub mod wire;

pub use ack::{Ack, AckStatus, BatchAck};
pub use event::{EventType, VehicleEvent, event_id};
pub use ping::{AttrValue, Ping, VehicleId, VehicleIdError};
pub use reason::RejectReason;
pub use record::{
    Accepted, DeadLetter, Enrichment, Gateway, Origin, PingFlags, RawRecord, SinkRecord,
    TelemetryRecord,
};

/// Version of the wire contract and of the output record schema.
///
/// Written into every output record (`schema_version`) so consumers can
/// evolve safely.
pub const SCHEMA_VERSION: u32 = 1;
