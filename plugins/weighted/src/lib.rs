//! `weighted`: smooth weighted round-robin with nginx's semantics.
//!
//! Backend weights come from the config (`weight = 5`, default 1). Weights
//! 5, 1, 1 give `a a b a c a a`, repeated; unhealthy backends drop out and the
//! others keep their ratio. The sequence position is a host counter shared by
//! every instance and kept across hot swaps, so the split stays exact under
//! concurrency. `policy-config` keys, all optional: outlier ejection,
//! zone preference and slow start as for `round-robin` (while a backend
//! ramps up, backends are drawn at random by weight × slow-start factor).
//! Other keys are logged as unused.

use switchyard_policy_sdk::{
    Adaptive, Backend, BackendHealth, Config, Counter, Decision, Outcome, Policy, Request,
    SLOW_START_KEYS, STEERING_KEYS, Steering, WeightedSchedule, export_adaptive_policy,
    ignore_outcomes, weighted_random,
};

/// Smooth weighted round-robin.
pub struct Weighted {
    position: Counter,
    weights: Vec<u32>,
    schedule: WeightedSchedule,
    steer: Steering,
}

impl Policy for Weighted {
    fn configure(config: &Config, backends: &[Backend]) -> Result<Self, String> {
        config.warn_unknown_keys("weighted", &[STEERING_KEYS, SLOW_START_KEYS].concat());
        let steer = Steering::new(config, backends, true)?;
        if !steer.wants_outcomes() {
            ignore_outcomes();
        }
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        Ok(Weighted {
            position: Counter::new("weighted"),
            schedule: WeightedSchedule::new(weights.clone()),
            weights,
            steer,
        })
    }

    fn select(&mut self, _req: &Request, health: &[BackendHealth]) -> Result<Decision, String> {
        let s = self.steer.steer(health);
        let chosen = if s.ramping() {
            let weights = &self.weights;
            weighted_random(s.health, |i| {
                f64::from(weights.get(i).copied().unwrap_or(1)) * s.factor(i)
            })
        } else {
            self.schedule.pick(s.health, self.position.fetch_add(1))
        };
        chosen
            .map(Decision::to)
            .ok_or_else(|| "no healthy backend".to_string())
    }
}

impl Adaptive for Weighted {
    fn observe(&mut self, outcomes: &[Outcome]) {
        self.steer.observe(outcomes);
    }

    fn update(&mut self, backends: &[Backend]) -> Result<(), String> {
        self.weights = backends.iter().map(|b| b.weight).collect();
        self.schedule = WeightedSchedule::new(self.weights.clone());
        self.steer.update(backends);
        Ok(())
    }
}

export_adaptive_policy!(Weighted);
