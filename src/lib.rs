//! # jitsi-router
//!
//! One HTTPS hostname in front of a fleet of independent Jitsi Meet nodes. The first request for a
//! room places it on the least-busy node; the room is then pinned, and every later request of that
//! room — page, `config.js`, BOSH, WebSockets — goes to the same node, by proxy or by `307`.
//!
//! ## Map
//! - [`room`]: request path and query → [`room::Target`] (a room key, a bridge server id, or
//!   nothing). Pure and property-tested: the same room in every URL form gives one key.
//! - [`fleet`]: nodes from the config, their CPU from Prometheus ([`fleet::prometheus`]), their
//!   health ([`fleet::health`]) and live counters ([`fleet::live`]: rooms, drain), published as an
//!   immutable [`fleet::FleetState`] through `arc-swap`. The proxy reports a node's failed
//!   requests to its health ([`fleet::health::record`], passive checks).
//! - [`placement`]: the pin table ([`placement::pins`]), the placement rule
//!   ([`placement::policy`]: estimated CPU, bounded load, `max_cpu`, rendezvous ties),
//!   rendezvous hashing, and the pins router replicas share through Redis
//!   ([`placement::shared`]); knows nothing of hyper.
//! - [`proxy`]: the hyper service — forwarding with header hygiene over a per-node pool of
//!   keep-alive connections ([`proxy::upstream`]), WebSocket tunnels (copied both ways with no
//!   buffer held while idle), redirects and error answers, the new-room rate per client
//!   ([`proxy::new_rooms`]).
//! - [`tls`]: certificate loading (with a reloadable resolver) and the rustls server config.
//! - [`server`]: listeners, accept loops, the HTTP→HTTPS redirect listener, graceful shutdown;
//!   the caps on client connections ([`server::caps`]) and the time limit of each state of a
//!   client connection ([`server::conn`]).
//! - [`local_fault`]: telling a shortage of the router's own (out of file descriptors) from a
//!   node's fault; [`peer`]: the client key per-client limits count by; [`stall`]: the timer of
//!   a pause in a transfer.
//! - [`admin`]: the admin listener: JSON API (nodes, rooms, drain, readiness), the fleet
//!   dashboard and `/metrics`, whose exporter reads the counters of [`metrics`] (lock-free, a
//!   leaf module the counting modules import) and the gauges at scrape time.
//! - [`reload`]: config and certificate reload on SIGHUP or file change, all-or-nothing.
//! - [`config`]: the TOML schema and its validation; [`demo`]: simulated Jitsi nodes for `demo`
//!   and tests, and real prosody signalling nodes behind them ([`demo::prosody`], for
//!   `demo --prosody` and the end-to-end tests); [`simulate`]: the placement simulator behind
//!   `jitsi-router simulate`.
//!
//! A request goes server → proxy → room → placement (reading the fleet state) → upstream; what
//! flows back is a node's failed requests (proxy → fleet health) and its room counts (placement →
//! fleet live counters). The fleet state is built with placement's short list and rendezvous
//! seed (`fleet` imports them from `placement`).
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
//! - The hot paths share no written cache line they can avoid. A pinned room's decision reads one
//!   16-byte slot of the pin index, with no lock (stamping the pin's idle timer from the kernel's
//!   coarse clock), and its
//!   node's packed load word, and hands back the node borrowed from the fleet state rather than
//!   cloning its `Arc`, whose count every core would otherwise keep taking from the others. A new
//!   room's placement reads a short list of a few dozen nodes (`placement::shortlist`) that is
//!   exactly as good as reading them all, and scans every node's packed word only when the list
//!   runs out or something it relies on changed; the words sit side by side in chunks
//!   ([`fleet::live::Words`]) and per-node metrics live on cache lines of their own. The prices:
//!   a pin's request count may miss a request when two of the same room arrive at the same
//!   instant, and every placement and room end updates one fleet-wide room total (the list needs
//!   the exact bounded-load cap), a cache line all cores write.
//! - Requests with no room (assets, `/`) follow the affinity cookie set on room pages, so a page and
//!   its assets come from one node and one jitsi-meet version; without the cookie they go to the
//!   least-loaded node, ties spread by a hash of the client address.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod config;
pub mod demo;
pub mod fleet;
pub mod local_fault;
pub mod metrics;
pub mod peer;
pub mod placement;
pub mod proxy;
pub mod reload;
pub mod room;
pub mod server;
pub mod simulate;
pub mod stall;
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
