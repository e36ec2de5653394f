//! Configuration of the Kafka sink (the `[sink.kafka]` section).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::KafkaError;

/// Encoding of telemetry values (`json` or `protobuf`): the model's
/// [`TelemetryFormat`](fleetpipe_model::topic_record::TelemetryFormat),
/// since the topics' record format is defined there
/// ([`fleetpipe_model::topic_record`]).
pub use fleetpipe_model::topic_record::TelemetryFormat as KafkaFormat;

/// Value of [`KafkaConfig::brokers`] that starts librdkafka's mock cluster
/// inside fleetpipe instead of connecting to a real one.
pub const EMBEDDED: &str = "embedded";

/// Codecs [`KafkaConfig::compression`] accepts, as librdkafka names them.
pub const COMPRESSION_CODECS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];

/// Largest `linger.ms` librdkafka accepts.
const MAX_LINGER: Duration = Duration::from_millis(900_000);

/// Largest `batch.size` librdkafka accepts.
const MAX_BATCH_BYTES: usize = i32::MAX as usize;

/// Most records in flight `max_in_flight` allows: librdkafka's own queue
/// holds at most `i32::MAX` messages, and the sink waits for all of them at
/// once (a `u32` of semaphore permits) when it drains.
pub(crate) const MAX_IN_FLIGHT: usize = i32::MAX as usize;

/// librdkafka options fleetpipe relies on and therefore does not let the
/// pass-through map change.
const RESERVED_OPTIONS: [&str; 2] = [
    // Without a report per successful record no ack could ever be marked.
    "delivery.report.only.error",
    // Every producer of a topic must send a vehicle to the same partition.
    "partitioner",
];

/// Settings of the Kafka sink.
///
/// Only [`KafkaConfig::brokers`] is required; every other key has a default.
/// [`KafkaConfig::validate`] (called by [`super::KafkaSink::new`]) checks the
/// values.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `"host:port,host:port"`, or `"embedded"` to start
    /// librdkafka's mock cluster inside fleetpipe (development, tests).
    /// Stable public key `sink.kafka.brokers`.
    pub brokers: String,
    /// Topic of accepted, enriched pings.
    #[serde(default = "KafkaConfig::default_telemetry_topic")]
    pub telemetry_topic: String,
    /// Topic of state-change events: CloudEvents 1.0 JSON values (structured
    /// content mode, whatever [`KafkaConfig::format`] says), keyed by vehicle.
    #[serde(default = "KafkaConfig::default_events_topic")]
    pub events_topic: String,
    /// Topic of rejected input.
    #[serde(default = "KafkaConfig::default_dlq_topic")]
    pub dlq_topic: String,
    /// Compression codec: `none`, `gzip`, `snappy`, `lz4` or `zstd`.
    #[serde(default = "KafkaConfig::default_compression")]
    pub compression: String,
    /// How long librdkafka waits for more records before sending a batch
    /// (`linger.ms`), e.g. `"25ms"`. Longer means fewer, larger produce
    /// requests (less CPU per record on both ends) and later delivery; a
    /// record's ack also waits for the database, whose batches wait up to
    /// `sink.timescale.batch_max_wait`, so a linger below that adds nothing
    /// to the time until a ping is acknowledged durable.
    #[serde(default = "KafkaConfig::default_linger", with = "humantime_serde")]
    pub linger: Duration,
    /// Most bytes of one batch per partition (librdkafka `batch.size`).
    #[serde(default = "KafkaConfig::default_batch_bytes")]
    pub batch_bytes: usize,
    /// Telemetry value format: `"json"` (default) or `"protobuf"` (schema
    /// `fleetpipe.v1.Ping` from the model crate's proto). Dead letters keep
    /// their raw bytes and events are CloudEvents JSON either way.
    #[serde(default)]
    pub format: KafkaFormat,
    /// Embedded mode: partitions per topic created in the mock cluster.
    #[serde(default = "KafkaConfig::default_embedded_partitions")]
    pub embedded_partitions: i32,
    /// Records in flight (sent, delivery report pending) at most, 1 to
    /// `i32::MAX`; beyond it the sink stops reading its input (backpressure).
    #[serde(default = "KafkaConfig::default_max_in_flight")]
    pub max_in_flight: usize,
    /// Extra librdkafka producer options, passed through verbatim (e.g.
    /// `"security.protocol" = "SASL_SSL"`). They are applied last and so win
    /// over the options fleetpipe sets, except `delivery.report.only.error`,
    /// which would keep every ack from being marked and is refused.
    #[serde(default)]
    pub librdkafka: BTreeMap<String, String>,
}

impl KafkaConfig {
    /// A configuration for `brokers` with every other key at its default.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            telemetry_topic: Self::default_telemetry_topic(),
            events_topic: Self::default_events_topic(),
            dlq_topic: Self::default_dlq_topic(),
            compression: Self::default_compression(),
            linger: Self::default_linger(),
            batch_bytes: Self::default_batch_bytes(),
            format: KafkaFormat::default(),
            embedded_partitions: Self::default_embedded_partitions(),
            max_in_flight: Self::default_max_in_flight(),
            librdkafka: BTreeMap::new(),
        }
    }

    /// Default of [`KafkaConfig::telemetry_topic`]: `fleet.telemetry.v1`.
    pub fn default_telemetry_topic() -> String {
        "fleet.telemetry.v1".to_owned()
    }

    /// Default of [`KafkaConfig::events_topic`]: `fleet.events.v1`.
    pub fn default_events_topic() -> String {
        "fleet.events.v1".to_owned()
    }

    /// Default of [`KafkaConfig::dlq_topic`]: `fleet.dlq.v1`.
    pub fn default_dlq_topic() -> String {
        "fleet.dlq.v1".to_owned()
    }

    /// Default of [`KafkaConfig::compression`]: `lz4`.
    pub fn default_compression() -> String {
        "lz4".to_owned()
    }

    /// Default of [`KafkaConfig::linger`]: 25 ms, half the database's
    /// default batch wait (librdkafka's own default is 5 ms; at 25 ms
    /// fleetpipe spends ~12 % less CPU per ping, see BENCHMARKS.md).
    pub const fn default_linger() -> Duration {
        Duration::from_millis(25)
    }

    /// Default of [`KafkaConfig::batch_bytes`]: 1 MiB.
    pub const fn default_batch_bytes() -> usize {
        1024 * 1024
    }

    /// Default of [`KafkaConfig::embedded_partitions`].
    pub const fn default_embedded_partitions() -> i32 {
        6
    }

    /// Default of [`KafkaConfig::max_in_flight`].
    pub const fn default_max_in_flight() -> usize {
        100_000
    }

    /// Whether [`KafkaConfig::brokers`] asks for the embedded mock cluster.
    pub fn is_embedded(&self) -> bool {
        self.brokers.trim() == EMBEDDED
    }

    /// Checks the settings, naming the offending key on error.
    ///
    /// librdkafka checks the pass-through options itself when the producer
    /// is created.
    ///
    /// # Errors
    ///
    /// [`KafkaError::Config`] naming the first invalid key.
    pub fn validate(&self) -> Result<(), KafkaError> {
        let invalid = |key: &str, message: String| {
            Err(KafkaError::Config {
                key: key.to_owned(),
                message,
            })
        };
        if self.brokers.trim().is_empty() {
            return invalid(
                "brokers",
                format!("must list bootstrap servers (host:port,...) or be {EMBEDDED:?}"),
            );
        }
        for (key, topic) in [
            ("telemetry_topic", &self.telemetry_topic),
            ("events_topic", &self.events_topic),
            ("dlq_topic", &self.dlq_topic),
        ] {
            if let Err(why) = fleetpipe_kafka::check_topic_name(topic) {
                return invalid(key, format!("{topic:?} is not a valid topic name: {why}"));
            }
        }
        if !COMPRESSION_CODECS.contains(&self.compression.as_str()) {
            return invalid(
                "compression",
                format!(
                    "{:?} is not one of {}",
                    self.compression,
                    COMPRESSION_CODECS.join(", ")
                ),
            );
        }
        if self.linger > MAX_LINGER {
            return invalid(
                "linger",
                format!("{:?} is longer than librdkafka's limit of 15m", self.linger),
            );
        }
        if self.batch_bytes == 0 || self.batch_bytes > MAX_BATCH_BYTES {
            return invalid(
                "batch_bytes",
                format!("{} is not in [1, {MAX_BATCH_BYTES}]", self.batch_bytes),
            );
        }
        if self.is_embedded() && self.embedded_partitions < 1 {
            return invalid(
                "embedded_partitions",
                format!("{} is not at least 1", self.embedded_partitions),
            );
        }
        // No permit would ever be free: the sink would wait forever.
        if !(1..=MAX_IN_FLIGHT).contains(&self.max_in_flight) {
            return invalid(
                "max_in_flight",
                format!("{} is not in [1, {MAX_IN_FLIGHT}]", self.max_in_flight),
            );
        }
        if let Some(key) = RESERVED_OPTIONS
            .iter()
            .find(|k| self.librdkafka.contains_key(**k))
        {
            return invalid(
                "librdkafka",
                format!("{key:?} is set by fleetpipe and cannot be overridden"),
            );
        }
        Ok(())
    }
}
