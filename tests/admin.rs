//! The admin API through the real binary: nodes, rooms, drain, readiness, auth, bad bodies.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;

async fn call(
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
    token: Option<&str>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn admin(
    router: &Router,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    call(method, router.admin_url(path), body, None).await
}

async fn get(router: &Router, path: &str) -> (u16, Value) {
    admin(router, reqwest::Method::GET, path, None).await
}

async fn node_of(router: &Router, path: &str) -> String {
    shard(&router.client().get(router.url(path)).send().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_are_listed_registered_removed_and_drained() {
    let certs = Certs::new();
    let nodes = sim_nodes(3).await;
    let router = Router::start(&certs, &config(&certs, "", &node_entries(&nodes[..2])));
    for i in 0..20 {
        node_of(&router, &format!("/listed-{i}")).await;
    }
    let (status, list) = get(&router, "/api/nodes").await;
    assert_eq!(status, 200);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    for field in [
        "name",
        "upstream",
        "public_url",
        "instance",
        "cpu",
        "cpu_estimate",
        "healthy",
        "draining",
        "rooms",
        "last_health_check",
        "jvb_server_ids",
        "weight",
    ] {
        assert!(list[0].get(field).is_some(), "{field} missing: {}", list[0]);
    }
    let rooms: u64 = list.iter().map(|n| n["rooms"].as_u64().unwrap()).sum();
    assert_eq!(rooms, 20);

    // Register jitsi-c at runtime.
    let put = |name: &'static str, body: Value| {
        let path = format!("/api/nodes/{name}");
        let router = &router;
        async move { admin(router, reqwest::Method::PUT, &path, Some(body)).await }
    };
    assert_eq!(list[0]["weight"], 1.0, "{}", list[0]);
    let (status, _) = put(
        "jitsi-c",
        json!({ "upstream": nodes[2].url(), "jvb_server_ids": ["jvb-c"], "weight": 2.5 }),
    )
    .await;
    assert_eq!(status, 201);
    let listed = get(&router, "/api/nodes").await.1;
    assert_eq!(listed[2]["weight"], 2.5, "{listed}");
    let (status, body) = put(
        "jitsi-d",
        json!({ "upstream": nodes[2].url(), "weight": 0 }),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("weight = 0"),
        "{body}"
    );
    assert_eq!(
        router
            .client()
            .get(router.url("/colibri-ws/jvb-c/x/y"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let (status, body) = put("jitsi-d", json!({ "upstream": "ftp://nowhere" })).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("upstream = \"ftp://nowhere\""),
        "{body}"
    );
    let (status, body) = put(
        "jitsi-d",
        json!({ "upstream": nodes[2].url(), "colour": "red" }),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("colour"), "{body}");
    let (status, body) = put(
        "jitsi-d",
        json!({ "upstream": nodes[2].url(), "jvb_server_ids": ["jvb-c"] }),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    let (status, _) = admin(&router, reqwest::Method::PUT, "/api/nodes/jitsi-d", None).await;
    assert_eq!(status, 400, "an empty body is bad JSON");

    // Runtime changes survive a reload of the unchanged file.
    router.signal("HUP");
    log_shows(&router, "config reloaded").await;
    assert_eq!(
        get(&router, "/api/nodes").await.1.as_array().unwrap().len(),
        3
    );

    // Drain jitsi-a: its rooms stay, new rooms avoid it; undrain.
    let on_a: Vec<String> = (0..20).map(|i| format!("/listed-{i}")).collect();
    let mut kept = Vec::new();
    for path in &on_a {
        if node_of(&router, path).await == "jitsi-a" {
            kept.push(path.clone());
        }
    }
    let (status, body) = admin(
        &router,
        reqwest::Method::POST,
        "/api/nodes/jitsi-a/drain",
        None,
    )
    .await;
    assert_eq!((status, body["draining"].as_bool()), (200, Some(true)));
    for path in &kept {
        assert_eq!(
            node_of(&router, path).await,
            "jitsi-a",
            "{path} left the draining node"
        );
    }
    for i in 0..20 {
        assert_ne!(
            node_of(&router, &format!("/after-drain-{i}")).await,
            "jitsi-a"
        );
    }
    let (status, _) = admin(
        &router,
        reqwest::Method::POST,
        "/api/nodes/jitsi-a/undrain",
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = admin(
        &router,
        reqwest::Method::POST,
        "/api/nodes/nope/drain",
        None,
    )
    .await;
    assert_eq!(status, 404);

    // Remove jitsi-b: its rooms move on their next request.
    let (status, _) = admin(&router, reqwest::Method::DELETE, "/api/nodes/jitsi-b", None).await;
    assert_eq!(status, 200);
    for path in &on_a {
        assert_ne!(node_of(&router, path).await, "jitsi-b");
    }
    let (status, _) = admin(&router, reqwest::Method::DELETE, "/api/nodes/jitsi-b", None).await;
    assert_eq!(status, 404);
    let (status, _) = admin(&router, reqwest::Method::GET, "/api/nodes/jitsi-b", None).await;
    assert_eq!(status, 404, "a removed node is not found");
    let (status, node) = admin(&router, reqwest::Method::GET, "/api/nodes/jitsi-a", None).await;
    assert_eq!(
        (status, node["name"].as_str()),
        (200, Some("jitsi-a")),
        "{node}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rooms_are_listed_looked_up_moved_and_unpinned() {
    let certs = Certs::new();
    let nodes = sim_nodes(2).await;
    let router = Router::start(&certs, &config(&certs, "", &node_entries(&nodes)));
    let first = node_of(&router, "/MyRoom").await;
    for _ in 0..4 {
        node_of(&router, "/http-bind?room=myroom").await;
    }
    node_of(&router, "/acme/Quiet").await;

    let (status, list) = get(&router, "/api/rooms").await;
    assert_eq!(status, 200);
    assert_eq!(list["total"], 2);
    assert_eq!(
        list["rooms"][0]["room"], "myroom",
        "most requested first: {list}"
    );
    assert_eq!(list["rooms"][0]["requests"], 5);
    assert_eq!(list["rooms"][0]["node"], first.as_str());
    assert!(list["rooms"][0]["pinned_at"].as_f64().unwrap() > 1.7e9);
    assert_eq!(
        get(&router, "/api/rooms?limit=1").await.1["rooms"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        get(&router, &format!("/api/rooms?node={first}")).await.1["rooms"][0]["room"],
        "myroom"
    );
    assert_eq!(get(&router, "/api/rooms?limit=lots").await.0, 400);
    assert_eq!(get(&router, "/api/rooms?node=nope").await.0, 404);

    let (status, room) = get(&router, "/api/rooms/MYROOM").await;
    assert_eq!((status, room["node"].as_str()), (200, Some(first.as_str())));
    assert_eq!(
        get(&router, "/api/rooms/acme/quiet").await.0,
        200,
        "tenant rooms by their full key"
    );
    assert_eq!(get(&router, "/api/rooms/bad%0Aname").await.0, 400);
    assert_eq!(get(&router, "/api/rooms/never-seen").await.0, 404);

    let other = if first == "jitsi-a" {
        "jitsi-b"
    } else {
        "jitsi-a"
    };
    let (status, moved) = admin(
        &router,
        reqwest::Method::PUT,
        "/api/rooms/myroom",
        Some(json!({ "node": other })),
    )
    .await;
    assert_eq!(
        (status, moved["from"].as_str()),
        (200, Some(first.as_str()))
    );
    assert_eq!(
        node_of(&router, "/myroom").await,
        other,
        "the moved pin routes the room"
    );
    let (status, _) = admin(
        &router,
        reqwest::Method::PUT,
        "/api/rooms/myroom",
        Some(json!({ "node": "nope" })),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = admin(
        &router,
        reqwest::Method::PUT,
        "/api/rooms/myroom",
        Some(json!({ "nod": other })),
    )
    .await;
    assert_eq!(status, 400);

    let (status, _) = admin(&router, reqwest::Method::DELETE, "/api/rooms/myroom", None).await;
    assert_eq!(status, 200);
    assert_eq!(get(&router, "/api/rooms/myroom").await.0, 404);
    assert_eq!(get(&router, "/api/nope").await.0, 404);
}

/// A token rotated in the config file is asked for from the next request after the reload;
/// the old one is refused from then on.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_token_applies_on_reload() {
    let certs = Certs::new();
    let nodes = sim_nodes(1).await;
    let with_token = |token: &str| {
        let sections = format!("[admin]\ntoken = \"{token}\"\n");
        config(&certs, &sections, &node_entries(&nodes))
    };
    let (old, new) = ("0123456789abcdef-old-token", "0123456789abcdef-new-token");
    let router = Router::start(&certs, &with_token(old));
    let url = router.admin_url("/api/nodes");
    let status = |token| {
        let url = url.clone();
        async move { call(reqwest::Method::GET, url, None, Some(token)).await.0 }
    };
    assert_eq!((status(old).await, status(new).await), (200, 401));

    std::fs::write(router.config_path(), with_token(new)).unwrap();
    eventually(Duration::from_secs(10), "the new token taken", || async {
        status(new).await == 200
    })
    .await;
    assert_eq!(status(old).await, 401, "the old token is refused");
    assert_applied_live(&router);
}

/// A reload cannot leave an admin listener off loopback without a token: moving the listener
/// to loopback takes a restart, and until then the token stays needed.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_keeps_the_token_of_a_listener_off_loopback() {
    let certs = Certs::new();
    let nodes = sim_nodes(1).await;
    let token = "0123456789abcdef-test-token";
    let text = config(
        &certs,
        &format!("[admin]\ntoken = \"{token}\"\n"),
        &node_entries(&nodes),
    )
    .replace(
        "admin_listen = \"127.0.0.1:0\"",
        "admin_listen = \"0.0.0.0:0\"",
    );
    let router = Router::start(&certs, &text);
    let port = router.admin.expect("admin listener").port();
    let url = format!("http://localhost:{port}/api/nodes");
    let status = |token| {
        let url = url.clone();
        async move { call(reqwest::Method::GET, url, None, token).await.0 }
    };
    assert_eq!((status(None).await, status(Some(token)).await), (401, 200));

    // Back to loopback, and no token: valid for a fresh start, not for this running listener.
    let open = config(&certs, "", &node_entries(&nodes));
    std::fs::write(router.config_path(), open).unwrap();
    eventually(Duration::from_secs(10), "the reload rejected", || async {
        router.logs().contains("reload rejected")
    })
    .await;
    assert!(
        router.logs().contains("stays on 0.0.0.0:0 (off loopback)"),
        "{}",
        router.logs()
    );
    assert_eq!(status(None).await, 401, "the token is still needed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_guards_every_endpoint_but_open_metrics() {
    let certs = Certs::new();
    let nodes = sim_nodes(1).await;
    let token = "0123456789abcdef-test-token";
    let sections = format!("[admin]\ntoken = \"{token}\"\nopen_metrics = true\n");
    let router = Router::start(&certs, &config(&certs, &sections, &node_entries(&nodes)));
    let nodes_url = router.admin_url("/api/nodes");
    assert_eq!(
        call(reqwest::Method::GET, nodes_url.clone(), None, None)
            .await
            .0,
        401
    );
    assert_eq!(
        call(
            reqwest::Method::GET,
            nodes_url.clone(),
            None,
            Some("0123456789abcdef-wrong-token")
        )
        .await
        .0,
        401
    );
    assert_eq!(
        call(reqwest::Method::GET, nodes_url, None, Some(token))
            .await
            .0,
        200
    );
    assert_eq!(
        get(&router, "/healthz").await.0,
        200,
        "open_metrics leaves /healthz open"
    );
    assert_eq!(get(&router, "/readyz").await.0, 401);
    assert_eq!(get(&router, "/metrics").await.0, 200, "and /metrics");
    assert_eq!(get(&router, "/api/status").await.0, 401);
    assert_eq!(
        get(&router, "/").await.0,
        200,
        "the dashboard page holds no data"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_and_cross_origin_changes() {
    let certs = Certs::new();
    let nodes = sim_nodes(2).await;
    let router = Router::start(&certs, &config(&certs, "", &node_entries(&nodes)));
    node_of(&router, "/status-room").await;
    let (status, body) = get(&router, "/api/status").await;
    assert_eq!(status, 200);
    assert_eq!(body["mode"], "proxy");
    assert_eq!(body["nodes"], 2);
    assert_eq!(body["healthy_nodes"], 2);
    assert_eq!(body["pinned_rooms"], 1);
    assert_eq!(body["websocket_tunnels"], 0);
    assert!(
        body["snapshot_age_seconds"].is_null(),
        "no prometheus: {body}"
    );

    let page = reqwest::get(router.admin_url("/")).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().await.unwrap().contains("/api/nodes"));

    // A page on another origin cannot drain a node through the operator's browser.
    let drain = |origin: String| {
        reqwest::Client::new()
            .post(router.admin_url("/api/nodes/jitsi-a/drain"))
            .header("origin", origin)
            .send()
    };
    let refused = drain("http://evil.example".into()).await.unwrap();
    assert_eq!(refused.status(), 403);
    assert!(refused.text().await.unwrap().contains("Origin"));
    assert_eq!(get(&router, "/api/nodes").await.1[0]["draining"], false);
    let own = format!("http://{}", router.admin.unwrap());
    assert_eq!(drain(own).await.unwrap().status(), 200);
    assert_eq!(get(&router, "/api/nodes").await.1[0]["draining"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_node_health() {
    let certs = Certs::new();
    let nodes = sim_nodes(1).await;
    let health = "[health]\ninterval = \"200ms\"\nfall = 1\nrise = 1\n";
    let router = Router::start(&certs, &config(&certs, health, &node_entries(&nodes)));
    assert_eq!(get(&router, "/readyz").await.0, 200);
    nodes[0].set_healthy(false);
    eventually(Duration::from_secs(10), "readyz to fail", || async {
        get(&router, "/readyz").await.0 == 503
    })
    .await;
    assert_eq!(
        get(&router, "/healthz").await.0,
        200,
        "the process itself is alive"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_websocket_keeps_its_room_pinned() {
    let certs = Certs::new();
    let nodes = sim_nodes(2).await;
    let router = Router::start(
        &certs,
        &config(
            &certs,
            "[routing]\npin_idle_timeout = \"1s\"\n",
            &node_entries(&nodes),
        ),
    );
    let (mut ws, _) = websocket(&certs, &router, "/xmpp-websocket?room=LongCall").await;
    node_of(&router, "/ShortCall").await;
    // Three idle timeouts later: the room with a WebSocket open is still pinned, the other is not.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        get(&router, "/api/rooms/longcall").await.0,
        200,
        "an open WebSocket keeps its room"
    );
    assert_eq!(
        get(&router, "/api/rooms/shortcall").await.0,
        404,
        "an idle room is forgotten"
    );
    echoes(&mut ws, "still talking").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn room_lookups_accept_the_room_names_the_proxy_accepts() {
    let certs = Certs::new();
    let nodes = sim_nodes(2).await;
    let limits = "[limits]\nmax_room_chars = 300\n";
    let router = Router::start(&certs, &config(&certs, limits, &node_entries(&nodes)));
    let long = "r".repeat(250);
    let node = node_of(&router, &format!("/{long}")).await;
    let (status, room) = get(&router, &format!("/api/rooms/{long}")).await;
    assert_eq!((status, room["node"].as_str()), (200, Some(node.as_str())));
    let too_long = "r".repeat(301);
    let (status, answer) = get(&router, &format!("/api/rooms/{too_long}")).await;
    assert_eq!(status, 400, "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listed_node_sent_back_as_it_is_changes_nothing() {
    let certs = Certs::new();
    let nodes = sim_nodes(2).await;
    let mut text = config(&certs, "", &node_entries(&nodes)[..1]);
    text.push_str(&format!(
        "\n[[nodes]]\nname = \"jitsi-b\"\nupstream = {:?}\ndrain = true\njvb_server_ids = [\"jvb-b\"]\nweight = 3.0\n",
        nodes[1].url()
    ));
    let router = Router::start(&certs, &text);
    // jitsi-a drained at run time, jitsi-b by its config.
    let (status, _) = admin(
        &router,
        reqwest::Method::POST,
        "/api/nodes/jitsi-a/drain",
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (_, before) = get(&router, "/api/nodes").await;
    for node in before.as_array().unwrap() {
        let name = node["name"].as_str().unwrap();
        let path = format!("/api/nodes/{name}");
        let (status, body) = admin(&router, reqwest::Method::PUT, &path, Some(node.clone())).await;
        assert_eq!((status, &body["created"]), (200, &json!(false)), "{body}");
    }
    let (_, after) = get(&router, "/api/nodes").await;
    let fields = |list: &Value| -> Vec<Value> {
        (list.as_array().unwrap().iter())
            .map(|n| {
                json!([
                    n["name"],
                    n["upstream"],
                    n["jvb_server_ids"],
                    n["drain"],
                    n["draining"],
                    n["weight"]
                ])
            })
            .collect()
    };
    assert_eq!(fields(&after), fields(&before));
    assert_eq!(before[1]["jvb_server_ids"], json!(["jvb-b"]), "{before}");
    assert_eq!(before[1]["weight"], 3.0, "{before}");
    assert_eq!(
        (
            before[0]["draining"].as_bool(),
            before[1]["draining"].as_bool()
        ),
        (Some(true), Some(true)),
        "{before}"
    );

    let mut renamed = before[0].clone();
    renamed["name"] = json!("jitsi-z");
    let (status, body) = admin(
        &router,
        reqwest::Method::PUT,
        "/api/nodes/jitsi-a",
        Some(renamed),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let reason = body["error"].as_str().unwrap();
    assert!(
        reason.contains("jitsi-z") && reason.contains("jitsi-a"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_at_its_room_cap_shows_full_and_takes_no_new_room() {
    let certs = Certs::new();
    let nodes = sim_nodes(2).await;
    let text = config(&certs, "", &node_entries(&nodes)) + "max_rooms = 3\n";
    let router = Router::start(&certs, &text);
    let mut on_b = Vec::new();
    for i in 0..30 {
        let room = format!("/capped-{i}");
        if node_of(&router, &room).await == "jitsi-b" {
            on_b.push(room);
        }
    }
    assert_eq!(on_b.len(), 3, "jitsi-b holds at most three rooms: {on_b:?}");
    let (_, list) = get(&router, "/api/nodes").await;
    assert_eq!(
        (list[1]["max_rooms"].clone(), list[1]["full"].clone()),
        (3.into(), true.into())
    );
    assert_eq!(list[0]["full"], false);
    for room in &on_b {
        assert_eq!(
            node_of(&router, room).await,
            "jitsi-b",
            "its rooms keep coming"
        );
    }
}
