//! One client connection, from accept to close: the TLS handshake (bounded
//! by `tls-handshake-timeout`), the choice of protocol (ALPN on TLS, the
//! first bytes otherwise), and HTTP/1.1 through hyper or HTTP/2 through
//! [`super::h2`].
//!
//! A connection with no request in progress for `client-idle-timeout` is
//! closed, counted from accept or from the end of its last request, so a
//! client that trickles a request head byte by byte gets no more time than
//! an idle one. When the listener is at its connection limit it may ask an
//! idle connection to go (see [`super::Registry`]). A connection's slot is
//! held until its last request, or tunnel, is over.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio_rustls::TlsAcceptor;

use super::h2::{self, H2Conn};
use super::io::{ClientIo, Closer, Sniffed, sniff};
use super::signal::{EVICT, SHUTDOWN, Tracked};
use crate::config::{ClientLimits, DEFAULT_SEND_TIMEOUT};
use crate::proxy::Proxy;
use crate::upstream::body::RequestBody;

/// Everything one connection task needs.
pub struct Conn {
    pub(super) proxy: Arc<Proxy>,
    pub(super) limits: ClientLimits,
    pub(super) tracked: Arc<Tracked>,
    pub(super) permit: OwnedSemaphorePermit,
}

impl Conn {
    /// Serves the connection to its end, then waits for any tunnel it
    /// became before giving its slot back.
    ///
    /// The TLS and HTTP/2 paths are boxed: a task is as large as the
    /// largest future it may await, and without the boxes every plain
    /// HTTP/1.1 connection carried room for a TLS session and an HTTP/2
    /// connection (14.1 KB of task a connection, 2.6 KB with the boxes,
    /// by `bench/memory.sh`).
    pub async fn run(self, stream: TcpStream, tls: Option<Arc<TlsAcceptor>>) {
        let client = self.tracked.client.clone();
        let permit = match tls {
            None => Some(self.serve(stream, None).await),
            Some(acceptor) => Box::pin(self.run_tls(stream, acceptor)).await,
        };
        let Some(permit) = permit else { return };
        client.drained().await;
        drop(permit);
    }

    /// The TLS handshake, then [`Conn::serve`]; `None` when the handshake
    /// failed or the listener wanted the connection back first.
    async fn run_tls(
        self,
        stream: TcpStream,
        acceptor: Arc<TlsAcceptor>,
    ) -> Option<OwnedSemaphorePermit> {
        let client = self.tracked.client.clone();
        let limit = self.limits.tls_handshake_timeout;
        let tracked = self.tracked.clone();
        let handshake = tokio::select! {
            h = tokio::time::timeout(limit, acceptor.accept(stream)) => h,
            _ = tracked.signal.wait(EVICT | SHUTDOWN) => return None,
        };
        match handshake {
            Ok(Ok(tls)) => {
                let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                Some(self.serve(tls, alpn).await)
            }
            Ok(Err(e)) => {
                tracing::debug!(client = %client.peer.addr, "TLS handshake failed: {e}");
                None
            }
            Err(_) => {
                tracing::debug!(client = %client.peer.addr, "TLS handshake not done within {limit:?}");
                None
            }
        }
    }

    /// Picks the protocol and serves it; returns the slot to release.
    async fn serve<I>(self, mut io: I, alpn: Option<Vec<u8>>) -> OwnedSemaphorePermit
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let client = self.tracked.client.clone();
        let idle = self.limits.client_idle_timeout;
        let h2 = match alpn.as_deref() {
            Some(b"h2") => Some(Bytes::new()),
            Some(_) => None,
            None => {
                let sniffed = tokio::select! {
                    s = tokio::time::timeout(idle, sniff(&mut io)) => s,
                    _ = self.tracked.signal.wait(EVICT | SHUTDOWN) => return self.permit,
                };
                match sniffed {
                    Ok(Ok(Some(Sniffed::H2(seen)))) => Some(seen),
                    Ok(Ok(Some(Sniffed::H1(seen)))) => {
                        let io = ClientIo::new(io, seen, client);
                        return self.h1(io).await;
                    }
                    _ => return self.permit,
                }
            }
        };
        match h2 {
            Some(seen) => {
                let io = ClientIo::new(io, seen, client.clone());
                let conn = H2Conn {
                    proxy: self.proxy,
                    limits: self.limits,
                    tracked: self.tracked.clone(),
                };
                Box::pin(h2::serve(io, conn)).await;
                self.permit
            }
            None => {
                let io = ClientIo::new(io, Bytes::new(), client);
                self.h1(io).await
            }
        }
    }

    /// HTTP/1.1 through hyper, with upgrades. The connection's timers live
    /// in a watchdog task of their own (see [`watchdog`]), so serving
    /// requests never polls them.
    async fn h1<I>(self, io: ClientIo<I>) -> OwnedSemaphorePermit
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Conn {
            proxy,
            limits,
            tracked,
            permit,
        } = self;
        let client = tracked.client.clone();
        let closer = Arc::new(Closer::default());
        let done = Arc::new(Notify::new());
        tokio::spawn(watchdog(
            tracked,
            closer.clone(),
            done.clone(),
            limits.client_idle_timeout,
        ));
        let service = {
            let client = client.clone();
            service_fn(move |req: hyper::Request<Incoming>| {
                proxy
                    .clone()
                    .handle(req.map(RequestBody::h1), client.clone())
            })
        };
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            // Bounds the head of every request after the first (the first
            // is bounded from accept, by the watchdog).
            .header_read_timeout(limits.client_idle_timeout)
            .max_buf_size(limits.max_header_size.max(8192))
            .max_headers(limits.max_headers)
            .keep_alive(true);
        let conn = builder
            .serve_connection(TokioIo::new(io.closed_by(closer)), service)
            .with_upgrades();
        if let Err(e) = conn.await {
            tracing::debug!(client = %client.peer.addr, "connection ended: {e}");
        }
        done.notify_one();
        permit
    }
}

/// Ends an HTTP/1.1 connection that has had no request in progress for
/// `idle` (from accept, or from the end of its last request), one its
/// listener wants back, and, at shutdown, each once its request in
/// progress is over; it stops when the connection ends (`done`).
async fn watchdog(tracked: Arc<Tracked>, closer: Arc<Closer>, done: Arc<Notify>, idle: Duration) {
    let client = &tracked.client;
    loop {
        let idle_due = if client.active() == 0 {
            client.idle_since() + idle
        } else {
            std::time::Instant::now() + idle
        };
        let close = tokio::select! {
            _ = done.notified() => return,
            _ = tokio::time::sleep_until(idle_due.into()) => {
                let idle_now = client.active() == 0 && std::time::Instant::now() >= idle_due;
                if idle_now {
                    tracing::debug!(client = %client.peer.addr, "no request for {idle:?}, closing");
                }
                idle_now
            }
            raised = tracked.signal.wait(EVICT | SHUTDOWN) => {
                let go = raised & SHUTDOWN != 0 || client.active() == 0;
                if !go {
                    tracked.signal.stay();
                }
                go
            }
        };
        if close {
            // The connection reads as closed from its next idle moment on.
            closer.close();
            done.notified().await;
            return;
        }
    }
}

/// The send timeout a connection starts with, before a response sets its
/// upstream's.
pub fn initial_send_timeout() -> Duration {
    DEFAULT_SEND_TIMEOUT
}
