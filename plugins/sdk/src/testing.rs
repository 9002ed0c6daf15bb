//! A test double of the proxy, for a policy's own `cargo test` (native
//! builds only): requests you describe, backend health and load you set,
//! in-memory counters and key-value store, a clock you move, and what the
//! decision added (cookie, fallbacks, reason).
//!
//! ```
//! use switchyard_policy_sdk::testing::{self, TestRequest};
//! # use switchyard_policy_sdk::*;
//! # struct First;
//! # impl Policy for First {
//! #     fn configure(_: &Config, _: &[Backend]) -> Result<Self, String> { Ok(First) }
//! #     fn select(&mut self, _: &Request, h: &[BackendHealth]) -> Result<Decision, String> {
//! #         first_healthy(h).map(Decision::to).ok_or_else(|| "none".into())
//! #     }
//! # }
//! let backends = testing::backends(&["a", "b"]);
//! let mut policy = First::configure(&Config::default(), &backends).unwrap();
//! let health = testing::healthy(2);
//! let d = testing::select(&mut policy, &TestRequest::get("/"), &health).unwrap();
//! assert_eq!(d.backend, 0);
//! ```
//!
//! The double is per thread (as the tests that use it are): each test
//! starts from a fresh one with [`reset`], or implicitly on first use.

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::{
    AttemptResult, Backend, BackendHealth, BackendLoad, Decision, Failure, LogLevel, Outcome,
    Policy, Request, SetCookie,
};

/// A request as a test describes it.
#[derive(Debug, Clone)]
pub struct TestRequest {
    /// `GET`, `POST`...
    pub method: String,
    /// The path, starting with `/`.
    pub path: String,
    /// The query string without `?`.
    pub query: Option<String>,
    /// The host asked for.
    pub host: Option<String>,
    /// `http` or `https`.
    pub scheme: String,
    /// The client's address.
    pub client_ip: String,
    /// Header fields, in order.
    pub headers: Vec<(String, String)>,
    /// 1 for a first attempt.
    pub attempt: u32,
}

impl TestRequest {
    /// `GET path` over HTTP from 192.0.2.1, first attempt.
    pub fn get(path: &str) -> TestRequest {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (path.to_string(), None),
        };
        TestRequest {
            method: "GET".into(),
            path,
            query,
            host: None,
            scheme: "http".into(),
            client_ip: "192.0.2.1".into(),
            headers: Vec::new(),
            attempt: 1,
        }
    }

    /// Adds a header field.
    pub fn header(mut self, name: &str, value: &str) -> TestRequest {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    /// Adds a cookie (as a `Cookie` header field).
    pub fn cookie(self, name: &str, value: &str) -> TestRequest {
        self.header("cookie", &format!("{name}={value}"))
    }

    /// From this client address.
    pub fn from(mut self, ip: &str) -> TestRequest {
        self.client_ip = ip.into();
        self
    }

    /// Over HTTPS.
    pub fn https(mut self) -> TestRequest {
        self.scheme = "https".into();
        self
    }

    /// As attempt `n` (a retry when above 1).
    pub fn attempt(mut self, n: u32) -> TestRequest {
        self.attempt = n;
        self
    }

    pub(crate) fn header_value(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    }

    pub(crate) fn cookie_value(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k == "cookie")
            .flat_map(|(_, v)| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().to_string())
    }
}

/// What the decision in progress added to its answer.
#[derive(Debug, Default, Clone)]
pub(crate) struct Effects {
    pub cookie: Option<SetCookie>,
    pub fallbacks: Vec<u32>,
    pub reason: Option<String>,
}

/// The double's state.
pub(crate) struct FakeHost {
    pub request: FakeRequest,
    pub effects: Effects,
    pub counters: Vec<(String, u64)>,
    pub kv: BTreeMap<String, Vec<u8>>,
    pub loads: Vec<BackendLoad>,
    pub now_ns: u64,
    pub seed: u64,
    pub zone: Option<String>,
    pub watched: Vec<String>,
    pub ignores_outcomes: bool,
    pub logs: Vec<(LogLevel, String)>,
}

/// The request `select` sees through [`Request`].
pub(crate) struct FakeRequest(pub TestRequest);

impl std::ops::Deref for FakeRequest {
    type Target = TestRequest;
    fn deref(&self) -> &TestRequest {
        &self.0
    }
}

impl FakeRequest {
    pub fn header(&self, name: &str) -> Option<String> {
        self.0.header_value(name)
    }
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.0.cookie_value(name)
    }
}

impl Default for FakeHost {
    fn default() -> Self {
        FakeHost {
            request: FakeRequest(TestRequest::get("/")),
            effects: Effects::default(),
            counters: Vec::new(),
            kv: BTreeMap::new(),
            loads: Vec::new(),
            now_ns: 1_000_000_000,
            seed: 0x9e37_79b9_7f4a_7c15,
            zone: None,
            watched: Vec::new(),
            ignores_outcomes: false,
            logs: Vec::new(),
        }
    }
}

impl FakeHost {
    pub fn counter(&mut self, name: &str) -> u32 {
        match self.counters.iter().position(|(n, _)| n == name) {
            Some(i) => i as u32,
            None => {
                self.counters.push((name.to_string(), 0));
                self.counters.len() as u32 - 1
            }
        }
    }

    /// xorshift64*: deterministic, so tests repeat.
    pub fn random(&mut self) -> u64 {
        let mut x = self.seed;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.seed = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

thread_local! {
    static HOST: RefCell<FakeHost> = RefCell::new(FakeHost::default());
}

pub(crate) fn with_host<T>(f: impl FnOnce(&mut FakeHost) -> T) -> T {
    HOST.with(|h| f(&mut h.borrow_mut()))
}

/// A fresh double: no counters, empty store, the clock at 1 s.
pub fn reset() {
    with_host(|h| *h = FakeHost::default());
}

/// Backends named `names`, weight 1, no tags.
pub fn backends(names: &[&str]) -> Vec<Backend> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| Backend {
            name: n.to_string(),
            address: format!("127.0.0.1:{}", 9001 + i),
            weight: 1,
            backup: false,
            tags: Vec::new(),
        })
        .collect()
}

/// `n` healthy backends, healthy since the clock's start, no failures.
pub fn healthy(n: usize) -> Vec<BackendHealth> {
    (0..n)
        .map(|_| BackendHealth {
            healthy: true,
            healthy_since_ns: 1,
            consecutive_failures: 0,
        })
        .collect()
}

/// Sets backend `index`'s load (what [`crate::load`] answers).
pub fn set_load(index: usize, in_flight: u32, latency_ewma_us: u32) {
    with_host(|h| {
        let zero = BackendLoad {
            in_flight: 0,
            latency_ewma_us: 0,
        };
        if h.loads.len() <= index {
            h.loads.resize(index + 1, zero);
        }
        h.loads[index] = BackendLoad {
            in_flight,
            latency_ewma_us,
        };
    });
}

/// Sets the clock ([`crate::now_ns`]).
pub fn set_now_ns(ns: u64) {
    with_host(|h| h.now_ns = ns);
}

/// Moves the clock on.
pub fn advance_ns(ns: u64) {
    with_host(|h| h.now_ns += ns);
}

/// Sets the proxy's zone ([`crate::zone`]).
pub fn set_zone(zone: Option<&str>) {
    with_host(|h| h.zone = zone.map(str::to_string));
}

/// The response headers the policy asked to watch.
pub fn watched() -> Vec<String> {
    with_host(|h| h.watched.clone())
}

/// Whether the policy said it does not need outcomes
/// ([`crate::ignore_outcomes`]).
pub fn ignores_outcomes() -> bool {
    with_host(|h| h.ignores_outcomes)
}

/// The log lines the policy wrote.
pub fn logs() -> Vec<(LogLevel, String)> {
    with_host(|h| h.logs.clone())
}

/// A counter's value, by name (0 if never opened).
pub fn counter(name: &str) -> u64 {
    with_host(|h| {
        h.counters
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| *v)
    })
}

/// Calls `policy.select` for `req` with `health`, as the proxy would: the
/// answer includes the cookie, fallbacks and reason it added.
pub fn select<P: Policy>(
    policy: &mut P,
    req: &TestRequest,
    health: &[BackendHealth],
) -> Result<Decision, String> {
    with_host(|h| {
        h.request = FakeRequest(req.clone());
        h.effects = Effects::default();
    });
    let answer = policy.select(&Request::current(), health);
    let effects = with_host(|h| std::mem::take(&mut h.effects));
    answer.map(|mut d| {
        d.cookie = d.cookie.or(effects.cookie);
        if d.fallbacks.is_empty() {
            d.fallbacks = effects.fallbacks;
        }
        d.reason = d.reason.or(effects.reason);
        d
    })
}

/// The outcome of a response with `status` from backend `backend`.
pub fn response(backend: u32, status: u16) -> Outcome {
    Outcome {
        backend,
        attempt: 1,
        result: AttemptResult::Response(status),
        headers_us: Some(1_000),
        body_us: Some(2_000),
        ended_ns: with_host(|h| h.now_ns),
        headers: Vec::new(),
    }
}

/// The outcome of an attempt on `backend` that failed with `failure`.
pub fn failed(backend: u32, failure: Failure) -> Outcome {
    Outcome {
        backend,
        attempt: 1,
        result: AttemptResult::Failed(failure),
        headers_us: None,
        body_us: None,
        ended_ns: with_host(|h| h.now_ns),
        headers: Vec::new(),
    }
}
