//! The HTTPS listener: TLS handshakes, then HTTP/1.1 or HTTP/2 (with their settings) on one of
//! the worker threads, each request answered by the proxy. An HTTP/2 WebSocket (RFC 8441, when
//! `server.websockets_over_http2` offers it) is admitted against the connection caps here and
//! holds its connection in use while its tunnel is open.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{header, Method, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::caps::Refused;
use super::conn::{supervise, Activity, Tracked, Watched};
use super::listener::Listener;
use super::workers::Workers;
use crate::config::Config;
use crate::metrics::{Limit, Metrics};
use crate::proxy::{tunnel, Proxy};
use crate::throttle::Throttle;
use crate::tls;

pub(super) fn connection_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let limits = &config.limits;
    // The read buffer holds a request head: just over `max_request_head`, so that our own
    // check answers heads up to it and hyper's (given a reason, `parse_errors`) anything
    // larger. It also bounds what a slow reader's answer may queue (see `proxy::upstream`).
    let buffer = limits.max_request_head + 2048;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // `conn::supervise` times request heads and keep-alive instead (see there).
        .header_read_timeout(None)
        .max_buf_size(buffer);
    if limits.max_request_headers != HYPER_MAX_HEADERS {
        builder.http1().max_headers(limits.max_request_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(buffer).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_pending_accept_reset_streams(limits.h2_max_pending_reset_streams)
        .max_local_error_reset_streams(limits.h2_max_local_reset_streams)
        .max_send_buf_size(H2_SEND_BUFFER)
        .initial_stream_window_size(H2_RECEIVE_WINDOW)
        .initial_connection_window_size(H2_RECEIVE_WINDOW * 4);
    if config.server.websockets_over_http2 {
        // RFC 8441: a browser's signalling and bridge channels share the connection its page
        // came on, rather than each opening a TLS connection.
        builder.http2().enable_connect_protocol();
    }
    builder
}

/// hyper's own limit on header fields, which it parses into an array on the stack; any other
/// limit costs every request a heap array that long.
pub(super) const HYPER_MAX_HEADERS: usize = 100;

/// Bytes of TLS records queued for a client that is slow to read (rustls's default: 64 KiB).
const TLS_SEND_BUFFER: usize = 16 * 1024;

/// Bytes of a response an HTTP/2 stream queues for a client that is slow to read.
const H2_SEND_BUFFER: usize = 64 * 1024;

/// Bytes of a request body an HTTP/2 client may send ahead per stream (four times that per
/// connection) while its node is slow to take them.
const H2_RECEIVE_WINDOW: u32 = 128 * 1024;

pub(super) async fn accept_https(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    builder: Arc<auto::Builder<TokioExecutor>>,
    proxy: Arc<Proxy>,
    handshake_timeout: Duration,
    shared: Listener,
    workers: Arc<Workers>,
) {
    let warned = Throttle::default();
    loop {
        let (tcp, peer, mut admitted) = shared.accept(&listener, &warned).await;
        let _ = tcp.set_nodelay(true);
        let Ok(tcp) = tcp.into_std() else {
            continue;
        };
        let acceptor = acceptor.clone();
        let builder = builder.clone();
        let proxy = proxy.clone();
        let shared = shared.clone();
        workers.next().spawn(async move {
            let Ok(mut tcp) = TcpStream::from_std(tcp) else {
                return;
            };
            // One limit for the PROXY header and the TLS handshake.
            let deadline = Instant::now() + handshake_timeout;
            let Some(client) = shared.client(&mut tcp, peer, &mut admitted, deadline).await else {
                return;
            };
            let peer = client.addr;
            let tls = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "tls handshake failed");
                    proxy.metrics().tls_handshake_failed();
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "tls handshake timed out");
                    proxy.metrics().tls_handshake_failed();
                    return;
                }
            };
            let mut tls = tls;
            let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            proxy.metrics().tls_handshake(resumed);
            if tls.get_ref().1.alpn_protocol() == Some(tls::ACME_TLS_ALPN) {
                // A TLS-ALPN-01 validation: the handshake was all it came for (RFC 8737).
                return;
            }
            tls.get_mut().1.set_buffer_limit(Some(TLS_SEND_BUFFER));
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let activity = Activity::new(h2, shared.limits, shared.metrics.clone());
            let siblings = admitted.siblings();
            let io = TokioIo::new(Watched::new(tls, activity.clone(), admitted));
            let requests = activity.clone();
            let hsts = shared.edge.hsts.clone();
            let metrics = shared.metrics.clone();
            let send_timeout = shared.limits.send_timeout;
            let service = service_fn(move |mut req: Request<Incoming>| {
                let in_flight = requests.request_started();
                // An extended CONNECT (an HTTP/2 WebSocket, RFC 8441): a connection's worth for
                // the caps, and a stream that keeps this connection in use while its tunnel is
                // open, after its answer.
                let extended = req.method() == Method::CONNECT
                    && req.extensions().get::<hyper::ext::Protocol>().is_some();
                let refused = match extended.then(|| siblings.admit()) {
                    Some(Ok(admitted)) => {
                        let stalled = requests.clone();
                        let hold = tunnel::Hold::new(
                            (requests.hold(), admitted),
                            send_timeout,
                            move || stalled.stream_stalled(),
                        );
                        req.extensions_mut().insert(hold);
                        None
                    }
                    Some(Err(refused)) => Some(over_cap(refused, &metrics)),
                    None => None,
                };
                let (proxy, hsts) = (proxy.clone(), hsts.clone());
                async move {
                    let mut response = match refused {
                        Some(refused) => refused,
                        None => proxy.handle(req, client).await,
                    };
                    if let Some(hsts) = hsts {
                        (response.headers_mut()).insert(header::STRICT_TRANSPORT_SECURITY, hsts);
                    }
                    Ok::<_, Infallible>(response.map(|body| Tracked::new(body, in_flight)))
                }
            });
            let conn = builder.serve_connection_with_upgrades(io, service);
            if let Err(e) = supervise(conn, &activity, shared.stopping).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// The answer to an HTTP/2 WebSocket over a cap on client connections, counted.
fn over_cap(refused: Refused, metrics: &Metrics) -> Response<crate::proxy::Body> {
    let (limit, status, cap) = match refused {
        Refused::Full => (
            Limit::Connections,
            http::StatusCode::SERVICE_UNAVAILABLE,
            "limits.max_connections",
        ),
        Refused::ClientFull => (
            Limit::ClientConnections,
            http::StatusCode::TOO_MANY_REQUESTS,
            "limits.max_connections_per_client",
        ),
    };
    metrics.limit_hit(limit);
    crate::proxy::errors::plain(status, &format!("too many connections ({cap})"))
}
