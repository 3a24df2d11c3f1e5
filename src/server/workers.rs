//! The threads that serve client connections: one single-threaded tokio runtime per core, each
//! connection dealt to the next in turn and served there for its whole life (its TLS, its
//! requests, its connections to nodes, its WebSocket tunnel).
//!
//! DESIGN note. The router first served connections on tokio's work-stealing runtime. Proxying
//! keep-alive requests, it spent more CPU a request than the same build limited to one worker
//! thread: a connection's task, its pooled node connection's task and the sockets of both moved
//! between cores, and idle workers searched for work to steal. A runtime per core and a pool
//! lane per thread cost clearly less (`benches/HISTORY.md`, "A runtime per core").
//! A connection here never leaves its thread, nor does the node connection it pooled. Accepting
//! stays on the main runtime with the background work; handing a connection over costs it one
//! re-registration with the worker's poller.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::proxy::upstream;

/// The worker threads; they stop when this is dropped, ending the connections they still serve.
pub(super) struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    /// Dropped with the workers: each thread's signal to stop.
    _stop: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// `count` worker threads (at least one), each running a runtime of its own.
    pub(super) fn start(count: usize) -> io::Result<Workers> {
        let (mut handles, mut stops) = (Vec::new(), Vec::new());
        for i in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            handles.push(runtime.handle().clone());
            stops.push(stop);
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || {
                    upstream::use_lane(i + 1);
                    runtime.block_on(async move { stopped.await.ok() })
                })?;
        }
        Ok(Workers {
            handles,
            next: AtomicUsize::new(0),
            _stop: stops,
        })
    }

    /// One worker per core the process may use.
    pub(super) fn per_core() -> io::Result<Workers> {
        Workers::start(upstream::worker_threads())
    }

    /// The runtime of the worker whose turn it is.
    pub(super) fn next(&self) -> &Handle {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        &self.handles[turn % self.handles.len()]
    }
}
