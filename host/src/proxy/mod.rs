//! The request path: route, ask the policy, forward, stream the answer back.
//!
//! 1. The router picks the route and its upstream group (`404` if none); a
//!    body larger than the route's `max-body-size` gets `413`.
//! 2. Hop-by-hop headers go, `X-Forwarded-*` (and optionally `Forwarded`)
//!    are set, the URI becomes origin-form. An `Upgrade` request (WebSocket)
//!    keeps its `Upgrade` header.
//! 3. The group's policy chooses a backend (its failures go to the native
//!    fallback, never to the client).
//! 4. The request goes out on a pooled keep-alive connection, a new one, or
//!    the backend's shared HTTP/2 connection. A backend that cannot be
//!    connected to is marked failed and the policy asked again without it;
//!    an idempotent request whose connection broke before any response byte
//!    is re-sent the same way. Attempts stop at the upstream's `retries` and
//!    `retry-timeout`; then the client gets `502`. A backend that does not
//!    answer within `response-timeout` gives `504` (never retried).
//! 5. The response streams back with the policy's `Set-Cookie`; the
//!    connection returns to the pool once its body has been read. A `101`
//!    turns the two connections into a tunnel until either side closes.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, EXPECT, HOST, SET_COOKIE, UPGRADE};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use smallvec::SmallVec;

use crate::access_log::Entry;
use crate::body::{Completion, ProxyBody, RequestBody};
use crate::headers::{Peer, client_ip, is_trusted, remove_hop_by_hop, set_forwarded, set_rfc7239};
use crate::metrics::ByClass;
use crate::policy::{RequestView, request_host};
use crate::pool::{self, Sender};
use crate::runtime::Runtime;
use crate::upstream::{Backend, InFlight, Upstream, now_ns};

/// [`Proxy`] serves requests from the current [`Runtime`], which a reload
/// may replace at any time; a request keeps the one it started with.
pub struct Proxy {
    runtime: ArcSwap<Runtime>,
    unrouted: ByClass,
}

/// A short plain-text response written by the proxy itself.
pub fn error_response(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let text = format!(
        "{} {}: {message}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut resp = Response::new(ProxyBody::full(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// How one attempt to send the request to a backend ended.
enum Attempt {
    /// The backend answered after `took`.
    Answered {
        resp: Response<Incoming>,
        sender: Sender,
        in_flight: InFlight,
        took: Duration,
    },
    /// The request never left: try another backend with it.
    NotSent(http::request::Parts, RequestBody, String),
    /// The request left but the connection broke before any response.
    Lost(String),
    /// No response within `response-timeout`.
    TimedOut(String),
    /// The client's body failed (or passed its limit) while being sent.
    ClientBody(String),
}

/// What the client gets, and from whom.
struct Outcome {
    resp: Response<ProxyBody>,
    backend: Option<usize>,
    upstream_time: Option<Duration>,
}

impl Outcome {
    fn proxy(status: StatusCode, message: &str) -> Outcome {
        Outcome {
            resp: error_response(status, message),
            backend: None,
            upstream_time: None,
        }
    }
}

/// The parts of a client request the access log needs, taken before the
/// request is rewritten.
struct LogHead {
    time: SystemTime,
    started: Instant,
    method: Method,
    target: String,
    version: Version,
}

impl LogHead {
    fn of(parts: &http::request::Parts) -> LogHead {
        LogHead {
            time: SystemTime::now(),
            started: Instant::now(),
            method: parts.method.clone(),
            target: parts.uri.path_and_query().map_or_else(
                || parts.uri.path().to_string(),
                |pq| pq.as_str().to_string(),
            ),
            version: parts.version,
        }
    }
}

impl Proxy {
    /// A proxy serving `runtime`; requests no route matches are counted
    /// in `unrouted`.
    pub fn new(runtime: Runtime, unrouted: ByClass) -> Arc<Proxy> {
        Arc::new(Proxy {
            runtime: ArcSwap::from_pointee(runtime),
            unrouted,
        })
    }

    /// The runtime new requests use.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Replaces the runtime for new requests; requests in flight finish
    /// with the one they started with.
    pub fn replace_arc(&self, runtime: Arc<Runtime>) {
        self.runtime.store(runtime);
    }

    /// Serves one request from a client at `peer`.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: Peer,
        https: bool,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let runtime = self.runtime.load_full();
        let (mut parts, body) = req.into_parts();
        let log = runtime.access_log.as_ref().map(|_| LogHead::of(&parts));
        let trusted = &runtime.config.trusted_proxies;
        let client = client_ip(&parts.headers, peer.ip(), trusted);

        let Some(route) = runtime.router.find(request_host(&parts), parts.uri.path()) else {
            self.unrouted.count(StatusCode::NOT_FOUND);
            let resp = error_response(StatusCode::NOT_FOUND, "no route for this host and path");
            return Ok(finish(&runtime, log, client, resp, None, None));
        };
        let upstream = &runtime.upstreams[route.upstream];

        let (body, too_large) = match route.max_body_size {
            None => (RequestBody::Client(body), None),
            Some(limit) => {
                let declared = parts
                    .headers
                    .get(CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                if declared.is_some_and(|n| n > limit) {
                    let resp = error_response(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &format!("the request body is over this route's limit of {limit} bytes"),
                    );
                    upstream.metrics.unanswered.count(resp.status());
                    return Ok(finish(&runtime, log, client, resp, None, None));
                }
                let exceeded = Arc::new(AtomicBool::new(false));
                let body = RequestBody::Limited {
                    body,
                    remaining: limit,
                    limit,
                    exceeded: exceeded.clone(),
                };
                (body, Some(exceeded))
            }
        };

        let upgrade = take_upgrade(&mut parts);
        prepare(&mut parts, &peer, &runtime, https);
        if let Some((protocol, _)) = &upgrade {
            parts
                .headers
                .insert(CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(UPGRADE, protocol.clone());
        }
        let view = RequestView {
            parts,
            client_ip: client,
            https,
        };
        let mut out = forward(upstream, view, body, upgrade.map(|u| u.1)).await;
        if too_large.is_some_and(|t| t.load(Ordering::Relaxed)) && out.upstream_time.is_none() {
            out = Outcome::proxy(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is over this route's limit",
            );
        }
        match out.backend {
            Some(i) => upstream.backends[i]
                .metrics
                .responses
                .count(out.resp.status()),
            None => upstream.metrics.unanswered.count(out.resp.status()),
        }
        let backend = out.backend.map(|i| upstream.backends[i].name.clone());
        Ok(finish(
            &runtime,
            log,
            client,
            out.resp,
            backend,
            out.upstream_time,
        ))
    }
}

/// Attaches the access-log line, if logging, to the response.
fn finish(
    runtime: &Runtime,
    head: Option<LogHead>,
    client: std::net::IpAddr,
    resp: Response<ProxyBody>,
    backend: Option<Arc<str>>,
    upstream_time: Option<Duration>,
) -> Response<ProxyBody> {
    let (Some(log), Some(head)) = (&runtime.access_log, head) else {
        return resp;
    };
    let entry = log.start(Entry {
        time: head.time,
        started: head.started,
        client,
        method: head.method,
        target: head.target,
        version: head.version,
        status: resp.status().as_u16(),
        backend,
        upstream_time,
    });
    resp.map(|b| b.logged(Some(entry)))
}

/// An upgrade the client asked for (`Connection: upgrade` + `Upgrade: x`
/// over HTTP/1.1): the protocol and the client side of the future tunnel.
fn take_upgrade(parts: &mut http::request::Parts) -> Option<(HeaderValue, OnUpgrade)> {
    let asks = parts.version == Version::HTTP_11
        && parts.headers.get_all(CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        });
    let protocol = parts.headers.get(UPGRADE).cloned();
    match (asks, protocol) {
        (true, Some(p)) => Some((p, parts.extensions.remove::<OnUpgrade>()?)),
        _ => None,
    }
}

/// Makes the client's request head fit to go to a backend: `Host` set,
/// hop-by-hop headers out, forwarded headers in, origin-form URI, HTTP/1.1.
fn prepare(parts: &mut http::request::Parts, peer: &Peer, rt: &Runtime, https: bool) {
    if !parts.headers.contains_key(HOST)
        && let Some(host) = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        parts.headers.insert(HOST, host);
    }
    remove_hop_by_hop(&mut parts.headers);
    // The client's `Expect: 100-continue` was answered by this proxy.
    parts.headers.remove(EXPECT);
    let trusted = is_trusted(&rt.config.trusted_proxies, peer.ip());
    set_forwarded(&mut parts.headers, peer, trusted, https);
    if rt.config.forwarded {
        set_rfc7239(&mut parts.headers, peer.ip(), trusted, https);
    }
    if parts.uri.authority().is_some() {
        parts.uri = parts
            .uri
            .path_and_query()
            .map(|pq| Uri::from(pq.clone()))
            .unwrap_or_else(|| Uri::from_static("/"));
    }
    parts.version = Version::HTTP_11;
}

/// RFC 9110 §9.2.2: methods whose repetition does no more than one request.
fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A copy of a request head, to send again after a lost attempt.
fn copy_head(parts: &http::request::Parts) -> http::request::Parts {
    let mut copy = Request::new(()).into_parts().0;
    copy.method = parts.method.clone();
    copy.uri = parts.uri.clone();
    copy.version = parts.version;
    copy.headers = parts.headers.clone();
    copy
}

/// Asks the policy and sends the request, failing over as the module docs
/// describe.
async fn forward(
    upstream: &Upstream,
    mut view: RequestView,
    mut body: RequestBody,
    mut client_upgrade: Option<OnUpgrade>,
) -> Outcome {
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
    while let Some(choice) = upstream.choose(&**policy, &mut view, &tried) {
        let backend = &upstream.backends[choice.backend];
        let failed = |why: &str| {
            if backend
                .stats
                .record_failure(now_ns(), cfg.max_fails, cfg.fail_timeout)
            {
                tracing::warn!(upstream = %upstream.name, backend = %backend.name, "backend marked down: {why}");
            } else {
                tracing::debug!(upstream = %upstream.name, backend = %backend.name, "backend failed: {why}");
            }
        };
        match attempt(upstream, backend, view.parts, body).await {
            Attempt::Answered {
                resp,
                sender,
                in_flight,
                took,
            } => {
                let resp = match (resp.status(), client_upgrade.take()) {
                    (StatusCode::SWITCHING_PROTOCOLS, Some(client)) => {
                        tunnel(resp, client, in_flight, backend)
                    }
                    _ => respond(resp, sender, in_flight, backend, choice.set_cookie),
                };
                return Outcome {
                    resp,
                    backend: Some(choice.backend),
                    upstream_time: Some(took),
                };
            }
            Attempt::NotSent(p, b, why) => {
                failed(&why);
                view.parts = p;
                body = b;
                last_error = why;
            }
            Attempt::Lost(why) => {
                failed(&why);
                match &replay {
                    Some(head) => {
                        view.parts = copy_head(head);
                        body = RequestBody::Empty;
                        last_error = why;
                    }
                    None => {
                        tracing::warn!(upstream = %upstream.name, backend = %backend.name, "{why}");
                        return Outcome {
                            resp: error_response(StatusCode::BAD_GATEWAY, &why),
                            backend: Some(choice.backend),
                            upstream_time: None,
                        };
                    }
                }
            }
            Attempt::ClientBody(why) => {
                tracing::debug!(upstream = %upstream.name, "client body failed: {why}");
                return Outcome::proxy(
                    StatusCode::BAD_REQUEST,
                    "the request body could not be read",
                );
            }
            Attempt::TimedOut(why) => {
                failed(&why);
                tracing::warn!(upstream = %upstream.name, backend = %backend.name, "{why}");
                return Outcome {
                    resp: error_response(StatusCode::GATEWAY_TIMEOUT, &why),
                    backend: Some(choice.backend),
                    upstream_time: None,
                };
            }
        }
        tried.push(choice.backend);
        if tried.len() > cfg.retries as usize || Instant::now() >= deadline {
            break;
        }
    }
    tracing::warn!(upstream = %upstream.name, "no backend could be reached: {last_error}");
    Outcome::proxy(StatusCode::BAD_GATEWAY, "no backend could be reached")
}

/// Sends the request to one backend: on its shared HTTP/2 connection, or
/// on a pooled HTTP/1.1 one if one is idle. A pooled connection that turns
/// out closed is replaced by a fresh one; a fresh one that fails hands the
/// request back for another backend.
async fn attempt(
    upstream: &Upstream,
    backend: &Backend,
    mut parts: http::request::Parts,
    body: RequestBody,
) -> Attempt {
    let cfg = &upstream.config;
    let (mut sender, mut fresh) = if backend.h2 {
        match backend
            .pool
            .h2(backend.socket_addr, cfg.connect_timeout)
            .await
        {
            Ok(s) => {
                // HTTP/2 names the host in `:authority`, from an absolute URI.
                let authority = parts
                    .headers
                    .remove(HOST)
                    .and_then(|h| h.to_str().ok().map(str::to_string))
                    .unwrap_or_else(|| backend.address.clone());
                let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
                match Uri::try_from(format!("http://{authority}{pq}")) {
                    Ok(uri) => parts.uri = uri,
                    Err(e) => return Attempt::Lost(format!("bad request target: {e}")),
                }
                parts.version = Version::HTTP_2;
                (Sender::H2(s), true)
            }
            Err(e) => return Attempt::NotSent(parts, body, e.to_string()),
        }
    } else {
        match backend.pool.take().await {
            Some(s) => (Sender::H1(s), false),
            None => match pool::connect(backend.socket_addr, cfg.connect_timeout).await {
                Ok(s) => (Sender::H1(s), true),
                Err(e) => return Attempt::NotSent(parts, body, e.to_string()),
            },
        }
    };
    let in_flight = backend.stats.start();
    let started = Instant::now();
    let mut req = Request::from_parts(parts, body);
    loop {
        let sent = tokio::time::timeout(cfg.response_timeout, sender.send(req)).await;
        match sent {
            Ok(Ok(resp)) => {
                let took = started.elapsed();
                backend.stats.record_success(took);
                return Attempt::Answered {
                    resp,
                    sender,
                    in_flight,
                    took,
                };
            }
            Err(_) => {
                return Attempt::TimedOut(format!(
                    "backend {} did not answer within {:?}",
                    backend.name, cfg.response_timeout
                ));
            }
            Ok(Err(mut e)) => match e.take_message() {
                Some(unsent) if !fresh => {
                    // The pooled connection was closed under us; the
                    // request is intact, so dial a fresh one.
                    match pool::connect(backend.socket_addr, cfg.connect_timeout).await {
                        Ok(s) => {
                            sender = Sender::H1(s);
                            fresh = true;
                            req = unsent;
                        }
                        Err(ce) => {
                            let (p, b) = unsent.into_parts();
                            return Attempt::NotSent(p, b, ce.to_string());
                        }
                    }
                }
                Some(unsent) => {
                    let (p, b) = unsent.into_parts();
                    return Attempt::NotSent(p, b, e.into_error().to_string());
                }
                None => {
                    let e = e.into_error();
                    if e.is_user() {
                        return Attempt::ClientBody(e.to_string());
                    }
                    return Attempt::Lost(format!(
                        "backend {} failed before answering: {e}",
                        backend.name
                    ));
                }
            },
        }
    }
}

/// Turns a backend's response into the client's.
fn respond(
    resp: Response<Incoming>,
    sender: Sender,
    in_flight: InFlight,
    backend: &Backend,
    set_cookie: Option<HeaderValue>,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    let reuse = match sender {
        Sender::H1(s)
            if parts.version == Version::HTTP_11
                && !parts.headers.get_all(CONNECTION).iter().any(|v| {
                    v.to_str()
                        .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
                }) =>
        {
            Some((s, backend.pool.clone()))
        }
        _ => None,
    };
    remove_hop_by_hop(&mut parts.headers);
    if let Some(cookie) = set_cookie {
        parts.headers.append(SET_COOKIE, cookie);
    }
    Response::from_parts(
        parts,
        ProxyBody::upstream(body, Completion { in_flight, reuse }),
    )
}

/// A `101 Switching Protocols`: answer the client with the backend's
/// upgrade headers and join the two connections once both have switched.
/// The backend connection belongs to this tunnel until it closes.
fn tunnel(
    mut resp: Response<Incoming>,
    client: OnUpgrade,
    in_flight: InFlight,
    backend: &Backend,
) -> Response<ProxyBody> {
    let to_backend = hyper::upgrade::on(&mut resp);
    let name = backend.name.clone();
    tokio::spawn(async move {
        let _in_flight = in_flight;
        match tokio::join!(client, to_backend) {
            (Ok(c), Ok(b)) => {
                let (mut c, mut b) = (TokioIo::new(c), TokioIo::new(b));
                if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut b).await {
                    tracing::debug!(backend = %name, "tunnel closed: {e}");
                }
            }
            (Err(e), _) | (_, Err(e)) => tracing::debug!(backend = %name, "upgrade failed: {e}"),
        }
    });
    let (parts, _) = resp.into_parts();
    Response::from_parts(parts, ProxyBody::empty())
}
