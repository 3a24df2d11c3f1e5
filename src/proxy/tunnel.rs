//! WebSocket tunnels: after both sides agreed to upgrade, bytes are copied both ways untouched
//! until either side closes; a close on one side is passed on to the other.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use crate::fleet::NodeId;
use crate::placement::pins::Pins;
use crate::stall::Stall;

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

/// The client's side of an HTTP/2 tunnel: its writes fail once one has waited `send_timeout`
/// for the client to make room (HTTP/1.1 tunnels are timed by their connection's socket).
struct SendTimed<T> {
    inner: T,
    /// `None`: not timed.
    stalled: Option<Stall>,
    timed_out: bool,
}

impl<T: AsyncWrite + Unpin> SendTimed<T> {
    fn timed<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        let Some(stall) = &mut self.stalled else {
            return polled;
        };
        let timed_out = &mut self.timed_out;
        stall.check(cx, polled, || {
            *timed_out = true;
            io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took no bytes for limits.send_timeout",
            )
        })
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SendTimed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SendTimed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.timed(cx, polled)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.timed(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.timed(cx, polled)
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
        let stalled = hold.as_ref().map(|hold| Stall::new(hold.send_timeout));
        let (client, upstream) = match tokio::try_join!(client, node) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(node = %id, error = %e, "websocket upgrade failed");
                return;
            }
        };
        let mut client = SendTimed {
            inner: TokioIo::new(client),
            stalled,
            timed_out: false,
        };
        let mut upstream = TokioIo::new(upstream);
        let copy = super::copy::both_ways(&mut client, &mut upstream);
        let ended = match &keepalive {
            None => copy.await,
            Some(keepalive) => keepalive.while_open(copy).await,
        };
        if let Some(hold) = hold.as_ref().filter(|_| client.timed_out) {
            (hold.stalled)();
        }
        match ended {
            Ok((up, down)) => {
                tracing::debug!(node = %id, bytes_up = up, bytes_down = down, "websocket closed")
            }
            Err(e) => tracing::debug!(node = %id, error = %e, "websocket ended"),
        }
    });
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
