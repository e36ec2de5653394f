//! Rust types generated from `proto/fleetpipe/v1/telemetry.proto`, the
//! Protobuf half of wire contract v1.
#![allow(missing_docs, clippy::all, missing_debug_implementations)]

include!(concat!(env!("OUT_DIR"), "/fleetpipe.v1.rs"));

/// First two bytes of every encoded [`PingBatch`]: the tag of field 32,
/// wire type 2 (`32 << 3 | 2 = 258`, as a varint). A [`Ping`] never has
/// field 32, so this prefix tells the two messages apart.
pub const PING_BATCH_PREFIX: [u8; 2] = [0x82, 0x02];
