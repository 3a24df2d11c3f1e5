//! # jitsi-router
//!
//! One HTTPS hostname in front of a fleet of independent Jitsi Meet nodes. The first request for a
//! room places it on the least-busy node; the room is then pinned, and every later request of that
//! room — page, `config.js`, BOSH, WebSockets — goes to the same node, by proxy or by `307`.
//!
//! ## Map
//! `ARCHITECTURE.md` at the repository root has the module map, how data flows, and which layer
//! may import which; in short, from the request down:
//! - [`server`]: listeners, accept loops, the HTTP→HTTPS redirect listener, graceful shutdown;
//!   the caps on client connections ([`server::caps`]) and the time limit of each state of a
//!   client connection ([`server::conn`]). [`admin`]: the admin listener (JSON API, dashboard,
//!   and the `/metrics` exporter). [`reload`]: config and certificate reload, all-or-nothing.
//!   [`acme`]: certificates issued and renewed through an ACME server.
//! - [`proxy`]: the hyper service — forwarding with header hygiene over a per-node pool of
//!   keep-alive connections ([`proxy::upstream`]), WebSocket tunnels, redirects and error
//!   answers, the new-room rate per client ([`proxy::new_rooms`]). It asks [`placement`] for a
//!   room's node and nothing else of routing.
//! - [`placement`]: [`placement::Router::route`], the one entry point for a room: the pin table
//!   ([`placement::pins`], exact room keys in a concurrent map), the placement rule
//!   ([`placement::policy`]: estimated CPU, the herding bound, `max_cpu`, rendezvous ties), and
//!   the pins router replicas share through Redis ([`placement::shared`]); knows nothing of
//!   hyper.
//! - [`fleet`]: nodes from the config, their CPU from Prometheus ([`fleet::prometheus`]), their
//!   health ([`fleet::health`]) and live counters ([`fleet::live`]: rooms, participants joining,
//!   drain), with what consecutive readings teach (the cost of a room, participants per room),
//!   published as an immutable [`fleet::FleetState`] through `arc-swap`. Imports no routing
//!   code: the proxy reports a node's failed requests to its health and the participants who
//!   join it to its counters, and placement counts rooms into them.
//! - Leaves, which import no other module of the crate: [`config`] (the TOML schema, its
//!   validation and the typed settings), [`metrics`] (lock-free counters, and
//!   [`metrics::Decision`]), [`room`] (request path and query → room key, property-tested),
//!   [`rendezvous`], [`tls`], [`local_fault`] (a shortage of the router's own told from a node's
//!   fault), [`peer`] (who a client is, and the key per-client limits count by), [`stall`],
//!   [`throttle`] (warnings at most once an interval), [`rounds`] (background rounds by
//!   settings a reload may replace), [`error_chain`] (an error and its causes on one line).
//! - Entry points: [`check`] (a config loaded and described, its nodes and Prometheus asked once
//!   with `--probe`), [`demo`] (simulated Jitsi nodes,
//!   and real prosody signalling behind them, for `demo` and the tests), [`simulate`] (the
//!   placement simulator) and [`bench`](mod@bench) (participants joining conferences through a
//!   deployment, timed).
//!
//! ## Decisions worth knowing
//! - A room's pin lives while the room gets requests (`pin_idle_timeout`, default 10 minutes).
//!   BOSH clients poll all the time; a WebSocket makes no request after its upgrade, so an open
//!   room WebSocket touches its room's pin every third of the idle timeout. A live conference
//!   never expires, whichever transport its participants use.
//! - A pinned room always goes to its node while that node is in the fleet and healthy; only a
//!   node leaving or failing its health checks moves its rooms (on their next request), and a
//!   moved room stays where it landed. Draining keeps rooms and takes no new ones.
//! - Replicas agree without talking: Prometheus is read at wall-clock-aligned instants and every
//!   tie is broken by the room's hash, never by arrival order or randomness. With
//!   `[pins.redis]` they also share pins, so a room placed by one is where every other sends it,
//!   whatever their readings (see [`placement::shared`]).
//! - The pin table is bounded (`limits.max_pins`): beyond it new rooms are routed by bounded
//!   rendezvous hashing without a pin, so a flood of room names costs no memory.
//! - The routing decision is kept plain. A pinned room is one lookup in the concurrent map and
//!   one in the fleet state's name index, a small part of a proxied request's CPU
//!   (`benches/HISTORY.md`). A new room reads every candidate node twice (totals, then the
//!   pick) over the fleet state.
//! - Requests with no room (assets, `/`) go where the page that loaded them went, so a page and
//!   its assets come from one node and one jitsi-meet version: the pinned room of a same-host
//!   `Referer` (sent also from another site's iframe, where cookies often are not), else the
//!   affinity cookie set on room pages, else the least busy node, ties spread by a hash of the
//!   client address.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod acme;
pub mod admin;
pub mod bench;
pub mod check;
pub mod config;
pub mod demo;
pub mod error_chain;
pub mod fleet;
pub mod local_fault;
pub mod metrics;
pub mod peer;
pub mod placement;
pub mod proxy;
pub mod reload;
pub mod rendezvous;
pub mod room;
pub mod rounds;
pub mod server;
pub mod simulate;
pub mod stall;
pub mod throttle;
pub mod tls;

/// Completes on Ctrl-C (SIGINT) or SIGTERM: the signals that stop a router. The handlers are
/// installed when this is called, inside a runtime, not when the future is first polled: a signal
/// that comes while the server is still starting must not take its default action, which ends
/// the process without its shutdown (no pin snapshot, the demo's folders left behind).
pub fn server_shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::SignalKind;
        let interrupt = unix_signal(SignalKind::interrupt());
        let term = unix_signal(SignalKind::terminate());
        async move {
            tokio::select! {
                () = interrupt => {}
                () = term => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Completes when the process receives the signal `kind`, listened for from this call on;
/// never, if it cannot be listened for.
#[cfg(unix)]
pub(crate) fn unix_signal(
    kind: tokio::signal::unix::SignalKind,
) -> impl std::future::Future<Output = ()> {
    let signal = tokio::signal::unix::signal(kind);
    async move {
        match signal {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    }
}
