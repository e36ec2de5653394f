//! Test support (feature `test-support`): the local PostgreSQL
//! (`127.0.0.1:5432`, database `test`, user `postgres`, trust
//! authentication, as `scripts/test.sh` sets it up) configured for TLS with
//! certificates generated here, the one setup every TLS test of the
//! workspace uses.
//!
//! [`tls_server`] makes sure, once per test process, that the server
//! presents a certificate for `localhost` and `127.0.0.1` issued by a test
//! CA whose certificate and key live in [`TLS_DIR`], trusts that CA for
//! client certificates, and has two roles for TLS-only authentication:
//! [`CERT_USER`] (`pg_hba.conf` method `cert`) and [`SCRAM_USER`]
//! (`scram-sha-256`, for channel binding). The files are reused when the
//! server already presents them (so tests of another process, which hold the
//! same CA, keep working); otherwise everything is generated anew, the
//! server is pointed at it (`ALTER SYSTEM`, `pg_reload_conf()`), and the
//! setup waits until a `verify-full` connection sees the new certificate.
//! A file lock ([`TLS_DIR`]`/.lock`) serializes the setup across processes.
//! A reload leaves existing connections as they are, and plaintext
//! connections (`host ... trust`) keep working: the other tests are
//! unaffected.
//!
//! Needs root (the server's key file must belong to the server's user) and
//! a server on this machine.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::{Postgres, PostgresTls, TlsMode};

/// The test server, in plaintext.
pub const TEST_URL: &str = "postgresql://postgres@127.0.0.1:5432/test";

/// Whether this server offers TimescaleDB to a schema set up with
/// `timescaledb = "auto"`: the extension is installed, or available and
/// preloaded (so that `CREATE EXTENSION` works; the tests connect as a
/// superuser). Tests assert the mode the server offers rather than assume
/// one: CI has plain PostgreSQL, the maintainers' server has TimescaleDB.
///
/// # Errors
///
/// The query's failure.
pub async fn offers_timescaledb(
    db: &tokio_postgres::Client,
) -> Result<bool, tokio_postgres::Error> {
    let row = db
        .query_opt(
            "SELECT installed_version IS NOT NULL \
                 OR current_setting('shared_preload_libraries') ~ '(^|[ ,])timescaledb([ ,]|$)' \
             FROM pg_available_extensions WHERE name = 'timescaledb'",
            &[],
        )
        .await?;
    Ok(row.is_some_and(|r| r.get::<_, bool>(0)))
}

/// Where the test CA and the server's certificate and key live.
pub const TLS_DIR: &str = "/var/lib/postgresql/fleetpipe-test-tls";

/// A role that may log in only over TLS with a client certificate whose
/// common name is its name (`hostssl test fleetpipe_tls_cert 127.0.0.1/32
/// cert`).
pub const CERT_USER: &str = "fleetpipe_tls_cert";

/// A role that may log in only over TLS with SCRAM (`hostssl test
/// fleetpipe_tls_scram 127.0.0.1/32 scram-sha-256`), password
/// [`SCRAM_PASSWORD`].
pub const SCRAM_USER: &str = "fleetpipe_tls_scram";

/// [`SCRAM_USER`]'s password.
pub const SCRAM_PASSWORD: &str = "fleetpipe-test-scram";

/// Common name of the test CA: fixed, so that the CA can be rebuilt from
/// its stored key to issue more certificates.
const CA_NAME: &str = "fleetpipe test PostgreSQL CA";

/// The lines this setup puts at the top of `pg_hba.conf` (first match
/// wins; they name only the two test roles).
const HBA_LINES: &str = "\
# fleetpipe tests (fleetpipe-postgres test-support): TLS-only roles
hostssl test fleetpipe_tls_cert 127.0.0.1/32 cert
hostssl test fleetpipe_tls_scram 127.0.0.1/32 scram-sha-256
";

/// How long the server may take to present new certificates after a
/// reload.
const RELOAD_PATIENCE: Duration = Duration::from_secs(20);

/// A certificate authority of a test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The certificate.
    pub cert: String,
    /// Its private key.
    pub key: String,
}

impl TestCa {
    /// A new CA named `name` (a CA the test server does not trust, unless
    /// it is [`TlsServer::ca`]).
    ///
    /// # Errors
    ///
    /// rcgen's error, as text.
    pub fn new(name: &str) -> Result<Self, String> {
        let key = KeyPair::generate().map_err(err)?;
        Self::with_key(name, key)
    }

    fn with_key(name: &str, key: KeyPair) -> Result<Self, String> {
        let pem = ca_params(name)?.self_signed(&key).map_err(err)?.pem();
        Ok(Self {
            issuer: Issuer::new(ca_params(name)?, key),
            pem,
        })
    }

    /// The CA certificate, PEM (for a `ca_file`).
    #[must_use]
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A server certificate for these DNS names and IP addresses.
    ///
    /// # Errors
    ///
    /// rcgen's error, as text.
    pub fn server(&self, names: &[&str]) -> Result<Identity, String> {
        let names = names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        let mut params = CertificateParams::new(names).map_err(err)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "fleetpipe test PostgreSQL server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(&params)
    }

    /// A client certificate for database user `user` (its common name).
    ///
    /// # Errors
    ///
    /// rcgen's error, as text.
    pub fn client(&self, user: &str) -> Result<Identity, String> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params.distinguished_name.push(DnType::CommonName, user);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(&params)
    }

    fn sign(&self, params: &CertificateParams) -> Result<Identity, String> {
        let key = KeyPair::generate().map_err(err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(err)?;
        Ok(Identity {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// The parameters of a test CA; the same for the same name, so a CA is
/// rebuilt from its stored key (the issuer name and key identifier of the
/// certificates it issues depend only on these and the key).
fn ca_params(name: &str) -> Result<CertificateParams, String> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// The test server, set up for TLS.
#[derive(Debug)]
pub struct TlsServer {
    ca: TestCa,
    ca_file: PathBuf,
}

impl TlsServer {
    /// The CA that issued the server's certificate; the server also trusts
    /// it for client certificates.
    #[must_use]
    pub fn ca(&self) -> &TestCa {
        &self.ca
    }

    /// The CA's certificate file (PEM).
    #[must_use]
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// TLS settings of `mode`, with this server's CA for the modes that
    /// verify.
    #[must_use]
    pub fn tls(&self, mode: TlsMode) -> PostgresTls {
        PostgresTls::new(mode, mode.verifies().then(|| self.ca_file.clone()))
    }
}

/// The test server set up for TLS (see the module docs); the setup runs
/// once per process.
///
/// # Errors
///
/// Why the setup failed (no server, not root, the server refused the new
/// files: see its log).
pub fn tls_server() -> Result<&'static TlsServer, String> {
    static SERVER: OnceLock<Result<TlsServer, String>> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            // A runtime of its own on a thread of its own: callers are
            // async tests whose runtimes must not block on themselves.
            std::thread::spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(err)?
                    .block_on(set_up())
            })
            .join()
            .unwrap_or_else(|_| Err("the TLS setup thread panicked".to_owned()))
        })
        .as_ref()
        .map_err(|e| format!("setting the test PostgreSQL up for TLS: {e}"))
}

async fn set_up() -> Result<TlsServer, String> {
    let admin = plaintext("fleetpipe-test-tls-setup").await?;
    let show = |name: &'static str| {
        let admin = &admin;
        async move {
            admin
                .query_one(&format!("SHOW {name}"), &[])
                .await
                .map(|row| row.get::<_, String>(0))
                .map_err(|e| format!("SHOW {name}: {}", crate::sql::chain(&e)))
        }
    };
    let data_dir = show("data_directory").await?;
    let hba_file = show("hba_file").await?;
    let owner = std::fs::metadata(&data_dir).map_err(|e| format!("{data_dir}: {e}"))?;
    let (uid, gid) = (owner.uid(), owner.gid());

    let dir = Path::new(TLS_DIR);
    std::fs::create_dir_all(dir).map_err(|e| format!("{TLS_DIR}: {e}"))?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".lock"))
        .map_err(|e| format!("{TLS_DIR}/.lock: {e}"))?;
    // Held until this function returns: another process sets up after
    // this one is done, and then finds everything in place.
    lock.lock().map_err(|e| format!("{TLS_DIR}/.lock: {e}"))?;

    let files = Files::new(dir);
    let mut last_error = String::new();
    for fresh in [false, true] {
        let (ca, generated) = match (fresh, files.load_ca()) {
            (false, Some(ca)) => (ca, false),
            _ => (files.generate(uid, gid)?, true),
        };
        let mut reload = generated;
        let settings = [
            ("ssl", "on".to_owned()),
            ("ssl_cert_file", files.server_cert.display().to_string()),
            ("ssl_key_file", files.server_key.display().to_string()),
            ("ssl_ca_file", files.ca_cert.display().to_string()),
        ];
        for (name, value) in settings {
            if show(name).await? != value {
                // ALTER SYSTEM takes no parameters; the values are fixed
                // paths without quotes.
                admin
                    .batch_execute(&format!("ALTER SYSTEM SET {name} = '{value}'"))
                    .await
                    .map_err(|e| format!("ALTER SYSTEM SET {name}: {}", crate::sql::chain(&e)))?;
                reload = true;
            }
        }
        create_roles(&admin).await?;
        reload |= ensure_hba_lines(Path::new(&hba_file))?;
        if reload {
            admin
                .batch_execute("SELECT pg_reload_conf()")
                .await
                .map_err(|e| format!("pg_reload_conf(): {}", crate::sql::chain(&e)))?;
        }
        match wait_for_certificate(&files.ca_cert).await {
            Ok(()) => {
                return Ok(TlsServer {
                    ca,
                    ca_file: files.ca_cert.clone(),
                });
            }
            Err(e) => last_error = e,
        }
    }
    Err(format!(
        "the server does not present the test certificate after a reload \
         (see the server's log): {last_error}"
    ))
}

/// A plaintext connection to the test server.
async fn plaintext(application_name: &str) -> Result<tokio_postgres::Client, String> {
    let pg =
        Postgres::new("test", TEST_URL, &PostgresTls::default(), application_name).map_err(err)?;
    let (client, _connection) = pg
        .connect()
        .await
        .map_err(|e| format!("{TEST_URL}: {}", crate::sql::chain(&e)))?;
    Ok(client)
}

async fn create_roles(admin: &tokio_postgres::Client) -> Result<(), String> {
    let sql = format!(
        "SET password_encryption = 'scram-sha-256'; \
         DO $$ BEGIN \
             IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{CERT_USER}') THEN \
                 CREATE ROLE {CERT_USER} LOGIN; \
             END IF; \
             IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{SCRAM_USER}') THEN \
                 CREATE ROLE {SCRAM_USER} LOGIN; \
             END IF; \
         END $$; \
         ALTER ROLE {SCRAM_USER} PASSWORD '{SCRAM_PASSWORD}'"
    );
    admin
        .batch_execute(&sql)
        .await
        .map_err(|e| format!("creating the test roles: {}", crate::sql::chain(&e)))
}

/// Puts [`HBA_LINES`] at the top of `pg_hba.conf` unless they are there;
/// whether it changed the file.
fn ensure_hba_lines(hba: &Path) -> Result<bool, String> {
    let text = std::fs::read_to_string(hba).map_err(|e| format!("{}: {e}", hba.display()))?;
    if text.starts_with(HBA_LINES) {
        return Ok(false);
    }
    let rest: String = text
        .lines()
        .filter(|line| !HBA_LINES.lines().any(|ours| ours == *line))
        .map(|line| format!("{line}\n"))
        .collect();
    // Written in place, keeping the file's owner and mode.
    std::fs::write(hba, format!("{HBA_LINES}{rest}"))
        .map_err(|e| format!("{}: {e}", hba.display()))?;
    Ok(true)
}

/// Waits until a `verify-full` connection with `ca_file` succeeds over TLS.
async fn wait_for_certificate(ca_file: &Path) -> Result<(), String> {
    let tls = PostgresTls::new(TlsMode::VerifyFull, Some(ca_file.to_owned()));
    let pg = Postgres::new("test", TEST_URL, &tls, "fleetpipe-test-tls-setup").map_err(err)?;
    let deadline = Instant::now() + RELOAD_PATIENCE;
    loop {
        let attempt = async {
            let (client, _connection) = pg.connect().await?;
            client
                .query_one(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await
                .map(|row| row.get::<_, bool>(0))
        };
        let error = match attempt.await {
            Ok(true) => return Ok(()),
            Ok(false) => "connected without TLS".to_owned(),
            Err(e) => crate::sql::chain(&e),
        };
        if Instant::now() > deadline {
            return Err(error);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The files in [`TLS_DIR`].
struct Files {
    ca_cert: PathBuf,
    ca_key: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

impl Files {
    fn new(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        }
    }

    /// The stored CA, when every file is there and its key loads.
    fn load_ca(&self) -> Option<TestCa> {
        let pem = std::fs::read_to_string(&self.ca_cert).ok()?;
        let key = KeyPair::from_pem(&std::fs::read_to_string(&self.ca_key).ok()?).ok()?;
        if !(self.server_cert.exists() && self.server_key.exists()) {
            return None;
        }
        Some(TestCa {
            issuer: Issuer::new(ca_params(CA_NAME).ok()?, key),
            pem,
        })
    }

    /// A new CA and server certificate, written (each file replaced whole,
    /// the server's key owned by the server's user `uid`/`gid`, mode 0600).
    fn generate(&self, uid: u32, gid: u32) -> Result<TestCa, String> {
        let key = KeyPair::generate().map_err(err)?;
        let key_pem = key.serialize_pem();
        let ca = TestCa::with_key(CA_NAME, key)?;
        let server = ca.server(&["localhost", "127.0.0.1"])?;
        replace(&self.ca_key, &key_pem, 0o600, None)?;
        replace(&self.ca_cert, ca.pem(), 0o644, None)?;
        replace(&self.server_key, &server.key, 0o600, Some((uid, gid)))?;
        replace(&self.server_cert, &server.cert, 0o644, None)?;
        Ok(ca)
    }
}

/// Writes `path` through a temporary file and a rename, so the server
/// never reads half a file.
fn replace(
    path: &Path,
    contents: &str,
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("{}: {e}", path.display());
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).map_err(fail)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(fail)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&tmp, Some(uid), Some(gid)).map_err(fail)?;
    }
    std::fs::rename(&tmp, path).map_err(fail)
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}
