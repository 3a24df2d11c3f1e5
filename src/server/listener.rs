//! What every accept loop shares ([`Listener`]): the caps at accept, and the edge in front of
//! the public listeners ([`Edge`]): the PROXY header of trusted balancers, whose forwarding
//! headers are believed, and HSTS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use super::caps::{Admitted, Connections, Refused};
use super::conn::ConnLimits;
use super::proxy_header;
use crate::config::{Config, TrustedProxies};
use crate::local_fault::LocalFault;
use crate::metrics::{Limit, Metrics, ProxyRefusal};
use crate::peer::Client;
use crate::throttle::Throttle;

/// What every accept loop shares.
#[derive(Clone)]
pub(super) struct Listener {
    pub(super) limits: ConnLimits,
    pub(super) connections: Arc<Connections>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) stopping: watch::Receiver<bool>,
    pub(super) edge: Arc<Edge>,
}

/// What the public listeners believe of the peers in front of the router, and add to answers.
pub(super) struct Edge {
    /// Read a PROXY header from the trusted proxies (`server.proxy_protocol`).
    pub(super) proxy_protocol: bool,
    pub(super) trusted: TrustedProxies,
    /// The time a PROXY header (and on HTTPS, with the TLS handshake) may take.
    pub(super) handshake_timeout: Duration,
    /// `Strict-Transport-Security` for HTTPS answers.
    pub(super) hsts: Option<HeaderValue>,
    /// Connections closed at or after their PROXY header, logged at most every 10 s.
    pub(super) warned: Throttle,
}

impl Edge {
    pub(super) fn of(config: &Config) -> Edge {
        let server = &config.server;
        Edge {
            proxy_protocol: server.proxy_protocol,
            trusted: server.trusted_proxies.clone(),
            handshake_timeout: config.limits.tls_handshake_timeout,
            hsts: (server.hsts.as_deref()).and_then(|v| HeaderValue::from_str(v).ok()),
            warned: Throttle::default(),
        }
    }

    /// Whether connections from `peer` count for the client their PROXY header names.
    pub(super) fn proxied(&self, peer: SocketAddr) -> bool {
        self.proxy_protocol && self.trusted.contains(peer.ip())
    }
}

impl Listener {
    /// The next connection within the caps; those over a cap are closed here, before any TLS.
    pub(super) async fn accept(
        &self,
        listener: &TcpListener,
        warned: &Throttle,
    ) -> (TcpStream, SocketAddr, Admitted) {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and the like must not spin or kill the loop.
                    if let Some(fault) = LocalFault::find(&e) {
                        self.metrics.local_fault(fault);
                    }
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let counted_for = (!self.edge.proxied(peer)).then_some(peer.ip());
            match self.connections.admit(counted_for) {
                Ok(admitted) => {
                    crate::stall::give_up_on_silent_peer(&tcp, self.limits.send_timeout);
                    return (tcp, peer, admitted);
                }
                Err(refused) => {
                    let (limit, cap) = match refused {
                        Refused::Full => (Limit::Connections, "limits.max_connections"),
                        Refused::ClientFull => (
                            Limit::ClientConnections,
                            "limits.max_connections_per_client",
                        ),
                    };
                    self.metrics.limit_hit(limit);
                    if let Some(closed) = warned.due() {
                        tracing::warn!(%peer, cap, open = self.connections.count(), closed, "connection over a cap closed at accept (warned at most every 10 s, with those closed since)");
                    }
                }
            }
        }
    }
}

impl Listener {
    /// The client of a connection from `peer`: read from its PROXY header (by `deadline`) when
    /// `server.proxy_protocol` is on, else the peer. `None`: the connection is to be closed
    /// (counted, and logged at most every 10 s).
    pub(super) async fn client(
        &self,
        tcp: &mut TcpStream,
        peer: SocketAddr,
        admitted: &mut Admitted,
        deadline: Instant,
    ) -> Option<Client> {
        let edge = &self.edge;
        let addr = if edge.proxy_protocol {
            let read = proxy_header::read(tcp, peer, &edge.trusted);
            let found = (tokio::time::timeout_at(deadline, read).await)
                .unwrap_or(Err(ProxyRefusal::Timeout));
            match found {
                Ok(addr) => addr,
                Err(refusal) => {
                    self.metrics.proxy_refused(refusal);
                    self.warn(|closed| tracing::warn!(%peer, reason = refusal.reason(), closed, "connection closed at its PROXY header (warned at most every 10 s, with those closed since)"));
                    return None;
                }
            }
        } else {
            peer
        };
        if admitted.count_for(addr.ip()).is_err() {
            self.metrics.limit_hit(Limit::ClientConnections);
            let cap = "limits.max_connections_per_client";
            self.warn(|closed| tracing::warn!(client = %addr, cap, closed, "connection over a cap closed after its PROXY header (warned at most every 10 s, with those closed since)"));
            return None;
        }
        Some(Client {
            addr,
            trusted: edge.trusted.contains(addr.ip()),
        })
    }

    /// Runs `log` with the connections closed since it last ran, unless that was less than
    /// 10 s ago.
    pub(super) fn warn(&self, log: impl FnOnce(u64)) {
        if let Some(closed) = self.edge.warned.due() {
            log(closed);
        }
    }
}

/// Connections the kernel may hold for the router to accept. A reconnect storm (every
/// participant's WebSockets at once, after a network blip or a restart) must not overflow the
/// queue: a connection it drops waits for its client to send its SYN again, a second or more.
/// The kernel caps it at `net.core.somaxconn` (4,096 by default since Linux 5.4); tokio's own
/// default is 1,024, nginx's 511.
const LISTEN_BACKLOG: u32 = 4096;

/// A listening socket on `addr`, with address reuse (as `TcpListener::bind` sets it) and a
/// queue of [`LISTEN_BACKLOG`]; an IPv6 one takes IPv6 connections only when `v6_only`.
///
/// DESIGN note. On Linux an IPv6 wildcard (`[::]:443`) takes IPv4 connections too by default
/// (`net.ipv6.bindv6only` 0), so binding it next to an IPv4 address of the same port fails
/// with "address in use". [`needs_v6_only`] tells when to make it IPv6-only: alone, `[::]:443`
/// serves both families as the kernel offers; listed with `0.0.0.0:443` (the example config's
/// list), each serves its own, as nginx's `listen [::]:443` does.
pub(super) fn bind(addr: SocketAddr, v6_only: bool) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    if v6_only && addr.is_ipv6() {
        socket2::SockRef::from(&socket).set_only_v6(true)?;
    }
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Whether the listener on `addr` must take IPv6 connections only, so that it can be bound
/// beside `all`: when it is IPv6 and one of `all` is an IPv4 address of the same port.
pub(super) fn needs_v6_only(addr: SocketAddr, all: &[SocketAddr]) -> bool {
    addr.is_ipv6()
        && all
            .iter()
            .any(|other| other.is_ipv4() && other.port() == addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst of connections that nobody accepts yet: each completes its handshake while the
    /// queue has room, up to its length (which the kernel caps at `net.core.somaxconn`).
    #[tokio::test]
    async fn the_listen_queue_holds_a_reconnect_storm() {
        const STORM: usize = 1500;
        let _ = rlimit::increase_nofile_limit(u64::MAX);
        let listener = bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let addr = listener.local_addr().unwrap();
        let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|text| text.trim().parse::<usize>().ok())
            .unwrap_or(usize::MAX);
        let connect = || tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr));
        let done = futures_util::future::join_all((0..STORM).map(|_| connect())).await;
        let established = done.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
        // A queue of n holds n + 1 connections.
        let room = (LISTEN_BACKLOG as usize).min(somaxconn) + 1;
        assert_eq!(established, STORM.min(room));
        drop(listener);
    }
}
