//! fleetpipe's fleet simulator: a deterministic synthetic fleet and a load
//! publisher that sends its pings to fleetpipe.
//!
//! Two layers:
//!
//! - **The simulation core** (pure: no I/O, no clock, no async). A
//!   [`SimConfig`] and a seed build a [`City`] (a street grid with depots,
//!   customers, charging stations and a restricted zone, exportable as the
//!   GeoJSON fences fleetpipe loads: [`City::geofences_geojson`]) and a
//!   [`Fleet`] of vehicles that drive delivery tours through it.
//!   [`Fleet::advance`] moves simulated time forward and yields, in time
//!   order, the [`SimMessage`]s each device publishes; [`encode()`] turns one
//!   into wire contract v1 JSON or Protobuf. Same config and seed, same
//!   bytes.
//! - **The publisher** (tokio): [`Publisher`] drives a fleet at a target
//!   rate over MQTT or WebSocket, measures publish-to-acknowledgement
//!   latency and exposes live [`Stats`]. The `fleetsim` binary is a thin CLI
//!   over both.
//!
//! ```
//! use fleetpipe_sim::{Encoding, Fleet, SimConfig, encode};
//!
//! let cfg = SimConfig { vehicles: 10, ..SimConfig::default() };
//! let mut fleet = Fleet::new(&cfg, 1_795_420_800_000)?;
//! let fences = fleet.city().geofences_geojson(); // for geofence.file
//! let mut out = Vec::new();
//! fleet.advance(60_000, &mut out); // one simulated minute
//! let payload = encode(&out[0], Encoding::Json);
//! assert!(payload.starts_with(b"{\"vehicle_id\":\"sim-"));
//! # assert!(fences.contains("depot-1"));
//! # Ok::<(), fleetpipe_sim::SimError>(())
//! ```

pub mod city;
pub mod config;
pub mod encode;
pub mod fleet;
pub mod publish;
mod rng;
pub mod stats;

pub use city::{City, Node, Place, PlaceKind, RestrictedZone};
pub use config::SimConfig;
pub use encode::{Encoding, encode, encode_json, encode_protobuf, mqtt_topic};
pub use fleet::{Fleet, SimMessage, SimPing};
pub use publish::{
    AckMode, MqttConfig, Publisher, PublisherConfig, Rate, RateControl, Transport, WsConfig,
};
pub use stats::{Latency, Stats, StatsHandle};

/// Errors of the simulator and publisher.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A config value is out of range.
    #[error("{key}: {reason}")]
    Config {
        /// The offending field.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The publisher could not run (e.g. a bad address).
    #[error("publisher: {0}")]
    Publish(String),
}
