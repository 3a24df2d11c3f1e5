//! Active health checks: `GET <upstream><path>` on every node each `interval` (by default
//! `/http-bind`, which a Jitsi web front hands to prosody: see [`crate::config::Health`]), and
//! each URL of the node's `health_checks` (jicofo's and the videobridge's own health), all of
//! which must pass. A node becomes unhealthy after `fall` consecutive failures (connection errors
//! seen by the proxy count too) and healthy again after `rise` consecutive successes. Unhealthy
//! nodes take no new rooms, and their pinned rooms are placed again on their next request. The
//! last failure (which check, and why) stays on the node for the admin API until a check passes.
//!
//! A node with a `signal_report` (jitsi/signal-sidecar, which meet.jit.si's HAProxy asks the
//! same way) is asked for it with the checks: the report's `healthy` is one more check, and its
//! `status` is the node's own drain switch, kept beside the operator's (either drains it).
//! `drain` drains the node; `maint` drains it and fails the check, so that, as with HAProxy's
//! agent, a node in maintenance is taken out (its rooms move); `ready` and `unknown` (no status
//! file) undrain it. An answer that is no report fails the check and leaves the switch as it was.

use std::sync::Arc;

use futures_util::future::join_all;

use super::{Fleet, Node};
use crate::config::Health;
use crate::error_chain::error_chain;
use crate::local_fault::LocalFault;
use crate::metrics::Metrics;
use crate::rounds::Rounds;
use crate::tls::TlsError;

/// Why the checker's client could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The upstream trust store could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// reqwest refused the settings.
    #[error("cannot build the health-check client: {0}")]
    Build(#[from] reqwest::Error),
}

/// The HTTP client of the health checks and the census polls: same trust as the proxy's
/// upstream client. Each request carries its own time limit, so that a reload can change it.
pub fn client(upstream_ca: Option<&std::path::Path>) -> Result<reqwest::Client, ClientError> {
    let tls = crate::tls::upstream_client_config(upstream_ca)?;
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()?)
}

/// How one check of a node went.
enum Checked {
    Passed,
    /// The node's fault, and why.
    Failed(String),
    /// The router could not check for a shortage of its own: no verdict on the node.
    Local(LocalFault),
}

/// A check whose request got no answer: the node's fault, or the router's own shortage.
fn unanswered(url: &str, e: reqwest::Error) -> Checked {
    if e.is_timeout() {
        return Checked::Failed(format!("GET {url}: timed out"));
    }
    match LocalFault::find(&e) {
        Some(fault) => Checked::Local(fault),
        // The cause an operator can act on (refused, an untrusted certificate) is in the
        // error's sources; the URL is already in the line.
        None => Checked::Failed(format!(
            "GET {url}: unreachable ({})",
            error_chain(&e.without_url())
        )),
    }
}

/// What the router reads of a signal-sidecar report.
#[derive(serde::Deserialize)]
struct SignalReport {
    healthy: bool,
    /// `ready`, `drain`, `maint` or `unknown`.
    #[serde(default)]
    status: String,
}

/// The largest signal-sidecar report read (one is under a kilobyte).
const MAX_REPORT: usize = 64 << 10;

/// Asks the node's signal-sidecar (see the module's docs).
async fn signal_report(client: &reqwest::Client, cfg: &Health, node: &Node, url: &str) -> Checked {
    let mut response = match client.get(url).timeout(cfg.timeout()).send().await {
        Ok(response) => response,
        Err(e) => return unanswered(url, e),
    };
    let code = response.status().as_u16();
    let body = match super::body_within(&mut response, MAX_REPORT).await {
        Ok(body) => body,
        Err(e) => return unanswered(url, e),
    };
    let report = body.and_then(|body| serde_json::from_slice::<SignalReport>(&body).ok());
    let Some(report) = report else {
        let problem = match code {
            200..=299 => "not a signal-sidecar report (healthy, status)",
            _ => "signal-sidecar reports the node unhealthy",
        };
        return Checked::Failed(format!("GET {url}: status {code}, {problem}"));
    };
    let status = report.status.to_ascii_lowercase();
    let drain = matches!(status.as_str(), "drain" | "maint");
    if node.live.set_drain_reported(drain) != drain {
        match drain {
            true => {
                tracing::warn!(node = %node.id, status, "node drained by its signal-sidecar: no new rooms, its rooms stay")
            }
            false => {
                tracing::info!(node = %node.id, status, "node undrained by its signal-sidecar")
            }
        }
    }
    if status == "maint" {
        Checked::Failed(format!("GET {url}: signal-sidecar reports maint"))
    } else if !report.healthy || !(200..=299).contains(&code) {
        Checked::Failed(format!(
            "GET {url}: status {code}, signal-sidecar reports the node unhealthy"
        ))
    } else {
        Checked::Passed
    }
}

/// `GET url`, expecting `status` (any 2xx when `None`).
async fn probe(client: &reqwest::Client, cfg: &Health, url: &str, status: Option<u16>) -> Checked {
    match client.get(url).timeout(cfg.timeout()).send().await {
        Ok(response) => {
            let got = response.status();
            let passed = status.map_or(got.is_success(), |wanted| got.as_u16() == wanted);
            // A node that sends plain HTTP to HTTPS (docker-jitsi-meet's ENABLE_HTTP_REDIRECT)
            // answers every request so: say where to, which names the fix.
            let to = (got.is_redirection())
                .then(|| response.headers().get(http::header::LOCATION))
                .flatten()
                .and_then(|to| to.to_str().ok())
                .map_or(String::new(), |to| format!(" to {to}"));
            match status {
                _ if passed => Checked::Passed,
                Some(wanted) => Checked::Failed(format!(
                    "GET {url}: status {}{to} (expected {wanted})",
                    got.as_u16()
                )),
                None => Checked::Failed(format!("GET {url}: status {}{to}", got.as_u16())),
            }
        }
        Err(e) => unanswered(url, e),
    }
}

/// Checks one node once: `[health] path` on its upstream, each of its `health_checks` and its
/// `signal_report`, all at once. The first failure (in that order) is the node's; a check the
/// router could not make leaves no verdict.
async fn check(client: &reqwest::Client, node: &Node, cfg: &Health) -> Checked {
    let base = node.spec.upstream.to_string();
    let main = format!("{}{}", base.trim_end_matches('/'), cfg.path);
    let extras = node.spec.health_checks.iter();
    let probes = std::iter::once(probe(client, cfg, &main, None))
        .chain(extras.map(|extra| probe(client, cfg, &extra.url, Some(extra.status))));
    let sidecar = async {
        match &node.spec.signal_report {
            Some(url) => signal_report(client, cfg, node, url).await,
            // A report no longer asked for (taken out of the config) drains nothing.
            None => {
                if node.live.set_drain_reported(false) {
                    tracing::info!(node = %node.id, "node undrained: it names no signal-sidecar now");
                }
                Checked::Passed
            }
        }
    };
    let (results, sidecar) = futures_util::join!(join_all(probes), sidecar);
    let mut local = None;
    for result in results.into_iter().chain([sidecar]) {
        match result {
            Checked::Passed => {}
            Checked::Failed(reason) => return Checked::Failed(reason),
            Checked::Local(fault) => local = Some(fault),
        }
    }
    local.map_or(Checked::Passed, Checked::Local)
}

/// Checks one node once, as each round does, without recording the result: `Err` says why it
/// failed, or why it could not be checked (`jitsi-router check --probe`).
pub async fn check_once(client: &reqwest::Client, node: &Node, cfg: &Health) -> Result<(), String> {
    match check(client, node, cfg).await {
        Checked::Passed => Ok(()),
        Checked::Failed(reason) => Err(reason),
        Checked::Local(fault) => Err(format!("not checked: {fault}")),
    }
}

/// Records a result (`failure`: why it failed, `None` for a pass) and logs a change of health.
pub fn record(node: &Node, failure: Option<&str>, cfg: &Health) {
    match node.live.record(failure, cfg.thresholds()) {
        Some(false) => {
            tracing::warn!(node = %node.id, reason = failure.unwrap_or_default(), "node unhealthy: no new rooms, its rooms move on their next request")
        }
        Some(true) => tracing::info!(node = %node.id, "node healthy again"),
        None => {}
    }
}

/// Checks every node forever, by the fleet's [`health`](Fleet::health) settings; when a reload
/// changes them, a round by the new ones starts at once. A check the router could not make for
/// a shortage of its own (out of file descriptors) counts for nothing: the node keeps its health
/// and its rooms.
pub async fn run(fleet: Arc<Fleet>, client: reqwest::Client, metrics: Arc<Metrics>) {
    let mut rounds = Rounds::new(fleet.health_changes(), |cfg| cfg.interval);
    loop {
        let cfg = rounds.next().await;
        let state = fleet.snapshot();
        let checks = state.nodes().iter().map(|node| async {
            match check(&client, node, &cfg).await {
                Checked::Passed => record(node, None, &cfg),
                Checked::Failed(reason) => record(node, Some(&reason), &cfg),
                Checked::Local(fault) => {
                    metrics.local_fault(fault);
                    tracing::warn!(node = %node.id, reason = %fault, "health check not made; the node keeps its health");
                }
            }
        });
        join_all(checks).await;
    }
}
