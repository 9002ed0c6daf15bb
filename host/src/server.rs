//! Listeners: accept connections, serve HTTP/1.1 and h2c on them through
//! the [`Proxy`], and drain them gracefully on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::proxy::Proxy;

/// How long a client may take to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Binds every address, failing with the address that could not be bound.
pub async fn bind(addrs: &[SocketAddr]) -> anyhow::Result<Vec<TcpListener>> {
    let mut out = Vec::new();
    for addr in addrs {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        out.push(l);
    }
    Ok(out)
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

/// Serves `listeners` until `shutdown` resolves, then stops accepting and
/// lets open connections finish for up to `grace`.
pub async fn serve(
    proxy: Arc<Proxy>,
    listeners: Vec<TcpListener>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let graceful = Arc::new(GracefulShutdown::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let builder = Arc::new(builder());
    let mut accept_tasks = Vec::new();
    for listener in listeners {
        let proxy = proxy.clone();
        let builder = builder.clone();
        let graceful = graceful.clone();
        let mut stop = stop_rx.clone();
        accept_tasks.push(tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    _ = stop.changed() => break,
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
        }));
    }

    shutdown.await;
    tracing::info!("shutting down: no new connections, finishing requests in flight");
    let _ = stop_tx.send(true);
    for t in accept_tasks {
        let _ = t.await;
    }
    // The accept tasks held the only other references.
    let Ok(graceful) = Arc::try_unwrap(graceful) else {
        return;
    };
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(grace) => tracing::warn!("grace period of {grace:?} over, closing remaining connections"),
    }
}
