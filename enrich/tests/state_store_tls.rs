//! Enrichment's state checkpoints in PostgreSQL over TLS: against the real
//! local server, set up for TLS by fleetpipe-postgres' test support with
//! certificates generated for the run, a checkpoint saved over
//! `verify-full` is restored over `verify-full`; with a CA that did not
//! issue the server's certificate, loading fails and says why.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fleetpipe_enrich::StateStore;
use fleetpipe_model::VehicleId;
use fleetpipe_postgres::test_support::{TEST_URL, TestCa, tls_server};
use fleetpipe_postgres::{Postgres, PostgresTls, TlsMode};

const SECTION: &str = "sink.timescale";

/// A schema of this test's own with the `vehicle_state` table (made here,
/// so that the TLS connections only read and write it).
async fn schema_with_state_table(admin: &tokio_postgres::Client) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let schema = format!("fp_state_tls_{}_{nanos}", std::process::id());
    admin
        .batch_execute(&format!(
            "CREATE SCHEMA \"{schema}\"; \
             CREATE TABLE \"{schema}\".vehicle_state (\
                 vehicle_id text PRIMARY KEY, state jsonb NOT NULL, \
                 updated_at timestamptz NOT NULL DEFAULT now())"
        ))
        .await
        .unwrap();
    schema
}

#[tokio::test]
async fn checkpoints_are_saved_and_restored_over_verified_tls() {
    let server = tls_server().expect("the test PostgreSQL is set up for TLS");
    let plain = Postgres::new(SECTION, TEST_URL, &PostgresTls::default(), "fp-test").unwrap();
    let (admin, _connection) = plain.connect().await.unwrap();
    let schema = schema_with_state_table(&admin).await;

    let store = StateStore::Postgres {
        postgres: Postgres::new(
            SECTION,
            TEST_URL,
            &server.tls(TlsMode::VerifyFull),
            "fp-test-state",
        )
        .unwrap(),
        schema: schema.clone(),
    };
    let entries = vec![
        (
            VehicleId::parse("van-1").unwrap(),
            r#"{"seq": 1}"#.to_owned(),
        ),
        (
            VehicleId::parse("van-2").unwrap(),
            r#"{"seq": 2}"#.to_owned(),
        ),
    ];
    store.save(entries.clone()).await.unwrap();
    let mut restored = store.load().await.unwrap();
    restored.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    // (jsonb's own spelling of the saved JSON.)
    assert_eq!(restored, entries);

    // The same store with a CA that did not issue the server's certificate:
    // refused, saying why and which key.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other-ca.pem");
    std::fs::write(&other, TestCa::new("not the server's").unwrap().pem()).unwrap();
    let untrusted = StateStore::Postgres {
        postgres: Postgres::new(
            SECTION,
            TEST_URL,
            &PostgresTls::new(TlsMode::VerifyFull, Some(other)),
            "fp-test-state",
        )
        .unwrap(),
        schema: schema.clone(),
    };
    let e = untrusted.load().await.expect_err("refused").to_string();
    assert!(
        e.starts_with("state checkpoint in PostgreSQL: connect failed: ")
            && e.contains("the server's certificate is not trusted")
            && e.contains("sink.timescale.tls.ca_file"),
        "{e}"
    );
    let e = untrusted
        .save(entries.clone())
        .await
        .expect_err("refused")
        .to_string();
    assert!(e.contains("not trusted"), "{e}");

    admin
        .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await
        .unwrap();
}
