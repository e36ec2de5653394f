//! Fuzz target for the wire-contract v1 decoders: `decode_message` on
//! arbitrary bytes, JSON or Protobuf, under every vehicle scope.
//!
//! Input layout: byte 0 selects the case, the rest is the message payload.
//! - bit 0: encoding, 0 = JSON, 1 = Protobuf;
//! - `(byte0 >> 1) % 3`: scope, 0 = `Topic("v")`, 1 = `Device("v")`, 2 = `FirstPing`.
//!
//! Besides "never panics", the invariants of README.md are asserted.
#![no_main]

use bytes::Bytes;
use fleetpipe_ingest::codec::{Encoding, VehicleScope, decode_message};
use fleetpipe_ingest::validate::{ValidationConfig, Validator};
use fleetpipe_model::VehicleId;
use libfuzzer_sys::fuzz_target;

/// The receive time: 2026-11-23T08:00:00Z, the same instant as
/// `fleetpipe_bench::fixtures::REFERENCE_NOW_MS`, which built the seeds.
const NOW_MS: i64 = 1_795_420_800_000;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let encoding = if selector & 1 == 0 { Encoding::Json } else { Encoding::Protobuf };
    let scope = match (selector >> 1) % 3 {
        0 => VehicleScope::Topic("v"),
        1 => VehicleScope::Device("v"),
        _ => VehicleScope::FirstPing,
    };
    let validator = Validator::new(ValidationConfig::default());
    let max_batch = validator.config().max_batch;
    let payload = Bytes::copy_from_slice(payload);

    match decode_message(&payload, encoding, scope, &validator, NOW_MS) {
        Err(rejection) => {
            assert!(
                rejection.raw == payload,
                "message rejection {rejection} does not keep the message's bytes"
            );
        }
        Ok(outcomes) => {
            assert!(
                (1..=max_batch).contains(&outcomes.len()),
                "{} outcomes, expected 1..={max_batch}",
                outcomes.len()
            );
            for (k, outcome) in outcomes.iter().enumerate() {
                match outcome {
                    Ok(ping) => {
                        assert!(
                            ping.lat.is_finite() && (-90.0..=90.0).contains(&ping.lat),
                            "element {k}: lat {} accepted",
                            ping.lat
                        );
                        assert!(
                            ping.lon.is_finite() && (-180.0..=180.0).contains(&ping.lon),
                            "element {k}: lon {} accepted",
                            ping.lon
                        );
                        assert!(
                            VehicleId::check(ping.vehicle_id.as_str()).is_ok(),
                            "element {k}: vehicle_id {:?} accepted",
                            ping.vehicle_id
                        );
                    }
                    Err(rejection) => {
                        assert!(
                            is_part_of(&rejection.raw, &payload),
                            "element {k}: rejection {rejection} keeps bytes that are not \
                             a contiguous part of the message"
                        );
                    }
                }
            }
        }
    }
});

/// Whether `part` is a contiguous run of `whole`: a dead letter keeps the
/// exact bytes of the refused element (possibly empty: a zero-length ping).
fn is_part_of(part: &[u8], whole: &[u8]) -> bool {
    part.is_empty() || whole.windows(part.len()).any(|w| w == part)
}
