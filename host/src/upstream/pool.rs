//! Connections to one backend.
//!
//! HTTP/1.1: idle connections wait in a bounded lock-free queue. A request
//! takes one (skipping any that closed or idled too long) or dials a new
//! one; the response body hands its connection back when it has been read
//! to the end, so a connection is only ever reused between requests.
//!
//! HTTP/2 (backends marked `h2 = true`): one multiplexed connection shared
//! by all requests, re-dialled when it closes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use crossbeam_queue::ArrayQueue;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::body::RequestBody;

/// The sending half of an HTTP/1.1 backend connection.
pub type H1Sender = http1::SendRequest<RequestBody>;
/// The sending half of the shared HTTP/2 backend connection.
pub type H2Sender = http2::SendRequest<RequestBody>;

/// A connection a request can go out on.
pub enum Sender {
    /// HTTP/1.1, exclusively this request's until its response ends.
    H1(H1Sender),
    /// HTTP/2, shared.
    H2(H2Sender),
}

impl Sender {
    /// Sends `req`. If it could not be sent at all, the error gives it back.
    pub async fn send(
        &mut self,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<RequestBody>>> {
        match self {
            Sender::H1(s) => s.try_send_request(req).await,
            Sender::H2(s) => s.try_send_request(req).await,
        }
    }
}

/// Why a new connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect failed (refused, unreachable...).
    #[error("connect to {addr}: {source}")]
    Io {
        /// The backend.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// TCP connect took longer than the upstream's `connect-timeout`.
    #[error("connect to {addr}: timed out after {timeout:?}")]
    Timeout {
        /// The backend.
        addr: SocketAddr,
        /// The limit.
        timeout: Duration,
    },
    /// The HTTP handshake failed.
    #[error("handshake with {addr}: {source}")]
    Handshake {
        /// The backend.
        addr: SocketAddr,
        /// Why.
        source: hyper::Error,
    },
}

struct Idle {
    sender: H1Sender,
    since: Instant,
}

/// [`Pool`] keeps a backend's idle HTTP/1.1 connections (up to `max_idle`)
/// and its shared HTTP/2 connection.
pub struct Pool {
    idle: ArrayQueue<Idle>,
    max_idle: usize,
    idle_timeout: Duration,
    h2: ArcSwapOption<H2Sender>,
    h2_dialing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("idle", &self.idle.len())
            .field("max_idle", &self.max_idle)
            .finish()
    }
}

impl Pool {
    /// A pool keeping at most `max_idle` connections (0: no keep-alive),
    /// each for at most `idle_timeout`.
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Pool {
        Pool {
            idle: ArrayQueue::new(max_idle.max(1)),
            max_idle,
            idle_timeout,
            h2: ArcSwapOption::empty(),
            h2_dialing: tokio::sync::Mutex::new(()),
        }
    }

    /// An idle HTTP/1.1 connection ready for a request, if there is one.
    pub async fn take(&self) -> Option<H1Sender> {
        while let Some(Idle { mut sender, since }) = self.idle.pop() {
            if sender.is_closed() || since.elapsed() > self.idle_timeout {
                continue;
            }
            if sender.is_ready() {
                return Some(sender);
            }
            // Handed back the moment its last response ended: the
            // connection task may not have noticed yet. It will at once.
            if let Ok(Ok(())) =
                tokio::time::timeout(Duration::from_millis(100), sender.ready()).await
            {
                return Some(sender);
            }
        }
        None
    }

    /// Returns an HTTP/1.1 connection after a complete response.
    pub fn put(&self, sender: H1Sender) {
        if self.max_idle == 0 || sender.is_closed() {
            return;
        }
        // A full pool drops the connection, which closes it.
        let _ = self.idle.push(Idle {
            sender,
            since: Instant::now(),
        });
    }

    /// Idle HTTP/1.1 connections now.
    pub fn idle(&self) -> usize {
        self.idle.len()
    }

    /// The shared HTTP/2 connection, dialled if there is none or it closed.
    pub async fn h2(&self, addr: SocketAddr, timeout: Duration) -> Result<H2Sender, ConnectError> {
        if let Some(s) = self.h2.load_full().filter(|s| !s.is_closed()) {
            return Ok((*s).clone());
        }
        let _dialing = self.h2_dialing.lock().await;
        if let Some(s) = self.h2.load_full().filter(|s| !s.is_closed()) {
            return Ok((*s).clone());
        }
        let stream = dial(addr, timeout).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ConnectError::Handshake { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(backend = %addr, "HTTP/2 backend connection ended: {e}");
            }
        });
        self.h2.store(Some(std::sync::Arc::new(sender.clone())));
        Ok(sender)
    }
}

async fn dial(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err(ConnectError::Timeout { addr, timeout }),
        Ok(Err(source)) => return Err(ConnectError::Io { addr, source }),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Dials `addr` and performs the HTTP/1.1 handshake. The connection is
/// driven by its own task until it closes (or is upgraded).
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<H1Sender, ConnectError> {
    let stream = dial(addr, timeout).await?;
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ConnectError::Handshake { addr, source })?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(backend = %addr, "backend connection ended: {e}");
        }
    });
    Ok(sender)
}
