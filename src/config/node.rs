//! `[[nodes]]`: one Jitsi node of the fleet, from the config file or the admin API.

use std::path::Path;

use http::Uri;
use serde::Deserialize;

use super::check::{http_url, Check};
use super::{one, ConfigError, Mode};

/// One `[[nodes]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Unique name, sent as `X-Jitsi-Shard`.
    pub name: String,
    /// Proxy target (`http://` or `https://`, no path).
    #[serde(deserialize_with = "uri")]
    pub upstream: Uri,
    /// Redirect-mode target (no trailing `/`).
    #[serde(default)]
    pub public_url: Option<String>,
    /// This node's value of the Prometheus label; empty or unset: the upstream's `host:port`.
    #[serde(default)]
    pub instance: String,
    /// colibri-ws server ids served by this node; empty or unset: its name.
    #[serde(default)]
    pub jvb_server_ids: Vec<String>,
    /// Keep this node's rooms but give it no new ones.
    #[serde(default)]
    pub drain: bool,
    /// Capacity relative to the other nodes (> 0, default 1.0): a node of weight 2 is meant to
    /// carry twice the rooms of one of weight 1 at the same CPU.
    #[serde(default = "one")]
    pub weight: f64,
    /// Checks that must pass too for the node to be healthy, besides `[health] path` on its
    /// upstream: jicofo's and the videobridge's own `/about/health` on their private ports.
    #[serde(default)]
    pub health_checks: Vec<HealthCheck>,
    /// Where the node's room census is served (Jitsi's `mod_muc_census`, `/room-census` on
    /// prosody's HTTP port): the rooms live on the node, polled every `[census] interval`.
    #[serde(default)]
    pub census_url: Option<String>,
    /// The node's signal-sidecar report (jitsi/signal-sidecar's `/signal/report`, port 6000 by
    /// default), asked with the health checks: its `healthy` is one more check, and its
    /// `status` is the node's own drain switch (`drain`; `maint` also takes it out, as HAProxy's
    /// agent check does).
    #[serde(default)]
    pub signal_report: Option<String>,
    /// The most rooms the node takes: at it, it takes no new rooms (its rooms keep coming).
    #[serde(default)]
    pub max_rooms: Option<u32>,
    /// The most participants (by its census) the node takes new rooms with.
    #[serde(default)]
    pub max_participants: Option<u32>,
}

/// One extra health check of a node (`[[nodes]] health_checks`): `GET url` must answer `status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// An `http://` or `https://` URL, path included.
    pub url: String,
    /// The status it must answer (default 200).
    #[serde(default = "ok_status")]
    pub status: u16,
}

fn ok_status() -> u16 {
    200
}

/// An upstream URL: `http://` or `https://`, a host, no path or query.
fn uri<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Uri, D::Error> {
    http_url(&String::deserialize(d)?, false).map_err(serde::de::Error::custom)
}

impl NodeSpec {
    /// A node spec for code that builds fleets (demo, tests): instance defaults to the
    /// upstream's authority.
    pub fn new(name: &str, upstream: &str) -> Result<NodeSpec, ConfigError> {
        let check = Check {
            file: Path::new("(built-in)"),
        };
        let mut spec = NodeSpec {
            name: name.to_owned(),
            upstream: check.http_url("nodes.upstream", upstream, false)?,
            public_url: None,
            instance: String::new(),
            jvb_server_ids: Vec::new(),
            drain: false,
            weight: 1.0,
            health_checks: Vec::new(),
            census_url: None,
            signal_report: None,
            max_rooms: None,
            max_participants: None,
        };
        spec.validate(&check, "nodes", Mode::Proxy)?;
        Ok(spec)
    }

    /// Reads a node from the admin API (`PUT /api/nodes/{name}`: a `[[nodes]]` entry as JSON,
    /// its name from the path when the body has none) and validates it exactly as a
    /// `[[nodes]]` entry; errors name the field.
    pub fn from_json(name: &str, mut body: serde_json::Value, mode: Mode) -> Result<Self, String> {
        if let Some(node) = body.as_object_mut() {
            (node.entry("name")).or_insert_with(|| serde_json::Value::from(name));
        }
        let mut spec: NodeSpec = serde_path_to_error::deserialize(&body).map_err(|e| {
            let (path, inner) = (e.path().to_string(), e.inner());
            match body.get(&path) {
                Some(value) => format!("{path} = {value}: {inner}"),
                None if path == "." => inner.to_string(),
                None => format!("{path}: {inner}"),
            }
        })?;
        let check = Check {
            file: Path::new("(admin API)"),
        };
        match spec.validate(&check, "node", mode) {
            Ok(()) => Ok(spec),
            Err(ConfigError::Invalid {
                key,
                value,
                problem,
                ..
            }) => Err(format!(
                "{} = {value}: {problem}",
                key.trim_start_matches("node.")
            )),
            Err(other) => Err(other.to_string()),
        }
    }

    pub(super) fn validate(
        &mut self,
        check: &Check,
        at: &str,
        mode: Mode,
    ) -> Result<(), ConfigError> {
        let key = |field: &str| format!("{at}.{field}");
        let name_char = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
        // A node name travels in a header and a cookie, so it keeps to a safe alphabet.
        if self.name.is_empty() || self.name.len() > 64 || !self.name.bytes().all(name_char) {
            let problem = "use 1-64 letters, digits, '-', '_' or '.'";
            return Err(check.invalid(&key("name"), &self.name, problem));
        }
        if let Some(url) = &mut self.public_url {
            check.http_url(&key("public_url"), url, true)?;
            *url = url.trim_end_matches('/').to_owned();
        } else if mode == Mode::Redirect {
            let problem = "required when routing.mode = \"redirect\"";
            return Err(check.invalid(&key("public_url"), "", problem));
        }
        if self.jvb_server_ids.is_empty() {
            self.jvb_server_ids = vec![self.name.clone()];
        }
        if let Some(id) = (self.jvb_server_ids.iter()).find(|id| id.is_empty() || id.contains('/'))
        {
            let problem = "must be non-empty and without '/'";
            return Err(check.invalid(&key("jvb_server_ids"), id, problem));
        }
        if !(self.weight.is_finite() && self.weight > 0.0 && self.weight <= 1000.0) {
            let problem = "must be above 0 and at most 1000";
            return Err(check.invalid(&key("weight"), self.weight, problem));
        }
        for (i, extra) in self.health_checks.iter().enumerate() {
            check.http_url(&key(&format!("health_checks[{i}].url")), &extra.url, true)?;
            if !(100..=599).contains(&extra.status) {
                let at = key(&format!("health_checks[{i}].status"));
                return Err(check.invalid(&at, extra.status, "must be an HTTP status, 100 to 599"));
            }
        }
        for (field, cap) in [
            ("max_rooms", self.max_rooms),
            ("max_participants", self.max_participants),
        ] {
            if cap == Some(0) {
                return Err(check.invalid(
                    &key(field),
                    0,
                    "must be at least 1 (leave it out for no cap)",
                ));
            }
        }
        if let Some(url) = &self.census_url {
            check.http_url(&key("census_url"), url, true)?;
        }
        if let Some(url) = &self.signal_report {
            check.http_url(&key("signal_report"), url, true)?;
        }
        if self.instance.is_empty() {
            self.instance = (self.upstream.authority()).map_or(String::new(), |a| a.to_string());
        }
        Ok(())
    }
}
