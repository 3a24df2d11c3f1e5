//! The public edge: PROXY protocol headers from trusted balancers, the client address nodes are
//! told, forwarding headers believed only from trusted proxies, and HSTS.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The balancer in front of the router: the only trusted peer.
const BALANCER: &str = "127.0.0.2";
/// A client connecting directly.
const DIRECT: &str = "127.0.0.1";

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

fn v2_ipv4(source: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.extend([0x21, 0x11, 0, 12]);
    h.extend(source);
    h.extend([127, 0, 0, 1]);
    h.extend(port.to_be_bytes());
    h.extend(443u16.to_be_bytes());
    h
}

fn v2_ipv6(source: &str, port: u16) -> Vec<u8> {
    let source: std::net::Ipv6Addr = source.parse().unwrap();
    let mut h = V2_SIGNATURE.to_vec();
    h.extend([0x21, 0x21, 0, 36]);
    h.extend(source.octets());
    h.extend(std::net::Ipv6Addr::LOCALHOST.octets());
    h.extend(port.to_be_bytes());
    h.extend(443u16.to_be_bytes());
    h
}

async fn tcp_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    socket.connect(to).await.unwrap()
}

/// Sends `header` from `from`, then a TLS `GET path` asking the simulated node to report what
/// it received; the headers the node saw, or why the connection failed.
async fn through(
    certs: &Certs,
    router: &Router,
    from: &str,
    header: &[u8],
    path: &str,
    extra: &[(&str, &str)],
) -> Result<Value, String> {
    let mut tcp = tcp_from(from, router.https).await;
    tcp.write_all(header).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(certs.client_config_alpn(b"http/1.1"))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut request = http::Request::get(path)
        .header("host", "localhost")
        .header("x-sim-report", "1");
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let response = send
        .send_request(request.body(Empty::<Bytes>::new()).unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let hsts = response.headers().get("strict-transport-security").cloned();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let mut seen: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    seen["hsts"] = hsts.map_or(Value::Null, |v| v.to_str().unwrap().into());
    Ok(seen)
}

/// The first header value the node saw.
fn seen(report: &Value, name: &str) -> String {
    report["headers"][name][0].as_str().unwrap_or("").to_owned()
}

async fn refusals(router: &Router, reason: &str) -> f64 {
    let name = format!("jitsi_router_proxy_header_refusals_total{{reason=\"{reason}\"}}");
    metrics(router).await.get(&name).copied().unwrap_or(0.0)
}

/// A router over one simulated node with `server` lines added to `[server]`.
async fn router_with(server: &str, sections: &str) -> (Certs, Vec<SimNode>, Router) {
    let certs = Certs::new();
    let nodes = sim_nodes(1).await;
    let text = config(&certs, sections, &node_entries(&nodes))
        .replace("[server]\n", &format!("[server]\n{server}\n"));
    let router = Router::start(&certs, &text);
    (certs, nodes, router)
}

/// A router behind the balancer, which sends PROXY headers.
async fn edge_router(server: &str) -> (Certs, Vec<SimNode>, Router) {
    let server = format!(
        "proxy_protocol = true\ntrusted_proxies = [\"{BALANCER}\", \"2001:db8:ffff::/48\"]\n{server}"
    );
    router_with(&server, "[limits]\ntls_handshake_timeout = \"1s\"\n").await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trusted_balancers_v1_and_v2_headers_name_the_client_the_node_is_told() {
    let (certs, _nodes, router) = edge_router("").await;
    let cases: [(Vec<u8>, &str); 4] = [
        (
            b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 443\r\n".to_vec(),
            "203.0.113.7",
        ),
        (
            b"PROXY TCP6 2001:db8::7 ::1 51000 443\r\n".to_vec(),
            "2001:db8::7",
        ),
        (v2_ipv4([198, 51, 100, 9], 40000), "198.51.100.9"),
        (v2_ipv6("2001:db8:5::9", 40000), "2001:db8:5::9"),
    ];
    for (header, client) in cases {
        let report = through(&certs, &router, BALANCER, &header, "/room", &[])
            .await
            .unwrap_or_else(|e| panic!("{client}: {e}"));
        assert_eq!(seen(&report, "x-forwarded-for"), client, "{report}");
        assert_eq!(seen(&report, "x-real-ip"), client, "{report}");
    }
    // A client's own forwarding headers behind the balancer are its claims: replaced.
    let header = b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 443\r\n";
    let claims = [
        ("x-forwarded-for", "10.6.6.6"),
        ("x-real-ip", "10.6.6.6"),
        ("forwarded", "for=10.6.6.6"),
    ];
    let report = through(&certs, &router, BALANCER, header, "/room", &claims)
        .await
        .unwrap();
    assert_eq!(seen(&report, "x-forwarded-for"), "203.0.113.7", "{report}");
    assert_eq!(seen(&report, "x-real-ip"), "203.0.113.7", "{report}");
    assert_eq!(seen(&report, "forwarded"), "", "{report}");
    // A LOCAL v2 header (the balancer's own health check) names no client: the balancer is it.
    let mut local = V2_SIGNATURE.to_vec();
    local.extend([0x20, 0x00, 0, 0]);
    let report = through(&certs, &router, BALANCER, &local, "/room", &[])
        .await
        .unwrap();
    assert_eq!(seen(&report, "x-real-ip"), BALANCER, "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_from_untrusted_peers_and_trusted_peers_without_one_are_refused() {
    let (certs, _nodes, router) = edge_router("").await;
    let header = b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 443\r\n";
    let refused = through(&certs, &router, DIRECT, header, "/room", &[]).await;
    assert!(
        refused.is_err(),
        "a header from an untrusted peer: {refused:?}"
    );
    let refused = through(
        &certs,
        &router,
        DIRECT,
        &v2_ipv4([1, 2, 3, 4], 1),
        "/room",
        &[],
    )
    .await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(refusals(&router, "untrusted").await, 2.0);

    let missing = through(&certs, &router, BALANCER, b"", "/room", &[]).await;
    assert!(missing.is_err(), "no header from the balancer: {missing:?}");
    assert_eq!(refusals(&router, "missing").await, 1.0);

    // A direct client without a header is served, its own claims replaced by its address.
    let claims = [("x-forwarded-for", "10.6.6.6"), ("x-real-ip", "10.6.6.6")];
    let report = through(&certs, &router, DIRECT, b"", "/room", &claims)
        .await
        .unwrap();
    assert_eq!(seen(&report, "x-forwarded-for"), DIRECT, "{report}");
    assert_eq!(seen(&report, "x-real-ip"), DIRECT, "{report}");
    let logs = router.logs();
    assert_eq!(
        logs.matches("connection closed at its PROXY header")
            .count(),
        1,
        "logged at most every 10 s:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_or_garbage_proxy_header_is_cut_by_the_handshake_timeout() {
    let (_certs, _nodes, router) = edge_router("").await;
    // Half a header, then nothing: cut after `tls_handshake_timeout` (1 s).
    let mut slow = tcp_from(BALANCER, router.https).await;
    slow.write_all(b"PROXY TCP4 203.0.").await.unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the connection is closed, not left hanging");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(refusals(&router, "timeout").await, 1.0);

    let endless = format!("PROXY {}", "x".repeat(200));
    for garbage in [
        &b"PROXY TCP4 999.1.1.1 1.1.1.1 1 2\r\n"[..],
        endless.as_bytes(),
    ] {
        let mut tcp = tcp_from(BALANCER, router.https).await;
        tcp.write_all(garbage).await.unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "closed at once");
    }
    assert_eq!(refusals(&router, "malformed").await, 2.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_http_listener_reads_the_header_too_and_hsts_marks_https_answers() {
    let server = "http_listen = \"127.0.0.1:0\"\nhsts = \"max-age=31536000\"";
    let (certs, _nodes, router) = edge_router(server).await;
    let http_addr = router.http.unwrap();
    let mut tcp = tcp_from(BALANCER, http_addr).await;
    tcp.write_all(b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 80\r\nGET /room HTTP/1.1\r\nHost: meet.example.com\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 308"), "{answer}");
    assert!(
        !answer.to_lowercase().contains("strict-transport-security"),
        "not on plain HTTP: {answer}"
    );

    let report = through(
        &certs,
        &router,
        BALANCER,
        b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 443\r\n",
        "/room",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(report["hsts"], "max-age=31536000", "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_proxy_protocol_a_trusted_proxys_forwarding_headers_are_kept() {
    let trusted = format!("trusted_proxies = [\"{BALANCER}\"]");
    let (certs, _nodes, router) = router_with(&trusted, "").await;
    let claims = [
        ("x-forwarded-for", "203.0.113.7"),
        ("x-real-ip", "203.0.113.7"),
        ("forwarded", "for=203.0.113.7"),
    ];
    let report = through(&certs, &router, BALANCER, b"", "/room", &claims)
        .await
        .unwrap();
    assert_eq!(
        seen(&report, "x-forwarded-for"),
        format!("203.0.113.7, {BALANCER}")
    );
    assert_eq!(seen(&report, "x-real-ip"), "203.0.113.7");
    assert_eq!(seen(&report, "forwarded"), "for=203.0.113.7");
    let report = through(&certs, &router, DIRECT, b"", "/room", &claims)
        .await
        .unwrap();
    assert_eq!(
        seen(&report, "x-forwarded-for"),
        DIRECT,
        "an untrusted client's claims go"
    );
    assert_eq!(seen(&report, "forwarded"), "");
}

/// The example config's list of an IPv4 and an IPv6 listener on one port: the IPv6 wildcard
/// would take IPv4 too (Linux's dual stack) and clash with the IPv4 one, so it is made
/// IPv6-only, and each address family reaches the router on its own listener.
#[tokio::test(flavor = "multi_thread")]
async fn an_ipv4_and_an_ipv6_wildcard_listener_share_a_port() {
    let certs = Certs::new();
    let nodes = sim_nodes(1).await;
    let port = closed_port();
    let text = config(&certs, "", &node_entries(&nodes)).replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = [\"127.0.0.1:{port}\", \"[::]:{port}\"]"),
        1,
    );
    let router = Router::start(&certs, &text);
    for addr in [format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
        let client = router.client_to(addr.parse().unwrap());
        let url = format!("https://localhost:{port}/DualStack");
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{addr}");
        assert_eq!(shard(&response), nodes[0].name(), "{addr}");
    }
}
