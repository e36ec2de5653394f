//! PostgreSQL TLS against the real local server, set up for TLS by
//! `test_support::tls_server` with certificates generated for the run: each
//! mode connects as libpq's sslmode of the same name would, and each check
//! is tried by breaking it (a CA that did not issue the server's
//! certificate, a host name the certificate does not carry, a server
//! without TLS, a missing client certificate).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetpipe_postgres::test_support::{
    CERT_USER, SCRAM_PASSWORD, SCRAM_USER, TEST_URL, TestCa, TlsServer, tls_server,
};
use fleetpipe_postgres::{Postgres, PostgresTls, TlsMode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

const T: Duration = Duration::from_secs(20);

fn server() -> &'static TlsServer {
    tls_server().expect("the test PostgreSQL is set up for TLS")
}

fn postgres(url: &str, tls: &PostgresTls) -> Postgres {
    Postgres::new("test.postgres", url, tls, "fleetpipe-postgres-test").expect("valid settings")
}

/// Connects and answers whether the session is encrypted (pg_stat_ssl).
async fn ssl(pg: &Postgres) -> Result<bool, String> {
    let (client, _connection) = tokio::time::timeout(T, pg.connect())
        .await
        .expect("connects or fails in time")
        .map_err(|e| describe(&e))?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| describe(&e))?;
    Ok(row.get(0))
}

fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    s
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// A URL that connects to 127.0.0.1 but names `host` for TLS (libpq's
/// `hostaddr`): the certificate is checked against `host`.
fn url_naming(host: &str) -> String {
    format!("host={host} hostaddr=127.0.0.1 port=5432 user=postgres dbname=test")
}

#[tokio::test]
async fn verify_full_with_the_servers_ca_connects_encrypted_by_ip_and_by_name() {
    let server = server();
    let tls = server.tls(TlsMode::VerifyFull);
    assert_eq!(ssl(&postgres(TEST_URL, &tls)).await, Ok(true));
    let by_name = "postgresql://postgres@localhost:5432/test";
    assert_eq!(ssl(&postgres(by_name, &tls)).await, Ok(true));
}

#[tokio::test]
async fn a_ca_that_did_not_issue_the_servers_certificate_is_refused() {
    let _ = server();
    let dir = tempfile::tempdir().unwrap();
    let other = TestCa::new("some other CA").unwrap();
    let other_file = write(dir.path(), "other-ca.pem", other.pem());
    for mode in [TlsMode::VerifyFull, TlsMode::VerifyCa] {
        let tls = PostgresTls::new(mode, Some(other_file.clone()));
        let e = ssl(&postgres(TEST_URL, &tls)).await.expect_err("refused");
        assert!(
            e.contains("the server's certificate is not trusted: it is not issued by a CA in test.postgres.tls.ca_file")
                && e.contains(&other_file.display().to_string())
                && e.contains("UnknownIssuer"),
            "{mode}: {e}"
        );
    }
}

#[tokio::test]
async fn verify_full_checks_the_host_name_and_verify_ca_does_not() {
    let server = server();
    // Reached at 127.0.0.1, but named differently: the certificate names
    // only localhost and 127.0.0.1.
    let url = url_naming("db.fleetpipe.invalid");
    let e = ssl(&postgres(&url, &server.tls(TlsMode::VerifyFull)))
        .await
        .expect_err("refused");
    assert!(
        e.contains(
            "the server's certificate is not trusted: it is not valid for host \"db.fleetpipe.invalid\""
        ),
        "{e}"
    );
    // The same with the name it does carry connects.
    let url_ok = url_naming("localhost");
    assert_eq!(
        ssl(&postgres(&url_ok, &server.tls(TlsMode::VerifyFull))).await,
        Ok(true)
    );
    // verify-ca checks the chain only.
    assert_eq!(
        ssl(&postgres(&url, &server.tls(TlsMode::VerifyCa))).await,
        Ok(true)
    );
}

#[tokio::test]
async fn require_encrypts_without_checking_the_certificate() {
    let _ = server();
    let tls = PostgresTls::new(TlsMode::Require, None);
    assert_eq!(ssl(&postgres(TEST_URL, &tls)).await, Ok(true));
    // Any name: nothing is checked.
    assert_eq!(
        ssl(&postgres(&url_naming("db.fleetpipe.invalid"), &tls)).await,
        Ok(true)
    );
}

#[tokio::test]
async fn disable_connects_in_plaintext() {
    let _ = server();
    assert_eq!(
        ssl(&postgres(TEST_URL, &PostgresTls::default())).await,
        Ok(false)
    );
}

/// A server that has no TLS: it answers the SSLRequest with 'N' and then
/// reports whatever the client sends next (a startup message would mean
/// the client fell back to plaintext).
async fn plaintext_only_server() -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 8];
        socket.read_exact(&mut request).await.unwrap();
        // Length 8, code 80877103: SSLRequest.
        assert_eq!(request, [0, 0, 0, 8, 4, 210, 22, 47], "an SSLRequest first");
        socket.write_all(b"N").await.unwrap();
        let mut after = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut after)).await;
        after
    });
    (port, task)
}

#[tokio::test]
async fn every_tls_mode_refuses_a_server_without_tls_and_never_falls_back() {
    let server = server();
    for mode in [TlsMode::Require, TlsMode::VerifyCa, TlsMode::VerifyFull] {
        let (port, fake) = plaintext_only_server().await;
        let url = format!("postgresql://postgres@127.0.0.1:{port}/test");
        let e = ssl(&postgres(&url, &server.tls(mode)))
            .await
            .expect_err("refused");
        assert!(e.contains("server does not support TLS"), "{mode}: {e}");
        let after = fake.await.unwrap();
        assert!(
            after.is_empty(),
            "{mode}: the client sent {after:?} after the refusal"
        );
    }
}

#[tokio::test]
async fn the_ca_file_is_read_again_for_each_new_connection() {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write(dir.path(), "ca.pem", server.ca().pem());
    let pg = postgres(
        TEST_URL,
        &PostgresTls::new(TlsMode::VerifyFull, Some(ca_file.clone())),
    );
    assert_eq!(ssl(&pg).await, Ok(true));
    // The file now names another CA: the same connector refuses the server.
    let other = TestCa::new("rotated away").unwrap();
    write(dir.path(), "ca.pem", other.pem());
    let e = ssl(&pg).await.expect_err("refused");
    assert!(e.contains("not trusted"), "{e}");
    // Both CAs (a rotation in progress): trusted again.
    write(
        dir.path(),
        "ca.pem",
        &format!("{}{}", other.pem(), server.ca().pem()),
    );
    assert_eq!(ssl(&pg).await, Ok(true));
    // A file that no longer loads fails the connection naming key and path.
    std::fs::remove_file(&ca_file).unwrap();
    let e = ssl(&pg).await.expect_err("refused");
    assert!(
        e.contains(&format!(
            "test.postgres.tls.ca_file = {}: cannot read",
            ca_file.display()
        )),
        "{e}"
    );
}

#[tokio::test]
async fn a_client_certificate_authenticates_where_the_server_requires_one() {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("postgresql://{CERT_USER}@127.0.0.1:5432/test");
    let mut tls = server.tls(TlsMode::VerifyFull);

    // No certificate: pg_hba.conf's `cert` line refuses.
    let e = ssl(&postgres(&url, &tls)).await.expect_err("refused");
    assert!(e.contains("certificate"), "{e}");

    // A certificate for another user: refused too.
    let other = server.ca().client("someone_else").unwrap();
    tls.client_cert_file = Some(write(dir.path(), "other.pem", &other.cert));
    tls.client_key_file = Some(write(dir.path(), "other.key", &other.key));
    let e = ssl(&postgres(&url, &tls)).await.expect_err("refused");
    assert!(e.contains("certificate authentication failed"), "{e}");

    // Its own certificate: in, over TLS, as that user.
    let own = server.ca().client(CERT_USER).unwrap();
    tls.client_cert_file = Some(write(dir.path(), "client.pem", &own.cert));
    tls.client_key_file = Some(write(dir.path(), "client.key", &own.key));
    let pg = postgres(&url, &tls);
    assert_eq!(ssl(&pg).await, Ok(true));
    let (client, _connection) = pg.connect().await.unwrap();
    let user: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(user, CERT_USER);

    // A key that is not the certificate's is refused at setup.
    tls.client_key_file = Some(write(dir.path(), "mismatch.key", &other.key));
    let e = Postgres::new("test.postgres", &url, &tls, "x")
        .expect_err("refused")
        .to_string();
    assert!(
        e.starts_with("test.postgres.tls: tls.client_cert_file and tls.client_key_file"),
        "{e}"
    );
}

#[tokio::test]
async fn scram_channel_binding_works_over_tls() {
    let server = server();
    let url = format!(
        "postgresql://{SCRAM_USER}:{SCRAM_PASSWORD}@127.0.0.1:5432/test?channel_binding=require"
    );
    // tls-server-end-point: the client hashes the certificate it got.
    assert_eq!(
        ssl(&postgres(&url, &server.tls(TlsMode::VerifyFull))).await,
        Ok(true)
    );
    assert_eq!(
        ssl(&postgres(&url, &PostgresTls::new(TlsMode::Require, None))).await,
        Ok(true)
    );
    // A wrong password is refused: SCRAM really ran.
    let wrong = url.replace(SCRAM_PASSWORD, "wrong");
    let e = ssl(&postgres(&wrong, &server.tls(TlsMode::VerifyFull)))
        .await
        .expect_err("refused");
    assert!(e.contains("password authentication failed"), "{e}");
}
