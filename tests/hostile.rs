//! Hostile input, as an attacker would send it: malformed request lines, header bombs, TLS
//! garbage, bad chunk sizes, PROXY headers nobody asked for, and a DNS-rebinding page driving
//! the admin API. Each gets its status with a reason, or a clean close, and the router keeps
//! serving everyone else without blaming a node.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;

/// Sends `bytes` on a new HTTPS (HTTP/1.1) connection; everything the router answered before
/// closing (or within 10 s).
async fn over_https(certs: &Certs, router: &Router, bytes: &[u8]) -> String {
    let mut tls = certs.connect(router.https, b"http/1.1").await;
    tls.write_all(bytes).await.unwrap();
    let (got, _) = read_until_closed(&mut tls, Duration::from_secs(10)).await;
    String::from_utf8_lossy(&got).into_owned()
}

/// Sends `bytes` on a new plain TCP connection to `addr`; what came back before it closed.
async fn over_tcp(addr: std::net::SocketAddr, bytes: &[u8]) -> (String, bool) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = tcp.write_all(bytes).await;
    let (got, closed) = read_until_closed(&mut tcp, Duration::from_secs(10)).await;
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

/// What the node received of `bytes` sent on a new HTTPS connection (the simulated node's
/// report of it); the router must answer 200.
async fn node_saw(certs: &Certs, router: &Router, bytes: &[u8]) -> serde_json::Value {
    let answer = over_https(certs, router, bytes).await;
    let (status, body) = status_and_body(&answer);
    assert_eq!(status, 200, "{answer}");
    serde_json::from_str(body.trim()).expect(body)
}

/// Sends `request` (HEADERS frames) on a new HTTP/2 connection; the body of stream 1's answer.
async fn h2_body(certs: &Certs, router: &Router, request: &[u8]) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut h2 = certs.connect(router.https, b"h2").await;
    h2.write_all(&[H2_PREFACE, request].concat()).await.unwrap();
    let (mut got, mut buf) = (Vec::new(), [0u8; 16 * 1024]);
    let data = |frames: &[H2Frame]| -> Option<Vec<u8>> {
        const DATA: u8 = 0;
        let ours = || frames.iter().filter(|f| f.kind == DATA && f.stream == 1);
        let ended = ours().any(|f| f.flags & 1 == 1);
        ended.then(|| ours().flat_map(|f| f.payload.clone()).collect())
    };
    loop {
        let read = tokio::time::timeout(Duration::from_secs(10), h2.read(&mut buf)).await;
        let n = read.expect("an HTTP/2 answer in 10 s").unwrap();
        assert!(n > 0, "closed before answering: {:?}", h2_frames(&got));
        got.extend_from_slice(&buf[..n]);
        if let Some(body) = data(&h2_frames(&got)) {
            return body;
        }
    }
}

/// The status code and body of an answer read off the wire.
fn status_and_body(answer: &str) -> (u16, &str) {
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_a_status_with_a_reason_and_others_are_served() {
    let certs = Certs::new();
    let nodes = sim_nodes(1).await;
    let mut router = Router::start(
        &certs,
        &config(&certs, "", &node_entries(&nodes))
            .replace("[server]\n", "[server]\nhttp_listen = \"127.0.0.1:0\"\n"),
    );
    // With Host and Connection: 100 header fields, hyper's and HAProxy's limit; one more is over.
    let many_small: String = (0..98).map(|i| format!("X-{i}: 1\r\n")).collect();
    let too_many: String = (0..99).map(|i| format!("X-{i}: 1\r\n")).collect();
    let bomb: String = (0..5000).map(|i| format!("b{i}: 1\r\n")).collect();
    let huge_line = format!("X-Long: {}\r\n", "y".repeat(40_000));
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("request line of one word", b"GET\r\n\r\n".to_vec(), 400, "malformed request"),
        ("binary garbage", b"\x00\x01\x02\xff\xfe garbage\r\n\r\n".to_vec(), 400, "malformed request"),
        ("bad version", b"GET / HTTP/9.9\r\nHost: x\r\n\r\n".to_vec(), 400, "malformed request"),
        ("header without colon", b"GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n".to_vec(), 400, "malformed request"),
        (
            "100 small header fields",
            format!("GET /standup HTTP/1.1\r\nHost: x\r\n{many_small}Connection: close\r\n\r\n").into_bytes(),
            200,
            "",
        ),
        (
            "101 small header fields",
            format!("GET /standup HTTP/1.1\r\nHost: x\r\n{too_many}Connection: close\r\n\r\n").into_bytes(),
            431,
            "or 100 header fields",
        ),
        (
            "header bomb: 5,000 fields",
            format!("GET /standup HTTP/1.1\r\nHost: x\r\n{bomb}\r\n").into_bytes(),
            431,
            "request head too large",
        ),
        (
            "one 40 KB header field",
            format!("GET /standup HTTP/1.1\r\nHost: x\r\n{huge_line}\r\n").into_bytes(),
            431,
            "request head too large",
        ),
        ("HTTP/1.1 without Host", b"GET /standup HTTP/1.1\r\n\r\n".to_vec(), 400, "missing Host header"),
        ("HTTP/1.0 without Host", b"GET /standup HTTP/1.0\r\n\r\n".to_vec(), 200, ""),
        (
            "CONNECT",
            b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nConnection: close\r\n\r\n".to_vec(),
            405,
            "CONNECT is not supported",
        ),
        (
            "TRACE",
            b"TRACE /traced HTTP/1.1\r\nHost: x\r\nCookie: secret=1\r\nConnection: close\r\n\r\n".to_vec(),
            405,
            "TRACE and TRACK are not supported",
        ),
        (
            "TRACK",
            b"TRACK /tracked HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
            405,
            "TRACE and TRACK are not supported",
        ),
        (
            "a dot segment for a room",
            b"GET /%2e%2E HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
            400,
            "room name is a dot segment",
        ),
        (
            "two Host fields",
            b"GET /hosted HTTP/1.1\r\nHost: meet.example.com\r\nHost: evil.example\r\nConnection: close\r\n\r\n".to_vec(),
            400,
            "more than one Host header",
        ),
        (
            "gzip under chunked",
            b"POST /http-bind?room=zipped HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(),
            501,
            "transfer codings other than one chunked",
        ),
        (
            "GET *",
            b"GET * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
            400,
            "request target * is for OPTIONS",
        ),
        (
            "OPTIONS *",
            b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
            200,
            "",
        ),
        (
            "bad chunk size",
            b"POST /http-bind?room=chunky HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_vec(),
            400,
            "request body could not be read",
        ),
        (
            "PROXY header to a router that takes none",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1111 443\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
            "malformed request",
        ),
    ];
    for (what, bytes, status, reason) in &cases {
        let answer = over_https(&certs, &router, bytes).await;
        let (got, body) = status_and_body(&answer);
        assert_eq!(got, *status, "{what}: {answer}");
        assert!(body.contains(reason), "{what}: no reason in {answer:?}");
        if *status != 200 {
            assert_eq!(body.lines().count(), 1, "{what}: one line: {body:?}");
        }
        if *status == 405 || what.starts_with("OPTIONS") {
            assert!(
                answer
                    .to_ascii_lowercase()
                    .contains("\r\nallow: get, head, post, options\r\n"),
                "{what}: a 405 names the methods allowed: {answer}"
            );
        }
    }

    // `chunked` beside a `Content-Length` (request smuggling's usual pair): the node gets the
    // chunks' bytes and no `Content-Length` that disagrees with them.
    let smuggled = b"POST /http-bind?room=standup HTTP/1.1\r\nHost: x\r\nx-sim-report: 1\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let seen = node_saw(&certs, &router, smuggled).await;
    assert_eq!(seen["body"], "hello", "{seen}");
    assert!(seen["headers"].get("content-length").is_none(), "{seen}");

    // RFC 6455 §4.1: a WebSocket handshake is a GET. A POST asking to upgrade is passed on as
    // a plain POST, without the upgrade.
    let posted = b"POST /xmpp-websocket?room=standup HTTP/1.1\r\nHost: x\r\nx-sim-report: 1\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nContent-Length: 2\r\n\r\nhi";
    let seen = node_saw(&certs, &router, posted).await;
    assert_eq!(
        (seen["method"].as_str(), seen["body"].as_str()),
        (Some("POST"), Some("hi"))
    );
    assert!(seen["headers"].get("upgrade").is_none(), "{seen}");

    // The host the node reads is the one the router read: an absolute-form target's authority
    // wins over `Host` (RFC 9112 §3.2.2), and so does HTTP/2's `:authority` (RFC 9113 §8.3.1).
    let absolute = b"GET http://meet.example.com/standup HTTP/1.1\r\nHost: other.example\r\nx-sim-report: 1\r\nConnection: close\r\n\r\n";
    let seen = node_saw(&certs, &router, absolute).await;
    assert_eq!(seen["headers"]["host"][0], "meet.example.com", "{seen}");
    assert_eq!(
        seen["headers"]["x-forwarded-host"][0], "meet.example.com",
        "{seen}"
    );
    let extra = [("host", "other.example"), ("x-sim-report", "1")];
    let body = h2_body(&certs, &router, &h2_get(1, "/standup", &extra)).await;
    let seen: serde_json::Value = serde_json::from_slice(&body).expect("the node's report");
    assert_eq!(seen["headers"]["host"][0], "localhost", "{seen}");

    // A refused request places no room, nor does `OPTIONS *`; the GET beside them does.
    let rooms = [
        ("traced", false),
        ("tracked", false),
        ("hosted", false),
        ("zipped", false),
        ("*", false),
        ("standup", true),
    ];
    for (room, pinned) in rooms {
        let status = reqwest::get(router.admin_url(&format!("/api/rooms/{room}")))
            .await
            .unwrap()
            .status();
        assert_eq!(status.is_success(), pinned, "room {room}: {status}");
    }

    // The plain-HTTP listener gives the same reasons, and so does PROXY garbage there.
    let http = router.http.unwrap();
    // Its `308` to HTTPS names the host the request did: an absolute-form target's.
    let absolute = b"GET http://meet.example.com/standup HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n";
    let (answer, _) = over_tcp(http, absolute).await;
    let location = format!(
        "\r\nlocation: https://meet.example.com:{}/standup\r\n",
        router.https.port()
    );
    assert!(answer.to_ascii_lowercase().contains(&location), "{answer}");
    let (answer, closed) = over_tcp(http, b"PROXY TCP4 192.0.2.1 192.0.2.2 1111 80\r\n\r\n").await;
    assert!(closed, "{answer}");
    let (status, body) = status_and_body(&answer);
    assert_eq!(status, 400, "{answer}");
    assert!(body.contains("malformed request"), "{answer}");

    // TLS garbage on the HTTPS port: a clean close.
    let (answer, closed) = over_tcp(
        router.https,
        b"\x16\x03\x01\x00\x05hello garbage that is not TLS",
    )
    .await;
    assert!(closed, "TLS garbage left the connection open");
    assert!(!answer.contains("HTTP/1.1"), "{answer}");
    let (answer, closed) =
        over_tcp(router.https, b"PROXY TCP4 192.0.2.1 192.0.2.2 1111 443\r\n").await;
    assert!(
        closed,
        "a PROXY header on the HTTPS port left the connection open"
    );
    assert!(!answer.contains("HTTP/1.1"), "{answer}");

    // Everyone else is served, and no node was blamed for any of it.
    let response = router
        .client()
        .get(router.url("/standup"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let m = metrics(&router).await;
    assert!(
        !m.contains_key("jitsi_router_requests_total{node=\"jitsi-a\",class=\"5xx\"}"),
        "{m:?}"
    );
    assert_eq!(m["jitsi_router_node_healthy{node=\"jitsi-a\"}"], 1.0);
    assert!(router.is_running());
}

/// The DNS-rebinding requests of a page on `evil.example` resolved to the admin listener.
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_listener_answers_only_its_own_host_and_origin() {
    let certs = Certs::new();
    let nodes = sim_nodes(2).await;
    let router = Router::start(
        &certs,
        &config(
            &certs,
            "[admin]\nallowed_hosts = [\"Admin.Example.org\"]\n",
            &node_entries(&nodes),
        ),
    );
    let admin = router.admin.unwrap();
    let port = admin.port();
    let client = reqwest::Client::new();
    let send = |method: reqwest::Method, path: &str, host: &str, origin: Option<&str>| {
        let mut request = client
            .request(method, format!("http://{admin}{path}"))
            .header("host", host);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    let evil = format!("evil.example:{port}");
    let evil_origin = format!("http://evil.example:{port}");
    for (method, path) in [
        (reqwest::Method::POST, "/api/nodes/jitsi-a/drain"),
        (reqwest::Method::GET, "/api/rooms"),
        (reqwest::Method::GET, "/metrics"),
        (reqwest::Method::PUT, "/api/nodes/attacker"),
        (reqwest::Method::DELETE, "/api/nodes/jitsi-b"),
    ] {
        let response = send(method.clone(), path, &evil, Some(&evil_origin))
            .await
            .unwrap();
        assert_eq!(response.status(), 421, "{method} {path}");
        assert!(response.text().await.unwrap().contains("Host"));
    }
    // Another port on a name of ours is not this listener either.
    let response = send(reqwest::Method::GET, "/api/status", "localhost:1", None)
        .await
        .unwrap();
    assert_eq!(response.status(), 421);
    let nodes_now: serde_json::Value = client
        .get(format!("http://{admin}/api/nodes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        nodes_now.as_array().unwrap().len(),
        2,
        "a node was added or removed"
    );
    assert_eq!(nodes_now[0]["draining"], false);

    // Its own names pass; a change's Origin must match in scheme, host and port.
    let own = format!("127.0.0.1:{port}");
    let local = format!("localhost:{port}");
    for host in [own.as_str(), local.as_str()] {
        let response = send(reqwest::Method::GET, "/api/status", host, None)
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{host}");
    }
    let drain = "/api/nodes/jitsi-a/drain";
    for origin in [
        format!("https://127.0.0.1:{port}"),
        format!("http://127.0.0.1:{}", port + 1),
        format!("http://localhost:{port}"),
        "null".to_owned(),
    ] {
        let response = send(reqwest::Method::POST, drain, &own, Some(&origin))
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{origin}");
    }
    let response = send(
        reqwest::Method::POST,
        drain,
        &own,
        Some(&format!("http://{own}")),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    // A reverse proxy's name from admin.allowed_hosts, with its https origin.
    let response = send(
        reqwest::Method::POST,
        "/api/nodes/jitsi-a/undrain",
        "admin.example.org",
        Some("https://admin.example.org"),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
}
