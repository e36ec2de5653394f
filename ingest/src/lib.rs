//! fleetpipe's ingest stage: gateways that take pings from vehicles.
//!
//! - [`codec`] and [`validate`]: the pure core, bytes in, validated pings or
//!   rejections out; no I/O.
//! - [`gateway`]: what every gateway does with a message (decode, validate,
//!   rate-limit, hand over with an acknowledgement handle).
//! - [`mqtt`] (embedded rumqttd broker or external broker) and [`http`]
//!   (WebSocket and HTTP): thin async shells around the core.
//! - [`auth`] and [`ratelimit`]: who may publish, and how fast.
//! - [`tls`]: TLS on the MQTT and HTTP listeners, and device certificates.
//! - [`source`]: the gateways as components: `[ingest]`, its validation,
//!   and each gateway built (listeners bound) into tasks the pipeline runs.
//! - [`metrics`]: every metric ingest records, declared once.

pub mod auth;
pub mod codec;
pub mod gateway;
pub mod http;
mod io;
pub mod metrics;
pub mod mqtt;
pub mod ratelimit;
mod reload;
pub mod source;
pub mod tls;
pub mod validate;

pub use auth::{AuthConfig, Authenticator};
pub use gateway::{IngestOutput, Ingestor};
pub use ratelimit::{RateLimitConfig, RateLimiter};
pub use source::{
    BuiltSource, IngestConfig, IngestConfigError, SourceConfig, SourceContext, SourceError,
    SourceTask,
};
pub use validate::{ValidationConfig, Validator};
