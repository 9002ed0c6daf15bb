//! `round-robin`: each request goes to the next healthy backend in turn.
//!
//! The position is a host counter shared by every instance and kept across
//! hot swaps, so 30 requests over 3 backends split exactly 10/10/10 however
//! many threads serve them. Weights are ignored (use `weighted` for those).
//! Takes no `policy-config` keys; any it is given are logged as unused
//! (so one table can serve a group whose policy is switched back and forth).

use switchyard_policy_sdk::{
    Backend, BackendHealth, Config, Counter, Decision, Policy, Request, export_policy, nth_healthy,
};

/// Round-robin over healthy backends.
pub struct RoundRobin {
    position: Counter,
}

impl Policy for RoundRobin {
    fn configure(config: &Config, _backends: &[Backend]) -> Result<Self, String> {
        config.warn_unknown_keys("round-robin", &[]);
        Ok(RoundRobin {
            position: Counter::new("round-robin"),
        })
    }

    fn select(&mut self, _req: &Request, backends: &[BackendHealth]) -> Result<Decision, String> {
        let n = self.position.fetch_add(1);
        nth_healthy(backends, n)
            .map(Decision::to)
            .ok_or_else(|| "no healthy backend".to_string())
    }
}

export_policy!(RoundRobin);
