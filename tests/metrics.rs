//! The router's own `/metrics`: every metric present, each moving with the traffic that should
//! move it, and the text accepted by a real Prometheus server scraping the admin listener.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;

const NAMES: &[&str] = &[
    "jitsi_router_requests_total",
    "jitsi_router_routing_decisions_total",
    "jitsi_router_routing_decision_seconds",
    "jitsi_router_upstream_response_seconds",
    "jitsi_router_websocket_tunnels",
    "jitsi_router_pinned_rooms",
    "jitsi_router_node_rooms",
    "jitsi_router_node_cpu_ratio",
    "jitsi_router_node_cpu_estimate_ratio",
    "jitsi_router_node_healthy",
    "jitsi_router_node_draining",
    "jitsi_router_prometheus_refresh_failures_total",
    "jitsi_router_tls_handshakes_total",
    "jitsi_router_tls_handshake_failures_total",
    "jitsi_router_config_reloads_total",
];

fn sum(metrics: &HashMap<String, f64>, prefix: &str) -> f64 {
    metrics
        .iter()
        .filter(|(series, _)| series.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_present_move_with_traffic_and_scrape_into_prometheus() {
    let certs = Certs::new();
    let nodes = sim_nodes(2).await;
    let router = Router::start(&certs, &config(&certs, "", &node_entries(&nodes)));

    let response = reqwest::get(router.admin_url("/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    for name in NAMES {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{text}"
        );
    }
    let before = metrics(&router).await;
    assert_eq!(before["jitsi_router_node_healthy{node=\"jitsi-a\"}"], 1.0);
    assert_eq!(before["jitsi_router_pinned_rooms"], 0.0);
    assert_eq!(before["jitsi_router_routing_decision_seconds_count"], 0.0);

    // Ten new rooms, then each again: 10 placed, 10 pinned, 20 answers from nodes.
    let client = router.client();
    for round in 0..2 {
        for i in 0..10 {
            let response = client
                .get(router.url(&format!("/metered-{i}")))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "round {round}");
        }
    }
    // One invalid room (answered by the router, no node), one WebSocket held open, one client
    // that speaks plain HTTP to the TLS port.
    let long_room = format!("/{}", "x".repeat(300));
    let response = client.get(router.url(&long_room)).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let (mut ws, _) = websocket(&certs, &router, "/xmpp-websocket?room=metered-0").await;
    let mut plain = tokio::net::TcpStream::connect(router.https).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "a counted TLS failure", || async {
        metrics(&router).await["jitsi_router_tls_handshake_failures_total"] == 1.0
    })
    .await;

    let after = metrics(&router).await;
    let kind = |k: &str| after[&format!("jitsi_router_routing_decisions_total{{kind=\"{k}\"}}")];
    assert_eq!(kind("placed"), 10.0);
    assert_eq!(kind("pinned"), 11.0, "10 page loads and the WebSocket");
    assert_eq!(kind("replaced"), 0.0);
    assert_eq!(after["jitsi_router_routing_decision_seconds_count"], 21.0);
    assert!(after["jitsi_router_routing_decision_seconds_sum"] > 0.0);
    assert_eq!(
        after["jitsi_router_routing_decision_seconds_bucket{le=\"+Inf\"}"],
        21.0
    );
    let answered = |class: &str| {
        ["jitsi-a", "jitsi-b"]
            .iter()
            .map(|n| {
                let series =
                    format!("jitsi_router_requests_total{{node=\"{n}\",class=\"{class}\"}}");
                after.get(&series).copied().unwrap_or(0.0)
            })
            .sum::<f64>()
    };
    assert_eq!(answered("2xx"), 20.0);
    assert_eq!(answered("1xx"), 1.0, "the WebSocket's 101");
    assert_eq!(
        after["jitsi_router_requests_total{node=\"none\",class=\"4xx\"}"],
        1.0
    );
    assert_eq!(
        sum(&after, "jitsi_router_upstream_response_seconds_count"),
        21.0
    );
    assert_eq!(after["jitsi_router_websocket_tunnels"], 1.0);
    assert_eq!(after["jitsi_router_pinned_rooms"], 10.0);
    assert_eq!(sum(&after, "jitsi_router_node_rooms{"), 10.0);
    assert_eq!(
        after["jitsi_router_config_reloads_total{result=\"ok\"}"],
        0.0
    );

    // Drain shows at once; the tunnel closes and the gauge follows.
    router.drain("jitsi-a").await;
    assert_eq!(
        metrics(&router).await["jitsi_router_node_draining{node=\"jitsi-a\"}"],
        1.0
    );
    echoes(&mut ws, "before closing").await;
    drop(ws);
    eventually(
        Duration::from_secs(10),
        "the tunnel gauge to drop",
        || async { metrics(&router).await["jitsi_router_websocket_tunnels"] == 0.0 },
    )
    .await;

    // A real Prometheus scrapes the admin listener and reads the same figures.
    let prometheus = Prometheus::start(&[router.admin.unwrap()]).await;
    eventually(
        Duration::from_secs(30),
        "prometheus to scrape the router",
        || async {
            let rooms = prometheus.query("jitsi_router_pinned_rooms").await;
            let placed = prometheus
                .query(r#"jitsi_router_routing_decisions_total{kind="placed"}"#)
                .await;
            rooms.values().any(|&v| v == 10.0) && placed.values().any(|&v| v == 10.0)
        },
    )
    .await;
}
