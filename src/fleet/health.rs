//! Active health checks: `GET <upstream><path>` on every node each `interval` (by default
//! `/http-bind`, which a Jitsi web front hands to prosody: see [`crate::config::Health`]), and
//! each URL of the node's `health_checks` (jicofo's and the videobridge's own health), all of
//! which must pass. A node becomes unhealthy after `fall` consecutive failures (connection errors
//! seen by the proxy count too) and healthy again after `rise` consecutive successes. Unhealthy
//! nodes take no new rooms, and their pinned rooms are placed again on their next request. The
//! last failure (which check, and why) stays on the node for the admin API until a check passes.

use std::sync::Arc;

use futures_util::future::join_all;

use super::{Fleet, Node};
use crate::config::Health;
use crate::error_chain::error_chain;
use crate::local_fault::LocalFault;
use crate::metrics::Metrics;
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

/// The HTTP client of the health checks (and of the census polls, with their own `timeout`):
/// same trust as the proxy's upstream client.
pub fn client(
    timeout: std::time::Duration,
    upstream_ca: Option<&std::path::Path>,
) -> Result<reqwest::Client, ClientError> {
    let tls = crate::tls::upstream_client_config(upstream_ca)?;
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(timeout)
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

/// `GET url`, expecting `status` (any 2xx when `None`).
async fn probe(client: &reqwest::Client, url: &str, status: Option<u16>) -> Checked {
    match client.get(url).send().await {
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
        Err(e) if e.is_timeout() => Checked::Failed(format!("GET {url}: timed out")),
        Err(e) => match LocalFault::find(&e) {
            Some(fault) => Checked::Local(fault),
            // The cause an operator can act on (refused, an untrusted certificate) is in the
            // error's sources; the URL is already in the line.
            None => Checked::Failed(format!(
                "GET {url}: unreachable ({})",
                error_chain(&e.without_url())
            )),
        },
    }
}

/// Checks one node once: `[health] path` on its upstream and each of its `health_checks`, all
/// at once. The first failure (in that order) is the node's; a check the router could not make
/// leaves no verdict.
async fn check(client: &reqwest::Client, node: &Node, path: &str) -> Checked {
    let base = node.spec.upstream.to_string();
    let main = format!("{}{path}", base.trim_end_matches('/'));
    let extras = node.spec.health_checks.iter();
    let probes = std::iter::once(probe(client, &main, None))
        .chain(extras.map(|extra| probe(client, &extra.url, Some(extra.status))));
    let results = join_all(probes).await;
    let mut local = None;
    for result in results {
        match result {
            Checked::Passed => {}
            Checked::Failed(reason) => return Checked::Failed(reason),
            Checked::Local(fault) => local = Some(fault),
        }
    }
    local.map_or(Checked::Passed, Checked::Local)
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

/// Checks every node forever. A check the router could not make for a shortage of its own
/// (out of file descriptors) counts for nothing: the node keeps its health and its rooms.
pub async fn run(fleet: Arc<Fleet>, client: reqwest::Client, cfg: Health, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let state = fleet.snapshot();
        let checks = state.nodes().iter().map(|node| async {
            match check(&client, node, &cfg.path).await {
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
