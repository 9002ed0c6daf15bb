//! What the request path knows about the client connection a request came
//! on, shared with the edge that accepted it: the peer, the scheme, and
//! the live counts the edge's timeouts and connection limit look at.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::HeaderValue;
use tokio::sync::Notify;

/// A client connection's address, with its header form made once per
/// connection rather than once per request.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The TCP peer.
    pub addr: SocketAddr,
    /// Its IP address as a header value.
    pub ip_value: HeaderValue,
}

impl Peer {
    /// The peer at `addr`.
    pub fn new(addr: SocketAddr) -> Peer {
        let ip_value = HeaderValue::from_str(&addr.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Peer { addr, ip_value }
    }

    /// The peer's IP address.
    pub fn ip(&self) -> IpAddr {
        self.addr.ip()
    }
}

/// [`ClientConn`] is one client connection as the request path sees it.
#[derive(Debug)]
pub struct ClientConn {
    /// Who is at the other end.
    pub peer: Peer,
    /// Whether it came in over TLS.
    pub https: bool,
    base: Instant,
    /// Requests (and tunnels) of this connection still alive.
    active: AtomicU32,
    /// Nanoseconds after `base` at which `active` last fell to 0.
    idle_since_ns: AtomicU64,
    /// Set by the edge while it waits for `active` to reach 0.
    drained: Notify,
    /// The send timeout of the response being written (nanoseconds): the
    /// edge bounds a stalled write to the client by it.
    send_timeout_ns: AtomicU64,
}

impl ClientConn {
    /// A new connection from `peer`; `send_timeout` applies to writes until
    /// a response sets its own.
    pub fn new(peer: SocketAddr, https: bool, send_timeout: Duration) -> Arc<ClientConn> {
        Arc::new(ClientConn {
            peer: Peer::new(peer),
            https,
            base: Instant::now(),
            active: AtomicU32::new(0),
            idle_since_ns: AtomicU64::new(0),
            drained: Notify::new(),
            send_timeout_ns: AtomicU64::new(send_timeout.as_nanos() as u64),
        })
    }

    /// Counts a request (or tunnel) as alive until the guard is dropped.
    pub fn start(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        ActiveGuard(self.clone())
    }

    /// Requests and tunnels alive.
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Acquire)
    }

    /// Since when no request has been alive (the accept time if none ever
    /// was); meaningful only while [`ClientConn::active`] is 0.
    pub fn idle_since(&self) -> Instant {
        self.base + Duration::from_nanos(self.idle_since_ns.load(Ordering::Acquire))
    }

    /// Resolves once no request or tunnel of this connection is alive.
    pub async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// The send timeout now in force.
    pub fn send_timeout(&self) -> Duration {
        Duration::from_nanos(self.send_timeout_ns.load(Ordering::Relaxed))
    }

    /// Sets the send timeout for the response about to be written.
    pub fn set_send_timeout(&self, t: Duration) {
        let ns = t.as_nanos() as u64;
        if self.send_timeout_ns.load(Ordering::Relaxed) != ns {
            self.send_timeout_ns.store(ns, Ordering::Relaxed);
        }
    }
}

/// A request or tunnel alive on a [`ClientConn`].
#[derive(Debug)]
pub struct ActiveGuard(Arc<ClientConn>);

impl ActiveGuard {
    /// Another guard on the same connection (a tunnel outliving its
    /// request).
    pub fn another(&self) -> ActiveGuard {
        self.0.start()
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let c = &*self.0;
        if c.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            c.idle_since_ns
                .store(c.base.elapsed().as_nanos() as u64, Ordering::Release);
            c.drained.notify_waiters();
        }
    }
}
