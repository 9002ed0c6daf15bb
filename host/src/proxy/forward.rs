//! Choosing a backend and sending the request to it, failing over as the
//! upstream's settings allow.
//!
//! A backend that cannot be connected to is reported failed and the policy
//! asked again without it; an idempotent request whose connection broke
//! before any response byte is sent again the same way. Attempts stop at
//! `retries` and `retry-timeout`; then the client gets `502` (`503` when
//! every backend was at its connection limit). `response-timeout` runs
//! from the moment the request, body included, has been sent: `504`,
//! never retried. A response over the proxy's own limits is `502` once,
//! not retried, and does not count against the backend. Every attempt's
//! outcome is reported once to the upstream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::HOST;
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use smallvec::SmallVec;

use super::body::{Completion, ProxyBody, Report};
use super::client::ActiveGuard;
use super::response::{error_response, respond};
use super::tunnel::tunnel;
use crate::policy::RequestView;
use crate::upstream::body::{RequestBody, RequestBodyError, Upload, UploadWatch};
use crate::upstream::pool::{ConnectError, Sender};
use crate::upstream::{Backend, FailureKind, InFlight, Outcome, Upstream};

/// What the client gets, and from whom.
pub struct Answer {
    /// The response.
    pub resp: Response<ProxyBody>,
    /// The backend that answered, if one did.
    pub backend: Option<usize>,
    /// Time to the backend's response headers.
    pub upstream_time: Option<Duration>,
}

impl Answer {
    /// A response the proxy writes itself.
    pub fn proxy(status: StatusCode, message: &str) -> Answer {
        Answer {
            resp: error_response(status, message),
            backend: None,
            upstream_time: None,
        }
    }
}

/// A backend's answer to an attempt.
struct Answered {
    resp: Response<Incoming>,
    sender: Sender,
    in_flight: InFlight,
    sent_at: Instant,
    /// Time to the response headers.
    took: Duration,
}

/// How one attempt to send the request to a backend failed.
enum Failed {
    /// The request never left: try another backend with it.
    NotSent(Box<(Parts, RequestBody)>, FailureKind, String),
    /// The request left but the connection broke before any response.
    Lost(String),
    /// No response within `response-timeout` of sending, or the backend
    /// stopped reading the request body for `read-timeout`.
    TimedOut(FailureKind, String),
    /// The response is over the proxy's limits.
    TooLarge(String),
    /// The client's body failed (or passed its limit) while being sent.
    ClientBody(StatusCode, String),
}

/// RFC 9110 §9.2.2: methods whose repetition does no more than one request.
fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A copy of a request head, to send again after a lost attempt.
fn copy_head(parts: &Parts) -> Parts {
    let mut copy = Request::new(()).into_parts().0;
    copy.method = parts.method.clone();
    copy.uri = parts.uri.clone();
    copy.version = parts.version;
    copy.headers = parts.headers.clone();
    copy
}

/// What a request brings to the retry loop besides its head and body.
pub struct Extras {
    /// The client side of an upgrade it asked for.
    pub upgrade: Option<OnUpgrade>,
    /// Its client connection's request count.
    pub alive: ActiveGuard,
}

/// What to do after a failed attempt.
enum Next {
    /// Try another backend with this head and body.
    Retry(Parts, RequestBody, String),
    /// Answer the client now.
    Answer(Answer),
}

/// Asks the policy and sends the request, failing over as the module docs
/// describe.
pub async fn forward(
    upstream: &Arc<Upstream>,
    mut view: RequestView,
    mut body: RequestBody,
    mut extras: Extras,
) -> Answer {
    // One policy generation for the whole request, even across a hot swap.
    let policy = upstream.policy();
    let cfg = &upstream.config;
    let deadline = Instant::now() + cfg.retry_timeout;
    // Only a body-less idempotent request can be sent again once it left.
    let replay = (cfg.retries > 0
        && upstream.backends.len() > 1
        && idempotent(&view.parts.method)
        && body.is_end_stream())
    .then(|| copy_head(&view.parts));
    let mut tried: SmallVec<[usize; 4]> = SmallVec::new();
    let mut last_error = String::new();
    let mut all_busy = true;
    // The policy's ranked fallbacks of its last answer: tried, in order,
    // before it is asked again.
    let mut ranked: SmallVec<[usize; 4]> = SmallVec::new();
    let mut set_cookie;
    // The trace of the last decision, when the group keeps them.
    let mut trace = None;
    loop {
        view.attempt = tried.len() as u32 + 1;
        let index = match upstream.next_ranked(&mut ranked, &tried) {
            Some(i) => {
                // The decision's cookie named its first backend.
                set_cookie = None;
                i
            }
            None => {
                let Some(choice) = upstream.choose(&**policy, &mut view, &tried) else {
                    break;
                };
                ranked = choice.ranked;
                set_cookie = choice.set_cookie;
                trace = choice.trace;
                choice.backend
            }
        };
        let tried_now = Try {
            index,
            attempt: view.attempt,
            trace: trace.clone(),
        };
        // Boxed: the attempt's state (connection wait, send, timers) is
        // most of a request's future, which is moved whole when a task is
        // spawned for it.
        let sending = Box::pin(attempt(
            upstream,
            &upstream.backends[index],
            view.parts,
            body,
        ));
        let failed = match sending.await {
            Ok(a) => {
                let watched = watched(policy.watched_headers(), a.resp.headers());
                return answered(upstream, tried_now, a, set_cookie, watched, &mut extras);
            }
            Err(failed) => failed,
        };
        all_busy &= matches!(&failed, Failed::NotSent(_, FailureKind::Busy, _));
        match after_failure(upstream, &tried_now, failed, replay.as_ref()) {
            Next::Retry(p, b, why) => {
                view.parts = p;
                body = b;
                last_error = why;
            }
            Next::Answer(a) => return a,
        }
        tried.push(index);
        if tried.len() > cfg.retries as usize || Instant::now() >= deadline {
            break;
        }
    }
    if all_busy && !tried.is_empty() {
        upstream.metrics.busy.inc();
        tracing::warn!(upstream = %upstream.name, "every backend tried is at its connection limit");
        return Answer::proxy(
            StatusCode::SERVICE_UNAVAILABLE,
            "every backend is at its connection limit",
        );
    }
    tracing::warn!(upstream = %upstream.name, "no backend could be reached: {last_error}");
    Answer::proxy(StatusCode::BAD_GATEWAY, "no backend could be reached")
}

/// The client's answer from a backend's response: streamed back, or, for
/// a `101`, a tunnel (`502` if the request asked for no upgrade).
fn answered(
    upstream: &Arc<Upstream>,
    Try {
        index,
        attempt: attempt_no,
        trace,
    }: Try,
    a: Answered,
    set_cookie: Option<HeaderValue>,
    watched: Vec<Option<String>>,
    extras: &mut Extras,
) -> Answer {
    let backend = &upstream.backends[index];
    let cfg = &upstream.config;
    let mut outcome = Outcome {
        connected: true,
        status: Some(a.resp.status()),
        headers_after: Some(a.took),
        attempt: attempt_no,
        watched,
        trace,
        ..Outcome::default()
    };
    let resp = if a.resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client) = extras.upgrade.take() else {
            // A backend may not switch protocols unasked.
            outcome.failure = Some(FailureKind::Protocol);
            upstream.report(index, &outcome);
            tracing::warn!(upstream = %upstream.name, backend = %backend.name, "backend answered 101 to a request that asked for no upgrade");
            return Answer::proxy(
                StatusCode::BAD_GATEWAY,
                "the backend switched protocols unasked",
            );
        };
        upstream.report(index, &outcome);
        tunnel(
            a.resp,
            client,
            a.in_flight,
            extras.alive.another(),
            backend.name.clone(),
            cfg.tunnel_idle_timeout,
        )
    } else {
        let done = Completion {
            in_flight: a.in_flight,
            reuse: None,
            report: Some(Report {
                upstream: upstream.clone(),
                backend: index,
                sent_at: a.sent_at,
                outcome,
            }),
        };
        respond(
            a.resp,
            a.sender,
            done,
            backend,
            set_cookie,
            cfg.read_timeout,
        )
    };
    Answer {
        resp,
        backend: Some(index),
        upstream_time: Some(a.took),
    }
}

/// The values of the response headers a policy watches, in its order.
fn watched(names: &[http::HeaderName], headers: &http::HeaderMap) -> Vec<Option<String>> {
    names
        .iter()
        .map(|n| crate::policy::joined_header(headers, n.as_str()))
        .collect()
}

/// One attempt: the backend, which attempt of the request it is, and the
/// trace of the decision that chose it.
struct Try {
    index: usize,
    attempt: u32,
    trace: Option<Arc<crate::upstream::Trace>>,
}

/// Reports a failed attempt and says what to do next.
fn after_failure(upstream: &Upstream, tried: &Try, failed: Failed, replay: Option<&Parts>) -> Next {
    let index = tried.index;
    let backend = &upstream.backends[index];
    let report = |failure: FailureKind, connected: bool| {
        upstream.report(
            index,
            &Outcome {
                connected,
                failure: Some(failure),
                attempt: tried.attempt,
                trace: tried.trace.clone(),
                ..Outcome::default()
            },
        );
    };
    let from_backend = |status: StatusCode, why: &str| {
        tracing::warn!(upstream = %upstream.name, backend = %backend.name, "{why}");
        Next::Answer(Answer {
            resp: error_response(status, why),
            backend: Some(index),
            upstream_time: None,
        })
    };
    match failed {
        Failed::NotSent(request, kind, why) => {
            report(kind, false);
            let (p, b) = *request;
            Next::Retry(p, b, why)
        }
        Failed::Lost(why) => {
            report(FailureKind::Lost, true);
            match replay {
                Some(head) => Next::Retry(copy_head(head), RequestBody::empty(), why),
                None => from_backend(StatusCode::BAD_GATEWAY, &why),
            }
        }
        Failed::ClientBody(status, why) => {
            report(FailureKind::ClientGone, true);
            tracing::debug!(upstream = %upstream.name, "client body failed: {why}");
            Next::Answer(Answer::proxy(status, &why))
        }
        Failed::TimedOut(kind, why) => {
            report(kind, true);
            from_backend(StatusCode::GATEWAY_TIMEOUT, &why)
        }
        Failed::TooLarge(why) => {
            report(FailureKind::TooLarge, true);
            from_backend(StatusCode::BAD_GATEWAY, &why)
        }
    }
}

/// The kind of a failed connection attempt.
fn connect_kind(e: &ConnectError) -> FailureKind {
    match e {
        ConnectError::Timeout { .. } => FailureKind::ConnectTimeout,
        ConnectError::Busy { .. } => FailureKind::Busy,
        ConnectError::Io { .. } | ConnectError::Handshake { .. } => FailureKind::Connect,
    }
}

/// The HTTP/2 form of an HTTP/1.1 head: `Host` into an absolute target
/// (the `:authority`), hop-by-hop framing out. [`h1_head`] undoes it, for
/// a request handed back unsent to go to an HTTP/1.1 backend.
fn h2_head(parts: &mut Parts, backend: &Backend) -> Result<(), String> {
    let authority = parts
        .headers
        .remove(HOST)
        .and_then(|h| h.to_str().ok().map(str::to_string))
        .unwrap_or_else(|| backend.address.clone());
    let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    parts.uri = Uri::try_from(format!("http://{authority}{pq}"))
        .map_err(|e| format!("bad request target: {e}"))?;
    parts.headers.remove(http::header::TRANSFER_ENCODING);
    parts.version = Version::HTTP_2;
    Ok(())
}

fn h1_head(parts: &mut Parts, had_te: bool) {
    if parts.version != Version::HTTP_2 {
        return;
    }
    if let Some(a) = parts.uri.authority()
        && let Ok(host) = HeaderValue::from_str(a.as_str())
    {
        parts.headers.insert(HOST, host);
    }
    parts.uri = parts
        .uri
        .path_and_query()
        .map(|pq| Uri::from(pq.clone()))
        .unwrap_or_else(|| Uri::from_static("/"));
    if had_te {
        parts.headers.insert(
            http::header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
    parts.version = Version::HTTP_11;
}

/// Sends the request to one backend: on its shared HTTP/2 connection, or
/// on a pooled HTTP/1.1 one if one is idle. A pooled connection that turns
/// out closed is replaced by a fresh one; a fresh one that fails hands the
/// request back for another backend.
async fn attempt(
    upstream: &Upstream,
    backend: &Backend,
    mut parts: Parts,
    mut body: RequestBody,
) -> Result<Answered, Failed> {
    let cfg = &upstream.config;
    // In flight from now, while a connection is found or made: a policy
    // deciding meanwhile must see this request (a burst of decisions
    // during a connect would otherwise all pick the same "idle" backend).
    let in_flight = backend.stats.start();
    if !parts.headers.contains_key(HOST)
        && let Ok(h) = HeaderValue::from_str(&backend.address)
    {
        // An HTTP/1.0 client may name no host; HTTP/1.1 needs one.
        parts.headers.insert(HOST, h);
    }
    let had_te = backend.h2 && parts.headers.contains_key(http::header::TRANSFER_ENCODING);
    let (mut sender, mut fresh) = if backend.h2 {
        match backend.pool.h2(cfg.connect_timeout).await {
            Ok(s) => {
                if let Err(e) = h2_head(&mut parts, backend) {
                    return Err(Failed::ClientBody(StatusCode::BAD_REQUEST, e));
                }
                (Sender::H2(s), true)
            }
            Err(e) => {
                return Err(Failed::NotSent(
                    Box::new((parts, body)),
                    connect_kind(&e),
                    e.to_string(),
                ));
            }
        }
    } else {
        match backend.pool.h1(cfg.connect_timeout).await {
            Ok((s, fresh)) => (Sender::H1(s), fresh),
            Err(e) => {
                return Err(Failed::NotSent(
                    Box::new((parts, body)),
                    connect_kind(&e),
                    e.to_string(),
                ));
            }
        }
    };
    let watch = body.watch();
    let sent_at = Instant::now();
    let mut req = Request::from_parts(parts, body);
    loop {
        match send(&mut sender, req, cfg, watch.as_deref()).await {
            Sent::Response(resp) => {
                return Ok(Answered {
                    resp,
                    sender,
                    in_flight,
                    sent_at,
                    took: sent_at.elapsed(),
                });
            }
            Sent::TimedOut(kind, why) => {
                return Err(Failed::TimedOut(
                    kind,
                    format!("backend {}: {why}", backend.name),
                ));
            }
            Sent::Failed(mut e) => match e.take_message() {
                Some(unsent) if !fresh => {
                    // The pooled connection was closed under us; the
                    // request is intact, so dial a fresh one.
                    match backend.pool.fresh(cfg.connect_timeout).await {
                        Ok(s) => {
                            sender = Sender::H1(s);
                            fresh = true;
                            req = unsent;
                        }
                        Err(ce) => {
                            let (p, b) = unsent.into_parts();
                            return Err(Failed::NotSent(
                                Box::new((p, b)),
                                connect_kind(&ce),
                                ce.to_string(),
                            ));
                        }
                    }
                }
                Some(unsent) => {
                    let (mut p, b) = unsent.into_parts();
                    h1_head(&mut p, had_te);
                    return Err(Failed::NotSent(
                        Box::new((p, b)),
                        FailureKind::Connect,
                        e.into_error().to_string(),
                    ));
                }
                None => return Err(failed(e.into_error(), backend)),
            },
        }
    }
}

/// What a send ended with.
enum Sent {
    Response(Response<Incoming>),
    Failed(hyper::client::conn::TrySendError<Request<RequestBody>>),
    TimedOut(FailureKind, String),
}

/// Sends `req` and waits for the response headers: `response-timeout`
/// from the end of the upload, `read-timeout` while the backend does not
/// read the body.
async fn send(
    sender: &mut Sender,
    req: Request<RequestBody>,
    cfg: &crate::config::UpstreamConfig,
    watch: Option<&UploadWatch>,
) -> Sent {
    let response_timeout = cfg.response_timeout;
    let Some(watch) = watch else {
        return match tokio::time::timeout(response_timeout, sender.send(req)).await {
            Ok(Ok(r)) => Sent::Response(r),
            Ok(Err(e)) => Sent::Failed(e),
            Err(_) => Sent::TimedOut(
                FailureKind::ResponseTimeout,
                format!("did not answer within {response_timeout:?}"),
            ),
        };
    };
    let sending = sender.send(req);
    tokio::pin!(sending);
    loop {
        let (due, verdict) = match watch.state() {
            Upload::Sent(at) => (
                at + response_timeout,
                Some((
                    FailureKind::ResponseTimeout,
                    format!("did not answer within {response_timeout:?} of the request body"),
                )),
            ),
            Upload::BackendReading(at) => (
                at + cfg.read_timeout,
                Some((
                    FailureKind::ReadTimeout,
                    format!(
                        "stopped reading the request body for {:?}",
                        cfg.read_timeout
                    ),
                )),
            ),
            // The client's own timeout bounds this; look again later.
            Upload::Sending => (Instant::now() + cfg.read_timeout, None),
        };
        if let Some((kind, why)) = verdict
            && Instant::now() >= due
        {
            return Sent::TimedOut(kind, why);
        }
        tokio::select! {
            r = &mut sending => return match r {
                Ok(r) => Sent::Response(r),
                Err(e) => Sent::Failed(e),
            },
            _ = watch.done.notified() => {}
            _ = tokio::time::sleep_until(due.into()) => {}
        }
    }
}

/// Names a failure that left no request to retry.
fn failed(e: hyper::Error, backend: &Backend) -> Failed {
    if e.is_parse_too_large() {
        return Failed::TooLarge(format!(
            "backend {} sent a response head over the proxy's limits",
            backend.name
        ));
    }
    let body_error =
        std::error::Error::source(&e).and_then(|s| s.downcast_ref::<RequestBodyError>());
    if e.is_user() && body_error.is_some() {
        return match body_error {
            Some(RequestBodyError::Timeout(t)) => Failed::ClientBody(
                StatusCode::REQUEST_TIMEOUT,
                format!("the client sent no body data for {t:?}"),
            ),
            Some(RequestBodyError::TooLarge(limit)) => Failed::ClientBody(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is over this route's limit of {limit} bytes"),
            ),
            _ => Failed::ClientBody(
                StatusCode::BAD_REQUEST,
                "the request body could not be read".into(),
            ),
        };
    }
    Failed::Lost(format!(
        "backend {} failed before answering: {e}",
        backend.name
    ))
}
