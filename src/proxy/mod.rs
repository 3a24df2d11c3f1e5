//! The request handler: classify the request, ask placement for a node, then forward (proxy mode)
//! or redirect (redirect mode), and mark the answer with the node's name.

pub mod body;
mod copy;
pub mod errors;
pub mod forward;
pub mod headers;
pub mod new_rooms;
pub mod redirect;
mod screen;
pub mod signalling;
pub mod tunnel;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::config::{Config, Mode};
use crate::fleet::{Node, NodeId};
use crate::metrics::{Limit, Metrics};
use crate::peer::{Client, ClientKey};
use crate::placement::{Decision, Router};
use crate::rendezvous;
use crate::room::{self, RoomKey, RoomLimits, Target};
use crate::throttle::Throttle;
use crate::tls::TlsError;
use forward::ForwardSettings;
use screen::Screened;
use signalling::Signalling;
use upstream::{Pooled, UpstreamClient};

/// Response body: a node's streamed body, or a small body of the router's own.
pub type Body = Either<Pooled, Full<Bytes>>;

/// Everything the handler needs, shared by all connections.
pub struct Proxy {
    router: Arc<Router>,
    client: UpstreamClient,
    mode: Mode,
    forward: ForwardSettings,
    room_limits: RoomLimits,
    max_request_head: usize,
    retry_after: Duration,
    affinity_cookie: String,
    keepalive_every: Duration,
    new_rooms: new_rooms::NewRooms,
    metrics: Arc<Metrics>,
    /// Bridge channels whose server id no node declared, warned about once a minute.
    undeclared_bridges: Throttle,
    /// The nodes each client holds signalling WebSockets to.
    signalling: Arc<Signalling>,
}

/// What routing settled on for one request.
struct Choice {
    node: Arc<Node>,
    /// Set the affinity cookie on the answer (room pages).
    page: bool,
    /// A room WebSocket: the tunnel keeps the room's pin alive.
    keepalive: Option<tunnel::Keepalive>,
    /// A room's signalling WebSocket (`/xmpp-websocket?room=`): once the node takes it, one
    /// participant joined the room there.
    joins: bool,
    /// How the node was found.
    decision: Decision,
}

impl Proxy {
    /// A handler over this router, configured by `config`.
    pub fn new(router: Arc<Router>, config: &Config) -> Result<Proxy, TlsError> {
        let metrics = Arc::<Metrics>::default();
        Ok(Proxy {
            router: router.clone(),
            client: UpstreamClient::new(&config.upstream, &config.limits, metrics.clone())?,
            mode: config.routing.mode,
            forward: ForwardSettings {
                response_timeout: config.upstream.response_timeout,
                request_body_timeout: config.limits.request_body_timeout,
                retry_after: config.limits.retry_after,
                metrics: metrics.clone(),
                preserve_host: config.upstream.preserve_host,
                fleet: router.fleet().clone(),
                tunnels: Arc::default(),
            },
            room_limits: RoomLimits {
                max_chars: config.limits.max_room_chars,
            },
            max_request_head: config.limits.max_request_head,
            retry_after: config.limits.retry_after,
            affinity_cookie: config.routing.affinity_cookie.clone(),
            keepalive_every: (config.routing.pin_idle_timeout / 3).max(Duration::from_millis(100)),
            new_rooms: new_rooms::NewRooms::new(
                config.limits.new_rooms_per_second,
                config.limits.new_room_burst,
            ),
            metrics,
            undeclared_bridges: Throttle::new(Duration::from_secs(60)),
            signalling: Arc::default(),
        })
    }

    /// Closes pooled upstream connections idle past `pool_idle_timeout`, and those to nodes no
    /// longer in the fleet; how many it closed.
    pub fn close_idle_connections(&self) -> usize {
        let state = self.router.fleet().load();
        self.client
            .close_idle(state.nodes().iter().map(|node| &node.spec.upstream))
    }

    /// Open WebSocket tunnels.
    pub fn tunnels(&self) -> &Arc<tunnel::Tunnels> {
        &self.forward.tunnels
    }

    /// Proxy or redirect.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Lets each client create `per_second` new rooms, `burst` at once, from the next room on
    /// (a reload).
    pub fn set_new_room_rate(&self, per_second: f64, burst: u32) {
        self.new_rooms.set_rate(per_second, burst);
    }

    /// How room names are parsed (`limits.max_room_chars`).
    pub fn room_limits(&self) -> RoomLimits {
        self.room_limits
    }

    /// The router's own counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The routing core behind this handler.
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// Handles one request from `client`.
    pub async fn handle(&self, req: Request<Incoming>, client: Client) -> Response<Body> {
        if headers::head_size(&req) > self.max_request_head {
            let reason = format!("request head larger than {} bytes", self.max_request_head);
            return self.refuse(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, &reason);
        }
        let websocket = headers::is_websocket_upgrade(&req);
        match screen::screen(&req, websocket) {
            Screened::Pass => {}
            Screened::Refuse(status, reason) => return self.refuse(status, reason),
            Screened::ServerOptions => {
                self.metrics.no_node_requests.count(StatusCode::OK);
                let mut response = Response::new(Either::Right(Full::default()));
                let allow = HeaderValue::from_static(screen::ALLOW);
                response.headers_mut().insert(header::ALLOW, allow);
                return response;
            }
        }
        let started = std::time::Instant::now();
        let mut choice = match self.choose(&req, client.addr, websocket).await {
            Ok(choice) => choice,
            Err(refusal) => {
                match refusal {
                    Refusal::BadRoom(_) => {}
                    Refusal::TooManyNewRooms(_) => self.metrics.limit_hit(Limit::NewRooms),
                    _ => self.metrics.decided(Decision::Refused, started),
                }
                let response = refusal.response(self.retry_after);
                self.metrics.no_node_requests.count(response.status());
                return response;
            }
        };
        self.metrics.decided(choice.decision, started);
        let method = req.method().clone();
        let log_path =
            tracing::enabled!(tracing::Level::DEBUG).then(|| req.uri().path().to_owned());
        let (mut response, answered) = match self.mode {
            Mode::Redirect => (
                redirect::to_node(&choice.node, req.uri()),
                forward::Answered::Node,
            ),
            Mode::Proxy => {
                let upgrade = forward::Upgrade {
                    websocket,
                    keepalive: choice.keepalive.take(),
                };
                forward::forward(
                    &self.client,
                    &self.forward,
                    req,
                    &choice.node,
                    client,
                    upgrade,
                )
                .await
            }
        };
        match answered {
            forward::Answered::Node => {
                self.node_answered(&mut response, &choice, &method, websocket)
            }
            // The client's fault or the router's own: not the node's answer.
            forward::Answered::Router => self.metrics.no_node_requests.count(response.status()),
        }
        if let Some(path) = log_path {
            let status = response.status().as_u16();
            let client = client.addr.ip();
            tracing::debug!(%client, %method, %path, node = %choice.node.id, status, "request");
        }
        response
    }

    /// Marks and counts an answer that came from the node: the shard header, the affinity
    /// cookie on a room page, and a participant joined when the node took a room's signalling
    /// WebSocket.
    fn node_answered(
        &self,
        response: &mut Response<Body>,
        choice: &Choice,
        method: &Method,
        websocket: bool,
    ) {
        headers::mark_shard(response.headers_mut(), choice.node.id.as_str());
        // A room page is the HTML a GET of `/<room>` answers: not a WebSocket's `101`
        // on its path, not a redirect or an error page.
        let page = choice.page
            && method == Method::GET
            && response.status().is_success()
            && headers::is_html(response.headers());
        if page && self.mode == Mode::Proxy {
            if let Some(cookie) =
                headers::affinity_cookie(&self.affinity_cookie, choice.node.id.as_str())
            {
                response.headers_mut().append(header::SET_COOKIE, cookie);
            }
        }
        choice.node.live.report.requests.count(response.status());
        // A WebSocket the node took: `101`, or `200` to an HTTP/2 `CONNECT`.
        let opened = match response.status() {
            StatusCode::SWITCHING_PROTOCOLS => true,
            StatusCode::OK => websocket && method == Method::CONNECT,
            _ => false,
        };
        if choice.joins && opened {
            choice.node.live.participant_joined();
        }
    }

    /// An answer of the router's own, counted under `node="none"`; a `405` names the methods
    /// allowed, as RFC 9110 §15.5.6 asks.
    fn refuse(&self, status: StatusCode, reason: &str) -> Response<Body> {
        self.metrics.no_node_requests.count(status);
        let mut response = errors::plain(status, reason);
        if status == StatusCode::METHOD_NOT_ALLOWED {
            let allow = HeaderValue::from_static(screen::ALLOW);
            response.headers_mut().insert(header::ALLOW, allow);
        }
        response
    }

    async fn choose(
        &self,
        req: &Request<Incoming>,
        peer: SocketAddr,
        websocket: bool,
    ) -> Result<Choice, Refusal> {
        let uri = req.uri();
        let fetch = headers::fetch(req.headers());
        match room::classify(uri.path(), uri.query(), fetch, &self.room_limits)? {
            Target::Room { key, page } => {
                self.choose_room(&key, page, uri.path(), peer, websocket)
                    .await
            }
            Target::Bridge { server_id } => {
                let node = match self.router.route_bridge(server_id) {
                    Some(node) => node,
                    None => self.undeclared_bridge(req, ClientKey::of(peer.ip()), server_id)?,
                };
                Ok(Choice {
                    node,
                    page: false,
                    keepalive: None,
                    joins: false,
                    decision: Decision::Bridge,
                })
            }
            Target::Unrouted => self.choose_unrouted(req, peer),
        }
    }

    /// A room's node, its new-room token taken or given back, and what its WebSocket keeps.
    async fn choose_room(
        &self,
        key: &RoomKey<'_>,
        page: bool,
        path: &str,
        peer: SocketAddr,
        websocket: bool,
    ) -> Result<Choice, Refusal> {
        // A room to place costs its client a token of the new-room rate; one that turns out
        // placed already (by a concurrent request or another replica), or routed without a
        // pin, gives it back.
        let client = ClientKey::of(peer.ip());
        let mut took = false;
        let admit = || {
            self.new_rooms.take(client)?;
            took = true;
            Ok(())
        };
        let routed = (self.router.route(key, admit).await).map_err(Refusal::TooManyNewRooms)?;
        if took
            && !routed
                .as_ref()
                .is_some_and(|r| r.decision == Decision::Placed)
        {
            self.new_rooms.give_back(client);
        }
        let routed = routed.ok_or(Refusal::NoNodeForRoom)?;
        // A participant's signalling. Another room WebSocket (a whiteboard's `/socket.io/`,
        // pinned by its board) says nothing of where the client's conference is, and is nobody
        // joining.
        let xmpp = websocket && path.ends_with("/xmpp-websocket");
        let keepalive = websocket.then(|| tunnel::Keepalive {
            room: key.to_string(),
            pins: self.router.pins().clone(),
            every: self.keepalive_every,
            signalling: xmpp.then(|| self.signalling.open(client, routed.node.id.clone())),
        });
        Ok(Choice {
            node: routed.node,
            page,
            keepalive,
            joins: xmpp,
            decision: routed.decision,
        })
    }

    /// A request of no room: the node of the room whose page loaded it, else the affinity
    /// cookie's (the last room page this browser opened, and only where cookies are sent), else
    /// the least-loaded node, ties spread by client address.
    fn choose_unrouted(
        &self,
        req: &Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Choice, Refusal> {
        let referred = headers::referring_page(req).and_then(|page| self.pinned(&page));
        let preferred = (referred.as_ref().map(NodeId::as_str))
            .or_else(|| headers::cookie(req.headers(), &self.affinity_cookie));
        let spread = match peer.ip() {
            std::net::IpAddr::V4(ip) => rendezvous::seed(&ip.octets()),
            std::net::IpAddr::V6(ip) => rendezvous::seed(&ip.octets()),
        };
        let node = self
            .router
            .route_unrouted(preferred, spread)
            .ok_or(Refusal::NoNode)?;
        Ok(Choice {
            node,
            page: false,
            keepalive: None,
            joins: false,
            decision: Decision::Unrouted,
        })
    }

    /// The node for a bridge channel whose server id no node declared: the node the browser's
    /// affinity cookie names (where the room page it opened last came from), else the one node
    /// the client holds signalling WebSockets to. Either is where its conference is.
    ///
    /// DESIGN note: docker-jitsi-meet's bridges take their container's address as server id
    /// unless `JVB_WS_SERVER_ID` is set, and that address is alike on every Docker host, so an
    /// id often cannot tell the nodes apart. The cookie covers browsers, on this host's room
    /// pages and in other sites' iframes (it is partitioned, see
    /// [`headers::affinity_cookie`]); the client's open signalling covers the mobile apps and
    /// browsers that withhold the cookie, unless people behind one address hold signalling to
    /// two nodes (then nothing is guessed). Declared ids (`jvb_server_ids`) work for every
    /// client and are checked first; the warning tells the operator which ids to declare.
    fn undeclared_bridge(
        &self,
        req: &Request<Incoming>,
        client: ClientKey,
        server_id: &str,
    ) -> Result<Arc<Node>, Refusal> {
        let state = self.router.fleet().load();
        let named = headers::cookie(req.headers(), &self.affinity_cookie)
            .and_then(|name| state.node(name).cloned());
        let node = named.or_else(|| {
            let node = self.signalling.node_of(client)?;
            state.node(node.as_str()).cloned()
        });
        if let Some(requests) = self.undeclared_bridges.due() {
            tracing::warn!(
                server_id,
                routed_to = node.as_ref().map(|n| n.id.as_str()),
                requests_so_far = requests,
                "bridge channel for a videobridge server id no node declares; routed by the affinity cookie or the client's signalling, 404 without either (give each node's bridge an id of its own and list it in [[nodes]] jvb_server_ids)"
            );
        }
        node.ok_or(Refusal::UnknownBridge)
    }

    /// The node of a pinned room named by `page` (a `Referer`: a page a browser loaded); never
    /// places a room.
    fn pinned(&self, page: &PathAndQuery) -> Option<NodeId> {
        let limits = &self.room_limits;
        match room::classify(page.path(), page.query(), room::Fetch::Document, limits) {
            Ok(Target::Room { key, .. }) => self.router.pins().lookup(key.as_str()),
            _ => None,
        }
    }
}

/// Why a request gets no node; each maps to one status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The room key is invalid: 400.
    #[error(transparent)]
    BadRoom(#[from] room::RoomError),
    /// No node can take a room: 503.
    #[error("no node can take this room now")]
    NoNodeForRoom,
    /// No node at all for a request without a room: 503.
    #[error("no node is available now")]
    NoNode,
    /// A colibri-ws path names a server id no node declared: 404.
    #[error("unknown videobridge server id")]
    UnknownBridge,
    /// The client created new rooms faster than `limits.new_rooms_per_second`: 429, with the
    /// wait until it may create the next.
    #[error(
        "too many new rooms from your address (limits.new_rooms_per_second); try again shortly"
    )]
    TooManyNewRooms(Duration),
}

impl Refusal {
    fn response(&self, retry_after: Duration) -> Response<Body> {
        let reason = self.to_string();
        match self {
            Refusal::BadRoom(_) => errors::plain(StatusCode::BAD_REQUEST, &reason),
            Refusal::NoNodeForRoom | Refusal::NoNode => errors::unavailable(&reason, retry_after),
            Refusal::UnknownBridge => errors::plain(StatusCode::NOT_FOUND, &reason),
            Refusal::TooManyNewRooms(wait) => {
                let mut response = errors::plain(StatusCode::TOO_MANY_REQUESTS, &reason);
                let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
                response
            }
        }
    }
}
