//! The admin listener: plain HTTP (loopback by default) with the operators' JSON API.
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /` | the fleet dashboard (one self-contained page over this API) |
//! | `GET /healthz` | `200 ok` while the process runs |
//! | `GET /api/status` | mode, pinned rooms, tunnels, CPU snapshot age |
//! | `GET /metrics` | the router's metrics in Prometheus text format (see [`crate::metrics`]) |
//! | `GET /readyz` | `200` when at least one node is healthy, else `503` |
//! | `GET /api/nodes` | every node with its CPU, estimate, health, drain and rooms |
//! | `PUT /api/nodes/{name}` | registers or updates a node (fields of a `[[nodes]]` entry) |
//! | `DELETE /api/nodes/{name}` | removes a node; its rooms move on their next request |
//! | `POST /api/nodes/{name}/drain`, `/undrain` | the drain switch |
//! | `GET /api/rooms?node=&limit=` | pinned rooms, most requested first |
//! | `GET`, `DELETE /api/rooms/{room}` | one room's pin; unpin it |
//! | `PUT /api/rooms/{room}` with `{"node": …}` | moves a room's pin |
//!
//! With a shared pin store (`[pins.redis]`) the room calls reach the other replicas: a room this
//! router holds no pin for is looked up in the store, an unpin and a move are written there, and
//! their answers say whether the store took them (`replicas_told`).
//!
//! With a token configured every request needs `Authorization: Bearer <token>` (compared in
//! constant time), except `/healthz` and `/metrics` under `open_metrics`. Errors answer JSON
//! `{"error": "…"}` saying what was wrong. Node changes are layered over the config file, so they
//! survive reloads, and each is logged.

mod api;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::config::{Admin as AdminConfig, Mode};
use crate::metrics::Exporter;
use crate::placement::Router;
use crate::proxy::tunnel::Tunnels;
use crate::proxy::Proxy;
use prometheus_client::registry::Registry;

/// Largest admin request body accepted.
const MAX_BODY: usize = 64 * 1024;

/// The fleet dashboard: one self-contained page over the JSON API.
const DASHBOARD: &str = include_str!("dashboard.html");

/// What the admin handlers share.
pub struct Admin {
    router: Arc<Router>,
    tunnels: Arc<Tunnels>,
    token: Option<String>,
    open_metrics: bool,
    mode: Mode,
    registry: Registry,
}

type Answer = Response<Full<Bytes>>;

impl Admin {
    /// The admin surface over this request handler's router, tunnels and counters.
    pub fn new(proxy: &Proxy, config: &AdminConfig) -> Admin {
        Admin {
            router: proxy.router().clone(),
            tunnels: proxy.tunnels().clone(),
            token: config.token.clone(),
            open_metrics: config.open_metrics,
            mode: proxy.mode(),
            registry: Exporter::registry(
                proxy.metrics().clone(),
                proxy.router().clone(),
                proxy.tunnels().clone(),
            ),
        }
    }

    fn authorised(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        // The dashboard page itself holds no data; it asks for the token and sends it with
        // every API call.
        let open = match req.uri().path() {
            "/" => true,
            "/healthz" | "/metrics" => self.open_metrics,
            _ => false,
        };
        let offered = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        open || constant_time_eq(offered.as_bytes(), token.as_bytes())
    }

    async fn handle(&self, req: Request<Incoming>) -> Answer {
        if !self.authorised(&req) {
            let mut answer = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            answer
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return answer;
        }
        if !same_origin(&req) {
            return error(
                StatusCode::FORBIDDEN,
                "cross-origin changes are refused: the Origin header does not match the Host",
            );
        }
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        let body = match read_body(req).await {
            Ok(body) => body,
            Err(answer) => return answer,
        };
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (&method, segments.as_slice()) {
            (&Method::GET, [""]) => page(),
            (&Method::GET, ["healthz"]) => text(StatusCode::OK, "ok\n"),
            (&Method::GET, ["api", "status"]) => api::status(self),
            (&Method::GET, ["metrics"]) => self.metrics(),
            (&Method::GET, ["readyz"]) => api::ready(self),
            (&Method::GET, ["api", "nodes"]) => api::nodes(self),
            (&Method::PUT, ["api", "nodes", name]) => api::put_node(self, name, &body),
            (&Method::DELETE, ["api", "nodes", name]) => api::delete_node(self, name),
            (&Method::POST, ["api", "nodes", name, "drain"]) => api::drain(self, name, true),
            (&Method::POST, ["api", "nodes", name, "undrain"]) => api::drain(self, name, false),
            (&Method::GET, ["api", "rooms"]) => api::rooms(self, &query),
            (_, ["api", "rooms", room @ ..]) if !room.is_empty() => {
                api::room(self, &method, &room.join("/"), &body).await
            }
            (
                _,
                ["" | "healthz" | "readyz" | "metrics"]
                | ["api", "status"]
                | ["api", "nodes" | "rooms"]
                | ["api", "nodes", _]
                | ["api", "nodes", _, "drain" | "undrain"],
            ) => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here"),
            _ => error(StatusCode::NOT_FOUND, "no such admin endpoint"),
        }
    }
}

impl Admin {
    fn metrics(&self) -> Answer {
        let mut answer = Response::new(Full::new(Bytes::from(crate::metrics::render(
            &self.registry,
        ))));
        answer.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
        );
        answer
    }
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Answer> {
    use http_body_util::BodyExt;
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(_) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body over 64 KiB or unreadable",
        )),
    }
}

/// Browsers send `Origin` with cross-site requests: a page elsewhere must not drain nodes through
/// an operator's browser (the listener is often on loopback without a token). Reads pass, and so
/// do clients that send no `Origin` (curl, scripts).
fn same_origin(req: &Request<Incoming>) -> bool {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return true;
    }
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return true;
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest);
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

fn page() -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from_static(DASHBOARD.as_bytes())));
    let headers = answer.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
        ),
    );
    answer
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Length is not secret (tokens have a known minimum); the contents are compared fully.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn text(status: StatusCode, body: &'static str) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *answer.status_mut() = status;
    answer.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    answer
}

fn json(status: StatusCode, value: &serde_json::Value) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from(value.to_string())));
    *answer.status_mut() = status;
    let headers = answer.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    answer
}

fn error(status: StatusCode, reason: &str) -> Answer {
    json(status, &serde_json::json!({ "error": reason }))
}

/// Serves the admin API on `listener` until the task is dropped; connections are watched by
/// `graceful` so shutdown lets them finish.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, graceful: Arc<GracefulShutdown>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.handle(req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(tcp), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
}
