//! `[health]` and `[prometheus]`: how the fleet learns whether each node is up and how busy it is.

use std::time::Duration;

use serde::Deserialize;

use super::secs;

/// `[health]`
///
/// DESIGN note. The default path is `/http-bind`, the BOSH endpoint, because on a Jitsi web
/// front it is the one path that reaches the XMPP signalling: docker-jitsi-meet's nginx
/// (`web/rootfs/defaults/meet.conf`) and Debian jitsi-meet's both proxy `location = /http-bind`
/// to prosody, whose BOSH module answers `GET` with 200, and answer 502 when prosody is down.
/// `/about/health` is no such check: docker-jitsi-meet's web front has no location for it, and
/// with `ENABLE_SUBDOMAINS` (the default) it falls through to the room page and answers 200
/// whatever the signalling does.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Health {
    /// Path requested on each node's upstream.
    pub path: String,
    /// Time between checks of one node.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Time allowed for one check; unset: 2 s, or the interval if shorter.
    #[serde(with = "humantime_serde::option")]
    pub timeout: Option<Duration>,
    /// Consecutive failures that make a healthy node unhealthy.
    pub fall: u32,
    /// Consecutive successes that make an unhealthy node healthy.
    pub rise: u32,
}

impl Default for Health {
    fn default() -> Health {
        let Thresholds { fall, rise } = Thresholds::default();
        Health {
            path: "/http-bind".into(),
            interval: Duration::from_secs(5),
            timeout: None,
            fall,
            rise,
        }
    }
}

impl Health {
    /// Time allowed for one check.
    pub fn timeout(&self) -> Duration {
        (self.timeout).unwrap_or_else(|| Duration::from_secs(2).min(self.interval))
    }

    /// What is wrong with checking `path` on a Jitsi web front, when it is a path the usual
    /// fronts answer whatever the node's signalling does.
    pub fn caveat(&self) -> Option<&'static str> {
        let path = self.path.split('?').next().unwrap_or_default();
        (path.trim_end_matches('/') == "/about/health").then_some(
            "docker-jitsi-meet's and Debian jitsi-meet's web fronts have no /about/health location and answer it with the room page (200) even with prosody and jicofo down; the default /http-bind reaches prosody",
        )
    }

    /// Failures to go unhealthy and successes to come back.
    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            fall: self.fall,
            rise: self.rise,
        }
    }
}

/// Health-check thresholds (`fall` failures to go unhealthy, `rise` successes to come back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Consecutive failures that make a healthy node unhealthy.
    pub fall: u32,
    /// Consecutive successes that make an unhealthy node healthy.
    pub rise: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { fall: 3, rise: 2 }
    }
}

/// How Prometheus expresses the busy value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scale {
    /// 0..1
    #[default]
    Fraction,
    /// 0..100
    Percent,
}

/// `[prometheus]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prometheus {
    /// Base URL of the Prometheus server (no trailing `/`).
    pub url: String,
    /// PromQL returning each node's busy CPU fraction (0..1).
    #[serde(default = "default_query")]
    pub query: String,
    /// The result label matched against each node's `instance`.
    #[serde(default = "default_label")]
    pub label: String,
    /// How often to query.
    #[serde(default = "secs::<30>", with = "humantime_serde")]
    pub interval: Duration,
    /// Time allowed for one query; unset: 5 s, or the interval if shorter.
    #[serde(default, with = "humantime_serde::option")]
    pub timeout: Option<Duration>,
    /// Past this age the CPU data are ignored and hashing decides; unset: three intervals.
    #[serde(default, with = "humantime_serde::option")]
    pub max_staleness: Option<Duration>,
    /// Whether the query answers fractions or percentages.
    #[serde(default)]
    pub scale: Scale,
}

impl Prometheus {
    /// A section for this server, query and interval, with the other settings at their
    /// defaults, as the demo builds it in code.
    pub fn built_in(url: &str, query: &str, interval: Duration) -> Prometheus {
        Prometheus {
            url: url.trim_end_matches('/').to_owned(),
            query: query.to_owned(),
            label: default_label(),
            interval,
            timeout: None,
            max_staleness: None,
            scale: Scale::Fraction,
        }
    }

    /// Time allowed for one query.
    pub fn timeout(&self) -> Duration {
        (self.timeout).unwrap_or_else(|| Duration::from_secs(5).min(self.interval))
    }

    /// Past this age the CPU data are ignored.
    pub fn max_staleness(&self) -> Duration {
        (self.max_staleness).unwrap_or(self.interval.saturating_mul(3))
    }
}

/// The default PromQL: busy CPU fraction per instance, from node_exporter.
pub const DEFAULT_QUERY: &str =
    r#"1 - avg by (instance) (rate(node_cpu_seconds_total{mode="idle"}[1m]))"#;

fn default_query() -> String {
    DEFAULT_QUERY.into()
}

fn default_label() -> String {
    "instance".into()
}
