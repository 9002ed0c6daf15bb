//! The data of a policy instance's store ([`HostState`]) and what the
//! host functions of both contracts share: reading the request being
//! decided, counters, logs, the memory limit. The contract-specific
//! bindings are in [`super::host_v01`] and [`super::host_v02`].

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use http::header::{COOKIE, HOST};
use smallvec::SmallVec;
use wasmtime::component::ResourceTable;

use super::api::{CookieSpec, RequestView};
use super::counter::Counter;
use super::sandbox::DeadlineWatch;
use super::shared::{MAX_COUNTERS, SharedState};

/// The request a call decides, lent to the store by address for the length
/// of that call. A request head is a few hundred bytes: moving it into the
/// store and back cost a quarter of a whole decision.
#[derive(Default)]
pub struct LentRequest(Option<NonNull<RequestView>>);

// SAFETY: the pointer is only set while the thread that lent the request
// is inside a call on this store (see `lend`), and only read from that
// call's host functions, on that thread.
unsafe impl Send for LentRequest {}

/// What a host function sees outside a call (never, in practice).
static NO_REQUEST: LazyLock<RequestView> = LazyLock::new(RequestView::placeholder);

impl LentRequest {
    /// Lends `req` until [`LentRequest::end`].
    ///
    /// # Safety
    ///
    /// `req` must stay alive and unchanged until `end` is called, which
    /// the caller must do before it uses `req` again (also when the call
    /// panics).
    pub unsafe fn lend(&mut self, req: &RequestView) {
        self.0 = Some(NonNull::from(req));
    }

    /// Ends the loan.
    pub fn end(&mut self) {
        self.0 = None;
    }

    /// The lent request, or an empty one between calls.
    pub fn get(&self) -> &RequestView {
        match self.0 {
            // SAFETY: `lend`'s caller keeps the request alive and unchanged
            // until `end`.
            Some(p) => unsafe { p.as_ref() },
            None => &NO_REQUEST,
        }
    }
}

/// The data of one policy instance's store.
pub struct HostState {
    /// The request being decided, lent for the length of one call.
    pub request: LentRequest,
    /// Counter handles the instance opened.
    pub table: ResourceTable,
    /// The upstream group's shared counters and key-value store.
    pub shared: Arc<SharedState>,
    /// `upstream/policy`, for log lines.
    pub label: Arc<str>,
    /// Most linear memory (bytes) the instance may have.
    pub memory_cap: u64,
    /// Set when the instance tried to grow past `memory_cap`.
    pub memory_exceeded: bool,
    /// Deadline bookkeeping for the call in progress.
    pub deadline: DeadlineWatch,
    /// WASI state, created on first use by a policy that imports WASI.
    pub wasi: Option<wasmtime_wasi::WasiCtx>,
    /// Counter handles open in `table`.
    pub counters_open: usize,
    /// The policy's log lines, rate-limited.
    pub logs: Arc<LogLimiter>,
    /// What 0.2's plain-function imports work on.
    pub v02: V02State,
}

/// A 0.2 instance's host-side state.
#[derive(Default)]
pub struct V02State {
    /// Counters by handle (the index); names to find one opened twice.
    pub counters: Vec<(Arc<str>, Counter)>,
    /// What the `select` in progress added to its answer.
    pub effects: Effects,
    /// A `select` is in progress (the `decision` imports count).
    pub in_select: bool,
    /// `configure` is in progress (`watch-response-header` counts).
    pub configuring: bool,
    /// Response headers asked for in `configure`.
    pub watch: Vec<String>,
    /// `configure` called `ignore-outcomes`.
    pub ignores_outcomes: bool,
    /// The backends' load for the `select` in progress: (in-flight, EWMA µs).
    pub loads: SmallVec<[(u32, u32); 8]>,
    /// The proxy's zone.
    pub zone: Option<Arc<str>>,
}

/// What a 0.2 decision adds to its answer through `decision` imports.
#[derive(Debug, Default)]
pub struct Effects {
    /// `set-response-cookie`.
    pub cookie: Option<Box<CookieSpec>>,
    /// `fallbacks`, at most [`MAX_FALLBACKS`].
    pub fallbacks: SmallVec<[u32; 4]>,
    /// `reason`, at most [`MAX_REASON`] bytes.
    pub reason: Option<String>,
}

/// Fallbacks a decision may rank.
pub const MAX_FALLBACKS: usize = 16;
/// Bytes of a decision's reason kept.
pub const MAX_REASON: usize = 128;
/// Response headers a policy may watch.
pub const MAX_WATCHED: usize = 16;

impl HostState {
    /// A fresh state for a new instance.
    pub fn new(
        shared: Arc<SharedState>,
        label: Arc<str>,
        memory_cap: u64,
        logs: Arc<LogLimiter>,
    ) -> Self {
        HostState {
            counters_open: 0,
            logs,
            request: LentRequest::default(),
            table: ResourceTable::new(),
            shared,
            label,
            memory_cap,
            memory_exceeded: false,
            deadline: DeadlineWatch::default(),
            wasi: None,
            v02: V02State::default(),
        }
    }

    /// Opens the group's counter `name` for this instance, within the
    /// limits on handles and distinct counters.
    pub fn open_counter(&mut self, name: &str) -> wasmtime::Result<Counter> {
        if self.counters_open >= MAX_COUNTER_HANDLES {
            wasmtime::bail!(
                "policy holds {MAX_COUNTER_HANDLES} counter handles open; open counters once (in configure) and keep them"
            );
        }
        let Some(counter) = self.shared.counter(name) else {
            wasmtime::bail!("policy opened more than {MAX_COUNTERS} distinct counters");
        };
        self.counters_open += 1;
        Ok(counter)
    }

    /// The request's method.
    pub fn req_method(&self) -> String {
        self.request.get().parts.method.as_str().to_string()
    }

    /// The request's path.
    pub fn req_path(&self) -> String {
        self.request.get().parts.uri.path().to_string()
    }

    /// The request's query string.
    pub fn req_query(&self) -> Option<String> {
        self.request.get().parts.uri.query().map(str::to_string)
    }

    /// The host the request names, without port.
    pub fn req_host(&self) -> Option<String> {
        request_host(&self.request.get().parts).map(str::to_string)
    }

    /// `http` or `https`.
    pub fn req_scheme(&self) -> String {
        if self.request.get().https {
            "https"
        } else {
            "http"
        }
        .to_string()
    }

    /// The client's address.
    pub fn req_client_ip(&self) -> String {
        self.request.get().client_ip.to_string()
    }

    /// A request header's values joined with `, `.
    pub fn req_header(&self, name: &str) -> Option<String> {
        joined(&self.request.get().parts.headers, name)
    }

    /// A request cookie.
    pub fn req_cookie(&self, name: &str) -> Option<String> {
        find_cookie(&self.request.get().parts.headers, name).map(str::to_string)
    }

    /// Writes a policy's log line, if the rate limit lets it through.
    pub fn log_line(&self, level: tracing::Level, message: &str) {
        let Some(dropped) = self.logs.admit() else {
            return;
        };
        let policy = &*self.label;
        if dropped > 0 {
            tracing::warn!(target: "switchyard::policy", policy, "{dropped} log lines dropped (over {LOG_PER_SECOND} a second)");
        }
        match level {
            tracing::Level::DEBUG | tracing::Level::TRACE => {
                tracing::debug!(target: "switchyard::policy", policy, "{message}")
            }
            tracing::Level::INFO => {
                tracing::info!(target: "switchyard::policy", policy, "{message}")
            }
            tracing::Level::WARN => {
                tracing::warn!(target: "switchyard::policy", policy, "{message}")
            }
            tracing::Level::ERROR => {
                tracing::error!(target: "switchyard::policy", policy, "{message}")
            }
        }
    }
}

/// The values of header `name` in `headers`, joined with `, ` (RFC 9110);
/// none if absent or a value is not valid UTF-8.
pub fn joined(headers: &http::HeaderMap, name: &str) -> Option<String> {
    let name = http::HeaderName::from_bytes(name.as_bytes()).ok()?;
    let mut values = headers.get_all(name).iter();
    let mut out = values.next()?.to_str().ok()?.to_string();
    for v in values {
        out.push_str(", ");
        out.push_str(v.to_str().ok()?);
    }
    Some(out)
}

/// Tables a policy may grow to (function references); generous, bounded.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Counter handles one instance may hold open at once: the host keeps each
/// in a table outside `policy-memory`, so a guest opening one per request
/// would grow the proxy without bound.
pub const MAX_COUNTER_HANDLES: usize = 1024;

/// Log lines a policy may write in a burst, and per second after that.
const LOG_BURST: f64 = 50.0;
const LOG_PER_SECOND: f64 = 20.0;

/// [`LogLimiter`] rate-limits one policy's log lines (host `log` calls and
/// WASI stdout/stderr alike), shared by its instances; what it drops is
/// counted and said in the next line that passes.
#[derive(Debug)]
pub struct LogLimiter {
    label: Arc<str>,
    state: Mutex<(f64, Instant, u64)>,
}

impl LogLimiter {
    /// A full bucket for the policy `label`.
    pub fn new(label: Arc<str>) -> LogLimiter {
        LogLimiter {
            label,
            state: Mutex::new((LOG_BURST, Instant::now(), 0)),
        }
    }

    /// The policy's label, for its log lines.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Whether a line may be written now; `Some(n)` when it may and `n`
    /// lines were dropped before it.
    pub fn admit(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (tokens, last, dropped) = &mut *s;
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * LOG_PER_SECOND).min(LOG_BURST);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Some(std::mem::take(dropped))
        } else {
            *dropped += 1;
            None
        }
    }
}

impl wasmtime::ResourceLimiter for HostState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.memory_cap {
            self.memory_exceeded = true;
            wasmtime::bail!(
                "the policy tried to grow its memory to {desired} bytes; its limit (policy-memory) is {} bytes",
                self.memory_cap
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// The proxy's start, the zero of `now-ns`.
static EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

/// The simulated time, in a process that `switchyard simulate` switched
/// to a virtual clock ([`use_virtual_clock`]); unset in the proxy.
static VIRTUAL_NS: std::sync::OnceLock<AtomicU64> = std::sync::OnceLock::new();

/// Nanoseconds since the proxy started (monotonic), or the simulated time
/// once [`use_virtual_clock`] was called.
pub fn monotonic_ns() -> u64 {
    match VIRTUAL_NS.get() {
        Some(t) => t.load(Ordering::Relaxed),
        None => EPOCH.elapsed().as_nanos() as u64,
    }
}

/// Switches this process's monotonic clock, the one policies see as
/// `now-ns` and the upstreams use for health, to a virtual one that only
/// [`set_virtual_ns`] moves. For the simulator; there is no way back.
pub fn use_virtual_clock(start_ns: u64) {
    VIRTUAL_NS
        .get_or_init(|| AtomicU64::new(start_ns))
        .store(start_ns, Ordering::Relaxed);
}

/// Moves the virtual clock (no effect before [`use_virtual_clock`]).
pub fn set_virtual_ns(ns: u64) {
    if let Some(t) = VIRTUAL_NS.get() {
        t.store(ns, Ordering::Relaxed);
    }
}

/// The host the request names: `Host` header, else the URI authority; no
/// port, lower case as sent.
pub fn request_host(parts: &http::request::Parts) -> Option<&str> {
    let raw = parts
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))?;
    Some(strip_port(raw))
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn find_cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| {
            let v = v.trim();
            v.strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(cookies: &[&str]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for c in cookies {
            h.append(COOKIE, c.parse().unwrap());
        }
        h
    }

    #[test]
    fn cookies_are_found_across_headers_and_pairs() {
        let h = headers(&["a=1; sy-backend=abc", "b=\"quoted\""]);
        assert_eq!(find_cookie(&h, "sy-backend"), Some("abc"));
        assert_eq!(find_cookie(&h, "b"), Some("quoted"));
        assert_eq!(find_cookie(&h, "sy"), None);
    }

    #[test]
    fn the_first_cookie_of_a_repeated_name_wins() {
        let h = headers(&["x=1; x=2"]);
        assert_eq!(find_cookie(&h, "x"), Some("1"));
    }

    #[test]
    fn hosts_lose_their_port() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "::1");
    }
}
