//! WebSocket tunnels: after both sides agreed to upgrade, bytes are copied both ways untouched
//! until either side closes; a close on one side is passed on to the other.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;

use crate::fleet::NodeId;
use crate::placement::pins::Pins;
use crate::stall::TimedWrites;

/// Keeps a room's pin alive while its WebSocket is open: after the upgrade a client sends no more
/// HTTP requests, so without this a conference held entirely over WebSockets would be forgotten
/// after `pin_idle_timeout` and its next participant could be placed on another node.
pub struct Keepalive {
    /// The room key.
    pub room: String,
    /// The pin table to touch.
    pub pins: Arc<Pins>,
    /// How often to touch it (a fraction of the idle timeout).
    pub every: Duration,
    /// Counts the tunnel as its client's signalling to the node while it is open (XMPP
    /// WebSockets only).
    pub signalling: Option<super::signalling::Open>,
}

impl Keepalive {
    /// Drives `tunnel` to its end, touching the room's pin every `every` meanwhile.
    async fn while_open<T>(&self, tunnel: impl std::future::Future<Output = T>) -> T {
        tokio::pin!(tunnel);
        let mut touch = tokio::time::interval(self.every);
        loop {
            tokio::select! {
                ended = &mut tunnel => return ended,
                _ = touch.tick() => {
                    self.pins.lookup(&self.room);
                }
            }
        }
    }
}

/// Keeps the client connection of a WebSocket over HTTP/2 (RFC 8441) in use while the tunnel
/// is open: the tunnel is one of the connection's streams, and the connection's idle timeout
/// must not close it. The server puts one in the request's extensions.
#[derive(Clone)]
pub struct Hold {
    _mark: Arc<dyn std::any::Any + Send + Sync>,
    /// `limits.send_timeout`: the stream's writes are timed here, as the connection's socket
    /// cannot show a stream the client makes no room for (HTTP/2 flow control).
    send_timeout: Duration,
    /// Tells the connection that its client took nothing of the stream for `send_timeout`.
    stalled: Arc<dyn Fn() + Send + Sync>,
}

impl Hold {
    /// A hold that lasts as long as `mark`, on a connection whose client may take no bytes of a
    /// stream for `send_timeout`, and that `stalled` tells when one did.
    pub fn new(
        mark: impl std::any::Any + Send + Sync,
        send_timeout: Duration,
        stalled: impl Fn() + Send + Sync + 'static,
    ) -> Hold {
        Hold {
            _mark: Arc::new(mark),
            send_timeout,
            stalled: Arc::new(stalled),
        }
    }
}

/// Joins the client's and the node's upgraded connections in a background task, counted by
/// `guard` (and holding `hold`, for an HTTP/2 WebSocket) until it ends.
pub fn splice(
    client: OnUpgrade,
    node: OnUpgrade,
    id: NodeId,
    guard: TunnelGuard,
    hold: Option<Hold>,
    keepalive: Option<Keepalive>,
) {
    tokio::spawn(async move {
        let _open = guard;
        let (client, upstream) = match tokio::try_join!(client, node) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(node = %id, error = %e, "websocket upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        let ended = match &hold {
            // HTTP/1.1: the connection's socket times the client's writes.
            None => copy(&mut client, &mut upstream, keepalive.as_ref()).await,
            Some(hold) => {
                let stalled = || (hold.stalled)();
                let mut client = TimedWrites::new(client, hold.send_timeout, stalled);
                copy(&mut client, &mut upstream, keepalive.as_ref()).await
            }
        };
        match ended {
            Ok((up, down)) => {
                tracing::debug!(node = %id, bytes_up = up, bytes_down = down, "websocket closed")
            }
            Err(e) => tracing::debug!(node = %id, error = %e, "websocket ended"),
        }
    });
}

/// Copies both ways, touching the room's pin meanwhile when there is a `keepalive`.
async fn copy<A, B>(
    a: &mut A,
    b: &mut B,
    keepalive: Option<&Keepalive>,
) -> std::io::Result<(u64, u64)>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let copy = super::copy::both_ways(a, b);
    match keepalive {
        None => copy.await,
        Some(keepalive) => keepalive.while_open(copy).await,
    }
}

/// Counts open tunnels, so shutdown can wait for them (and metrics can show them).
#[derive(Debug, Default)]
pub struct Tunnels {
    open: AtomicUsize,
    closed: Notify,
}

/// Held by a tunnel while it is open.
#[derive(Debug)]
pub struct TunnelGuard(Arc<Tunnels>);

impl Tunnels {
    /// Counts a new tunnel until the guard drops.
    pub fn open(self: &Arc<Self>) -> TunnelGuard {
        self.open.fetch_add(1, Ordering::Relaxed);
        TunnelGuard(self.clone())
    }

    /// Tunnels open now.
    pub fn count(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Completes when no tunnel is open.
    pub async fn idle(&self) {
        loop {
            // Created before the check: `notify_waiters` reaches it even before it is polled.
            let closed = self.closed.notified();
            if self.count() == 0 {
                return;
            }
            closed.await;
        }
    }
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}
