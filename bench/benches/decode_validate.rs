//! Throughput of the per-message ingest core: `decode_message`, which decodes
//! a payload (JSON or Protobuf, one ping or a batch) and validates every ping.
//!
//! Run with:
//! `cargo bench -p fleetpipe-bench --bench decode_validate -- --warm-up-time 1 --measurement-time 3`
//!
//! Criterion reports the time per message and, through
//! `Throughput::Elements`, pings per second.

// A benchmark of a broken fixture must stop loudly rather than measure rejections.
#![allow(clippy::expect_used)]

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fleetpipe_bench::fixtures::{
    JSON_VEHICLE, PROTO_VEHICLE, REFERENCE_NOW_MS, json_batch, json_ping, proto_batch, proto_ping,
};
use fleetpipe_ingest::codec::{Encoding, VehicleScope, decode_message};
use fleetpipe_ingest::validate::{ValidationConfig, Validator};

/// Pings per batch message.
const BATCH: usize = 100;

/// One benchmark case: a payload built once, outside the timed loop.
struct Case {
    name: &'static str,
    encoding: Encoding,
    vehicle: &'static str,
    pings: usize,
    payload: Bytes,
}

fn cases() -> Vec<Case> {
    let now = REFERENCE_NOW_MS;
    vec![
        Case {
            name: "json_single",
            encoding: Encoding::Json,
            vehicle: JSON_VEHICLE,
            pings: 1,
            payload: Bytes::from(json_ping(42, now)),
        },
        Case {
            name: "json_batch_100",
            encoding: Encoding::Json,
            vehicle: JSON_VEHICLE,
            pings: BATCH,
            payload: Bytes::from(json_batch(BATCH, now)),
        },
        Case {
            name: "proto_single",
            encoding: Encoding::Protobuf,
            vehicle: PROTO_VEHICLE,
            pings: 1,
            payload: Bytes::from(proto_ping(42, now)),
        },
        Case {
            name: "proto_batch_100",
            encoding: Encoding::Protobuf,
            vehicle: PROTO_VEHICLE,
            pings: BATCH,
            payload: Bytes::from(proto_batch(BATCH, now)),
        },
    ]
}

fn decode_validate(c: &mut Criterion) {
    let validator = Validator::new(ValidationConfig::default());
    let now = REFERENCE_NOW_MS;
    let mut group = c.benchmark_group("decode_validate");
    for case in cases() {
        // Guard: a benchmark of rejections would measure the wrong thing.
        let check = decode_message(
            &case.payload,
            case.encoding,
            VehicleScope::Topic(case.vehicle),
            &validator,
            now,
        )
        .expect("fixture message is accepted");
        assert_eq!(check.len(), case.pings, "{}: ping count", case.name);
        assert!(
            check.iter().all(Result::is_ok),
            "{}: every ping is valid",
            case.name
        );

        group.throughput(Throughput::Elements(case.pings as u64));
        group.bench_function(case.name, |b| {
            b.iter(|| {
                decode_message(
                    black_box(&case.payload),
                    black_box(case.encoding),
                    black_box(VehicleScope::Topic(case.vehicle)),
                    &validator,
                    black_box(now),
                )
            });
        });
    }
    group.finish();
}

criterion_group!(benches, decode_validate);
criterion_main!(benches);
