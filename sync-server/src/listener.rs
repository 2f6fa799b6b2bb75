//! The server's TCP listener: a bound on open connections and an idle timeout per
//! connection, beneath HTTP.
//!
//! `axum::serve` (hyper without a timer) closes no connection by itself: one that sent half a
//! request head, or sits idle between requests, stays open for good. Such connections would
//! use up file descriptors while the server runs, and hold a graceful shutdown forever. So:
//! * at most `max_connections` are open at once; the next `accept` waits for one to close
//!   (new clients queue in the kernel's backlog meanwhile);
//! * a connection with no bytes read or written for `idle` is closed: its next read fails
//!   with `TimedOut`. A long poll's wait (`max_wait_ms`, below `idle` by configuration) and
//!   an event stream's keep-alive comments (sent more often than `idle`) keep theirs open.
//!
//! * when the shutdown grace has passed (`cut`), every connection fails its next read or
//!   write (pending ones are woken), so hyper drops it and the request handler it runs.
//!
//! Every accepted socket has `TCP_NODELAY` set: responses go out as soon as they are written.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::metrics::GaugeGuard;

/// A [`TcpListener`] that bounds open connections and times idle ones out.
#[derive(Debug)]
pub struct Limited {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    idle: Duration,
    open: prometheus_client::metrics::gauge::Gauge,
    cut: tokio::sync::watch::Receiver<bool>,
}

impl Limited {
    /// Wraps `inner`: at most `max_connections` open at once, each closed after `idle`
    /// without traffic, and all of them once `cut` turns true; `open` counts them.
    pub fn new(
        inner: TcpListener,
        max_connections: usize,
        idle: Duration,
        open: prometheus_client::metrics::gauge::Gauge,
        cut: tokio::sync::watch::Receiver<bool>,
    ) -> Limited {
        Limited {
            inner,
            permits: Arc::new(Semaphore::new(
                max_connections.clamp(1, Semaphore::MAX_PERMITS),
            )),
            idle,
            open,
            cut,
        }
    }
}

impl axum::serve::Listener for Limited {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Connection, SocketAddr) {
        // The semaphore is never closed, so acquiring fails never; if it did, serving on
        // without the bound beats stopping.
        let permit = self.permits.clone().acquire_owned().await.ok();
        let (io, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        if let Err(e) = io.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let mut cut = self.cut.clone();
        let conn = Connection {
            io,
            _permit: permit,
            _open: GaugeGuard::new(&self.open),
            idle: self.idle,
            deadline: Box::pin(tokio::time::sleep(self.idle)),
            cut: Some(CutSignal(Box::pin(async move {
                // A dropped sender (the server is gone) cuts as well.
                let _ = cut.wait_for(|cut| *cut).await;
            }))),
        };
        (conn, addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// An accepted connection: its place among `max_connections` is given back, and the open
/// connections gauge lowered, when it is dropped.
#[derive(Debug)]
pub struct Connection {
    io: TcpStream,
    _permit: Option<OwnedSemaphorePermit>,
    _open: GaugeGuard,
    idle: Duration,
    /// When the connection counts as idle, unless a byte moves before.
    deadline: Pin<Box<Sleep>>,
    /// Completes when connections are cut; `None` once it has.
    cut: Option<CutSignal>,
}

/// A future that completes when connections are cut.
struct CutSignal(Pin<Box<dyn Future<Output = ()> + Send>>);

impl std::fmt::Debug for CutSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CutSignal")
    }
}

impl Connection {
    /// The error every read and write returns once connections are cut: checked (a field)
    /// before each one; the cut signal itself is polled only where the connection waits
    /// ([`Connection::stalled_error`]), which is where it must wake it.
    fn cut_error(&self) -> Option<io::Error> {
        self.cut.is_none().then(|| {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the server is shutting down",
            )
        })
    }

    fn touch(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.idle);
    }

    /// A write's outcome: bytes written count as traffic; a write left pending (a peer
    /// that stopped reading) counts as idle.
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(r) => {
                if r.as_ref().is_ok_and(|n| *n > 0) {
                    self.touch();
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.stalled_error(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }

    /// After a read or write that is pending: the error to end the connection with, once
    /// connections are cut or it has been idle for too long (the cut signal and the timer
    /// wake the task then).
    fn stalled_error(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if let Some(cut) = &mut self.cut
            && cut.0.as_mut().poll(cx).is_ready()
        {
            self.cut = None;
        }
        if let Some(e) = self.cut_error() {
            return Some(e);
        }
        self.deadline.as_mut().poll(cx).is_ready().then(|| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connection idle for {:?}", self.idle),
            )
        })
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.cut_error() {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.touch();
                }
                Poll::Ready(r)
            }
            Poll::Pending => match this.stalled_error(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.cut_error() {
            return Poll::Ready(Err(e));
        }
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.cut_error() {
            return Poll::Ready(Err(e));
        }
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
