//! The admin API, on its own listener (loopback unless the config says
//! `allow-remote = true`). Requests must name the admin address,
//! `localhost`, `127.0.0.1` or `[::1]` in `Host` and come from no other web
//! origin (so neither a DNS-rebinding page nor a cross-site form can reach
//! it: 403), and carry `Authorization: Bearer TOKEN` when `token-file` is
//! set (401).
//!
//! - `GET /status`: JSON with the config generation and, per upstream, its
//!   policy (source, digest, load time, health, why a change of its file
//!   was refused) and backends (health, in-flight, latency); why the last
//!   reload was refused, if it was;
//! - `POST /reload`: reload the config file now; 200 with the new
//!   generation, or 422 with the reasons it was refused;
//! - `GET /metrics`: Prometheus text format.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use http::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, HOST, ORIGIN, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use super::app::{App, Refusal, Refusals};
use super::runtime::read_token;
use crate::config::AdminConfig;
use crate::edge::bind;
use crate::proxy::body::ProxyBody;
use crate::proxy::response::error_response;
use crate::proxy::{Proxy, Runtime};
use crate::upstream::now_ns;

/// Asks the reloader for a config reload and waits for the outcome.
pub type ReloadRequest = oneshot::Sender<Result<u64, String>>;

/// What the admin API needs.
#[derive(Clone)]
pub struct AdminContext {
    /// The running proxy.
    pub proxy: Arc<Proxy>,
    /// Metrics and the rest.
    pub app: Arc<App>,
    /// Where `POST /reload` goes.
    pub reload: mpsc::UnboundedSender<ReloadRequest>,
}

/// A running admin listener; dropping it stops accepting.
pub struct AdminServer {
    /// The configured address.
    pub addr: SocketAddr,
    token: Arc<ArcSwapOption<String>>,
    _stop: watch::Sender<bool>,
}

impl AdminServer {
    /// Takes a reloaded config's token.
    pub fn update(&self, config: &AdminConfig) {
        self.token.store(token_of(config).map(Arc::new));
    }
}

fn token_of(config: &AdminConfig) -> Option<String> {
    config
        .token_file
        .as_deref()
        .and_then(|f| read_token(f).ok())
}

/// Who may talk to the admin API.
struct Guard {
    /// The port the listener really has (the config may say 0).
    port: u16,
    token: Arc<ArcSwapOption<String>>,
}

impl Guard {
    /// Whether `authority` (a `Host` value, or an `Origin` without its
    /// scheme) names this listener.
    fn ours(&self, authority: &str) -> bool {
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') && (h.starts_with('[') || !h.contains(':')) => {
                (h, Some(p))
            }
            _ => (authority, None),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p == self.port));
        // A DNS-rebinding page names its own domain: an IP literal (as a
        // remote admin listener is reached) or localhost is safe.
        let host_ok =
            host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok();
        port_ok && host_ok
    }

    /// Why `req` may not be served, if it may not.
    fn refuse(&self, req: &Request<Incoming>) -> Option<Response<ProxyBody>> {
        let host = req
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()));
        if let Some(h) = host
            && !self.ours(h)
        {
            return Some(error_response(
                StatusCode::FORBIDDEN,
                "the admin API answers only to its own address or localhost",
            ));
        }
        if let Some(origin) = req.headers().get(ORIGIN) {
            let ok = origin
                .to_str()
                .ok()
                .and_then(|o| o.strip_prefix("http://"))
                .is_some_and(|o| self.ours(o));
            if !ok {
                return Some(error_response(
                    StatusCode::FORBIDDEN,
                    "requests from web pages are not allowed",
                ));
            }
        }
        if let Some(token) = self.token.load_full() {
            let given = req
                .headers()
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            if !given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
                let mut resp = error_response(StatusCode::UNAUTHORIZED, "a bearer token is needed");
                resp.headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return Some(resp);
            }
        }
        None
    }
}

/// Compares two secrets in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Binds the admin address and serves the admin API on it.
pub async fn start(config: &AdminConfig, ctx: AdminContext) -> anyhow::Result<AdminServer> {
    let addr = config.addr;
    let listener = bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!("admin API on http://{local}");
    let token = Arc::new(ArcSwapOption::new(token_of(config).map(Arc::new)));
    let guard = Arc::new(Guard {
        port: local.port(),
        token: token.clone(),
    });
    let (stop_tx, mut stop) = watch::channel(false);
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = stop.changed() => return,
                a = listener.accept() => match a {
                    Ok((s, _)) => s,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, don't spin.
                        tracing::warn!("admin accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let ctx = ctx.clone();
            let guard = guard.clone();
            let service = service_fn(move |req| {
                let ctx = ctx.clone();
                let guard = guard.clone();
                async move {
                    if let Some(refused) = guard.refuse(&req) {
                        return Ok::<_, Infallible>(refused);
                    }
                    Ok::<_, Infallible>(handle(&ctx, req).await)
                }
            });
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(AdminServer {
        addr,
        token,
        _stop: stop_tx,
    })
}

fn with_type(body: String, content_type: &'static str, status: StatusCode) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn json(value: &impl Serialize, status: StatusCode) -> Response<ProxyBody> {
    let body =
        serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    with_type(body + "\n", "application/json", status)
}

async fn handle(ctx: &AdminContext, req: Request<Incoming>) -> Response<ProxyBody> {
    let allowed = match req.uri().path() {
        "/status" | "/metrics" | "/decisions" => Method::GET,
        "/reload" => Method::POST,
        _ => {
            return error_response(
                StatusCode::NOT_FOUND,
                "try /status, /metrics, /decisions or POST /reload",
            );
        }
    };
    if req.method() != allowed {
        let mut resp = error_response(StatusCode::METHOD_NOT_ALLOWED, "wrong method");
        resp.headers_mut().insert(
            ALLOW,
            HeaderValue::from_str(allowed.as_str()).unwrap_or(HeaderValue::from_static("GET")),
        );
        return resp;
    }
    match req.uri().path() {
        "/status" => json(
            &status(&ctx.proxy.runtime(), &ctx.app.refusals()),
            StatusCode::OK,
        ),
        "/decisions" => {
            let (code, body) = super::decisions::decisions(&ctx.proxy.runtime(), req.uri().query());
            json(&body, code)
        }
        "/metrics" => with_type(
            ctx.app
                .metrics
                .render(&ctx.proxy.runtime(), &ctx.app.states),
            "text/plain; version=0.0.4; charset=utf-8",
            StatusCode::OK,
        ),
        _ => {
            let (tx, rx) = oneshot::channel();
            if ctx.reload.send(tx).is_err() {
                return error_response(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
            }
            match rx.await {
                Ok(Ok(generation)) => json(
                    &serde_json::json!({ "generation": generation }),
                    StatusCode::OK,
                ),
                Ok(Err(e)) => json(
                    &serde_json::json!({ "error": e }),
                    StatusCode::UNPROCESSABLE_ENTITY,
                ),
                Err(_) => error_response(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
            }
        }
    }
}

/// The `/status` document.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Config generation: 1 at start, +1 per reload.
    pub generation: u64,
    /// The config file.
    pub config: String,
    /// The upstream groups.
    pub upstreams: Vec<UpstreamStatus>,
    /// Why the last reload was refused (the running config stays), until
    /// one succeeds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reload_refused: Option<RefusalInfo>,
}

/// A refused change in `/status`.
#[derive(Debug, Serialize)]
pub struct RefusalInfo {
    /// When (RFC 3339).
    pub at: String,
    /// Why.
    pub reason: String,
}

impl From<&Refusal> for RefusalInfo {
    fn from(r: &Refusal) -> Self {
        RefusalInfo {
            at: rfc3339(r.at),
            reason: r.reason.clone(),
        }
    }
}

/// One upstream in `/status`.
#[derive(Debug, Serialize)]
pub struct UpstreamStatus {
    /// Its name.
    pub name: String,
    /// Its policy.
    pub policy: PolicyInfo,
    /// Its backends.
    pub backends: Vec<BackendStatus>,
    /// Its shadow policy, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<crate::upstream::shadow::ShadowStatus>,
}

/// A policy in `/status`.
#[derive(Debug, Serialize)]
pub struct PolicyInfo {
    /// Built-in name or file path.
    pub name: String,
    /// The file, for policies loaded from one.
    pub file: Option<String>,
    /// `sha256:` digest of the component.
    pub digest: String,
    /// Component size in bytes.
    pub size: usize,
    /// When this version went into service (RFC 3339).
    pub loaded_at: String,
    /// False after `policy-max-failures` consecutive failures.
    pub healthy: bool,
    /// Failures since its last success.
    pub consecutive_failures: u32,
    /// The contract it targets: `0.1`, `0.2` or `native`.
    pub contract: &'static str,
    /// The optional 0.2 exports it has: `observer`, `membership`.
    pub exports: Vec<&'static str>,
    /// The limits it runs under (absent for the native fallback).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsInfo>,
    /// Why the last change of its file was refused (this one keeps
    /// serving), until one is swapped in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<RefusalInfo>,
}

/// A policy's limits in `/status`, each with where it came from.
#[derive(Debug, Serialize)]
pub struct LimitsInfo {
    /// Linear memory, bytes.
    pub memory_bytes: u64,
    /// Where the memory limit came from (as `switchyard check` says it).
    pub memory_from: &'static str,
    /// Deadline per call, µs.
    pub timeout_us: u64,
    /// Where the deadline came from.
    pub timeout_from: &'static str,
}

/// A backend in `/status`.
#[derive(Debug, Serialize)]
pub struct BackendStatus {
    /// Its name.
    pub name: String,
    /// Its address as configured.
    pub address: String,
    /// Its weight.
    pub weight: u32,
    /// Whether passive health allows it now.
    pub healthy: bool,
    /// Requests in flight to it.
    pub in_flight: u32,
    /// EWMA of time to response headers, µs (0: none yet).
    pub latency_ewma_us: u32,
    /// For a backend found in DNS: what was looked up (`dns` or `srv`
    /// and the name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<String>,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Builds the `/status` document for `runtime`, with the latest refused
/// changes.
pub fn status(runtime: &Runtime, refusals: &Refusals) -> Status {
    let now = now_ns();
    Status {
        generation: runtime.generation,
        config: runtime.config.file.display().to_string(),
        upstreams: runtime
            .upstreams
            .iter()
            .map(|u| {
                let p = u.policy().status();
                UpstreamStatus {
                    name: u.name.clone(),
                    policy: PolicyInfo {
                        file: p.file.then(|| p.source.clone()),
                        name: p.source,
                        digest: format!("sha256:{}", p.digest),
                        size: p.size,
                        loaded_at: rfc3339(p.loaded_at),
                        healthy: p.healthy,
                        consecutive_failures: p.consecutive_failures,
                        contract: p.contract,
                        exports: p.exports.clone(),
                        limits: (p.memory.0 > 0).then(|| LimitsInfo {
                            memory_bytes: p.memory.0,
                            memory_from: p.memory.1.describe(),
                            timeout_us: p.timeout.0.as_micros() as u64,
                            timeout_from: p.timeout.1.describe(),
                        }),
                        refused: refusals.policies.get(&u.name).map(RefusalInfo::from),
                    },
                    backends: u
                        .backends
                        .iter()
                        .zip(&u.config.backends)
                        .map(|(b, c)| BackendStatus {
                            name: b.name.to_string(),
                            address: b.address.clone(),
                            weight: b.weight,
                            healthy: b.stats.healthy(now),
                            in_flight: b.stats.in_flight(),
                            latency_ewma_us: b.stats.latency_ewma_us(),
                            dns: c
                                .dns
                                .as_ref()
                                .map(|d| format!("{} {}", d.query.key(), d.query)),
                        })
                        .collect(),
                    shadow: u.shadow().map(|s| s.status()),
                }
            })
            .collect(),
        reload_refused: refusals.reload.as_ref().map(RefusalInfo::from),
    }
}
