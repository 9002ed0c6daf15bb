//! Canary routing: requests with `X-Canary: 1` go to the backends named
//! `canary-*`, all others round-robin over the rest.

use switchyard_policy_sdk::{
    Backend, BackendState, Config, Counter, Decision, Policy, Request, export_policy, nth_where,
};

struct Canary {
    /// `canary[i]`: backend `i` is a canary.
    canary: Vec<bool>,
    /// Shared by every instance: round-robin positions for each side.
    canary_turn: Counter,
    stable_turn: Counter,
}

impl Policy for Canary {
    fn configure(config: &Config, backends: &[Backend]) -> Result<Self, String> {
        config.expect_keys(&[])?;
        let canary: Vec<bool> = backends.iter().map(|b| b.name.starts_with("canary-")).collect();
        if !canary.contains(&true) {
            return Err("no backend is named canary-*".into());
        }
        Ok(Canary {
            canary,
            canary_turn: Counter::new("canary"),
            stable_turn: Counter::new("stable"),
        })
    }

    fn select(&mut self, req: &Request, backends: &[BackendState]) -> Result<Decision, String> {
        let want = req.header("x-canary").as_deref() == Some("1");
        let turn = if want { &self.canary_turn } else { &self.stable_turn };
        nth_where(backends, turn.fetch_add(1), |i, b| b.healthy && self.canary[i] == want)
            .map(Decision::to)
            .ok_or_else(|| "no healthy backend in this group".into())
    }
}

export_policy!(Canary);
