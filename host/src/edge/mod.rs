//! Listeners: accept connections (TLS with ALPN, or plain with HTTP/1.1 and
//! h2c prior knowledge), serve them through the [`Proxy`], follow config
//! reloads (a listener whose address did not change keeps its socket; its
//! certificate and limits are updated in place), and drain gracefully on
//! shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::config::ClientLimits;
use crate::headers::Peer;
use crate::proxy::Proxy;

/// Binds `addr`, naming it in the error.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}

/// How hyper serves client connections, from the config's limits.
fn builder(limits: &ClientLimits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // Also bounds how long a kept-alive connection may sit idle.
        .header_read_timeout(limits.client_idle_timeout)
        .max_buf_size(limits.max_header_size.max(8192))
        .max_headers(limits.max_headers)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX))
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

/// One listener as a config wants it.
#[derive(Clone)]
pub struct ListenerSpec {
    /// The configured address.
    pub addr: SocketAddr,
    /// TLS, if this is an HTTPS listener.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

struct Active {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    tls: Arc<ArcSwapOption<TlsAcceptor>>,
    permits: Arc<Semaphore>,
    max_connections: usize,
}

/// A listener's identity across reloads: its address, and which of the
/// listeners with that address it is (port 0 may appear several times).
type Key = (SocketAddr, usize);

fn keyed(specs: &[ListenerSpec]) -> Vec<(Key, &ListenerSpec)> {
    specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let nth = specs[..i].iter().filter(|s| s.addr == spec.addr).count();
            ((spec.addr, nth), spec)
        })
        .collect()
}

/// Listeners freshly bound for a config that is not in service yet.
pub struct Bound(Vec<(Key, TcpListener)>);

/// [`Listeners`] is the set of proxy listeners, keyed by their configured
/// address.
pub struct Listeners {
    proxy: Arc<Proxy>,
    builder: Arc<ArcSwap<auto::Builder<TokioExecutor>>>,
    idle_timeout: Arc<ArcSwap<Duration>>,
    graceful: Arc<GracefulShutdown>,
    active: HashMap<Key, Active>,
}

impl Listeners {
    /// No listeners yet.
    pub fn new(proxy: Arc<Proxy>, limits: &ClientLimits) -> Listeners {
        Listeners {
            proxy,
            builder: Arc::new(ArcSwap::from_pointee(builder(limits))),
            idle_timeout: Arc::new(ArcSwap::from_pointee(limits.client_idle_timeout)),
            graceful: Arc::new(GracefulShutdown::new()),
            active: HashMap::new(),
        }
    }

    /// Binds the addresses of `specs` not listened on yet. Nothing changes
    /// for clients until [`Listeners::commit`]; on error nothing stays bound.
    pub async fn bind_missing(&self, specs: &[ListenerSpec]) -> anyhow::Result<Bound> {
        let mut bound = Vec::new();
        for (key, spec) in keyed(specs) {
            if !self.active.contains_key(&key) {
                bound.push((key, bind(spec.addr).await?));
            }
        }
        Ok(Bound(bound))
    }

    /// Starts serving the newly bound listeners, updates the others
    /// (certificate, limits), and closes those not in `specs` (their open
    /// connections finish normally).
    pub fn commit(&mut self, bound: Bound, specs: &[ListenerSpec], limits: &ClientLimits) {
        self.builder.store(Arc::new(builder(limits)));
        self.idle_timeout
            .store(Arc::new(limits.client_idle_timeout));
        let keyed = keyed(specs);
        let spec_of = |key: &Key| keyed.iter().find(|(k, _)| k == key).map(|(_, s)| *s);
        for (key, listener) in bound.0 {
            let Some(spec) = spec_of(&key) else { continue };
            let addr = key.0;
            let scheme = if spec.tls.is_some() { "https" } else { "http" };
            match listener.local_addr() {
                Ok(local) => tracing::info!("listening on {scheme}://{local}"),
                Err(e) => tracing::warn!("listener {addr}: {e}"),
            }
            let (stop, stopped) = watch::channel(false);
            let tls = Arc::new(ArcSwapOption::empty());
            let permits = Arc::new(Semaphore::new(limits.max_connections));
            let task = tokio::spawn(accept_loop(
                listener,
                Accepting {
                    proxy: self.proxy.clone(),
                    builder: self.builder.clone(),
                    idle_timeout: self.idle_timeout.clone(),
                    graceful: self.graceful.clone(),
                    tls: tls.clone(),
                    permits: permits.clone(),
                },
                stopped,
            ));
            self.active.insert(
                key,
                Active {
                    stop,
                    task,
                    tls,
                    permits,
                    max_connections: limits.max_connections,
                },
            );
        }
        for (key, active) in &mut self.active {
            let Some(spec) = spec_of(key) else { continue };
            active
                .tls
                .store(spec.tls.clone().map(|c| Arc::new(TlsAcceptor::from(c))));
            let (old, new) = (active.max_connections, limits.max_connections);
            if new > old {
                active.permits.add_permits(new - old);
            } else if new < old {
                // Permits in use are taken back as connections close.
                let taken = active.permits.forget_permits(old - new);
                if taken < old - new {
                    let p = active.permits.clone();
                    let rest = (old - new - taken) as u32;
                    tokio::spawn(async move {
                        if let Ok(permits) = p.acquire_many(rest).await {
                            permits.forget();
                        }
                    });
                }
            }
            active.max_connections = new;
        }
        let gone: Vec<Key> = self
            .active
            .keys()
            .filter(|k| spec_of(k).is_none())
            .copied()
            .collect();
        for key in gone {
            if let Some(a) = self.active.remove(&key) {
                let _ = a.stop.send(true);
                tracing::info!("no longer listening on {}", key.0);
            }
        }
    }

    /// Stops accepting, then lets open connections finish for up to
    /// `grace`.
    pub async fn shutdown(self, grace: Duration) {
        for a in self.active.values() {
            let _ = a.stop.send(true);
        }
        for (_, a) in self.active {
            let _ = a.task.await;
        }
        // The accept tasks held the only other references.
        let Ok(graceful) = Arc::try_unwrap(self.graceful) else {
            return;
        };
        tokio::select! {
            _ = graceful.shutdown() => tracing::info!("all connections closed"),
            _ = tokio::time::sleep(grace) => tracing::warn!("grace period of {grace:?} over, closing remaining connections"),
        }
    }
}

/// What an accept loop shares with its listener set.
struct Accepting {
    proxy: Arc<Proxy>,
    builder: Arc<ArcSwap<auto::Builder<TokioExecutor>>>,
    idle_timeout: Arc<ArcSwap<Duration>>,
    graceful: Arc<GracefulShutdown>,
    tls: Arc<ArcSwapOption<TlsAcceptor>>,
    permits: Arc<Semaphore>,
}

async fn accept_loop(listener: TcpListener, a: Accepting, mut stop: watch::Receiver<bool>) {
    loop {
        // At the connection limit, wait for a connection to close before
        // accepting another (the kernel queues the rest).
        let permit = tokio::select! {
            _ = stop.changed() => return,
            p = a.permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: wait, don't spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            proxy: a.proxy.clone(),
            builder: a.builder.load_full(),
            watcher: a.graceful.watcher(),
            peer,
            idle_timeout: *a.idle_timeout.load_full(),
        };
        let tls = a.tls.load_full();
        tokio::spawn(async move {
            match tls {
                None => conn.serve(stream, false).await,
                Some(acceptor) => conn.serve_tls(&acceptor, stream).await,
            }
            drop(permit);
        });
    }
}

/// One accepted client connection.
struct Conn {
    proxy: Arc<Proxy>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
    peer: SocketAddr,
    idle_timeout: Duration,
}

impl Conn {
    async fn serve_tls(self, acceptor: &TlsAcceptor, stream: TcpStream) {
        let handshake =
            tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await;
        match handshake {
            Ok(Ok(tls)) => self.serve(tls, true).await,
            Ok(Err(e)) => tracing::debug!(client = %self.peer, "TLS handshake failed: {e}"),
            Err(_) => tracing::debug!(client = %self.peer, "TLS handshake timed out"),
        }
    }

    async fn serve<I>(self, io: I, https: bool)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Conn {
            proxy,
            builder,
            watcher,
            peer,
            idle_timeout,
        } = self;
        let client = Peer::new(peer);
        let service = service_fn(move |req| proxy.clone().handle(req, client.clone(), https));
        // hyper-util reads the first bytes itself to tell HTTP/1 from h2,
        // with no timeout: bound that wait, or an idle client would hold
        // the connection forever.
        let io = FirstByteTimeout::new(io, idle_timeout);
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        if let Err(e) = watcher.watch(conn.into_owned()).await {
            tracing::debug!(client = %peer, "connection ended: {e}");
        }
    }
}

/// An IO whose reads fail with `TimedOut` if the first byte does not come
/// within the timeout; after that it is the IO itself.
struct FirstByteTimeout<I> {
    io: I,
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<I> FirstByteTimeout<I> {
    fn new(io: I, timeout: Duration) -> Self {
        FirstByteTimeout {
            io,
            wait: Some(Box::pin(tokio::time::sleep(timeout))),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FirstByteTimeout<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if self.wait.is_some() {
            match &polled {
                Poll::Ready(Ok(())) if buf.filled().len() > before => self.wait = None,
                Poll::Pending => {
                    if let Some(w) = self.wait.as_mut()
                        && w.as_mut().poll(cx).is_ready()
                    {
                        return Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()));
                    }
                }
                _ => {}
            }
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FirstByteTimeout<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
