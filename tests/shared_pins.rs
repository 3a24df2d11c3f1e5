//! Router replicas sharing their pins through a real Redis (`[pins.redis]`; also behind Sentinel,
//! and a Redis Cluster): whichever replica a
//! participant's request reaches, a room meets on one node — on first placement, when its node
//! fails, and after an operator moves or unpins it on one replica. A dead Redis costs no request.

mod support;

use std::time::Duration;

use support::*;

/// The `[pins.redis]` section for `url`, syncing every 300 ms. The timeout is generous: these
/// tests start several routers and Redis on two cores, and a question timed out would have its
/// room placed alone (the behaviour `a_dead_redis_…` checks), not the one under test.
fn shared(url: &str) -> String {
    format!("[pins.redis]\nurl = {url:?}\nsync_interval = \"300ms\"\ntimeout = \"3s\"\n")
}

/// A replica whose fleet drains every node but `open`: left alone it places every new room on
/// `open`, so two replicas with different `open` nodes would split every room they share.
fn replica(certs: &Certs, nodes: &[SimNode], open: &str, sections: &str) -> Router {
    let sections = format!("[health]\ninterval = \"200ms\"\nfall = 1\nrise = 1\n\n{sections}");
    let text = config(certs, &sections, &[])
        + &nodes_with_instances(nodes, &|n| {
            if n.name() == open {
                String::new()
            } else {
                "drain = true\n".into()
            }
        });
    Router::start(certs, &text)
}

/// The node that answers a room page through `router`.
async fn node_of(router: &Router, room: &str) -> String {
    let response = router
        .client()
        .get(router.url(&format!("/{room}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{room}");
    shard(&response)
}

/// The status of `GET /api/rooms/{room}` on `router`'s admin API.
async fn pin_status(router: &Router, room: &str) -> u16 {
    let url = router.admin_url(&format!("/api/rooms/{room}"));
    reqwest::get(url).await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_sharing_redis_put_each_room_on_one_node() {
    let certs = Certs::new();
    let redis = Redis::start().await;
    let nodes = sim_nodes(2).await;
    let one = replica(&certs, &nodes, "jitsi-a", &shared(&redis.url()));
    let two = replica(&certs, &nodes, "jitsi-b", &shared(&redis.url()));
    // Without the store, the second replica places alone: the split this feature prevents.
    let alone = replica(&certs, &nodes, "jitsi-b", "");

    let mut placed_by = std::collections::BTreeMap::new();
    for i in 0..40 {
        let room = format!("shared-{i}");
        // The first participant arrives through either replica, the second through the other.
        let (first, second) = if i % 2 == 0 {
            (&one, &two)
        } else {
            (&two, &one)
        };
        let node = node_of(first, &room).await;
        assert_eq!(
            node_of(second, &room).await,
            node,
            "{room} split between replicas"
        );
        assert_eq!(node_of(first, &room).await, node, "{room} moved");
        *placed_by.entry(node.clone()).or_insert(0) += 1;
        assert_eq!(
            redis
                .get(&format!("jitsi-router:pin:{room}"))
                .await
                .as_deref(),
            Some(node.as_str()),
            "{room} in the store"
        );
    }
    // Each replica placed the rooms it saw first, on its own open node.
    assert_eq!(placed_by.get("jitsi-a"), Some(&20), "{placed_by:?}");
    assert_eq!(placed_by.get("jitsi-b"), Some(&20), "{placed_by:?}");

    let room = "shared-0"; // placed through `one`, on jitsi-a
    assert_eq!(
        node_of(&alone, room).await,
        "jitsi-b",
        "a replica without the store splits it"
    );

    // A replica whose every node drains takes no new room, but routes those the store holds
    // (draining nodes keep their rooms).
    let drained = replica(&certs, &nodes, "none", &shared(&redis.url()));
    assert_eq!(node_of(&drained, "shared-1").await, "jitsi-b");
    let new = drained
        .client()
        .get(drained.url("/never-seen"))
        .send()
        .await
        .unwrap();
    assert_eq!(new.status(), 503);

    let status: serde_json::Value = two.admin_json("/api/status").await;
    assert_eq!(status["shared_pins"]["connected"], true, "{status}");
    let primary = format!("127.0.0.1:{}", redis.port);
    assert_eq!(
        status["shared_pins"]["primary"],
        primary.as_str(),
        "{status}"
    );
    let metrics = metrics(&two).await;
    assert_eq!(metrics["jitsi_router_shared_pin_store_connected"], 1.0);
    assert_eq!(metrics["jitsi_router_shared_pin_store_failures_total"], 0.0);
    let decisions =
        |kind: &str| metrics[&format!("jitsi_router_routing_decisions_total{{kind=\"{kind}\"}}")];
    // `two` placed the odd rooms and took the even ones, which `one` placed, from the store.
    assert_eq!(decisions("placed"), 20.0);
    assert_eq!(decisions("shared"), 20.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_room_opened_at_once_through_both_replicas_meets_on_one_node() {
    let certs = Certs::new();
    let redis = Redis::start().await;
    let nodes = sim_nodes(2).await;
    let one = replica(&certs, &nodes, "jitsi-a", &shared(&redis.url()));
    let two = replica(&certs, &nodes, "jitsi-b", &shared(&redis.url()));
    for i in 0..20 {
        let room = format!("rush-{i}");
        // Ten participants through each replica, all at the same moment.
        let asks = (0..20).map(|k| {
            let router = if k % 2 == 0 { &one } else { &two };
            node_of(router, &room)
        });
        let nodes: std::collections::BTreeSet<String> = futures_util::future::join_all(asks)
            .await
            .into_iter()
            .collect();
        assert_eq!(nodes.len(), 1, "{room} split: {nodes:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_move_a_failed_nodes_rooms_to_one_node() {
    let certs = Certs::new();
    let redis = Redis::start().await;
    let nodes = sim_nodes(3).await;
    // Both replicas drain all but jitsi-a, so the rooms start there.
    let one = replica(&certs, &nodes, "jitsi-a", &shared(&redis.url()));
    let two = replica(&certs, &nodes, "jitsi-a", &shared(&redis.url()));
    let rooms: Vec<String> = (0..10).map(|i| format!("failover-{i}")).collect();
    for room in &rooms {
        assert_eq!(node_of(&one, room).await, "jitsi-a");
        assert_eq!(node_of(&two, room).await, "jitsi-a");
    }
    // Then each opens another node: once jitsi-a fails, `one` alone would move the rooms to
    // jitsi-b and `two` to jitsi-c.
    for (router, node) in [(&one, "jitsi-b"), (&two, "jitsi-c")] {
        router.set_drain(node, false).await;
    }
    nodes[0].set_healthy(false);
    eventually(
        Duration::from_secs(10),
        "both replicas to see jitsi-a down",
        || async {
            let down = |router: &Router| {
                let url = router.admin_url("/api/nodes");
                async move {
                    let nodes: serde_json::Value =
                        reqwest::get(url).await.unwrap().json().await.unwrap();
                    nodes.to_string().contains("\"healthy\":false")
                }
            };
            down(&one).await && down(&two).await
        },
    )
    .await;
    for (i, room) in rooms.iter().enumerate() {
        let (first, second) = if i % 2 == 0 {
            (&one, &two)
        } else {
            (&two, &one)
        };
        let node = node_of(first, room).await;
        assert_ne!(node, "jitsi-a");
        assert_eq!(
            node_of(second, room).await,
            node,
            "{room} split after its node failed"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_move_or_unpin_on_one_replica_reaches_the_others() {
    let certs = Certs::new();
    let redis = Redis::start().await;
    let nodes = sim_nodes(2).await;
    let one = replica(&certs, &nodes, "jitsi-a", &shared(&redis.url()));
    let two = replica(&certs, &nodes, "jitsi-a", &shared(&redis.url()));
    let client = reqwest::Client::new();
    let room = "moved-by-hand";
    assert_eq!(node_of(&one, room).await, "jitsi-a");
    assert_eq!(node_of(&two, room).await, "jitsi-a");

    let moved = client
        .put(one.admin_url(&format!("/api/rooms/{room}")))
        .body(r#"{"node": "jitsi-b"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(moved.status(), 200);
    let moved: serde_json::Value = moved.json().await.unwrap();
    assert_eq!(moved["replicas_told"], true, "{moved}");
    assert_eq!(node_of(&one, room).await, "jitsi-b");
    eventually(
        Duration::from_secs(5),
        "the other replica to follow the move",
        || async { node_of(&two, room).await == "jitsi-b" },
    )
    .await;

    let unpinned = client
        .delete(two.admin_url(&format!("/api/rooms/{room}")))
        .send()
        .await
        .unwrap();
    assert_eq!(unpinned.status(), 200);
    eventually(
        Duration::from_secs(5),
        "the other replica to unpin it",
        || async { pin_status(&one, room).await == 404 },
    )
    .await;
    // Placed afresh (both replicas would choose jitsi-a), and shared again.
    assert_eq!(node_of(&two, room).await, "jitsi-a");
    assert_eq!(node_of(&one, room).await, "jitsi-a");
    assert!(
        one.logs().contains("room unpinned by another replica"),
        "{}",
        one.logs()
    );
    assert!(
        two.logs().contains("room moved by another replica"),
        "{}",
        two.logs()
    );

    // The admin API of a replica that never saw the room finds it in the store, and unpins it
    // there (and so on the replica that holds it).
    let elsewhere = "seen-by-one-only";
    assert_eq!(node_of(&one, elsewhere).await, "jitsi-a");
    let url = two.admin_url(&format!("/api/rooms/{elsewhere}"));
    let pin: serde_json::Value = client.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(pin["node"], "jitsi-a", "{pin}");
    assert_eq!(pin["pinned_by"], "another replica", "{pin}");
    let unpinned = client.delete(&url).send().await.unwrap();
    assert_eq!(unpinned.status(), 200);
    let unpinned: serde_json::Value = unpinned.json().await.unwrap();
    assert_eq!(unpinned["unpinned_from"], "jitsi-a", "{unpinned}");
    assert_eq!(unpinned["replicas_told"], true, "{unpinned}");
    eventually(
        Duration::from_secs(5),
        "the holding replica to unpin it",
        || async { pin_status(&one, elsewhere).await == 404 },
    )
    .await;
    assert_eq!(pin_status(&two, "never-pinned").await, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_redis_costs_no_request_and_is_used_once_it_answers() {
    let certs = Certs::new();
    let nodes = sim_nodes(2).await;
    let port = closed_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let router = replica(&certs, &nodes, "jitsi-a", &shared(&url));
    let client = router.client();
    for i in 0..5 {
        let response = client
            .get(router.url(&format!("/alone-{i}")))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(shard(&response), "jitsi-a");
    }
    log_shows(&router, "shared pin store did not answer").await;
    // The admin API says so too: an unpin here works, but the others were not told; a room
    // this router does not hold cannot be looked up.
    let admin = reqwest::Client::new();
    let unpinned = admin
        .delete(router.admin_url("/api/rooms/alone-4"))
        .send()
        .await
        .unwrap();
    assert_eq!(unpinned.status(), 200);
    let unpinned: serde_json::Value = unpinned.json().await.unwrap();
    assert_eq!(unpinned["replicas_told"], false, "{unpinned}");
    let unknown = admin
        .get(router.admin_url("/api/rooms/never-seen"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 503);
    assert!(unknown
        .text()
        .await
        .unwrap()
        .contains("the shared pin store did not answer"));
    let counts = metrics(&router).await;
    assert_eq!(counts["jitsi_router_shared_pin_store_connected"], 0.0);
    assert!(counts["jitsi_router_shared_pin_store_failures_total"] >= 1.0);

    // Redis comes up where it was expected: the router connects, and its pins (the ones it
    // made alone included) reach the store at the next sync.
    let redis = Redis::start_on(port).await;
    eventually(
        Duration::from_secs(15),
        "the router to reach redis",
        || async { redis.get("jitsi-router:pin:alone-0").await.as_deref() == Some("jitsi-a") },
    )
    .await;
    assert_eq!(node_of(&router, "after-redis").await, "jitsi-a");
    assert_eq!(
        redis.get("jitsi-router:pin:after-redis").await.as_deref(),
        Some("jitsi-a")
    );

    // Redis restarts (empty): requests meanwhile are answered, and sharing resumes.
    drop(redis);
    for i in 0..5 {
        let response = client
            .get(router.url(&format!("/during-restart-{i}")))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    eventually(
        Duration::from_secs(10),
        "the router to see redis gone",
        || async { metrics(&router).await["jitsi_router_shared_pin_store_connected"] == 0.0 },
    )
    .await;
    let redis = Redis::start_on(port).await;
    eventually(Duration::from_secs(15), "sharing to resume", || async {
        node_of(&router, "after-restart").await == "jitsi-a"
            && redis.get("jitsi-router:pin:after-restart").await.as_deref() == Some("jitsi-a")
            && redis
                .get("jitsi-router:pin:during-restart-0")
                .await
                .as_deref()
                == Some("jitsi-a")
    })
    .await;
    assert_eq!(
        metrics(&router).await["jitsi_router_shared_pin_store_connected"],
        1.0
    );
}

/// The `[pins.redis]` section for a TLS store at `url`: `ca` to check the server by, and the
/// client certificate Redis asks for.
fn shared_tls(url: &str, ca: &std::path::Path, client: &Certs) -> String {
    shared(url)
        + &format!(
            "ca = {:?}\nclient_cert = {:?}\nclient_key = {:?}\n",
            ca, client.cert, client.key
        )
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_share_pins_over_tls_and_trust_no_store_their_ca_did_not_sign() {
    let certs = Certs::new();
    let redis = Redis::start_tls(&certs).await;
    assert!(redis.url().starts_with("rediss://"), "{}", redis.url());
    let nodes = sim_nodes(2).await;
    let tls = shared_tls(&redis.url(), &certs.ca, &certs);
    let one = replica(&certs, &nodes, "jitsi-a", &tls);
    let two = replica(&certs, &nodes, "jitsi-b", &tls);
    for i in 0..6 {
        let room = format!("sealed-{i}");
        let (first, second) = if i % 2 == 0 {
            (&one, &two)
        } else {
            (&two, &one)
        };
        let node = node_of(first, &room).await;
        assert_eq!(node_of(second, &room).await, node, "{room} split");
        let key = format!("jitsi-router:pin:{room}");
        assert_eq!(redis.get(&key).await.as_deref(), Some(node.as_str()));
    }
    let status: serde_json::Value = two.admin_json("/api/status").await;
    assert_eq!(status["shared_pins"]["connected"], true, "{status}");
    assert_eq!(
        metrics(&two).await["jitsi_router_shared_pin_store_failures_total"],
        0.0
    );

    // A replica told to trust another CA refuses the store's certificate: it never asks the
    // store, says so, and places rooms alone (here on jitsi-b, where `one` put sealed-0 on
    // jitsi-a: the split the store prevents, and no pin of the store's is taken on trust).
    let stranger = Certs::new();
    let doubting = replica(
        &certs,
        &nodes,
        "jitsi-b",
        &shared_tls(&redis.url(), &stranger.ca, &certs),
    );
    assert_eq!(node_of(&doubting, "sealed-0").await, "jitsi-b");
    eventually(
        Duration::from_secs(10),
        "the store's failures to be counted",
        || async {
            metrics(&doubting).await["jitsi_router_shared_pin_store_failures_total"] >= 1.0
        },
    )
    .await;
    let status: serde_json::Value = doubting.admin_json("/api/status").await;
    assert_eq!(status["shared_pins"]["connected"], false, "{status}");
    log_shows(&doubting, "certificate").await;
    assert_eq!(
        redis.get("jitsi-router:pin:sealed-0").await.as_deref(),
        Some("jitsi-a"),
        "the doubting replica wrote nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn renewed_redis_tls_files_take_effect_without_a_restart() {
    let certs = Certs::new();
    let redis = Redis::start_tls(&certs).await;
    let port = redis.port;
    let nodes = sim_nodes(2).await;
    // The files the router is told of, which an operator replaces in place.
    let files = tempfile::tempdir().unwrap();
    let [ca, cert, key] = ["ca.pem", "client.pem", "client.key"].map(|f| files.path().join(f));
    let install = |from: &Certs| {
        for (source, target) in [(&from.ca, &ca), (&from.cert, &cert), (&from.key, &key)] {
            std::fs::copy(source, target).unwrap();
        }
    };
    install(&certs);
    let section = shared(&redis.url())
        + &format!("ca = {ca:?}\nclient_cert = {cert:?}\nclient_key = {key:?}\n");
    let one = replica(&certs, &nodes, "jitsi-a", &section);
    let node = node_of(&one, "before").await;
    let pin = redis.get("jitsi-router:pin:before").await;
    assert_eq!(pin.as_deref(), Some(node.as_str()));

    // The store moves to a new CA, as a certificate rotation does: the old files are refused.
    drop(redis);
    let rotated = Certs::new();
    let redis = Redis::start_tls_on(&rotated, port).await;
    let connected = || async {
        let status: serde_json::Value = one.admin_json("/api/status").await;
        status["shared_pins"]["connected"] == true
    };
    eventually(
        Duration::from_secs(10),
        "the old files to be refused",
        || async { !connected().await },
    )
    .await;

    // The operator installs the new CA and client certificate; the router is not restarted.
    install(&rotated);
    log_shows(&one, "redis TLS files read again").await;
    eventually(
        Duration::from_secs(15),
        "the new files to be used",
        connected,
    )
    .await;
    let node = node_of(&one, "after").await;
    let pin = redis.get("jitsi-router:pin:after").await;
    assert_eq!(pin.as_deref(), Some(node.as_str()), "{}", one.logs());
    log_shows(&one, "connected to redis with the reloaded TLS files").await;

    // Files the store refuses (a CA it was not moved to) leave the open connection in use.
    install(&Certs::new());
    log_shows(
        &one,
        "redis refused a connection made with the reloaded TLS files",
    )
    .await;
    let node = node_of(&one, "still").await;
    let pin = redis.get("jitsi-router:pin:still").await;
    assert_eq!(pin.as_deref(), Some(node.as_str()), "{}", one.logs());
    assert!(connected().await);

    // A file that is not usable rejects the reload, naming it; the store stays in use.
    std::fs::write(&key, "not a key").unwrap();
    log_shows(&one, "reload rejected").await;
    let rejected = one.logs();
    let rejected = rejected
        .lines()
        .find(|l| l.contains("reload rejected"))
        .unwrap();
    assert!(
        rejected.contains("[pins.redis]") && rejected.contains("client.key"),
        "{rejected}"
    );
    assert!(connected().await);
}

/// Waits until the sentinel names `server` as the primary and both replicas use it: a room
/// first asked for through each has its pin there.
async fn switched(sentinel: &Sentinel, server: &Redis, replicas: [&Router; 2], name: &str) {
    eventually(
        Duration::from_secs(20),
        "the sentinel to switch",
        || async { sentinel.primary_port().await == Some(server.port) },
    )
    .await;
    let probes = std::sync::atomic::AtomicUsize::new(0);
    for router in replicas {
        eventually(Duration::from_secs(10), "the replica to follow", || async {
            let n = probes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let room = format!("{name}-probe-{n}");
            node_of(router, &room).await;
            server
                .get(&format!("jitsi-router:pin:{room}"))
                .await
                .is_some()
        })
        .await;
        let status: serde_json::Value = router.admin_json("/api/status").await;
        let primary = format!("127.0.0.1:{}", server.port);
        assert_eq!(
            status["shared_pins"]["primary"],
            primary.as_str(),
            "{status}"
        );
    }
}

/// Where a test reads the pins the replicas share.
trait Store {
    /// The node the store holds the room on.
    async fn pin(&self, room: &str) -> Option<String>;
}

impl Store for Redis {
    async fn pin(&self, room: &str) -> Option<String> {
        self.get(&format!("jitsi-router:pin:{room}")).await
    }
}

impl Store for RedisCluster {
    /// In a cluster the prefix is the key's hash tag.
    async fn pin(&self, room: &str) -> Option<String> {
        self.get(&format!("{{jitsi-router:pin:}}{room}")).await
    }
}

/// New rooms, first asked for through either replica, meet on one node, and `server` (the
/// primary now) holds their pins.
async fn new_rooms_meet(one: &Router, two: &Router, server: &impl Store, prefix: &str) {
    for i in 0..6 {
        let room = format!("{prefix}-{i}");
        let (first, second) = if i % 2 == 0 { (one, two) } else { (two, one) };
        let node = node_of(first, &room).await;
        assert_eq!(node_of(second, &room).await, node, "{room} split");
        assert_eq!(
            server.pin(&room).await.as_deref(),
            Some(node.as_str()),
            "{room} not in the primary"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_follow_sentinel_to_each_new_primary_and_rooms_stay_on_one_node() {
    failovers(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_follow_sentinel_over_tls() {
    failovers(true).await;
}

/// Two failovers under router replicas that share pins through Sentinel, all over TLS
/// (sentinel, servers, replication) with `tls`.
async fn failovers(tls: bool) {
    let certs = Certs::new();
    let first = match tls {
        true => Redis::start_tls(&certs).await,
        false => Redis::start().await,
    };
    let second = Redis::start_replica_of(&first).await;
    let sentinel = Sentinel::start(&first, &[&second], "pins").await;
    let nodes = sim_nodes(2).await;
    // The URL names the primary by the name the sentinel monitors it under.
    let section = |sync: &str| {
        let scheme = if tls { "rediss" } else { "redis" };
        let files = match tls {
            true => format!(
                "ca = {:?}\nclient_cert = {:?}\nclient_key = {:?}\n",
                certs.ca, certs.cert, certs.key
            ),
            false => String::new(),
        };
        format!(
            "[pins.redis]\nurl = \"{scheme}://pins/0\"\nsentinels = [\"127.0.0.1:{}\"]\n\
             sync_interval = {sync:?}\ntimeout = \"3s\"\n{files}",
            sentinel.port
        )
    };
    // Alone, these replicas would place every new room on different nodes.
    let one = replica(&certs, &nodes, "jitsi-a", &section("300ms"));
    let two = replica(&certs, &nodes, "jitsi-b", &section("300ms"));
    new_rooms_meet(&one, &two, &first, "before").await;
    eventually(
        Duration::from_secs(5),
        "the pins to reach the replica",
        || async { second.get("jitsi-router:pin:before-0").await.is_some() },
    )
    .await;

    // An operator's switch: the old primary stays up and takes writes until the sentinel tells
    // it, so the replicas ask the sentinel before every sync.
    sentinel.failover().await;
    switched(&sentinel, &second, [&one, &two], "switched").await;
    new_rooms_meet(&one, &two, &second, "switched").await;

    // Replicas that sync once a minute: only a failed question sends them to the sentinel.
    let three = replica(&certs, &nodes, "jitsi-a", &section("60s"));
    let four = replica(&certs, &nodes, "jitsi-b", &section("60s"));
    new_rooms_meet(&three, &four, &second, "slow").await;

    // The new primary dies: the sentinel promotes the first server again.
    drop(second);
    switched(&sentinel, &first, [&one, &two], "after").await;
    switched(&sentinel, &first, [&three, &four], "slow-after").await;
    new_rooms_meet(&one, &two, &first, "after").await;
    new_rooms_meet(&three, &four, &first, "slow-after").await;
    for router in [&one, &two] {
        assert_eq!(
            node_of(router, "before-0").await,
            node_of(&one, "before-0").await
        );
    }

    // Without the sentinel the primary still answers, and the replicas keep using it.
    drop(sentinel);
    tokio::time::sleep(Duration::from_secs(1)).await;
    new_rooms_meet(&one, &two, &first, "unwatched").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_share_pins_through_a_redis_cluster_and_follow_its_failover() {
    cluster(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_share_pins_through_a_redis_cluster_over_tls() {
    cluster(true).await;
}

/// Router replicas sharing pins through a Redis Cluster (all over TLS with `tls`): they find
/// its nodes from the one `url` names, meet every room on one node, follow an operator's move
/// through the cluster's sync, and keep doing so after the node serving the pins' slot fails
/// over to its replica.
async fn cluster(tls: bool) {
    let certs = Certs::new();
    let mut cluster = RedisCluster::start(tls.then_some(&certs)).await;
    let nodes = sim_nodes(2).await;
    let files = match tls {
        true => format!(
            "ca = {:?}\nclient_cert = {:?}\nclient_key = {:?}\n",
            certs.ca, certs.cert, certs.key
        ),
        false => String::new(),
    };
    let section = format!("{}cluster = true\n{files}", shared(&cluster.url()));
    // Alone, these replicas would place every new room on different nodes.
    let one = replica(&certs, &nodes, "jitsi-a", &section);
    let two = replica(&certs, &nodes, "jitsi-b", &section);
    new_rooms_meet(&one, &two, &cluster, "before").await;
    // Every pin sits in the slot of the prefix, on the primary that serves it.
    let key = "{jitsi-router:pin:}before-0";
    let holder = cluster.primary_of(key).await;
    assert!(
        holder.get(key).await.is_some(),
        "the pin is not in its slot's primary"
    );
    let holder = cluster
        .primaries
        .iter()
        .position(|p| p.port == holder.port)
        .unwrap();

    // A move on one replica reaches the other through the sync, a script over a batch of keys.
    let room = "before-1"; // placed through `two`, on jitsi-b
    let moved = reqwest::Client::new()
        .put(one.admin_url(&format!("/api/rooms/{room}")))
        .body(r#"{"node": "jitsi-a"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(moved.status(), 200);
    eventually(
        Duration::from_secs(5),
        "the other replica to follow the move",
        || async { node_of(&two, room).await == "jitsi-a" },
    )
    .await;

    let status: serde_json::Value = one.admin_json("/api/status").await;
    assert_eq!(status["shared_pins"]["connected"], true, "{status}");
    let seed = format!("cluster of 127.0.0.1:{}", cluster.primaries[0].port);
    assert_eq!(status["shared_pins"]["primary"], seed.as_str(), "{status}");

    // The primary serving the pins fails over to its replica, which copied them.
    cluster.add_replica(holder).await;
    eventually(
        Duration::from_secs(5),
        "the pins to reach the replica",
        || async {
            let copied: usize = cluster.replicas[0].query(&redis::cmd("DBSIZE")).await;
            copied >= 6
        },
    )
    .await;
    cluster.failover(0).await;
    new_rooms_meet(&one, &two, &cluster, "after").await;
    let promoted = &cluster.replicas[0];
    assert!(
        promoted.get("{jitsi-router:pin:}after-0").await.is_some(),
        "new pins are not on the promoted server"
    );
    assert_eq!(
        node_of(&two, "before-0").await,
        node_of(&one, "before-0").await
    );
    assert_eq!(node_of(&one, room).await, "jitsi-a");
    for router in [&one, &two] {
        let metrics = metrics(router).await;
        assert_eq!(metrics["jitsi_router_shared_pin_store_connected"], 1.0);
    }
}

/// `check --probe` asks the shared pin store once: a Redis that answers passes, one that is
/// not there fails with the reason, and the exit status says so.
#[tokio::test(flavor = "multi_thread")]
async fn check_probe_asks_the_store() {
    let certs = Certs::new();
    let redis = Redis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let probe = |url: String| {
        let path = dir.path().join("router.toml");
        std::fs::write(&path, config(&certs, &shared(&url), &[])).unwrap();
        let path = path.to_str().unwrap().to_owned();
        tokio::task::spawn_blocking(move || run_router(&["check", "--config", &path, "--probe"]))
    };
    let (code, stdout, stderr) = probe(format!("redis://127.0.0.1:{}", redis.port))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let line = stdout.lines().find(|l| l.contains(" store ")).unwrap();
    assert!(line.contains("answered (127.0.0.1:"), "{line}");

    let (code, stdout, _) = probe(format!("redis://127.0.0.1:{}", closed_port()))
        .await
        .unwrap();
    assert_eq!(code, Some(1), "{stdout}");
    let line = stdout.lines().find(|l| l.contains(" store ")).unwrap();
    assert!(line.contains("FAILED, "), "{line}");
}
