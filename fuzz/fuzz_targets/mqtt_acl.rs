//! Fuzz target for the embedded broker's access rules: `parse_topic`,
//! `client_id_allowed` and `ConnectionRules` (CONNECT, a second CONNECT,
//! expiry, PUBLISH and SUBSCRIBE), on arbitrary prefixes, vehicles, client
//! ids, wills, topics and filters. The input is a derived `Arbitrary`
//! struct; topics and client ids are either raw strings or built around the
//! session's own prefix and vehicle, so the near misses are common.
//!
//! Every decision is checked against a statement of the rule written here
//! independently of the code under test (see README.md, "mqtt_acl").
#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleetpipe_ingest::auth::{AuthError, Authenticated, Identity};
use fleetpipe_ingest::codec::Encoding;
use fleetpipe_ingest::mqtt::acl::{ConnectionRules, Refusal, client_id_allowed};
use fleetpipe_ingest::mqtt::parse_topic;
use fleetpipe_model::VehicleId;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

/// Characters of a vehicle id (wire contract: ASCII alphanumerics and
/// `_ . : -`), indexed by the fuzzer's bytes so every vehicle is valid.
const VEHICLE_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789_.:-AZ";

#[derive(Debug, Arbitrary)]
enum Verdict {
    /// The authenticator accepted the vehicle.
    Vehicle,
    /// Authentication is off.
    Anonymous,
    /// The authenticator refused.
    Refused,
}

#[derive(Debug, Arbitrary)]
enum VehiclePart<'a> {
    Own,
    Raw(&'a str),
}

#[derive(Debug, Arbitrary)]
enum Suffix<'a> {
    Telemetry,
    TelemetryPb,
    Ack,
    Raw(&'a str),
}

#[derive(Debug, Arbitrary)]
enum TopicInput<'a> {
    Raw(&'a str),
    /// `{prefix}/{vehicle}/{suffix}{trailing}`, `prefix` the session's own
    /// unless given.
    Built {
        prefix: Option<&'a str>,
        vehicle: VehiclePart<'a>,
        suffix: Suffix<'a>,
        trailing: &'a str,
    },
}

#[derive(Debug, Arbitrary)]
enum ClientIdInput<'a> {
    Raw(&'a str),
    Empty,
    Own,
    /// `{vehicle}{separator}{suffix}`
    OwnWith(char, &'a str),
    /// The vehicle id cut to this many bytes.
    OwnCut(u8),
}

#[derive(Debug, Arbitrary)]
enum Op<'a> {
    Publish(TopicInput<'a>),
    Subscribe(Vec<TopicInput<'a>>),
    /// A packet at this many seconds after the epoch (expiry check).
    At(u32),
}

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    prefix: &'a str,
    vehicle: Vec<u8>,
    verdict: Verdict,
    /// Seconds after the epoch at which the credential expires.
    expires_at: Option<u32>,
    client_id: ClientIdInput<'a>,
    will: Option<TopicInput<'a>>,
    ops: Vec<Op<'a>>,
    second_client_id: ClientIdInput<'a>,
}

fn topic(input: &TopicInput<'_>, prefix: &str, vehicle: &str) -> String {
    match input {
        TopicInput::Raw(s) => (*s).to_owned(),
        TopicInput::Built {
            prefix: p,
            vehicle: v,
            suffix,
            trailing,
        } => {
            let p = p.unwrap_or(prefix);
            let v = match v {
                VehiclePart::Own => vehicle,
                VehiclePart::Raw(s) => s,
            };
            let suffix = match suffix {
                Suffix::Telemetry => "telemetry",
                Suffix::TelemetryPb => "telemetry/pb",
                Suffix::Ack => "ack",
                Suffix::Raw(s) => s,
            };
            format!("{p}/{v}/{suffix}{trailing}")
        }
    }
}

fn client_id(input: &ClientIdInput<'_>, vehicle: &str) -> String {
    match input {
        ClientIdInput::Raw(s) => (*s).to_owned(),
        ClientIdInput::Empty => String::new(),
        ClientIdInput::Own => vehicle.to_owned(),
        ClientIdInput::OwnWith(sep, suffix) => format!("{vehicle}{sep}{suffix}"),
        ClientIdInput::OwnCut(n) => vehicle.get(..usize::from(*n)).unwrap_or(vehicle).to_owned(),
    }
}

/// The rule for client ids, stated independently: never one starting with
/// `!` (fleetpipe's own link); anything else when anonymous; for vehicle
/// `v`: `""`, `v`, or `v@` followed by at least one character.
fn client_id_rule(vehicle: Option<&str>, id: &str) -> bool {
    if id.starts_with('!') {
        return false;
    }
    match vehicle {
        None => true,
        Some(v) => {
            id.is_empty()
                || id == v
                || (id.len() > v.len() + 1 && id.starts_with(v) && id.as_bytes()[v.len()] == b'@')
        }
    }
}

/// The rule for publishes of vehicle `v`: exactly its two telemetry topics.
fn publish_rule(prefix: &str, v: &str, topic: &str) -> bool {
    topic == format!("{prefix}/{v}/telemetry") || topic == format!("{prefix}/{v}/telemetry/pb")
}

/// `parse_topic` round-trips: what it returns rebuilds the topic exactly,
/// and the vehicle is one non-empty topic level.
fn check_parse_topic(prefix: &str, topic: &str) {
    if let Some(t) = parse_topic(prefix, topic) {
        let rebuilt = match t.encoding {
            Encoding::Json => format!("{prefix}/{}/telemetry", t.vehicle),
            Encoding::Protobuf => format!("{prefix}/{}/telemetry/pb", t.vehicle),
        };
        assert_eq!(rebuilt, topic, "parse_topic({prefix:?}, {topic:?}) = {t:?}");
        assert!(
            !t.vehicle.is_empty() && !t.vehicle.contains('/'),
            "parse_topic({prefix:?}, {topic:?}): vehicle {:?}",
            t.vehicle
        );
    } else {
        // The converse: a topic built that way from a non-empty level parses.
        for (suffix, encoding) in [
            ("/telemetry", Encoding::Json),
            ("/telemetry/pb", Encoding::Protobuf),
        ] {
            let Some(v) = topic
                .strip_prefix(prefix)
                .and_then(|r| r.strip_prefix('/'))
                .and_then(|r| r.strip_suffix(suffix))
            else {
                continue;
            };
            assert!(
                v.is_empty() || v.contains('/'),
                "parse_topic({prefix:?}, {topic:?}) = None, but it is vehicle {v:?}'s {encoding:?} topic"
            );
        }
    }
}

fuzz_target!(|input: Input<'_>| {
    let prefix = input.prefix;
    let mut vehicle: String = input
        .vehicle
        .iter()
        .take(fleetpipe_model::ping::VEHICLE_ID_MAX_LEN)
        .map(|&b| char::from(VEHICLE_CHARS[usize::from(b) % VEHICLE_CHARS.len()]))
        .collect();
    if vehicle.is_empty() {
        vehicle.push('v');
    }
    let Ok(vehicle_id) = VehicleId::parse(&vehicle) else {
        panic!("vehicle id {vehicle:?} built from the contract's characters is refused");
    };
    let expires_at = input
        .expires_at
        .map(|s| UNIX_EPOCH + Duration::from_secs(u64::from(s)));
    let (verdict, bound) = match input.verdict {
        Verdict::Vehicle => (
            Ok(Authenticated {
                identity: Identity::Vehicle(vehicle_id.clone()),
                expires_at,
            }),
            Some(vehicle.as_str()),
        ),
        Verdict::Anonymous => (
            Ok(Authenticated {
                identity: Identity::Anonymous,
                expires_at,
            }),
            None,
        ),
        Verdict::Refused => (Err(AuthError::UnknownToken), None),
    };
    let authenticated = verdict.is_ok();
    let identity = verdict.as_ref().ok().map(|a| a.identity.clone());

    let cid = client_id(&input.client_id, &vehicle);
    if let Some(identity) = &identity {
        assert_eq!(
            client_id_allowed(identity, &cid),
            client_id_rule(bound, &cid),
            "client_id_allowed({identity:?}, {cid:?})"
        );
    }
    let will = input.will.as_ref().map(|w| topic(w, prefix, &vehicle));
    if let Some(w) = &will {
        check_parse_topic(prefix, w);
    }

    // CONNECT.
    let mut rules = ConnectionRules::default();
    assert_eq!(
        rules.check_alive(SystemTime::now),
        Err(Refusal::NotConnected)
    );
    let connected = rules.connect(
        prefix,
        &cid,
        will.as_deref(),
        verdict.map_err(Refusal::from),
    );
    let expected = authenticated
        && client_id_rule(bound, &cid)
        && match (bound, &will) {
            (Some(v), Some(w)) => publish_rule(prefix, v, w),
            _ => true,
        };
    assert_eq!(
        connected.is_ok(),
        expected,
        "connect(prefix {prefix:?}, client id {cid:?}, will {will:?}) as {bound:?}: {connected:?}"
    );
    if !authenticated {
        assert!(matches!(connected, Err(Refusal::Auth(_))), "{connected:?}");
    }
    if connected.is_err() {
        assert_eq!(rules.vehicle(), None);
        assert_eq!(
            rules.check_alive(SystemTime::now),
            Err(Refusal::NotConnected)
        );
        return;
    }
    assert_eq!(rules.vehicle().map(VehicleId::as_str), bound);

    // Packets after CONNECT.
    let mut now = UNIX_EPOCH;
    for op in &input.ops {
        match op {
            Op::At(s) => now = UNIX_EPOCH + Duration::from_secs(u64::from(*s)),
            Op::Publish(t) => {
                let t = topic(t, prefix, &vehicle);
                check_parse_topic(prefix, &t);
                let result = rules.publish(prefix, &t);
                match bound {
                    None => assert!(result.is_ok(), "anonymous publish to {t:?}: {result:?}"),
                    Some(v) => {
                        let parsed = parse_topic(prefix, &t).map(|p| p.vehicle);
                        assert_eq!(
                            result.is_ok(),
                            parsed == Some(v),
                            "{v} publishes to {t:?} (parse_topic: {parsed:?}): {result:?}"
                        );
                        assert_eq!(
                            result.is_ok(),
                            publish_rule(prefix, v, &t),
                            "{v} publishes to {t:?}"
                        );
                    }
                }
            }
            Op::Subscribe(filters) => {
                let filters: Vec<String> =
                    filters.iter().map(|f| topic(f, prefix, &vehicle)).collect();
                let result = rules.subscribe(prefix, filters.iter().map(String::as_str));
                match bound {
                    None => assert!(
                        result.is_ok(),
                        "anonymous subscribe to {filters:?}: {result:?}"
                    ),
                    Some(v) => {
                        let own = format!("{prefix}/{v}/ack");
                        assert_eq!(
                            result.is_ok(),
                            filters.iter().all(|f| *f == own),
                            "{v} subscribes to {filters:?}: {result:?}"
                        );
                    }
                }
            }
        }
        let alive = rules.check_alive(|| now);
        let expired = bound.is_some() && expires_at.is_some_and(|e| now >= e);
        assert_eq!(
            alive.is_err(),
            expired,
            "check_alive at {now:?}, expiry {expires_at:?}: {alive:?}"
        );
    }

    // A second CONNECT is refused whatever it carries, and changes nothing.
    let second = client_id(&input.second_client_id, &vehicle);
    for verdict in [
        Ok(Authenticated {
            identity: Identity::Vehicle(vehicle_id.clone()),
            expires_at: None,
        }),
        Ok(Authenticated {
            identity: Identity::Anonymous,
            expires_at: None,
        }),
        Err(AuthError::Missing),
    ] {
        assert_eq!(
            rules.connect(prefix, &second, None, verdict.map_err(Refusal::from)),
            Err(Refusal::SecondConnect)
        );
    }
    assert_eq!(rules.vehicle().map(VehicleId::as_str), bound);
});
