//! `weighted`: smooth weighted round-robin with nginx's semantics.
//!
//! Backend weights come from the config (`weight = 5`, default 1). Weights
//! 5, 1, 1 give `a a b a c a a`, repeated; unhealthy backends drop out and the
//! others keep their ratio. The sequence position is a host counter shared by
//! every instance and kept across hot swaps, so the split stays exact under
//! concurrency. Takes no `policy-config` keys; any it is given are logged
//! as unused (so one table can serve a group whose policy is switched).

use switchyard_policy_sdk::{
    Backend, BackendHealth, Config, Counter, Decision, Policy, Request, WeightedSchedule,
    export_policy,
};

/// Smooth weighted round-robin.
pub struct Weighted {
    position: Counter,
    schedule: WeightedSchedule,
}

impl Policy for Weighted {
    fn configure(config: &Config, backends: &[Backend]) -> Result<Self, String> {
        config.warn_unknown_keys("weighted", &[]);
        Ok(Weighted {
            position: Counter::new("weighted"),
            schedule: WeightedSchedule::new(backends.iter().map(|b| b.weight).collect()),
        })
    }

    fn select(&mut self, _req: &Request, backends: &[BackendHealth]) -> Result<Decision, String> {
        let n = self.position.fetch_add(1);
        self.schedule
            .pick(backends, n)
            .map(Decision::to)
            .ok_or_else(|| "no healthy backend".to_string())
    }
}

export_policy!(Weighted);
