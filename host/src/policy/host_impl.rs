//! The host side of the WIT imports: what a policy's calls to `request`,
//! `counter`, the key-value store, `random-u64`, `now-ns` and `log` do.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::header::{COOKIE, HOST};
use wasmtime::component::{Resource, ResourceTable};

use super::api::RequestView;
use super::bindings::{CounterRes, RequestRes, host, types};
use super::sandbox::DeadlineWatch;
use super::shared::{MAX_COUNTERS, SharedState};

/// The data of one policy instance's store.
pub struct HostState {
    /// The request being decided; a placeholder between calls.
    pub request: RequestView,
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
}

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
            request: RequestView::placeholder(),
            table: ResourceTable::new(),
            shared,
            label,
            memory_cap,
            memory_exceeded: false,
            deadline: DeadlineWatch::default(),
            wasi: None,
        }
    }
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

/// Nanoseconds since the proxy started (monotonic).
pub fn monotonic_ns() -> u64 {
    EPOCH.elapsed().as_nanos() as u64
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

impl types::Host for HostState {}

impl types::HostRequest for HostState {
    fn method(&mut self, _: Resource<RequestRes>) -> wasmtime::Result<String> {
        Ok(self.request.parts.method.as_str().to_string())
    }

    fn path(&mut self, _: Resource<RequestRes>) -> wasmtime::Result<String> {
        Ok(self.request.parts.uri.path().to_string())
    }

    fn query(&mut self, _: Resource<RequestRes>) -> wasmtime::Result<Option<String>> {
        Ok(self.request.parts.uri.query().map(str::to_string))
    }

    fn host(&mut self, _: Resource<RequestRes>) -> wasmtime::Result<Option<String>> {
        Ok(request_host(&self.request.parts).map(str::to_string))
    }

    fn scheme(&mut self, _: Resource<RequestRes>) -> wasmtime::Result<String> {
        Ok(if self.request.https { "https" } else { "http" }.to_string())
    }

    fn client_ip(&mut self, _: Resource<RequestRes>) -> wasmtime::Result<String> {
        Ok(self.request.client_ip.to_string())
    }

    fn header(
        &mut self,
        _: Resource<RequestRes>,
        name: String,
    ) -> wasmtime::Result<Option<String>> {
        let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) else {
            return Ok(None);
        };
        let mut values = self.request.parts.headers.get_all(name).iter();
        let Some(first) = values.next() else {
            return Ok(None);
        };
        let Ok(first) = first.to_str() else {
            return Ok(None);
        };
        let mut out = first.to_string();
        for v in values {
            match v.to_str() {
                Ok(v) => {
                    out.push_str(", ");
                    out.push_str(v);
                }
                Err(_) => return Ok(None),
            }
        }
        Ok(Some(out))
    }

    fn cookie(
        &mut self,
        _: Resource<RequestRes>,
        name: String,
    ) -> wasmtime::Result<Option<String>> {
        Ok(find_cookie(&self.request.parts.headers, &name).map(str::to_string))
    }

    fn drop(&mut self, _: Resource<RequestRes>) -> wasmtime::Result<()> {
        // The request belongs to the proxy; a handle going away frees nothing.
        Ok(())
    }
}

impl host::Host for HostState {
    fn kv_get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self.shared.kv_get(&key))
    }

    fn kv_set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), String>> {
        Ok(self.shared.kv_set(key, value))
    }

    fn kv_delete(&mut self, key: String) -> wasmtime::Result<bool> {
        Ok(self.shared.kv_delete(&key))
    }

    fn random_u64(&mut self) -> wasmtime::Result<u64> {
        Ok(fastrand::u64(..))
    }

    fn now_ns(&mut self) -> wasmtime::Result<u64> {
        Ok(monotonic_ns())
    }

    fn log(&mut self, level: host::LogLevel, message: String) -> wasmtime::Result<()> {
        let Some(dropped) = self.logs.admit() else {
            return Ok(());
        };
        let policy = &*self.label;
        if dropped > 0 {
            tracing::warn!(target: "switchyard::policy", policy, "{dropped} log lines dropped (over {LOG_PER_SECOND} a second)");
        }
        match level {
            host::LogLevel::Debug => {
                tracing::debug!(target: "switchyard::policy", policy, "{message}")
            }
            host::LogLevel::Info => {
                tracing::info!(target: "switchyard::policy", policy, "{message}")
            }
            host::LogLevel::Warn => {
                tracing::warn!(target: "switchyard::policy", policy, "{message}")
            }
            host::LogLevel::Error => {
                tracing::error!(target: "switchyard::policy", policy, "{message}")
            }
        }
        Ok(())
    }
}

impl host::HostCounter for HostState {
    fn new(&mut self, name: String) -> wasmtime::Result<Resource<CounterRes>> {
        if self.counters_open >= MAX_COUNTER_HANDLES {
            wasmtime::bail!(
                "policy holds {MAX_COUNTER_HANDLES} counter handles open; open counters once (in configure) and keep them"
            );
        }
        let Some(counter) = self.shared.counter(&name) else {
            wasmtime::bail!("policy opened more than {MAX_COUNTERS} distinct counters");
        };
        let handle = self.table.push(counter)?;
        self.counters_open += 1;
        Ok(handle)
    }

    fn fetch_add(&mut self, c: Resource<CounterRes>, delta: u64) -> wasmtime::Result<u64> {
        Ok(self.table.get(&c)?.fetch_add(delta, Ordering::Relaxed))
    }

    fn get(&mut self, c: Resource<CounterRes>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&c)?.load(Ordering::Relaxed))
    }

    fn set(&mut self, c: Resource<CounterRes>, value: u64) -> wasmtime::Result<()> {
        self.table.get(&c)?.store(value, Ordering::Relaxed);
        Ok(())
    }

    fn drop(&mut self, c: Resource<CounterRes>) -> wasmtime::Result<()> {
        self.table.delete(c)?;
        self.counters_open = self.counters_open.saturating_sub(1);
        Ok(())
    }
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
