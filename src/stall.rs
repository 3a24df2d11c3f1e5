//! Timing a pause: how long one side of a transfer has been waiting for the other, and the
//! kernel's own limit on a peer that takes nothing and answers nothing ([`give_up_on_silent_peer`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// A limit on one pause of a transfer (a body that stops arriving, a client that stops
/// reading). The clock runs only while the side being timed keeps the other waiting: it starts
/// at the first pending poll, and any progress stops it. Nothing is allocated while the
/// transfer flows.
#[derive(Debug)]
pub struct Stall {
    limit: Duration,
    waiting: Option<Pin<Box<Sleep>>>,
}

impl Stall {
    /// A pause limit of `limit`.
    pub fn new(limit: Duration) -> Stall {
        Stall {
            limit,
            waiting: None,
        }
    }

    /// Passes `polled` on, stopping the clock on progress and running it while pending; a
    /// pause past the limit becomes `Ready(Err(timed_out()))`.
    pub fn check<T, E>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<Result<T, E>>,
        timed_out: impl FnOnce() -> E,
    ) -> Poll<Result<T, E>> {
        match polled {
            Poll::Ready(result) => {
                self.waiting = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let limit = self.limit;
                let waiting = self
                    .waiting
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match waiting.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.waiting = None;
                        Poll::Ready(Err(timed_out()))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

/// A connection whose writes fail once one has waited `limit` for the other side to take
/// bytes (a client that stops reading), calling `on_timeout` then; reads pass through.
pub struct TimedWrites<T, F> {
    inner: T,
    stalled: Stall,
    on_timeout: F,
}

impl<T, F: FnMut()> TimedWrites<T, F> {
    /// Times the writes to `inner` with `limit`.
    pub fn new(inner: T, limit: Duration, on_timeout: F) -> TimedWrites<T, F> {
        TimedWrites {
            inner,
            stalled: Stall::new(limit),
            on_timeout,
        }
    }

    fn timed<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        let on_timeout = &mut self.on_timeout;
        self.stalled.check(cx, polled, || {
            on_timeout();
            io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took no bytes for limits.send_timeout",
            )
        })
    }
}

impl<T: AsyncRead + Unpin, F: Unpin> AsyncRead for TimedWrites<T, F> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin, F: FnMut() + Unpin> AsyncWrite for TimedWrites<T, F> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.timed(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.timed(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
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

/// Tells the kernel to give up on a peer that is gone (Linux): data sent to it that stays
/// unacknowledged, or unsent behind a shut window, for `limit` (`TCP_USER_TIMEOUT`), and an idle
/// connection whose keep-alive probe, sent after `limit` of silence, goes unanswered until
/// the next probe is due, 10 s later (by then the silence is past `TCP_USER_TIMEOUT`).
///
/// The server sets it on every client connection and the proxy on every node connection, both
/// with `limits.send_timeout`.
///
/// DESIGN note. `limits.send_timeout` times the router's own writes that wait, but a write the
/// socket's buffer took is done as far as the router knows, and an idle connection has no
/// write at all. A client gone without closing (a phone that left the network) then leaves the
/// kernel retransmitting for about 15 minutes (`tcp_retries2`), or, idle, holds its connection
/// until the other end speaks; a WebSocket tunnel has no idle limit, so its node would learn of
/// it only then, keeping a ghost participant in the meeting meanwhile. With this the kernel gives
/// up within `send_timeout` (idle, 10 s after it), the router sees the error, and the tunnel's
/// node side is closed with it. A live Jitsi client pings on its XMPP connection every 10 s, so
/// a meeting's signalling is never probed; an idle page connection gets a probe or two before
/// `keepalive_timeout` closes it. A node gone the same way (its host powered off, its network
/// cut) or hung (its prosody no longer reading) holds every tunnel to it likewise, each
/// keeping its client waiting for a node that will never answer: on node connections the same
/// limits close those tunnels, and their clients reconnect, to wherever their room is then.
pub fn give_up_on_silent_peer(tcp: &TcpStream, limit: Duration) {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    {
        /// Between keep-alive probes of an idle connection.
        const PROBE_INTERVAL: Duration = Duration::from_secs(10);
        let socket = socket2::SockRef::from(tcp);
        let probes = socket2::TcpKeepalive::new()
            .with_time(limit)
            .with_interval(PROBE_INTERVAL.min(limit));
        let set = (socket.set_tcp_user_timeout(Some(limit)))
            .and_then(|()| socket.set_tcp_keepalive(&probes));
        if let Err(e) = set {
            tracing::debug!(error = %e, "TCP_USER_TIMEOUT or keep-alive not set");
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "fuchsia")))]
    let _ = (tcp, limit);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn only_an_unbroken_pause_past_the_limit_fails() {
        async fn check(stall: &mut Stall, ready: bool) -> Poll<Result<(), &'static str>> {
            std::future::poll_fn(|cx| {
                let polled = if ready {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
                Poll::Ready(stall.check(cx, polled, || "stalled"))
            })
            .await
        }
        let mut stall = Stall::new(Duration::from_secs(10));
        assert!(check(&mut stall, false).await.is_pending());
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(check(&mut stall, false).await.is_pending());
        assert!(check(&mut stall, true).await.is_ready());
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(check(&mut stall, false).await.is_pending());
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(check(&mut stall, false).await.is_pending());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(check(&mut stall, false).await, Poll::Ready(Err("stalled")));
    }
}
