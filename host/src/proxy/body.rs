//! [`ProxyBody`]: what goes to a client. A backend's streamed body, or a
//! short body the proxy wrote, with what must happen when it ends: the
//! connection back to its pool, the attempt's outcome reported to its
//! upstream, the in-flight count down, the access-log line out. Never
//! boxed or buffered.
//!
//! A backend body that stalls for the upstream's `read-timeout` while the
//! client waits for it is cut (an error frame: the client sees the body
//! end early) and counted against the backend.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

use super::access_log::Pending;
use super::client::ActiveGuard;
use crate::upstream::pool::{H1Sender, Pool};
use crate::upstream::{FailureKind, InFlight, Outcome, Upstream};

/// Why a response body stopped early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The backend's connection failed mid-body.
    #[error("backend body: {0}")]
    Backend(#[from] hyper::Error),
    /// The backend sent nothing for `read-timeout`.
    #[error("the backend sent nothing for {0:?}")]
    ReadTimeout(Duration),
}

/// The attempt a response came from, reported when its body is over.
pub struct Report {
    /// Its group.
    pub upstream: Arc<Upstream>,
    /// The backend's index.
    pub backend: usize,
    /// When the request was sent.
    pub sent_at: Instant,
    /// What is known so far (connected, status, time to headers).
    pub outcome: Outcome,
}

impl std::fmt::Debug for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Report")
            .field("upstream", &self.upstream.name)
            .field("backend", &self.backend)
            .field("outcome", &self.outcome)
            .finish()
    }
}

impl Report {
    fn send(mut self, failure: Option<FailureKind>) {
        self.outcome.failure = failure;
        if failure.is_none() {
            self.outcome.body_after = Some(self.sent_at.elapsed());
        }
        self.upstream.report(self.backend, &self.outcome);
    }
}

/// What happens when a backend's response body has been read to the end.
#[derive(Debug)]
pub struct Completion {
    /// Held until the body is done (or dropped).
    pub in_flight: InFlight,
    /// An HTTP/1.1 connection, returned to `pool` once the body is complete.
    pub reuse: Option<(H1Sender, Arc<Pool>)>,
    /// The attempt's outcome, reported once.
    pub report: Option<Report>,
}

impl Completion {
    /// The body ended well: the connection goes back to its pool.
    fn complete(&mut self) {
        if let Some((sender, pool)) = self.reuse.take() {
            pool.put(sender);
        }
        if let Some(r) = self.report.take() {
            r.send(None);
        }
    }

    fn fail(&mut self, kind: FailureKind) {
        self.reuse = None;
        if let Some(r) = self.report.take() {
            r.send(Some(kind));
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        // Dropped before its end: the client went away or stopped reading.
        if let Some(r) = self.report.take() {
            r.send(Some(FailureKind::ClientGone));
        }
    }
}

#[derive(Debug)]
enum Inner {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

/// A response body on its way to a client.
#[derive(Debug)]
pub struct ProxyBody {
    inner: Inner,
    done: Option<Completion>,
    log: Option<Box<Pending>>,
    /// `read-timeout`, and its timer while the backend is awaited.
    read: Option<(Duration, Option<Pin<Box<Sleep>>>)>,
    /// The longest a client may leave this body unread between writes.
    send_timeout: Option<Duration>,
    _active: Option<ActiveGuard>,
}

impl ProxyBody {
    fn new(inner: Inner) -> Self {
        ProxyBody {
            inner,
            done: None,
            log: None,
            read: None,
            send_timeout: None,
            _active: None,
        }
    }

    /// A body with fixed content.
    pub fn full(b: impl Into<Bytes>) -> Self {
        ProxyBody::new(Inner::Full(Some(b.into())))
    }

    /// An empty body.
    pub fn empty() -> Self {
        ProxyBody::new(Inner::Full(None))
    }

    /// A backend's body; `done` runs once it has been read to the end, and
    /// a stall of `read_timeout` cuts it.
    pub fn upstream(body: Incoming, mut done: Completion, read_timeout: Duration) -> Self {
        let done = if body.is_end_stream() {
            done.complete();
            None
        } else {
            Some(done)
        };
        let mut b = ProxyBody::new(Inner::Upstream(body));
        b.done = done;
        b.read = Some((read_timeout, None));
        b
    }

    /// Writes `entry` to the access log when the body is finished, with the
    /// number of body bytes sent.
    pub fn logged(mut self, entry: Option<Box<Pending>>) -> Self {
        self.log = entry;
        self
    }

    /// Keeps the client connection's request count up until the body is
    /// gone, and says how long the client may stall it.
    pub fn held(mut self, guard: ActiveGuard, send_timeout: Option<Duration>) -> Self {
        self._active = Some(guard);
        self.send_timeout = send_timeout;
        self
    }

    /// How long a client may leave this body unread, if bounded.
    pub fn send_timeout(&self) -> Option<Duration> {
        self.send_timeout
    }

    /// Whether the backend has been silent for `read-timeout` while polled.
    fn read_timed_out(&mut self, cx: &mut Context<'_>) -> Option<Duration> {
        let (timeout, timer) = self.read.as_mut()?;
        let sleep = match timer {
            Some(s) => s,
            None => timer.insert(Box::pin(tokio::time::sleep(*timeout))),
        };
        sleep.as_mut().poll(cx).is_ready().then_some(*timeout)
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            (*log).finish();
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            Inner::Upstream(body) => match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Pending => {
                    if let Some(t) = this.read_timed_out(cx) {
                        if let Some(mut d) = this.done.take() {
                            d.fail(FailureKind::ReadTimeout);
                        }
                        this.inner = Inner::Full(None);
                        return Poll::Ready(Some(Err(BodyError::ReadTimeout(t))));
                    }
                    return Poll::Pending;
                }
                Poll::Ready(p) => {
                    if let Some((_, timer)) = &mut this.read {
                        *timer = None;
                    }
                    let ended = match &p {
                        None => true,
                        Some(Ok(_)) => body.is_end_stream(),
                        Some(Err(_)) => {
                            if let Some(mut d) = this.done.take() {
                                d.fail(FailureKind::BodyBroken);
                            }
                            false
                        }
                    };
                    if ended && let Some(mut d) = this.done.take() {
                        d.complete();
                    }
                    Poll::Ready(p.map(|r| r.map_err(BodyError::from)))
                }
            },
            Inner::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        };
        if let (Some(log), Poll::Ready(Some(Ok(frame)))) = (&mut this.log, &polled) {
            log.bytes += frame.data_ref().map_or(0, |d| d.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(body) => body.is_end_stream(),
            Inner::Full(d) => d.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(body) => body.size_hint(),
            Inner::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            Inner::Full(None) => SizeHint::with_exact(0),
        }
    }
}
