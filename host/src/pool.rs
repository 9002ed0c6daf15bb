//! Keep-alive connections to one backend.
//!
//! Idle HTTP/1.1 connections wait in a bounded lock-free queue. A request
//! takes one (skipping any that closed or idled too long) or dials a new
//! one; the response body hands its connection back when it has been read
//! to the end, so a connection is only ever reused between requests.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::RequestBody;

/// The sending half of a backend connection.
pub type Sender = http1::SendRequest<RequestBody>;

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
    /// The HTTP/1 handshake failed.
    #[error("handshake with {addr}: {source}")]
    Handshake {
        /// The backend.
        addr: SocketAddr,
        /// Why.
        source: hyper::Error,
    },
}

struct Idle {
    sender: Sender,
    since: Instant,
}

/// [`Pool`] keeps up to `max_idle` idle connections to one backend.
pub struct Pool {
    idle: ArrayQueue<Idle>,
    max_idle: usize,
    idle_timeout: Duration,
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
        }
    }

    /// An idle connection ready for a request, if there is one.
    pub async fn take(&self) -> Option<Sender> {
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

    /// Returns a connection after a complete response.
    pub fn put(&self, sender: Sender) {
        if self.max_idle == 0 || sender.is_closed() {
            return;
        }
        // A full pool drops the connection, which closes it.
        let _ = self.idle.push(Idle {
            sender,
            since: Instant::now(),
        });
    }

    /// Idle connections now.
    pub fn idle(&self) -> usize {
        self.idle.len()
    }
}

/// Dials `addr` and performs the HTTP/1.1 handshake. The connection is
/// driven by its own task until it closes.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Sender, ConnectError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err(ConnectError::Timeout { addr, timeout }),
        Ok(Err(source)) => return Err(ConnectError::Io { addr, source }),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
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
