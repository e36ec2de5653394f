//! The pure core of the stage: turns an [`Accepted`] ping into a
//! [`TelemetryRecord`].
//!
//! No tokio and no I/O here, so the logic can be tested and benchmarked on
//! its own; the per-vehicle state machine (`vehicle.rs`, geofences, trips)
//! lives next to it without knowing about channels either.

use fleetpipe_model::{Accepted, TelemetryRecord};
use h3o::{LatLng, LatLngIndexer, Resolution};

use crate::config::EnrichConfig;
use crate::error::EnrichError;

/// Enriches pings. Cheap to clone; holds only the validated configuration.
#[derive(Debug, Clone)]
pub struct Enricher {
    /// Configured resolutions, in output order, already converted so the hot
    /// path does no range checks.
    resolutions: Vec<Resolution>,
}

impl Enricher {
    /// Builds an enricher from a configuration.
    ///
    /// # Errors
    ///
    /// Whatever [`EnrichConfig::validate`] rejects.
    pub fn new(config: &EnrichConfig) -> Result<Self, EnrichError> {
        config.validate()?;
        let resolutions = config
            .h3_resolutions
            .iter()
            .map(|&r| Resolution::try_from(r).map_err(|_| EnrichError::ResolutionOutOfRange(r)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { resolutions })
    }

    /// Adds the H3 cell of the position at every configured resolution (as
    /// `(resolution, u64 cell index)`), in configured order.
    ///
    /// The ping, its origin and its ack are carried over unchanged. A position
    /// H3 refuses (only non-finite coordinates, which validation already
    /// excludes) yields a record without cells and counts
    /// `fleetpipe_enrich_h3_errors_total` once per missing cell, rather than
    /// losing the ping.
    pub fn enrich(&self, accepted: Accepted) -> TelemetryRecord {
        let h3 = self.cells(accepted.ping.lat, accepted.ping.lon);
        TelemetryRecord {
            h3,
            ..TelemetryRecord::unenriched(accepted)
        }
    }

    /// H3 cells of a position at the configured resolutions.
    pub(crate) fn cells(&self, lat: f64, lon: f64) -> Vec<(u8, u64)> {
        // The only allocation per ping; `with_capacity(0)` does not allocate.
        let mut cells = Vec::with_capacity(self.resolutions.len());
        if self.resolutions.is_empty() {
            return cells;
        }
        match LatLng::new(lat, lon) {
            Ok(ll) => {
                // `to_cells` projects the position onto the icosahedron once
                // and reuses it for every resolution, instead of redoing the
                // trigonometry per resolution as `LatLng::to_cell` would. A
                // fresh indexer is a small stack array, cheaper than sharing a
                // cache between unrelated vehicles.
                let mut indexer = LatLngIndexer::default();
                let found = indexer.to_cells(ll, self.resolutions.iter().copied());
                cells.extend(
                    self.resolutions
                        .iter()
                        .zip(found)
                        .map(|(&res, cell)| (u8::from(res), u64::from(cell))),
                );
            }
            Err(err) => {
                crate::metrics::h3_cells_left_out(self.resolutions.len());
                tracing::debug!(lat, lon, error = %err, "position not indexable by H3; cells left out");
            }
        }
        cells
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::future::Future;
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};

    use fleetpipe_model::{Ack, AckStatus, BatchAck, Gateway, Origin, Ping, SinkRecord, VehicleId};
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;
    use crate::metrics::H3_ERRORS_TOTAL;

    /// San Francisco point from the H3 documentation's indexing example.
    const SF: (f64, f64) = (37.775938728915946, -122.41795063018799);
    /// Its cell at resolution 9, as published in the H3 documentation.
    const SF_RES9: u64 = 0x8928308280fffff;

    fn ping(lat: f64, lon: f64) -> Ping {
        let mut attrs = BTreeMap::new();
        attrs.insert(
            "fw".to_owned(),
            fleetpipe_model::AttrValue::Str("1.2.3".to_owned()),
        );
        Ping {
            vehicle_id: VehicleId::parse("van-42").unwrap_or_else(|e| panic!("{e}")),
            seq: Some(7),
            ts_ms: 1_795_420_800_123,
            lat,
            lon,
            alt_m: Some(12.5),
            speed_kmh: Some(48.0),
            heading_deg: Some(270.0),
            accuracy_m: Some(4.0),
            soc_pct: Some(81.0),
            battery_v: Some(12.6),
            charging: Some(false),
            odometer_km: Some(12_345.6),
            ignition: Some(true),
            dtcs: vec!["P0301".to_owned()],
            attrs,
        }
    }

    fn origin() -> Origin {
        Origin {
            gateway: Gateway::Websocket,
            client: Some(Arc::from("device-1")),
            received_at: 1_795_420_800_500,
        }
    }

    fn accepted(lat: f64, lon: f64, ack: Ack) -> Accepted {
        Accepted {
            ping: ping(lat, lon),
            origin: origin(),
            ack,
        }
    }

    fn enricher(resolutions: &[u8]) -> Enricher {
        let config = EnrichConfig {
            h3_resolutions: resolutions.to_vec(),
            ..EnrichConfig::default()
        };
        Enricher::new(&config).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Reference cell computed with h3o's plain one-resolution API.
    fn reference_cell(lat: f64, lon: f64, res: u8) -> u64 {
        let ll = LatLng::new(lat, lon).unwrap_or_else(|e| panic!("{e}"));
        let res = Resolution::try_from(res).unwrap_or_else(|e| panic!("{e}"));
        u64::from(ll.to_cell(res))
    }

    #[test]
    fn matches_the_cell_published_in_the_h3_docs() {
        let record = enricher(&[9]).enrich(accepted(SF.0, SF.1, Ack::none()));
        assert_eq!(record.h3, vec![(9, SF_RES9)]);
    }

    #[test]
    fn every_configured_resolution_in_configured_order() {
        let order = [9, 0, 15, 7, 3];
        let record = enricher(&order).enrich(accepted(SF.0, SF.1, Ack::none()));
        let expected: Vec<(u8, u64)> = order
            .iter()
            .map(|&r| (r, reference_cell(SF.0, SF.1, r)))
            .collect();
        assert_eq!(record.h3, expected);
        assert!(record.h3.contains(&(9, SF_RES9)));
    }

    #[test]
    fn matches_single_resolution_indexing_over_the_globe() {
        // The multi-resolution indexer must agree with the plain API
        // everywhere, including poles, the antimeridian and pentagons' faces.
        let resolutions: Vec<u8> = (0..=15).collect();
        let enricher = enricher(&resolutions);
        let mut points = vec![
            (90.0, 0.0),
            (-90.0, 0.0),
            (0.0, 180.0),
            (0.0, -180.0),
            (0.0, 0.0),
            (51.477_928, -0.001_545),
            (-33.856_784, 151.215_297),
            (64.7, 10.536_7), // near base cell 14's pentagon
        ];
        for lat in (-89..=89).step_by(7) {
            for lon in (-179..=179).step_by(11) {
                points.push((f64::from(lat) + 0.123, f64::from(lon) - 0.456));
            }
        }
        for (lat, lon) in points {
            let record = enricher.enrich(accepted(lat, lon, Ack::none()));
            let expected: Vec<(u8, u64)> = resolutions
                .iter()
                .map(|&r| (r, reference_cell(lat, lon, r)))
                .collect();
            assert_eq!(record.h3, expected, "at ({lat}, {lon})");
        }
    }

    #[test]
    fn cells_have_the_resolution_they_claim() {
        let record = enricher(&[7, 9]).enrich(accepted(48.864_716, 2.349_014, Ack::none()));
        for &(res, cell) in &record.h3 {
            let cell = h3o::CellIndex::try_from(cell).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(u8::from(cell.resolution()), res);
        }
        assert_eq!(record.h3.len(), 2);
    }

    #[test]
    fn carries_ping_and_origin_unchanged_with_schema_version() {
        let record = enricher(&[7, 9]).enrich(accepted(SF.0, SF.1, Ack::none()));
        assert_eq!(record.schema_version, fleetpipe_model::SCHEMA_VERSION);
        assert_eq!(record.ping, ping(SF.0, SF.1));
        assert_eq!(record.origin, origin());
    }

    #[test]
    fn no_resolutions_means_no_cells() {
        let record = enricher(&[]).enrich(accepted(SF.0, SF.1, Ack::none()));
        assert!(record.h3.is_empty());
    }

    #[test]
    fn carries_the_ack_to_the_sink() {
        let batch = BatchAck::new();
        let record = enricher(&[9]).enrich(accepted(SF.0, SF.1, batch.ack()));
        assert!(record.ack.is_tracked());
        SinkRecord::Telemetry(record).into_ack().delivered();
        // No runtime needed: with its only ack settled, the batch must be
        // resolved already, so the first poll is ready.
        let mut wait = std::pin::pin!(batch.wait());
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(
            wait.as_mut().poll(&mut cx),
            Poll::Ready(AckStatus::Delivered)
        );
    }

    #[test]
    fn unindexable_position_keeps_the_ping_and_counts_errors() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let record = metrics::with_local_recorder(&recorder, || {
            enricher(&[7, 9]).enrich(accepted(f64::NAN, 2.0, Ack::none()))
        });
        assert!(record.h3.is_empty());
        assert!(record.ping.lat.is_nan());
        let errors: Vec<_> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(key, ..)| key.key().name() == H3_ERRORS_TOTAL)
            .map(|(.., value)| value)
            .collect();
        assert_eq!(errors, vec![DebugValue::Counter(2)]);
    }

    #[test]
    fn new_rejects_an_invalid_config() {
        let config = EnrichConfig {
            h3_resolutions: vec![16],
            ..EnrichConfig::default()
        };
        assert_eq!(
            Enricher::new(&config).err(),
            Some(EnrichError::ResolutionOutOfRange(16))
        );
    }
}
