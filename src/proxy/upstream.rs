//! Keep-alive HTTP/1.1 connections to the nodes (`http://` or `https://`), pooled per node.
//!
//! DESIGN note. This replaced `hyper-util`'s legacy `Client`. A callgrind profile of proxied
//! BOSH requests put that client at about 8,700 instructions a request before any HTTP work: a
//! SipHash of the pool key and a global lock to check a connection out, the same again to put it
//! back from a task spawned per request, and its futures moved about. Here a request finds its
//! node's pool in a map published with `arc-swap`, pops the most recently used connection from
//! the pool's own short lock, and its response body puts the connection back when it is dropped
//! complete. Each worker thread has a lane of its own in every pool ([`use_lane`]): a connection
//! is driven by the runtime that opened it, and only requests of that thread use it.
//!
//! What the legacy client did that this keeps:
//! - A request that a pooled connection could not send (the node closed the connection while it
//!   sat idle) is sent again on another connection.
//!
//! What it adds: a request that a pooled connection did send, but that the node closed (or
//! reset) without a byte of answer, is sent once more on a new connection when that is safe —
//! an idempotent method (`GET`, `HEAD`, `OPTIONS`, ...) with no body, as nginx's
//! `proxy_next_upstream error` does. That is the race of a node closing an idle keep-alive
//! connection (its `keepalive_timeout`, or an `nginx -s reload` closing every idle one) just as
//! a request goes out on it. A request with a body, or a `POST` (BOSH), is never sent twice: the
//! client gets the 502 and its own retry logic decides.
//! - Connections idle for longer than `pool_idle_timeout` are closed (by the server's sweep every
//!   half timeout, and when their pool is next used), and at most `pool_max_idle_per_node` idle
//!   ones are kept per node (the oldest go first).
//! - Connections take `Upgrade` (WebSocket): an upgraded connection leaves the pool for good.
//! - A request whose client goes away before the node answered (an HTTP/2 stream reset, a
//!   closed connection) is not cut off mid-exchange, which would close its connection: the
//!   exchange finishes in the background (at most `MAX_DETACHED` at once, each within
//!   `response_timeout`, its answer read and dropped up to `DRAIN_CAP`) and the connection
//!   goes back to the pool. A client resetting stream after stream costs the node its
//!   requests, not a new connection each.
//! - A node's answer is read `UPSTREAM_READ_BUFFER` at a time, and a pause in its body
//!   longer than `response_body_timeout` cuts the answer off (counted, and logged).

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::uri::{Scheme, Uri};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::{Either, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::TrySendError;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::body::ClientBody;
use crate::config::{Limits, Upstream};
use crate::local_fault::LocalFault;
use crate::metrics::{Metrics, Timeout};
use crate::stall::Stall;
use crate::tls::TlsError;

/// Most bytes read from a node at once (hyper's least). Each read becomes a chunk of the
/// client's answer, and a client slow to read holds its answer's chunks: with hyper's write
/// buffer (just over `max_request_head`) and the TLS records queued for it (16 KiB), a slow
/// reader holds under 128 KiB of router memory (`tests/memory.rs` holds it to that).
const UPSTREAM_READ_BUFFER: usize = 8 * 1024;

/// Most exchanges finishing in the background at once (see the module docs); past it an
/// abandoned exchange closes its connection as it used to.
const MAX_DETACHED: usize = 1024;

/// Most bytes of an abandoned exchange's answer read (and dropped) to keep its connection.
const DRAIN_CAP: usize = 1024 * 1024;

/// Why a request did not get a response from its node.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made (refused, unreachable, timed out, TLS failed).
    #[error("cannot connect to {authority}: {reason}")]
    Connect {
        /// The node's host and port.
        authority: String,
        /// What went wrong.
        reason: String,
    },
    /// The connection failed while the request was sent or its answer read.
    #[error(transparent)]
    Http(#[from] hyper::Error),
    /// No connection could be made for a shortage of the router's own (out of file
    /// descriptors, ports): not the node's fault.
    #[error("cannot connect to {authority}: {fault}")]
    Local {
        /// The node's host and port.
        authority: String,
        /// Which shortage.
        fault: LocalFault,
    },
}

impl UpstreamError {
    /// Whether no connection could be made (which counts toward the node's `fall`).
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect { .. })
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// The pooled client all nodes share.
pub struct UpstreamClient {
    tls: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
    /// `limits.send_timeout`: a node that takes or acknowledges nothing this long is given up.
    gone_after: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    /// Time an abandoned exchange gets to finish in the background (`response_timeout`).
    detached_timeout: Duration,
    detached: Arc<AtomicUsize>,
    body_timeout: Duration,
    metrics: Arc<Metrics>,
    /// Pools by node authority, `http://` nodes first, `https://` second. Keyed by the authority
    /// text rather than the `Uri`: hashing a `Uri` (scheme, then the authority byte by byte,
    /// lowercased) took 900 instructions a request.
    pools: ArcSwap<[Pools; 2]>,
}

type Pools = HashMap<Box<str>, Arc<Pool>, foldhash::fast::RandomState>;

/// One node's idle connections, most recently used last, in one lane per thread that serves
/// connections (see [`use_lane`]).
struct Pool {
    lanes: Box<[Mutex<Vec<Idle>>]>,
}

impl Pool {
    fn new() -> Pool {
        Pool {
            lanes: (0..=worker_threads()).map(|_| Mutex::default()).collect(),
        }
    }

    /// The idle connections of this thread's lane.
    fn idle(&self) -> MutexGuard<'_, Vec<Idle>> {
        let lane = LANE.with(Cell::get) % self.lanes.len();
        self.lanes[lane]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

thread_local! {
    /// This thread's lane of every node's pool: see [`use_lane`].
    static LANE: Cell<usize> = const { Cell::new(0) };
}

/// Makes this thread's requests take their pooled node connections from, and give them back
/// to, lane `lane` of each node's pool; lane 0 is for every thread that took none. The server's
/// worker threads take one each (1 to [`worker_threads`]), so that a pooled connection is used
/// on the thread whose runtime drives it: used from another, each request would wake that
/// thread and back.
pub fn use_lane(lane: usize) {
    LANE.with(|l| l.set(lane));
}

/// How many threads serve client connections: one per core this process may use.
pub fn worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// What goes to a node: the client's body, or none (a bodiless request sent again).
type Outgoing = Either<ClientBody, Empty<Bytes>>;

struct Idle {
    sender: SendRequest<Outgoing>,
    since: Instant,
}

impl UpstreamClient {
    /// A client configured by `[upstream]` and `[limits]`, counting into `metrics`.
    pub fn new(
        cfg: &Upstream,
        limits: &Limits,
        metrics: Arc<Metrics>,
    ) -> Result<UpstreamClient, TlsError> {
        let mut tls = crate::tls::upstream_client_config(cfg.ca.as_deref())?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(UpstreamClient {
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            connect_timeout: cfg.connect_timeout,
            gone_after: limits.send_timeout,
            idle_timeout: cfg.pool_idle_timeout,
            max_idle: cfg.pool_max_idle_per_node,
            detached_timeout: cfg.response_timeout,
            detached: Arc::default(),
            body_timeout: limits.response_body_timeout,
            metrics,
            pools: ArcSwap::default(),
        })
    }

    /// Sends `req` (origin-form target, `Host` set) to the node at `base` (scheme and authority).
    pub async fn send(
        &self,
        base: &Uri,
        req: Request<ClientBody>,
    ) -> Result<Response<Pooled>, UpstreamError> {
        let pool = self.pool(base);
        let mut req = req.map(Either::Left);
        // After a sent request was lost, its copy goes out on a new connection, once.
        let mut fresh = false;
        loop {
            let pooled = if fresh {
                None
            } else {
                self.checkout(&pool).await
            };
            let (mut sender, reused) = match pooled {
                Some(sender) => (sender, true),
                None => (self.connect(base).await?, false),
            };
            let copy = (reused && replayable(&req)).then(|| bodiless_copy(&req));
            let answer = sender.try_send_request(req);
            let (answer, sender) = Sent::new(answer, sender, self, &pool).await;
            match answer {
                Ok(response) => {
                    let upgraded = response.status() == StatusCode::SWITCHING_PROTOCOLS;
                    let back = (!upgraded).then(|| (sender, pool.clone(), self.max_idle));
                    return Ok(response.map(|body| self.pooled(body, back)));
                }
                Err(mut failed) => match (failed.take_message(), copy) {
                    // Never sent: a pooled connection closed under it. Another one may do.
                    (Some(unsent), _) if reused => req = unsent,
                    // Sent, and the node closed the connection without answering: safe to send
                    // again, on a connection opened for it.
                    (None, Some(copy)) if closed_unanswered(failed.error()) => {
                        tracing::debug!(
                            node = %base,
                            error = %failed.error(),
                            "pooled connection closed under an idempotent request; sending it again"
                        );
                        req = copy;
                        fresh = true;
                    }
                    _ => return Err(failed.into_error().into()),
                },
            }
        }
    }

    fn pooled(&self, body: Incoming, back: Option<Back>) -> Pooled {
        Pooled {
            body,
            ended: false,
            back,
            stall: Stall::new(self.body_timeout),
            metrics: self.metrics.clone(),
        }
    }

    fn pool(&self, base: &Uri) -> Arc<Pool> {
        let (https, authority) = pool_key(base);
        if let Some(pool) = self.pools.load()[https].get(authority) {
            return pool.clone();
        }
        let mut made = None;
        self.pools.rcu(|pools| {
            let mut pools = <[Pools; 2]>::clone(pools);
            made = Some(
                pools[https]
                    .entry(authority.into())
                    .or_insert_with(|| Arc::new(Pool::new()))
                    .clone(),
            );
            pools
        });
        made.expect("rcu ran its update at least once")
    }

    /// Closes every pooled connection idle for longer than `pool_idle_timeout` (and those the
    /// node closed), and forgets the pools of nodes whose upstream is not in `fleet`, with their
    /// idle connections; the server calls it every half timeout.
    pub fn close_idle<'a>(&self, fleet: impl IntoIterator<Item = &'a Uri>) -> usize {
        let fleet: HashSet<(usize, &str)> = fleet.into_iter().map(pool_key).collect();
        let in_fleet = |https: usize, authority: &str| fleet.contains(&(https, authority));
        let mut closed = 0;
        let mut gone = false;
        for (https, pools) in self.pools.load().iter().enumerate() {
            for (authority, pool) in pools {
                for idle in &pool.lanes {
                    let mut idle = idle.lock().unwrap_or_else(PoisonError::into_inner);
                    let before = idle.len();
                    if in_fleet(https, authority) {
                        self.drop_expired(&mut idle);
                        idle.retain(|conn| !conn.sender.is_closed());
                    } else {
                        idle.clear();
                        gone = true;
                    }
                    closed += before - idle.len();
                }
            }
        }
        if gone {
            // A connection still out with a request goes back to its forgotten pool, which
            // closes it when the last such request ends.
            self.pools.rcu(|pools| {
                let mut pools = <[Pools; 2]>::clone(pools);
                for (https, pools) in pools.iter_mut().enumerate() {
                    pools.retain(|authority, _| in_fleet(https, authority));
                }
                pools
            });
        }
        closed
    }

    /// Drops the connections idle for too long: the oldest, at the front.
    fn drop_expired(&self, idle: &mut Vec<Idle>) {
        let expired = idle
            .iter()
            .take_while(|conn| conn.since.elapsed() > self.idle_timeout)
            .count();
        idle.drain(..expired);
    }

    /// An idle connection to the pool's node that is still open and free, if there is one.
    async fn checkout(&self, pool: &Pool) -> Option<SendRequest<Outgoing>> {
        loop {
            let idle = {
                let mut idle = pool.idle();
                self.drop_expired(&mut idle);
                idle.pop()?
            };
            let mut sender = idle.sender;
            // A connection given back as its last response ended may still be finishing it.
            if !sender.is_closed() && sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    async fn connect(&self, base: &Uri) -> Result<SendRequest<Outgoing>, UpstreamError> {
        let authority = base.authority().map_or("", |a| a.as_str());
        let failed = |reason: String| UpstreamError::Connect {
            authority: authority.to_owned(),
            reason,
        };
        let host = base.host().unwrap_or_default();
        let https = base.scheme() == Some(&Scheme::HTTPS);
        let port = base.port_u16().unwrap_or(if https { 443 } else { 80 });
        // `[::1]` in a URI is `::1` to the resolver.
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect((host, port)))
            .await
            .map_err(|_| failed(format!("timed out after {:?}", self.connect_timeout)))?
            .map_err(|e| match LocalFault::find(&e) {
                Some(fault) => UpstreamError::Local {
                    authority: authority.to_owned(),
                    fault,
                },
                None => failed(e.to_string()),
            })?;
        let _ = tcp.set_nodelay(true);
        crate::stall::give_up_on_silent_peer(&tcp, self.gone_after);
        let io: Box<dyn Io> = if https {
            let name = ServerName::try_from(host.to_owned())
                .map_err(|e| failed(format!("{host:?} is no TLS server name: {e}")))?;
            let tls = tokio::time::timeout(self.connect_timeout, self.tls.connect(name, tcp))
                .await
                .map_err(|_| failed("TLS handshake timed out".to_owned()))?
                .map_err(|e| failed(format!("TLS handshake failed: {e}")))?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        let (sender, connection) = http1::Builder::new()
            .max_buf_size(UPSTREAM_READ_BUFFER)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| failed(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// Which pool map (`http://` 0, `https://` 1) and key a node's upstream has.
fn pool_key(base: &Uri) -> (usize, &str) {
    let https = usize::from(base.scheme() == Some(&Scheme::HTTPS));
    (https, base.authority().map_or("", |a| a.as_str()))
}

/// Whether a request may go to the node a second time: an idempotent method and no body.
fn replayable(req: &Request<Outgoing>) -> bool {
    req.method().is_idempotent() && req.body().is_end_stream()
}

/// The request line and headers of a bodiless request, to send again.
fn bodiless_copy(req: &Request<Outgoing>) -> Request<Outgoing> {
    let mut copy = Request::new(Either::Right(Empty::new()));
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// Whether a sent request's connection ended with no answer: closed before a response (hyper's
/// "incomplete message"), or reset or aborted by the node.
fn closed_unanswered(error: &hyper::Error) -> bool {
    if error.is_incomplete_message() || error.is_canceled() {
        return true;
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
            return matches!(io.kind(), ConnectionReset | ConnectionAborted | BrokenPipe);
        }
        source = cause.source();
    }
    false
}

/// Where a connection goes back when its answer is read to the end.
type Back = (SendRequest<Outgoing>, Arc<Pool>, usize);

/// A request on its way to a node, until its answer's head arrives; see the module docs for
/// what happens when it is dropped before that.
struct Sent<F>
where
    F: Future<Output = Answer> + Send + 'static,
{
    answer: Option<Pin<Box<F>>>,
    sender: Option<SendRequest<Outgoing>>,
    pool: Arc<Pool>,
    client: Detach,
}

/// What an abandoned exchange needs to finish in the background.
#[derive(Clone)]
struct Detach {
    timeout: Duration,
    running: Arc<AtomicUsize>,
    max_idle: usize,
    body_timeout: Duration,
    metrics: Arc<Metrics>,
}

type Answer = Result<Response<Incoming>, TrySendError<Request<Outgoing>>>;

impl<F: Future<Output = Answer> + Send + 'static> Sent<F> {
    fn new(
        answer: F,
        sender: SendRequest<Outgoing>,
        client: &UpstreamClient,
        pool: &Arc<Pool>,
    ) -> Self {
        Sent {
            answer: Some(Box::pin(answer)),
            sender: Some(sender),
            pool: pool.clone(),
            client: Detach {
                timeout: client.detached_timeout,
                running: client.detached.clone(),
                max_idle: client.max_idle,
                body_timeout: client.body_timeout,
                metrics: client.metrics.clone(),
            },
        }
    }
}

impl<F: Future<Output = Answer> + Send + 'static> Future for Sent<F> {
    type Output = (Answer, SendRequest<Outgoing>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(answer) = self.answer.as_mut() else {
            return Poll::Pending;
        };
        let answer = std::task::ready!(answer.as_mut().poll(cx));
        self.answer = None;
        let sender = self
            .sender
            .take()
            .expect("the sender stays until the answer");
        Poll::Ready((answer, sender))
    }
}

impl<F> Drop for Sent<F>
where
    F: Future<Output = Answer> + Send + 'static,
{
    fn drop(&mut self) {
        let (Some(answer), Some(sender)) = (self.answer.take(), self.sender.take()) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let detach = self.client.clone();
        if detach.running.fetch_add(1, Ordering::Relaxed) >= MAX_DETACHED {
            detach.running.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let pool = self.pool.clone();
        runtime.spawn(async move {
            let running = detach.running.clone();
            let timeout = detach.timeout;
            let _ = tokio::time::timeout(timeout, detach.finish(answer, sender, pool)).await;
            running.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

impl Detach {
    /// Waits for an abandoned exchange's answer and reads it to its end, so that its
    /// connection goes back to the pool.
    async fn finish<F: Future<Output = Answer>>(
        self,
        answer: Pin<Box<F>>,
        sender: SendRequest<Outgoing>,
        pool: Arc<Pool>,
    ) {
        let Ok(response) = answer.await else {
            return;
        };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            return;
        }
        let mut body = Pooled {
            body: response.into_body(),
            ended: false,
            back: Some((sender, pool, self.max_idle)),
            stall: Stall::new(self.body_timeout),
            metrics: self.metrics,
        };
        let mut read = 0;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, Bytes::len);
            if read > DRAIN_CAP {
                return;
            }
        }
    }
}

/// A node's response body; dropped after its end, it gives its connection back to the pool.
pub struct Pooled {
    body: Incoming,
    /// The body said it had no more frames (a chunked body's length stays unknown to the end).
    ended: bool,
    back: Option<Back>,
    /// A pause in the body past `response_body_timeout` ends it with an error.
    stall: Stall,
    metrics: Arc<Metrics>,
}

/// A node's response body paused past `response_body_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the node sent no more of its answer for limits.response_body_timeout")]
pub struct NodeStalled;

impl Body for Pooled {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(None) => {
                this.ended = true;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(frame)) => Poll::Ready(frame.map_err(Self::Error::from)),
            Poll::Pending => Poll::Pending,
        };
        let metrics = &this.metrics;
        this.stall
            .check(cx, polled, || {
                metrics.timed_out(Timeout::ResponseBody);
                tracing::warn!("a node stopped sending its answer's body; answer cut off");
                Box::new(NodeStalled).into()
            })
            .map(Some)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        // A body dropped before its end leaves the connection mid-message: it closes instead.
        let Some((sender, pool, max_idle)) = self.back.take() else {
            return;
        };
        let ended = self.ended || self.body.is_end_stream();
        if !ended || sender.is_closed() || max_idle == 0 {
            return;
        }
        let mut idle = pool.idle();
        if idle.len() >= max_idle {
            idle.remove(0);
        }
        idle.push(Idle {
            sender,
            since: Instant::now(),
        });
    }
}
