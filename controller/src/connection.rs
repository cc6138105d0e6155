//! What one client may hold of the controller's HTTP server: any pod of the mesh can reach
//! the module server (every sidecar fetches from it), so no one of them may take it all.
//!
//! - [`SourceLimit`]: at most so many connections per client address; more are closed at
//!   once, so one pod's flood leaves the rest of the capacity to the others.
//! - [`Stall`]: a connection on which nothing moves (no byte read or written) for the idle
//!   limit is closed: an idle keep-alive connection, a client that stopped reading the
//!   module halfway, one that sends its request a byte at a time.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Connections held per client address.
#[derive(Debug, Clone)]
pub struct SourceLimit {
    max: usize,
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection counted against its source; released when dropped.
#[derive(Debug)]
pub struct SourceSlot {
    source: IpAddr,
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl SourceLimit {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            held: Arc::default(),
        }
    }

    /// A slot for a new connection from `source`, unless it holds `max` already.
    pub fn admit(&self, source: IpAddr) -> Option<SourceSlot> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let count = held.entry(source).or_default();
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            source,
            held: Arc::clone(&self.held),
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = held.get_mut(&self.source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.source);
            }
        }
    }
}

/// An I/O stream that fails with `TimedOut` once neither a read nor a write has made
/// progress for `idle` while the server was waiting on the client: time the server spends
/// on a request (`busy`, a peer fetch) is not the client's stall.
pub struct Stall<IO> {
    io: IO,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    busy: Busy,
}

/// Requests being answered on one connection; while any is, the connection is not idle.
#[derive(Debug, Clone, Default)]
pub struct Busy(Arc<std::sync::atomic::AtomicUsize>);

/// Held while a request is answered.
pub struct Answering(Busy);

impl Busy {
    pub fn answering(&self) -> Answering {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Answering(self.clone())
    }

    fn is_busy(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst) > 0
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        (self.0).0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl<IO> Stall<IO> {
    pub fn new(io: IO, idle: Duration, busy: Busy) -> Self {
        Self {
            io,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            busy,
        }
    }

    fn moved(&mut self) {
        let next = Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    /// `Pending` stays pending until the deadline; then the connection has stalled.
    fn pending_or_stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if self.busy.is_busy() {
            // The server, not the client, is taking its time: the clock starts again.
            self.moved();
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("nothing moved for {:?}", self.idle),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Stall<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.moved();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.pending_or_stalled(cx),
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Stall<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.moved();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.pending_or_stalled(cx),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Pending => self.pending_or_stalled(cx),
            ready => ready,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn a_source_holds_at_most_its_share_and_gets_it_back() {
        let limit = SourceLimit::new(2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = limit.admit(a).unwrap();
        let _second = limit.admit(a).unwrap();
        assert!(limit.admit(a).is_none());
        assert!(limit.admit(b).is_some(), "others are not affected");
        drop(first);
        assert!(limit.admit(a).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_on_which_nothing_moves_times_out() {
        let (client, server) = tokio::io::duplex(64);
        let mut stalled = Stall::new(server, Duration::from_secs(10), Busy::default());
        let mut client = client;
        client.write_all(b"abc").await.unwrap();
        let mut buf = [0; 3];
        stalled.read_exact(&mut buf).await.unwrap();
        // Nothing more comes: after the idle limit the read fails.
        let started = Instant::now();
        let err = stalled.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        // A client that stops reading stalls a write the same way.
        let (_reader_that_never_reads, server) = tokio::io::duplex(8);
        let mut stalled = Stall::new(server, Duration::from_secs(10), Busy::default());
        let err = stalled.write_all(&[0; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    /// While the server answers (a slow peer fetch), the connection is not idle, however
    /// long the answer takes; once answered, the clock runs again.
    #[tokio::test(start_paused = true)]
    async fn the_servers_own_time_is_not_the_clients_stall() {
        let (_client, server) = tokio::io::duplex(64);
        let busy = Busy::default();
        let mut stalled = Stall::new(server, Duration::from_secs(10), busy.clone());
        let answering = busy.answering();
        let mut buf = [0; 1];
        let read = tokio::time::timeout(Duration::from_secs(30), stalled.read(&mut buf)).await;
        assert!(read.is_err(), "still waiting after 30 s: not cut off");
        drop(answering);
        let err = stalled.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
