//! Copying a tunnel's bytes both ways without holding a buffer while it is idle.
//!
//! DESIGN note. Every participant of a Jitsi meeting keeps two WebSockets open through the
//! router for the whole meeting (XMPP and the bridge channel), and they are idle nearly all the
//! time. `tokio::io::copy_bidirectional` keeps a buffer per direction for the tunnel's life, much
//! of an idle tunnel's memory (`benches/HISTORY.md`, "Open WebSocket tunnels"). Here
//! each read goes into a buffer on the polling thread's stack and is written on at once; only
//! bytes the writer cannot take yet are copied to the heap, and freed when written. An idle
//! tunnel holds no buffer. The rules are tokio's otherwise: a writer is flushed whenever its
//! reader has nothing more, an end of stream on one side shuts down the write half of the
//! other, and the copy ends when both directions have ended, or at the first error.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Size of a read; on the stack of whichever thread polls, never kept. A TLS record's worth.
const READ: usize = 16 * 1024;

/// Copies `a` → `b` and `b` → `a` until both have ended; the bytes copied each way.
pub async fn both_ways<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    BothWays {
        a,
        b,
        a_to_b: Direction::default(),
        b_to_a: Direction::default(),
    }
    .await
}

struct BothWays<'a, A: ?Sized, B: ?Sized> {
    a: &'a mut A,
    b: &'a mut B,
    a_to_b: Direction,
    b_to_a: Direction,
}

impl<A, B> Future for BothWays<'_, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    type Output = io::Result<(u64, u64)>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let forth = this.a_to_b.poll(cx, &mut *this.a, &mut *this.b)?;
        let back = this.b_to_a.poll(cx, &mut *this.b, &mut *this.a)?;
        match (forth, back) {
            (Poll::Ready(forth), Poll::Ready(back)) => Poll::Ready(Ok((forth, back))),
            _ => Poll::Pending,
        }
    }
}

/// One direction's state.
#[derive(Default)]
struct Direction {
    /// Bytes read but not yet taken by the writer, from `written` on.
    unwritten: Option<Box<[u8]>>,
    written: usize,
    /// The writer took bytes since its last flush.
    need_flush: bool,
    /// The reader reached its end.
    read_done: bool,
    /// The writer's write half is shut down: this direction is over.
    done: bool,
    copied: u64,
}

impl Direction {
    /// Moves what `reader` has to `writer`; ready with the count once the reader ended and the
    /// writer is shut down.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(self.copied));
        }
        loop {
            if let Some(unwritten) = self.unwritten.take() {
                match self.write(cx, writer, &unwritten[self.written..]) {
                    Poll::Ready(Ok(n)) if n == unwritten.len() - self.written => self.written = 0,
                    Poll::Ready(Ok(n)) => {
                        self.written += n;
                        self.unwritten = Some(unwritten);
                        continue;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        self.unwritten = Some(unwritten);
                        return Poll::Pending;
                    }
                }
            }
            if self.read_done {
                if self.need_flush {
                    ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                    self.need_flush = false;
                }
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(self.copied));
            }
            // Left uninitialised: zeroing 16 KiB per read would cost more than the read.
            let mut stack = [MaybeUninit::<u8>::uninit(); READ];
            let mut buf = ReadBuf::uninit(&mut stack);
            match Pin::new(&mut *reader).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Nothing more to read for now: push out what the writer holds.
                    if self.need_flush {
                        ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
            }
            let read = buf.filled();
            if read.is_empty() {
                self.read_done = true;
                continue;
            }
            let mut at = 0;
            while at < read.len() {
                match self.write(cx, writer, &read[at..]) {
                    Poll::Ready(Ok(n)) => at += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        self.unwritten = Some(read[at..].into());
                        return Poll::Pending;
                    }
                }
            }
        }
    }

    /// One write; a writer taking nothing is an error, as in `tokio::io::copy`.
    fn write<W: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        writer: &mut W,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(writer).poll_write(cx, bytes))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        self.need_flush = true;
        self.copied += n as u64;
        Poll::Ready(Ok(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Both directions carry everything, in order, through pipes far smaller than what is
    /// sent (so writes return pending and bytes wait on the heap), and each side's end reaches
    /// the other as an end of stream.
    #[tokio::test]
    async fn carries_every_byte_both_ways_and_passes_each_end_on() {
        let (client, mut near) = tokio::io::duplex(1000);
        let (mut far, node) = tokio::io::duplex(700);
        let copy = tokio::spawn(async move { both_ways(&mut near, &mut far).await });
        let up: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let down: Vec<u8> = (0..150_000u32).map(|i| (i * 13 % 241) as u8).collect();
        let (to_node, to_client) = (up.clone(), down.clone());
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let (mut node_read, mut node_write) = tokio::io::split(node);
        let sending = tokio::spawn(async move {
            client_write.write_all(&to_node).await.unwrap();
            client_write.shutdown().await.unwrap();
        });
        let answering = tokio::spawn(async move {
            node_write.write_all(&to_client).await.unwrap();
            node_write.shutdown().await.unwrap();
        });
        // A lost end of stream would leave these reads waiting: fail instead of hanging.
        let ends = async {
            let mut at_node = Vec::new();
            node_read.read_to_end(&mut at_node).await.unwrap();
            let mut at_client = Vec::new();
            client_read.read_to_end(&mut at_client).await.unwrap();
            (at_node, at_client)
        };
        let (at_node, at_client) = tokio::time::timeout(std::time::Duration::from_secs(10), ends)
            .await
            .expect("each side's end of stream reached the other");
        sending.await.unwrap();
        answering.await.unwrap();
        assert!(at_node == up, "client → node bytes differ");
        assert!(at_client == down, "node → client bytes differ");
        let (forth, back) = copy.await.unwrap().unwrap();
        assert_eq!((forth, back), (up.len() as u64, down.len() as u64));
    }
}
