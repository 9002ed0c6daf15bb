//! The host side of the policy contract, whatever runs the policy: what
//! the proxy lends a policy ([`RequestView`], [`BackendState`]), what it
//! gets back ([`Decision`]), how a call can fail ([`PolicyFailure`]), the
//! [`Policy`] trait the upstream calls, and why a policy may not load
//! ([`LoadError`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use smallvec::SmallVec;

use super::builtin;

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
    /// Which attempt is being decided: 1 for the first, 2 for a retry...
    pub attempt: u32,
}

impl RequestView {
    /// An empty view, used as a placeholder while the real one is lent out.
    pub fn placeholder() -> RequestView {
        RequestView {
            parts: http::Request::new(()).into_parts().0,
            client_ip: IpAddr::from([0, 0, 0, 0]),
            https: false,
            attempt: 0,
        }
    }
}

/// The live state of one backend, as a policy sees it (see `types.wit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BackendState {
    /// Usable for this request.
    pub healthy: bool,
    /// Requests in flight to it from this proxy.
    pub in_flight: u32,
    /// EWMA of time to response headers, µs; 0 if unknown.
    pub latency_ewma_us: u32,
    /// When it last became usable (monotonic ns); 0 when it is not.
    pub healthy_since_ns: u64,
    /// Failed attempts since its last success.
    pub consecutive_failures: u32,
}

/// A policy's answer as it gave it; the upstream checks it (index in range
/// and healthy, a valid cookie) before it is used.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    /// Index of the chosen backend.
    pub backend: u32,
    /// A cookie to set on the response (boxed: rare, and a small decision
    /// is cheaper to pass back).
    pub set_cookie: Option<Box<CookieSpec>>,
    /// More backends, best first, to try before asking again (0.2).
    pub fallbacks: SmallVec<[u32; 4]>,
    /// Why, in a few words, for traces and debug logs (0.2).
    pub reason: Option<String>,
}

impl Decision {
    /// Just a backend.
    pub fn to(backend: u32) -> Decision {
        Decision {
            backend,
            ..Decision::default()
        }
    }
}

/// Why an attempt did not end in a complete response, as a policy is told
/// (`types.failure` in the 0.2 contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptFailure {
    /// No connection.
    ConnectFailed,
    /// No connection in time.
    ConnectTimeout,
    /// The connection broke before the response headers.
    ConnectionLost,
    /// No response headers in time.
    ResponseTimeout,
    /// The backend stopped sending or reading.
    ReadTimeout,
    /// The response body broke off.
    BodyBroken,
    /// The backend broke the protocol.
    Protocol,
    /// Every connection slot was in use (the proxy's limit).
    Busy,
    /// The response head was over the proxy's limits.
    TooLarge,
    /// The client went away.
    ClientGone,
}

/// What happened to one attempt, as delivered to a policy that observes.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The backend, by name (indices may change with membership).
    pub backend: Arc<str>,
    /// 1 for a request's first attempt.
    pub attempt: u32,
    /// The response status, if one came.
    pub status: Option<u16>,
    /// Why there was no (complete) response.
    pub failure: Option<AttemptFailure>,
    /// Time to the response headers, µs.
    pub headers_us: Option<u64>,
    /// Time to the end of the body, µs.
    pub body_us: Option<u64>,
    /// When the attempt ended (monotonic ns).
    pub ended_ns: u64,
    /// Values of the response headers the policy watches, in its order.
    pub headers: Vec<Option<String>>,
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
    /// `Domain`; left out when none.
    pub domain: Option<String>,
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
    /// Not called: the instance could not take a membership update (its
    /// `update` said why) and is being replaced.
    #[error("the instance refused a membership update: {0}")]
    Stale(String),
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
            PolicyFailure::Stale(_) => "stale",
        }
    }

    /// Every kind, in a fixed order (for metrics).
    pub const KINDS: [&'static str; 11] = [
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
        "stale",
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
    /// The memory limit in force, and where it came from.
    pub memory: (u64, super::limits::Source),
    /// The time limit in force, and where it came from.
    pub timeout: (std::time::Duration, super::limits::Source),
    /// The contract it targets (`"0.1"`, `"0.2"`, `"native"`).
    pub contract: &'static str,
    /// The optional 0.2 exports it has (`observer`, `membership`).
    pub exports: Vec<&'static str>,
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

    /// Whether it wants outcomes ([`Policy::observe`]); when not, none is
    /// built.
    fn observes(&self) -> bool {
        false
    }

    /// Takes the outcome of an attempt, for a policy that observes them.
    /// Called on the response path: it must only queue.
    fn observe(&self, _outcome: Observed) {}

    /// The response headers whose values [`Observed::headers`] should
    /// carry (lower case), for a policy that observes.
    fn watched_headers(&self) -> &[http::HeaderName] {
        &[]
    }

    /// Which contract the policy targets (`"0.1"`, `"0.2"`), or
    /// `"native"`.
    fn contract(&self) -> &'static str;

    /// The same policy, its instances and what they learned, for
    /// `upstream`: the same group with other backends (a reload). `None`
    /// when it cannot be handed new backends (see `membership.wit`): load
    /// it anew.
    fn update_to(
        &self,
        _upstream: &crate::config::UpstreamConfig,
        _states: &[BackendState],
    ) -> Option<Result<Box<dyn Policy>, LoadError>> {
        None
    }

    /// The same component and configuration with fresh instances for
    /// `upstream` (the same group with other backends, which its running
    /// instances could not take), on the same shared state. `None` when it
    /// is not a component: build it as the config says.
    fn reloaded(
        &self,
        _upstream: &crate::config::UpstreamConfig,
        _states: &[BackendState],
    ) -> Option<Result<Box<dyn Policy>, LoadError>> {
        None
    }

    /// The name shown in logs and the admin API.
    fn name(&self) -> &str;

    /// What the admin API shows about it.
    fn status(&self) -> PolicyStatus;
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
    /// Its component is not the one the config pins (`sha256 = ...`).
    #[error("{what} has sha256:{actual}, but the config pins sha256:{pinned}; refused")]
    Digest {
        /// The source.
        what: String,
        /// The SHA-256 the config gives.
        pinned: String,
        /// The SHA-256 of the bytes read.
        actual: String,
    },
    /// It could not be pulled from its registry, and no copy is cached.
    #[error("{0}")]
    Pull(String),
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
    #[error("{what} does not implement a switchyard:policy world (0.2.0, or 0.1.0): {reason}")]
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
