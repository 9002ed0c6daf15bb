//! Upstream groups: their backends, each backend's live statistics and
//! passive health, and the choice of a backend for a request (the policy,
//! checked, with the native fallback behind it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use smallvec::SmallVec;

use crate::config::{BackendConfig, UpstreamConfig};
use crate::policy::{BackendState, Policy, PolicyFailure, RequestView, RoundRobin};
use crate::pool::Pool;

/// Nanoseconds on the proxy's monotonic clock.
pub fn now_ns() -> u64 {
    crate::policy::monotonic_ns()
}

/// [`BackendStats`] are one backend's live numbers: in-flight requests,
/// latency and passive health (nginx's `max_fails` / `fail_timeout`).
#[derive(Debug, Default)]
pub struct BackendStats {
    in_flight: AtomicU32,
    latency_ewma_us: AtomicU32,
    fails: AtomicU32,
    window_start_ns: AtomicU64,
    down_until_ns: AtomicU64,
}

impl BackendStats {
    /// Whether passive health allows the backend at `now`.
    pub fn healthy(&self, now: u64) -> bool {
        now >= self.down_until_ns.load(Ordering::Relaxed)
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// EWMA of the time to response headers, in µs (0: no sample yet).
    pub fn latency_ewma_us(&self) -> u32 {
        self.latency_ewma_us.load(Ordering::Relaxed)
    }

    /// Counts a request as started; the guard ends it when dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Records a failure. Returns true if this failure marked the backend
    /// down: `max_fails` failures within `fail_timeout` take it out for
    /// `fail_timeout` (a `max_fails` of 0 never does).
    pub fn record_failure(&self, now: u64, max_fails: u32, fail_timeout: Duration) -> bool {
        if max_fails == 0 {
            return false;
        }
        let window = fail_timeout.as_nanos() as u64;
        let start = self.window_start_ns.load(Ordering::Relaxed);
        let fails = if now.saturating_sub(start) > window || start == 0 {
            self.window_start_ns.store(now.max(1), Ordering::Relaxed);
            self.fails.store(1, Ordering::Relaxed);
            1
        } else {
            self.fails.fetch_add(1, Ordering::Relaxed) + 1
        };
        if fails >= max_fails && self.healthy(now) {
            self.down_until_ns.store(now + window, Ordering::Relaxed);
            self.fails.store(0, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Records a response: clears the failure count and updates the latency
    /// average (weight 1/8, as TCP's smoothed RTT).
    pub fn record_success(&self, latency: Duration) {
        if self.fails.load(Ordering::Relaxed) != 0 {
            self.fails.store(0, Ordering::Relaxed);
        }
        let sample = latency.as_micros().min(u128::from(u32::MAX)) as i64;
        let old = i64::from(self.latency_ewma_us.load(Ordering::Relaxed));
        let new = if old == 0 {
            sample
        } else {
            old + (sample - old) / 8
        };
        self.latency_ewma_us
            .store(new.clamp(1, i64::from(u32::MAX)) as u32, Ordering::Relaxed);
    }
}

/// A request in flight to a backend; decrements the count when dropped.
#[derive(Debug)]
pub struct InFlight(Arc<BackendStats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One backend of a group.
#[derive(Debug)]
pub struct Backend {
    /// Name from the config.
    pub name: String,
    /// Address as written.
    pub address: String,
    /// Resolved address.
    pub socket_addr: SocketAddr,
    /// Weight from the config.
    pub weight: u32,
    /// Live numbers.
    pub stats: Arc<BackendStats>,
    /// Idle keep-alive connections.
    pub pool: Arc<Pool>,
}

impl Backend {
    fn new(config: &BackendConfig, upstream: &UpstreamConfig) -> Backend {
        Backend {
            name: config.name.clone(),
            address: config.address.clone(),
            socket_addr: config.socket_addr,
            weight: config.weight,
            stats: Arc::default(),
            pool: Arc::new(Pool::new(upstream.keepalive, upstream.idle_timeout)),
        }
    }
}

/// The backend chosen for a request.
#[derive(Debug)]
pub struct Choice {
    /// Index into [`Upstream::backends`].
    pub backend: usize,
    /// A `Set-Cookie` value the policy asked for.
    pub set_cookie: Option<http::HeaderValue>,
    /// Set when the policy failed and the fallback chose.
    pub fallback: Option<PolicyFailure>,
}

/// Per-upstream decision counters.
#[derive(Debug, Default)]
pub struct DecisionStats {
    /// Decisions made by the policy.
    pub decisions: AtomicU64,
    /// Requests the fallback decided because the policy failed.
    pub fallbacks: AtomicU64,
    last_warning_ns: AtomicU64,
}

/// [`Upstream`] is a configured group: backends, settings and the policy.
pub struct Upstream {
    /// Name from the config.
    pub name: String,
    /// Backends, in configuration order (the policy's indices).
    pub backends: Vec<Backend>,
    /// Settings from the config.
    pub config: UpstreamConfig,
    /// The selection policy.
    pub policy: Arc<dyn Policy>,
    /// Counters.
    pub stats: DecisionStats,
    fallback: RoundRobin,
}

impl Upstream {
    /// A group from its config and a loaded policy.
    pub fn new(config: UpstreamConfig, policy: Arc<dyn Policy>) -> Upstream {
        Upstream {
            name: config.name.clone(),
            backends: config
                .backends
                .iter()
                .map(|b| Backend::new(b, &config))
                .collect(),
            config,
            policy,
            stats: DecisionStats::default(),
            fallback: RoundRobin::default(),
        }
    }

    /// The backend states a policy sees for a request that has already
    /// failed on the backends in `tried`. When no untried backend is healthy,
    /// all untried ones are offered ("panic mode", as nginx does when every
    /// server is marked failed). Empty when everything has been tried.
    pub fn states(&self, tried: &[usize]) -> SmallVec<[BackendState; 8]> {
        let now = now_ns();
        let mut states: SmallVec<[BackendState; 8]> = self
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| BackendState {
                healthy: !tried.contains(&i) && b.stats.healthy(now),
                in_flight: b.stats.in_flight(),
                latency_ewma_us: b.stats.latency_ewma_us(),
            })
            .collect();
        if !states.iter().any(|s| s.healthy) {
            for (i, s) in states.iter_mut().enumerate() {
                s.healthy = !tried.contains(&i);
            }
        }
        states
    }

    /// Chooses a backend for `req`, excluding `tried`. `None` when every
    /// backend has been tried.
    pub fn choose(&self, req: &mut RequestView, tried: &[usize]) -> Option<Choice> {
        let states = self.states(tried);
        if !states.iter().any(|s| s.healthy) {
            return None;
        }
        match self.policy.select(req, &states) {
            Ok(d) => {
                self.stats.decisions.fetch_add(1, Ordering::Relaxed);
                Some(Choice {
                    backend: d.backend,
                    set_cookie: d.set_cookie,
                    fallback: None,
                })
            }
            Err(failure) => {
                self.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
                self.warn_rate_limited(&failure);
                let backend = self.fallback.pick(&states)?;
                Some(Choice {
                    backend,
                    set_cookie: None,
                    fallback: Some(failure),
                })
            }
        }
    }

    /// Logs a policy failure at most once a second per upstream.
    fn warn_rate_limited(&self, failure: &PolicyFailure) {
        let now = now_ns();
        let last = self.stats.last_warning_ns.load(Ordering::Relaxed);
        if last == 0 || now.saturating_sub(last) >= 1_000_000_000 {
            self.stats.last_warning_ns.store(now, Ordering::Relaxed);
            tracing::warn!(
                upstream = %self.name,
                policy = %self.policy.name(),
                kind = failure.kind(),
                "policy failed, request sent by the fallback: {failure}"
            );
        } else {
            tracing::debug!(upstream = %self.name, kind = failure.kind(), "policy failed: {failure}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn one_failure_marks_down_with_nginx_defaults() {
        let s = BackendStats::default();
        assert!(s.healthy(5 * SEC));
        assert!(s.record_failure(5 * SEC, 1, Duration::from_secs(10)));
        assert!(!s.healthy(6 * SEC));
        assert!(s.healthy(15 * SEC));
    }

    #[test]
    fn max_fails_counts_within_the_window_only() {
        let s = BackendStats::default();
        let ft = Duration::from_secs(10);
        assert!(!s.record_failure(SEC, 3, ft));
        assert!(!s.record_failure(2 * SEC, 3, ft));
        // The window expired: counting starts again.
        assert!(!s.record_failure(20 * SEC, 3, ft));
        assert!(!s.record_failure(21 * SEC, 3, ft));
        assert!(s.record_failure(22 * SEC, 3, ft));
        assert!(!s.healthy(23 * SEC));
    }

    #[test]
    fn max_fails_zero_never_marks_down() {
        let s = BackendStats::default();
        for t in 1..10 {
            assert!(!s.record_failure(t * SEC, 0, Duration::from_secs(10)));
        }
        assert!(s.healthy(10 * SEC));
    }

    #[test]
    fn latency_average_moves_an_eighth_of_the_way() {
        let s = BackendStats::default();
        s.record_success(Duration::from_micros(800));
        assert_eq!(s.latency_ewma_us(), 800);
        s.record_success(Duration::from_micros(1600));
        assert_eq!(s.latency_ewma_us(), 900);
    }

    #[test]
    fn in_flight_guards_count_up_and_down() {
        let s = Arc::new(BackendStats::default());
        let a = s.start();
        let b = s.start();
        assert_eq!(s.in_flight(), 2);
        drop(a);
        drop(b);
        assert_eq!(s.in_flight(), 0);
    }
}
