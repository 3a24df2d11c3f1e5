//! Forwarding to a node over pooled keep-alive HTTP/1.1 (`http://` or `https://`), streaming
//! bodies both ways.

use std::net::SocketAddr;
use std::time::Duration;

use http::uri::PathAndQuery;
use http::{header, Request, Response, StatusCode};
use http_body_util::Either;
use hyper::body::Incoming;

use super::headers::{self, Forwarded};
use super::upstream::UpstreamClient;
use super::{errors, tunnel, Body};
use crate::fleet::Node;

/// Settings the forwarder needs per request.
pub struct ForwardSettings {
    /// Time allowed for the node to start answering.
    pub response_timeout: Duration,
    /// Keep the client's `Host`.
    pub preserve_host: bool,
    /// Health settings: connection failures count toward `fall`.
    pub health: crate::config::Health,
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

/// Sends the request to `node` and returns its response (or a 502/504 of ours).
pub async fn forward(
    client: &UpstreamClient,
    settings: &ForwardSettings,
    mut req: Request<Incoming>,
    node: &Node,
    peer: SocketAddr,
    upgrade: Upgrade,
) -> Response<Body> {
    let Upgrade {
        websocket: upgrade,
        keepalive,
    } = upgrade;
    let downstream = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    // Origin form (`/path?query`); the node's scheme and authority pick the connection.
    let target = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let host = parts
        .headers
        .get(header::HOST)
        .cloned()
        .or_else(|| parts.uri.authority().and_then(|a| a.as_str().parse().ok()));
    let upstream_host = node.spec.upstream.authority().map_or("", |a| a.as_str());
    headers::prepare_request(
        &mut parts.headers,
        &Forwarded {
            client: peer.ip(),
            host: host.as_ref(),
            preserve_host: settings.preserve_host,
            upstream_host,
            upgrade,
        },
    );
    parts.uri = target.into();
    parts.version = http::Version::HTTP_11;
    let sent = client.send(&node.spec.upstream, Request::from_parts(parts, body));
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(settings.response_timeout, sent).await;
    node.live.upstream.observe(started.elapsed());
    let mut response = match answer {
        Err(_) => {
            tracing::warn!(node = %node.id, timeout = ?settings.response_timeout, "node did not answer in time");
            return errors::plain(
                StatusCode::GATEWAY_TIMEOUT,
                &format!("node {} did not answer in time", node.id),
            );
        }
        Ok(Err(e)) => {
            let reason = error_chain(&e);
            tracing::warn!(node = %node.id, error = %reason, "node unreachable");
            if e.is_connect() {
                crate::fleet::health::record(node, false, &reason, &settings.health);
            }
            return errors::plain(
                StatusCode::BAD_GATEWAY,
                &format!("node {} is unreachable", node.id),
            );
        }
        Ok(Ok(response)) => response,
    };
    let upgraded = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if upgraded {
        match downstream {
            Some(downstream) => tunnel::splice(
                downstream,
                hyper::upgrade::on(&mut response),
                node.id.clone(),
                settings.tunnels.open(),
                keepalive,
            ),
            None => {
                return errors::plain(
                    StatusCode::BAD_GATEWAY,
                    "node switched protocols without being asked",
                );
            }
        }
    }
    let (mut parts, body) = response.into_parts();
    headers::prepare_response(&mut parts.headers, upgraded);
    Response::from_parts(parts, Either::Left(body))
}

/// The error and its causes on one line (hyper's top-level messages are terse).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
