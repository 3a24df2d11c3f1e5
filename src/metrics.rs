//! The router's own metrics, served as Prometheus text on the admin listener's `/metrics`.
//!
//! Counting happens on the request path, so everything counted there is a relaxed atomic add —
//! no lock, no allocation, no label lookup: per-node counters and the upstream latency histogram
//! live in the node's `NodeLive` record (`fleet::live`), the rest in [`Metrics`].
//! Gauges (rooms, CPU, health, tunnels, snapshot age) are not kept at all: the exporter on the
//! admin listener (`admin::exporter`) reads them from the fleet state at scrape time. `prometheus-client` does the text encoding; its own
//! `Histogram` takes a mutex per observation, hence the small lock-free [`Histogram`] here.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `jitsi_router_requests_total` | counter | `node` (`none` when no node answered), `class` (`2xx`…) |
//! | `jitsi_router_routing_decisions_total` | counter | `kind`: `pinned`, `placed`, `replaced`, `shared`, `unpinned`, `fallback`, `bridge`, `unrouted`, `refused` |
//! | `jitsi_router_routing_decision_seconds` | histogram | |
//! | `jitsi_router_upstream_response_seconds` | histogram | `node` |
//! | `jitsi_router_websocket_tunnels` | gauge | |
//! | `jitsi_router_pinned_rooms` | gauge | |
//! | `jitsi_router_node_rooms` | gauge | `node` |
//! | `jitsi_router_node_cpu_ratio`, `jitsi_router_node_cpu_estimate_ratio` | gauge | `node` |
//! | `jitsi_router_node_healthy`, `jitsi_router_node_draining` | gauge (0/1) | `node` |
//! | `jitsi_router_prometheus_refresh_failures_total` | counter | |
//! | `jitsi_router_prometheus_snapshot_age_seconds` | gauge | |
//! | `jitsi_router_tls_handshakes_total` | counter | `kind`: `full`, `resumed` |
//! | `jitsi_router_tls_handshake_failures_total` | counter | |
//! | `jitsi_router_proxy_header_refusals_total` | counter | `reason` |
//! | `jitsi_router_acme_failures_total` | counter | |
//! | `jitsi_router_config_reloads_total` | counter | `result`: `ok`, `failed` |
//! | `jitsi_router_client_connections` | gauge | |
//! | `jitsi_router_timeouts_total` | counter | `state`: `request_head`, `keepalive`, `request_body`, `response_body`, `send` |
//! | `jitsi_router_limited_total` | counter | `limit`: `max_connections`, `max_connections_per_client`, `new_rooms_per_second`, `h2_max_cancelled_streams` |
//! | `jitsi_router_local_faults_total` | counter | `kind`: `process_files`, `system_files`, `memory`, `ports` |
//! | `jitsi_router_shared_pin_store_failures_total` | counter (with `[pins.redis]`) | |
//! | `jitsi_router_shared_pin_store_connected` | gauge (0/1, with `[pins.redis]`) | |

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::{MetricEncoder, NoLabelSet};
use prometheus_client::registry::Registry;

use crate::local_fault::LocalFault;

/// `Content-Type` of the `/metrics` answer.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the routing-decision histogram: microseconds matter here.
const DECISION_BOUNDS: &[f64] = &[
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2,
];
/// Upper bounds (seconds) of the upstream-response histogram (time to the node's response head).
const UPSTREAM_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A fixed-bucket histogram updated with relaxed atomic adds.
#[derive(Debug)]
#[repr(align(128))] // alone on its cache lines (x86 fetches them in pairs): written per answer
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last one is above every bound.
    buckets: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// For node upstream latencies.
    pub fn upstream() -> Histogram {
        Histogram::new(UPSTREAM_BOUNDS)
    }

    /// Records one observation.
    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = self
            .bounds
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(self.bounds.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(nanos, Ordering::Relaxed);
    }

    pub(crate) fn encode(&self, encoder: &mut MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        // The encoder makes the bucket counts cumulative itself.
        let bounds = self.bounds.iter().copied().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds
            .zip(self.buckets.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|&(_, n)| n).sum();
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

/// Requests answered, by status class (`1xx` … `5xx`).
#[derive(Debug, Default)]
#[repr(align(128))] // alone on its cache lines (x86 fetches them in pairs): written per answer
pub struct StatusCounts([AtomicU64; 5]);

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl StatusCounts {
    /// Counts one answer with this status.
    pub fn count(&self, status: http::StatusCode) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.0[class].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn encode(
        &self,
        node: &str,
        encoder: &mut MetricEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        for (class, count) in CLASSES.iter().zip(&self.0) {
            let value = count.load(Ordering::Relaxed);
            if value > 0 {
                let labels = [("node", node), ("class", class)];
                encoder
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
            }
        }
        Ok(())
    }
}

/// How a request's node was found: what `placement::Router` answers, and the `kind` label of
/// `jitsi_router_routing_decisions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A pinned room on its node.
    Pinned,
    /// A new room placed (or placed by a concurrent request a moment earlier).
    Placed,
    /// A room moved off a node that left or failed.
    Replaced,
    /// A room another router replica placed, taken from the shared pin store.
    Shared,
    /// A new room routed without a pin because the pin table is full (`limits.max_pins`).
    Unpinned,
    /// A videobridge WebSocket routed by server id.
    Bridge,
    /// A request without a room (assets, cookie or client hash).
    Unrouted,
    /// No node could take the request (503).
    Refused,
}

pub(crate) const DECISIONS: [(Decision, &str); 8] = [
    (Decision::Pinned, "pinned"),
    (Decision::Placed, "placed"),
    (Decision::Replaced, "replaced"),
    (Decision::Shared, "shared"),
    (Decision::Unpinned, "unpinned"),
    (Decision::Bridge, "bridge"),
    (Decision::Unrouted, "unrouted"),
    (Decision::Refused, "refused"),
];

/// A time limit of `[limits]` that ran out, for `jitsi_router_timeouts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// No request head in time (the first after TLS, or one in progress).
    RequestHead,
    /// A connection idle past `keepalive_timeout`.
    Keepalive,
    /// A request body paused past `request_body_timeout`.
    RequestBody,
    /// A node's response body paused past `response_body_timeout`.
    ResponseBody,
    /// A client took no bytes for `send_timeout`.
    Send,
}

pub(crate) const TIMEOUTS: [(Timeout, &str); 5] = [
    (Timeout::RequestHead, "request_head"),
    (Timeout::Keepalive, "keepalive"),
    (Timeout::RequestBody, "request_body"),
    (Timeout::ResponseBody, "response_body"),
    (Timeout::Send, "send"),
];

/// A cap of `[limits]` a client reached, for `jitsi_router_limited_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// A connection closed at accept: `max_connections`.
    Connections,
    /// A connection closed at accept: `max_connections_per_client`.
    ClientConnections,
    /// A new room refused (`429`): `new_rooms_per_second`.
    NewRooms,
    /// An HTTP/2 connection sent `GOAWAY`: `h2_max_cancelled_streams`.
    CancelledStreams,
}

pub(crate) const LIMITS: [(Limit, &str); 4] = [
    (Limit::Connections, "max_connections"),
    (Limit::ClientConnections, "max_connections_per_client"),
    (Limit::NewRooms, "new_rooms_per_second"),
    (Limit::CancelledStreams, "h2_max_cancelled_streams"),
];

/// Why a connection was closed at its PROXY protocol header, for
/// `jitsi_router_proxy_header_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyRefusal {
    /// A PROXY header from a peer outside `server.trusted_proxies`.
    Untrusted,
    /// A trusted peer sent no PROXY header.
    Missing,
    /// The header could not be parsed, or is too long.
    Malformed,
    /// The connection closed or failed before the header was complete.
    Closed,
    /// The header did not arrive within `limits.tls_handshake_timeout`.
    Timeout,
}

impl ProxyRefusal {
    /// Why, for the log.
    pub fn reason(self) -> &'static str {
        match self {
            ProxyRefusal::Untrusted => "a PROXY header from a peer not in server.trusted_proxies",
            ProxyRefusal::Missing => "no PROXY header from a trusted proxy",
            ProxyRefusal::Malformed => "a malformed PROXY header",
            ProxyRefusal::Closed => "the connection closed during the PROXY header",
            ProxyRefusal::Timeout => "no whole PROXY header within limits.tls_handshake_timeout",
        }
    }
}

pub(crate) const PROXY_REFUSALS: [(ProxyRefusal, &str); 5] = [
    (ProxyRefusal::Untrusted, "untrusted"),
    (ProxyRefusal::Missing, "missing"),
    (ProxyRefusal::Malformed, "malformed"),
    (ProxyRefusal::Closed, "closed"),
    (ProxyRefusal::Timeout, "timeout"),
];

/// Counters that belong to no node.
#[derive(Debug)]
pub struct Metrics {
    /// Answers of the router's own that no node was chosen for (bad room, no node, …).
    pub no_node_requests: StatusCounts,
    pub(crate) decisions: [AtomicU64; DECISIONS.len()],
    pub(crate) decision_seconds: Histogram,
    /// Client TLS handshakes that completed: full, then resumed.
    pub(crate) tls_handshakes: [AtomicU64; 2],
    pub(crate) tls_handshake_failures: AtomicU64,
    pub(crate) acme_failures: AtomicU64,
    pub(crate) prometheus_failures: AtomicU64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    pub(crate) client_connections: AtomicU64,
    pub(crate) timeouts: [AtomicU64; TIMEOUTS.len()],
    pub(crate) limited: [AtomicU64; LIMITS.len()],
    pub(crate) proxy_refusals: [AtomicU64; PROXY_REFUSALS.len()],
    pub(crate) local_faults: [AtomicU64; LocalFault::ALL.len()],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            no_node_requests: StatusCounts::default(),
            decisions: Default::default(),
            decision_seconds: Histogram::new(DECISION_BOUNDS),
            tls_handshakes: Default::default(),
            tls_handshake_failures: AtomicU64::new(0),
            acme_failures: AtomicU64::new(0),
            prometheus_failures: AtomicU64::new(0),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            client_connections: AtomicU64::new(0),
            timeouts: Default::default(),
            limited: Default::default(),
            proxy_refusals: Default::default(),
            local_faults: Default::default(),
        }
    }
}

impl Metrics {
    /// Counts a routing decision and the time it took.
    pub fn decided(&self, kind: Decision, started: Instant) {
        self.decision_seconds.observe(started.elapsed());
        self.decisions[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a client TLS handshake that completed, and whether it resumed a session.
    pub fn tls_handshake(&self, resumed: bool) {
        self.tls_handshakes[usize::from(resumed)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a TLS handshake that failed or timed out.
    pub fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an ACME issuance or renewal that failed.
    pub fn acme_failed(&self) {
        self.acme_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a Prometheus refresh whose answer was rejected or did not come.
    pub fn prometheus_failed(&self) {
        self.prometheus_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a reload attempt by its outcome.
    pub fn reloaded(&self, ok: bool) {
        let counter = if ok {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a client connection in (HTTPS and plain-HTTP listeners).
    pub fn client_connection_opened(&self) {
        self.client_connections.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a client connection out.
    pub fn client_connection_closed(&self) {
        self.client_connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts a time limit that ran out.
    pub fn timed_out(&self, timeout: Timeout) {
        self.timeouts[timeout as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a client stopped by a cap.
    pub fn limit_hit(&self, limit: Limit) {
        self.limited[limit as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection closed at its PROXY header.
    pub fn proxy_refused(&self, refusal: ProxyRefusal) {
        self.proxy_refusals[refusal as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an operation that failed for a shortage of the router's own.
    pub fn local_fault(&self, fault: LocalFault) {
        let at = LocalFault::ALL
            .iter()
            .position(|&f| f == fault)
            .unwrap_or(0);
        self.local_faults[at].fetch_add(1, Ordering::Relaxed);
    }

    /// Operations that failed for a shortage of the router's own, so far.
    pub fn local_faults(&self, fault: LocalFault) -> u64 {
        let at = LocalFault::ALL
            .iter()
            .position(|&f| f == fault)
            .unwrap_or(0);
        self.local_faults[at].load(Ordering::Relaxed)
    }

    /// Reload attempts so far: (applied, rejected).
    pub fn reloads(&self) -> (u64, u64) {
        (
            self.reloads_ok.load(Ordering::Relaxed),
            self.reloads_failed.load(Ordering::Relaxed),
        )
    }
}

/// Renders a registry as Prometheus text.
pub fn render(registry: &Registry) -> String {
    let mut text = String::with_capacity(16 * 1024);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, registry);
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::collector::Collector;
    use prometheus_client::encoding::DescriptorEncoder;
    use prometheus_client::metrics::MetricType;

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(1));
        let mut registry = Registry::default();
        #[derive(Debug)]
        struct One(Histogram);
        impl Collector for One {
            fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
                self.0.encode(&mut encoder.encode_descriptor(
                    "t_seconds",
                    "test",
                    None,
                    MetricType::Histogram,
                )?)
            }
        }
        registry.register_collector(Box::new(One(h)));
        let text = render(&registry);
        assert!(
            text.contains("t_seconds_bucket{le=\"0.001\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("t_seconds_bucket{le=\"0.01\"} 3\n"), "{text}");
        assert!(text.contains("t_seconds_bucket{le=\"+Inf\"} 4\n"), "{text}");
        assert!(text.contains("t_seconds_count 4\n"), "{text}");
        assert!(text.contains("t_seconds_sum 1.0105\n"), "{text}");
    }

    #[test]
    fn status_classes() {
        let counts = StatusCounts::default();
        for status in [101, 200, 204, 307, 404, 502, 599] {
            counts.count(http::StatusCode::from_u16(status).unwrap());
        }
        let got: Vec<u64> = counts.0.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        assert_eq!(got, [1, 2, 1, 1, 2]);
    }
}
