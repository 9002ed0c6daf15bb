//! [`RequestBody`]: what goes to a backend. The client's body streamed as
//! it arrives (from hyper's HTTP/1.1 server or our HTTP/2 one), under the
//! route's size limit and the client-body timeout, or nothing.
//!
//! An [`UploadWatch`] lets the sender see how the upload goes: when the
//! body has been sent whole (the response timeout starts then, not before:
//! a slow client is the client's problem), and whether the backend has
//! stopped reading it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::Notify;
use tokio::time::Sleep;

/// Why a request body stopped.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    /// The client's HTTP/1.1 connection failed mid-body.
    #[error("client body: {0}")]
    Client(#[from] hyper::Error),
    /// The client's HTTP/2 stream failed mid-body.
    #[error("client body: {0}")]
    Stream(#[from] h2::Error),
    /// The body went past the route's `max-body-size`.
    #[error("request body over the limit of {0} bytes")]
    TooLarge(u64),
    /// The client sent nothing for `client-body-timeout`.
    #[error("the client sent no body data for {0:?}")]
    Timeout(Duration),
}

/// Called once, when a backend first reads the body (the HTTP/2 server
/// sends `100 Continue` then, as hyper does for HTTP/1.1).
pub type OnFirstRead = Box<dyn FnOnce() + Send + Sync>;

/// The client's body as the HTTP/2 server hands it over.
pub struct H2Body {
    /// The stream's data.
    pub recv: h2::RecvStream,
    /// Run at the first read.
    pub on_first_read: Option<OnFirstRead>,
}

impl std::fmt::Debug for H2Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Body").finish_non_exhaustive()
    }
}

#[derive(Debug)]
enum Source {
    Empty,
    H1(Incoming),
    H2(H2Body),
    /// The data frames are over; the trailers are next.
    H2Trailers(h2::RecvStream),
}

/// Where an upload stands, as [`UploadWatch::state`] reports it.
const WAITING_ON_CLIENT: u8 = 0;
const WAITING_ON_BACKEND: u8 = 1;
const DONE: u8 = 2;

/// [`UploadWatch`] is shared by a [`RequestBody`] and the code waiting for
/// its response.
#[derive(Debug)]
pub struct UploadWatch {
    base: Instant,
    state: AtomicU8,
    /// Nanoseconds after `base` of the last change of `state`.
    at_ns: AtomicU64,
    /// Notified when the body is done.
    pub done: Notify,
}

/// What an [`UploadWatch`] says about the upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upload {
    /// The client is sending (its own timeout applies).
    Sending,
    /// The last data went to the backend at this instant and it has not
    /// asked for more since.
    BackendReading(Instant),
    /// The whole body was sent at this instant.
    Sent(Instant),
}

impl UploadWatch {
    fn new() -> UploadWatch {
        UploadWatch {
            base: Instant::now(),
            state: AtomicU8::new(WAITING_ON_CLIENT),
            at_ns: AtomicU64::new(0),
            done: Notify::new(),
        }
    }

    fn set(&self, state: u8) {
        let ns = self.base.elapsed().as_nanos() as u64;
        self.at_ns.store(ns, Ordering::Relaxed);
        self.state.store(state, Ordering::Release);
        if state == DONE {
            self.done.notify_one();
        }
    }

    /// Where the upload stands.
    pub fn state(&self) -> Upload {
        let state = self.state.load(Ordering::Acquire);
        let at = self.base + Duration::from_nanos(self.at_ns.load(Ordering::Relaxed));
        match state {
            WAITING_ON_BACKEND => Upload::BackendReading(at),
            DONE => Upload::Sent(at),
            _ => Upload::Sending,
        }
    }
}

/// A request body on its way to a backend.
#[derive(Debug)]
pub struct RequestBody {
    source: Source,
    /// Bytes still allowed under the route's limit, and the limit.
    limit: Option<(u64, u64)>,
    /// Set when the limit was passed.
    exceeded: Option<Arc<AtomicBool>>,
    /// `client-body-timeout` and its timer, armed while the client is
    /// awaited.
    idle: Option<(Duration, Option<Pin<Box<Sleep>>>)>,
    watch: Option<Arc<UploadWatch>>,
    /// The first read has happened.
    started: bool,
}

impl RequestBody {
    /// No body (replayed requests, health checks).
    pub fn empty() -> RequestBody {
        RequestBody::from_source(Source::Empty)
    }

    /// A client's HTTP/1.1 body.
    pub fn h1(body: Incoming) -> RequestBody {
        RequestBody::from_source(Source::H1(body))
    }

    /// A client's HTTP/2 body.
    pub fn h2(body: H2Body) -> RequestBody {
        RequestBody::from_source(Source::H2(body))
    }

    fn from_source(source: Source) -> RequestBody {
        RequestBody {
            source,
            limit: None,
            exceeded: None,
            idle: None,
            watch: None,
            started: false,
        }
    }

    /// Fails the upload once it passes `limit` bytes; the flag says so
    /// afterwards.
    pub fn limit(&mut self, limit: u64) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        self.limit = Some((limit, limit));
        self.exceeded = Some(flag.clone());
        flag
    }

    /// Fails the upload when the client sends nothing for `timeout`.
    pub fn client_timeout(&mut self, timeout: Duration) {
        self.idle = Some((timeout, None));
    }

    /// A watch on the upload, for a body that has one to send.
    pub fn watch(&mut self) -> Option<Arc<UploadWatch>> {
        if self.is_end_stream() {
            return None;
        }
        Some(
            self.watch
                .get_or_insert_with(|| Arc::new(UploadWatch::new()))
                .clone(),
        )
    }

    fn poll_source(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        match &mut self.source {
            Source::Empty => Poll::Ready(None),
            Source::H1(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(RequestBodyError::from))),
            Source::H2(b) => {
                if let Some(hook) = b.on_first_read.take() {
                    hook();
                }
                match ready!(b.recv.poll_data(cx)) {
                    Some(Ok(data)) => {
                        let _ = b.recv.flow_control().release_capacity(data.len());
                        Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
                    None => {
                        let Source::H2(b) = std::mem::replace(&mut self.source, Source::Empty)
                        else {
                            return Poll::Ready(None);
                        };
                        self.source = Source::H2Trailers(b.recv);
                        self.poll_source(cx)
                    }
                }
            }
            Source::H2Trailers(recv) => {
                let trailers = ready!(recv.poll_trailers(cx));
                self.source = Source::Empty;
                match trailers {
                    Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
                    Ok(None) => Poll::Ready(None),
                    Err(e) => Poll::Ready(Some(Err(e.into()))),
                }
            }
        }
    }

    /// Whether the client-body timer ran out while the client was awaited.
    fn client_timed_out(&mut self, cx: &mut Context<'_>) -> Option<Duration> {
        let (timeout, timer) = self.idle.as_mut()?;
        let deadline = tokio::time::Instant::now() + *timeout;
        let sleep = match timer {
            Some(s) => s,
            None => timer.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        sleep.as_mut().poll(cx).is_ready().then_some(*timeout)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let this = self.get_mut();
        this.started = true;
        if let Some(w) = &this.watch
            && w.state.load(Ordering::Relaxed) == WAITING_ON_BACKEND
        {
            w.state.store(WAITING_ON_CLIENT, Ordering::Release);
        }
        let polled = match this.poll_source(cx) {
            Poll::Pending => {
                if let Some(t) = this.client_timed_out(cx) {
                    return Poll::Ready(Some(Err(RequestBodyError::Timeout(t))));
                }
                return Poll::Pending;
            }
            Poll::Ready(p) => p,
        };
        // The client answered: its timer starts afresh next time.
        if let Some((_, timer)) = &mut this.idle {
            *timer = None;
        }
        if let (Some(Ok(frame)), Some((remaining, limit))) = (&polled, &mut this.limit) {
            let len = frame.data_ref().map_or(0, |d| d.len() as u64);
            if len > *remaining {
                if let Some(flag) = &this.exceeded {
                    flag.store(true, Ordering::Relaxed);
                }
                return Poll::Ready(Some(Err(RequestBodyError::TooLarge(*limit))));
            }
            *remaining -= len;
        }
        if let Some(w) = &this.watch {
            match &polled {
                Some(Ok(_)) if !this.source_ended() => w.set(WAITING_ON_BACKEND),
                Some(Ok(_)) | None => w.set(DONE),
                Some(Err(_)) => {}
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Empty => true,
            Source::H1(b) => b.is_end_stream(),
            Source::H2(b) => b.recv.is_end_stream(),
            Source::H2Trailers(r) => r.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Empty => SizeHint::with_exact(0),
            Source::H1(b) => b.size_hint(),
            Source::H2(_) | Source::H2Trailers(_) => SizeHint::default(),
        }
    }
}

impl RequestBody {
    fn source_ended(&self) -> bool {
        self.is_end_stream()
    }

    /// Whether any of the body has been read.
    pub fn started(&self) -> bool {
        self.started
    }
}
