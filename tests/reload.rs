//! Reload in place: SIGHUP and file changes apply new nodes and certificates, reject bad edits
//! whole, and never disturb open connections.

mod support;

use std::time::Duration;

use support::*;

async fn status(router: &Router, path: &str) -> u16 {
    router
        .client()
        .get(router.url(path))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The node that answers `path` through `router`; `None` when the router refuses it.
async fn reaches(router: &Router, path: &str) -> Option<String> {
    let response = router.client().get(router.url(path)).send().await.unwrap();
    (response.status() == 200).then(|| shard(&response))
}

async fn wait_for_count(router: &Router, text: &str, count: usize) {
    let what = format!("{count} × {text:?} in the log");
    eventually(Duration::from_secs(15), &what, || async {
        router.logs().matches(text).count() >= count
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_adds_and_removes_nodes_while_a_tunnel_stays_open() {
    let certs = Certs::new();
    let nodes = sim_nodes(3).await;
    let router = Router::start(&certs, &config(&certs, "", &node_entries(&nodes[..2])));
    let (mut ws, _) = websocket(&certs, &router, "/colibri-ws/jitsi-a/conf/ep").await;
    assert_eq!(status(&router, "/colibri-ws/jitsi-c/conf/ep").await, 404);
    let client = router.client();
    let mut on_b = Vec::new();
    for i in 0..30 {
        let response = client
            .get(router.url(&format!("/hup-{i}")))
            .send()
            .await
            .unwrap();
        if shard(&response) == "jitsi-b" {
            on_b.push(i);
        }
    }
    assert!(!on_b.is_empty());

    let without_b = vec![
        node_entries(&nodes)[0].clone(),
        node_entries(&nodes)[2].clone(),
    ];
    // Traffic keeps flowing across the reload: every request of every room is answered.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = tokio::spawn({
        let (client, stop) = (client.clone(), stop.clone());
        let base = router.url("/hup-");
        async move {
            let mut answered = 0;
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let response = client.get(format!("{base}{}", i % 30)).send().await;
                let status = response.map(|r| r.status().as_u16());
                assert!(matches!(status, Ok(200)), "during the reload: {status:?}");
                answered += 1;
                i += 1;
            }
            answered
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::write(router.config_path(), config(&certs, "", &without_b)).unwrap();
    router.signal("HUP");
    wait_for_count(&router, "config reloaded", 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answered = traffic.await.unwrap();
    assert!(answered > 10, "only {answered} requests during the reload");

    assert_eq!(
        status(&router, "/colibri-ws/jitsi-c/conf/ep").await,
        200,
        "new node serves"
    );
    assert_eq!(
        status(&router, "/colibri-ws/jitsi-b/conf/ep").await,
        404,
        "removed node is gone"
    );
    for i in on_b {
        let response = client
            .get(router.url(&format!("/hup-{i}")))
            .send()
            .await
            .unwrap();
        assert_ne!(
            shard(&response),
            "jitsi-b",
            "hup-{i} still on the removed node"
        );
    }
    echoes(&mut ws, "the tunnel survived the reload").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_file_reloads_and_a_bad_one_is_rejected_whole() {
    let certs = Certs::new();
    let nodes = sim_nodes(2).await;
    let router = Router::start(&certs, &config(&certs, "", &node_entries(&nodes[..1])));
    let (mut ws, _) = websocket(&certs, &router, "/xmpp-websocket?room=across").await;

    let bad = config(
        &certs,
        "[routing]\nmode = \"fast\"\n",
        &node_entries(&nodes),
    );
    std::fs::write(router.config_path(), bad).unwrap();
    wait_for_count(&router, "reload rejected", 1).await;
    assert!(router.logs().contains("routing.mode"), "{}", router.logs());
    let reloads = |seen: &std::collections::HashMap<String, f64>, result: &str| {
        seen[&format!("jitsi_router_config_reloads_total{{result=\"{result}\"}}")]
    };
    let seen = metrics(&router).await;
    assert_eq!((reloads(&seen, "ok"), reloads(&seen, "failed")), (0.0, 1.0));
    // jitsi-b's bridge id is declared by no node (an undeclared id may follow this client's
    // signalling to jitsi-a, never to jitsi-b).
    assert_ne!(
        reaches(&router, "/colibri-ws/jitsi-b/x/y").await.as_deref(),
        Some("jitsi-b"),
        "nothing of the bad file applied"
    );
    assert_eq!(
        status(&router, "/colibri-ws/jitsi-a/x/y").await,
        200,
        "the running config still serves"
    );

    std::fs::write(
        router.config_path(),
        config(&certs, "", &node_entries(&nodes)),
    )
    .unwrap();
    wait_for_count(&router, "config reloaded", 1).await;
    let seen = metrics(&router).await;
    assert_eq!((reloads(&seen, "ok"), reloads(&seen, "failed")), (1.0, 1.0));
    assert!(
        router.logs().contains("why=\"file change\""),
        "{}",
        router.logs()
    );
    assert_eq!(
        reaches(&router, "/colibri-ws/jitsi-b/x/y").await.as_deref(),
        Some("jitsi-b")
    );

    // A section read only at start: the reload says a restart is needed.
    let changed = config(
        &certs,
        "[routing]\npin_idle_timeout = \"5m\"\n",
        &node_entries(&nodes),
    );
    std::fs::write(router.config_path(), changed).unwrap();
    wait_for_count(&router, "config reloaded", 2).await;
    assert!(
        router.logs().contains("only after a restart"),
        "{}",
        router.logs()
    );
    echoes(&mut ws, "held open across three file changes").await;
}

/// `[health]`, `[placement]` and `[census]` apply live: an operator whose health path the nodes
/// do not serve (every node out, every new room refused) fixes it with a reload, and the checks
/// start again by the new settings at once, not an interval later.
#[tokio::test(flavor = "multi_thread")]
async fn a_fixed_health_path_applies_without_a_restart() {
    let certs = Certs::new();
    let nodes = sim_nodes(1).await;
    // Its signalling is down: `/http-bind` answers 502, while its other pages answer.
    nodes[0].set_healthy(false);
    let health =
        |path: &str| format!("[health]\npath = {path:?}\ninterval = \"1h\"\nfall = 1\nrise = 1\n");
    let router = Router::start(
        &certs,
        &config(&certs, &health("/http-bind"), &node_entries(&nodes)),
    );
    eventually(
        Duration::from_secs(10),
        "the node checked unhealthy",
        || async { status(&router, "/checked-room").await == 503 },
    )
    .await;

    let fixed = format!(
        "{}\n[placement]\nmax_cpu = 0.8\n\n[census]\ninterval = \"20s\"\n",
        health("/")
    );
    std::fs::write(
        router.config_path(),
        config(&certs, &fixed, &node_entries(&nodes)),
    )
    .unwrap();
    wait_for_count(&router, "config reloaded", 1).await;
    // The next check comes at once, not an hour later.
    eventually(
        Duration::from_secs(10),
        "the node checked healthy",
        || async { reaches(&router, "/checked-room").await.as_deref() == Some("jitsi-a") },
    )
    .await;
    assert_applied_live(&router);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_certificate_serves_new_handshakes() {
    let certs = Certs::new();
    let nodes = sim_nodes(1).await;
    let router = Router::start(&certs, &config(&certs, "", &node_entries(&nodes)));
    let before = certs.presented(router.https).await;
    let (mut ws, _) = websocket(&certs, &router, "/xmpp-websocket?room=rotation").await;

    let rotated = certs.rotate();
    assert_ne!(before, rotated);
    eventually(
        Duration::from_secs(15),
        "the new certificate on new handshakes",
        || async { certs.presented(router.https).await == rotated },
    )
    .await;
    echoes(&mut ws, "the connection from before the rotation goes on").await;
    assert_eq!(status(&router, "/rotation").await, 200);
}
