//! The request path, in one direction:
//!
//! 1. [`request::check`] refuses a malformed head (400, 405); the
//!    [`router`] picks the upstream group (404 if none); a body over the
//!    route's `max-body-size` gets 413.
//! 2. [`request::rewrite`] makes the head fit for a backend (hop-by-hop
//!    headers out, forwarding headers in, origin-form HTTP/1.1).
//! 3. [`forward`] asks the group for a backend and sends the request,
//!    failing over as allowed; [`response`] turns the answer into the
//!    client's, [`tunnel`] joins upgraded connections.
//! 4. The [`body`] streams back; when it ends the backend connection goes
//!    back to its pool, the attempt's outcome to its group, the line to the
//!    [`access_log`].
//!
//! The request path serves from a [`Runtime`], which a reload may replace
//! at any time; a request keeps the one it started with.

pub mod access_log;
pub mod body;
pub mod client;
mod forward;
pub mod headers;
mod request;
pub mod response;
pub mod router;
mod runtime;
mod tunnel;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use http::header::CONTENT_LENGTH;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;

use crate::policy::{RequestView, request_host};
use crate::upstream::body::RequestBody;
use crate::upstream::counters::ByClass;
use access_log::Entry;
use body::ProxyBody;
use client::ClientConn;
use forward::{Answer, Extras, forward};
use headers::client_ip;
use response::error_response;
pub use runtime::Runtime;

/// [`Proxy`] serves requests from the current [`Runtime`].
pub struct Proxy {
    runtime: ArcSwap<Runtime>,
    unrouted: ByClass,
}

/// The parts of a client request the access log needs, taken before the
/// request is rewritten.
struct LogHead {
    time: SystemTime,
    started: Instant,
    method: Method,
    host: Option<String>,
    target: String,
    version: Version,
}

impl LogHead {
    fn of(parts: &http::request::Parts) -> LogHead {
        LogHead {
            time: SystemTime::now(),
            started: Instant::now(),
            method: parts.method.clone(),
            host: crate::policy::request_host(parts).map(str::to_string),
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

    /// Serves one request that came on `client`.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<RequestBody>,
        client: Arc<ClientConn>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let alive = client.start();
        let runtime = self.runtime.load_full();
        let (mut parts, mut body) = req.into_parts();
        let log = runtime.access_log.as_ref().map(|_| LogHead::of(&parts));
        let trusted = &runtime.config.trusted_proxies;
        let ip = client_ip(&parts.headers, client.peer.ip(), trusted);
        let done = |resp: Response<ProxyBody>, alive, backend, time, send_timeout| {
            let resp = resp.map(|b| b.held(alive, send_timeout));
            finish(&runtime, log, ip, resp, backend, time)
        };

        if let Err((status, why)) = request::check(&mut parts) {
            self.unrouted.count(status);
            return Ok(done(error_response(status, why), alive, None, None, None));
        }
        let Some(route) = runtime.router.find(request_host(&parts), parts.uri.path()) else {
            self.unrouted.count(StatusCode::NOT_FOUND);
            let resp = error_response(StatusCode::NOT_FOUND, "no route for this host and path");
            return Ok(done(resp, alive, None, None, None));
        };
        let upstream = runtime.upstreams[route.upstream].clone();
        if upstream.backends.is_empty() {
            // A group whose DNS names have given no address yet.
            let why = "no backend: the upstream's DNS names have given no address yet";
            let resp = error_response(StatusCode::SERVICE_UNAVAILABLE, why);
            upstream.metrics.unanswered.count(resp.status());
            return Ok(done(resp, alive, None, None, None));
        }
        client.set_send_timeout(upstream.config.send_timeout);
        body.client_timeout(runtime.config.limits.client_body_timeout);
        let too_large = match route.max_body_size {
            None => None,
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
                    return Ok(done(resp, alive, None, None, None));
                }
                Some(body.limit(limit))
            }
        };

        let unsized_body = !body.is_end_stream() && body.size_hint().exact().is_none();
        let upgrade = request::rewrite(&mut parts, &client, &runtime, unsized_body);
        let view = RequestView {
            parts,
            client_ip: ip,
            https: client.https,
            attempt: 1,
        };
        let extras = Extras {
            upgrade: upgrade.map(|u| u.1),
            alive: alive.another(),
        };
        let mut out = forward(&upstream, view, body, extras).await;
        if too_large.is_some_and(|t| t.load(Ordering::Relaxed)) && out.upstream_time.is_none() {
            out = Answer::proxy(
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
        let send_timeout = Some(upstream.config.send_timeout);
        Ok(done(
            out.resp,
            alive,
            backend,
            out.upstream_time,
            send_timeout,
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
        host: head.host,
        target: head.target,
        version: head.version,
        status: resp.status().as_u16(),
        backend,
        upstream_time,
    });
    resp.map(|b| b.logged(Some(entry)))
}
