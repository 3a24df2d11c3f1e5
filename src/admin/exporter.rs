//! The `/metrics` collector: everything read at scrape time, counters from
//! [`Metrics`](crate::metrics::Metrics) and gauges from the fleet state, the pin table and the
//! open tunnels. It lives with the admin listener that serves it, so that the counters in
//! [`metrics`](crate::metrics) import nothing of the modules that count into them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::fleet::FleetState;
use crate::local_fault::LocalFault;
use crate::metrics::{Metrics, DECISIONS, LIMITS, PROXY_REFUSALS, TIMEOUTS};
use crate::placement::{policy, Router};
use crate::proxy::tunnel::Tunnels;
use crate::tls::CertStore;

/// Reads everything at scrape time; registered once with the admin listener's registry.
pub struct Exporter {
    metrics: Arc<Metrics>,
    router: Arc<Router>,
    tunnels: Arc<Tunnels>,
    certs: Arc<CertStore>,
}

impl Exporter {
    /// A registry holding the exporter over these sources.
    pub fn registry(
        metrics: Arc<Metrics>,
        router: Arc<Router>,
        tunnels: Arc<Tunnels>,
        certs: Arc<CertStore>,
    ) -> Registry {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Exporter {
            metrics,
            router,
            tunnels,
            certs,
        }));
        registry
    }
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").finish_non_exhaustive()
    }
}

fn single<T: prometheus_client::encoding::EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: T,
) -> Result<(), std::fmt::Error> {
    encoder
        .encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&value)
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    encoder
        .encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&value, None)
}

fn labelled<'a>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &str,
    values: impl Iterator<Item = (&'a str, &'a AtomicU64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value_label, count) in values {
        family
            .encode_family(&[(label, value_label)])?
            .encode_counter::<NoLabelSet, _, u64>(&count.load(Ordering::Relaxed), None)?;
    }
    Ok(())
}

impl Collector for Exporter {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = self.router.fleet().snapshot();
        self.encode_traffic(&mut encoder, &state)?;
        self.encode_nodes(&mut encoder, &state)?;
        self.encode_sources(&mut encoder)?;
        self.encode_edge(&mut encoder)
    }
}

impl Exporter {
    /// Requests, routing decisions, answer times, tunnels and pins.
    fn encode_traffic(
        &self,
        encoder: &mut DescriptorEncoder<'_>,
        state: &FleetState,
    ) -> Result<(), std::fmt::Error> {
        let nodes = state.nodes();
        let m = &self.metrics;

        let mut family = encoder.encode_descriptor(
            "jitsi_router_requests",
            "Requests answered, by node and status class (node=\"none\": answered by the router itself).",
            None,
            MetricType::Counter,
        )?;
        for node in nodes {
            node.live
                .report
                .requests
                .encode(node.id.as_str(), &mut family)?;
        }
        m.no_node_requests.encode("none", &mut family)?;

        let mut family = encoder.encode_descriptor(
            "jitsi_router_routing_decisions",
            "Routing decisions by kind; fallback counts placements made while every node was over max_cpu (also counted as placed or replaced).",
            None,
            MetricType::Counter,
        )?;
        let fallback = self.router.placed_over_max_cpu();
        let kinds = DECISIONS
            .iter()
            .map(|&(kind, name)| (name, m.decisions[kind as usize].load(Ordering::Relaxed)))
            .chain(std::iter::once(("fallback", fallback)));
        for (name, value) in kinds {
            family
                .encode_family(&[("kind", name)])?
                .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        }

        m.decision_seconds.encode(&mut encoder.encode_descriptor(
            "jitsi_router_routing_decision_seconds",
            "Time to classify a request and choose its node.",
            None,
            MetricType::Histogram,
        )?)?;

        let mut family = encoder.encode_descriptor(
            "jitsi_router_upstream_response_seconds",
            "Time from sending a request to a node until its response head arrived.",
            None,
            MetricType::Histogram,
        )?;
        for node in nodes {
            node.live
                .report
                .upstream
                .encode(&mut family.encode_family(&[("node", node.id.as_str())])?)?;
        }

        single(
            encoder,
            "jitsi_router_websocket_tunnels",
            "Open WebSocket tunnels.",
            self.tunnels.count() as u64,
        )?;
        single(
            encoder,
            "jitsi_router_pinned_rooms",
            "Rooms pinned to a node.",
            self.router.pins().len() as u64,
        )?;
        Ok(())
    }

    /// Each node's rooms, CPU, health, drain and census, and the rooms split over nodes.
    fn encode_nodes(
        &self,
        encoder: &mut DescriptorEncoder<'_>,
        state: &FleetState,
    ) -> Result<(), std::fmt::Error> {
        let nodes = state.nodes();
        let now = Instant::now();
        let cpu = state.cpu(now);
        let settings = self.router.settings();
        type Read<'a> = &'a dyn Fn(usize) -> Option<f64>;
        let per_node: [(&str, &str, Read<'_>); 7] = [
            ("jitsi_router_node_rooms", "Active rooms pinned to the node.", &|i| {
                Some(f64::from(nodes[i].live.rooms()))
            }),
            (
                "jitsi_router_node_cpu_ratio",
                "The node's busy CPU fraction from the last good Prometheus snapshot (absent when unknown or stale).",
                &|i| cpu.get(i).copied().flatten(),
            ),
            (
                "jitsi_router_node_cpu_estimate_ratio",
                "Snapshot CPU plus room_cost for each room placed, or room's worth of participants joined, since it was read.",
                &|i| policy::estimate(state, &settings, i, now),
            ),
            ("jitsi_router_node_healthy", "1 while the node passes health checks.", &|i| {
                Some(f64::from(u8::from(nodes[i].live.healthy())))
            }),
            ("jitsi_router_node_draining", "1 while the node is draining (no new rooms).", &|i| {
                Some(f64::from(u8::from(nodes[i].live.draining())))
            }),
            (
                "jitsi_router_node_participants",
                "Participants on the node by its room census (absent without a census that counts).",
                &|i| nodes[i].live.participants().map(f64::from),
            ),
            (
                "jitsi_router_node_drained_empty",
                "1 while the node is draining and hosts no room by its pins and its census: it may be stopped.",
                &|i| Some(f64::from(u8::from(nodes[i].live.empty_since_ms().is_some()))),
            ),
        ];
        for (name, help, read) in per_node {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (i, node) in nodes.iter().enumerate() {
                if let Some(value) = read(i) {
                    family
                        .encode_family(&[("node", node.id.as_str())])?
                        .encode_gauge(&value)?;
                }
            }
        }

        let mut family = encoder.encode_descriptor(
            "jitsi_router_census_failures",
            "Polls of a node's room census that got no good answer.",
            None,
            MetricType::Counter,
        )?;
        for node in nodes.iter().filter(|node| node.spec.census_url.is_some()) {
            let failures = node.live.report.census_failures.load(Ordering::Relaxed);
            family
                .encode_family(&[("node", node.id.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(&failures, None)?;
        }

        single(
            encoder,
            "jitsi_router_split_rooms",
            "Rooms the nodes' census finds live on more than one node.",
            self.router.splits().len() as i64,
        )?;
        Ok(())
    }

    /// What the router reads from outside: Prometheus, its certificate and ACME, the shared pin
    /// store.
    fn encode_sources(&self, encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let m = &self.metrics;
        counter(
            encoder,
            "jitsi_router_prometheus_refresh_failures",
            "CPU refreshes from Prometheus that failed or were rejected (the last good snapshot stays).",
            m.prometheus_failures.load(Ordering::Relaxed),
        )?;
        if let Some(age) = self.router.fleet().snapshot_age() {
            single(
                encoder,
                "jitsi_router_prometheus_snapshot_age_seconds",
                "Age of the CPU snapshot placement uses.",
                age.as_secs_f64(),
            )?;
        }
        if let Some(validity) = self.certs.validity() {
            let expiry = validity.not_after.duration_since(std::time::UNIX_EPOCH);
            single(
                encoder,
                "jitsi_router_certificate_expiry_timestamp_seconds",
                "When the served certificate expires (Unix seconds).",
                expiry.map_or(0, |d| d.as_secs()) as i64,
            )?;
        }
        counter(
            encoder,
            "jitsi_router_acme_failures",
            "ACME issuances and renewals that failed (the served certificate stays).",
            m.acme_failures.load(Ordering::Relaxed),
        )?;
        if let Some(shared) = self.router.shared_pins() {
            counter(
                encoder,
                "jitsi_router_shared_pin_store_failures",
                "Questions to the shared pin store (Redis) that got no answer in time.",
                shared.errors(),
            )?;
            single(
                encoder,
                "jitsi_router_shared_pin_store_connected",
                "1 while the shared pin store answers (its last question got an answer).",
                f64::from(u8::from(shared.connected())),
            )?;
        }
        Ok(())
    }

    /// The public edge: TLS handshakes, client connections, the caps and time limits that
    /// stopped clients, the router's own faults, and config reloads.
    fn encode_edge(&self, encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let m = &self.metrics;
        labelled(
            encoder,
            "jitsi_router_tls_handshakes",
            "Client TLS handshakes that completed: full, or resuming a session (limits.tls_sessions).",
            "kind",
            ["full", "resumed"].into_iter().zip(&m.tls_handshakes),
        )?;
        counter(
            encoder,
            "jitsi_router_tls_handshake_failures",
            "Client TLS handshakes that failed or timed out.",
            m.tls_handshake_failures.load(Ordering::Relaxed),
        )?;
        single(
            encoder,
            "jitsi_router_client_connections",
            "Open client connections (HTTPS and plain-HTTP listeners).",
            m.client_connections.load(Ordering::Relaxed),
        )?;
        labelled(
            encoder,
            "jitsi_router_timeouts",
            "Time limits of [limits] that ran out, by the connection state they limit.",
            "state",
            TIMEOUTS
                .iter()
                .map(|&(t, name)| (name, &m.timeouts[t as usize])),
        )?;
        labelled(
            encoder,
            "jitsi_router_limited",
            "Clients stopped by a cap of [limits], by the cap.",
            "limit",
            LIMITS
                .iter()
                .map(|&(l, name)| (name, &m.limited[l as usize])),
        )?;
        labelled(
            encoder,
            "jitsi_router_proxy_header_refusals",
            "Connections closed at their PROXY protocol header, by why.",
            "reason",
            PROXY_REFUSALS
                .iter()
                .map(|&(r, name)| (name, &m.proxy_refusals[r as usize])),
        )?;
        labelled(
            encoder,
            "jitsi_router_local_faults",
            "Operations that failed for a shortage of the router's own (never counted against a node).",
            "kind",
            LocalFault::ALL
                .iter()
                .zip(&m.local_faults)
                .map(|(fault, count)| (fault.label(), count)),
        )?;
        let (ok, failed) = m.reloads();
        let mut family = encoder.encode_descriptor(
            "jitsi_router_config_reloads",
            "Config and certificate reloads by result.",
            None,
            MetricType::Counter,
        )?;
        for (result, value) in [("ok", ok), ("failed", failed)] {
            family
                .encode_family(&[("result", result)])?
                .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        }
        Ok(())
    }
}
