//! Upgraded connections (`101 Switching Protocols`, WebSocket): the client
//! and backend connections joined byte for byte until either closes or
//! neither sends anything for the upstream's `tunnel-idle-timeout`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::Response;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::body::ProxyBody;
use super::client::ActiveGuard;
use crate::upstream::InFlight;

/// Answers the client with the backend's `101` and, once both sides have
/// switched, joins them. The backend connection belongs to the tunnel
/// until it closes; the client connection's slot is held as long.
pub fn tunnel(
    mut resp: Response<Incoming>,
    client: OnUpgrade,
    in_flight: InFlight,
    alive: ActiveGuard,
    backend: Arc<str>,
    idle_timeout: Duration,
) -> Response<ProxyBody> {
    let to_backend = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        let _held = (in_flight, alive);
        match tokio::join!(client, to_backend) {
            (Ok(c), Ok(b)) => {
                let activity = Arc::new(Activity::new());
                let mut c = Watched::new(TokioIo::new(c), activity.clone());
                let mut b = Watched::new(TokioIo::new(b), activity.clone());
                tokio::select! {
                    r = tokio::io::copy_bidirectional(&mut c, &mut b) => {
                        if let Err(e) = r {
                            tracing::debug!(%backend, "tunnel closed: {e}");
                        }
                    }
                    _ = activity.idle(idle_timeout) => {
                        tracing::debug!(%backend, "tunnel idle for {idle_timeout:?}, closed");
                    }
                }
            }
            (Err(e), _) | (_, Err(e)) => tracing::debug!(%backend, "upgrade failed: {e}"),
        }
    });
    let (parts, _) = resp.into_parts();
    Response::from_parts(parts, ProxyBody::empty())
}

/// When a tunnel last moved a byte either way.
struct Activity {
    base: Instant,
    last_ns: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            base: Instant::now(),
            last_ns: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        self.last_ns
            .store(self.base.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `timeout`.
    async fn idle(&self, timeout: Duration) {
        loop {
            let last = self.base + Duration::from_nanos(self.last_ns.load(Ordering::Relaxed));
            let due = last + timeout;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due.into()).await;
        }
    }
}

/// An IO that notes each successful read and write.
struct Watched<I> {
    io: I,
    activity: Arc<Activity>,
}

impl<I> Watched<I> {
    fn new(io: I, activity: Arc<Activity>) -> Self {
        Watched { io, activity }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
