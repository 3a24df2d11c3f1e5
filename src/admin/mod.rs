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
//! | `GET /api/nodes/{name}` | one node, as `GET /api/nodes` lists it |
//! | `PUT /api/nodes/{name}` | registers or updates a node (fields of a `[[nodes]]` entry, or the node as `GET /api/nodes` lists it) |
//! | `DELETE /api/nodes/{name}` | removes a node; its rooms move on their next request |
//! | `POST /api/nodes/{name}/drain`, `/undrain` | the drain switch |
//! | `GET /api/rooms?node=&limit=` | pinned rooms, most requested first |
//! | `POST /api/tls/renew` | with `[tls.acme]`: renew the certificate now |
//! | `GET /api/splits` | rooms the nodes' census finds live on more than one node |
//! | `GET`, `DELETE /api/rooms/{room}` | one room's pin; unpin it |
//! | `PUT /api/rooms/{room}` with `{"node": …}` | moves a room's pin |
//!
//! With a shared pin store (`[pins.redis]`) the room calls reach the other replicas: a room this
//! router holds no pin for is looked up in the store, an unpin and a move are written there, and
//! their answers say whether the store took them (`replicas_told`).
//!
//! Only requests whose `Host` names this listener are answered: its own address or `localhost`
//! on its port, or a name in `admin.allowed_hosts`; any other gets `421` before anything else,
//! so a page on a DNS-rebinding domain can neither read nor change anything. Changes sent with
//! an `Origin` must come from the listener's own origin (scheme, host and port).
//!
//! With a token configured every request needs `Authorization: Bearer <token>` (compared in
//! constant time), except `/healthz` and `/metrics` under `open_metrics`. The `[admin]` section
//! applies on reload: a rotated token is asked for from the next request on. Errors answer JSON
//! `{"error": "…"}` saying what was wrong. Node changes are layered over the config file, so they
//! survive reloads, and each is logged.

mod api;
mod exporter;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::config::{Admin as AdminConfig, Mode};
use crate::placement::Router;
use crate::proxy::tunnel::Tunnels;
use crate::proxy::Proxy;
use crate::room::RoomLimits;
use crate::tls::CertStore;
use exporter::Exporter;
use prometheus_client::registry::Registry;

/// Largest admin request body accepted.
const MAX_BODY: usize = 64 * 1024;

/// The fleet dashboard: one self-contained page over the JSON API.
const DASHBOARD: &str = include_str!("dashboard.html");

/// What the admin handlers share.
pub struct Admin {
    router: Arc<Router>,
    tunnels: Arc<Tunnels>,
    /// `[admin]`: the token, `open_metrics` and `allowed_hosts`, as the last reload left them.
    settings: Arc<ArcSwap<AdminConfig>>,
    /// Held while the rooms are listed.
    listing: tokio::sync::Mutex<()>,
    mode: Mode,
    /// How room names in `/api/rooms/{room}` are parsed: as the proxy parses them.
    room_limits: RoomLimits,
    registry: Registry,
    /// The served certificate, and whether ACME issues it.
    certs: Arc<CertStore>,
    acme: bool,
}

type Answer = Response<Full<Bytes>>;

impl Admin {
    /// The admin surface over this request handler's router, tunnels and counters, and the
    /// served certificate (`acme`: issued through ACME, which `POST /api/tls/renew` asks), by
    /// the `[admin]` settings in `settings` (which a reload replaces).
    pub fn new(
        proxy: &Proxy,
        settings: Arc<ArcSwap<AdminConfig>>,
        certs: Arc<CertStore>,
        acme: bool,
    ) -> Admin {
        Admin {
            router: proxy.router().clone(),
            tunnels: proxy.tunnels().clone(),
            settings,
            listing: tokio::sync::Mutex::new(()),
            mode: proxy.mode(),
            room_limits: proxy.room_limits(),
            registry: Exporter::registry(
                proxy.metrics().clone(),
                proxy.router().clone(),
                proxy.tunnels().clone(),
                certs.clone(),
            ),
            certs,
            acme,
        }
    }

    fn authorised(&self, req: &Request<Incoming>) -> bool {
        let settings = self.settings.load();
        let Some(token) = &settings.token else {
            return true;
        };
        // The dashboard page itself holds no data; it asks for the token and sends it with
        // every API call.
        let open = match req.uri().path() {
            "/" => true,
            "/healthz" | "/metrics" => settings.open_metrics,
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

    /// Answers one request that reached the admin listener at `local`.
    pub async fn handle(&self, req: Request<Incoming>, local: SocketAddr) -> Answer {
        // First of all: a page on a rebinding domain reaches this listener with its own name
        // in `Host`; nothing it asks is answered, not even whether a token is needed.
        let Some(host) = self.own_host(&req, local) else {
            return error(
                StatusCode::MISDIRECTED_REQUEST,
                "Host is not this admin listener's address, localhost or a name in admin.allowed_hosts",
            );
        };
        if !self.authorised(&req) {
            let mut answer = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            answer
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return answer;
        }
        if !self.same_origin(&req, &host) {
            return error(
                StatusCode::FORBIDDEN,
                "cross-origin changes are refused: the Origin header is not this listener's own",
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
            (&Method::GET, ["api", "nodes", name]) => api::node(self, name),
            (&Method::PUT, ["api", "nodes", name]) => api::put_node(self, name, &body),
            (&Method::DELETE, ["api", "nodes", name]) => api::delete_node(self, name),
            (&Method::POST, ["api", "nodes", name, "drain"]) => api::drain(self, name, true),
            (&Method::POST, ["api", "nodes", name, "undrain"]) => api::drain(self, name, false),
            (&Method::GET, ["api", "rooms"]) => api::rooms(self, &query).await,
            (&Method::GET, ["api", "splits"]) => api::splits(self),
            (&Method::POST, ["api", "tls", "renew"]) => api::renew(self),
            (_, ["api", "rooms", room @ ..]) if !room.is_empty() => {
                api::room(self, &method, &room.join("/"), &body).await
            }
            (
                _,
                ["" | "healthz" | "readyz" | "metrics"]
                | ["api", "status"]
                | ["api", "nodes" | "rooms"]
                | ["api", "nodes", _]
                | ["api", "nodes", _, "drain" | "undrain"]
                | ["api", "tls", "renew"],
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

/// A request's `Host`, as the admin listener accepted it.
#[derive(Debug, PartialEq, Eq)]
struct Host {
    /// Lower-case host name or address, IPv6 without brackets.
    name: String,
    /// The port, if `Host` named one.
    port: Option<u16>,
    /// Named in `admin.allowed_hosts` (a reverse proxy's name: its `Origin` may be `https`).
    proxied: bool,
}

impl Admin {
    /// The request's `Host` if it names this listener: its own address (the one the connection
    /// reached) or `localhost`, on its own port, or a name in `admin.allowed_hosts` (any port).
    /// A DNS-rebinding page sends its own name and gets nothing.
    fn own_host(&self, req: &Request<Incoming>, local: SocketAddr) -> Option<Host> {
        let authority: http::uri::Authority = req
            .headers()
            .get(header::HOST)?
            .to_str()
            .ok()?
            .parse()
            .ok()?;
        let name = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let port = authority.port_u16();
        if self.settings.load().allowed_hosts.contains(&name) {
            return Some(Host {
                name,
                port,
                proxied: true,
            });
        }
        let own_address = name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip == local.ip());
        let own = (own_address || name == "localhost") && port.unwrap_or(80) == local.port();
        own.then_some(Host {
            name,
            port,
            proxied: false,
        })
    }

    /// Browsers send `Origin` with cross-site requests: a page elsewhere must not drain nodes
    /// through an operator's browser (the listener is often on loopback without a token).
    /// Reads pass, and so do clients that send no `Origin` (curl, scripts); a change must come
    /// from this listener's own origin: `http://` (or, through a reverse proxy named in
    /// `admin.allowed_hosts`, `https://`), its host and its port.
    fn same_origin(&self, req: &Request<Incoming>, host: &Host) -> bool {
        if matches!(*req.method(), Method::GET | Method::HEAD) {
            return true;
        }
        let Some(origin) = req.headers().get(header::ORIGIN) else {
            return true;
        };
        let Some(origin) = origin
            .to_str()
            .ok()
            .and_then(|o| o.parse::<http::Uri>().ok())
        else {
            return false;
        };
        let scheme = origin.scheme_str().unwrap_or("");
        let default_port = match scheme {
            "http" => 80,
            "https" if host.proxied => 443,
            _ => return false,
        };
        let origin_host = origin
            .host()
            .unwrap_or("")
            .trim_start_matches('[')
            .trim_end_matches(']');
        matches!(origin.path(), "" | "/")
            && origin_host.eq_ignore_ascii_case(&host.name)
            && origin.port_u16().unwrap_or(default_port)
                == host
                    .port
                    .unwrap_or(if host.proxied { default_port } else { 80 })
    }
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
