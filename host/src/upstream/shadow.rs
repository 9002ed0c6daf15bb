//! A shadow policy (`shadow-policy`): a candidate asked the same question
//! as the live policy, right after it, whose answer is only counted. It
//! never routes a request, its `Set-Cookie` is dropped, and it sees the
//! same outcomes; a shadow that fails is counted and, like any policy,
//! skipped once unhealthy, so it costs a request at most its deadline.

use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;

use super::backend::Backend;
use super::choice::validate;
use super::counters::ShadowMetrics;
use super::trace::ShadowSaw;
use crate::policy::{BackendState, Policy, PolicyFailure, RequestView};

/// See the module docs.
pub struct Shadow {
    policy: ArcSwap<Box<dyn Policy>>,
    /// Share of decisions it is asked about.
    sample: f64,
    metrics: ShadowMetrics,
}

/// What the admin API's `/status` shows of a shadow.
#[derive(Debug, Serialize)]
pub struct ShadowStatus {
    /// The candidate.
    pub policy: String,
    /// Its SHA-256.
    pub digest: String,
    /// Share of decisions it is asked about.
    pub sample: f64,
    /// Decisions it answered.
    pub decisions: u64,
    /// Of those, how many chose the backend the request went to.
    pub agreed: u64,
    /// `agreed / decisions` (0 before any).
    pub agreement: f64,
    /// Calls that failed (trap, deadline, bad answer...).
    pub failures: u64,
    /// False once it failed `policy-max-failures` times in a row.
    pub healthy: bool,
}

impl Shadow {
    /// A shadow running `policy` on a `sample` of decisions.
    pub fn new(policy: Box<dyn Policy>, sample: f64, metrics: ShadowMetrics) -> Shadow {
        Shadow {
            policy: ArcSwap::from_pointee(policy),
            sample,
            metrics,
        }
    }

    /// The candidate now in place.
    pub fn policy(&self) -> Arc<Box<dyn Policy>> {
        self.policy.load_full()
    }

    /// Puts a new version of the candidate in place (a hot swap).
    pub fn swap(&self, policy: Box<dyn Policy>) {
        self.policy.store(Arc::new(policy));
    }

    /// Asks the candidate about the decision just made: `states` as the
    /// live policy saw them, `live` the backend the request goes to.
    /// `None` when this decision is not in the sample.
    pub fn ask(
        &self,
        req: &mut RequestView,
        states: &[BackendState],
        live: usize,
        backends: &[Backend],
    ) -> Option<ShadowSaw> {
        if self.sample < 1.0 && fastrand::f64() >= self.sample {
            return None;
        }
        let policy = self.policy.load();
        let answer = policy.select(req, states).and_then(|d| validate(d, states));
        match &answer {
            Ok(_) => policy.settle(Ok(())),
            // Not called: skipped while unhealthy, or no instance ready on
            // this thread yet. Neither an answer nor a failure.
            Err(PolicyFailure::Skipped | PolicyFailure::Warming) => return None,
            Err(f) => policy.settle(Err(f)),
        }
        match answer {
            Ok(choice) => {
                if let Some(c) = self.metrics.backends.get(choice.backend) {
                    c.inc();
                }
                if choice.backend == live {
                    self.metrics.agree.inc();
                } else {
                    self.metrics.disagree.inc();
                }
                Some(ShadowSaw::Chose(backends[choice.backend].name.clone()))
            }
            Err(f) => {
                self.metrics.failures.inc();
                tracing::debug!(policy = %policy.name(), "shadow policy failed: {f}");
                Some(ShadowSaw::Failed(f.kind()))
            }
        }
    }

    /// What `/status` shows.
    pub fn status(&self) -> ShadowStatus {
        let status = self.policy.load().status();
        let agreed = self.metrics.agree.get();
        let decisions = agreed + self.metrics.disagree.get();
        ShadowStatus {
            policy: status.source,
            digest: prefixed(status.digest),
            sample: self.sample,
            decisions,
            agreed,
            agreement: if decisions == 0 {
                0.0
            } else {
                agreed as f64 / decisions as f64
            },
            failures: self.metrics.failures.get(),
            healthy: status.healthy,
        }
    }
}

/// A digest as `/status` shows them: `sha256:HEX` (empty stays empty, for
/// the native fallback).
pub fn prefixed(hex: String) -> String {
    if hex.is_empty() {
        hex
    } else {
        format!("sha256:{hex}")
    }
}
