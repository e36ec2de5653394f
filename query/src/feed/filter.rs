//! What a feed client receives: the caller's [`Grant`] (what its token may
//! see) and its [`Subscription`] (what it asked for). Pure, no I/O.
//!
//! A message goes to a client only when both say yes. The grant is the
//! query API's scope rule applied to a stream: a vehicle-scoped token sees
//! its vehicles, a fence-scoped one positions inside its fences and events
//! of its fences, a share link its vehicle from its start to its expiry.
//! Whatever the subscription names beyond that simply never matches, so a
//! subscription reveals nothing about the rest of the fleet.

use std::collections::HashSet;
use std::sync::Arc;

use fleetpipe_model::EventType;
use h3o::{CellIndex, LatLng, Resolution};
use serde::Deserialize;

use crate::auth::{Access, Scope};
use crate::params::BBox;

/// A position as the filters look at it.
#[derive(Debug, Clone, PartialEq)]
pub struct Spot {
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// The point as H3 reads it, when valid.
    pub latlng: Option<LatLng>,
}

impl Spot {
    /// `lat`, `lon`.
    pub fn new(lat: f64, lon: f64) -> Self {
        let latlng = LatLng::new(lat, lon).ok();
        Self { lat, lon, latlng }
    }
}

/// What the filters read of a position.
#[derive(Debug, Clone, PartialEq)]
pub struct PositionFacts {
    /// The vehicle.
    pub vehicle: Arc<str>,
    /// Device time, ms since the epoch.
    pub ts_ms: i64,
    /// Where.
    pub spot: Spot,
    /// The fences it is inside.
    pub fences: Vec<Arc<str>>,
}

/// What the filters read of an event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventFacts {
    /// The vehicle (the event's subject).
    pub vehicle: Arc<str>,
    /// Its type.
    pub event_type: EventType,
    /// Device time, ms since the epoch.
    pub time_ms: i64,
    /// The fence its data names (`data.fence_id`), if any.
    pub fence_id: Option<String>,
    /// The vehicle's latest position when the event was taken in, for the
    /// area filters (bbox, H3); none when the feed had no position of it.
    pub spot: Option<Spot>,
}

/// What a caller's token lets it see, as a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Everything.
    Fleet,
    /// These vehicles.
    Vehicles(HashSet<String>),
    /// Positions inside these fences, events of these fences.
    Fences(HashSet<String>),
    /// One vehicle, device time within `[from_ms, to_ms]`.
    Share {
        /// The vehicle.
        vehicle: String,
        /// The link's creation, ms.
        from_ms: i64,
        /// Its expiry, ms.
        to_ms: i64,
    },
}

impl Grant {
    /// The grant of an authenticated caller.
    pub fn of(access: &Access) -> Self {
        match access {
            Access::Token { scope, .. } => match scope {
                Scope::Fleet => Grant::Fleet,
                Scope::Vehicles(v) => Grant::Vehicles(v.iter().cloned().collect()),
                Scope::Fences(f) => Grant::Fences(f.iter().cloned().collect()),
            },
            Access::Share(share) => Grant::Share {
                vehicle: share.vehicle_id.clone(),
                from_ms: ms(share.from),
                to_ms: ms(share.to),
            },
        }
    }

    /// Whether the caller may see this position.
    pub fn position(&self, p: &PositionFacts) -> bool {
        match self {
            Grant::Fleet => true,
            Grant::Vehicles(v) => v.contains(&*p.vehicle),
            Grant::Fences(f) => p.fences.iter().any(|id| f.contains(&**id)),
            Grant::Share {
                vehicle,
                from_ms,
                to_ms,
            } => **vehicle == *p.vehicle && (*from_ms..=*to_ms).contains(&p.ts_ms),
        }
    }

    /// Whether the caller may see this event.
    pub fn event(&self, e: &EventFacts) -> bool {
        match self {
            Grant::Fleet => true,
            Grant::Vehicles(v) => v.contains(&*e.vehicle),
            Grant::Fences(f) => e.fence_id.as_ref().is_some_and(|id| f.contains(id)),
            Grant::Share {
                vehicle,
                from_ms,
                to_ms,
            } => **vehicle == *e.vehicle && (*from_ms..=*to_ms).contains(&e.time_ms),
        }
    }
}

/// Milliseconds since the epoch of `t`.
pub(crate) fn ms(t: time::OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// A subscribe request as a client sends it (the WebSocket message's body,
/// or the SSE endpoint's query parameters). Every list is optional; an
/// absent list does not narrow.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeRequest {
    /// `"subscribe"` (WebSocket only; the SSE parameters have no type).
    #[serde(rename = "type", default)]
    pub message_type: Option<String>,
    /// Only these vehicles.
    #[serde(default)]
    pub vehicles: Option<Vec<String>>,
    /// Positions inside these fences, events of these fences.
    #[serde(default)]
    pub fences: Option<Vec<String>>,
    /// `[minLon, minLat, maxLon, maxLat]`.
    #[serde(default)]
    pub bbox: Option<Vec<f64>>,
    /// H3 cells (hex), any resolution: a position matches when its cell is
    /// inside one of them.
    #[serde(default)]
    pub h3: Option<Vec<String>>,
    /// Only events of these types.
    #[serde(default)]
    pub event_types: Option<Vec<String>>,
    /// Positions wanted (default true).
    #[serde(default)]
    pub positions: Option<bool>,
    /// Events wanted (default true).
    #[serde(default)]
    pub events: Option<bool>,
    /// The resume token of the last message received.
    #[serde(default)]
    pub resume: Option<String>,
}

/// A subscribe request that is refused: the field at fault and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {detail}")]
pub struct FilterError {
    /// The field (or parameter), e.g. `bbox`.
    pub field: &'static str,
    /// Why.
    pub detail: String,
}

fn bad(field: &'static str, detail: impl Into<String>) -> FilterError {
    FilterError {
        field,
        detail: detail.into(),
    }
}

/// A checked subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    vehicles: Option<HashSet<String>>,
    fences: Option<HashSet<String>>,
    bbox: Option<BBox>,
    /// The cells asked for, grouped by resolution (H3 is no exact
    /// hierarchy: a point is in a cell when its own cell at that
    /// resolution is that cell, not when its finest cell descends from it).
    cells: Option<Vec<(Resolution, HashSet<CellIndex>)>>,
    event_types: Option<HashSet<EventType>>,
    positions: bool,
    events: bool,
}

impl Subscription {
    /// Everything the grant allows: positions and events, no narrowing.
    pub fn everything() -> Self {
        Self {
            vehicles: None,
            fences: None,
            bbox: None,
            cells: None,
            event_types: None,
            positions: true,
            events: true,
        }
    }

    /// Checks `request`, each list at most `max_items` long.
    ///
    /// # Errors
    ///
    /// [`FilterError`] naming the field.
    pub fn parse(request: &SubscribeRequest, max_items: usize) -> Result<Self, FilterError> {
        if let Some(t) = &request.message_type
            && t != "subscribe"
        {
            return Err(bad("type", format!("{t:?} is not \"subscribe\"")));
        }
        let set = |field: &'static str, list: &Option<Vec<String>>| {
            let Some(list) = list else {
                return Ok(None);
            };
            if list.len() > max_items {
                return Err(bad(
                    field,
                    format!(
                        "{} entries, more than api.feed.max_filter_items ({max_items})",
                        list.len()
                    ),
                ));
            }
            if list.iter().any(String::is_empty) {
                return Err(bad(field, "holds an empty id"));
            }
            Ok(Some(list.iter().cloned().collect::<HashSet<_>>()))
        };
        let vehicles = set("vehicles", &request.vehicles)?;
        let fences = set("fences", &request.fences)?;
        let bbox = match &request.bbox {
            None => None,
            Some(b) => {
                let text = b.iter().map(f64::to_string).collect::<Vec<_>>().join(",");
                Some(BBox::parse(&text).map_err(|e| bad("bbox", strip(&e.to_string())))?)
            }
        };
        let cells = match set("h3", &request.h3)? {
            None => None,
            Some(cells) => {
                let mut by_res: Vec<(Resolution, HashSet<CellIndex>)> = Vec::new();
                for c in &cells {
                    let cell = c
                        .parse::<CellIndex>()
                        .map_err(|_| bad("h3", format!("{c:?} is not an H3 cell index (hex)")))?;
                    let res = cell.resolution();
                    match by_res.iter_mut().find(|(r, _)| *r == res) {
                        Some((_, set)) => {
                            set.insert(cell);
                        }
                        None => by_res.push((res, HashSet::from([cell]))),
                    }
                }
                Some(by_res)
            }
        };
        let event_types = match set("event_types", &request.event_types)? {
            None => None,
            Some(types) => Some(
                types
                    .iter()
                    .map(|t| {
                        EventType::ALL
                            .iter()
                            .copied()
                            .find(|e| e.as_str() == t)
                            .ok_or_else(|| bad("event_types", format!("{t:?} is no event type")))
                    })
                    .collect::<Result<HashSet<_>, _>>()?,
            ),
        };
        let positions = request.positions.unwrap_or(true);
        let events = request.events.unwrap_or(true);
        if !positions && !events {
            return Err(bad(
                "positions",
                "positions and events are both false: nothing would be sent",
            ));
        }
        Ok(Self {
            vehicles,
            fences,
            bbox,
            cells,
            event_types,
            positions,
            events,
        })
    }

    /// Whether positions are wanted.
    pub fn wants_positions(&self) -> bool {
        self.positions
    }

    fn area(&self, spot: &Spot) -> bool {
        let in_box = self.bbox.as_ref().is_none_or(|b| {
            (b.min_lat..=b.max_lat).contains(&spot.lat)
                && (b.min_lon..=b.max_lon).contains(&spot.lon)
        });
        let in_cells = self.cells.as_ref().is_none_or(|cells| {
            spot.latlng.is_some_and(|ll| {
                cells
                    .iter()
                    .any(|(res, set)| set.contains(&ll.to_cell(*res)))
            })
        });
        in_box && in_cells
    }

    /// Whether this position is asked for.
    pub fn position(&self, p: &PositionFacts) -> bool {
        self.positions
            && self
                .vehicles
                .as_ref()
                .is_none_or(|v| v.contains(&*p.vehicle))
            && self
                .fences
                .as_ref()
                .is_none_or(|f| p.fences.iter().any(|id| f.contains(&**id)))
            && self.area(&p.spot)
    }

    /// Whether this event is asked for. The area filters (bbox, H3) apply
    /// to where the vehicle was last seen; an event of a vehicle without
    /// a known position does not match them.
    pub fn event(&self, e: &EventFacts) -> bool {
        let area = self.bbox.is_none() && self.cells.is_none()
            || e.spot.as_ref().is_some_and(|s| self.area(s));
        self.events
            && self
                .vehicles
                .as_ref()
                .is_none_or(|v| v.contains(&*e.vehicle))
            && self
                .fences
                .as_ref()
                .is_none_or(|f| e.fence_id.as_ref().is_some_and(|id| f.contains(id)))
            && self
                .event_types
                .as_ref()
                .is_none_or(|t| t.contains(&e.event_type))
            && area
    }
}

/// The API error's text without its `parameter bbox: ` prefix.
fn strip(text: &str) -> String {
    text.split_once(": ")
        .map_or(text, |(_, rest)| rest)
        .to_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;

    fn pos(vehicle: &str, ts_ms: i64, lat: f64, lon: f64, fences: &[&str]) -> PositionFacts {
        PositionFacts {
            vehicle: vehicle.into(),
            ts_ms,
            spot: Spot::new(lat, lon),
            fences: fences.iter().map(|f| Arc::from(*f)).collect(),
        }
    }

    fn event(vehicle: &str, t: EventType, time_ms: i64, fence: Option<&str>) -> EventFacts {
        EventFacts {
            vehicle: vehicle.into(),
            event_type: t,
            time_ms,
            fence_id: fence.map(str::to_owned),
            spot: Some(Spot::new(52.5, 13.4)),
        }
    }

    fn sub(json: &str) -> Result<Subscription, FilterError> {
        Subscription::parse(&serde_json::from_str(json).unwrap(), 10)
    }

    #[test]
    fn grants_are_the_api_scopes() {
        let a = pos("a", 1000, 52.5, 13.4, &["depot"]);
        let b = pos("b", 1000, 52.5, 13.4, &[]);
        let vehicles = Grant::Vehicles(["a".to_owned()].into());
        assert!(vehicles.position(&a) && !vehicles.position(&b));
        let fences = Grant::Fences(["depot".to_owned()].into());
        assert!(fences.position(&a) && !fences.position(&b));
        let in_depot = event("b", EventType::GeofenceEntered, 1000, Some("depot"));
        let elsewhere = event("a", EventType::GeofenceEntered, 1000, Some("yard"));
        assert!(fences.event(&in_depot) && !fences.event(&elsewhere));
        let share = Grant::Share {
            vehicle: "a".into(),
            from_ms: 500,
            to_ms: 2000,
        };
        assert!(share.position(&a) && !share.position(&b));
        assert!(!share.position(&pos("a", 499, 52.5, 13.4, &[])));
        assert!(!share.position(&pos("a", 2001, 52.5, 13.4, &[])));
        assert!(!share.event(&event("a", EventType::Online, 400, None)));
        assert!(share.event(&event("a", EventType::Online, 600, None)));
        assert!(!share.event(&event("b", EventType::Online, 600, None)));
    }

    #[test]
    fn subscriptions_narrow_by_each_filter() {
        let s = sub(r#"{"vehicles":["a"]}"#).unwrap();
        assert!(s.position(&pos("a", 0, 1.0, 1.0, &[])));
        assert!(!s.position(&pos("b", 0, 1.0, 1.0, &[])));
        let s = sub(r#"{"bbox":[13.0,52.0,14.0,53.0]}"#).unwrap();
        assert!(s.position(&pos("a", 0, 52.5, 13.4, &[])));
        assert!(!s.position(&pos("a", 0, 51.5, 13.4, &[])));
        let s = sub(r#"{"fences":["depot"],"positions":false}"#).unwrap();
        assert!(!s.position(&pos("a", 0, 52.5, 13.4, &["depot"])));
        assert!(s.event(&event("a", EventType::GeofenceExited, 0, Some("depot"))));
        assert!(!s.event(&event("a", EventType::Online, 0, None)));
        let s = sub(r#"{"event_types":["vehicle.online"],"events":true}"#).unwrap();
        assert!(s.event(&event("a", EventType::Online, 0, None)));
        assert!(!s.event(&event("a", EventType::GeofenceExited, 0, Some("d"))));
    }

    #[test]
    fn h3_cells_match_any_resolution() {
        let here = LatLng::new(52.5, 13.4).unwrap();
        for res in [Resolution::Three, Resolution::Seven, Resolution::Twelve] {
            let cell = here.to_cell(res).to_string();
            let s = sub(&format!(r#"{{"h3":["{cell}"]}}"#)).unwrap();
            assert!(s.position(&pos("a", 0, 52.5, 13.4, &[])), "{res}");
            assert!(!s.position(&pos("a", 0, -33.9, 151.2, &[])), "{res}");
        }
    }

    #[test]
    fn bad_requests_name_their_field() {
        for (json, field) in [
            (r#"{"bbox":[1,2,3]}"#, "bbox"),
            (r#"{"bbox":[14,52,13,53]}"#, "bbox"),
            (r#"{"h3":["zz"]}"#, "h3"),
            (r#"{"event_types":["nope"]}"#, "event_types"),
            (r#"{"vehicles":[""]}"#, "vehicles"),
            (
                r#"{"vehicles":["1","2","3","4","5","6","7","8","9","10","11"]}"#,
                "vehicles",
            ),
            (r#"{"positions":false,"events":false}"#, "positions"),
            (r#"{"type":"unsubscribe"}"#, "type"),
        ] {
            assert_eq!(sub(json).unwrap_err().field, field, "{json}");
        }
        assert!(serde_json::from_str::<SubscribeRequest>(r#"{"vehicle":["a"]}"#).is_err());
    }

    proptest! {
        /// A vehicle-scoped grant never lets another vehicle's position or
        /// event through, whatever the subscription.
        #[test]
        fn a_vehicle_grant_never_leaks(
            lat in -80.0f64..80.0, lon in -179.0f64..179.0,
            other in "[a-z]{1,4}", bbox in proptest::bool::ANY,
        ) {
            prop_assume!(other != "mine");
            let grant = Grant::Vehicles(["mine".to_owned()].into());
            let s = if bbox { sub(r#"{"bbox":[-180,-90,180,90]}"#).unwrap() } else { Subscription::everything() };
            let p = pos(&other, 0, lat, lon, &["f"]);
            prop_assert!(!(grant.position(&p) && s.position(&p)));
            let e = event(&other, EventType::Online, 0, Some("f"));
            prop_assert!(!(grant.event(&e) && s.event(&e)));
        }

        /// A point is inside its own cell at any resolution.
        #[test]
        fn a_point_is_inside_its_own_cells(lat in -80.0f64..80.0, lon in -179.0f64..179.0, r in 0u8..=15) {
            let res = Resolution::try_from(r).unwrap();
            let cell = LatLng::new(lat, lon).unwrap().to_cell(res).to_string();
            let s = sub(&format!(r#"{{"h3":["{cell}"]}}"#)).unwrap();
            prop_assert!(s.position(&pos("a", 0, lat, lon, &[])));
        }
    }
}
