//! `[api.feed]`: the live feed's bounds. Present means on.

use std::time::Duration;

use serde::Deserialize;

use crate::QueryError;

/// `[api.feed]`: the live feed on the query API's listener
/// (`GET /v1/feed`, `GET /v1/feed/sse`; docs/feed.md). Every bound on its
/// memory is one of these keys.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedConfig {
    /// Most feed clients (WebSocket and SSE) at once; one more is
    /// answered 503.
    #[serde(default = "FeedConfig::default_max_clients")]
    pub max_clients: usize,
    /// Most events waiting for one client; one more and the client is told
    /// what it missed and disconnected (positions are coalesced per
    /// vehicle, they never pile up).
    #[serde(default = "FeedConfig::default_client_max_events")]
    pub client_max_events: usize,
    /// Most bytes of messages waiting for one client (events and coalesced
    /// positions); beyond it, as above.
    #[serde(default = "FeedConfig::default_client_max_bytes")]
    pub client_max_bytes: usize,
    /// Most bytes waiting for all clients together; the client whose
    /// message would pass it is disconnected as above.
    #[serde(default = "FeedConfig::default_max_total_bytes")]
    pub max_total_bytes: usize,
    /// The resume window: at most this many recent messages are kept ...
    #[serde(default = "FeedConfig::default_resume_max_messages")]
    pub resume_max_messages: usize,
    /// ... and none older than this, e.g. `"2m"`. A client that reconnects
    /// within it gets what it missed; later, a gap and a fresh snapshot.
    #[serde(
        default = "FeedConfig::default_resume_max_age",
        with = "humantime_serde"
    )]
    pub resume_max_age: Duration,
    /// Most vehicles in the latest-position table the snapshots are made
    /// of; positions of further vehicles are streamed but not in snapshots.
    #[serde(default = "FeedConfig::default_max_vehicles")]
    pub max_vehicles: usize,
    /// Largest subscribe message (WebSocket), bytes; a larger one closes
    /// the connection (1009).
    #[serde(default = "FeedConfig::default_max_subscribe_bytes")]
    pub max_subscribe_bytes: usize,
    /// Most entries in each list of a subscription (vehicles, fences, H3
    /// cells, event types).
    #[serde(default = "FeedConfig::default_max_filter_items")]
    pub max_filter_items: usize,
    /// Most subscribe messages one WebSocket may send within a minute;
    /// one more closes it (1008).
    #[serde(default = "FeedConfig::default_max_subscribes_per_minute")]
    pub max_subscribes_per_minute: usize,
    /// How often a share link's stream checks that the link was not
    /// revoked (expiry needs no check: the stream ends at it).
    #[serde(
        default = "FeedConfig::default_share_check_interval",
        with = "humantime_serde"
    )]
    pub share_check_interval: Duration,
    /// WebSocket pings and SSE keep-alive comments on an idle stream.
    #[serde(default = "FeedConfig::default_keepalive", with = "humantime_serde")]
    pub keepalive: Duration,
    /// Longest one message may take to be written to a client; a client
    /// that reads nothing for this long is disconnected.
    #[serde(
        default = "FeedConfig::default_write_timeout",
        with = "humantime_serde"
    )]
    pub write_timeout: Duration,
}

impl Default for FeedConfig {
    fn default() -> Self {
        Self {
            max_clients: Self::default_max_clients(),
            client_max_events: Self::default_client_max_events(),
            client_max_bytes: Self::default_client_max_bytes(),
            max_total_bytes: Self::default_max_total_bytes(),
            resume_max_messages: Self::default_resume_max_messages(),
            resume_max_age: Self::default_resume_max_age(),
            max_vehicles: Self::default_max_vehicles(),
            max_subscribe_bytes: Self::default_max_subscribe_bytes(),
            max_filter_items: Self::default_max_filter_items(),
            max_subscribes_per_minute: Self::default_max_subscribes_per_minute(),
            share_check_interval: Self::default_share_check_interval(),
            keepalive: Self::default_keepalive(),
            write_timeout: Self::default_write_timeout(),
        }
    }
}

impl FeedConfig {
    /// Default of [`FeedConfig::max_clients`].
    pub const fn default_max_clients() -> usize {
        1000
    }
    /// Default of [`FeedConfig::client_max_events`].
    pub const fn default_client_max_events() -> usize {
        1000
    }
    /// Default of [`FeedConfig::client_max_bytes`]: 4 MiB.
    pub const fn default_client_max_bytes() -> usize {
        4 << 20
    }
    /// Default of [`FeedConfig::max_total_bytes`]: 256 MiB.
    pub const fn default_max_total_bytes() -> usize {
        256 << 20
    }
    /// Default of [`FeedConfig::resume_max_messages`].
    pub const fn default_resume_max_messages() -> usize {
        100_000
    }
    /// Default of [`FeedConfig::resume_max_age`]: 2 minutes.
    pub const fn default_resume_max_age() -> Duration {
        Duration::from_secs(120)
    }
    /// Default of [`FeedConfig::max_vehicles`].
    pub const fn default_max_vehicles() -> usize {
        100_000
    }
    /// Default of [`FeedConfig::max_subscribe_bytes`]: 64 KiB.
    pub const fn default_max_subscribe_bytes() -> usize {
        64 << 10
    }
    /// Default of [`FeedConfig::max_filter_items`].
    pub const fn default_max_filter_items() -> usize {
        1000
    }
    /// Default of [`FeedConfig::max_subscribes_per_minute`].
    pub const fn default_max_subscribes_per_minute() -> usize {
        60
    }
    /// Default of [`FeedConfig::share_check_interval`]: 5 s.
    pub const fn default_share_check_interval() -> Duration {
        Duration::from_secs(5)
    }
    /// Default of [`FeedConfig::keepalive`]: 15 s.
    pub const fn default_keepalive() -> Duration {
        Duration::from_secs(15)
    }
    /// Default of [`FeedConfig::write_timeout`]: 30 s.
    pub const fn default_write_timeout() -> Duration {
        Duration::from_secs(30)
    }

    /// Checks every key, naming the first at fault as `api.feed.<key>`.
    ///
    /// # Errors
    ///
    /// [`QueryError::Config`].
    pub fn validate(&self) -> Result<(), QueryError> {
        let invalid = |key: &str, reason: &str| {
            Err(QueryError::Config {
                key: format!("feed.{key}"),
                reason: reason.to_owned(),
            })
        };
        for (key, value) in [
            ("max_clients", self.max_clients),
            ("client_max_events", self.client_max_events),
            ("resume_max_messages", self.resume_max_messages),
            ("max_vehicles", self.max_vehicles),
            ("max_filter_items", self.max_filter_items),
            ("max_subscribes_per_minute", self.max_subscribes_per_minute),
        ] {
            if value == 0 {
                return invalid(key, "must be at least 1");
            }
        }
        if self.client_max_bytes < 1024 {
            return invalid("client_max_bytes", "must be at least 1024 (one message)");
        }
        if self.max_total_bytes < self.client_max_bytes {
            return invalid(
                "max_total_bytes",
                "must be at least api.feed.client_max_bytes",
            );
        }
        if self.max_subscribe_bytes < 256 || self.max_subscribe_bytes > 1 << 20 {
            return invalid("max_subscribe_bytes", "must be 256 to 1048576 bytes");
        }
        for (key, value) in [
            ("resume_max_age", self.resume_max_age),
            ("share_check_interval", self.share_check_interval),
            ("keepalive", self.keepalive),
            ("write_timeout", self.write_timeout),
        ] {
            if value < Duration::from_millis(100) {
                return invalid(key, "must be at least 100ms");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn every_rule_names_its_key() {
        let ok = FeedConfig::default();
        ok.validate().unwrap();
        for (text, key) in [
            ("max_clients = 0", "api.feed.max_clients "),
            ("client_max_events = 0", "api.feed.client_max_events "),
            ("client_max_bytes = 10", "api.feed.client_max_bytes "),
            ("max_total_bytes = 2000", "api.feed.max_total_bytes "),
            ("resume_max_messages = 0", "api.feed.resume_max_messages "),
            ("resume_max_age = \"0s\"", "api.feed.resume_max_age "),
            ("max_vehicles = 0", "api.feed.max_vehicles "),
            ("max_subscribe_bytes = 10", "api.feed.max_subscribe_bytes "),
            ("max_filter_items = 0", "api.feed.max_filter_items "),
            (
                "max_subscribes_per_minute = 0",
                "api.feed.max_subscribes_per_minute ",
            ),
            (
                "share_check_interval = \"1ms\"",
                "api.feed.share_check_interval ",
            ),
            ("keepalive = \"0s\"", "api.feed.keepalive "),
            ("write_timeout = \"0s\"", "api.feed.write_timeout "),
        ] {
            let c: FeedConfig = toml::from_str(text).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.starts_with(key), "{text}: {e}");
        }
    }
}
