//! Tests of the topics' record format: the encoding pinned on fixtures
//! (moved here from the Kafka sink with the code), round trips encode →
//! decode for every stream, and refusals of what is not a record.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;
use serde_json::Value;
use serde_json::value::RawValue;

use super::*;
use crate::fixtures::{
    RAW, T0_MS, dead_letter, enrichment, event, full_ping, hex, origin, ping, telemetry,
    telemetry_record, vehicle,
};
use crate::{
    Ack, AttrValue, DeadLetter, Enrichment, EventType, Gateway, Origin, Ping, PingFlags,
    RejectReason, SCHEMA_VERSION, SinkRecord, TelemetryRecord, VehicleEvent, VehicleId, proto,
};

// ---- fixtures -------------------------------------------------------------

// ---- encoding (pinned) -------------------------------------------------------

#[test]
fn json_value_is_the_output_schema_with_its_headers() {
    let SinkRecord::Telemetry(record) = telemetry(42, 7, Ack::none()) else {
        unreachable!()
    };
    let expected = serde_json::to_vec(&record).expect("encodes");
    let record = SinkRecord::Telemetry(record);
    let encoded = encode(&record, TelemetryFormat::Json).expect("encodes");

    assert_eq!(encoded.stream, Stream::Telemetry);
    assert_eq!(encoded.key.as_ref().map(VehicleId::as_str), Some("veh-042"));
    assert_eq!(&encoded.value[..], &expected[..]);
    let value: Value = serde_json::from_slice(&encoded.value).expect("JSON");
    assert_eq!(value["schema_version"], SCHEMA_VERSION);
    assert_eq!(value["vehicle_id"], "veh-042");
    assert_eq!(value["seq"], 7);
    assert_eq!(value["ts"], "2026-11-23T08:00:00.007Z");
    assert_eq!(value["lat"], 52.52);
    assert_eq!(value["lon"], 13.405);
    assert_eq!(value["speed_kmh"], 42.5);
    assert_eq!(value["soc_pct"], 81.25);
    assert_eq!(value["ignition"], true);
    assert_eq!(value["dtcs"][0], "P0301");
    assert_eq!(value["attrs"]["door"], "open");
    assert_eq!(value["source"], "mqtt");
    assert_eq!(value["client"], "dev-7");
    assert_eq!(value["received_at"], "2026-11-23T08:00:00.500Z");
    assert_eq!(value["h3"]["7"], "871f1d489fffffff");
    assert!(
        value.get("ack").is_none() && value.get("alt_m").is_none(),
        "{value}"
    );
    assert_eq!(
        encoded.headers,
        vec![
            ("schema_version", "1".to_owned()),
            ("content-type", "application/json".to_owned()),
        ]
    );
    assert_eq!(encoded.timestamp_ms, Some(T0_MS + 500));
    // Nothing derived: no enrichment field, never null or empty.
    for field in ["fences", "distance_m", "derived_speed_kmh", "flags"] {
        assert!(value.get(field).is_none(), "{field}: {value}");
    }
}

#[test]
fn json_telemetry_carries_the_enrichment() {
    let mut record = telemetry_record(vehicle(42), 7, Ack::none());
    record.enrichment = enrichment();
    let record = SinkRecord::Telemetry(record);
    let encoded = encode(&record, TelemetryFormat::Json).expect("encodes");
    let value: Value = serde_json::from_slice(&encoded.value).expect("JSON");
    assert_eq!(
        value["fences"],
        serde_json::json!(["depot-7", "city-centre"])
    );
    assert_eq!(value["distance_m"], 152.25);
    assert_eq!(value["derived_speed_kmh"], 54.81);
    assert_eq!(value["flags"], serde_json::json!(["duplicate", "jump"]));
    assert_eq!(value["seq"], 7);
}

#[test]
fn event_value_is_the_cloudevent_in_structured_mode_whatever_the_format() {
    for format in [TelemetryFormat::Json, TelemetryFormat::Protobuf] {
        for n in 0..EventType::ALL.len() as u64 {
            let record = event(3, n, Ack::none());
            let SinkRecord::Event(sent) = &record else {
                unreachable!()
            };
            let encoded = encode(&record, format).expect("encodes");
            assert_eq!(encoded.stream, Stream::Event);
            assert_eq!(encoded.key.as_ref().map(VehicleId::as_str), Some("veh-003"));
            assert_eq!(
                std::str::from_utf8(&encoded.value).expect("UTF-8"),
                sent.to_json(),
                "{format:?}"
            );
            let value: Value = serde_json::from_slice(&encoded.value).expect("JSON");
            assert_eq!(value["specversion"], "1.0");
            assert_eq!(value["type"], EventType::ALL[n as usize].as_str());
            assert_eq!(value["subject"], "veh-003");
            assert_eq!(value["data"]["n"], n);
            assert_eq!(
                encoded.headers,
                vec![
                    ("content-type", "application/cloudevents+json".to_owned()),
                    ("ce_id", sent.id.clone()),
                    ("ce_type", EventType::ALL[n as usize].as_str().to_owned()),
                ]
            );
            // Produce time, not the (device) event time.
            assert_eq!(encoded.timestamp_ms, None);
        }
    }
}

#[test]
fn dead_letter_value_is_the_raw_bytes_with_metadata_in_headers() {
    let record = dead_letter(3, Some(vehicle(9)), Ack::none());
    let encoded = encode(&record, TelemetryFormat::Json).expect("encodes");
    assert_eq!(encoded.stream, Stream::DeadLetter);
    assert_eq!(&encoded.value[..], RAW);
    assert_eq!(encoded.key.as_ref().map(VehicleId::as_str), Some("veh-009"));
    assert_eq!(
        encoded.headers,
        vec![
            ("reason", "coord_invalid".to_owned()),
            (
                "detail",
                "dead letter 3: lat 91.5 is outside [-90, 90]".to_owned()
            ),
            ("source", "mqtt".to_owned()),
            ("received_at", "2026-11-23T08:00:00.500Z".to_owned()),
            ("topic", "fleet/v1/veh-009/telemetry".to_owned()),
            ("vehicle_id", "veh-009".to_owned()),
            ("schema_version", "1".to_owned()),
        ]
    );

    // The format applies to telemetry only; an unknown vehicle means no key.
    let record = dead_letter(4, None, Ack::none());
    let encoded = encode(&record, TelemetryFormat::Protobuf).expect("encodes");
    assert_eq!(&encoded.value[..], RAW);
    assert_eq!(encoded.key, None);
    let names: Vec<&str> = encoded.headers.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        names,
        [
            "reason",
            "detail",
            "source",
            "received_at",
            "schema_version"
        ]
    );
}

#[test]
fn protobuf_value_is_the_wire_contract_ping_byte_for_byte() {
    let (full, prost_hex) = full_ping();
    let record = SinkRecord::Telemetry(TelemetryRecord {
        schema_version: SCHEMA_VERSION,
        ping: full,
        origin: origin(),
        h3: Vec::new(),
        enrichment: Enrichment::default(),
        ack: Ack::none(),
    });
    let encoded = encode(&record, TelemetryFormat::Protobuf).expect("encodes");
    assert_eq!(hex(&encoded.value), prost_hex);
    let SinkRecord::Telemetry(telemetry) = &record else {
        unreachable!()
    };
    let decoded = proto::Ping::decode(encoded.value.clone()).expect("prost decodes the value");
    assert_eq!(decoded, proto::Ping::from(&telemetry.ping));
    assert_eq!(encoded.key.as_ref().map(VehicleId::as_str), Some("van-42"));
    assert_eq!(
        encoded.headers,
        vec![
            ("schema_version", "1".to_owned()),
            ("content-type", "application/x-protobuf".to_owned()),
        ]
    );

    // Only the required fields, a negative time and a zero coordinate
    // (written: explicit presence).
    let mut minimal = ping(VehicleId::parse("a").expect("valid id"), 0);
    minimal.seq = None;
    minimal.ts_ms = -1;
    minimal.lat = 0.0;
    minimal.lon = -180.0;
    minimal.speed_kmh = None;
    minimal.soc_pct = None;
    minimal.ignition = None;
    minimal.dtcs.clear();
    minimal.attrs.clear();
    let buf = proto::Ping::from(&minimal).encode_to_vec();
    assert_eq!(
        hex(&buf),
        "0a016118ffffffffffffffffff012100000000000000002900000000008066c0"
    );
}

#[test]
fn to_proto_maps_every_field() {
    use crate::proto::attr_value::Kind;
    let (ping, _) = full_ping();
    let p = proto::Ping::from(&ping);
    assert_eq!(p.vehicle_id, "van-42");
    assert_eq!(p.seq, Some(300));
    assert_eq!(p.ts_ms, Some(1_795_420_800_123));
    assert_eq!((p.lat, p.lon), (Some(52.52), Some(13.405)));
    assert_eq!(p.alt_m, Some(-12.5));
    assert_eq!(p.speed_kmh, Some(42.5));
    assert_eq!(p.heading_deg, Some(359.9));
    assert_eq!(p.accuracy_m, Some(3.0));
    assert_eq!(p.soc_pct, Some(81.25));
    assert_eq!(p.battery_v, Some(12.6));
    assert_eq!(p.charging, Some(false));
    assert_eq!(p.odometer_km, Some(123_456.7));
    assert_eq!(p.ignition, Some(true));
    assert_eq!(p.dtcs, ["P0301", ""]);
    let kind = |k: &str| p.attrs.get(k).and_then(|a| a.kind.clone());
    assert_eq!(kind("door"), Some(Kind::StringValue("open".to_owned())));
    assert_eq!(kind("neg"), Some(Kind::IntValue(-3)));
    assert_eq!(kind("temp"), Some(Kind::DoubleValue(-4.25)));
    assert_eq!(kind("ok"), Some(Kind::BoolValue(false)));
    assert_eq!(p.attrs.len(), 6);
}

// ---- encoding (byte-exact) ----------------------------------------------------

/// The full ping with every other part of a telemetry record set too.
fn full_telemetry() -> TelemetryRecord {
    TelemetryRecord {
        schema_version: SCHEMA_VERSION,
        ping: full_ping().0,
        origin: origin(),
        h3: vec![(7, 0x871f_1d48_9fff_ffff), (9, 0x891_f1d4_8947_ffff)],
        enrichment: enrichment(),
        ack: Ack::none(),
    }
}

/// A ping with no optional field, of a record with no optional part.
fn minimal_telemetry() -> TelemetryRecord {
    TelemetryRecord {
        schema_version: SCHEMA_VERSION,
        ping: Ping::new(VehicleId::parse("a").expect("valid id"), T0_MS, 0.0, -180.0),
        origin: Origin {
            gateway: Gateway::Http,
            client: None,
            received_at: T0_MS,
        },
        h3: Vec::new(),
        enrichment: Enrichment::default(),
        ack: Ack::none(),
    }
}

const FULL_PING_JSON: &str = concat!(
    r#"{"schema_version":1,"vehicle_id":"van-42","seq":300,"ts":"2026-11-23T08:00:00.123Z","#,
    r#""lat":52.52,"lon":13.405,"alt_m":-12.5,"speed_kmh":42.5,"heading_deg":359.9,"#,
    r#""accuracy_m":3.0,"soc_pct":81.25,"battery_v":12.6,"charging":false,"#,
    r#""odometer_km":123456.7,"ignition":true,"dtcs":["P0301",""],"#,
    r#""attrs":{"":"","big":-9223372036854775808,"door":"open","neg":-3,"ok":false,"temp":-4.25},"#,
    r#""source":"mqtt","client":"dev-7","received_at":"2026-11-23T08:00:00.500Z""#,
);

#[test]
fn telemetry_json_is_pinned_byte_for_byte() {
    let full = encode(
        &SinkRecord::Telemetry(full_telemetry()),
        TelemetryFormat::Json,
    )
    .expect("encodes");
    let expected = format!(
        "{}{}",
        FULL_PING_JSON,
        concat!(
            r#","h3":{"7":"871f1d489fffffff","9":"891f1d48947ffff"},"#,
            r#""fences":["depot-7","city-centre"],"distance_m":152.25,"#,
            r#""derived_speed_kmh":54.81,"flags":["duplicate","jump"]}"#
        )
    );
    assert_eq!(std::str::from_utf8(&full.value).expect("UTF-8"), expected);

    let minimal = encode(
        &SinkRecord::Telemetry(minimal_telemetry()),
        TelemetryFormat::Json,
    )
    .expect("encodes");
    assert_eq!(
        std::str::from_utf8(&minimal.value).expect("UTF-8"),
        concat!(
            r#"{"schema_version":1,"vehicle_id":"a","ts":"2026-11-23T08:00:00.000Z","#,
            r#""lat":0.0,"lon":-180.0,"source":"http","received_at":"2026-11-23T08:00:00.000Z"}"#
        )
    );
}

#[test]
fn event_json_is_pinned_byte_for_byte() {
    let record = event(3, 0, Ack::none());
    let SinkRecord::Event(sent) = &record else {
        unreachable!()
    };
    let encoded = encode(&record, TelemetryFormat::Json).expect("encodes");
    let expected = format!(
        concat!(
            r#"{{"specversion":"1.0","id":"{}","source":"fleetpipe-test","#,
            r#""type":"geofence.entered","subject":"veh-003","time":"2026-11-23T08:00:00.000Z","#,
            r#""datacontenttype":"application/json","data":{{"n":0,"fence_id":"depot-7"}}}}"#
        ),
        sent.id
    );
    assert_eq!(
        std::str::from_utf8(&encoded.value).expect("UTF-8"),
        expected
    );
    assert_eq!(
        sent.id,
        crate::event_id(&vehicle(3), EventType::GeofenceEntered, "key-0", T0_MS)
    );
}

// ---- the raw topic ------------------------------------------------------------

fn accepted(ping: Ping, origin: Origin) -> RawRecord {
    RawRecord::Ping(Accepted {
        ping,
        origin,
        ack: Ack::none(),
    })
}

#[test]
fn a_raw_ping_is_telemetry_with_nothing_derived_and_a_record_header() {
    for record in [full_telemetry(), minimal_telemetry()] {
        let raw =
            encode_raw(&accepted(record.ping.clone(), record.origin.clone())).expect("encodes");
        let bare = TelemetryRecord {
            h3: Vec::new(),
            enrichment: Enrichment::default(),
            ..record
        };
        let telemetry =
            encode(&SinkRecord::Telemetry(bare), TelemetryFormat::Json).expect("encodes");
        assert_eq!(raw.stream, Stream::Raw);
        assert_eq!(
            raw.value, telemetry.value,
            "the output schema, byte for byte"
        );
        assert_eq!(raw.key, telemetry.key);
        assert_eq!(raw.timestamp_ms, telemetry.timestamp_ms);
        assert_eq!(
            raw.headers,
            vec![
                ("record", "ping".to_owned()),
                ("schema_version", "1".to_owned()),
                ("content-type", "application/json".to_owned()),
            ]
        );
    }
    let raw = encode_raw(&accepted(full_ping().0, origin())).expect("encodes");
    assert_eq!(
        std::str::from_utf8(&raw.value).expect("UTF-8"),
        format!("{FULL_PING_JSON}}}")
    );
}

#[test]
fn a_raw_dead_letter_is_a_dlq_record_with_a_record_header() {
    for vehicle_id in [Some(vehicle(9)), None] {
        let SinkRecord::DeadLetter(d) = dead_letter(3, vehicle_id, Ack::none()) else {
            unreachable!()
        };
        let dlq = encode(
            &SinkRecord::DeadLetter(d.fork_for_test()),
            TelemetryFormat::Json,
        )
        .expect("encodes");
        let raw = encode_raw(&RawRecord::DeadLetter(d)).expect("encodes");
        assert_eq!(raw.stream, Stream::Raw);
        assert_eq!(&raw.value[..], RAW);
        assert_eq!(raw.key, dlq.key);
        assert_eq!(raw.timestamp_ms, dlq.timestamp_ms);
        let mut expected = vec![("record", "dead_letter".to_owned())];
        expected.extend(dlq.headers);
        assert_eq!(raw.headers, expected);
    }
}

impl DeadLetter {
    /// A copy with an untracked ack.
    fn fork_for_test(&self) -> DeadLetter {
        DeadLetter {
            schema_version: self.schema_version,
            reason: self.reason,
            detail: self.detail.clone(),
            vehicle_id: self.vehicle_id.clone(),
            topic: self.topic.clone(),
            origin: self.origin.clone(),
            raw: self.raw.clone(),
            ack: Ack::none(),
        }
    }
}

// ---- round trips ----------------------------------------------------------------

/// `record` encoded in `format`, decoded, and checked to encode again to
/// the same Kafka record.
fn round_trip(record: &SinkRecord, format: TelemetryFormat) -> SinkRecord {
    let encoded = encode(record, format).expect("encodes");
    let Decoded::Sink(decoded) = encoded.decode().expect("decodes") else {
        panic!("a sink stream decodes to a sink record")
    };
    assert_eq!(Stream::of(&decoded), encoded.stream);
    assert_eq!(
        encode(&decoded, format).expect("encodes again"),
        encoded,
        "decoding loses nothing the topic carries"
    );
    decoded
}

fn raw_round_trip(record: &RawRecord) -> RawRecord {
    let encoded = encode_raw(record).expect("encodes");
    let Decoded::Raw(decoded) = encoded.decode().expect("decodes") else {
        panic!("the raw stream decodes to a raw record")
    };
    assert_eq!(encode_raw(&decoded).expect("encodes again"), encoded);
    decoded
}

fn assert_same_telemetry(decoded: &TelemetryRecord, sent: &TelemetryRecord) {
    assert_eq!(decoded.schema_version, sent.schema_version);
    assert_eq!(decoded.ping, sent.ping);
    assert_eq!(decoded.origin, sent.origin);
    assert_eq!(decoded.h3, sent.h3);
    assert_eq!(decoded.enrichment, sent.enrichment);
    assert!(
        !decoded.ack.is_tracked(),
        "no one waits for a decoded record"
    );
}

fn unwrap_telemetry(record: SinkRecord) -> TelemetryRecord {
    match record {
        SinkRecord::Telemetry(t) => t,
        other => panic!("not telemetry: {other:?}"),
    }
}

/// Every kind of attribute value, the edges of each, and strings beyond
/// ASCII everywhere a string goes.
fn unicode_telemetry() -> TelemetryRecord {
    let mut record = full_telemetry();
    record.ping.dtcs = vec!["P0301".to_owned(), "Ü0\u{0}1".to_owned()];
    record.ping.attrs = BTreeMap::from([
        (
            "café".to_owned(),
            AttrValue::Str("naïve ☃ 🚚 \"quoted\"\n".to_owned()),
        ),
        ("温度".to_owned(), AttrValue::Float(21.5)),
        ("whole_float".to_owned(), AttrValue::Float(1.0)),
        ("huge_float".to_owned(), AttrValue::Float(2f64.powi(70))),
        ("tiny_float".to_owned(), AttrValue::Float(-5e-324)),
        ("min".to_owned(), AttrValue::Int(i64::MIN)),
        ("max".to_owned(), AttrValue::Int(i64::MAX)),
        ("zero".to_owned(), AttrValue::Int(0)),
        ("yes".to_owned(), AttrValue::Bool(true)),
        ("no".to_owned(), AttrValue::Bool(false)),
        ("empty".to_owned(), AttrValue::Str(String::new())),
    ]);
    record.origin.client = Some(Arc::from("Ünïcode-客户"));
    record.enrichment.fences = vec![Arc::from("dépôt-7"), Arc::from("市中心 🏙")];
    record
}

#[test]
fn telemetry_round_trips_with_every_field_and_with_none() {
    for sent in [full_telemetry(), minimal_telemetry(), unicode_telemetry()] {
        let decoded = unwrap_telemetry(round_trip(
            &SinkRecord::Telemetry(TelemetryRecord {
                ack: Ack::none(),
                ..sent.fork_for_test()
            }),
            TelemetryFormat::Json,
        ));
        assert_same_telemetry(&decoded, &sent);
    }
}

#[test]
fn every_combination_of_flags_round_trips() {
    for bits in 0..8u8 {
        let mut sent = minimal_telemetry();
        sent.enrichment.flags = PingFlags {
            late: bits & 1 != 0,
            duplicate: bits & 2 != 0,
            jump: bits & 4 != 0,
        };
        let decoded = unwrap_telemetry(round_trip(
            &SinkRecord::Telemetry(sent.fork_for_test()),
            TelemetryFormat::Json,
        ));
        assert_eq!(
            decoded.enrichment.flags, sent.enrichment.flags,
            "{bits:03b}"
        );
    }
}

impl TelemetryRecord {
    /// A copy with an untracked ack.
    fn fork_for_test(&self) -> TelemetryRecord {
        TelemetryRecord {
            schema_version: self.schema_version,
            ping: self.ping.clone(),
            origin: self.origin.clone(),
            h3: self.h3.clone(),
            enrichment: self.enrichment.clone(),
            ack: Ack::none(),
        }
    }
}

#[test]
fn events_of_every_type_round_trip_with_their_data_as_sent() {
    for n in 0..EventType::ALL.len() as u64 {
        let record = event(3, n, Ack::none());
        let SinkRecord::Event(sent) = &record else {
            unreachable!()
        };
        let SinkRecord::Event(decoded) = round_trip(&record, TelemetryFormat::Protobuf) else {
            panic!("not an event")
        };
        assert_eq!(decoded.specversion, sent.specversion);
        assert_eq!(decoded.id, sent.id);
        assert_eq!(decoded.source, sent.source);
        assert_eq!(decoded.event_type, sent.event_type);
        assert_eq!(decoded.subject, sent.subject);
        assert_eq!(decoded.time_ms, sent.time_ms);
        assert_eq!(decoded.datacontenttype, sent.datacontenttype);
        assert_eq!(decoded.data.get(), sent.data.get());
        assert_eq!(decoded.to_json(), sent.to_json());
        assert!(!decoded.ack.is_tracked());
    }
    // `data` is kept as it was, whitespace and unicode included.
    let data = RawValue::from_string("{ \"name\" : \"Straße 🚚\",\n \"n\": [1, 2.50] }".into())
        .expect("valid JSON");
    let sent = VehicleEvent::new(
        Arc::from("fleetpipe ünï"),
        EventType::StateChanged,
        vehicle(1),
        "",
        -1,
        data,
        Ack::none(),
    );
    let SinkRecord::Event(decoded) = round_trip(&SinkRecord::Event(sent), TelemetryFormat::Json)
    else {
        panic!("not an event")
    };
    assert_eq!(
        decoded.data.get(),
        "{ \"name\" : \"Straße 🚚\",\n \"n\": [1, 2.50] }"
    );
    assert_eq!(&*decoded.source, "fleetpipe ünï");
    assert_eq!(decoded.time_ms, -1);
}

fn assert_same_dead_letter(decoded: &DeadLetter, sent: &DeadLetter) {
    assert_eq!(decoded.schema_version, sent.schema_version);
    assert_eq!(decoded.reason, sent.reason);
    assert_eq!(decoded.detail, sent.detail);
    assert_eq!(decoded.vehicle_id, sent.vehicle_id);
    assert_eq!(decoded.topic, sent.topic);
    assert_eq!(decoded.origin.gateway, sent.origin.gateway);
    assert_eq!(decoded.origin.received_at, sent.origin.received_at);
    // The topics do not carry the client.
    assert_eq!(decoded.origin.client, None);
    assert_eq!(decoded.raw, sent.raw);
    assert!(!decoded.ack.is_tracked());
}

/// Dead letters with every optional field, with none, and with unicode in
/// every string.
fn dead_letters() -> Vec<DeadLetter> {
    let SinkRecord::DeadLetter(full) = dead_letter(3, Some(vehicle(9)), Ack::none()) else {
        unreachable!()
    };
    let SinkRecord::DeadLetter(mut none) = dead_letter(4, None, Ack::none()) else {
        unreachable!()
    };
    none.origin.client = None;
    none.raw = Bytes::new();
    none.reason = RejectReason::Oversize;
    let mut unicode = full.fork_for_test();
    unicode.detail = "größer als 90° — 🚫\n\"line two\"".to_owned();
    unicode.topic = Some("fleet/v1/fahrzeug-ä/telemetry".to_owned());
    unicode.raw = Bytes::from("{\"vehicle_id\":\"fahrzeug-ä\"}");
    unicode.origin.gateway = Gateway::MqttExternal;
    let mut letters = vec![full, none, unicode];
    // Every reason code and gateway.
    for (i, reason) in RejectReason::ALL.into_iter().enumerate() {
        let mut d = letters[0].fork_for_test();
        d.reason = reason;
        d.origin.gateway = Gateway::ALL[i % Gateway::ALL.len()];
        d.origin.received_at = -62_167_219_200_000 + i as i64;
        letters.push(d);
    }
    letters
}

#[test]
fn dead_letters_round_trip_but_for_the_client() {
    for sent in dead_letters() {
        let SinkRecord::DeadLetter(decoded) = round_trip(
            &SinkRecord::DeadLetter(sent.fork_for_test()),
            TelemetryFormat::Json,
        ) else {
            panic!("not a dead letter")
        };
        assert_same_dead_letter(&decoded, &sent);
    }
}

#[test]
fn raw_pings_and_dead_letters_round_trip() {
    for sent in [full_telemetry(), minimal_telemetry(), unicode_telemetry()] {
        let RawRecord::Ping(decoded) =
            raw_round_trip(&accepted(sent.ping.clone(), sent.origin.clone()))
        else {
            panic!("not a ping")
        };
        assert_eq!(decoded.ping, sent.ping);
        assert_eq!(decoded.origin, sent.origin);
        assert!(!decoded.ack.is_tracked());
    }
    for sent in dead_letters() {
        let RawRecord::DeadLetter(decoded) =
            raw_round_trip(&RawRecord::DeadLetter(sent.fork_for_test()))
        else {
            panic!("not a dead letter")
        };
        assert_same_dead_letter(&decoded, &sent);
    }
}

#[test]
fn headers_are_found_in_any_order_and_extra_ones_are_ignored() {
    let encoded = encode(
        &SinkRecord::Telemetry(full_telemetry()),
        TelemetryFormat::Json,
    )
    .expect("encodes");
    let mut parts = Parts::of(&encoded);
    parts.headers.reverse();
    parts.headers.insert(1, ("traceparent", b"00-abc".to_vec()));
    let decoded = unwrap_telemetry(match parts.decode().expect("decodes") {
        Decoded::Sink(r) => r,
        other => panic!("{other:?}"),
    });
    assert_same_telemetry(&decoded, &full_telemetry());
}

// ---- refusals ---------------------------------------------------------------------

/// A consumed record's parts, to break one at a time.
#[derive(Debug, Clone)]
struct Parts {
    stream: Stream,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Vec<(&'static str, Vec<u8>)>,
}

impl Parts {
    fn of(encoded: &Encoded) -> Self {
        Parts {
            stream: encoded.stream,
            key: encoded.key.as_ref().map(|k| k.as_str().as_bytes().to_vec()),
            value: encoded.value.to_vec(),
            headers: encoded
                .headers
                .iter()
                .map(|(k, v)| (*k, v.as_bytes().to_vec()))
                .collect(),
        }
    }

    fn decode(&self) -> Result<Decoded, DecodeError> {
        let headers: Vec<(&str, &[u8])> = self
            .headers
            .iter()
            .map(|(k, v)| (*k, v.as_slice()))
            .collect();
        decode(self.stream, self.key.as_deref(), &self.value, &headers)
    }

    /// The error decoding gives; fails the test if it decodes.
    fn refused(&self) -> DecodeError {
        match self.decode() {
            Ok(decoded) => panic!("decoded {self:?} into {decoded:?}"),
            Err(e) => e,
        }
    }

    fn without(mut self, name: &str) -> Self {
        self.headers.retain(|(k, _)| *k != name);
        self
    }

    fn with(mut self, name: &'static str, value: impl AsRef<[u8]>) -> Self {
        let value = value.as_ref().to_vec();
        match self.headers.iter_mut().find(|(k, _)| *k == name) {
            Some(header) => header.1 = value,
            None => self.headers.push((name, value)),
        }
        self
    }

    fn value(mut self, value: impl AsRef<[u8]>) -> Self {
        self.value = value.as_ref().to_vec();
        self
    }

    fn key(mut self, key: Option<&[u8]>) -> Self {
        self.key = key.map(<[u8]>::to_vec);
        self
    }
}

fn telemetry_parts() -> Parts {
    Parts::of(
        &encode(
            &SinkRecord::Telemetry(full_telemetry()),
            TelemetryFormat::Json,
        )
        .expect("encodes"),
    )
}

fn event_parts() -> Parts {
    Parts::of(&encode(&event(3, 4, Ack::none()), TelemetryFormat::Json).expect("encodes"))
}

fn dead_letter_parts() -> Parts {
    Parts::of(
        &encode(
            &dead_letter(3, Some(vehicle(9)), Ack::none()),
            TelemetryFormat::Json,
        )
        .expect("encodes"),
    )
}

fn raw_ping_parts() -> Parts {
    Parts::of(&encode_raw(&accepted(full_ping().0, origin())).expect("encodes"))
}

fn raw_dead_letter_parts() -> Parts {
    let SinkRecord::DeadLetter(d) = dead_letter(3, Some(vehicle(9)), Ack::none()) else {
        unreachable!()
    };
    Parts::of(&encode_raw(&RawRecord::DeadLetter(d)).expect("encodes"))
}

/// One valid record of every stream (and both of the raw topic's).
fn every_kind() -> [Parts; 5] {
    [
        telemetry_parts(),
        event_parts(),
        dead_letter_parts(),
        raw_ping_parts(),
        raw_dead_letter_parts(),
    ]
}

#[test]
fn the_fixtures_decode() {
    for parts in every_kind() {
        assert!(parts.decode().is_ok(), "{parts:?}");
    }
}

#[test]
fn every_header_a_stream_always_carries_is_required() {
    for parts in every_kind() {
        for (name, _) in &parts.headers {
            let broken = parts.clone().without(name);
            match (*name, broken.decode()) {
                // Optional: a dead letter of no MQTT topic.
                ("topic", Ok(_)) => {}
                // Optional, but then the key must go too.
                ("vehicle_id", Err(DecodeError::KeyMismatch { key, vehicle_id })) => {
                    assert_eq!(key.as_deref(), Some("veh-009"));
                    assert_eq!(vehicle_id, None);
                    let Ok(
                        Decoded::Sink(SinkRecord::DeadLetter(d))
                        | Decoded::Raw(RawRecord::DeadLetter(d)),
                    ) = broken.clone().key(None).decode()
                    else {
                        panic!("a dead letter without vehicle and key decodes")
                    };
                    assert_eq!(d.vehicle_id, None);
                }
                (name, Err(DecodeError::MissingHeader(missing))) => assert_eq!(missing, name),
                (name, other) => panic!("{} without {name}: {other:?}", parts.stream),
            }
        }
    }
}

#[test]
fn duplicated_and_non_utf8_headers_are_refused() {
    for parts in every_kind() {
        for (name, value) in parts.headers.clone() {
            let mut twice = parts.clone();
            twice.headers.push((name, value));
            assert!(
                matches!(twice.refused(), DecodeError::DuplicateHeader(n) if n == name),
                "{name}"
            );
            let bad = parts.clone().with(name, b"\xff\xfe");
            assert!(
                matches!(bad.refused(), DecodeError::HeaderNotUtf8(n) if n == name),
                "{name}"
            );
        }
    }
}

#[test]
fn truncated_json_is_refused_with_serdes_message() {
    for parts in [telemetry_parts(), event_parts(), raw_ping_parts()] {
        for len in [0, 1, parts.value.len() / 2, parts.value.len() - 1] {
            let truncated = parts.clone().value(&parts.value[..len]);
            let error = truncated.refused();
            assert!(
                matches!(&error, DecodeError::Json { stream, .. } if *stream == parts.stream),
                "{error:?}"
            );
            let message = error.to_string();
            assert!(
                message.contains("EOF") || message.contains("line 1"),
                "{message}"
            );
        }
    }
}

#[test]
fn garbage_is_refused() {
    let garbage: [&[u8]; 7] = [
        b"",
        b"\x00\x01\x02\xff",
        b"null",
        b"[]",
        b"{}",
        b"\"a string\"",
        b"{\"schema_version\":1}",
    ];
    for parts in [telemetry_parts(), event_parts(), raw_ping_parts()] {
        for value in garbage {
            let error = parts.clone().value(value).refused();
            assert!(matches!(error, DecodeError::Json { .. }), "{error:?}");
        }
    }
    // Deep nesting, where the schema has a scalar, an unknown field or the
    // event's raw `data`: refused (serde_json's recursion limit) or kept,
    // never a stack overflow.
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    for field in ["lat", "unknown", "attrs"] {
        let error = telemetry_with(|v| {
            v.insert(field.to_owned(), Value::Null);
        });
        let value = String::from_utf8(error.value.clone())
            .expect("UTF-8")
            .replace(&format!("\"{field}\":null"), &format!("\"{field}\":{deep}"));
        let error = error.value(value).refused();
        assert!(
            error.to_string().contains("recursion limit"),
            "{field}: {error}"
        );
    }
    let event = event_parts();
    let value = String::from_utf8(event.value.clone())
        .expect("UTF-8")
        .replace("\"data\":{", &format!("\"data\":{{\"deep\":{deep},"));
    assert!(
        event.value(value).decode().is_ok(),
        "raw data is kept as it is"
    );
    // A dead letter's value is whatever was refused: any bytes are fine.
    for value in garbage {
        let parts = dead_letter_parts().value(value);
        let Ok(Decoded::Sink(SinkRecord::DeadLetter(d))) = parts.decode() else {
            panic!("{parts:?}")
        };
        assert_eq!(&d.raw[..], value);
    }
}

/// `telemetry_parts` with the JSON value edited.
fn telemetry_with(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Parts {
    let parts = telemetry_parts();
    let mut value: serde_json::Map<String, Value> =
        serde_json::from_slice(&parts.value).expect("JSON object");
    edit(&mut value);
    parts.value(serde_json::to_vec(&value).expect("encodes"))
}

#[test]
fn wrong_types_and_values_are_refused_naming_the_field() {
    use serde_json::json;
    let cases: [(&str, Value, &str); 16] = [
        ("lat", json!("52.52"), "invalid type: string"),
        ("seq", json!(-1), "invalid value"),
        ("seq", json!(1.5), "invalid type"),
        ("ts", json!(1_795_420_800_123i64), "invalid type: integer"),
        (
            "ts",
            json!("2026-11-23 08:00:00"),
            "not an RFC 3339 timestamp",
        ),
        (
            "received_at",
            json!("yesterday"),
            "not an RFC 3339 timestamp",
        ),
        ("vehicle_id", json!("van/42"), "vehicle_id contains '/'"),
        ("vehicle_id", json!(""), "vehicle_id is empty"),
        (
            "source",
            json!("carrier_pigeon"),
            "unknown variant `carrier_pigeon`",
        ),
        (
            "flags",
            json!(["late", "sideways"]),
            "unknown variant `sideways`",
        ),
        ("flags", json!("late"), "invalid type"),
        ("h3", json!({"7": "xyz"}), "hex digits"),
        ("h3", json!({"seven": "871f1d489fffffff"}), "decimal digits"),
        ("h3", json!({"7": "1871f1d489fffffff"}), "hex digits"),
        ("attrs", json!({"door": null}), "did not match any variant"),
        ("dtcs", json!([1]), "invalid type"),
    ];
    for (field, value, expected) in cases {
        let parts = telemetry_with(|v| {
            v.insert(field.to_owned(), value.clone());
        });
        let message = parts.refused().to_string();
        assert!(
            message.starts_with("telemetry record: the value is not a valid record: ")
                && message.contains(expected),
            "{field} = {value}: {message}"
        );
    }
    for field in [
        "vehicle_id",
        "ts",
        "lat",
        "lon",
        "source",
        "received_at",
        "schema_version",
    ] {
        let message = telemetry_with(|v| {
            v.remove(field);
        })
        .refused()
        .to_string();
        assert!(
            message.contains(&format!("missing field `{field}`")),
            "{message}"
        );
    }
}

#[test]
fn protobuf_telemetry_is_refused_clearly() {
    let encoded = encode(
        &SinkRecord::Telemetry(full_telemetry()),
        TelemetryFormat::Protobuf,
    )
    .expect("encodes");
    let error = encoded.decode().expect_err("refused");
    assert!(matches!(error, DecodeError::ProtobufTelemetry), "{error:?}");
    assert!(error.to_string().contains("format = \"json\""), "{error}");
    // Whatever the value: the content type says what it is.
    let error = telemetry_parts()
        .with("content-type", "application/x-protobuf")
        .refused();
    assert!(matches!(error, DecodeError::ProtobufTelemetry), "{error:?}");
    // On the raw topic, Protobuf is just not the raw topic's content type.
    let error = raw_ping_parts()
        .with("content-type", "application/x-protobuf")
        .refused();
    assert!(
        matches!(
            error,
            DecodeError::UnsupportedContentType {
                stream: Stream::Raw,
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn content_types_must_be_the_streams() {
    for (parts, other) in [
        (telemetry_parts(), "application/cloudevents+json"),
        (event_parts(), "application/json"),
        (raw_ping_parts(), "text/plain"),
    ] {
        let error = parts.clone().with("content-type", other).refused();
        assert!(
            matches!(&error, DecodeError::UnsupportedContentType { stream, content_type, .. }
                if *stream == parts.stream && content_type == other),
            "{error:?}"
        );
    }
}

#[test]
fn schema_versions_are_checked() {
    for parts in [
        telemetry_parts(),
        raw_ping_parts(),
        dead_letter_parts(),
        raw_dead_letter_parts(),
    ] {
        let error = parts.clone().with("schema_version", "2").refused();
        assert!(
            matches!(error, DecodeError::UnsupportedSchemaVersion(2)),
            "{error:?}"
        );
        let error = parts.clone().with("schema_version", "one").refused();
        assert!(
            matches!(
                error,
                DecodeError::InvalidHeader {
                    header: "schema_version",
                    ..
                }
            ),
            "{error:?}"
        );
    }
    let error = telemetry_with(|v| {
        v.insert("schema_version".to_owned(), 2.into());
    })
    .refused();
    assert!(
        matches!(
            error,
            DecodeError::SchemaVersionMismatch {
                header: 1,
                value: 2
            }
        ),
        "{error:?}"
    );
}

#[test]
fn the_key_must_be_the_vehicle() {
    for parts in every_kind() {
        let error = parts.clone().key(Some(b"veh-999")).refused();
        assert!(
            matches!(&error, DecodeError::KeyMismatch { key: Some(k), vehicle_id: Some(_) } if k == "veh-999"),
            "{error:?}"
        );
        let error = parts.clone().key(None).refused();
        assert!(
            matches!(
                error,
                DecodeError::KeyMismatch {
                    key: None,
                    vehicle_id: Some(_)
                }
            ),
            "{error:?}"
        );
        let error = parts.clone().key(Some(b"\xff")).refused();
        assert!(
            matches!(error, DecodeError::KeyMismatch { .. }),
            "{error:?}"
        );
    }
    // A dead letter of no known vehicle has no key.
    let parts = Parts::of(
        &encode(&dead_letter(1, None, Ack::none()), TelemetryFormat::Json).expect("encodes"),
    );
    assert!(parts.decode().is_ok());
    let error = parts.key(Some(b"veh-001")).refused();
    assert_eq!(
        error.to_string(),
        "record key \"veh-001\" does not match its vehicle id none"
    );
}

#[test]
fn dead_letter_headers_must_parse() {
    for parts in [dead_letter_parts(), raw_dead_letter_parts()] {
        let error = parts.clone().with("reason", "too_pretty").refused();
        assert!(
            matches!(&error, DecodeError::UnknownReason(r) if r == "too_pretty"),
            "{error:?}"
        );
        let error = parts.clone().with("source", "fax").refused();
        assert!(
            matches!(&error, DecodeError::UnknownSource(s) if s == "fax"),
            "{error:?}"
        );
        let error = parts.clone().with("received_at", "1795420800500").refused();
        assert!(
            matches!(
                error,
                DecodeError::InvalidHeader {
                    header: "received_at",
                    ..
                }
            ),
            "{error:?}"
        );
        let error = parts.clone().with("vehicle_id", "veh 9").refused();
        assert!(
            matches!(
                error,
                DecodeError::InvalidHeader {
                    header: "vehicle_id",
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(
            error.to_string().contains("vehicle_id contains ' '"),
            "{error}"
        );
    }
    // A refused value is repeated in the error only in part.
    let long = "x".repeat(10_000);
    let message = dead_letter_parts()
        .with("reason", &long)
        .refused()
        .to_string();
    assert!(message.len() < 200, "{message}");
}

#[test]
fn the_raw_topic_needs_its_record_header() {
    for parts in [raw_ping_parts(), raw_dead_letter_parts()] {
        let error = parts.clone().without("record").refused();
        assert!(
            matches!(error, DecodeError::MissingHeader("record")),
            "{error:?}"
        );
        let error = parts.clone().with("record", "telemetry").refused();
        assert!(
            matches!(&error, DecodeError::UnknownRecord(r) if r == "telemetry"),
            "{error:?}"
        );
    }
    // Swapped: a ping's value read as a dead letter needs dead-letter
    // headers, a dead letter's raw bytes are no ping.
    let error = raw_ping_parts().with("record", "dead_letter").refused();
    assert!(
        matches!(error, DecodeError::MissingHeader("reason")),
        "{error:?}"
    );
    let error = raw_dead_letter_parts().with("record", "ping").refused();
    assert!(
        matches!(error, DecodeError::MissingHeader("content-type")),
        "{error:?}"
    );
    // Enriched telemetry is not a raw ping.
    let mut enriched = telemetry_parts();
    enriched.stream = Stream::Raw;
    let error = enriched.with("record", "ping").refused();
    assert!(matches!(error, DecodeError::RawPingEnriched), "{error:?}");
}

#[test]
fn event_headers_must_agree_with_the_event() {
    let error = event_parts().with("ce_id", "another-id").refused();
    assert!(
        matches!(&error, DecodeError::HeaderMismatch { header: "ce_id", header_value, .. } if header_value == "another-id"),
        "{error:?}"
    );
    let error = event_parts().with("ce_type", "battery.low").refused();
    assert!(
        matches!(
            error,
            DecodeError::HeaderMismatch {
                header: "ce_type",
                ..
            }
        ),
        "{error:?}"
    );
    let parts = event_parts();
    let mut value: serde_json::Map<String, Value> =
        serde_json::from_slice(&parts.value).expect("JSON object");
    for (attribute, bad, expected) in [
        ("specversion", "0.3", "specversion \"0.3\" is not \"1.0\""),
        (
            "datacontenttype",
            "text/xml",
            "datacontenttype \"text/xml\" is not",
        ),
        (
            "type",
            "vehicle.teleported",
            "unknown variant `vehicle.teleported`",
        ),
        ("time", "now", "not an RFC 3339 timestamp"),
    ] {
        let mut broken = value.clone();
        broken.insert(attribute.to_owned(), bad.into());
        let message = parts
            .clone()
            .value(serde_json::to_vec(&broken).expect("encodes"))
            .refused()
            .to_string();
        assert!(
            message.starts_with("events record: the value is not a valid record: ")
                && message.contains(expected),
            "{attribute}: {message}"
        );
    }
    value.remove("data");
    let message = parts
        .value(serde_json::to_vec(&value).expect("encodes"))
        .refused()
        .to_string();
    assert!(message.contains("missing field `data`"), "{message}");
}

#[test]
fn errors_name_what_is_wrong() {
    assert_eq!(
        DecodeError::MissingHeader("reason").to_string(),
        "header `reason` is missing"
    );
    assert_eq!(
        telemetry_parts()
            .with("schema_version", "2")
            .refused()
            .to_string(),
        "schema version 2 is not supported (this build reads 1)"
    );
    assert_eq!(
        dead_letter_parts()
            .with("reason", "nope")
            .refused()
            .to_string(),
        "header `reason` = \"nope\" is not a known reject reason code"
    );
}

// ---- properties -------------------------------------------------------------------

mod properties {
    use proptest::collection::{btree_map, vec};
    use proptest::option;
    use proptest::prelude::*;

    use super::*;

    /// Epoch milliseconds of years 0000 to 9999, what RFC 3339 can say.
    fn epoch_ms() -> impl Strategy<Value = i64> {
        -62_167_219_200_000i64..=253_402_300_799_999
    }

    fn finite() -> impl Strategy<Value = f64> {
        any::<f64>().prop_filter("finite", |f| f.is_finite())
    }

    fn vehicle_id() -> impl Strategy<Value = VehicleId> {
        "[A-Za-z0-9_.:-]{1,64}".prop_map(|s| VehicleId::parse(&s).expect("valid id"))
    }

    fn attr() -> impl Strategy<Value = AttrValue> {
        prop_oneof![
            any::<bool>().prop_map(AttrValue::Bool),
            any::<i64>().prop_map(AttrValue::Int),
            finite().prop_map(AttrValue::Float),
            any::<String>().prop_map(AttrValue::Str),
        ]
    }

    prop_compose! {
        fn ping()(
            vehicle_id in vehicle_id(),
            seq in option::of(any::<u64>()),
            ts_ms in epoch_ms(),
            (lat, lon) in (finite(), finite()),
            floats in vec(option::of(finite()), 7),
            charging in option::of(any::<bool>()),
            ignition in option::of(any::<bool>()),
            dtcs in vec(any::<String>(), 0..3),
            attrs in btree_map(any::<String>(), attr(), 0..5),
        ) -> Ping {
            Ping {
                seq,
                alt_m: floats[0],
                speed_kmh: floats[1],
                heading_deg: floats[2],
                accuracy_m: floats[3],
                soc_pct: floats[4],
                battery_v: floats[5],
                odometer_km: floats[6],
                charging,
                ignition,
                dtcs,
                attrs,
                ..Ping::new(vehicle_id, ts_ms, lat, lon)
            }
        }
    }

    prop_compose! {
        fn origin()(
            gateway in prop::sample::select(Gateway::ALL.to_vec()),
            client in option::of(any::<String>()),
            received_at in epoch_ms(),
        ) -> Origin {
            Origin { gateway, client: client.map(Arc::from), received_at }
        }
    }

    prop_compose! {
        fn enrichment()(
            fences in vec(any::<String>(), 0..3),
            distance_m in option::of(finite()),
            derived_speed_kmh in option::of(finite()),
            (late, duplicate, jump) in any::<(bool, bool, bool)>(),
        ) -> Enrichment {
            Enrichment {
                fences: fences.into_iter().map(Arc::from).collect(),
                distance_m,
                derived_speed_kmh,
                flags: PingFlags { late, duplicate, jump },
            }
        }
    }

    prop_compose! {
        fn telemetry()(
            ping in ping(),
            origin in origin(),
            h3 in vec(any::<(u8, u64)>(), 0..4),
            enrichment in enrichment(),
        ) -> TelemetryRecord {
            TelemetryRecord {
                schema_version: SCHEMA_VERSION,
                ping,
                origin,
                h3,
                enrichment,
                ack: Ack::none(),
            }
        }
    }

    prop_compose! {
        fn dead_letter()(
            reason in prop::sample::select(RejectReason::ALL.to_vec()),
            detail in any::<String>(),
            vehicle_id in option::of(vehicle_id()),
            topic in option::of(any::<String>()),
            origin in origin(),
            raw in vec(any::<u8>(), 0..64),
        ) -> DeadLetter {
            DeadLetter {
                schema_version: SCHEMA_VERSION,
                reason,
                detail,
                vehicle_id,
                topic,
                origin: Origin { client: None, ..origin },
                raw: Bytes::from(raw),
                ack: Ack::none(),
            }
        }
    }

    /// Every header name the streams use, and one they do not.
    const NAMES: [&str; 14] = [
        HEADER_SCHEMA_VERSION,
        HEADER_CONTENT_TYPE,
        HEADER_CE_ID,
        HEADER_CE_TYPE,
        HEADER_REASON,
        HEADER_DETAIL,
        HEADER_SOURCE,
        HEADER_RECEIVED_AT,
        HEADER_TOPIC,
        HEADER_VEHICLE_ID,
        HEADER_RECORD,
        "traceparent",
        "",
        "Content-Type",
    ];

    proptest! {
        #[test]
        fn telemetry_round_trips(sent in telemetry()) {
            let decoded = unwrap_telemetry(round_trip(
                &SinkRecord::Telemetry(sent.fork_for_test()),
                TelemetryFormat::Json,
            ));
            assert_same_telemetry(&decoded, &sent);
        }

        #[test]
        fn raw_pings_round_trip(ping in ping(), origin in origin()) {
            let RawRecord::Ping(decoded) = raw_round_trip(&accepted(ping.clone(), origin.clone()))
            else {
                panic!("not a ping")
            };
            prop_assert_eq!(decoded.ping, ping);
            prop_assert_eq!(decoded.origin, origin);
        }

        #[test]
        fn dead_letters_round_trip(sent in dead_letter()) {
            let SinkRecord::DeadLetter(decoded) = round_trip(
                &SinkRecord::DeadLetter(sent.fork_for_test()),
                TelemetryFormat::Json,
            ) else {
                panic!("not a dead letter")
            };
            assert_same_dead_letter(&decoded, &sent);
            let RawRecord::DeadLetter(decoded) =
                raw_round_trip(&RawRecord::DeadLetter(sent.fork_for_test()))
            else {
                panic!("not a dead letter")
            };
            assert_same_dead_letter(&decoded, &sent);
        }

        #[test]
        fn timestamps_read_back_to_the_millisecond(ms in epoch_ms()) {
            let text = crate::ping::Rfc3339Millis(ms).to_string();
            prop_assert_eq!(crate::ping::parse_rfc3339_ms(&text), Ok(ms));
        }

        #[test]
        fn anything_decodes_or_is_refused_without_panicking(
            stream in prop::sample::select(Stream::ALL.to_vec()),
            key in option::of(vec(any::<u8>(), 0..12)),
            value in vec(any::<u8>(), 0..200),
            headers in vec((prop::sample::select(NAMES.to_vec()), vec(any::<u8>(), 0..24)), 0..12),
        ) {
            let headers: Vec<(&str, &[u8])> =
                headers.iter().map(|(k, v)| (*k, v.as_slice())).collect();
            let _ = decode(stream, key.as_deref(), &value, &headers);
        }

        #[test]
        fn damaged_records_are_refused_without_panicking(
            which in 0..5usize,
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let parts = every_kind()[which].clone();
            let len = parts.value.len();
            let _ = parts.clone().value(&parts.value[..cut.index(len + 1)]).decode();
            let mut flipped = parts.value.clone();
            if len > 0 {
                flipped[flip.index(len)] = byte;
            }
            let _ = parts.value(flipped).decode();
        }
    }
}
