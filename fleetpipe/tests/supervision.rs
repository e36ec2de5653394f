//! Every task of the pipeline is owned: a listener that cannot be bound
//! fails the start, and a task that dies while the pipeline runs turns
//! readiness false and makes the pipeline end with an error (the process
//! then exits non-zero).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use fleetpipe::{Pipeline, PipelineError};
use fleetpipe_sink::KafkaConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_cannot_bind_fails_the_start_naming_its_source_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let mut config = test_config(dir.path());
    broker(&mut config).listen_v5 = Some(taken_addr);
    let shutdown = CancellationToken::new();
    let err = match Pipeline::start(&config, shutdown.clone()).await {
        Ok(_) => panic!("started with {taken_addr} taken"),
        Err(e) => e,
    };
    assert!(
        matches!(
            err,
            PipelineError::SourceStart {
                source_name: "mqtt-embedded",
                ..
            }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("ingest.mqtt.listen_v5") && message.contains(&taken_addr.to_string()),
        "{message}"
    );
    // Nothing of the failed start holds on: the same configuration starts
    // once the port is free.
    drop(taken);
    let pipeline = Pipeline::start(&config, shutdown.clone()).await.unwrap();
    assert_eq!(pipeline.mqtt_v5_addr(), Some(taken_addr));
    shutdown.cancel();
    pipeline.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_dies_turns_readiness_false_and_fails_the_pipeline() {
    // A Kafka cluster that refuses the idempotent producer its id: librdkafka
    // treats that as fatal, and the Kafka sink's task ends with an error.
    let cluster = MockCluster::new(1).unwrap();
    for topic in ["fleet.telemetry.v1", "fleet.events.v1", "fleet.dlq.v1"] {
        cluster.create_topic(topic, 1, 1).unwrap();
    }
    cluster.request_errors(
        RDKafkaApiKey::InitProducerId,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED],
    );
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.sink.kafka = Some(KafkaConfig::new(cluster.bootstrap_servers()));
    let shutdown = CancellationToken::new();
    let pipeline = Pipeline::start(&config, shutdown.clone()).await.unwrap();
    let readyz = format!("http://{}/readyz", pipeline.ops_addr());
    // A record for the sink to send (its answer does not matter here).
    let _ = reqwest::Client::new()
        .post(format!("http://{}/v1/pings", pipeline.http_addr()))
        .body(json_ping("van-1", 1))
        .timeout(Duration::from_secs(10))
        .send()
        .await;

    // The operations listener stays up through the drain and answers 503.
    let not_ready = wait_for_async(Duration::from_secs(30), || async {
        let status = reqwest::get(&readyz).await.ok()?.status();
        (status == reqwest::StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await;
    assert!(not_ready.is_some(), "/readyz never turned 503");
    // Nobody cancelled `shutdown`: the failure did.
    let err = tokio::time::timeout(Duration::from_secs(30), pipeline.wait())
        .await
        .expect("the pipeline drains after the failure")
        .expect_err("a dead sink is an error");
    assert!(
        matches!(err, PipelineError::Sink { sink: "kafka", .. }),
        "{err:?}"
    );
    assert!(err.to_string().starts_with("sink kafka failed: "), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_pipeline_stays_ready_until_shutdown() {
    // The control of the test above: the same pipeline with a cluster that
    // takes the producer stays ready.
    let cluster = MockCluster::new(1).unwrap();
    for topic in ["fleet.telemetry.v1", "fleet.events.v1", "fleet.dlq.v1"] {
        cluster.create_topic(topic, 1, 1).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.sink.kafka = Some(KafkaConfig::new(cluster.bootstrap_servers()));
    let shutdown = CancellationToken::new();
    let pipeline = Pipeline::start(&config, shutdown.clone()).await.unwrap();
    let readyz = format!("http://{}/readyz", pipeline.ops_addr());
    for _ in 0..10 {
        let status = reqwest::get(&readyz).await.unwrap().status();
        assert_eq!(status, reqwest::StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shutdown.cancel();
    pipeline.wait().await.unwrap();
}

/// Polls `f` until it returns `Some` or `timeout` passes.
async fn wait_for_async<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
