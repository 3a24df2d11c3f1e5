//! Placement at fleet scale, through the real router binary: bursts spread, unhealthy nodes lose
//! their rooms, draining nodes get none, bad Prometheus answers keep the last snapshot, and two
//! routers reading the same Prometheus place rooms alike.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::*;

const QUERY: &str = r#"1 - avg by (instance) (rate(node_cpu_seconds_total{mode="idle"}[5s]))"#;

/// Starts Prometheus and waits until it reports every node's busy fraction within 0.03 of `busy`
/// (its first rates, from two or three samples, can be off).
async fn prometheus_with_data(nodes: &[SimNode], busy: &[f64]) -> Prometheus {
    for (node, busy) in nodes.iter().zip(busy) {
        node.set_busy(*busy);
    }
    let prometheus = Prometheus::start(&nodes.iter().map(SimNode::addr).collect::<Vec<_>>()).await;
    eventually(
        Duration::from_secs(30),
        "prometheus to report the set CPU",
        || async {
            let cpu = prometheus.query(QUERY).await;
            cpu.len() == nodes.len()
                && nodes
                    .iter()
                    .zip(busy)
                    .all(|(n, b)| (cpu[&n.addr().to_string()] - b).abs() < 0.03)
        },
    )
    .await;
    prometheus
}

fn prometheus_section(url: &str, interval: &str) -> String {
    format!("[prometheus]\nurl = {url:?}\nquery = '{QUERY}'\ninterval = \"{interval}\"\nmax_staleness = \"10m\"\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_200_new_rooms_between_two_readings_spreads() {
    let certs = Certs::new();
    let nodes = sim_nodes(3).await;
    let prometheus = prometheus_with_data(&nodes, &[0.30, 0.10, 0.30]).await;
    // One reading at start-up, the next one long after the burst; the burst comes from one
    // client, so its new-room rate is raised.
    let sections =
        prometheus_section(&prometheus.url, "10m") + "\n[limits]\nnew_room_burst = 200\n";
    let text = config(&certs, &sections, &[]) + &nodes_with_instances(&nodes, &|_| String::new());
    let router = Router::start(&certs, &text);
    log_shows(&router, "cpu snapshot series=3").await;

    let per_node = place_rooms(&router, (0..200).map(|i| format!("burst-{i}"))).await;
    let bounded_share = (1.25f64 * 200.0 / 3.0).ceil() as usize;
    assert_eq!(per_node.len(), 3, "{per_node:?}");
    assert!(
        per_node.values().all(|&n| n <= bounded_share),
        "{per_node:?} exceeds {bounded_share}"
    );
    let idle = per_node["jitsi-b"];
    assert!(
        per_node.values().all(|&n| n <= idle),
        "the least busy node takes the most: {per_node:?}\n{}",
        router
            .logs()
            .lines()
            .filter(|l| l.contains("cpu snapshot") || l.contains("prometheus"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unhealthy_node_gets_no_rooms_and_its_rooms_move() {
    let certs = Certs::new();
    let nodes = sim_nodes(3).await;
    let health = "[health]\ninterval = \"200ms\"\ntimeout = \"1s\"\nfall = 2\nrise = 2\n";
    let router = Router::start(&certs, &config(&certs, health, &node_entries(&nodes)));
    let client = router.client();
    let mut on_a = Vec::new();
    for i in 0..30 {
        let room = format!("before-{i}");
        let response = client
            .get(router.url(&format!("/{room}")))
            .send()
            .await
            .unwrap();
        if shard(&response) == "jitsi-a" {
            on_a.push(room);
        }
    }
    assert!(!on_a.is_empty(), "hashing gave jitsi-a no room of 30");

    nodes[0].set_healthy(false);
    log_shows(&router, "node unhealthy").await;
    let per_node = place_rooms(&router, (0..30).map(|i| format!("during-{i}"))).await;
    assert!(!per_node.contains_key("jitsi-a"), "{per_node:?}");
    let mut moved_to = Vec::new();
    for room in &on_a {
        let response = client
            .get(router.url(&format!("/http-bind?room={room}")))
            .send()
            .await
            .unwrap();
        let node = shard(&response);
        assert_ne!(node, "jitsi-a", "{room} stayed on the unhealthy node");
        moved_to.push(node);
    }
    let logs = router.logs();
    assert!(
        logs.contains(&format!("room re-placed room=\"{}\"", on_a[0])),
        "{logs}"
    );
    assert!(logs.contains("from=jitsi-a"), "{logs}");

    nodes[0].set_healthy(true);
    log_shows(&router, "node healthy again").await;
    for (room, node) in on_a.iter().zip(&moved_to) {
        let response = client
            .get(router.url(&format!("/{room}")))
            .send()
            .await
            .unwrap();
        assert_eq!(&shard(&response), node, "{room} must stay where it moved");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_draining_node_gets_no_new_rooms() {
    let certs = Certs::new();
    let nodes = sim_nodes(3).await;
    let text = config(&certs, "", &[])
        + &nodes_with_instances(&nodes, &|n| {
            if n.name() == "jitsi-b" {
                "drain = true\n".into()
            } else {
                String::new()
            }
        });
    let router = Router::start(&certs, &text);
    let per_node = place_rooms(&router, (0..60).map(|i| format!("drain-{i}"))).await;
    assert!(!per_node.contains_key("jitsi-b"), "{per_node:?}");
    assert_eq!(per_node.values().sum::<usize>(), 60);
    // Its bridge channels still work: draining keeps running conferences.
    let bridge = router
        .client()
        .get(router.url("/colibri-ws/jitsi-b/c/e"))
        .send()
        .await
        .unwrap();
    assert_eq!(bridge.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_huge_or_slow_prometheus_answers_keep_the_last_snapshot() {
    let certs = Certs::new();
    let nodes = sim_nodes(3).await;
    let busy = nodes
        .iter()
        .zip([0.6, 0.1, 0.5])
        .map(|(n, b)| (n.addr().to_string(), b))
        .collect();
    let fake = FakePrometheus::start(PromAnswer::Busy(busy)).await;
    let sections = prometheus_section(&fake.url, "300ms")
        + "timeout = \"200ms\"\n\n[placement]\nbalance_factor = 100.0\n";
    let text = config(&certs, &sections, &[]) + &nodes_with_instances(&nodes, &|_| String::new());
    let router = Router::start(&certs, &text);
    log_shows(&router, "cpu snapshot series=3").await;

    for (answer, reason) in [
        (PromAnswer::Garbage, "prometheus query failed"),
        (PromAnswer::NotANumber, "no value is a busy fraction"),
        (PromAnswer::Huge, "answer over 16777216 bytes"),
        (PromAnswer::Hang(Duration::from_secs(5)), "timed out"),
    ] {
        fake.answer(answer);
        log_shows(&router, reason).await;
        let per_node = place_rooms(
            &router,
            (0..3).map(|i| format!("{reason}-{i}").replace(' ', "-")),
        )
        .await;
        assert_eq!(
            per_node.get("jitsi-b"),
            Some(&3),
            "after {reason:?} the last snapshot still steers: {per_node:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_routers_reading_one_prometheus_place_rooms_alike() {
    let certs = Certs::new();
    let nodes = sim_nodes(4).await;
    let prometheus = prometheus_with_data(&nodes, &[0.35, 0.20, 0.25, 0.40]).await;
    let text = config(&certs, &prometheus_section(&prometheus.url, "20s"), &[])
        + &nodes_with_instances(&nodes, &|_| String::new());
    let first = Router::start(&certs, &text);
    let second = Router::start(&certs, &text);
    // Readings follow the wall clock: wait until both routers' last reading is of one instant,
    // with the next one well ahead.
    let latest = |router: &Router| {
        let logs = router.logs();
        let line = logs
            .lines()
            .rev()
            .find(|l| l.contains("cpu snapshot series=4"))?
            .to_owned();
        Some(
            line.split("at=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .to_owned(),
        )
    };
    eventually(
        Duration::from_secs(60),
        "both routers to read the same instant",
        || async {
            let until_next = 20
                - SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_secs()
                    % 20;
            let (a, b) = (latest(&first), latest(&second));
            a.is_some() && a == b && until_next > 8
        },
    )
    .await;

    let (a, b) = (first.client(), second.client());
    let mut spread = std::collections::BTreeSet::new();
    for i in 0..100 {
        let path = format!("/alike-{i}");
        let from_first = shard(&a.get(first.url(&path)).send().await.unwrap());
        let from_second = shard(&b.get(second.url(&path)).send().await.unwrap());
        assert_eq!(from_first, from_second, "room alike-{i} placed differently");
        spread.insert(from_first);
    }
    assert!(spread.len() > 1, "100 rooms on one node: {spread:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pins_survive_a_restart_with_a_snapshot() {
    let certs = Certs::new();
    let nodes = sim_nodes(3).await;
    let dir = tempfile::tempdir().unwrap();
    let sections = format!(
        "[pins]\nsnapshot_path = {:?}\n",
        dir.path().join("pins.json")
    );
    let with_drain = |drained: &'static str| {
        config(&certs, &sections, &[])
            + &nodes_with_instances(&nodes, &move |n| {
                if n.name() == drained {
                    "drain = true\n".into()
                } else {
                    String::new()
                }
            })
    };
    let mut first = Router::start(&certs, &with_drain("none"));
    let client = first.client();
    let mut before = Vec::new();
    for i in 0..30 {
        let response = client
            .get(first.url(&format!("/kept-{i}")))
            .send()
            .await
            .unwrap();
        before.push(shard(&response));
    }
    assert!(before.iter().any(|n| n == "jitsi-a"), "{before:?}");
    first.signal("TERM");
    assert_eq!(first.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(
        first.logs().contains("pins saved count=30"),
        "{}",
        first.logs()
    );

    // Restarted with jitsi-a draining: only restored pins can still send rooms there.
    let second = Router::start(&certs, &with_drain("jitsi-a"));
    assert!(
        second.logs().contains("pins restored count=30"),
        "{}",
        second.logs()
    );
    let client = second.client();
    for (i, node) in before.iter().enumerate() {
        let response = client
            .get(second.url(&format!("/http-bind?room=kept-{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(&shard(&response), node, "kept-{i} moved across the restart");
    }
}

/// `demo` on a machine with Prometheus (the test command installs it) reads its nodes' CPU
/// through a real Prometheus and sends a new room to the least busy node.
#[tokio::test(flavor = "multi_thread")]
async fn demo_places_rooms_by_its_nodes_cpu() {
    use jitsi_router::demo::{NODE_BUSY, NODE_NAMES};
    let demo = Demo::start(&[]);
    assert!(
        demo.banner.contains("CPU: Prometheus at"),
        "{}",
        demo.banner
    );
    let admin = demo
        .banner
        .split_whitespace()
        .find_map(|word| word.strip_suffix("/api/nodes"))
        .unwrap_or_else(|| panic!("no admin API in the banner: {}", demo.banner))
        .to_owned();
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(20), "the demo's CPU readings", || {
        let (http, admin) = (&http, &admin);
        async move {
            let Ok(answer) = http.get(format!("{admin}/api/nodes")).send().await else {
                return false;
            };
            let nodes: serde_json::Value = answer.json().await.unwrap_or_default();
            NODE_NAMES.iter().zip(NODE_BUSY).all(|(name, busy)| {
                nodes.as_array().into_iter().flatten().any(|node| {
                    node["name"] == *name
                        && node["cpu"]
                            .as_f64()
                            .is_some_and(|cpu| (cpu - busy).abs() < 0.03)
                })
            })
        }
    })
    .await;
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .resolve("localhost", ([127, 0, 0, 1], demo.port).into())
        .build()
        .unwrap();
    let page = client
        .get(format!("https://localhost:{}/FirstRoom", demo.port))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(shard(&page), NODE_NAMES[0], "the least busy node");
}
