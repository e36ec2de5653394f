//! fleetpipe's ingest stage: gateways that take pings from vehicles.
//!
//! - [`codec`] and [`validate`]: the pure core, bytes in, validated pings or
//!   rejections out; no I/O.
//! - the gateways (embedded MQTT broker, external MQTT broker, WebSocket and
//!   HTTP) are thin async shells around it that authenticate devices, apply
//!   rate limits and hand records to the pipeline through bounded queues.

pub mod codec;
pub mod validate;
