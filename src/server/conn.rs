//! One client connection's life after it is accepted: what it is doing, and how long it may do
//! it.
//!
//! DESIGN note. A connection is in one of a few states, and each has its own time limit
//! (`[limits]`):
//!
//! | state | limit | then |
//! | --- | --- | --- |
//! | no request yet (TLS done; HTTP/2 preface and first `HEADERS` included) | `request_head_timeout` | closed (HTTP/2: `GOAWAY`) |
//! | HTTP/1.1 head in progress (a byte of it arrived) | `request_head_timeout` from that byte | closed |
//! | no request in flight (keep-alive; an open HTTP/2 WebSocket counts as one in flight) | `keepalive_timeout` since the last answer | closed (HTTP/2: `GOAWAY`) |
//! | request body the node waits for | `request_body_timeout` between bytes | `408` (see `proxy::body`) |
//! | node's response body | `response_body_timeout` between bytes | answer cut (see `proxy::upstream`) |
//! | client takes no bytes of what it is sent (also in WebSocket tunnels) | `send_timeout` | closed |
//! | HTTP/2: client makes no room for more of an answer (flow control; the connection itself reads on) | `send_timeout` | `GOAWAY`, dropped after [`CLOSE_GRACE`] |
//!
//! hyper's own `header_read_timeout` is not used: it starts when a connection becomes idle, so
//! it would also be the keep-alive timeout, and the auto-detecting server (HTTP/1.1 or HTTP/2)
//! does not apply it before the protocol is known, which left silent connections open forever.
//! Instead three pieces share an [`Activity`] record: the connection's reader and writer
//! ([`Watched`]) note arriving bytes and time out a stalled write; each request holds an
//! [`InFlight`] mark until its answer is written ([`Tracked`], which on HTTP/2 also notes since
//! when hyper has not asked for more of it); and [`supervise`] drives the
//! hyper connection, sleeping until the next deadline the record implies, then closing the
//! connection or asking it to go away (an HTTP/2 client that does not leave within
//! [`CLOSE_GRACE`] is dropped). A deadline is checked again when it comes, so a request that
//! started meanwhile moves it on; nothing runs per request beyond two atomic updates and a
//! clock read.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

use super::caps::Admitted;
use super::parse_errors::{self, HeadLimits};
use crate::config::{Limits, CANCELLED_STREAMS_WINDOW};
use crate::metrics::{Limit, Metrics, Timeout};
use crate::stall::TimedWrites;

/// How long a connection asked to go away may take to leave before it is dropped.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The per-connection limits, from `[limits]`.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// See [`Limits::request_head_timeout`].
    pub request_head_timeout: Duration,
    /// See [`Limits::keepalive_timeout`].
    pub keepalive_timeout: Duration,
    /// See [`Limits::send_timeout`].
    pub send_timeout: Duration,
    /// See [`Limits::h2_max_cancelled_streams`].
    pub max_cancelled_streams: u32,
    /// What the reasons of hyper's bare error answers mention.
    pub head: HeadLimits,
}

impl ConnLimits {
    /// The connection limits of `[limits]`.
    pub fn of(limits: &Limits) -> ConnLimits {
        ConnLimits {
            request_head_timeout: limits.request_head_timeout,
            keepalive_timeout: limits.keepalive_timeout,
            send_timeout: limits.send_timeout,
            max_cancelled_streams: limits.h2_max_cancelled_streams,
            head: HeadLimits {
                max_request_head: limits.max_request_head,
                max_request_headers: limits.max_request_headers,
            },
        }
    }
}

/// No time recorded.
const NEVER: u64 = u64::MAX;

/// [`Activity::alarm`]: no reason to go.
const QUIET: u8 = 0;
/// [`Activity::alarm`]: the client cancelled too many streams.
const CANCELLED: u8 = 1;
/// [`Activity::alarm`]: the client stalled a WebSocket stream.
const STALLED: u8 = 2;

/// What one connection is doing, shared by its reader and writer, its requests and its
/// supervisor. Times are milliseconds since the connection was accepted.
pub struct Activity {
    born: Instant,
    limits: ConnLimits,
    metrics: Arc<Metrics>,
    /// Requests started whose answer is not yet written.
    in_flight: AtomicU32,
    /// Whether any request started.
    served: AtomicBool,
    /// When the last answer was written.
    idle_since: AtomicU64,
    /// When bytes first arrived while no request was in flight; [`NEVER`] if none did.
    head_since: AtomicU64,
    /// HTTP/2: bytes between requests are frames (pings, window updates), not a head.
    h2: AtomicBool,
    /// Streams the client cancelled before their answer: (window start, count).
    cancelled: Mutex<(u64, u32)>,
    /// Why the connection must go ([`QUIET`] while it need not); `supervisor` is woken when
    /// it is set.
    alarm: AtomicU8,
    /// The supervisor's task, registered at each of its polls (no lock, unlike a `Notify`:
    /// this is polled at every wake of the connection).
    supervisor: AtomicWaker,
    /// HTTP/2: one entry per answer being sent, holding since when the frame it last handed
    /// to hyper has waited for hyper to ask for the next ([`NEVER`] while it has not). hyper
    /// asks once the stream has room again, so a long wait is a client that keeps its
    /// connection busy but makes no room for the answer (flow control): the socket's writes
    /// never stall, and only this shows it.
    sending: Mutex<Vec<Weak<AtomicU64>>>,
}

/// What the supervisor does when a deadline comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Nothing yet; look again then.
    Wait,
    /// Ask the connection to go away (HTTP/2 `GOAWAY`; HTTP/1.1 closes when idle).
    GoAway(Timeout),
    /// Drop it.
    Close(Timeout),
}

impl Activity {
    /// A new connection's record; `h2` when ALPN chose HTTP/2.
    pub fn new(h2: bool, limits: ConnLimits, metrics: Arc<Metrics>) -> Arc<Activity> {
        Arc::new(Activity {
            born: Instant::now(),
            limits,
            metrics,
            in_flight: AtomicU32::new(0),
            served: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(NEVER),
            h2: AtomicBool::new(h2),
            cancelled: Mutex::new((0, 0)),
            alarm: AtomicU8::new(QUIET),
            supervisor: AtomicWaker::new(),
            sending: Mutex::default(),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(NEVER - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.born + Duration::from_millis(ms)
    }

    /// Marks a request as started; the mark ends it when dropped.
    pub fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.served.store(true, Ordering::Relaxed);
        self.head_since.store(NEVER, Ordering::Relaxed);
        InFlight {
            activity: self.clone(),
            answered: false,
        }
    }

    /// Marks the connection in use, as a request in flight does, until the mark is dropped:
    /// a WebSocket tunnel over one of its HTTP/2 streams.
    pub fn hold(self: &Arc<Self>) -> InFlight {
        let mut held = self.request_started();
        held.answered = true;
        held
    }

    fn request_ended(&self, answered: bool) {
        if self.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.idle_since.store(self.now_ms(), Ordering::Relaxed);
            self.head_since.store(NEVER, Ordering::Relaxed);
        }
        if !answered {
            self.cancelled_one();
        }
    }

    fn cancelled_one(&self) {
        let now = self.now_ms();
        let window = CANCELLED_STREAMS_WINDOW.as_millis() as u64;
        let mut cancelled = self
            .cancelled
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if now.saturating_sub(cancelled.0) >= window {
            *cancelled = (now, 0);
        }
        cancelled.1 += 1;
        if cancelled.1 > self.limits.max_cancelled_streams {
            self.ring(CANCELLED);
        }
    }

    /// HTTP/2: the wait of one more answer being sent (see [`Activity::sending`]); `None` on
    /// HTTP/1.1, whose writes stall when the client reads nothing ([`Watched`]).
    fn sending(&self) -> Option<Arc<AtomicU64>> {
        if !self.h2.load(Ordering::Relaxed) {
            return None;
        }
        let waiting = Arc::new(AtomicU64::new(NEVER));
        let mut sending = self.sending.lock().unwrap_or_else(PoisonError::into_inner);
        if sending.len() == sending.capacity() {
            sending.retain(|answer| answer.strong_count() > 0);
        }
        sending.push(Arc::downgrade(&waiting));
        Some(waiting)
    }

    /// Since when the answer that has waited longest for the client to make room has waited;
    /// [`NEVER`] if none waits.
    fn longest_wait(&self) -> u64 {
        let sending = self.sending.lock().unwrap_or_else(PoisonError::into_inner);
        (sending.iter().filter_map(Weak::upgrade))
            .map(|waiting| waiting.load(Ordering::Relaxed))
            .min()
            .unwrap_or(NEVER)
    }

    /// HTTP/2: the client took no bytes of one of this connection's WebSocket streams for
    /// `send_timeout` (the tunnel times its own writes; see `proxy::tunnel`). The stream's
    /// reset would wait behind the data the client makes no room for, so the connection goes.
    pub fn stream_stalled(&self) {
        self.ring(STALLED);
    }

    fn ring(&self, reason: u8) {
        self.alarm.store(reason, Ordering::Relaxed);
        self.supervisor.wake();
    }

    /// Completes once the client cancelled too many streams ([`CANCELLED`]) or stalled a
    /// WebSocket stream ([`STALLED`]), with the reason.
    fn alarmed(&self) -> impl Future<Output = u8> + '_ {
        std::future::poll_fn(|cx| {
            self.supervisor.register(cx.waker());
            match self.alarm.load(Ordering::Relaxed) {
                QUIET => Poll::Pending,
                reason => Poll::Ready(reason),
            }
        })
    }

    fn bytes_arrived(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_since.load(Ordering::Relaxed) == NEVER
        {
            let _ = self.head_since.compare_exchange(
                NEVER,
                self.now_ms(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// The next deadline and what is due then.
    fn next(&self) -> (u64, Action) {
        let limits = &self.limits;
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(NEVER / 2);
        let h2 = self.h2.load(Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            let look_again = self.now_ms() + ms(limits.keepalive_timeout);
            let waiting = self.longest_wait();
            if waiting != NEVER && waiting + ms(limits.send_timeout) <= look_again {
                let due = waiting + ms(limits.send_timeout);
                return (due, Action::GoAway(Timeout::Send));
            }
            return (look_again, Action::Wait);
        }
        if !self.served.load(Ordering::Relaxed) {
            let due = ms(limits.request_head_timeout);
            let action = if h2 { Action::GoAway } else { Action::Close };
            return (due, action(Timeout::RequestHead));
        }
        let head = self.head_since.load(Ordering::Relaxed);
        if !h2 && head != NEVER {
            let due = head + ms(limits.request_head_timeout);
            return (due, Action::Close(Timeout::RequestHead));
        }
        let idle = self.idle_since.load(Ordering::Relaxed);
        (
            idle + ms(limits.keepalive_timeout),
            Action::GoAway(Timeout::Keepalive),
        )
    }
}

/// A request in flight on its connection, until its answer is written (or it is cancelled).
pub struct InFlight {
    activity: Arc<Activity>,
    answered: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity.request_ended(self.answered);
    }
}

/// A response body that keeps its request in flight until it is written.
pub struct Tracked<B> {
    body: B,
    /// HTTP/2: since when the frame last handed to hyper has waited for the next poll.
    waiting: Option<Arc<AtomicU64>>,
    in_flight: InFlight,
}

impl<B> Tracked<B> {
    /// `body` answers the request `in_flight` marks.
    pub fn new(body: B, mut in_flight: InFlight) -> Tracked<B> {
        in_flight.answered = true;
        Tracked {
            body,
            waiting: in_flight.activity.sending(),
            in_flight,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        if let Some(waiting) = &this.waiting {
            waiting.store(NEVER, Ordering::Relaxed);
        }
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let (Some(waiting), Poll::Ready(Some(Ok(_)))) = (&this.waiting, &polled) {
            waiting.store(this.in_flight.activity.now_ms(), Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A hyper connection the supervisor can ask to go away.
pub trait Graceful {
    /// Starts a graceful shutdown: no new requests, `GOAWAY` on HTTP/2.
    fn graceful_shutdown(self: Pin<&mut Self>);
}

/// Drives `conn` to its end, closing it or asking it to go away when a deadline of `activity`
/// passes, when the client cancels too many streams, or when `stopping` turns true (the
/// server's own shutdown, whose grace period is the server's to enforce).
pub async fn supervise<C, E>(
    conn: C,
    activity: &Activity,
    mut stopping: watch::Receiver<bool>,
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>> + Graceful,
{
    let _unregister = Unregister(activity);
    tokio::pin!(conn);
    let sleep = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(sleep);
    let mut going = false;
    let mut drop_at: Option<Instant> = None;
    let mut stopped = false;
    let go = |conn: Pin<&mut C>, going: &mut bool| {
        if !std::mem::replace(going, true) {
            conn.graceful_shutdown();
        }
    };
    if *stopping.borrow() {
        go(conn.as_mut(), &mut going);
        stopped = true;
    }
    let keepalive = activity.limits.keepalive_timeout;
    loop {
        // Nothing wakes this loop when a request starts or ends, or an HTTP/2 answer begins to
        // wait for the client: it looks again by the next deadline, and at the latest within a
        // keep-alive timeout (shorter than the request-head timeout in some configs), which a
        // request ending now would set, or on HTTP/2 within a send timeout.
        let look_again = match activity.h2.load(Ordering::Relaxed) {
            true => keepalive.min(activity.limits.send_timeout),
            false => keepalive,
        };
        let look_again = u64::try_from(look_again.as_millis()).unwrap_or(NEVER);
        let (due, _) = activity.next();
        let due = due.min(activity.now_ms().saturating_add(look_again));
        // Once asked to go for a reason of its own, a connection only has its grace left.
        sleep
            .as_mut()
            .reset(drop_at.unwrap_or_else(|| activity.at(due)));
        tokio::select! {
            ended = conn.as_mut() => return ended,
            () = &mut sleep => {
                if let Some(at) = drop_at {
                    if at <= Instant::now() {
                        return Ok(());
                    }
                    continue;
                }
                // Requests may have come and gone while it slept: what is due now?
                let (due, action) = activity.next();
                if activity.now_ms() < due {
                    continue;
                }
                match action {
                    Action::Wait => {}
                    Action::GoAway(timeout) => {
                        activity.metrics.timed_out(timeout);
                        go(conn.as_mut(), &mut going);
                        drop_at = Some(Instant::now() + CLOSE_GRACE);
                    }
                    Action::Close(timeout) => {
                        activity.metrics.timed_out(timeout);
                        return Ok(());
                    }
                }
            }
            reason = activity.alarmed(), if drop_at.is_none() => {
                match reason {
                    STALLED => activity.metrics.timed_out(Timeout::Send),
                    _ => activity.metrics.limit_hit(Limit::CancelledStreams),
                }
                go(conn.as_mut(), &mut going);
                drop_at = Some(Instant::now() + CLOSE_GRACE);
            }
            changed = stopping.changed(), if !stopped => {
                stopped = true;
                if changed.is_ok() {
                    go(conn.as_mut(), &mut going);
                }
            }
        }
    }
}

/// Takes the supervisor's waker out of its [`Activity`] when the supervisor ends. The activity
/// lives on in the reader and writer of a WebSocket tunnel, and a waker kept there would keep the
/// ended connection task's memory (7.6 KB) allocated for the tunnel's life.
struct Unregister<'a>(&'a Activity);

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        self.0.supervisor.take();
    }
}

/// A client connection's reader and writer: notes arriving bytes in its [`Activity`], fails a
/// write the client takes nothing of for `send_timeout`, and gives hyper's bare error answers
/// their reason (`parse_errors`) on HTTP/1.1.
pub struct Watched<T> {
    /// The connection, its writes timed by `send_timeout` (a time-out is counted).
    inner: TimedWrites<T, Box<dyn FnMut() + Send>>,
    activity: Arc<Activity>,
    /// The connection's place under the caps, held as long as its reader and writer live:
    /// through a WebSocket tunnel too, which outlives the HTTP connection.
    _admitted: Admitted,
    /// `Some` on HTTP/1.1: bare error answers get a reason.
    parse_errors: Option<HeadLimits>,
    /// A rewritten answer being written: its bytes, how many are out, the length to report.
    rewritten: Option<(Vec<u8>, usize, usize)>,
    first_read: bool,
}

impl<T> Watched<T> {
    /// Watches `inner` for `activity`'s connection, which holds its place under the caps.
    pub fn new(inner: T, activity: Arc<Activity>, admitted: Admitted) -> Watched<T> {
        let h2 = activity.h2.load(Ordering::Relaxed);
        let head = activity.limits.head;
        let metrics = activity.metrics.clone();
        let count = Box::new(move || metrics.timed_out(Timeout::Send));
        Watched {
            inner: TimedWrites::new(inner, activity.limits.send_timeout, count),
            _admitted: admitted,
            activity,
            parse_errors: (!h2).then_some(head),
            rewritten: None,
            first_read: true,
        }
    }
}

impl<T: AsyncWrite + Unpin> Watched<T> {
    /// Starts writing hyper's bare error answer in `bytes` with its reason instead, if it is
    /// one.
    fn rewrite(&mut self, bytes: &[u8]) {
        if let Some(limits) = self.parse_errors {
            if self.rewritten.is_none() && parse_errors::may_be_bare_error(bytes) {
                if let Some(answer) = parse_errors::with_reason(bytes, limits) {
                    self.rewritten = Some((answer, 0, bytes.len()));
                }
            }
        }
    }

    /// Writes the rewritten answer on; ready with the length hyper asked to write.
    fn poll_rewritten(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        loop {
            let Some((bytes, at, report)) = &mut self.rewritten else {
                return Poll::Ready(Ok(0));
            };
            if *at == bytes.len() {
                let report = *report;
                self.rewritten = None;
                return Poll::Ready(Ok(report));
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*at..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    if let Some((_, at, _)) = &mut self.rewritten {
                        *at += n;
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = &buf.filled()[before..];
        if !read.is_empty() {
            if std::mem::take(&mut self.first_read) && read.starts_with(b"PRI ") {
                // HTTP/2 with prior knowledge (no ALPN): its bytes between requests are frames.
                self.activity.h2.store(true, Ordering::Relaxed);
                self.parse_errors = None;
            }
            self.activity.bytes_arrived();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.rewrite(buf);
        if self.rewritten.is_some() {
            return self.poll_rewritten(cx);
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut filled = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (filled.next(), filled.next()) {
            self.rewrite(only);
        }
        if self.rewritten.is_some() {
            return self.poll_rewritten(cx);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
