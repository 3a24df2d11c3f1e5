//! Active health checks: `GET <upstream><path>` on every node each `interval`. A node becomes
//! unhealthy after `fall` consecutive failures (connection errors seen by the proxy count too) and
//! healthy again after `rise` consecutive successes. Unhealthy nodes take no new rooms, and their
//! pinned rooms are placed again on their next request.

use std::sync::Arc;

use futures_util::future::join_all;

use super::{Fleet, Node};
use crate::config::Health;
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

/// The checker's HTTP client: same trust as the proxy's upstream client.
pub fn client(
    cfg: &Health,
    upstream_ca: Option<&std::path::Path>,
) -> Result<reqwest::Client, ClientError> {
    let tls = crate::tls::upstream_client_config(upstream_ca)?;
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(cfg.timeout())
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

/// Checks one node once.
async fn check(client: &reqwest::Client, node: &Node, path: &str) -> Checked {
    let base = node.spec.upstream.to_string();
    let url = format!("{}{path}", base.trim_end_matches('/'));
    match client.get(url).send().await {
        Ok(response) if response.status().is_success() => Checked::Passed,
        Ok(response) => Checked::Failed(format!("status {}", response.status().as_u16())),
        Err(e) if e.is_timeout() => Checked::Failed("timed out".into()),
        Err(e) => match LocalFault::find(&e) {
            Some(fault) => Checked::Local(fault),
            None => Checked::Failed(format!("unreachable ({e})")),
        },
    }
}

/// Records a result and logs a change of health.
pub fn record(node: &Node, ok: bool, reason: &str, cfg: &Health) {
    match node.live.record_check(ok, cfg.thresholds()) {
        Some(false) => {
            tracing::warn!(node = %node.id, reason, "node unhealthy: no new rooms, its rooms move on their next request")
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
                Checked::Passed => record(node, true, "", &cfg),
                Checked::Failed(reason) => record(node, false, &reason, &cfg),
                Checked::Local(fault) => {
                    metrics.local_fault(fault);
                    tracing::warn!(node = %node.id, reason = %fault, "health check not made; the node keeps its health");
                }
            }
        });
        join_all(checks).await;
    }
}
