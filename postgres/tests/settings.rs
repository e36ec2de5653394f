//! The connection settings take effect on real connections to the local
//! PostgreSQL: the component's `application_name` and the
//! `statement_timeout` are those of the session (`SHOW`), for single
//! connections and pooled ones alike, and the connect timeout bounds the
//! whole connect against a server that accepts and then says nothing.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use deadpool_postgres::{PoolError, TimeoutType};
use fleetpipe_postgres::test_support::TEST_URL;
use fleetpipe_postgres::{Postgres, PostgresConfig, describe};
use tokio::net::TcpListener;

const SECTION: &str = "test.postgres";

/// Longest any step here may take before the test fails on its own.
const T: Duration = Duration::from_secs(20);

async fn show(client: &tokio_postgres::Client, name: &str) -> String {
    client
        .query_one(&format!("SHOW {name}"), &[])
        .await
        .unwrap()
        .get(0)
}

async fn connect(settings: &PostgresConfig, application_name: &str) -> tokio_postgres::Client {
    let pg = Postgres::from_config(SECTION, settings, application_name).expect("valid settings");
    let (client, _task) = tokio::time::timeout(T, pg.connect())
        .await
        .expect("connects in time")
        .expect("connects");
    client
}

#[tokio::test]
async fn the_application_name_and_the_statement_timeout_are_the_sessions() {
    let settings = PostgresConfig {
        statement_timeout: Some(Duration::from_millis(1500)),
        ..PostgresConfig::new(TEST_URL)
    };
    let client = connect(&settings, "fleetpipe-test-component").await;
    assert_eq!(
        show(&client, "application_name").await,
        "fleetpipe-test-component"
    );
    assert_eq!(show(&client, "statement_timeout").await, "1500ms");
    // The server enforces it, and the error says so with its SQLSTATE.
    let err = client
        .batch_execute("SELECT pg_sleep(5)")
        .await
        .expect_err("cancelled by the statement timeout");
    let text = describe(&err);
    assert!(
        text.starts_with("ERROR 57014: canceling statement due to statement timeout"),
        "{text}"
    );

    // Without the key, the server's setting (none).
    let client = connect(&PostgresConfig::new(TEST_URL), "fleetpipe-test-component").await;
    assert_eq!(show(&client, "statement_timeout").await, "0");

    // A name in the URL is the operator's choice and wins; server options
    // in the URL are kept next to the statement timeout.
    let url = format!("{TEST_URL}?application_name=from-url&options=-c%20work_mem%3D8MB");
    let client = connect(
        &PostgresConfig {
            statement_timeout: Some(Duration::from_secs(2)),
            ..PostgresConfig::new(url)
        },
        "fleetpipe-test-component",
    )
    .await;
    assert_eq!(show(&client, "application_name").await, "from-url");
    assert_eq!(show(&client, "work_mem").await, "8MB");
    assert_eq!(show(&client, "statement_timeout").await, "2s");
}

#[tokio::test]
async fn pooled_connections_have_the_same_settings() {
    let settings = PostgresConfig {
        statement_timeout: Some(Duration::from_secs(7)),
        ..PostgresConfig::new(TEST_URL)
    };
    let pool = Postgres::from_config(SECTION, &settings, "fleetpipe-test-pool")
        .unwrap()
        .pool(2)
        .build()
        .unwrap();
    let client = tokio::time::timeout(T, pool.get())
        .await
        .expect("in time")
        .expect("a pooled connection");
    assert_eq!(
        show(&client, "application_name").await,
        "fleetpipe-test-pool"
    );
    assert_eq!(show(&client, "statement_timeout").await, "7s");
}

/// A listener that accepts TCP connections (the kernel completes the
/// handshake) and never answers: tokio-postgres' own connect timeout,
/// which covers the TCP connect only, would wait for the startup reply
/// for good.
#[tokio::test]
async fn the_connect_timeout_bounds_a_connect_to_a_silent_server() {
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "postgresql://postgres@{}/test",
        silent.local_addr().unwrap()
    );
    let settings = PostgresConfig {
        connect_timeout: Some(Duration::from_secs(1)),
        ..PostgresConfig::new(url)
    };
    let pg = Postgres::from_config(SECTION, &settings, "fleetpipe-test-silent").unwrap();
    assert_eq!(pg.connect_timeout(), Duration::from_secs(1));

    let started = Instant::now();
    let err = tokio::time::timeout(T, pg.connect())
        .await
        .expect("gives up by itself")
        .expect_err("nothing answers");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert_eq!(describe(&err), "timeout waiting for server");

    // The pool's connections are bounded the same way.
    let pool = pg.pool(1).build().unwrap();
    let started = Instant::now();
    let err = tokio::time::timeout(T, pool.get())
        .await
        .expect("gives up by itself")
        .expect_err("nothing answers");
    assert!(
        matches!(err, PoolError::Timeout(TimeoutType::Create)),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(silent);
}
