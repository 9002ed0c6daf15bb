//! Upstream groups: their backends, each backend's live statistics and
//! passive health, and the choice of a backend for a request (the policy,
//! checked, with the native fallback behind it).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use smallvec::SmallVec;

use crate::config::UpstreamConfig;
use crate::metrics::{BackendMetrics, Metrics, UpstreamMetrics};
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
    /// Set by active health checks while the backend fails them.
    checks_failing: AtomicBool,
    in_flight: AtomicU32,
    latency_ewma_us: AtomicU32,
    fails: AtomicU32,
    window_start_ns: AtomicU64,
    down_until_ns: AtomicU64,
}

impl BackendStats {
    /// Whether the backend is usable at `now`: not failing active checks
    /// and not marked down by passive health.
    pub fn healthy(&self, now: u64) -> bool {
        !self.checks_failing.load(Ordering::Relaxed)
            && now >= self.down_until_ns.load(Ordering::Relaxed)
    }

    /// Records the verdict of active health checks.
    pub fn set_check_failing(&self, failing: bool) {
        self.checks_failing.store(failing, Ordering::Relaxed);
    }

    /// Forgets passive failures: an active check that sees the backend come
    /// back knows better than a mark set when it went away.
    pub fn clear_failures(&self) {
        self.fails.store(0, Ordering::Relaxed);
        self.down_until_ns.store(0, Ordering::Relaxed);
    }

    /// Whether active health checks have taken the backend out.
    pub fn check_failing(&self) -> bool {
        self.checks_failing.load(Ordering::Relaxed)
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
    pub name: Arc<str>,
    /// Address as written.
    pub address: String,
    /// Resolved address.
    pub socket_addr: SocketAddr,
    /// Weight from the config.
    pub weight: u32,
    /// Used only when no primary backend is healthy.
    pub backup: bool,
    /// Spoken to over HTTP/2.
    pub h2: bool,
    /// Live numbers, shared with any other group using the same address
    /// and kept across reloads.
    pub stats: Arc<BackendStats>,
    /// Idle keep-alive connections.
    pub pool: Arc<Pool>,
    /// Response counters.
    pub metrics: BackendMetrics,
}

/// [`BackendRegistry`] keeps each backend address's statistics and
/// connection pool across config reloads, as Caddy's host pool does: a
/// backend marked down stays down, and warm connections stay warm, when the
/// config around it changes.
#[derive(Debug, Default)]
pub struct BackendRegistry {
    stats: Mutex<HashMap<SocketAddr, Arc<BackendStats>>>,
    pools: Mutex<HashMap<(SocketAddr, usize, Duration), Arc<Pool>>>,
}

impl BackendRegistry {
    /// The backends of `config`, with shared statistics and pools.
    pub fn backends(&self, config: &UpstreamConfig, metrics: &Metrics) -> Vec<Backend> {
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        config
            .backends
            .iter()
            .map(|b| Backend {
                name: b.name.as_str().into(),
                address: b.address.clone(),
                socket_addr: b.socket_addr,
                weight: b.weight,
                backup: b.backup,
                h2: b.h2,
                stats: stats.entry(b.socket_addr).or_default().clone(),
                pool: pools
                    .entry((b.socket_addr, config.keepalive, config.idle_timeout))
                    .or_insert_with(|| Arc::new(Pool::new(config.keepalive, config.idle_timeout)))
                    .clone(),
                metrics: metrics.backend(&config.name, &b.name),
            })
            .collect()
    }

    /// Forgets addresses no running config uses any more.
    pub fn prune(&self) {
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, s| Arc::strong_count(s) > 1);
        self.pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, p| Arc::strong_count(p) > 1);
    }
}

/// The live states a policy sees for a request that has already failed on
/// the backends in `tried`. Backups are offered only when no primary is
/// healthy. When nothing untried is healthy, all untried backends are
/// offered ("panic mode", as nginx does when every server is marked
/// failed). None is healthy only when everything has been tried.
pub fn states(backends: &[Backend], tried: &[usize]) -> SmallVec<[BackendState; 8]> {
    let now = now_ns();
    let mut states: SmallVec<[BackendState; 8]> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| BackendState {
            healthy: !tried.contains(&i) && b.stats.healthy(now),
            in_flight: b.stats.in_flight(),
            latency_ewma_us: b.stats.latency_ewma_us(),
        })
        .collect();
    let primary_up = backends
        .iter()
        .zip(&states)
        .any(|(b, s)| s.healthy && !b.backup);
    for (b, s) in backends.iter().zip(states.iter_mut()) {
        if b.backup && primary_up {
            s.healthy = false;
        }
    }
    if !states.iter().any(|s| s.healthy) {
        for (i, s) in states.iter_mut().enumerate() {
            s.healthy = !tried.contains(&i);
        }
    }
    states
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

/// The policy currently serving a group; swapped whole on a hot swap.
pub type PolicyRef = Arc<Box<dyn Policy>>;

/// [`Upstream`] is a configured group: backends, settings and the policy.
pub struct Upstream {
    /// Name from the config.
    pub name: String,
    /// Backends, in configuration order (the policy's indices).
    pub backends: Vec<Backend>,
    /// Settings from the config.
    pub config: UpstreamConfig,
    /// Counters.
    pub metrics: UpstreamMetrics,
    policy: ArcSwap<Box<dyn Policy>>,
    fallback: RoundRobin,
    last_warning_ns: AtomicU64,
}

impl Upstream {
    /// A group from its config, its backends and a loaded policy.
    pub fn new(
        config: UpstreamConfig,
        backends: Vec<Backend>,
        policy: Box<dyn Policy>,
        metrics: UpstreamMetrics,
    ) -> Upstream {
        Upstream {
            name: config.name.clone(),
            backends,
            config,
            metrics,
            policy: ArcSwap::from_pointee(policy),
            fallback: RoundRobin::default(),
            last_warning_ns: AtomicU64::new(0),
        }
    }

    /// The policy now in service. A request holds on to the one it started
    /// with, so a swap never changes policy in the middle of a request.
    pub fn policy(&self) -> PolicyRef {
        self.policy.load_full()
    }

    /// Puts a new policy in service for requests that start from now on.
    pub fn swap_policy(&self, policy: Box<dyn Policy>) {
        self.policy.store(Arc::new(policy));
    }

    /// The states the policy would see now for a fresh request.
    pub fn states(&self) -> SmallVec<[BackendState; 8]> {
        states(&self.backends, &[])
    }

    /// Chooses a backend for `req` with `policy`, excluding `tried`. `None`
    /// when every backend has been tried.
    pub fn choose(
        &self,
        policy: &dyn Policy,
        req: &mut RequestView,
        tried: &[usize],
    ) -> Option<Choice> {
        let states = states(&self.backends, tried);
        if !states.iter().any(|s| s.healthy) {
            return None;
        }
        let started = Instant::now();
        let result = policy.select(req, &states);
        self.metrics.decision_seconds.observe(started.elapsed());
        match result {
            Ok(d) => {
                self.metrics.decisions.inc();
                Some(Choice {
                    backend: d.backend,
                    set_cookie: d.set_cookie,
                    fallback: None,
                })
            }
            Err(failure) => {
                self.metrics.failure(&failure);
                if failure != PolicyFailure::Skipped {
                    self.warn_rate_limited(policy, &failure);
                }
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
    fn warn_rate_limited(&self, policy: &dyn Policy, failure: &PolicyFailure) {
        let now = now_ns();
        let last = self.last_warning_ns.load(Ordering::Relaxed);
        if last == 0 || now.saturating_sub(last) >= 1_000_000_000 {
            self.last_warning_ns.store(now, Ordering::Relaxed);
            tracing::warn!(
                upstream = %self.name,
                policy = %policy.name(),
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
