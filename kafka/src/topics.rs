//! Topic provisioning: [`ensure_topics`] creates the topics fleetpipe needs
//! and checks the ones that exist.
//!
//! The partition count of an existing topic is never changed. Records are
//! keyed by vehicle and placed by `partition = hash(vehicle_id) % count`
//! ([`crate::partition_for`]); each consumer of a group owns the
//! per-vehicle state (last position, geofence membership, ...) of the
//! partitions assigned to it. A different count sends most vehicles to
//! another partition: their new records would be processed by a consumer
//! without their state, and their old and new records would sit in two
//! partitions with no order between them. So a count that differs from the
//! one asked for is a fatal error ([`TopicError::PartitionMismatch`]) for an
//! operator to resolve (migrate to a new topic, or configure the count the
//! topic has), never something to repair automatically.
//!
//! Topic configs (e.g. `cleanup.policy = compact`) are sent with the
//! creation and read back afterwards (DescribeConfigs); a value that
//! differs is reported in the [`TopicOutcome`], not refused: a config can be
//! changed in place without moving any record, and whether a difference
//! matters (an operator's longer `retention.ms`, or a state topic that is
//! not compacted) is for the caller to decide. Configs are read back only
//! for specs that ask for some, so a broker without DescribeConfigs serves
//! specs without configs; with configs asked for it fails the call
//! ([`TopicError::Admin`]) rather than have them pass unchecked.
//! librdkafka's mock cluster implements neither CreateTopics nor
//! DescribeConfigs and never answers them: against it a missing topic, or
//! configs to read back, end in a timeout.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio::time::Instant;

/// A topic fleetpipe needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// The topic's name: 1-249 characters of `[A-Za-z0-9._-]`, not `.` or
    /// `..`.
    pub name: String,
    /// Partitions: at least 1. An existing topic must have exactly this many.
    pub partitions: i32,
    /// Replicas of each partition when the topic is created: at least 1.
    /// Not checked on an existing topic (it can be changed by reassignment
    /// without moving a record to another partition).
    pub replication_factor: i32,
    /// Topic configs set when the topic is created, e.g.
    /// `cleanup.policy = compact`; read back and compared afterwards.
    pub configs: BTreeMap<String, String>,
}

impl TopicSpec {
    /// A topic of `partitions` partitions and `replication_factor` replicas,
    /// without configs.
    pub fn new(name: impl Into<String>, partitions: i32, replication_factor: i32) -> Self {
        Self {
            name: name.into(),
            partitions,
            replication_factor,
            configs: BTreeMap::new(),
        }
    }

    /// The same topic with the config `key = value`.
    #[must_use]
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.configs.insert(key.into(), value.into());
        self
    }

    /// Checks the values, naming the topic and what is wrong.
    ///
    /// # Errors
    ///
    /// [`TopicError::InvalidSpec`].
    pub fn validate(&self) -> Result<(), TopicError> {
        let invalid = |reason: String| {
            Err(TopicError::InvalidSpec {
                topic: self.name.clone(),
                reason,
            })
        };
        if let Err(why) = check_topic_name(&self.name) {
            return invalid(format!("not a valid topic name: {why}"));
        }
        if self.partitions < 1 {
            return invalid(format!(
                "partitions = {} is not at least 1",
                self.partitions
            ));
        }
        if self.replication_factor < 1 {
            return invalid(format!(
                "replication_factor = {} is not at least 1",
                self.replication_factor
            ));
        }
        if let Some(key) = self.configs.keys().find(|k| k.trim().is_empty()) {
            return invalid(format!("config key {key:?} is blank"));
        }
        Ok(())
    }
}

/// What [`ensure_topics`] found or did for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicOutcome {
    /// The topic.
    pub name: String,
    /// Whether this call created it.
    pub status: TopicStatus,
    /// Its partitions (always the count asked for: any other is an error).
    pub partitions: i32,
    /// Its configs compared with the ones asked for.
    pub configs: ConfigCheck,
}

/// Whether [`ensure_topics`] created a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicStatus {
    /// Created by this call.
    Created,
    /// It existed already, or another client created it at the same time
    /// (the broker answered `TOPIC_ALREADY_EXISTS`).
    AlreadyPresent,
}

/// The configs a broker reports for a topic compared with the ones a
/// [`TopicSpec`] asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigCheck {
    /// The broker reports every config asked for with the value asked for
    /// (also when none is asked for).
    Matches,
    /// Some configs differ or are not reported, in key order. For a topic
    /// that existed this means it was made differently; for one just
    /// created, that the broker ignored the value.
    Differs(Vec<ConfigDifference>),
}

/// A config whose value is not the one asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigDifference {
    /// The config, e.g. `cleanup.policy`.
    pub key: String,
    /// The value asked for.
    pub wanted: String,
    /// The value the broker reports; `None` when it does not report the
    /// config (or reports it without a value). Kafka reports every config,
    /// defaults included; Tansu 0.6 only those the topic was created with.
    pub actual: Option<String>,
}

/// Why [`ensure_topics`] failed. [`TopicError::is_retriable`] tells a
/// transient failure (broker unreachable, timeout) from one that needs a
/// person (invalid spec, partition mismatch, refused authorization).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// A spec is out of its domain, or two specs name the same topic.
    #[error("kafka topic {topic:?}: {reason}")]
    InvalidSpec {
        /// The topic.
        topic: String,
        /// What is wrong.
        reason: String,
    },
    /// librdkafka refused the client configuration.
    #[error("kafka: cannot create the admin client: {0}")]
    Client(#[source] KafkaError),
    /// The cluster's metadata could not be read.
    #[error("kafka: cannot read the cluster's metadata: {0}")]
    Metadata(#[source] KafkaError),
    /// A topic exists with a partition count other than the one asked for.
    #[error(
        "kafka topic {topic:?} has {actual} partitions but {expected} are configured; fleetpipe \
         never repartitions a topic: per-vehicle state is owned by partition = \
         hash(vehicle_id) % partitions, and another count would move vehicles away from their \
         state and split their records over two partitions. Configure {actual} partitions, or \
         move to a new topic with {expected}"
    )]
    PartitionMismatch {
        /// The topic.
        topic: String,
        /// The count asked for.
        expected: i32,
        /// The count it has.
        actual: i32,
    },
    /// An admin request as a whole failed (e.g. timed out, or the broker
    /// does not support it).
    #[error("kafka: {operation} failed: {source}")]
    Admin {
        /// `CreateTopics` or `DescribeConfigs`.
        operation: &'static str,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// The broker refused to create a topic.
    #[error("kafka: cannot create topic {topic:?}: {code}")]
    Create {
        /// The topic.
        topic: String,
        /// The broker's (or librdkafka's) error.
        code: RDKafkaErrorCode,
    },
    /// The broker could not describe a topic's configs.
    #[error("kafka: cannot read the configs of topic {topic:?}: {code}")]
    DescribeConfigs {
        /// The topic.
        topic: String,
        /// The broker's (or librdkafka's) error.
        code: RDKafkaErrorCode,
    },
    /// Topics were not in the cluster's metadata before the timeout (just
    /// created topics take a moment to appear on every broker).
    #[error("kafka: topics {topics:?} not in the cluster's metadata within {waited:?}")]
    NotVisible {
        /// The topics missing.
        topics: Vec<String>,
        /// How long was waited.
        waited: Duration,
    },
    /// The thread reading the metadata did not finish (the runtime is
    /// shutting down).
    #[error("kafka: metadata request interrupted: {0}")]
    Interrupted(#[source] tokio::task::JoinError),
}

impl TopicError {
    /// Whether trying again later may succeed: the broker was unreachable,
    /// busy or slow. Invalid specs, a partition mismatch, refused
    /// authorization or an invalid config stay as they are until someone
    /// changes something.
    pub fn is_retriable(&self) -> bool {
        match self {
            TopicError::Metadata(error) | TopicError::Admin { source: error, .. } => {
                code_of(error).is_some_and(retriable)
            }
            TopicError::Create { code, .. } | TopicError::DescribeConfigs { code, .. } => {
                retriable(*code)
            }
            TopicError::NotVisible { .. } => true,
            TopicError::InvalidSpec { .. }
            | TopicError::Client(_)
            | TopicError::PartitionMismatch { .. }
            | TopicError::Interrupted(_) => false,
        }
    }
}

/// The error code of a librdkafka error, including admin operations'
/// (which `KafkaError::rdkafka_error_code` leaves out).
fn code_of(error: &KafkaError) -> Option<RDKafkaErrorCode> {
    match error {
        KafkaError::AdminOp(code) => Some(*code),
        other => other.rdkafka_error_code(),
    }
}

/// Codes of conditions that pass by themselves.
fn retriable(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::BrokerTransportFailure
            | C::Resolve
            | C::AllBrokersDown
            | C::OperationTimedOut
            | C::TimedOutQueue
            | C::RequestTimedOut
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::BrokerNotAvailable
            | C::NetworkException
            | C::NotController
            | C::ThrottlingQuotaExceeded
    )
}

/// How often the metadata is read again while waiting for created topics.
const VISIBILITY_POLL: Duration = Duration::from_millis(100);

/// The admin client [`ensure_topics`] uses; shared with the blocking
/// metadata reads.
type Admin = Arc<AdminClient<DefaultClientContext>>;

/// Makes sure every topic of `specs` exists with its partition count:
/// creates the missing ones with their configs, checks the existing ones,
/// and reads back the configs asked for. `config` is an admin client's
/// configuration ([`crate::client_config`]); `timeout` bounds the whole
/// call. Outcomes are in the order of `specs`.
///
/// Nothing is created when an existing topic has another partition count.
/// A topic another client creates at the same time is fine
/// ([`TopicStatus::AlreadyPresent`]), as long as its count is the one asked
/// for. Topics are listed with a metadata request for all topics, which
/// never creates one (a request naming a topic may, with
/// `auto.create.topics.enable`, and with the broker's default count).
///
/// # Errors
///
/// See [`TopicError`]; [`TopicError::is_retriable`] says whether trying
/// again may help.
pub async fn ensure_topics(
    config: &ClientConfig,
    specs: &[TopicSpec],
    timeout: Duration,
) -> Result<Vec<TopicOutcome>, TopicError> {
    let deadline = Instant::now() + timeout;
    let mut names = BTreeSet::new();
    for spec in specs {
        spec.validate()?;
        if !names.insert(spec.name.as_str()) {
            return Err(TopicError::InvalidSpec {
                topic: spec.name.clone(),
                reason: "named twice".to_owned(),
            });
        }
    }
    if specs.is_empty() {
        return Ok(Vec::new());
    }
    let admin: Admin = Arc::new(config.create().map_err(TopicError::Client)?);

    // Every fatal mismatch is found before anything is created.
    let present = topic_partitions(&admin, remaining(deadline)).await?;
    for spec in specs {
        if let Some(&actual) = present.get(&spec.name) {
            check_partitions(spec, actual)?;
        }
    }

    let created = create_missing(&admin, specs, &present, deadline).await?;

    // Created topics take a moment to appear in every broker's metadata,
    // and a topic another client created in the meantime has the count
    // that client asked for.
    let visible = wait_visible(&admin, specs, deadline, timeout).await?;
    for spec in specs {
        if let Some(&actual) = visible.get(&spec.name) {
            check_partitions(spec, actual)?;
        }
    }

    let mut configs = describe_configs(&admin, specs, deadline).await?;
    Ok(specs
        .iter()
        .map(|spec| TopicOutcome {
            name: spec.name.clone(),
            status: if created.contains(&spec.name) {
                TopicStatus::Created
            } else {
                TopicStatus::AlreadyPresent
            },
            partitions: spec.partitions,
            configs: configs.remove(&spec.name).unwrap_or(ConfigCheck::Matches),
        })
        .collect())
}

/// Time left until `deadline` (zero once it has passed).
fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn check_partitions(spec: &TopicSpec, actual: i32) -> Result<(), TopicError> {
    if actual == spec.partitions {
        Ok(())
    } else {
        Err(TopicError::PartitionMismatch {
            topic: spec.name.clone(),
            expected: spec.partitions,
            actual,
        })
    }
}

/// The partition count of every topic in the cluster's metadata. A topic
/// the metadata lists with an error (e.g. its leader not yet elected) or
/// without partitions is left out: it is not usable yet.
async fn topic_partitions(
    admin: &Admin,
    timeout: Duration,
) -> Result<BTreeMap<String, i32>, TopicError> {
    let admin = Arc::clone(admin);
    // librdkafka's metadata call blocks its thread until the answer.
    let metadata = tokio::task::spawn_blocking(move || admin.inner().fetch_metadata(None, timeout))
        .await
        .map_err(TopicError::Interrupted)?
        .map_err(TopicError::Metadata)?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|topic| topic.error().is_none() && !topic.partitions().is_empty())
        .map(|topic| {
            // A topic has at most i32::MAX partitions on the wire.
            let count = i32::try_from(topic.partitions().len()).unwrap_or(i32::MAX);
            (topic.name().to_owned(), count)
        })
        .collect())
}

/// Creates the topics of `specs` that are not in `present`; returns the
/// names of those this call created.
async fn create_missing(
    admin: &Admin,
    specs: &[TopicSpec],
    present: &BTreeMap<String, i32>,
    deadline: Instant,
) -> Result<BTreeSet<String>, TopicError> {
    let new_topics: Vec<NewTopic<'_>> = specs
        .iter()
        .filter(|spec| !present.contains_key(&spec.name))
        .map(|spec| {
            spec.configs.iter().fold(
                NewTopic::new(
                    &spec.name,
                    spec.partitions,
                    TopicReplication::Fixed(spec.replication_factor),
                ),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    let mut created = BTreeSet::new();
    if new_topics.is_empty() {
        return Ok(created);
    }
    let left = remaining(deadline);
    // The operation timeout makes the controller answer only once the
    // topics exist (on a broker that supports it), within the same bound.
    let options = AdminOptions::new()
        .request_timeout(Some(left))
        .operation_timeout(Some(left));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .map_err(|source| TopicError::Admin {
            operation: "CreateTopics",
            source,
        })?;
    for result in results {
        match result {
            Ok(name) => {
                tracing::info!(topic = %name, "kafka: topic created");
                created.insert(name);
            }
            // Another client created it meanwhile: its count is checked
            // with the others'.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(TopicError::Create { topic, code }),
        }
    }
    Ok(created)
}

/// Reads the metadata until every topic of `specs` is in it, or the
/// deadline passes.
async fn wait_visible(
    admin: &Admin,
    specs: &[TopicSpec],
    deadline: Instant,
    timeout: Duration,
) -> Result<BTreeMap<String, i32>, TopicError> {
    loop {
        let visible = topic_partitions(admin, remaining(deadline)).await?;
        let missing: Vec<String> = specs
            .iter()
            .filter(|spec| !visible.contains_key(&spec.name))
            .map(|spec| spec.name.clone())
            .collect();
        if missing.is_empty() {
            return Ok(visible);
        }
        if Instant::now() + VISIBILITY_POLL > deadline {
            return Err(TopicError::NotVisible {
                topics: missing,
                waited: timeout,
            });
        }
        tokio::time::sleep(VISIBILITY_POLL).await;
    }
}

/// Reads back the configs of the specs that ask for any and compares them.
/// Specs without configs get no entry.
async fn describe_configs(
    admin: &Admin,
    specs: &[TopicSpec],
    deadline: Instant,
) -> Result<BTreeMap<String, ConfigCheck>, TopicError> {
    let wanted: Vec<&TopicSpec> = specs.iter().filter(|s| !s.configs.is_empty()).collect();
    let mut checks = BTreeMap::new();
    if wanted.is_empty() {
        return Ok(checks);
    }
    let resources: Vec<ResourceSpecifier<'_>> = wanted
        .iter()
        .map(|spec| ResourceSpecifier::Topic(&spec.name))
        .collect();
    let options = AdminOptions::new().request_timeout(Some(remaining(deadline)));
    let results = admin
        .describe_configs(&resources, &options)
        .await
        .map_err(|source| TopicError::Admin {
            operation: "DescribeConfigs",
            source,
        })?;
    // librdkafka puts the results in the order of the request
    // (rd_kafka_DescribeConfigsResponse_parse); an answer without one for
    // every topic must not let the missing ones pass as matching.
    if results.len() != wanted.len() {
        let topic = wanted
            .get(results.len())
            .map(|spec| spec.name.clone())
            .unwrap_or_default();
        return Err(TopicError::DescribeConfigs {
            topic,
            code: RDKafkaErrorCode::BadMessage,
        });
    }
    for (spec, result) in wanted.iter().zip(results) {
        let check = match result {
            Ok(resource) => compare(&spec.configs, |key| {
                resource.get(key).and_then(|entry| entry.value.clone())
            }),
            Err(code) => {
                return Err(TopicError::DescribeConfigs {
                    topic: spec.name.clone(),
                    code,
                });
            }
        };
        checks.insert(spec.name.clone(), check);
    }
    Ok(checks)
}

/// Compares the configs asked for with what `actual` reports.
fn compare(
    wanted: &BTreeMap<String, String>,
    actual: impl Fn(&str) -> Option<String>,
) -> ConfigCheck {
    let differences: Vec<ConfigDifference> = wanted
        .iter()
        .filter_map(|(key, value)| {
            let actual = actual(key);
            (actual.as_deref() != Some(value.as_str())).then(|| ConfigDifference {
                key: key.clone(),
                wanted: value.clone(),
                actual,
            })
        })
        .collect();
    if differences.is_empty() {
        ConfigCheck::Matches
    } else {
        ConfigCheck::Differs(differences)
    }
}

/// Kafka's rules for topic names: 1-249 characters of `[A-Za-z0-9._-]`,
/// not `.` or `..`.
///
/// # Errors
///
/// What is wrong with `topic`, as a phrase ("it is empty", ...).
pub fn check_topic_name(topic: &str) -> Result<(), &'static str> {
    if topic.is_empty() {
        return Err("it is empty");
    }
    if topic.len() > 249 {
        return Err("it is longer than 249 characters");
    }
    if topic == "." || topic == ".." {
        return Err("\".\" and \"..\" are reserved");
    }
    if !topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("only [A-Za-z0-9._-] are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn specs_are_validated() {
        let ok = TopicSpec::new("fleet.state.v1", 6, 1).config("cleanup.policy", "compact");
        assert!(ok.validate().is_ok());
        for (spec, needle) in [
            (TopicSpec::new("", 1, 1), "empty"),
            (TopicSpec::new("a/b", 1, 1), "[A-Za-z0-9._-]"),
            (TopicSpec::new("..", 1, 1), "reserved"),
            (TopicSpec::new("x".repeat(250), 1, 1), "249"),
            (TopicSpec::new("t", 0, 1), "partitions = 0"),
            (TopicSpec::new("t", 1, 0), "replication_factor = 0"),
            (TopicSpec::new("t", 1, 1).config(" ", "x"), "blank"),
        ] {
            let message = spec.validate().unwrap_err().to_string();
            assert!(message.contains(needle), "{message:?} lacks {needle:?}");
        }
    }

    #[tokio::test]
    async fn invalid_specs_fail_before_any_connection() {
        // Nothing listens on port 1: a connection attempt would time out
        // rather than fail at once.
        let config = crate::client_config("127.0.0.1:1", &BTreeMap::new()).unwrap();
        let specs = [TopicSpec::new("a", 1, 1), TopicSpec::new("a", 2, 1)];
        let error = ensure_topics(&config, &specs, Duration::from_secs(30))
            .await
            .unwrap_err();
        assert!(
            matches!(&error, TopicError::InvalidSpec { topic, reason } if topic == "a" && reason == "named twice"),
            "{error}"
        );
        assert!(!error.is_retriable());
    }

    #[test]
    fn configs_are_compared_key_by_key() {
        let wanted = BTreeMap::from([
            ("cleanup.policy".to_owned(), "compact".to_owned()),
            ("retention.ms".to_owned(), "1000".to_owned()),
            ("segment.ms".to_owned(), "60000".to_owned()),
        ]);
        let reported =
            BTreeMap::from([("cleanup.policy", "compact"), ("retention.ms", "604800000")]);
        let check = compare(&wanted, |key| reported.get(key).map(|v| (*v).to_owned()));
        assert_eq!(
            check,
            ConfigCheck::Differs(vec![
                ConfigDifference {
                    key: "retention.ms".to_owned(),
                    wanted: "1000".to_owned(),
                    actual: Some("604800000".to_owned()),
                },
                ConfigDifference {
                    key: "segment.ms".to_owned(),
                    wanted: "60000".to_owned(),
                    actual: None,
                },
            ])
        );
        let check = compare(&wanted, |key| wanted.get(key).cloned());
        assert_eq!(check, ConfigCheck::Matches);
    }

    #[test]
    fn transient_failures_are_retriable_and_mismatches_are_not() {
        let mismatch = TopicError::PartitionMismatch {
            topic: "fleet.telemetry.v1".to_owned(),
            expected: 12,
            actual: 6,
        };
        assert!(!mismatch.is_retriable());
        let message = mismatch.to_string();
        assert!(
            message.contains("\"fleet.telemetry.v1\" has 6 partitions but 12 are configured"),
            "{message}"
        );
        assert!(
            TopicError::Create {
                topic: "t".to_owned(),
                code: RDKafkaErrorCode::RequestTimedOut
            }
            .is_retriable()
        );
        assert!(
            !TopicError::Create {
                topic: "t".to_owned(),
                code: RDKafkaErrorCode::TopicAuthorizationFailed
            }
            .is_retriable()
        );
        assert!(
            TopicError::Metadata(KafkaError::MetadataFetch(
                RDKafkaErrorCode::OperationTimedOut
            ))
            .is_retriable()
        );
        assert!(
            !TopicError::Admin {
                operation: "CreateTopics",
                source: KafkaError::AdminOp(RDKafkaErrorCode::InvalidConfig),
            }
            .is_retriable()
        );
    }
}
