//! Why an input was rejected: the fixed set of reason codes of wire contract v1.

use serde::{Deserialize, Serialize};

/// Reason a ping or a message was rejected and dead-lettered.
///
/// This set is part of the public contract: codes appear in WebSocket and
/// HTTP error answers, in dead-letter records and in the
/// `fleetpipe_rejected_total{reason=...}` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// The payload is not well-formed JSON or Protobuf.
    DecodeFailed,
    /// Well-formed, but a field is missing, of the wrong type or out of its domain.
    SchemaInvalid,
    /// Latitude/longitude not finite, out of range, or (0, 0) when not allowed.
    CoordInvalid,
    /// Device time further in the future than `max_future` allows.
    TsFuture,
    /// Device time further in the past than `max_past` allows.
    TsPast,
    /// Payload, batch, string or list larger than the configured limits.
    Oversize,
    /// The ping's vehicle id differs from the topic's or from the rest of its batch.
    VehicleMismatch,
    /// Missing or bad credentials, or a device publishing for another vehicle.
    Unauthorized,
    /// Over the device's rate limit.
    RateLimited,
}

impl RejectReason {
    /// Every reason, in a stable order (used to pre-register metrics).
    pub const ALL: [RejectReason; 9] = [
        RejectReason::DecodeFailed,
        RejectReason::SchemaInvalid,
        RejectReason::CoordInvalid,
        RejectReason::TsFuture,
        RejectReason::TsPast,
        RejectReason::Oversize,
        RejectReason::VehicleMismatch,
        RejectReason::Unauthorized,
        RejectReason::RateLimited,
    ];

    /// Whether the same ping sent again later may be accepted: a rate
    /// limit passes, a malformed or unauthorized ping stays refused. A
    /// ping refused for a retriable reason is never covered by an
    /// acknowledgement, so a device following the wire contract keeps it
    /// and sends it again.
    pub const fn is_retriable(self) -> bool {
        matches!(self, RejectReason::RateLimited)
    }

    /// The wire code, e.g. `"coord_invalid"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            RejectReason::DecodeFailed => "decode_failed",
            RejectReason::SchemaInvalid => "schema_invalid",
            RejectReason::CoordInvalid => "coord_invalid",
            RejectReason::TsFuture => "ts_future",
            RejectReason::TsPast => "ts_past",
            RejectReason::Oversize => "oversize",
            RejectReason::VehicleMismatch => "vehicle_mismatch",
            RejectReason::Unauthorized => "unauthorized",
            RejectReason::RateLimited => "rate_limited",
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_name_equals_wire_code() {
        for reason in RejectReason::ALL {
            let json = serde_json::to_string(&reason).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", reason.as_str()));
        }
    }
}
