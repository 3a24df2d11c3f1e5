//! Every state of a client connection has a time limit (`[limits]`): silent connections after
//! TLS, half an HTTP/2 preface, an unfinished header block, a head dripping in, idle
//! keep-alive on both HTTP versions, a request body that stops, a node's body that stops, a
//! client that stops reading, a WebSocket client whose window stays shut, a node that reads
//! nothing of a WebSocket, and an idle client the kernel probes.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::AsyncWriteExt;

/// Limits short enough to watch each one run out.
const SHORT: &str = "[limits]\nrequest_head_timeout = \"1s\"\nkeepalive_timeout = \"2s\"\nrequest_body_timeout = \"1s\"\nresponse_body_timeout = \"1s\"\nsend_timeout = \"1s\"\n";

/// Waits for `stream` to be closed by the router, at most `limit`; what it sent meanwhile and
/// how long it took.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    limit: Duration,
    what: &str,
) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let (got, closed) = read_until_closed(stream, limit).await;
    assert!(closed, "{what}: still open after {limit:?}");
    (got, started.elapsed())
}

/// A router with [`SHORT`] limits in front of one simulated node.
async fn short_limits_router() -> (Certs, Vec<SimNode>, Router) {
    let certs = Certs::new();
    let nodes = sim_nodes(1).await;
    let router = Router::start(&certs, &config(&certs, SHORT, &node_entries(&nodes)));
    (certs, nodes, router)
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_that_never_send_a_request_are_closed() {
    let (certs, _nodes, router) = short_limits_router().await;

    let mut silent_h1 = certs.connect(router.https, b"http/1.1").await;
    let mut silent_h2 = certs.connect(router.https, b"h2").await;
    let mut half_preface = certs.connect(router.https, b"h2").await;
    half_preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    // The preface, empty SETTINGS, then HEADERS for stream 1 without END_HEADERS: the header
    // block never finishes.
    let mut open_block = certs.connect(router.https, b"h2").await;
    let mut frames = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frames.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    frames.extend_from_slice(&[0, 0, 1, 1, 1, 0, 0, 0, 1, 0x82]);
    open_block.write_all(&frames).await.unwrap();

    let (got, _) = closed_within(&mut silent_h1, Duration::from_secs(10), "silent HTTP/1.1").await;
    assert!(got.is_empty(), "{got:?}");
    closed_within(&mut silent_h2, Duration::from_secs(10), "silent h2").await;
    closed_within(&mut half_preface, Duration::from_secs(10), "half preface").await;
    closed_within(
        &mut open_block,
        Duration::from_secs(10),
        "open header block",
    )
    .await;
    let timeouts = metric(
        &router,
        "jitsi_router_timeouts_total{state=\"request_head\"}",
    )
    .await;
    assert_eq!(timeouts, 4.0);

    // The router serves on as before.
    let response = router
        .client()
        .get(router.url("/room"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_head_dripping_in_is_cut_off_from_its_first_byte() {
    let (certs, _nodes, router) = short_limits_router().await;
    let mut slow = certs.connect(router.https, b"http/1.1").await;
    slow.write_all(b"GET /room HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let drip = async {
        for i in 0..100 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if slow
                .write_all(format!("X-{i}: a\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), drip).await;
    let (got, _) = closed_within(&mut slow, Duration::from_secs(1), "slowloris").await;
    assert!(got.is_empty(), "a head never finished got {got:?}");
    assert_eq!(
        metric(
            &router,
            "jitsi_router_timeouts_total{state=\"request_head\"}"
        )
        .await,
        1.0
    );
}

/// How long an HTTP/1.1 connection stays open after one answered request (at most 10 s).
async fn idle_http1_lasts(certs: &Certs, router: &Router) -> Duration {
    let mut h1 = certs.connect(router.https, b"http/1.1").await;
    h1.write_all(b"GET /room HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let (got, took) = closed_within(&mut h1, Duration::from_secs(10), "idle HTTP/1.1").await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    took
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_keepalive_closes_http1_and_sends_goaway_on_http2() {
    let (certs, _nodes, router) = short_limits_router().await;

    let took = idle_http1_lasts(&certs, &router).await;
    assert!(
        took >= Duration::from_millis(1500),
        "closed after {took:?}, before keepalive_timeout\n{:?}\n{}",
        metrics(&router).await,
        router.logs()
    );

    // Read the raw frames: a client library may race its own close against the router's and
    // report that instead of the GOAWAY.
    let mut h2 = certs.connect(router.https, b"h2").await;
    let mut request = H2_PREFACE.to_vec();
    request.extend_from_slice(&h2_get(1, "/room", &[]));
    h2.write_all(&request).await.unwrap();
    let (got, took) = closed_within(&mut h2, Duration::from_secs(10), "idle h2").await;
    let frames = h2_frames(&got);
    let answer = frames
        .iter()
        .find(|f| f.kind == H2Frame::HEADERS && f.stream == 1);
    // :status 200 is HPACK static entry 8.
    assert_eq!(
        answer.map(|f| f.payload.first()),
        Some(Some(&0x88)),
        "{frames:?}"
    );
    let goaway = frames.iter().find(|f| f.kind == H2Frame::GOAWAY);
    let goaway =
        goaway.unwrap_or_else(|| panic!("an idle HTTP/2 connection got no GOAWAY: {frames:?}"));
    assert_eq!(goaway.error_code(), 0, "GOAWAY carried an error");
    assert!(
        took >= Duration::from_millis(1500),
        "GOAWAY after {took:?}, before keepalive_timeout"
    );
    assert_eq!(
        metric(&router, "jitsi_router_timeouts_total{state=\"keepalive\"}").await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_keepalive_timeout_shorter_than_the_request_head_timeout_holds() {
    // nginx configs often say `keepalive_timeout 5s`; the request-head timeout stays 30 s.
    let certs = Certs::new();
    let nodes = sim_nodes(1).await;
    let limits = "[limits]\nkeepalive_timeout = \"1s\"\n";
    let router = Router::start(&certs, &config(&certs, limits, &node_entries(&nodes)));
    let took = idle_http1_lasts(&certs, &router).await;
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_body_that_stops_gets_408_and_no_node_is_blamed() {
    let (certs, _nodes, router) = short_limits_router().await;
    let mut tls = certs.connect(router.https, b"http/1.1").await;
    tls.write_all(b"POST /http-bind?room=stuck HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n<body rid='1'")
        .await
        .unwrap();
    let (got, _) = read_until_closed(&mut tls, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 408"),
        "{text}\n{}",
        router.logs()
    );
    assert!(text.contains("request body stopped arriving"), "{text}");
    let m = metrics(&router).await;
    assert_eq!(
        m.get("jitsi_router_timeouts_total{state=\"request_body\"}"),
        Some(&1.0)
    );
    assert_eq!(
        m.get("jitsi_router_requests_total{node=\"none\",class=\"4xx\"}"),
        Some(&1.0)
    );
    assert!(!m.contains_key("jitsi_router_requests_total{node=\"jitsi-a\",class=\"5xx\"}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_body_that_stops_is_cut_off() {
    let certs = Certs::new();
    let node = RawNode::start(RawAnswer::StallAfterHead).await;
    let router = Router::start(&certs, &config(&certs, SHORT, &[("stalling", node.url())]));
    let response = router
        .client()
        .get(router.url("/room"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(10), response.bytes()).await;
    let body = body.expect("the client was left waiting for a stalled node's body");
    assert!(
        body.is_err(),
        "a body cut short must end in an error, got {body:?}"
    );
    assert_eq!(
        metric(
            &router,
            "jitsi_router_timeouts_total{state=\"response_body\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_is_closed() {
    let certs = Certs::new();
    let node = RawNode::start(RawAnswer::Big(64 * 1024 * 1024)).await;
    let router = Router::start(&certs, &config(&certs, SHORT, &[("big", node.url())]));
    let mut tls = certs.connect(router.https, b"http/1.1").await;
    tls.write_all(b"GET /room HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    // Never read: the router's writes stop, and after send_timeout it gives up.
    eventually(Duration::from_secs(20), "the send timeout", || async {
        metric(&router, "jitsi_router_timeouts_total{state=\"send\"}").await >= 1.0
    })
    .await;
    drop(tls);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http2_stream_the_client_stops_reading_is_closed() {
    let certs = Certs::new();
    let node = RawNode::start(RawAnswer::Big(64 * 1024 * 1024)).await;
    let router = Router::start(&certs, &config(&certs, SHORT, &[("big", node.url())]));
    let tls = certs.connect(router.https, b"h2").await;
    // A small stream window that is never opened again: the client's connection keeps reading
    // frames (its socket never stalls), but the answer's stream takes no more bytes.
    let (mut sender, connection) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(65_535)
            .handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::builder()
        .uri(format!("https://localhost:{}/room", router.https.port()))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let answer = sender.send_request(request).await.unwrap();
    assert_eq!(answer.status(), 200);
    eventually(Duration::from_secs(20), "the send timeout", || async {
        metric(&router, "jitsi_router_timeouts_total{state=\"send\"}").await >= 1.0
    })
    .await;
    // Asked to go away, the connection gets 5 s for its other streams, then it is dropped:
    // what is left of the answer never comes.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let read = tokio::time::timeout(
        Duration::from_secs(20),
        http_body_util::BodyExt::collect(answer.into_body()),
    )
    .await
    .expect("the connection closed within the grace");
    assert!(read.is_err(), "the whole 64 MiB arrived");
}

/// A WebSocket client that stops taking bytes after a little of the node's data, with nothing
/// more to send it: the router's writes all went into its socket, so no write of its own
/// waits, yet the client's window stays shut. The kernel is told to give up on data unacknowledged
/// or unsent for `send_timeout` (as on a phone that left the network, whose participant would
/// otherwise stay in the meeting for the kernel's ~15 minutes of retransmissions), so the
/// tunnel closes, on the node's side too.
#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_client_whose_window_stays_shut_is_closed() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let (certs, _nodes, router) = short_limits_router().await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    // A window of a few KiB, which the node's echo overfills.
    socket.set_recv_buffer_size(2048).unwrap();
    let tcp = socket.connect(router.https).await.unwrap();
    let request = format!(
        "wss://localhost:{}/xmpp-websocket?room=gone",
        router.https.port()
    )
    .into_client_request()
    .unwrap();
    let connector = tokio_tungstenite::Connector::Rustls(certs.client_config());
    let (mut ws, _) =
        tokio_tungstenite::client_async_tls_with_config(request, tcp, None, Some(connector))
            .await
            .unwrap();
    let tunnels = || async { metric(&router, "jitsi_router_websocket_tunnels").await };
    assert_eq!(tunnels().await, 1.0);
    // Echoed back and never read: 8 KB fits the router's socket buffer, not the window.
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        "x".repeat(8_000),
    ))
    .await
    .unwrap();
    eventually(Duration::from_secs(15), "the tunnel closed", || async {
        tunnels().await == 0.0
    })
    .await;
    drop(ws);
}

/// A node that reads nothing more of a WebSocket (its prosody hung, or its host gone without a
/// word) while the client has more to send: once the sockets on the way are full, the router's
/// writes to the node wait with nothing acknowledged. The kernel gives up on the node after
/// `send_timeout` as it does on a client, so the tunnel closes and its client can reconnect,
/// instead of waiting on that node for good.
#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_whose_node_reads_nothing_is_closed() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (certs, _nodes, router) = short_limits_router().await;
    let (ws, _) = websocket(&certs, &router, "/xmpp-websocket?room=hung").await;
    let (mut sink, mut stream) = ws.split();
    sink.send(Message::text("sim:hang")).await.unwrap();
    let tunnels = || async { metric(&router, "jitsi_router_websocket_tunnels").await };
    assert_eq!(tunnels().await, 1.0);
    // Far more than the client's, the router's and the node's socket buffers hold together.
    let pushing = tokio::spawn(async move {
        let chunk = Message::binary(vec![0u8; 1 << 20]);
        for _ in 0..64 {
            if sink.send(chunk.clone()).await.is_err() {
                break;
            }
        }
    });
    eventually(Duration::from_secs(20), "the tunnel closed", || async {
        tunnels().await == 0.0
    })
    .await;
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
    assert!(closed.is_ok(), "the client's side is still open");
    pushing.abort();
}

/// The kernel's timer on the router's side of a client connection from `client` to `router`
/// (`tr` of `/proc/net/tcp`: 0 none, 1 retransmission, 2 keep-alive, 4 zero-window probe).
#[cfg(target_os = "linux")]
fn kernel_timer(router: std::net::SocketAddr, client: std::net::SocketAddr) -> Option<u8> {
    let hex = |addr: std::net::SocketAddr| format!("0100007F:{:04X}", addr.port());
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields[1] == hex(router) && fields[2] == hex(client))
            .then(|| u8::from_str_radix(fields[5].split(':').next()?, 16).ok())
            .flatten()
    })
}

/// A client gone while its connection is idle (a phone that left the network during a quiet
/// moment of its WebSocket) sends nothing more and is sent nothing, so nothing times out on
/// its own: the router's side of every client connection keeps the kernel's keep-alive timer,
/// probing after `send_timeout` idle and giving up within `send_timeout` of unanswered probes.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_client_connection_is_probed_by_the_kernel() {
    let (certs, _nodes, router) = short_limits_router().await;
    let tls = certs.connect(router.https, b"http/1.1").await;
    let client = tls.get_ref().0.local_addr().unwrap();
    eventually(Duration::from_secs(5), "a keep-alive timer", || async {
        kernel_timer(router.https, client) == Some(2)
    })
    .await;
    drop(tls);
}
