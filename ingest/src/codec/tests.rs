//! Byte-fixture tests of the decoder, plus property tests: no input panics,
//! and every valid ping survives both encodings unchanged.

use super::*;
use crate::validate::ValidationConfig;
use proptest::prelude::*;

const NOW: i64 = 1_795_420_800_000; // 2026-11-23T08:00:00Z

fn validator() -> Validator {
    Validator::new(ValidationConfig::default())
}

fn decode(
    payload: &[u8],
    encoding: Encoding,
    scope: VehicleScope<'_>,
) -> Result<DecodedMessage, Rejection> {
    decode_message(
        &Bytes::copy_from_slice(payload),
        encoding,
        scope,
        &validator(),
        NOW,
    )
}

fn reasons(out: &DecodedMessage) -> Vec<Option<RejectReason>> {
    out.iter()
        .map(|r| r.as_ref().err().map(|e| e.reason))
        .collect()
}

#[test]
fn json_single_ping_with_every_field() {
    let payload = br#"{"vehicle_id":"van-1","seq":7,"ts":"2026-11-23T07:59:59.250Z","lat":52.52,"lon":13.405,
        "alt_m":34.5,"speed_kmh":42.0,"heading_deg":90.0,"accuracy_m":4.0,"soc_pct":81.5,"battery_v":12.6,
        "charging":false,"odometer_km":12345.6,"ignition":true,"dtcs":["P0301"],"attrs":{"fw":"1.2.3","temp":21.5,"n":3,"ok":true},
        "future_field":{"ignored":true}}"#;
    let out = decode(payload, Encoding::Json, VehicleScope::Topic("van-1")).unwrap_or_default();
    assert_eq!(out.len(), 1);
    let ping = out[0]
        .as_ref()
        .ok()
        .cloned()
        .unwrap_or_else(|| panic!("{:?}", out[0]));
    assert_eq!(ping.vehicle_id.as_str(), "van-1");
    assert_eq!(ping.seq, Some(7));
    assert_eq!(ping.ts_ms, NOW - 750);
    assert_eq!(ping.dtcs, vec!["P0301".to_string()]);
    assert_eq!(ping.attrs.get("fw"), Some(&AttrValue::Str("1.2.3".into())));
    assert_eq!(ping.attrs.get("n"), Some(&AttrValue::Int(3)));
    assert_eq!(ping.attrs.get("temp"), Some(&AttrValue::Float(21.5)));
    assert_eq!(ping.ignition, Some(true));
}

#[test]
fn json_ts_as_epoch_millis_and_offsets() {
    let a = format!(r#"{{"vehicle_id":"v","ts":{},"lat":1,"lon":2}}"#, NOW - 1);
    let out = decode(a.as_bytes(), Encoding::Json, VehicleScope::FirstPing).unwrap_or_default();
    assert_eq!(out[0].as_ref().map(|p| p.ts_ms).ok(), Some(NOW - 1));
    let b = br#"{"vehicle_id":"v","ts":"2026-11-23T09:00:00+01:00","lat":1,"lon":2}"#;
    let out = decode(b, Encoding::Json, VehicleScope::FirstPing).unwrap_or_default();
    assert_eq!(out[0].as_ref().map(|p| p.ts_ms).ok(), Some(NOW));
}

#[test]
fn json_batch_keeps_good_pings_and_dead_letters_bad_ones_with_their_bytes() {
    let payload = br#"[
        {"vehicle_id":"van-1","seq":1,"ts":1795420799000,"lat":52.5,"lon":13.4},
        {"vehicle_id":"van-1","seq":2,"ts":1795420799000,"lat":95.0,"lon":13.4},
        {"vehicle_id":"van-1","seq":3,"ts":"yesterday","lat":52.5,"lon":13.4},
        {"vehicle_id":"van-2","seq":4,"ts":1795420799000,"lat":52.5,"lon":13.4},
        {"vehicle_id":"van-1","seq":5,"ts":1795420799000,"lat":52.5,"lon":13.4}
    ]"#;
    let out = decode(payload, Encoding::Json, VehicleScope::Topic("van-1")).unwrap_or_default();
    use RejectReason::*;
    assert_eq!(
        reasons(&out),
        vec![
            None,
            Some(CoordInvalid),
            Some(SchemaInvalid),
            Some(VehicleMismatch),
            None
        ]
    );
    let rejected = out[1]
        .as_ref()
        .err()
        .map(|r| r.raw.clone())
        .unwrap_or_default();
    assert_eq!(
        &rejected[..],
        br#"{"vehicle_id":"van-1","seq":2,"ts":1795420799000,"lat":95.0,"lon":13.4}"#
    );
    assert_eq!(
        out[1]
            .as_ref()
            .err()
            .and_then(|r| r.vehicle_id.clone())
            .map(|v| v.to_string()),
        Some("van-1".into())
    );
}

#[test]
fn each_message_level_reason() {
    use RejectReason::*;
    let cases: Vec<(&[u8], Encoding, RejectReason)> = vec![
        (b"{\"vehicle_id\":", Encoding::Json, DecodeFailed),
        (b"\xff\xfe", Encoding::Json, DecodeFailed),
        (b"", Encoding::Json, DecodeFailed),
        (b"   ", Encoding::Json, DecodeFailed),
        (b"42", Encoding::Json, SchemaInvalid),
        (b"[]", Encoding::Json, SchemaInvalid),
        (b"[1,", Encoding::Json, DecodeFailed),
        (b"\x0a\xff", Encoding::Protobuf, DecodeFailed),
        (b"", Encoding::Protobuf, DecodeFailed),
        (&[0x82, 0x02, 0x05, 0x01], Encoding::Protobuf, DecodeFailed),
    ];
    for (payload, enc, expected) in cases {
        // A single-ping message may be refused whole or as its one element.
        let got = match decode(payload, enc, VehicleScope::FirstPing) {
            Err(r) => Some(r.reason),
            Ok(out) if out.len() == 1 => out[0].as_ref().err().map(|r| r.reason),
            Ok(_) => None,
        };
        assert_eq!(got, Some(expected), "payload {payload:?}");
    }
}

#[test]
fn json_element_errors_are_per_element() {
    let out = decode(
        br#"[{"vehicle_id":"v","ts":1795420799000,"lat":"north","lon":2}, 7]"#,
        Encoding::Json,
        VehicleScope::FirstPing,
    )
    .unwrap_or_default();
    assert_eq!(
        reasons(&out),
        vec![
            Some(RejectReason::SchemaInvalid),
            Some(RejectReason::SchemaInvalid)
        ]
    );
    assert_eq!(out[1].as_ref().err().map(|r| &r.raw[..]), Some(&b"7"[..]));
}

#[test]
fn oversize_message_and_batch() {
    let v = Validator::new(ValidationConfig {
        max_payload_bytes: 64,
        max_batch: 2,
        ..ValidationConfig::default()
    });
    let big = Bytes::from(vec![b' '; 65]);
    let r = decode_message(&big, Encoding::Json, VehicleScope::FirstPing, &v, NOW).err();
    assert_eq!(r.map(|r| r.reason), Some(RejectReason::Oversize));
    let three = Bytes::from_static(br#"[{},{},{}]"#);
    let r = decode_message(&three, Encoding::Json, VehicleScope::FirstPing, &v, NOW).err();
    assert_eq!(r.map(|r| r.reason), Some(RejectReason::Oversize));
}

#[test]
fn device_scope_refuses_other_vehicles_as_unauthorized() {
    let out = decode(
        br#"{"vehicle_id":"van-2","ts":1795420799000,"lat":1,"lon":2}"#,
        Encoding::Json,
        VehicleScope::Device("van-1"),
    )
    .unwrap_or_default();
    assert_eq!(reasons(&out), vec![Some(RejectReason::Unauthorized)]);
}

#[test]
fn anonymous_batch_must_be_one_vehicle() {
    let out = decode(
        br#"[{"vehicle_id":"a","ts":1795420799000,"lat":1,"lon":2},{"vehicle_id":"b","ts":1795420799000,"lat":1,"lon":2}]"#,
        Encoding::Json,
        VehicleScope::FirstPing,
    )
    .unwrap_or_default();
    assert_eq!(
        reasons(&out),
        vec![None, Some(RejectReason::VehicleMismatch)]
    );
}

fn proto_ping(vehicle: &str, seq: u64, lat: f64) -> proto::Ping {
    proto::Ping {
        vehicle_id: vehicle.into(),
        seq: Some(seq),
        ts_ms: Some(NOW - 1000),
        lat: Some(lat),
        lon: Some(13.4),
        ..Default::default()
    }
}

#[test]
fn protobuf_single_and_batch() {
    let one = proto_ping("van-1", 1, 52.5).encode_to_vec();
    let out = decode(&one, Encoding::Protobuf, VehicleScope::Topic("van-1")).unwrap_or_default();
    assert_eq!(reasons(&out), vec![None]);

    let bad = proto_ping("van-1", 2, -91.0);
    let batch = proto::PingBatch {
        pings: vec![proto_ping("van-1", 1, 52.5), bad.clone()],
    }
    .encode_to_vec();
    assert_eq!(&batch[..2], &proto::PING_BATCH_PREFIX);
    let out = decode(&batch, Encoding::Protobuf, VehicleScope::Topic("van-1")).unwrap_or_default();
    assert_eq!(reasons(&out), vec![None, Some(RejectReason::CoordInvalid)]);
    // The dead-lettered element is the element, re-encoded byte for byte.
    assert_eq!(
        out[1].as_ref().err().map(|r| r.raw.to_vec()),
        Some(bad.encode_to_vec())
    );
}

#[test]
fn protobuf_elements_keep_their_exact_bytes_and_unknown_fields_are_skipped() {
    // Found by the fuzzer: a ping of only an unknown field (19, fixed32) used
    // to be dead-lettered re-encoded, as zero bytes.
    let out = decode(
        &[157, 1, 10, 1, 10, 1],
        Encoding::Protobuf,
        VehicleScope::Topic("v"),
    )
    .unwrap_or_default();
    assert_eq!(
        out[0].as_ref().err().map(|r| r.raw.to_vec()),
        Some(vec![157, 1, 10, 1, 10, 1])
    );
    // A batch with an unknown varint field before and after its pings.
    let ping = proto_ping("v", 1, 91.0).encode_to_vec();
    let mut batch = proto::PingBatch {
        pings: vec![proto_ping("v", 1, 91.0)],
    }
    .encode_to_vec();
    batch.extend_from_slice(&[0x08, 0x05]); // field 1, varint 5
    let out = decode(&batch, Encoding::Protobuf, VehicleScope::Topic("v")).unwrap_or_default();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].as_ref().err().map(|r| r.raw.to_vec()), Some(ping));
    // A truncated batch is refused whole.
    let cut = &batch[..batch.len() - 4];
    assert_eq!(
        decode(cut, Encoding::Protobuf, VehicleScope::Topic("v"))
            .err()
            .map(|r| r.reason),
        Some(RejectReason::DecodeFailed)
    );
}

#[test]
fn protobuf_attr_without_value_is_schema_invalid() {
    let mut p = proto_ping("v", 1, 10.0);
    p.attrs.insert("k".into(), proto::AttrValue { kind: None });
    let out = decode(
        &p.encode_to_vec(),
        Encoding::Protobuf,
        VehicleScope::Topic("v"),
    )
    .unwrap_or_default();
    assert_eq!(reasons(&out), vec![Some(RejectReason::SchemaInvalid)]);
}

#[test]
fn an_invalid_first_ping_does_not_define_the_batch_vehicle() {
    let payload = format!(
        r#"[{{"vehicle_id":"","ts":{NOW},"lat":1,"lon":2}},{{"vehicle_id":"ok","ts":{NOW},"lat":1,"lon":2}},{{"vehicle_id":"ok","ts":{NOW},"lat":1,"lon":2}}]"#
    );
    let out =
        decode(payload.as_bytes(), Encoding::Json, VehicleScope::FirstPing).unwrap_or_default();
    assert_eq!(
        reasons(&out),
        vec![Some(RejectReason::SchemaInvalid), None, None]
    );
}

#[test]
fn an_oversize_batch_is_refused_before_its_elements_are_decoded() {
    let v = Validator::new(ValidationConfig {
        max_batch: 10,
        ..ValidationConfig::default()
    });
    // Eleven elements, all of them undecodable as pings: the count decides first.
    let payload = Bytes::from(format!("[{}]", ["{\"lat\":\"x\"}"; 11].join(",")));
    let r = decode_message(&payload, Encoding::Json, VehicleScope::FirstPing, &v, NOW).err();
    assert_eq!(r.map(|r| r.reason), Some(RejectReason::Oversize));
}

#[test]
fn protobuf_missing_required_fields() {
    let p = proto::Ping {
        vehicle_id: "v".into(),
        ts_ms: Some(NOW),
        lat: Some(1.0),
        ..Default::default()
    };
    let out = decode(
        &p.encode_to_vec(),
        Encoding::Protobuf,
        VehicleScope::FirstPing,
    )
    .unwrap_or_default();
    assert_eq!(
        out[0].as_ref().err().map(|r| r.detail.as_str()),
        Some("missing required field lon")
    );
}

// ------------------------------------------------------------ properties

fn arb_ping() -> impl Strategy<Value = Candidate> {
    (
        "[A-Za-z0-9_.:-]{1,64}",
        proptest::option::of(any::<u64>()),
        (NOW - 7 * 86_400_000)..=(NOW + 300_000),
        -90.0f64..=90.0,
        -180.0f64..=180.0,
        proptest::option::of(0.0f64..300.0),
        proptest::option::of(0.0f64..100.0),
        proptest::collection::vec("[PCBU][0-3][0-9A-F]{3}", 0..4),
        proptest::collection::btree_map(
            "[a-z]{1,8}",
            prop_oneof![
                any::<bool>().prop_map(AttrValue::Bool),
                any::<i64>().prop_map(AttrValue::Int),
                "[ -~]{0,20}".prop_map(AttrValue::Str),
            ],
            0..4,
        ),
    )
        .prop_filter("not null island", |t| !(t.3 == 0.0 && t.4 == 0.0))
        .prop_map(
            |(vehicle_id, seq, ts_ms, lat, lon, speed, soc, dtcs, attrs)| Candidate {
                vehicle_id,
                seq,
                ts_ms: Some(ts_ms),
                lat: Some(lat),
                lon: Some(lon),
                speed_kmh: speed,
                soc_pct: soc,
                dtcs,
                attrs: attrs.into_iter().collect(),
                ..Candidate::default()
            },
        )
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let b = Bytes::from(bytes);
        for enc in [Encoding::Json, Encoding::Protobuf] {
            let _ = decode_message(&b, enc, VehicleScope::FirstPing, &validator(), NOW);
        }
    }

    #[test]
    fn json_shaped_garbage_never_panics(s in r#"[\[\]{}",:0-9a-z_ .eE+-]{0,200}"#) {
        let b = Bytes::from(s);
        let _ = decode_message(&b, Encoding::Json, VehicleScope::FirstPing, &validator(), NOW);
    }

    #[test]
    fn valid_pings_survive_protobuf_unchanged(c in arb_ping()) {
        let ping = validator().validate(c, NOW).map_err(|e| TestCaseError::fail(e.0.detail))?;
        let bytes = Bytes::from(proto::Ping::from(&ping).encode_to_vec());
        let out = decode_message(&bytes, Encoding::Protobuf, VehicleScope::FirstPing, &validator(), NOW)
            .map_err(|r| TestCaseError::fail(r.to_string()))?;
        prop_assert_eq!(out.into_iter().next().and_then(Result::ok), Some(ping));
    }

    #[test]
    fn every_rejected_element_keeps_exactly_its_bytes(
        cs in proptest::collection::vec(arb_ping(), 1..5),
        bad in proptest::collection::vec(any::<bool>(), 5),
    ) {
        // Break some elements (latitude out of range), then check every
        // rejection carries exactly that element's bytes, in both encodings.
        let mut pings = Vec::new();
        for (i, c) in cs.into_iter().enumerate() {
            let mut p = validator().validate(c, NOW).map_err(|e| TestCaseError::fail(e.0.detail))?;
            p.vehicle_id = fleetpipe_model::VehicleId::parse("v").map_err(|e| TestCaseError::fail(e.to_string()))?;
            if bad[i] { p.lat = 123.0; }
            pings.push(p);
        }
        let encoded: Vec<Vec<u8>> = pings.iter().map(|p| proto::Ping::from(p).encode_to_vec()).collect();
        let batch = Bytes::from(proto::PingBatch { pings: pings.iter().map(proto::Ping::from).collect() }.encode_to_vec());
        let out = decode_message(&batch, Encoding::Protobuf, VehicleScope::Topic("v"), &validator(), NOW)
            .map_err(|r| TestCaseError::fail(r.to_string()))?;
        for (i, o) in out.iter().enumerate() {
            match o {
                Ok(_) => prop_assert!(!bad[i]),
                Err(r) => { prop_assert!(bad[i]); prop_assert_eq!(&r.raw[..], &encoded[i][..]); }
            }
        }
        let json: Vec<String> = pings.iter().map(|p| serde_json::to_string(p).unwrap_or_default()).collect();
        let payload = Bytes::from(format!("[{}]", json.join(" , ")));
        let out = decode_message(&payload, Encoding::Json, VehicleScope::Topic("v"), &validator(), NOW)
            .map_err(|r| TestCaseError::fail(r.to_string()))?;
        for (i, o) in out.iter().enumerate() {
            if let Err(r) = o { prop_assert_eq!(&r.raw[..], json[i].as_bytes()); }
        }
    }

    #[test]
    fn valid_pings_survive_json_unchanged(c in arb_ping()) {
        let ping = validator().validate(c, NOW).map_err(|e| TestCaseError::fail(e.0.detail))?;
        // The model's own serialization (RFC 3339 ts) is valid wire JSON.
        let bytes = Bytes::from(serde_json::to_vec(&ping).map_err(|e| TestCaseError::fail(e.to_string()))?);
        let out = decode_message(&bytes, Encoding::Json, VehicleScope::FirstPing, &validator(), NOW)
            .map_err(|r| TestCaseError::fail(r.to_string()))?;
        prop_assert_eq!(out.into_iter().next().and_then(Result::ok), Some(ping));
    }
}
