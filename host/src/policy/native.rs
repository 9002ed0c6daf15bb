//! [`RoundRobin`]: the host's own round-robin, the fallback when a policy
//! fails and the `native:round-robin` baseline for benchmarks.

use std::sync::atomic::{AtomicU64, Ordering};

use super::api::{BackendState, Decision, Policy, PolicyFailure, PolicyStatus, RequestView};
use super::limits::Source;

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
            .map(|backend| Decision::to(backend as u32))
            .ok_or_else(|| PolicyFailure::Error("no healthy backend".into()))
    }

    fn settle(&self, _verdict: Result<(), &PolicyFailure>) {}

    fn name(&self) -> &str {
        "native-round-robin"
    }

    fn contract(&self) -> &'static str {
        "native"
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
            memory: (0, Source::Default),
            timeout: (std::time::Duration::ZERO, Source::Default),
            contract: "native",
            exports: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states(healthy: &[bool]) -> Vec<BackendState> {
        healthy
            .iter()
            .map(|&healthy| BackendState {
                healthy,
                ..BackendState::default()
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
