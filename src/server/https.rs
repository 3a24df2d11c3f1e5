//! The HTTPS listener: TLS handshakes, then HTTP/1.1 or HTTP/2 (with their settings) on one of
//! the worker threads, each request answered by the proxy. An HTTP/2 WebSocket (RFC 8441, when
//! `server.websockets_over_http2` offers it) is admitted against the connection caps here and
//! holds its connection in use while its tunnel is open.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{header, Method, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::caps::{Admitted, Refused, Siblings};
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
    let serving = Serving {
        acceptor,
        builder,
        proxy,
        handshake_timeout,
        shared,
    };
    let warned = Throttle::default();
    loop {
        let (tcp, peer, admitted) = serving.shared.accept(&listener, &warned).await;
        let _ = tcp.set_nodelay(true);
        let Ok(tcp) = tcp.into_std() else {
            continue;
        };
        let serving = serving.clone();
        workers
            .next()
            .spawn(async move { serving.serve(tcp, peer, admitted).await });
    }
}

/// What serving a client connection takes, cloned for each from the listener's.
#[derive(Clone)]
struct Serving {
    acceptor: TlsAcceptor,
    builder: Arc<auto::Builder<TokioExecutor>>,
    proxy: Arc<Proxy>,
    handshake_timeout: Duration,
    shared: Listener,
}

impl Serving {
    /// Serves one client connection, on the worker it was dealt to, until it ends.
    async fn serve(&self, tcp: std::net::TcpStream, peer: SocketAddr, mut admitted: Admitted) {
        let Ok(mut tcp) = TcpStream::from_std(tcp) else {
            return;
        };
        let shared = &self.shared;
        // One limit for the PROXY header and the TLS handshake.
        let deadline = Instant::now() + self.handshake_timeout;
        let Some(client) = shared.client(&mut tcp, peer, &mut admitted, deadline).await else {
            return;
        };
        let Some(tls) = self.handshake(tcp, client.addr, deadline).await else {
            return;
        };
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let activity = Activity::new(h2, shared.limits, shared.metrics.clone());
        let siblings = admitted.siblings();
        let io = TokioIo::new(Watched::new(tls, activity.clone(), admitted));
        let requests = activity.clone();
        let (proxy, hsts) = (self.proxy.clone(), shared.edge.hsts.clone());
        let (metrics, send_timeout) = (shared.metrics.clone(), shared.limits.send_timeout);
        let service = service_fn(move |mut req: Request<Incoming>| {
            let in_flight = requests.request_started();
            let refused = admit_extended(&mut req, &siblings, &requests, send_timeout, &metrics);
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
        let conn = self.builder.serve_connection_with_upgrades(io, service);
        if let Err(e) = supervise(conn, &activity, shared.stopping.clone()).await {
            tracing::debug!(peer = %client.addr, error = %e, "connection ended with an error");
        }
    }

    /// The client's TLS handshake, counted, by `deadline`; `None` when it failed, or when it
    /// was an ACME TLS-ALPN-01 validation, which comes for the handshake alone (RFC 8737).
    async fn handshake(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        deadline: Instant,
    ) -> Option<TlsStream<TcpStream>> {
        let metrics = self.proxy.metrics();
        let mut tls = match tokio::time::timeout_at(deadline, self.acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "tls handshake failed");
                metrics.tls_handshake_failed();
                return None;
            }
            Err(_) => {
                tracing::debug!(%peer, "tls handshake timed out");
                metrics.tls_handshake_failed();
                return None;
            }
        };
        let session = tls.get_ref().1;
        metrics.tls_handshake(session.handshake_kind() == Some(rustls::HandshakeKind::Resumed));
        if session.alpn_protocol() == Some(tls::ACME_TLS_ALPN) {
            return None;
        }
        tls.get_mut().1.set_buffer_limit(Some(TLS_SEND_BUFFER));
        Some(tls)
    }
}

/// Admits an extended CONNECT (an HTTP/2 WebSocket, RFC 8441) as a connection's worth for the
/// caps, and as a stream that keeps its connection in use while its tunnel is open, after its
/// answer; the refusal to send instead when the caps are reached. Other requests pass.
fn admit_extended(
    req: &mut Request<Incoming>,
    siblings: &Siblings,
    requests: &Arc<Activity>,
    send_timeout: Duration,
    metrics: &Metrics,
) -> Option<Response<crate::proxy::Body>> {
    let extended =
        req.method() == Method::CONNECT && req.extensions().get::<hyper::ext::Protocol>().is_some();
    if !extended {
        return None;
    }
    match siblings.admit() {
        Ok(admitted) => {
            let stalled = requests.clone();
            let hold = tunnel::Hold::new((requests.hold(), admitted), send_timeout, move || {
                stalled.stream_stalled()
            });
            req.extensions_mut().insert(hold);
            None
        }
        Err(refused) => Some(over_cap(refused, metrics)),
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
