//! Listeners: accept connections, serve HTTP/1.1 and h2c on them through
//! the [`Proxy`], follow config reloads (a listener whose address did not
//! change keeps its socket), and drain gracefully on shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::proxy::Proxy;

/// How long a client may take to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Binds `addr`, naming it in the error.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}

fn builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    b.http2().timer(TokioTimer::new());
    b
}

struct Active {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Listeners freshly bound for a config that is not in service yet.
pub struct Bound(Vec<(SocketAddr, TcpListener)>);

/// [`Listeners`] is the set of proxy listeners, keyed by their configured
/// address.
pub struct Listeners {
    proxy: Arc<Proxy>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    graceful: Arc<GracefulShutdown>,
    active: HashMap<SocketAddr, Active>,
}

impl Listeners {
    /// No listeners yet.
    pub fn new(proxy: Arc<Proxy>) -> Listeners {
        Listeners {
            proxy,
            builder: Arc::new(builder()),
            graceful: Arc::new(GracefulShutdown::new()),
            active: HashMap::new(),
        }
    }

    /// Binds the addresses of `addrs` not listened on yet. Nothing changes
    /// for clients until [`Listeners::commit`]; on error nothing stays bound.
    pub async fn bind_missing(&self, addrs: &[SocketAddr]) -> anyhow::Result<Bound> {
        let mut bound = Vec::new();
        for &addr in addrs {
            if !self.active.contains_key(&addr) {
                bound.push((addr, bind(addr).await?));
            }
        }
        Ok(Bound(bound))
    }

    /// Starts serving the newly bound listeners and closes those whose
    /// address is not in `addrs` (their open connections finish normally).
    pub fn commit(&mut self, bound: Bound, addrs: &[SocketAddr]) {
        for (addr, listener) in bound.0 {
            match listener.local_addr() {
                Ok(local) => tracing::info!("listening on http://{local}"),
                Err(e) => tracing::warn!("listener {addr}: {e}"),
            }
            let (stop, stopped) = watch::channel(false);
            let task = tokio::spawn(accept_loop(
                listener,
                self.proxy.clone(),
                self.builder.clone(),
                self.graceful.clone(),
                stopped,
            ));
            self.active.insert(addr, Active { stop, task });
        }
        let gone: Vec<SocketAddr> = self
            .active
            .keys()
            .filter(|a| !addrs.contains(a))
            .copied()
            .collect();
        for addr in gone {
            if let Some(a) = self.active.remove(&addr) {
                let _ = a.stop.send(true);
                tracing::info!("no longer listening on {addr}");
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
        drop(self.builder);
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

async fn accept_loop(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, don't spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let service = service_fn(move |req| proxy.clone().handle(req, peer, false));
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watcher().watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(client = %peer, "connection ended: {e}");
            }
        });
    }
}
