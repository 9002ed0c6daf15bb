//! Upstream groups: their backends, the choice of a backend for a request,
//! and the one place every fact about a backend is written.
//!
//! [`Upstream::choose`] asks the group's policy (any kind: Wasm, native)
//! and checks its answer whatever it is (index in range and healthy, a
//! valid cookie), falling back to round-robin when the policy fails.
//! [`Upstream::report`] takes the outcome of each attempt once and updates
//! passive health, the latency average and the counters.
//!
//! - [`backend`]: one backend and its live numbers;
//! - [`registry`]: numbers and pools kept by address across reloads;
//! - [`pool`]: connections to a backend; [`body`]: what is sent on them;
//! - [`health`]: active checks; [`counters`]: the metric handles;
//! - [`shadow`]: a candidate policy asked beside the live one;
//! - [`trace`]: the last decisions, for the admin API.

pub mod backend;
pub mod body;
mod choice;
mod cookie;
pub mod counters;
pub mod health;
mod outcome;
pub mod pool;
pub mod registry;
pub mod shadow;
pub mod trace;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use smallvec::SmallVec;

pub use backend::{Backend, BackendStats, InFlight};
use choice::validate;
pub use choice::{Choice, states};
pub use outcome::{FailureKind, Outcome};
pub use registry::BackendRegistry;
pub use shadow::Shadow;
pub use trace::{Trace, TraceRing};

use crate::config::UpstreamConfig;
use crate::policy::{BackendState, Observed, Policy, PolicyFailure, RequestView, RoundRobin};
use counters::UpstreamMetrics;

/// Nanoseconds on the proxy's monotonic clock.
pub fn now_ns() -> u64 {
    crate::policy::monotonic_ns()
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
    /// A candidate policy asked beside the live one.
    shadow: Option<Shadow>,
    /// The last decisions, when `[admin] decisions` is set.
    traces: Option<Arc<TraceRing>>,
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
            shadow: None,
            traces: None,
        }
    }

    /// The group with a shadow policy asked beside the live one.
    pub fn with_shadow(mut self, shadow: Option<Shadow>) -> Upstream {
        self.shadow = shadow;
        self
    }

    /// The group keeping its last decisions in `ring`.
    pub fn with_traces(mut self, ring: Option<Arc<TraceRing>>) -> Upstream {
        self.traces = ring;
        self
    }

    /// Its shadow policy, if it has one.
    pub fn shadow(&self) -> Option<&Shadow> {
        self.shadow.as_ref()
    }

    /// Its last decisions, if it keeps them.
    pub fn traces(&self) -> Option<&Arc<TraceRing>> {
        self.traces.as_ref()
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
    /// when every backend has been tried. The policy's answer is checked
    /// here, whatever kind of policy it is, and its verdict handed back to
    /// it so that it can keep its own health.
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
        let result = result.and_then(|d| validate(d, &states));
        let not_called =
            |f: &PolicyFailure| matches!(f, PolicyFailure::Skipped | PolicyFailure::Warming);
        match &result {
            Ok(_) => policy.settle(Ok(())),
            Err(f) if not_called(f) => {}
            Err(f) => policy.settle(Err(f)),
        }
        let mut choice = match result {
            Ok(choice) => {
                self.metrics.decisions.inc();
                if let Some(reason) = &choice.reason {
                    tracing::debug!(upstream = %self.name, backend = %self.backends[choice.backend].name, "policy chose: {reason}");
                }
                choice
            }
            Err(failure) => {
                self.metrics.failure(&failure);
                if !not_called(&failure) {
                    self.warn_rate_limited(policy, &failure);
                }
                let backend = self.fallback.pick(&states)?;
                Choice {
                    backend,
                    set_cookie: None,
                    fallback: Some(failure),
                    ranked: SmallVec::new(),
                    reason: None,
                    trace: None,
                }
            }
        };
        if self.shadow.is_some() || self.traces.is_some() {
            self.after_decision(policy, req, &states, &mut choice);
        }
        Some(choice)
    }

    /// Asks the shadow policy, if any, about the decision just made, and
    /// keeps its trace, if the group keeps them.
    fn after_decision(
        &self,
        policy: &dyn Policy,
        req: &mut RequestView,
        states: &[BackendState],
        choice: &mut Choice,
    ) {
        let saw = self
            .shadow
            .as_ref()
            .and_then(|s| s.ask(req, states, choice.backend, &self.backends));
        let Some(ring) = &self.traces else {
            return;
        };
        let status = policy.status();
        let name = |i: usize| self.backends[i].name.clone();
        let mut t = Trace::new(&req.parts, req.attempt);
        t.policy = (status.source, shadow::prefixed(status.digest));
        t.seen = self
            .backends
            .iter()
            .zip(states)
            .map(|(b, s)| (b.name.clone(), *s))
            .collect();
        t.candidates = std::iter::once(choice.backend)
            .chain(choice.ranked.iter().copied())
            .map(name)
            .collect();
        t.reason = choice.reason.clone();
        t.fallback = choice.fallback.as_ref().map(|f| f.to_string());
        t.shadow = saw;
        choice.trace = Some(ring.push(t));
    }

    /// The next backend the policy ranked for this request that can take
    /// it now (untried and healthy), taken off `choice.ranked`.
    pub fn next_ranked(&self, ranked: &mut SmallVec<[usize; 4]>, tried: &[usize]) -> Option<usize> {
        let states = states(&self.backends, tried);
        while !ranked.is_empty() {
            let i = ranked.remove(0);
            if states.get(i).is_some_and(|s| s.healthy) {
                self.metrics.ranked.inc();
                return Some(i);
            }
        }
        None
    }

    /// Takes the outcome of one attempt on backend `index`: passive health
    /// (`max-fails` / `fail-timeout`), the latency average and the failure
    /// counters. Called exactly once per attempt, when it is over.
    pub fn report(&self, index: usize, outcome: &Outcome) {
        let Some(backend) = self.backends.get(index) else {
            return;
        };
        match outcome.failure {
            Some(kind) if !kind.is_backend_failure() => {
                backend.metrics.failures[kind.index()].inc();
            }
            Some(kind) => {
                backend.metrics.failures[kind.index()].inc();
                let cfg = &self.config;
                if backend
                    .stats
                    .record_failure(now_ns(), cfg.max_fails, cfg.fail_timeout)
                {
                    tracing::warn!(upstream = %self.name, backend = %backend.name, "backend marked down: {}", kind.label());
                } else {
                    tracing::debug!(upstream = %self.name, backend = %backend.name, "backend failed: {}", kind.label());
                }
            }
            None => {
                if let Some(took) = outcome.headers_after {
                    backend.stats.record_success(took);
                }
            }
        }
        if let Some(t) = &outcome.trace {
            t.attempted(trace::Attempt {
                backend: backend.name.clone(),
                attempt: outcome.attempt,
                status: outcome.status.map(|s| s.as_u16()),
                failure: outcome.failure.map(FailureKind::label),
                headers_ms: outcome.headers_after.map(|d| d.as_secs_f64() * 1000.0),
            });
        }
        let policy = self.policy.load();
        let shadow = self
            .shadow
            .as_ref()
            .map(Shadow::policy)
            .filter(|p| p.observes());
        if !policy.observes() && shadow.is_none() {
            return;
        }
        let observed = Observed {
            backend: backend.name.clone(),
            attempt: outcome.attempt,
            status: outcome.status.map(|s| s.as_u16()),
            failure: outcome.failure.map(FailureKind::for_policy),
            headers_us: outcome.headers_after.map(|d| d.as_micros() as u64),
            body_us: outcome.body_after.map(|d| d.as_micros() as u64),
            ended_ns: now_ns(),
            headers: outcome.watched.clone(),
        };
        if let Some(shadow) = shadow {
            let mut theirs = observed.clone();
            // The values are of the live policy's watched headers; a shadow
            // that watches others is told none.
            if shadow.watched_headers() != policy.watched_headers() {
                theirs.headers = vec![None; shadow.watched_headers().len()];
            }
            shadow.observe(theirs);
        }
        if policy.observes() {
            policy.observe(observed);
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
    use crate::policy::Decision;

    fn state(healthy: bool) -> BackendState {
        BackendState {
            healthy,
            ..BackendState::default()
        }
    }

    #[test]
    fn decisions_must_name_a_healthy_backend_in_range() {
        let states = [state(true), state(false)];
        assert_eq!(validate(Decision::to(0), &states).unwrap().backend, 0);
        assert_eq!(
            validate(Decision::to(1), &states).unwrap_err(),
            PolicyFailure::UnhealthyChoice(1)
        );
        assert_eq!(
            validate(Decision::to(9999), &states).unwrap_err(),
            PolicyFailure::OutOfRange(9999)
        );
        // Ranked fallbacks out of range (or the choice itself) are dropped.
        let mut d = Decision::to(0);
        d.fallbacks = [1, 0, 7].into_iter().collect();
        assert_eq!(validate(d, &states).unwrap().ranked.as_slice(), &[1]);
    }

    #[test]
    fn only_backend_failures_count_against_a_backend() {
        assert!(FailureKind::ReadTimeout.is_backend_failure());
        assert!(!FailureKind::TooLarge.is_backend_failure());
        assert!(!FailureKind::Busy.is_backend_failure());
        assert!(!FailureKind::ClientGone.is_backend_failure());
        for (i, k) in FailureKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
    }
}
