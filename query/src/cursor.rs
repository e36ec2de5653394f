//! Opaque pagination cursors. Pure.
//!
//! A cursor is the sort key of the last row of a page, base64url-encoded
//! JSON, with the list it belongs to (`k`) and a fingerprint of that
//! request's filters (`f`). The next page is "rows after this key", so a
//! walk sees every row once, in a stable order, even while rows are added
//! (a row added behind the cursor is not seen in that walk, one added ahead
//! of it is). A cursor that does not decode, belongs to another list or was
//! made for other filters is refused 400: a client that loses track of its
//! walk hears so instead of reading a mix of two queries.
//!
//! Cursors are not signed. A forged one can only move where a walk starts,
//! never what the caller may see: the scope is applied by every query,
//! whatever the cursor says.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The last row of a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// `/v1/vehicles`: by `vehicle_id`.
    Vehicle(String),
    /// `/v1/events`, `/v1/trips`: by `(time, id)`.
    Event {
        /// The event's time.
        time: OffsetDateTime,
        /// The event's id.
        id: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Encoded {
    /// The list.
    k: String,
    /// The filters' fingerprint, hex.
    f: String,
    /// `vehicle_id`, or the event id.
    i: String,
    /// The event's time, microseconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    t: Option<i64>,
}

/// A fingerprint of a request's filters: FNV-1a over the parts, each
/// followed by a separator byte, so that ("ab", "") and ("a", "b") differ.
pub fn fingerprint<'a>(parts: impl IntoIterator<Item = &'a str>) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for part in parts {
        for b in part.bytes().chain([0xff]) {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// The cursor after `key`, for the list `list` under filters `filters`.
pub fn encode(list: &str, filters: u64, key: &Key) -> String {
    let (i, t) = match key {
        Key::Vehicle(id) => (id.clone(), None),
        Key::Event { time, id } => (
            id.clone(),
            i64::try_from(time.unix_timestamp_nanos() / 1000).ok(),
        ),
    };
    let encoded = Encoded {
        k: list.to_owned(),
        f: format!("{filters:016x}"),
        i,
        t,
    };
    // Serializing plain strings and integers cannot fail.
    let json = serde_json::to_vec(&encoded).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

/// The key a cursor of `list` under `filters` carries.
///
/// # Errors
///
/// Why it is refused, in a sentence.
pub fn decode(cursor: &str, list: &str, filters: u64) -> Result<Key, String> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| "is not a cursor this API returned (not base64url)".to_owned())?;
    let encoded: Encoded = serde_json::from_slice(&bytes)
        .map_err(|_| "is not a cursor this API returned (damaged)".to_owned())?;
    if encoded.k != list {
        return Err(format!(
            "belongs to another list ({}), not this one",
            encoded.k
        ));
    }
    if encoded.f != format!("{filters:016x}") {
        return Err(
            "was returned for other filters: repeat the request with the same parameters, \
             or start again without a cursor"
                .to_owned(),
        );
    }
    match (list, encoded.t) {
        ("vehicles", None) if !encoded.i.is_empty() => Ok(Key::Vehicle(encoded.i)),
        ("events" | "trips", Some(micros)) if !encoded.i.is_empty() => {
            let time = OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
                .map_err(|_| "is not a cursor this API returned (time out of range)".to_owned())?;
            Ok(Key::Event {
                time,
                id: encoded.i,
            })
        }
        _ => Err("is not a cursor this API returned (damaged)".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cursors_round_trip_for_their_list_and_filters_only() {
        let f = fingerprint(["van-1", "", "moving"]);
        let key = Key::Event {
            time: time::macros::datetime!(2026-11-23 08:52:04.379123 UTC),
            id: "3db03c67".into(),
        };
        let c = encode("events", f, &key);
        assert_eq!(decode(&c, "events", f).unwrap(), key);
        assert!(
            decode(&c, "vehicles", f)
                .unwrap_err()
                .contains("another list")
        );
        let other = fingerprint(["van-2", "", "moving"]);
        assert!(
            decode(&c, "events", other)
                .unwrap_err()
                .contains("other filters")
        );
        let v = encode("vehicles", f, &Key::Vehicle("van-9".into()));
        assert_eq!(
            decode(&v, "vehicles", f).unwrap(),
            Key::Vehicle("van-9".into())
        );
    }

    #[test]
    fn tampered_cursors_are_refused() {
        let f = fingerprint(["x"]);
        let c = encode("vehicles", f, &Key::Vehicle("van-1".into()));
        for bad in [
            "not a cursor!",
            "e30",                    // {}
            &c[..c.len() - 3],        // cut
            &format!("{c}A"),         // grown
            "eyJrIjoidmVoaWNsZXMifQ", // {"k":"vehicles"}
        ] {
            assert!(decode(bad, "vehicles", f).is_err(), "{bad}");
        }
        // A vehicle cursor with a time, an event cursor without one.
        let odd = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
            r#"{{"k":"vehicles","f":"{f:016x}","i":"v","t":1}}"#
        ));
        assert!(decode(&odd, "vehicles", f).is_err());
        let odd = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!(r#"{{"k":"events","f":"{f:016x}","i":"v"}}"#));
        assert!(decode(&odd, "events", f).is_err());
    }

    #[test]
    fn fingerprints_separate_their_parts() {
        assert_ne!(fingerprint(["ab", ""]), fingerprint(["a", "b"]));
        assert_eq!(fingerprint(["a", "b"]), fingerprint(["a", "b"]));
    }

    proptest! {
        #[test]
        fn any_key_round_trips(id in "[^\u{0}]{1,40}", micros in -62_000_000_000_000_000i64..250_000_000_000_000_000) {
            let f = fingerprint([id.as_str()]);
            let time = OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000).unwrap();
            let key = Key::Event { time, id: id.clone() };
            prop_assert_eq!(decode(&encode("events", f, &key), "events", f).unwrap(), key);
            let key = Key::Vehicle(id);
            prop_assert_eq!(decode(&encode("vehicles", f, &key), "vehicles", f).unwrap(), key);
        }
    }
}
