//! Body types at the proxy's two edges.
//!
//! [`RequestBody`] is what goes to a backend; [`ProxyBody`] is what goes to
//! a client: a backend's streamed body (with the bookkeeping that must
//! happen when it ends) or a short body the proxy wrote itself. Neither is
//! boxed or buffered.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::pool::{Pool, Sender};
use crate::upstream::InFlight;

/// A request body on its way to a backend.
#[derive(Debug)]
pub enum RequestBody {
    /// The client's body, streamed.
    Client(Incoming),
    /// No body (proxy-made requests).
    Empty,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Client(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Client(b) => b.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Client(b) => b.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// What happens when a backend's response body has been read to the end.
#[derive(Debug)]
pub struct Completion {
    /// Held until the body is done (or dropped).
    pub in_flight: InFlight,
    /// The connection, returned to `pool` once the body is complete.
    pub reuse: Option<(Sender, Arc<Pool>)>,
}

impl Completion {
    pub(crate) fn complete(&mut self) {
        if let Some((sender, pool)) = self.reuse.take() {
            pool.put(sender);
        }
    }
}

/// A response body on its way to a client.
#[derive(Debug)]
pub enum ProxyBody {
    /// Streamed from a backend.
    Upstream {
        /// The backend's body.
        body: Incoming,
        /// Bookkeeping run at the end; `None` once done.
        done: Option<Completion>,
    },
    /// Written by the proxy (errors, demo backends).
    Full(Option<Bytes>),
}

impl ProxyBody {
    /// A body with fixed content.
    pub fn full(b: impl Into<Bytes>) -> Self {
        ProxyBody::Full(Some(b.into()))
    }

    /// An empty body.
    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream { body, done } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => {
                        if let Some(mut d) = done.take() {
                            d.complete();
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        // A broken body: the connection is not reused.
                        done.take();
                    }
                    Poll::Ready(Some(Ok(_))) if body.is_end_stream() => {
                        if let Some(mut d) = done.take() {
                            d.complete();
                        }
                    }
                    _ => {}
                }
                polled
            }
            ProxyBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { body, .. } => body.is_end_stream(),
            ProxyBody::Full(d) => d.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { body, .. } => body.size_hint(),
            ProxyBody::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
        }
    }
}
