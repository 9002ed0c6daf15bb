//! Connections to one backend.
//!
//! HTTP/1.1: idle connections wait in a bounded lock-free queue. A request
//! takes one (skipping any that closed or idled too long) or dials a new
//! one; the response body hands its connection back when it has been read
//! to the end, so a connection is only ever reused between requests. New
//! connections are dialled by tasks of their own for whichever request is
//! waiting, a few at a time, and at most `max-connections-per-backend` are
//! open at once (each holds a slot until it closes); a request waits, up to
//! the connect timeout, for one. So a flood of client requests, or of
//! requests cancelled as soon as sent, never becomes a flood of backend
//! connections.
//!
//! HTTP/2 (backends marked `h2 = true`): one multiplexed connection shared
//! by all requests, re-dialled when it closes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use crossbeam_queue::ArrayQueue;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::body::RequestBody;

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

/// Why a connection could not be had.
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
    /// The backend had `max-connections-per-backend` connections busy for
    /// the whole wait. The proxy's own limit, not the backend failing.
    #[error("{addr} is at its limit of {limit} connections")]
    Busy {
        /// The backend.
        addr: SocketAddr,
        /// `max-connections-per-backend`.
        limit: usize,
    },
}

impl ConnectError {
    /// Whether the backend itself failed (as opposed to the proxy's limit).
    pub fn is_backend_failure(&self) -> bool {
        !matches!(self, ConnectError::Busy { .. })
    }
}

/// How many connections a [`Pool`] keeps and opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    /// Idle connections kept (0: no keep-alive).
    pub max_idle: usize,
    /// How long an idle connection is kept.
    pub idle_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
}

struct Idle {
    sender: H1Sender,
    since: Instant,
}

/// New connections dialled at once for one backend: requests past this
/// wait for one of them (or for a pooled connection) instead of each
/// dialling its own, so a burst of requests that are then cancelled (rapid
/// reset) does not become a burst of connections.
const MAX_DIALS: usize = 16;

/// Why the last dial failed, for the requests that were waiting on it.
#[derive(Debug, Clone)]
struct DialFailure {
    timed_out: Option<Duration>,
    message: String,
}

/// [`Pool`] holds one backend's connections: see the module docs.
pub struct Pool {
    addr: SocketAddr,
    limits: PoolLimits,
    idle: ArrayQueue<Idle>,
    /// Connections just dialled, for whichever waiting request comes first.
    fresh: ArrayQueue<Idle>,
    slots: Arc<Semaphore>,
    /// Requests waiting for a connection.
    waiting: AtomicUsize,
    dialing: AtomicUsize,
    /// Wakes waiting requests: a connection was put back or dialled, a
    /// slot freed, a dial failed.
    returned: Notify,
    failures: AtomicU64,
    last_failure: Mutex<Option<DialFailure>>,
    h2: ArcSwapOption<H2Sender>,
    h2_dialing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("addr", &self.addr)
            .field("idle", &self.idle.len())
            .field("limits", &self.limits)
            .finish()
    }
}

/// A place under the backend's connection limit, held by a connection
/// until it closes; freeing it wakes a waiting request.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    pool: Weak<Pool>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.returned.notify_waiters();
        }
    }
}

/// Counts a request as waiting for a connection while it lives.
struct Waiting<'a>(&'a Pool);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Pool {
    /// A pool for the backend at `addr`.
    pub fn new(addr: SocketAddr, limits: PoolLimits) -> Pool {
        Pool {
            addr,
            limits,
            idle: ArrayQueue::new(limits.max_idle.max(1)),
            fresh: ArrayQueue::new(MAX_DIALS),
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            waiting: AtomicUsize::new(0),
            dialing: AtomicUsize::new(0),
            returned: Notify::new(),
            failures: AtomicU64::new(0),
            last_failure: Mutex::new(None),
            h2: ArcSwapOption::empty(),
            h2_dialing: tokio::sync::Mutex::new(()),
        }
    }

    /// An HTTP/1.1 connection for one request: an idle one (`false`), or a
    /// new one (`true`). New connections are dialled by tasks of their own,
    /// at most [`MAX_DIALS`] at once and never past the connection limit,
    /// and go to whichever request is waiting; a request waits up to
    /// `timeout` for one.
    pub async fn h1(self: &Arc<Self>, timeout: Duration) -> Result<(H1Sender, bool), ConnectError> {
        if let Some(s) = self.take().await {
            return Ok((s, false));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(self);
        let failures = self.failures.load(Ordering::SeqCst);
        loop {
            // Register before looking again, so nothing that happens in
            // between is missed.
            let returned = self.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if let Some(s) = self.take_fresh() {
                return Ok((s, true));
            }
            if let Some(s) = self.take().await {
                return Ok((s, false));
            }
            if self.failures.load(Ordering::SeqCst) != failures {
                return Err(self.failure());
            }
            self.dial_for_waiters(timeout);
            tokio::select! {
                _ = returned => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(ConnectError::Busy { addr: self.addr, limit: self.limits.max_connections });
                }
            }
        }
    }

    /// A new HTTP/1.1 connection (to replace a pooled one found closed).
    pub async fn fresh(self: &Arc<Self>, timeout: Duration) -> Result<H1Sender, ConnectError> {
        loop {
            match self.h1(timeout).await? {
                (s, true) => return Ok(s),
                // Pooled: it may be closed too; a fresh one is wanted.
                (s, false) => drop(s),
            }
        }
    }

    /// Starts dials while requests wait for more connections than are
    /// being dialled, within the limits.
    fn dial_for_waiters(self: &Arc<Self>, timeout: Duration) {
        loop {
            let dialing = self.dialing.load(Ordering::SeqCst);
            let wanted = self.waiting.load(Ordering::SeqCst).min(MAX_DIALS);
            if dialing >= wanted {
                return;
            }
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                return;
            };
            if self
                .dialing
                .compare_exchange(dialing, dialing + 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                continue;
            }
            let slot = Slot {
                _permit: permit,
                pool: Arc::downgrade(self),
            };
            let pool = self.clone();
            tokio::spawn(async move {
                let made = connect(pool.addr, timeout, Some(slot)).await;
                pool.dialing.fetch_sub(1, Ordering::SeqCst);
                match made {
                    Ok(sender) => {
                        let idle = Idle {
                            sender,
                            since: Instant::now(),
                        };
                        if let Err(idle) = pool.fresh.push(idle) {
                            pool.put(idle.sender);
                        }
                    }
                    Err(e) => {
                        let failure = DialFailure {
                            timed_out: match e {
                                ConnectError::Timeout { timeout, .. } => Some(timeout),
                                _ => None,
                            },
                            message: e.to_string(),
                        };
                        *pool.last_failure.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(failure);
                        pool.failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
                pool.returned.notify_waiters();
            });
        }
    }

    /// The error of the last failed dial.
    fn failure(&self) -> ConnectError {
        let f = self
            .last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match f {
            Some(DialFailure {
                timed_out: Some(timeout),
                ..
            }) => ConnectError::Timeout {
                addr: self.addr,
                timeout,
            },
            Some(f) => ConnectError::Io {
                addr: self.addr,
                source: std::io::Error::other(f.message),
            },
            None => ConnectError::Io {
                addr: self.addr,
                source: std::io::Error::other("connect failed"),
            },
        }
    }

    /// A connection dialled for the waiting requests, if one is there.
    fn take_fresh(&self) -> Option<H1Sender> {
        while let Some(Idle { sender, since }) = self.fresh.pop() {
            if !sender.is_closed() && since.elapsed() <= self.limits.idle_timeout {
                return Some(sender);
            }
        }
        None
    }

    /// An idle HTTP/1.1 connection ready for a request, if there is one.
    async fn take(&self) -> Option<H1Sender> {
        while let Some(Idle { mut sender, since }) = self.idle.pop() {
            if sender.is_closed() || since.elapsed() > self.limits.idle_timeout {
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
        if self.limits.max_idle == 0 || sender.is_closed() {
            return;
        }
        // A full pool drops the connection, which closes it.
        let _ = self.idle.push(Idle {
            sender,
            since: Instant::now(),
        });
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.returned.notify_one();
        }
    }

    /// Idle HTTP/1.1 connections now.
    pub fn idle(&self) -> usize {
        self.idle.len()
    }

    /// The shared HTTP/2 connection, dialled if there is none or it closed.
    pub async fn h2(&self, timeout: Duration) -> Result<H2Sender, ConnectError> {
        if let Some(s) = self.h2.load_full().filter(|s| !s.is_closed()) {
            return Ok((*s).clone());
        }
        let _dialing = self.h2_dialing.lock().await;
        if let Some(s) = self.h2.load_full().filter(|s| !s.is_closed()) {
            return Ok((*s).clone());
        }
        let addr = self.addr;
        let stream = tcp(addr, timeout).await?;
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
        self.h2.store(Some(Arc::new(sender.clone())));
        Ok(sender)
    }
}

async fn tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err(ConnectError::Timeout { addr, timeout }),
        Ok(Err(source)) => return Err(ConnectError::Io { addr, source }),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Dials `addr` and performs the HTTP/1.1 handshake. The connection is
/// driven by its own task until it closes (or is upgraded), holding `slot`
/// (a place under the backend's connection limit) until then.
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    slot: Option<Slot>,
) -> Result<H1Sender, ConnectError> {
    let stream = tcp(addr, timeout).await?;
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ConnectError::Handshake { addr, source })?;
    tokio::spawn(async move {
        let _slot = slot;
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(backend = %addr, "backend connection ended: {e}");
        }
    });
    Ok(sender)
}
