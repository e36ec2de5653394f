//! Counting what is durable: fleetpipe's own per-sink counters while the run
//! goes (cheap, once a second), and the database and Kafka themselves at the
//! end (exact, to check the counters).

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// Telemetry records each sink reports durable
/// (`fleetpipe_sink_records_total{stream="telemetry"}`): Kafka counts
/// delivery reports, TimescaleDB committed rows.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Durable {
    /// Rows committed to the `telemetry` table.
    pub timescale: u64,
    /// Records acknowledged by Kafka.
    pub kafka: u64,
}

impl Durable {
    /// Durable in both sinks.
    pub fn both(&self) -> u64 {
        self.timescale.min(self.kafka)
    }
}

/// Reads the counters from fleetpipe's `/metrics`.
pub async fn scrape(
    client: &reqwest::Client,
    http: std::net::SocketAddr,
) -> anyhow::Result<Durable> {
    Ok(Durable::from_text(&metrics_text(client, http).await?))
}

/// fleetpipe's `/metrics` (Prometheus text).
pub async fn metrics_text(
    client: &reqwest::Client,
    http: std::net::SocketAddr,
) -> anyhow::Result<String> {
    Ok(client
        .get(format!("http://{http}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

impl Durable {
    /// The telemetry counters of both sinks in Prometheus text.
    pub fn from_text(text: &str) -> Self {
        let telemetry = |sink: &str| {
            sum(
                text,
                "fleetpipe_sink_records_total",
                &[("sink", sink), ("stream", "telemetry")],
            ) as u64
        };
        Self {
            timescale: telemetry("timescale"),
            kafka: telemetry("kafka"),
        }
    }
}

/// The sum of the samples of metric `name` in Prometheus text whose labels
/// include every pair of `labels` (0 if none): a counter of one sink, or a
/// gauge over all its workers.
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            // `name{...} v` or `name v`, not a longer name with this prefix.
            let (label_text, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            labels
                .iter()
                .all(|(k, v)| {
                    label_text
                        .split(',')
                        .any(|pair| pair == format!("{k}=\"{v}\""))
                })
                .then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

/// Rows in `{schema}.telemetry`.
pub async fn db_rows(pg_url: &str, schema: &str) -> anyhow::Result<u64> {
    let client = fleetpipe_bench::peers::connect(pg_url).await?;
    let row = client
        .query_one(&format!("SELECT count(*) FROM \"{schema}\".telemetry"), &[])
        .await?;
    Ok(row.get::<_, i64>(0).max(0) as u64)
}

/// The mode `{schema}.telemetry` is in on the server: a TimescaleDB
/// hypertable, or a plain PostgreSQL table (what the sink's `timescaledb =
/// "auto"` chose, not what the configuration asked for).
pub async fn database_mode(pg_url: &str, schema: &str) -> anyhow::Result<String> {
    let client = fleetpipe_bench::peers::connect(pg_url).await?;
    let extension: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')",
            &[],
        )
        .await?
        .get(0);
    if !extension {
        return Ok("plain PostgreSQL: the server has no TimescaleDB".to_owned());
    }
    let hypertable: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables \
             WHERE hypertable_schema = $1 AND hypertable_name = 'telemetry')",
            &[&schema],
        )
        .await?
        .get(0);
    Ok(if hypertable {
        "TimescaleDB, telemetry a hypertable".to_owned()
    } else {
        "plain PostgreSQL tables on a server with TimescaleDB".to_owned()
    })
}

/// Bytes of `{schema}.telemetry` with its indexes (and TOAST).
pub async fn table_bytes(pg_url: &str, schema: &str) -> anyhow::Result<u64> {
    let client = fleetpipe_bench::peers::connect(pg_url).await?;
    let row = client
        .query_one(
            "SELECT pg_total_relation_size(format('%I.telemetry', $1::text)::regclass)",
            &[&schema],
        )
        .await?;
    Ok(row.get::<_, i64>(0).max(0) as u64)
}

/// Messages ever written to `topic`: the sum over partitions of the high
/// watermark (offsets start at 0). Not high − low: the embedded mock cluster
/// keeps only the newest records of a partition and moves its low
/// watermark up, like retention would.
pub async fn kafka_messages(bootstrap: &str, topic: &str) -> anyhow::Result<u64> {
    let bootstrap = bootstrap.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "fleetpipe-e2e-bench")
            .create()?;
        let timeout = Duration::from_secs(10);
        let metadata = consumer.fetch_metadata(Some(&topic), timeout)?;
        let mut total = 0u64;
        for t in metadata.topics() {
            for p in t.partitions() {
                let (_low, high) = consumer.fetch_watermarks(&topic, p.id(), timeout)?;
                total += high.max(0) as u64;
            }
        }
        Ok(total)
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_picks_the_telemetry_stream_of_one_sink() {
        let text = "# TYPE fleetpipe_sink_records_total counter\n\
            fleetpipe_sink_records_total{sink=\"kafka\",stream=\"telemetry\"} 120\n\
            fleetpipe_sink_records_total{sink=\"kafka\",stream=\"events\"} 7\n\
            fleetpipe_sink_records_total{sink=\"timescale\",stream=\"telemetry\"} 99\n";
        let durable = Durable::from_text(text);
        assert_eq!((durable.kafka, durable.timescale), (120, 99));
        let none = sum(text, "fleetpipe_sink_records_total", &[("sink", "file")]);
        assert_eq!(none, 0.0);
    }

    #[test]
    fn sum_adds_the_matching_series_of_one_metric_only() {
        let text = "fleetpipe_enrich_queue_depth{worker=\"0\"} 3\n\
            fleetpipe_enrich_queue_depth{worker=\"1\"} 4\n\
            fleetpipe_enrich_queue_depth_max 100\n\
            fleetpipe_pipeline_inflight_bytes 2048\n";
        assert_eq!(sum(text, "fleetpipe_enrich_queue_depth", &[]), 7.0);
        let one = sum(text, "fleetpipe_enrich_queue_depth", &[("worker", "1")]);
        assert_eq!(one, 4.0);
        assert_eq!(sum(text, "fleetpipe_pipeline_inflight_bytes", &[]), 2048.0);
    }
}
