//! Backend selection: policies compiled to Wasm components, and the native
//! fallback.
//!
//! The Wasm boundary lives only in this module. The rest of the proxy sees
//! the [`Policy`] trait: a request view and the live backend states in, a
//! [`Decision`] out. [`WasmPolicy`] runs a component (one instance per worker
//! thread, no lock on the request path); [`RoundRobin`] is the native
//! fallback used when a policy fails.

mod bindings;
pub mod builtin;
mod engine;
mod host_impl;
mod plugin;
mod sandbox;
pub mod shared;
mod wasi;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

pub use engine::{Compiled, EngineOptions, PolicyEngine};
pub use host_impl::{find_cookie, monotonic_ns, request_host};
pub use plugin::WINDOW;
pub use plugin::{PROBE_INTERVAL, WasmPolicy};
pub use sandbox::TICK;
pub use shared::{SharedState, StateRegistry};

/// What a policy may look at in a request.
///
/// The proxy moves the request head in (no copy) for the duration of the
/// decision and takes it back afterwards.
#[derive(Debug)]
pub struct RequestView {
    /// Method, URI, headers of the client's request.
    pub parts: http::request::Parts,
    /// The client's address (after trusted `X-Forwarded-For`).
    pub client_ip: IpAddr,
    /// Whether the request came in over TLS.
    pub https: bool,
}

impl RequestView {
    /// An empty view, used as a placeholder while the real one is lent out.
    pub fn placeholder() -> RequestView {
        RequestView {
            parts: http::Request::new(()).into_parts().0,
            client_ip: IpAddr::from([0, 0, 0, 0]),
            https: false,
        }
    }
}

/// The live state of one backend, as a policy sees it (see `types.wit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendState {
    /// Usable for this request.
    pub healthy: bool,
    /// Requests in flight to it from this proxy.
    pub in_flight: u32,
    /// EWMA of time to response headers, µs; 0 if unknown.
    pub latency_ewma_us: u32,
}

/// A policy's answer as it gave it; the upstream checks it (index in range
/// and healthy, a valid cookie) before it is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Index of the chosen backend.
    pub backend: u32,
    /// A cookie to set on the response.
    pub set_cookie: Option<CookieSpec>,
}

/// The `SameSite` attribute of a cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    /// `SameSite=Strict`.
    Strict,
    /// `SameSite=Lax`.
    Lax,
    /// `SameSite=None`.
    None,
}

/// A cookie a policy asks the proxy to set (see `types.wit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieSpec {
    /// Name (must be a token).
    pub name: String,
    /// Value (cookie-octets only).
    pub value: String,
    /// `Path`; `/` when none.
    pub path: Option<String>,
    /// `Max-Age` in seconds.
    pub max_age: Option<u64>,
    /// `HttpOnly`.
    pub http_only: bool,
    /// `Secure`.
    pub secure: bool,
    /// `SameSite`.
    pub same_site: Option<SameSite>,
}

/// Why a policy gave no usable decision for a request. Never a failed
/// request: the proxy falls back to round-robin.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PolicyFailure {
    /// The policy trapped (panic, unreachable, out-of-bounds...).
    #[error("trapped: {0}")]
    Trap(String),
    /// The policy ran past its deadline (`policy-timeout`).
    #[error("ran past its deadline")]
    Timeout,
    /// The policy tried to use more memory than `policy-memory`.
    #[error("ran out of memory: {0}")]
    Memory(String),
    /// The policy returned an error result.
    #[error("returned an error: {0}")]
    Error(String),
    /// The decision named a backend index that does not exist.
    #[error("chose backend index {0}, which does not exist")]
    OutOfRange(u32),
    /// The decision named a backend that is not healthy for this request.
    #[error("chose backend index {0}, which is not healthy")]
    UnhealthyChoice(u32),
    /// The decision's `set-cookie` is not a valid cookie.
    #[error("asked for an invalid cookie: {0}")]
    BadCookie(String),
    /// No instance could be created (e.g. `configure` failed on a fresh one).
    #[error("no instance: {0}")]
    Unavailable(String),
    /// Not called: the policy is unhealthy and this request is not a probe.
    #[error("skipped while unhealthy")]
    Skipped,
    /// Not called: this thread has no instance yet and none was ready; one
    /// is being made in the background.
    #[error("no instance ready on this thread yet")]
    Warming,
}

impl PolicyFailure {
    /// A short, stable label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PolicyFailure::Trap(_) => "trap",
            PolicyFailure::Timeout => "timeout",
            PolicyFailure::Memory(_) => "memory",
            PolicyFailure::Error(_) => "error",
            PolicyFailure::OutOfRange(_) => "out_of_range",
            PolicyFailure::UnhealthyChoice(_) => "unhealthy_choice",
            PolicyFailure::BadCookie(_) => "bad_cookie",
            PolicyFailure::Unavailable(_) => "unavailable",
            PolicyFailure::Skipped => "skipped",
            PolicyFailure::Warming => "warming",
        }
    }

    /// Every kind, in a fixed order (for metrics).
    pub const KINDS: [&'static str; 10] = [
        "trap",
        "timeout",
        "memory",
        "error",
        "out_of_range",
        "unhealthy_choice",
        "bad_cookie",
        "unavailable",
        "skipped",
        "warming",
    ];

    /// Index of this failure's kind in [`PolicyFailure::KINDS`].
    pub fn kind_index(&self) -> usize {
        PolicyFailure::KINDS
            .iter()
            .position(|k| *k == self.kind())
            .unwrap_or(0)
    }
}

/// What `/status` shows about a loaded policy.
#[derive(Debug, Clone)]
pub struct PolicyStatus {
    /// Built-in name or file path.
    pub source: String,
    /// Whether it came from a file.
    pub file: bool,
    /// SHA-256 of the component.
    pub digest: String,
    /// Size in bytes.
    pub size: usize,
    /// When this version was put into service.
    pub loaded_at: SystemTime,
    /// False after `max-failures` consecutive failures.
    pub healthy: bool,
    /// Failures since the last success.
    pub consecutive_failures: u32,
}

/// A backend selection policy as the proxy uses it.
pub trait Policy: Send + Sync {
    /// Chooses a backend. `states` has at least one healthy entry. The
    /// caller checks the answer (an index in range and healthy, a valid
    /// cookie) and then calls [`Policy::settle`] on the same thread.
    fn select(
        &self,
        req: &mut RequestView,
        states: &[BackendState],
    ) -> Result<Decision, PolicyFailure>;

    /// The verdict on this thread's last `select`: usable, or why not. A
    /// policy keeps its health from these (a `Skipped` call gets none).
    fn settle(&self, verdict: Result<(), &PolicyFailure>);

    /// The name shown in logs and the admin API.
    fn name(&self) -> &str;

    /// What the admin API shows about it.
    fn status(&self) -> PolicyStatus;
}

/// Native round-robin over healthy backends: the fallback when a policy
/// fails, and a baseline for benchmarks.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicU64,
}

impl RoundRobin {
    /// The index of the next healthy backend, if any.
    pub fn pick(&self, states: &[BackendState]) -> Option<usize> {
        let healthy = states.iter().filter(|s| s.healthy).count() as u64;
        if healthy == 0 {
            return None;
        }
        let k = self.next.fetch_add(1, Ordering::Relaxed) % healthy;
        states
            .iter()
            .enumerate()
            .filter(|(_, s)| s.healthy)
            .nth(k as usize)
            .map(|(i, _)| i)
    }
}

impl Policy for RoundRobin {
    fn select(
        &self,
        _req: &mut RequestView,
        states: &[BackendState],
    ) -> Result<Decision, PolicyFailure> {
        self.pick(states)
            .map(|backend| Decision {
                backend: backend as u32,
                set_cookie: None,
            })
            .ok_or_else(|| PolicyFailure::Error("no healthy backend".into()))
    }

    fn settle(&self, _verdict: Result<(), &PolicyFailure>) {}

    fn name(&self) -> &str {
        "native-round-robin"
    }

    fn status(&self) -> PolicyStatus {
        PolicyStatus {
            source: self.name().to_string(),
            file: false,
            digest: String::new(),
            size: 0,
            loaded_at: std::time::UNIX_EPOCH,
            healthy: true,
            consecutive_failures: 0,
        }
    }
}

/// Why a policy could not be loaded. Shown by `switchyard check` and in the
/// log when a config is refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// `policy = "name"` is not a built-in policy.
    #[error("{name:?} is not a built-in policy (built-in: {}); a policy file needs a path ending in .wasm", builtin::NAMES.join(", "))]
    UnknownBuiltin {
        /// The name given.
        name: String,
    },
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not a WebAssembly binary at all.
    #[error("{0} is not a WebAssembly component (no \\0asm header)")]
    NotWasm(String),
    /// A core module rather than a component.
    #[error(
        "{0} is a core WebAssembly module, not a component; turn it into one with `wasm-tools component new` (or the wit-component crate)"
    )]
    CoreModule(String),
    /// wasmtime refused to compile it.
    #[error("{what} is not a valid WebAssembly component: {reason}")]
    Compile {
        /// The source.
        what: String,
        /// wasmtime's reason.
        reason: String,
    },
    /// It compiled but does not fit the `switchyard:policy` world.
    #[error("{what} does not implement the switchyard:policy@0.1.0 world: {reason}")]
    World {
        /// The source.
        what: String,
        /// What is missing or mismatched.
        reason: String,
    },
    /// It trapped while being instantiated or configured.
    #[error("{what} trapped while loading: {reason}")]
    Trap {
        /// The source.
        what: String,
        /// The trap.
        reason: String,
    },
    /// Its `configure` refused the upstream's `policy-config`.
    #[error("{what} refused its configuration: {reason}")]
    Refused {
        /// The source.
        what: String,
        /// The policy's own message.
        reason: String,
    },
    /// Its dry-run `select` gave no usable decision.
    #[error("{what} failed its dry run: {reason}")]
    DryRun {
        /// The source.
        what: String,
        /// What went wrong.
        reason: String,
    },
}

/// Renders a wasmtime error with its causes on one line.
pub(crate) fn describe(err: &wasmtime::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states(healthy: &[bool]) -> Vec<BackendState> {
        healthy
            .iter()
            .map(|&healthy| BackendState {
                healthy,
                in_flight: 0,
                latency_ewma_us: 0,
            })
            .collect()
    }

    #[test]
    fn native_round_robin_skips_unhealthy_backends() {
        let rr = RoundRobin::default();
        let s = states(&[true, false, true]);
        let picks: Vec<_> = (0..4).map(|_| rr.pick(&s).unwrap()).collect();
        assert_eq!(picks, [0, 2, 0, 2]);
        assert_eq!(rr.pick(&states(&[false, false])), None);
    }
}
