//! `round-robin`: each request goes to the next healthy backend in turn.
//!
//! The position is a host counter shared by every instance and kept across
//! hot swaps, so 30 requests over 3 backends split exactly 10/10/10 however
//! many threads serve them. Weights are ignored (use `weighted` for those).
//! `policy-config` keys, all optional: outlier ejection (`eject-after`,
//! `eject-for`, `max-ejected`), zone preference (`prefer-zone`,
//! `min-healthy`) and slow start (`slow-start`, `slow-start-min`,
//! `slow-start-aggression`), see the SDK's `Steering`; while a backend ramps
//! up, turns are drawn at random by its slow-start factor. Other keys are
//! logged as unused (so one table can serve a group whose policy is
//! switched back and forth).

use switchyard_policy_sdk::{
    Adaptive, Backend, BackendHealth, Config, Counter, Decision, Outcome, Policy, Request,
    SLOW_START_KEYS, STEERING_KEYS, Steering, export_adaptive_policy, ignore_outcomes, nth_healthy,
    weighted_random,
};

/// Round-robin over healthy backends.
pub struct RoundRobin {
    position: Counter,
    steer: Steering,
}

impl Policy for RoundRobin {
    fn configure(config: &Config, backends: &[Backend]) -> Result<Self, String> {
        config.warn_unknown_keys("round-robin", &[STEERING_KEYS, SLOW_START_KEYS].concat());
        let steer = Steering::new(config, backends, true)?;
        if !steer.wants_outcomes() {
            ignore_outcomes();
        }
        Ok(RoundRobin {
            position: Counter::new("round-robin"),
            steer,
        })
    }

    fn select(&mut self, _req: &Request, health: &[BackendHealth]) -> Result<Decision, String> {
        let s = self.steer.steer(health);
        let chosen = if s.ramping() {
            weighted_random(s.health, |i| s.factor(i))
        } else {
            nth_healthy(s.health, self.position.fetch_add(1))
        };
        chosen
            .map(Decision::to)
            .ok_or_else(|| "no healthy backend".to_string())
    }
}

impl Adaptive for RoundRobin {
    fn observe(&mut self, outcomes: &[Outcome]) {
        self.steer.observe(outcomes);
    }

    fn update(&mut self, backends: &[Backend]) -> Result<(), String> {
        self.steer.update(backends);
        Ok(())
    }
}

export_adaptive_policy!(RoundRobin);
