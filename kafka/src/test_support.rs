//! Test support (feature `test-support`): Kafka-compatible brokers for
//! tests.
//!
//! - [`Tansu`]: the Tansu broker (crates.io `tansu` 0.6.0) in a process of
//!   its own on a free loopback port, for tests that need a broker outside
//!   the test process (several fleetpipe processes in consumer groups, a
//!   broker that dies). In-memory storage ([`Tansu::start`]), or an SQLite
//!   file that outlives the process ([`Tansu::start_durable`]), for a
//!   broker that crashes and comes back with what it had. `scripts/test.sh`
//!   installs it (features `dynostore` and `libsql`); a missing binary
//!   fails the test, never skips it.
//! - [`MockKafka`]: librdkafka's mock cluster on a thread of its own, for
//!   in-process tests. It has no CreateTopics or DescribeConfigs: topics are
//!   made with [`MockKafka::create_topic`].

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, Producer as _};

/// Environment variable naming the Tansu binary to run.
pub const TANSU_ENV: &str = "TANSU";

/// The Tansu version the tests are written against (`scripts/test.sh`
/// installs it).
pub const TANSU_VERSION: &str = "0.6.0";

/// How long Tansu may take to answer a metadata request after it is
/// spawned (it starts in well under a second; a loaded CI machine may be
/// much slower).
const START_PATIENCE: Duration = Duration::from_secs(30);

/// How long [`Tansu::stop`] waits for an exit after SIGTERM before it
/// sends SIGKILL.
const STOP_PATIENCE: Duration = Duration::from_secs(10);

/// How many free ports [`Tansu::start`] tries: another process may take
/// the port between the probe and Tansu's bind.
const PORT_ATTEMPTS: usize = 3;

/// Environment variables Tansu 0.6.0 reads its settings from; removed from
/// its environment so that the test's flags are all it runs with.
const TANSU_ENV_SETTINGS: [&str; 9] = [
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "DATA_LAKE",
    "ICEBERG_CATALOG",
    "RUST_LOG",
];

/// Why a test broker could not be started or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestBrokerError {
    /// No Tansu binary.
    #[error(
        "tansu not found (${TANSU_ENV} unset, not on PATH, not in {searched}); install it with \
         `cargo install tansu --version {TANSU_VERSION} --locked --no-default-features \
         --features dynostore,libsql` (scripts/test.sh does) or point ${TANSU_ENV} at it"
    )]
    NotFound {
        /// The cargo bin directories looked in.
        searched: String,
    },
    /// The binary could not be run.
    #[error("cannot run {}: {source}", binary.display())]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// Tansu ended before it answered.
    #[error("tansu on 127.0.0.1:{port} exited ({status}) before it answered; its output:\n{log}")]
    Exited {
        /// The port it was given.
        port: u16,
        /// How it ended.
        status: ExitStatus,
        /// What it printed.
        log: String,
    },
    /// Tansu runs but did not answer a metadata request in time.
    #[error(
        "tansu on 127.0.0.1:{port} did not answer a metadata request within {waited:?} \
         ({last_error}); its output:\n{log}"
    )]
    NotReady {
        /// Its port.
        port: u16,
        /// How long was waited.
        waited: Duration,
        /// The last failure of the metadata request.
        last_error: String,
        /// What it printed.
        log: String,
    },
    /// A local resource (log file, free port, signal) failed.
    #[error("tansu test broker: {what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// librdkafka failed (the readiness client, or the mock cluster).
    #[error("{what}: {source}")]
    Kafka {
        /// What was being done.
        what: &'static str,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// The thread owning the mock cluster ended.
    #[error("the mock cluster's thread has ended")]
    MockGone,
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> TestBrokerError {
    move |source| TestBrokerError::Io { what, source }
}

/// A Tansu broker in its own process (and process group, so a signal to
/// the test run's group does not reach it and killing it kills only it),
/// listening on `127.0.0.1:`[`Tansu::port`]. With in-memory storage its
/// topics and records are gone once it stops; with durable storage they
/// are there again after [`Tansu::restart`]. Dropping it kills it.
#[derive(Debug)]
pub struct Tansu {
    binary: PathBuf,
    port: u16,
    storage: Storage,
    /// Its stdout and stderr, over every start (deleted on drop).
    log: tempfile::TempPath,
    child: Option<Child>,
}

/// Where a [`Tansu`] keeps topics, records, offsets and groups.
#[derive(Debug)]
enum Storage {
    /// In the process's memory (`memory://`).
    Memory,
    /// In `tansu.db` (SQLite, Tansu's `libsql` engine) in this directory,
    /// deleted on drop.
    Sqlite(tempfile::TempDir),
}

impl Tansu {
    /// Starts Tansu (`$TANSU`, else `tansu` on `PATH`, else in cargo's bin
    /// directory) on a free loopback port and waits until it answers a
    /// metadata request. Blocks its thread for as long (under a second
    /// usually, at most 30 s).
    ///
    /// # Errors
    ///
    /// [`TestBrokerError::NotFound`] when there is no binary; the other
    /// variants when it does not start or answer.
    pub fn start() -> Result<Self, TestBrokerError> {
        Self::start_with(find_tansu()?)
    }

    /// As [`Tansu::start`], with the given binary.
    ///
    /// # Errors
    ///
    /// As [`Tansu::start`]; [`TestBrokerError::Spawn`] when `binary` cannot
    /// be run.
    pub fn start_with(binary: impl Into<PathBuf>) -> Result<Self, TestBrokerError> {
        Self::launch(binary.into(), Storage::Memory)
    }

    /// As [`Tansu::start`], with durable storage: an SQLite database in a
    /// temporary directory of its own (removed on drop), written before a
    /// request is answered, so a broker killed with SIGKILL and started
    /// again with [`Tansu::restart`] still has its topics, records,
    /// committed offsets and consumer groups.
    ///
    /// # Errors
    ///
    /// As [`Tansu::start`]; a binary built without the `libsql` feature
    /// exits at once ([`TestBrokerError::Exited`], saying so).
    pub fn start_durable() -> Result<Self, TestBrokerError> {
        let dir = tempfile::Builder::new()
            .prefix("fleetpipe-tansu-")
            .tempdir()
            .map_err(io("creating its storage directory"))?;
        Self::launch(find_tansu()?, Storage::Sqlite(dir))
    }

    fn launch(binary: PathBuf, storage: Storage) -> Result<Self, TestBrokerError> {
        let log = tempfile::Builder::new()
            .prefix("fleetpipe-tansu-")
            .suffix(".log")
            .tempfile()
            .map_err(io("creating its log file"))?
            .into_temp_path();
        let mut tansu = Self {
            binary,
            port: 0,
            storage,
            log,
            child: None,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            tansu.port = free_port()?;
            match tansu.spawn_and_wait() {
                Ok(()) => return Ok(tansu),
                // Most likely another process took the port between the
                // probe and Tansu's bind: another port. Every attempt
                // writes to the same log, so the error shows them all.
                Err(TestBrokerError::Exited { .. }) if attempt < PORT_ATTEMPTS => {}
                Err(error) => return Err(error),
            }
        }
    }

    /// `127.0.0.1:port`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port it listens on (the same after [`Tansu::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether its process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// What it has printed so far (every start), for failure messages.
    pub fn output(&self) -> String {
        read_log(&self.log)
    }

    /// Kills it with SIGKILL (a crash: nothing is flushed or closed
    /// cleanly) and waits for the process to end. Doing nothing when it
    /// is not running.
    ///
    /// # Errors
    ///
    /// [`TestBrokerError::Io`] when it cannot be signalled or waited for.
    pub fn kill(&mut self) -> Result<(), TestBrokerError> {
        if let Some(mut child) = self.child.take() {
            signal_group(&mut child, "KILL")?;
            child.wait().map_err(io("waiting for tansu to end"))?;
        }
        Ok(())
    }

    /// Stops it with SIGTERM (Tansu shuts down and closes its
    /// connections), then SIGKILL if it has not ended within 10 s. Doing
    /// nothing when it is not running.
    ///
    /// # Errors
    ///
    /// [`TestBrokerError::Io`] when it cannot be signalled or waited for.
    pub fn stop(&mut self) -> Result<(), TestBrokerError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        signal_group(&mut child, "TERM")?;
        let deadline = Instant::now() + STOP_PATIENCE;
        while Instant::now() < deadline {
            if child
                .try_wait()
                .map_err(io("waiting for tansu to end"))?
                .is_some()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        signal_group(&mut child, "KILL")?;
        child.wait().map_err(io("waiting for tansu to end"))?;
        Ok(())
    }

    /// Freezes it (SIGSTOP to its process group): the endpoint stops
    /// answering, as behind a network partition, and keeps everything it
    /// holds (records, offsets, groups) for [`Tansu::resume`]. Doing
    /// nothing when it is not running.
    ///
    /// # Errors
    ///
    /// [`TestBrokerError::Io`] when it cannot be signalled.
    pub fn pause(&mut self) -> Result<(), TestBrokerError> {
        self.signal_only("STOP")
    }

    /// Lets a paused broker run again (SIGCONT).
    ///
    /// # Errors
    ///
    /// [`TestBrokerError::Io`] when it cannot be signalled.
    pub fn resume(&mut self) -> Result<(), TestBrokerError> {
        self.signal_only("CONT")
    }

    /// Sends `signal` to the process group, with no fallback: SIGSTOP and
    /// SIGCONT must not turn into a SIGKILL.
    fn signal_only(&mut self, signal: &str) -> Result<(), TestBrokerError> {
        let Some(child) = &self.child else {
            return Ok(());
        };
        let status = Command::new("kill")
            .args([&format!("-{signal}"), "--", &format!("-{}", child.id())])
            .status()
            .map_err(io("signalling tansu"))?;
        if status.success() {
            Ok(())
        } else {
            Err(TestBrokerError::Io {
                what: "signalling tansu",
                source: std::io::Error::other(format!("kill -{signal} failed: {status}")),
            })
        }
    }

    /// Starts it again on the same port (stopping it first if it runs) and
    /// waits until it answers. With in-memory storage it comes back empty:
    /// no topics, no records, no committed offsets; with durable storage
    /// ([`Tansu::start_durable`]) it comes back with all of them.
    ///
    /// # Errors
    ///
    /// As [`Tansu::start`], e.g. [`TestBrokerError::Exited`] when another
    /// process took the port meanwhile.
    pub fn restart(&mut self) -> Result<(), TestBrokerError> {
        self.stop()?;
        self.spawn_and_wait()
    }

    fn spawn_and_wait(&mut self) -> Result<(), TestBrokerError> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let stdout = OpenOptions::new()
            .append(true)
            .open(&self.log)
            .map_err(io("opening its log file"))?;
        let stderr = stdout.try_clone().map_err(io("opening its log file"))?;
        let mut command = Command::new(&self.binary);
        command
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        match &self.storage {
            Storage::Memory => {
                command.args(["--storage-engine", "memory://tansu/"]);
            }
            Storage::Sqlite(dir) => {
                // Tansu 0.6.0 reads `sqlite://<host><path>` as a path
                // below its working directory, even when the path is
                // absolute: the directory is its working directory.
                command
                    .args(["--storage-engine", "sqlite://tansu.db"])
                    .current_dir(dir.path());
            }
        }
        for variable in TANSU_ENV_SETTINGS {
            command.env_remove(variable);
        }
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().map_err(|source| TestBrokerError::Spawn {
            binary: self.binary.clone(),
            source,
        })?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// Waits until the port accepts connections and a metadata request
    /// lists a broker.
    fn wait_ready(&mut self) -> Result<(), TestBrokerError> {
        let started = Instant::now();
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut client: Option<BaseProducer> = None;
        let mut last_error = "the port accepts no connection".to_owned();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait().map_err(io("waiting for tansu"))?
            {
                self.child = None;
                return Err(TestBrokerError::Exited {
                    port: self.port,
                    status,
                    log: self.output(),
                });
            }
            if started.elapsed() > START_PATIENCE {
                // A broker that does not answer is of no use to the test.
                let _ = self.kill();
                return Err(TestBrokerError::NotReady {
                    port: self.port,
                    waited: START_PATIENCE,
                    last_error,
                    log: self.output(),
                });
            }
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                if client.is_none() {
                    client = Some(
                        ClientConfig::new()
                            .set("bootstrap.servers", self.bootstrap())
                            .create()
                            .map_err(|source| TestBrokerError::Kafka {
                                what: "creating the readiness client",
                                source,
                            })?,
                    );
                }
                if let Some(client) = &client {
                    match client.client().fetch_metadata(None, Duration::from_secs(1)) {
                        Ok(metadata) if !metadata.brokers().is_empty() => return Ok(()),
                        Ok(_) => last_error = "the metadata lists no broker".to_owned(),
                        Err(error) => last_error = error.to_string(),
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        // A test that failed halfway must not leave a broker behind.
        let _ = self.kill();
    }
}

/// Sends `signal` (a `kill` name) to the child's process group (its pid:
/// it leads its own group), and to the child alone should that fail.
fn signal_group(child: &mut Child, signal: &str) -> Result<(), TestBrokerError> {
    let group = format!("-{}", child.id());
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), "--", &group])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if sent {
        return Ok(());
    }
    // Without `kill(1)`, or once the group is gone: Child::kill is
    // SIGKILL, and a no-op error for a process that already ended.
    match child.try_wait().map_err(io("waiting for tansu"))? {
        Some(_) => Ok(()),
        None => child.kill().map_err(io("killing tansu")),
    }
}

/// A port nothing listens on right now.
fn free_port() -> Result<u16, TestBrokerError> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io("finding a free port"))?;
    let port = listener
        .local_addr()
        .map_err(io("finding a free port"))?
        .port();
    Ok(port)
}

fn read_log(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        // The end is what explains a failure; 16 KiB of it is plenty.
        let length = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(length.saturating_sub(16 * 1024)));
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    text
}

/// The Tansu binary: `$TANSU`, else `tansu` on `PATH`, else
/// `$CARGO_HOME/bin/tansu` or `~/.cargo/bin/tansu` (where `cargo install`
/// puts it, which need not be on the `PATH` of a test run).
fn find_tansu() -> Result<PathBuf, TestBrokerError> {
    if let Some(binary) = std::env::var_os(TANSU_ENV) {
        return Ok(PathBuf::from(binary));
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut cargo_bins: Vec<PathBuf> = [
        std::env::var_os("CARGO_HOME").map(PathBuf::from),
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")),
    ]
    .into_iter()
    .flatten()
    .map(|home| home.join("bin"))
    .collect();
    cargo_bins.dedup();
    on_path
        .iter()
        .chain(&cargo_bins)
        .map(|dir| dir.join("tansu"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| TestBrokerError::NotFound {
            searched: cargo_bins
                .iter()
                .map(|dir| dir.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// librdkafka's mock cluster, running for as long as this handle lives.
///
/// A `MockCluster` may not leave the thread that created it, so a thread
/// of its own creates it and serves requests until the handle is dropped;
/// the handle can go anywhere. The cluster answers Metadata, Produce,
/// Fetch, consumer groups and transactions, but not CreateTopics or
/// DescribeConfigs: topics are made with [`MockKafka::create_topic`] (or
/// by auto-creation, when a client asks for a topic by name).
#[derive(Debug)]
pub struct MockKafka {
    bootstrap: String,
    /// Closing it tells the thread to destroy the cluster.
    requests: Option<mpsc::Sender<MockRequest>>,
    thread: Option<JoinHandle<()>>,
}

/// A request to the thread owning the mock cluster.
#[derive(Debug)]
enum MockRequest {
    CreateTopic {
        name: String,
        partitions: i32,
        reply: mpsc::Sender<Result<(), KafkaError>>,
    },
}

impl MockKafka {
    /// Starts a mock cluster of `brokers` brokers.
    ///
    /// # Errors
    ///
    /// [`TestBrokerError::Kafka`] when librdkafka cannot create it,
    /// [`TestBrokerError::Io`] when its thread cannot be started.
    pub fn start(brokers: i32) -> Result<Self, TestBrokerError> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (requests, requests_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("fleetpipe-kafka-mock".to_owned())
            .spawn(move || serve_mock(brokers, &ready_tx, &requests_rx))
            .map_err(io("starting the mock cluster's thread"))?;
        let mut mock = Self {
            bootstrap: String::new(),
            requests: Some(requests),
            thread: Some(thread),
        };
        // The thread answers before it serves; a panic drops the sender.
        mock.bootstrap = ready_rx
            .recv()
            .map_err(|_| TestBrokerError::MockGone)?
            .map_err(|source| TestBrokerError::Kafka {
                what: "starting librdkafka's mock cluster",
                source,
            })?;
        Ok(mock)
    }

    /// The brokers' `host:port` list, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Creates `name` with `partitions` partitions, replicated on every
    /// broker (up to 3).
    ///
    /// # Errors
    ///
    /// [`TestBrokerError::Kafka`] when the cluster refuses (e.g. the topic
    /// exists), [`TestBrokerError::MockGone`] when its thread has ended.
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), TestBrokerError> {
        let (reply, answer) = mpsc::channel();
        self.requests
            .as_ref()
            .and_then(|requests| {
                requests
                    .send(MockRequest::CreateTopic {
                        name: name.to_owned(),
                        partitions,
                        reply,
                    })
                    .ok()
            })
            .ok_or(TestBrokerError::MockGone)?;
        answer
            .recv()
            .map_err(|_| TestBrokerError::MockGone)?
            .map_err(|source| TestBrokerError::Kafka {
                what: "creating a topic in the mock cluster",
                source,
            })
    }
}

impl Drop for MockKafka {
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(thread) = self.thread.take() {
            // Waiting closes the cluster's sockets before the test goes on.
            let _ = thread.join();
        }
    }
}

/// The mock cluster's thread.
fn serve_mock(
    brokers: i32,
    ready: &mpsc::Sender<Result<String, KafkaError>>,
    requests: &mpsc::Receiver<MockRequest>,
) {
    let cluster: MockCluster<'static, _> = match MockCluster::new(brokers) {
        Ok(cluster) => cluster,
        Err(error) => {
            let _ = ready.send(Err(error));
            return;
        }
    };
    if ready.send(Ok(cluster.bootstrap_servers())).is_err() {
        return;
    }
    let replication = brokers.clamp(1, 3);
    while let Ok(request) = requests.recv() {
        match request {
            MockRequest::CreateTopic {
                name,
                partitions,
                reply,
            } => {
                let _ = reply.send(cluster.create_topic(&name, partitions, replication));
            }
        }
    }
}
