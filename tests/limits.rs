//! Caps of `[limits]`: connections in all and per client, new rooms per client, HTTP/2
//! streams a client cancels; and the open-file limit the router raises for itself.

mod support;

use std::net::IpAddr;
use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Whether a TLS connection from `from` is served: a request on it gets an answer.
async fn served_from(certs: &Certs, router: &Router, from: &str) -> bool {
    let Ok(mut tls) = certs
        .connect_from(ip(from), router.https, b"http/1.1")
        .await
    else {
        return false;
    };
    if tls
        .write_all(b"GET /about HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let (got, _) = read_until_closed(&mut tls, Duration::from_secs(10)).await;
    got.starts_with(b"HTTP/1.1 200")
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_a_cap_are_closed_at_accept_and_open_ones_carry_on() {
    let certs = Certs::new();
    let nodes = sim_nodes(1).await;
    let limits = "[limits]\nmax_connections = 6\nmax_connections_per_client = 3\n";
    let router = Router::start(&certs, &config(&certs, limits, &node_entries(&nodes)));

    // Three held from one address, the fourth from it is refused; another address still gets in.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(certs.connect(router.https, b"http/1.1").await);
    }
    assert!(!served_from(&certs, &router, "127.0.0.1").await);
    for _ in 0..3 {
        held.push(
            certs
                .connect_from(ip("127.0.0.2"), router.https, b"http/1.1")
                .await
                .unwrap(),
        );
    }
    // Six in all: a third address is refused too.
    assert!(!served_from(&certs, &router, "127.0.0.3").await);
    let m = metrics(&router).await;
    assert_eq!(m.get("jitsi_router_client_connections"), Some(&6.0));
    assert_eq!(
        m.get("jitsi_router_limited_total{limit=\"max_connections_per_client\"}"),
        Some(&1.0)
    );
    assert_eq!(
        m.get("jitsi_router_limited_total{limit=\"max_connections\"}"),
        Some(&1.0)
    );
    assert!(router
        .logs()
        .contains("connection over a cap closed at accept"));

    // The held connections were not harmed: each still gets its answer.
    for tls in &mut held {
        tls.write_all(b"GET /about HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let (got, _) = read_until_closed(tls, Duration::from_secs(10)).await;
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&got)
        );
    }
    // Closed, they make room again.
    drop(held);
    eventually(
        Duration::from_secs(5),
        "room for new connections",
        || async { served_from(&certs, &router, "127.0.0.3").await },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_client_creates_rooms_at_most_at_its_rate() {
    let certs = Certs::new();
    let nodes = sim_nodes(2).await;
    let limits = "[limits]\nnew_rooms_per_second = 1\nnew_room_burst = 3\n";
    let router = Router::start(&certs, &config(&certs, limits, &node_entries(&nodes)));
    let client = router.client();
    let get = |room: &str| client.get(router.url(&format!("/{room}"))).send();

    for room in ["one", "two", "three"] {
        assert_eq!(get(room).await.unwrap().status(), 200, "{room}");
    }
    let refused = get("four").await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    let reason = refused.text().await.unwrap();
    assert!(reason.contains("too many new rooms"), "{reason}");
    // Rooms that exist are not new: still served, and take nothing from the bucket.
    for _ in 0..10 {
        assert_eq!(get("one").await.unwrap().status(), 200);
        let bosh = client
            .post(router.url("/http-bind?room=two"))
            .body("<body/>")
            .send()
            .await
            .unwrap();
        assert_eq!(bosh.status(), 200);
    }
    // The refused room was not pinned.
    let (status, _) = admin_get(&router, "/api/rooms/four").await;
    assert_eq!(status, 404);
    // Another client has its own bucket.
    let other = router.client_from(ip("127.0.0.2"));
    let response = other.get(router.url("/four")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    // And the first gets a token back each second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get("five").await.unwrap().status(), 200);
    assert_eq!(
        metric(
            &router,
            "jitsi_router_limited_total{limit=\"new_rooms_per_second\"}"
        )
        .await,
        1.0
    );
}

async fn admin_get(router: &Router, path: &str) -> (u16, serde_json::Value) {
    let response = reqwest::get(router.admin_url(path)).await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// An HTTP/2 connection to the router with a request sender.
async fn h2_client(
    certs: &Certs,
    router: &Router,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tls = certs.connect(router.https, b"h2").await;
    let (client, connection) = h2::client::handshake(tls).await.unwrap();
    (client, tokio::spawn(connection))
}

/// Sends a request for `path`, waits until the node has it, then cancels the stream.
async fn send_and_cancel(
    client: &mut h2::client::SendRequest<bytes::Bytes>,
    router: &Router,
    node: &RawNode,
    path: &str,
) {
    let before = node.requests();
    let request = http::Request::get(router.url(path)).body(()).unwrap();
    let mut ready = client.clone().ready().await.unwrap();
    let (answer, mut stream) = ready.send_request(request, true).unwrap();
    eventually(
        Duration::from_secs(5),
        "the node to get the request",
        || async { node.requests() > before },
    )
    .await;
    stream.send_reset(h2::Reason::CANCEL);
    drop(answer);
    *client = ready;
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_a_client_cancels_keep_their_upstream_connection() {
    let certs = Certs::new();
    let node = RawNode::start(RawAnswer::After(Duration::from_millis(200))).await;
    let router = Router::start(&certs, &config(&certs, "", &[("slow", node.url())]));
    let (mut client, _connection) = h2_client(&certs, &router).await;
    for i in 0..15 {
        send_and_cancel(
            &mut client,
            &router,
            &node,
            &format!("/cancelled-{}", i % 3),
        )
        .await;
        // The abandoned exchange finishes, and its connection goes back to the pool.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(node.requests(), 15);
    assert!(
        node.connections() <= 2,
        "{} upstream connections for 15 cancelled streams",
        node.connections()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_cancelling_too_many_streams_gets_goaway() {
    let certs = Certs::new();
    let node = RawNode::start(RawAnswer::After(Duration::from_secs(5))).await;
    let limits = "[limits]\nh2_max_cancelled_streams = 4\n";
    let router = Router::start(&certs, &config(&certs, limits, &[("slow", node.url())]));
    let (mut client, connection) = h2_client(&certs, &router).await;
    for i in 0..4 {
        send_and_cancel(&mut client, &router, &node, &format!("/room-{i}")).await;
    }
    assert!(
        !connection.is_finished(),
        "four cancels are within the limit"
    );
    send_and_cancel(&mut client, &router, &node, "/room-5").await;
    let ended = tokio::time::timeout(Duration::from_secs(10), connection).await;
    assert!(ended.is_ok(), "no GOAWAY after the fifth cancelled stream");
    assert_eq!(
        metric(
            &router,
            "jitsi_router_limited_total{limit=\"h2_max_cancelled_streams\"}"
        )
        .await,
        1.0
    );
    // Other connections are served.
    let response = router.client().get(router.url("/about")).send().await;
    assert!(response.is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_router_raises_its_open_file_limit_and_sizes_its_cap_by_it() {
    let certs = Certs::new();
    let nodes = sim_nodes(1).await;
    let router = Router::start_under(
        &certs,
        &config(&certs, "", &node_entries(&nodes)),
        &["prlimit", "--nofile=256:4096", "--"],
        &[],
    );
    log_shows(&router, "open_files=4096 max_connections=2016").await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", router.pid())).unwrap();
    let files = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        files.split_whitespace().nth(3),
        Some("4096"),
        "soft limit not raised: {files}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rapid_reset_flood_gets_goaway() {
    let certs = Certs::new();
    let node = RawNode::start(RawAnswer::After(Duration::from_millis(50))).await;
    // Only the limit on streams reset before the router read them is in play.
    let limits = "[limits]\nh2_max_pending_reset_streams = 5\nh2_max_cancelled_streams = 100000\n";
    let router = Router::start(&certs, &config(&certs, limits, &[("slow", node.url())]));
    let (client, connection) = h2_client(&certs, &router).await;
    let mut sent = 0;
    for i in 0..2000 {
        let Ok(mut ready) = client.clone().ready().await else {
            break;
        };
        let request = http::Request::get(router.url(&format!("/flood-{}", i % 50)))
            .body(())
            .unwrap();
        let Ok((_, mut stream)) = ready.send_request(request, true) else {
            break;
        };
        stream.send_reset(h2::Reason::CANCEL);
        sent += 1;
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), connection).await;
    let ended = ended.expect("a rapid-reset flood was not stopped");
    assert!(
        ended.unwrap().is_err(),
        "the flood's connection ends with an error (GOAWAY)"
    );
    assert!(
        node.requests() < sent,
        "{} of {sent} reset streams reached the node",
        node.requests()
    );
    let response = router
        .client()
        .get(router.url("/about"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "others are served");
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_tunnels_count_under_the_caps_while_they_are_open() {
    let certs = Certs::new();
    let nodes = sim_nodes(1).await;
    let limits = "[limits]\nmax_connections_per_client = 2\n";
    let router = Router::start(&certs, &config(&certs, limits, &node_entries(&nodes)));
    let (mut first, _) = websocket(&certs, &router, "/xmpp-websocket?room=capped").await;
    let (second, _) = websocket(&certs, &router, "/xmpp-websocket?room=capped").await;
    // Two tunnels are this address's two connections, though their HTTP is long over.
    assert!(!served_from(&certs, &router, "127.0.0.1").await);
    assert_eq!(
        metric(&router, "jitsi_router_client_connections").await,
        2.0
    );
    echoes(&mut first, "still open").await;
    drop(second);
    eventually(
        Duration::from_secs(5),
        "the closed tunnel's place",
        || async { served_from(&certs, &router, "127.0.0.1").await },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_streams_past_the_limit_get_goaway() {
    let certs = Certs::new();
    let nodes = sim_nodes(1).await;
    let limits = "[limits]\nh2_max_local_reset_streams = 5\n";
    let router = Router::start(&certs, &config(&certs, limits, &node_entries(&nodes)));
    let mut tls = certs.connect(router.https, b"h2").await;
    // GET / with a `connection` header, which HTTP/2 forbids: each stream is reset.
    let mut frames = H2_PREFACE.to_vec();
    for stream in (1u32..=21).step_by(2) {
        frames.extend_from_slice(&h2_get(stream, "/", &[("connection", "close")]));
    }
    tls.write_all(&frames).await.unwrap();
    let (got, _) = read_until_closed(&mut tls, Duration::from_secs(10)).await;
    let frames = h2_frames(&got);
    let resets = frames
        .iter()
        .filter(|f| f.kind == H2Frame::RST_STREAM)
        .count();
    let goaway = frames.iter().find(|f| f.kind == H2Frame::GOAWAY);
    let goaway = goaway.unwrap_or_else(|| panic!("no GOAWAY after {resets} resets: {frames:?}"));
    // ENHANCE_YOUR_CALM
    assert_eq!(goaway.error_code(), 0xb, "after {resets} resets");
    assert!(resets <= 6, "{resets} streams reset before GOAWAY");
}

/// The caps an operator tightens while a client floods the router apply on reload, without a
/// restart that would cut every open WebSocket: the next connection and the next new room are
/// held to them, and connections already open over a lowered cap stay.
#[tokio::test(flavor = "multi_thread")]
async fn caps_and_rates_lowered_by_reload_hold_for_the_next_connection_and_room() {
    let certs = Certs::new();
    let nodes = sim_nodes(1).await;
    let router = Router::start(&certs, &config(&certs, "", &node_entries(&nodes)));
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(certs.connect(router.https, b"http/1.1").await);
    }
    assert!(served_from(&certs, &router, "127.0.0.1").await);

    let limits = "[limits]\nmax_connections_per_client = 2\nnew_rooms_per_second = 0.1\nnew_room_burst = 2\n";
    let path = router.config_path();
    std::fs::write(&path, config(&certs, limits, &node_entries(&nodes))).unwrap();
    log_shows(&router, "config reloaded").await;
    assert!(!served_from(&certs, &router, "127.0.0.1").await);
    let flooding = router.client_from(ip("127.0.0.3"));
    let get = |room: &str| flooding.get(router.url(&format!("/{room}"))).send();
    for room in ["one", "two"] {
        assert_eq!(get(room).await.unwrap().status(), 200, "{room}");
    }
    assert_eq!(get("three").await.unwrap().status(), 429);
    assert_applied_live(&router);
    // The connections open before the reload carry on.
    for tls in &mut held {
        tls.write_all(b"GET /about HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let (got, _) = read_until_closed(tls, Duration::from_secs(10)).await;
        assert!(got.starts_with(b"HTTP/1.1 200"));
    }

    // The rest of `[limits]` is read at start, and a reload that changes it says so.
    let timeouts = format!("{limits}keepalive_timeout = \"30s\"\n");
    std::fs::write(&path, config(&certs, &timeouts, &node_entries(&nodes))).unwrap();
    log_shows(&router, "only after a restart").await;
    let logs = router.logs();
    assert!(logs.contains("limits.keepalive_timeout"), "{logs}");
    assert!(!logs.contains("limits.new_room"), "{logs}");
}
