//! The gateways as components (sources), after Vector's
//! `SourceConfig::build`: each configured gateway is a [`SourceConfig`]
//! variant that validates itself and builds itself from a
//! [`SourceContext`] into a [`BuiltSource`]: its bound listeners and the
//! tasks that serve them, which the pipeline owns and runs.
//!
//! To add a source: a module of its own (config with `validate`, a build
//! that binds and returns its tasks without spawning them), its table in
//! [`IngestConfig`], and one [`SourceConfig`] variant with its arm in
//! `name`, `validate` and `build`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::auth::AuthSetupError;
use crate::http::{HttpConfig, routes, serve};
use crate::mqtt::{
    EmbeddedBroker, EmbeddedBrokerError, EmbeddedConfig, ExternalConfig, ExternalConsumer,
    ExternalConsumerError, MqttConfig,
};
use crate::tls::{ServerTls, TlsError, TlsGateway};
use crate::{AuthConfig, Authenticator, Ingestor, RateLimitConfig, ValidationConfig};

/// `ingest`: the gateways and the rules every input goes through.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// MQTT gateway (embedded broker or external broker).
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// The devices' HTTP listener: WebSocket and HTTP ingest.
    #[serde(default)]
    pub http: HttpConfig,
    /// Device authentication.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Validation limits.
    #[serde(default)]
    pub limits: ValidationConfig,
    /// Per-vehicle rate limit.
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
}

impl IngestConfig {
    /// The configured gateways: the MQTT one its `mode` selects (none with
    /// `off`), then the HTTP listener.
    pub fn sources(&self) -> Vec<SourceConfig> {
        let mqtt = match &self.mqtt {
            MqttConfig::Embedded(c) => Some(SourceConfig::MqttEmbedded(c.clone())),
            MqttConfig::External(c) => Some(SourceConfig::MqttExternal(c.clone())),
            MqttConfig::Off => None,
        };
        mqtt.into_iter()
            .chain([SourceConfig::Http(self.http.clone())])
            .collect()
    }

    /// Every rule of `[ingest]`: each gateway's own, the limits', and the
    /// authentication settings (the credentials or key files are read, as
    /// at start).
    ///
    /// # Errors
    ///
    /// The first rule broken; the message names the key.
    pub fn validate(&self) -> Result<(), IngestConfigError> {
        for source in self.sources() {
            source.validate()?;
        }
        self.limits.validate()?;
        Authenticator::from_config(&self.auth)?;
        Ok(())
    }
}

impl ValidationConfig {
    /// Limits that leave room for at least one ping.
    ///
    /// # Errors
    ///
    /// [`IngestConfigError::Limits`].
    pub fn validate(&self) -> Result<(), IngestConfigError> {
        if self.max_payload_bytes == 0 || self.max_batch == 0 {
            return Err(IngestConfigError::Limits);
        }
        Ok(())
    }
}

impl HttpConfig {
    /// Timeouts and the connection cap that let a connection in, and TLS
    /// files that load.
    ///
    /// # Errors
    ///
    /// The first rule broken; the message names the key.
    pub fn validate(&self) -> Result<(), IngestConfigError> {
        if let Some(tls) = &self.tls {
            // Reads the files, so that `config check` catches what would
            // otherwise fail at start.
            ServerTls::load(TlsGateway::Http, tls)?;
        }
        let timeouts = [
            self.idle_timeout,
            self.header_read_timeout,
            self.body_timeout,
            self.ws_idle_timeout,
        ];
        if timeouts.contains(&Duration::ZERO) {
            return Err(IngestConfigError::ZeroHttpTimeout);
        }
        if self.max_connections == 0 {
            return Err(IngestConfigError::ZeroHttpConnections);
        }
        Ok(())
    }
}

/// A rule of `[ingest]` broken.
#[derive(Debug, thiserror::Error)]
pub enum IngestConfigError {
    /// `ingest.mqtt.topic_prefix` cannot start a topic filter.
    #[error(
        "ingest.mqtt.topic_prefix must be non-empty, without wildcards or leading/trailing '/'"
    )]
    TopicPrefix,
    /// `ingest.mqtt.share_group` would change the filter's shape.
    #[error("ingest.mqtt.share_group must not contain '/', '+' or '#'")]
    ShareGroup,
    /// A log segment rumqttd would refuse (it panics on a smaller one).
    #[error(
        "ingest.mqtt.{key}_bytes must be at least {min} (rumqttd's smallest segment) and ingest.mqtt.{key}_count at least 1"
    )]
    Segment {
        /// `segment` or `ack_segment`.
        key: &'static str,
        /// rumqttd's smallest segment.
        min: usize,
    },
    /// MQTT carries a keep alive as a 16-bit number of seconds.
    #[error("ingest.mqtt.server_keep_alive must be 1s to 65535s, in whole seconds")]
    ServerKeepAlive,
    /// Every listener of the embedded broker is off.
    #[error(
        "ingest.mqtt: the embedded broker has no listener (listen, listen_v5, tls.listen and tls.listen_v5 are all off); use mode = \"off\" for no MQTT"
    )]
    NoMqttListener,
    /// `ingest.mqtt.broker_url` is not an MQTT URL.
    #[error(transparent)]
    External(#[from] ExternalConsumerError),
    /// A TLS file does not load (the message names the key).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// An HTTP timeout of zero would close every connection at once.
    #[error(
        "ingest.http.idle_timeout, header_read_timeout, body_timeout and ws_idle_timeout must be longer than 0"
    )]
    ZeroHttpTimeout,
    /// An HTTP listener that takes no connection.
    #[error("ingest.http.max_connections must be at least 1")]
    ZeroHttpConnections,
    /// Limits that refuse every ping.
    #[error("ingest.limits.max_payload_bytes and ingest.limits.max_batch must be at least 1")]
    Limits,
    /// The authentication settings or files.
    #[error(transparent)]
    Auth(#[from] AuthSetupError),
}

/// One configured gateway.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceConfig {
    /// The embedded MQTT broker (`ingest.mqtt.mode = "embedded"`).
    MqttEmbedded(EmbeddedConfig),
    /// A subscription to an external MQTT broker (`mode = "external"`).
    MqttExternal(ExternalConfig),
    /// WebSocket and HTTP (`[ingest.http]`).
    Http(HttpConfig),
}

/// What every gateway is built with.
#[derive(Debug, Clone)]
pub struct SourceContext {
    /// Hands messages to the pipeline and reports what became of them (the
    /// acknowledgement plumbing).
    pub ingestor: Ingestor,
    /// Device authentication.
    pub auth: Arc<Authenticator>,
    /// Stops accepting when cancelled; the gateways then drain what they took.
    pub shutdown: CancellationToken,
}

/// A task a gateway needs running until shutdown.
pub type SourceTask = Pin<Box<dyn Future<Output = Result<(), SourceError>> + Send>>;

/// A gateway with its listeners bound and its tasks not yet running.
pub struct BuiltSource {
    /// Its name, as the pipeline reports it.
    pub name: &'static str,
    /// Each bound listener: its configuration key and its address (port 0
    /// resolved).
    pub addrs: Vec<(&'static str, SocketAddr)>,
    /// Its tasks, each named; every one runs until shutdown, so one that
    /// ends before is a failure of the gateway.
    pub tasks: Vec<(&'static str, SourceTask)>,
}

impl std::fmt::Debug for BuiltSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tasks: Vec<_> = self.tasks.iter().map(|(name, _)| name).collect();
        f.debug_struct("BuiltSource")
            .field("name", &self.name)
            .field("addrs", &self.addrs)
            .field("tasks", &tasks)
            .finish()
    }
}

impl SourceConfig {
    /// The gateway's name.
    pub fn name(&self) -> &'static str {
        match self {
            SourceConfig::MqttEmbedded(_) => "mqtt-embedded",
            SourceConfig::MqttExternal(_) => "mqtt-external",
            SourceConfig::Http(_) => "http",
        }
    }

    /// The gateway's own rules, the same its build relies on; reads the TLS
    /// files it names as the build would.
    ///
    /// # Errors
    ///
    /// The first rule broken; the message names the key.
    pub fn validate(&self) -> Result<(), IngestConfigError> {
        match self {
            SourceConfig::MqttEmbedded(c) => c.validate(),
            SourceConfig::MqttExternal(c) => c.validate(),
            SourceConfig::Http(c) => c.validate(),
        }
    }

    /// Binds the gateway's listeners and prepares its tasks; nothing is
    /// accepted until the tasks run.
    ///
    /// # Errors
    ///
    /// A listener that cannot be bound or TLS files that do not load; the
    /// message names the key.
    pub async fn build(&self, cx: &SourceContext) -> Result<BuiltSource, SourceError> {
        let (addrs, tasks) = match self {
            SourceConfig::MqttEmbedded(c) => {
                let broker = EmbeddedBroker::start(
                    c,
                    Arc::clone(&cx.auth),
                    cx.ingestor.clone(),
                    cx.shutdown.clone(),
                )
                .await?;
                (broker.addrs().keyed(), broker.into_tasks())
            }
            SourceConfig::MqttExternal(c) => {
                let consumer =
                    ExternalConsumer::start(c, cx.ingestor.clone(), cx.shutdown.clone())?;
                (
                    Vec::new(),
                    vec![("mqtt-external consumer", consumer.into_task())],
                )
            }
            SourceConfig::Http(c) => build_http(c, cx).await?,
        };
        Ok(BuiltSource {
            name: self.name(),
            addrs,
            tasks,
        })
    }
}

type Built = (
    Vec<(&'static str, SocketAddr)>,
    Vec<(&'static str, SourceTask)>,
);

/// The devices' HTTP listener: WebSocket and `POST /v1/pings`, with TLS
/// when `[ingest.http.tls]` is set.
async fn build_http(config: &HttpConfig, cx: &SourceContext) -> Result<Built, SourceError> {
    let tls = config
        .tls
        .as_ref()
        .map(|c| ServerTls::load(TlsGateway::Http, c).map(Arc::new))
        .transpose()?;
    let (listener, addr) = bind("ingest.http.listen", config.listen).await?;
    let app = routes(
        cx.ingestor.clone(),
        Arc::clone(&cx.auth),
        config,
        cx.shutdown.clone(),
    );
    let mut tasks: Vec<(&'static str, SourceTask)> = Vec::new();
    if let Some(tls) = &tls {
        let watch = Arc::clone(tls).watch(cx.shutdown.clone());
        tasks.push(("http tls reload", Box::pin(ok_at_end(watch))));
    }
    let serve = serve(
        listener,
        app,
        config.limits("device"),
        tls,
        cx.shutdown.clone(),
    );
    tasks.push(("http listener", Box::pin(ok_at_end(serve))));
    Ok((vec![("ingest.http.listen", addr)], tasks))
}

/// A task that cannot fail, as a [`SourceTask`]'s future.
pub(crate) async fn ok_at_end(task: impl Future<Output = ()>) -> Result<(), SourceError> {
    task.await;
    Ok(())
}

/// Binds `addr`, the value of config key `key`: the only bind, so an error
/// names the key and port 0 is resolved from the bound socket.
///
/// # Errors
///
/// [`SourceError::Bind`].
pub async fn bind(
    key: &'static str,
    addr: SocketAddr,
) -> Result<(tokio::net::TcpListener, SocketAddr), SourceError> {
    let bind_err = |source| SourceError::Bind { key, addr, source };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;
    Ok((listener, local))
}

/// Why a gateway could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A listener address cannot be bound.
    #[error("{key} = {addr}: cannot listen: {source}")]
    Bind {
        /// Config key of the address.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// TLS files that do not load.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The embedded MQTT broker.
    #[error(transparent)]
    Embedded(#[from] EmbeddedBrokerError),
    /// The external MQTT consumer.
    #[error(transparent)]
    External(#[from] ExternalConsumerError),
}
