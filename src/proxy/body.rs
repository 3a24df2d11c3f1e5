//! A client's request body on its way to a node.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::stall::Stall;

/// Why a client's request body could not be passed on: the client's fault, never the node's.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientBodyError {
    /// No byte of it arrived for `request_body_timeout` while the node waited.
    #[error("the request body stopped arriving")]
    Stalled,
    /// It was malformed (a bad chunk size) or its connection failed.
    #[error("the request body could not be read: {0}")]
    Unreadable(hyper::Error),
}

impl ClientBodyError {
    /// The client body error behind an error of the upstream exchange, if it is one.
    pub fn find<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a ClientBodyError> {
        let mut cause = Some(error);
        while let Some(e) = cause {
            if let Some(found) = e.downcast_ref::<ClientBodyError>() {
                return Some(found);
            }
            cause = e.source();
        }
        None
    }
}

/// The request body as the node reads it: a pause longer than `request_body_timeout` ends it
/// with [`ClientBodyError::Stalled`], and a body the client sent wrong with
/// [`ClientBodyError::Unreadable`], so the forwarder can tell the client's fault from the
/// node's.
pub struct ClientBody {
    inner: Incoming,
    stall: Stall,
}

impl ClientBody {
    /// `inner`, with pauses limited to `limit`.
    pub fn new(inner: Incoming, limit: Duration) -> ClientBody {
        ClientBody {
            inner,
            stall: Stall::new(limit),
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = &mut *self;
        let polled = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Ready(Some(frame)) => Poll::Ready(frame.map_err(ClientBodyError::Unreadable)),
            Poll::Pending => Poll::Pending,
        };
        this.stall
            .check(cx, polled, || ClientBodyError::Stalled)
            .map(Some)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
