//! Body types at the proxy's two edges.
//!
//! [`RequestBody`] is what goes to a backend: the client's body streamed
//! (optionally under a size limit), or nothing. [`ProxyBody`] is what goes
//! to a client: a backend's streamed body or a short body the proxy wrote,
//! with the bookkeeping that must happen when it ends (the connection back
//! to its pool, the in-flight count down, the access-log line out). Neither
//! is boxed or buffered.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::access_log::Pending;
use crate::pool::{H1Sender, Pool};
use crate::upstream::InFlight;

/// Why a request body stopped.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    /// The client's connection failed mid-body.
    #[error("client body: {0}")]
    Client(#[from] hyper::Error),
    /// The body went past the route's `max-body-size`.
    #[error("request body over the limit of {0} bytes")]
    TooLarge(u64),
}

/// A request body on its way to a backend.
#[derive(Debug)]
pub enum RequestBody {
    /// The client's body, streamed.
    Client(Incoming),
    /// The client's body, streamed until it passes `limit` bytes; then
    /// `exceeded` is set and the upload fails.
    Limited {
        /// The body.
        body: Incoming,
        /// Bytes still allowed.
        remaining: u64,
        /// The limit, for the error.
        limit: u64,
        /// Set when the limit was passed.
        exceeded: Arc<AtomicBool>,
    },
    /// No body (replayed requests, health checks).
    Empty,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        match self.get_mut() {
            RequestBody::Client(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(RequestBodyError::from))),
            RequestBody::Limited {
                body,
                remaining,
                limit,
                exceeded,
            } => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                    if len > *remaining {
                        exceeded.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(RequestBodyError::TooLarge(*limit))));
                    }
                    *remaining -= len;
                    Poll::Ready(Some(Ok(frame)))
                }
                other => other.map(|f| f.map(|r| r.map_err(RequestBodyError::from))),
            },
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Client(b) | RequestBody::Limited { body: b, .. } => b.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Client(b) | RequestBody::Limited { body: b, .. } => b.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// What happens when a backend's response body has been read to the end.
#[derive(Debug)]
pub struct Completion {
    /// Held until the body is done (or dropped).
    pub in_flight: InFlight,
    /// An HTTP/1.1 connection, returned to `pool` once the body is complete.
    pub reuse: Option<(H1Sender, Arc<Pool>)>,
}

impl Completion {
    /// Returns the connection to its pool.
    pub(crate) fn complete(&mut self) {
        if let Some((sender, pool)) = self.reuse.take() {
            pool.put(sender);
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
}

impl ProxyBody {
    /// A body with fixed content.
    pub fn full(b: impl Into<Bytes>) -> Self {
        ProxyBody {
            inner: Inner::Full(Some(b.into())),
            done: None,
            log: None,
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        ProxyBody {
            inner: Inner::Full(None),
            done: None,
            log: None,
        }
    }

    /// A backend's body; `done` runs once it has been read to the end.
    pub fn upstream(body: Incoming, mut done: Completion) -> Self {
        let done = if body.is_end_stream() {
            done.complete();
            None
        } else {
            Some(done)
        };
        ProxyBody {
            inner: Inner::Upstream(body),
            done,
            log: None,
        }
    }

    /// Writes `entry` to the access log when the body is finished, with the
    /// number of body bytes sent.
    pub fn logged(mut self, entry: Option<Box<Pending>>) -> Self {
        self.log = entry;
        self
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
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            Inner::Upstream(body) => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => {
                        if let Some(mut d) = this.done.take() {
                            d.complete();
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        // A broken body: the connection is not reused.
                        this.done.take();
                    }
                    Poll::Ready(Some(Ok(_))) if body.is_end_stream() => {
                        if let Some(mut d) = this.done.take() {
                            d.complete();
                        }
                    }
                    _ => {}
                }
                polled
            }
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
