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
    let text = client
        .get(format!("http://{http}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .text()
        .await?;
    Ok(Durable {
        timescale: counter(&text, "timescale"),
        kafka: counter(&text, "kafka"),
    })
}

/// The telemetry record counter of `sink` in Prometheus text, 0 if absent.
fn counter(text: &str, sink: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with("fleetpipe_sink_records_total{"))
        .filter(|l| l.contains(&format!("sink=\"{sink}\"")) && l.contains("stream=\"telemetry\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
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
        assert_eq!(counter(text, "kafka"), 120);
        assert_eq!(counter(text, "timescale"), 99);
        assert_eq!(counter(text, "file"), 0);
    }
}
