//! The request path: route, ask the policy, forward, stream the answer back.
//!
//! 1. The router picks the upstream group from host and path (`404` if none).
//! 2. Hop-by-hop headers go, `X-Forwarded-*` are set, the URI becomes
//!    origin-form.
//! 3. The group's policy chooses a backend (its failures go to the native
//!    fallback, never to the client).
//! 4. The request goes out on a pooled keep-alive connection, or a new one.
//!    A backend that cannot be connected to is marked failed and the policy
//!    is asked again without it; only when every backend has failed does the
//!    client get `502`. A backend that does not answer in `response-timeout`
//!    gives `504`.
//! 5. The response streams back with the policy's `Set-Cookie`, and the
//!    connection returns to the pool once its body has been read.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{CONNECTION, CONTENT_TYPE, EXPECT, HOST, SET_COOKIE};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use smallvec::SmallVec;

use crate::body::{Completion, ProxyBody, RequestBody};
use crate::headers::{client_ip, is_trusted, remove_hop_by_hop, set_forwarded};
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
    /// The backend answered.
    Answered(Response<Incoming>, Sender, InFlight),
    /// The request never left: try another backend with it.
    NotSent(http::request::Parts, RequestBody, String),
    /// The request was sent and failed: answer the client with this.
    Failed(StatusCode, String),
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
        peer: SocketAddr,
        https: bool,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let runtime = self.runtime.load_full();
        let (mut parts, body) = req.into_parts();
        let Some(index) = runtime.router.find(request_host(&parts), parts.uri.path()) else {
            self.unrouted.count(StatusCode::NOT_FOUND);
            return Ok(error_response(
                StatusCode::NOT_FOUND,
                "no route for this host and path",
            ));
        };
        let upstream = &runtime.upstreams[index];
        let trusted = &runtime.config.trusted_proxies;
        prepare(&mut parts, peer, trusted, https);
        let view = RequestView {
            client_ip: client_ip(&parts.headers, peer.ip(), trusted),
            parts,
            https,
        };
        let (resp, backend) = forward(upstream, view, RequestBody::Client(body)).await;
        match backend {
            Some(i) => upstream.backends[i].metrics.responses.count(resp.status()),
            None => upstream.metrics.unanswered.count(resp.status()),
        }
        Ok(resp)
    }
}

/// Makes the client's request head fit to go to a backend: `Host` set,
/// hop-by-hop headers out, `X-Forwarded-*` in, origin-form URI, HTTP/1.1.
fn prepare(
    parts: &mut http::request::Parts,
    peer: SocketAddr,
    trusted: &[ipnet::IpNet],
    https: bool,
) {
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
    set_forwarded(
        &mut parts.headers,
        peer.ip(),
        is_trusted(trusted, peer.ip()),
        https,
    );
    if parts.uri.authority().is_some() {
        parts.uri = parts
            .uri
            .path_and_query()
            .map(|pq| Uri::from(pq.clone()))
            .unwrap_or_else(|| Uri::from_static("/"));
    }
    parts.version = Version::HTTP_11;
}

/// Asks the policy and sends the request, failing over past backends that
/// cannot be connected to. Returns the response and, if a backend gave it,
/// which.
async fn forward(
    upstream: &Upstream,
    mut view: RequestView,
    mut body: RequestBody,
) -> (Response<ProxyBody>, Option<usize>) {
    // One policy generation for the whole request, even across a hot swap.
    let policy = upstream.policy();
    let mut tried: SmallVec<[usize; 4]> = SmallVec::new();
    let mut last_error = String::new();
    while let Some(choice) = upstream.choose(&**policy, &mut view, &tried) {
        let backend = &upstream.backends[choice.backend];
        match attempt(upstream, backend, view.parts, body).await {
            Attempt::Answered(resp, sender, in_flight) => {
                let resp = respond(resp, sender, in_flight, backend, choice.set_cookie);
                return (resp, Some(choice.backend));
            }
            Attempt::NotSent(p, b, why) => {
                if backend.stats.record_failure(
                    now_ns(),
                    upstream.config.max_fails,
                    upstream.config.fail_timeout,
                ) {
                    tracing::warn!(upstream = %upstream.name, backend = %backend.name, "backend marked down: {why}");
                } else {
                    tracing::debug!(upstream = %upstream.name, backend = %backend.name, "backend failed: {why}");
                }
                tried.push(choice.backend);
                view.parts = p;
                body = b;
                last_error = why;
            }
            Attempt::Failed(status, why) => {
                tracing::warn!(upstream = %upstream.name, backend = %backend.name, status = status.as_u16(), "{why}");
                return (error_response(status, &why), Some(choice.backend));
            }
        }
    }
    tracing::warn!(upstream = %upstream.name, "no backend could be reached: {last_error}");
    (
        error_response(StatusCode::BAD_GATEWAY, "no backend could be reached"),
        None,
    )
}

/// Sends the request to one backend, on a pooled connection if one is
/// idle. A pooled connection that turns out closed is replaced by a fresh
/// one; a fresh one that fails hands the request back for another backend.
async fn attempt(
    upstream: &Upstream,
    backend: &Backend,
    parts: http::request::Parts,
    body: RequestBody,
) -> Attempt {
    let cfg = &upstream.config;
    let (mut sender, mut fresh) = match backend.pool.take().await {
        Some(s) => (s, false),
        None => match pool::connect(backend.socket_addr, cfg.connect_timeout).await {
            Ok(s) => (s, true),
            Err(e) => return Attempt::NotSent(parts, body, e.to_string()),
        },
    };
    let in_flight = backend.stats.start();
    let started = Instant::now();
    let mut req = Request::from_parts(parts, body);
    loop {
        let sent = tokio::time::timeout(cfg.response_timeout, sender.try_send_request(req)).await;
        match sent {
            Ok(Ok(resp)) => {
                backend.stats.record_success(started.elapsed());
                return Attempt::Answered(resp, sender, in_flight);
            }
            Err(_) => {
                backend
                    .stats
                    .record_failure(now_ns(), cfg.max_fails, cfg.fail_timeout);
                return Attempt::Failed(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "backend {} did not answer within {:?}",
                        backend.name, cfg.response_timeout
                    ),
                );
            }
            Ok(Err(mut e)) => match e.take_message() {
                Some(unsent) if !fresh => {
                    // The pooled connection was closed under us; the
                    // request is intact, so dial a fresh one.
                    match pool::connect(backend.socket_addr, cfg.connect_timeout).await {
                        Ok(s) => {
                            sender = s;
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
                    backend
                        .stats
                        .record_failure(now_ns(), cfg.max_fails, cfg.fail_timeout);
                    return Attempt::Failed(
                        StatusCode::BAD_GATEWAY,
                        format!("backend {} failed: {}", backend.name, e.into_error()),
                    );
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
    let reusable = parts.version == Version::HTTP_11
        && !parts.headers.get_all(CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
        });
    remove_hop_by_hop(&mut parts.headers);
    if let Some(cookie) = set_cookie {
        parts.headers.append(SET_COOKIE, cookie);
    }
    let mut done = Completion {
        in_flight,
        reuse: reusable.then(|| (sender, backend.pool.clone())),
    };
    let done = if body.is_end_stream() {
        done.complete();
        None
    } else {
        Some(done)
    };
    Response::from_parts(parts, ProxyBody::Upstream { body, done })
}
