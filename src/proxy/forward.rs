//! Forwarding to a node over pooled keep-alive HTTP/1.1 (`http://` or `https://`), streaming
//! bodies both ways.

use std::time::Duration;

use http::uri::PathAndQuery;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Either;
use hyper::body::Incoming;

use super::body::{ClientBody, ClientBodyError};
use super::headers::{self, Forwarded};
use super::upstream::{UpstreamClient, UpstreamError};
use super::{errors, tunnel, Body};
use crate::error_chain::error_chain;
use crate::fleet::Node;
use crate::metrics::Timeout;
use crate::peer::Client;

/// Settings the forwarder needs per request.
pub struct ForwardSettings {
    /// Time allowed for the node to start answering.
    pub response_timeout: Duration,
    /// Longest pause in a request body the node waits for.
    pub request_body_timeout: Duration,
    /// `Retry-After` of a `503` for a shortage of the router's own.
    pub retry_after: Duration,
    /// Where timeouts and local faults are counted.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// Keep the client's `Host`.
    pub preserve_host: bool,
    /// The fleet, whose health settings a node's connection failures count by (toward `fall`).
    pub fleet: std::sync::Arc<crate::fleet::Fleet>,
    /// Open WebSocket tunnels.
    pub tunnels: std::sync::Arc<tunnel::Tunnels>,
}

/// Whether a request is a WebSocket upgrade (decided once per request by the handler), and for a
/// room's WebSocket the keep-alive of its pin.
pub struct Upgrade {
    /// The client asked for a WebSocket.
    pub websocket: bool,
    /// Touches the room's pin while the tunnel is open.
    pub keepalive: Option<tunnel::Keepalive>,
}

/// Whose answer the client got: the node's (its own, or a `502`/`504` for its failure), or the
/// router's for a fault that is not the node's (the client's body, the router's own shortage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    /// The node's answer, or the node's fault.
    Node,
    /// Not the node's doing: counted under `node="none"`.
    Router,
}

/// Sends the request to `node` and returns its response (or an error answer of ours), and
/// whose answer it is.
pub async fn forward(
    client: &UpstreamClient,
    settings: &ForwardSettings,
    mut req: Request<Incoming>,
    node: &Node,
    from: Client,
    upgrade: Upgrade,
) -> (Response<Body>, Answered) {
    let Upgrade {
        websocket: upgrade,
        keepalive,
    } = upgrade;
    let downstream = upgrade.then(|| hyper::upgrade::on(&mut req));
    let hold = req.extensions_mut().remove::<tunnel::Hold>();
    // RFC 8441: an HTTP/2 WebSocket is a `CONNECT` stream; the node is asked the HTTP/1.1 way.
    let over_h2 = upgrade && req.method() == Method::CONNECT;
    let req = outgoing(req, settings, node, from, upgrade, over_h2);
    let sent = client.send(&node.spec.upstream, req);
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(settings.response_timeout, sent).await;
    node.live.report.upstream.observe(started.elapsed());
    let mut response = match answer {
        Err(_) => {
            tracing::warn!(node = %node.id, timeout = ?settings.response_timeout, "node did not answer in time");
            let reason = format!("node {} did not answer in time", node.id);
            return (
                errors::plain(StatusCode::GATEWAY_TIMEOUT, &reason),
                Answered::Node,
            );
        }
        Ok(Err(e)) => return failed(&e, node, settings),
        Ok(Ok(response)) => response,
    };
    let upgraded = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if upgraded {
        let Some(downstream) = downstream else {
            let reason = "node switched protocols without being asked";
            return (
                errors::plain(StatusCode::BAD_GATEWAY, reason),
                Answered::Node,
            );
        };
        let upstream = hyper::upgrade::on(&mut response);
        let open = settings.tunnels.open();
        tunnel::splice(downstream, upstream, node.id.clone(), open, hold, keepalive);
    }
    let (mut parts, body) = response.into_parts();
    headers::prepare_response(&mut parts.headers, upgraded && !over_h2);
    if upgraded && over_h2 {
        // The HTTP/2 answer to a WebSocket's `CONNECT`: `200`, without the HTTP/1.1 handshake.
        parts.status = StatusCode::OK;
        parts.headers.remove(header::SEC_WEBSOCKET_ACCEPT);
    }
    (
        Response::from_parts(parts, Either::Left(body)),
        Answered::Node,
    )
}

/// The client's request as it goes to `node`: HTTP/1.1 with an origin-form target (the node's
/// scheme and authority pick the connection), its headers cleaned and the forwarding headers
/// set, an HTTP/2 WebSocket's `CONNECT` (`over_h2`) asked as the HTTP/1.1 handshake, and its
/// body timed.
fn outgoing(
    req: Request<Incoming>,
    settings: &ForwardSettings,
    node: &Node,
    from: Client,
    upgrade: bool,
    over_h2: bool,
) -> Request<ClientBody> {
    let (mut parts, body) = req.into_parts();
    if over_h2 {
        parts.method = Method::GET;
        let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
        if let Ok(key) = HeaderValue::from_str(&key) {
            parts.headers.insert(header::SEC_WEBSOCKET_KEY, key);
        }
    }
    let target = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let host = headers::request_host(&parts.uri, &parts.headers);
    let upstream_host = node.spec.upstream.authority().map_or("", |a| a.as_str());
    headers::prepare_request(
        &mut parts.headers,
        &Forwarded {
            client: from.addr.ip(),
            trusted: from.trusted,
            host: host.as_ref(),
            preserve_host: settings.preserve_host,
            upstream_host,
            upgrade,
        },
    );
    parts.uri = target.into();
    parts.version = http::Version::HTTP_11;
    let body = ClientBody::new(body, settings.request_body_timeout);
    Request::from_parts(parts, body)
}

/// The answer to an exchange that failed before the node's head arrived, by whose fault it
/// was: the client's body (`400`, `408`), a shortage of the router's own (`503`), or the node
/// (`502`; a failed connection also counts toward its `fall`).
fn failed(
    e: &UpstreamError,
    node: &Node,
    settings: &ForwardSettings,
) -> (Response<Body>, Answered) {
    if let Some(client) = ClientBodyError::find(e) {
        tracing::debug!(node = %node.id, error = %client, "request body not passed on");
        let response = match client {
            ClientBodyError::Stalled => {
                settings.metrics.timed_out(Timeout::RequestBody);
                errors::plain(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body stopped arriving (limits.request_body_timeout)",
                )
            }
            _ => errors::plain(StatusCode::BAD_REQUEST, &client.to_string()),
        };
        return (response, Answered::Router);
    }
    if let UpstreamError::Local { fault, .. } = e {
        settings.metrics.local_fault(*fault);
        tracing::warn!(node = %node.id, reason = %fault, "request not forwarded: a shortage of the router's own, not the node's fault");
        let reason = format!("{fault}; try again shortly");
        return (
            errors::unavailable(&reason, settings.retry_after),
            Answered::Router,
        );
    }
    let reason = error_chain(e);
    tracing::warn!(node = %node.id, error = %reason, "node unreachable");
    if e.is_connect() {
        let failure = format!("a request could not connect: {reason}");
        crate::fleet::health::record(node, Some(&failure), &settings.fleet.health());
    }
    let reason = format!("node {} is unreachable", node.id);
    (
        errors::plain(StatusCode::BAD_GATEWAY, &reason),
        Answered::Node,
    )
}
