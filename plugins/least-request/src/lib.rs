//! `least-request`: the backend with fewer requests in flight, of a few
//! drawn at random (power of two choices; Envoy's `LEAST_REQUEST`, gRPC
//! A48, HAProxy's `random(2)`).
//!
//! With equal weights, `choices` healthy backends are drawn at random and
//! the one with the fewest requests in flight wins (ties: the first drawn).
//! With unequal weights (or while a backend ramps up in slow start), every
//! healthy backend is drawn with a probability proportional to Envoy's
//! `weight / (in_flight + 1) ^ bias`. In-flight counts are this proxy's,
//! across threads.
//!
//! `policy-config` keys, all optional: `choices = 2` (2 to 16), `bias = 1.0`
//! (0 to 10; 0 ignores the load), and the common keys for outlier ejection,
//! zone preference and slow start (see the SDK's `Steering`).

use switchyard_policy_sdk::{
    Adaptive, Backend, BackendHealth, Config, Decision, Outcome, Policy, Request, SLOW_START_KEYS,
    STEERING_KEYS, Steering, export_adaptive_policy, ignore_outcomes, load, loads, nth_healthy,
    p2c, random_u64, weighted_random,
};

/// Power of `choices` choices by requests in flight.
pub struct LeastRequest {
    choices: usize,
    bias: f64,
    weights: Vec<f64>,
    equal: bool,
    scratch: Vec<f64>,
    steer: Steering,
}

impl Policy for LeastRequest {
    fn configure(config: &Config, backends: &[Backend]) -> Result<Self, String> {
        config.expect_keys(&[&["choices", "bias"], STEERING_KEYS, SLOW_START_KEYS].concat())?;
        let choices: usize = config.parse_or("choices", 2)?;
        if !(2..=16).contains(&choices) {
            return Err(format!(
                "policy-config.choices: {choices} is out of range (2 to 16)"
            ));
        }
        let bias = config.number_in("bias", 1.0, 0.0..=10.0)?;
        let steer = Steering::new(config, backends, true)?;
        if !steer.wants_outcomes() {
            ignore_outcomes();
        }
        let mut policy = LeastRequest {
            choices,
            bias,
            weights: Vec::new(),
            equal: true,
            scratch: Vec::new(),
            steer,
        };
        policy.set_weights(backends);
        Ok(policy)
    }

    fn select(&mut self, _req: &Request, health: &[BackendHealth]) -> Result<Decision, String> {
        let s = self.steer.steer(health);
        let in_flight = |i: usize| f64::from(load(i).in_flight);
        let chosen = if self.equal && !s.ramping() {
            if self.choices == 2 {
                p2c(s.health, in_flight)
            } else {
                // Draws with replacement; the least loaded of them.
                let mut best: Option<(usize, f64)> = None;
                for _ in 0..self.choices {
                    let Some(i) = nth_healthy(s.health, random_u64()) else {
                        break;
                    };
                    let cost = in_flight(i);
                    if best.is_none_or(|(_, c)| cost < c) {
                        best = Some((i, cost));
                    }
                }
                best.map(|(i, _)| i)
            }
        } else {
            // Every backend's load in one call.
            let loads = loads();
            self.scratch.clear();
            for (i, h) in s.health.iter().enumerate() {
                let w = if h.healthy {
                    let weight = self.weights.get(i).copied().unwrap_or(1.0) * s.factor(i);
                    let busy = f64::from(loads.get(i).map_or(0, |l| l.in_flight)) + 1.0;
                    weight / pow(busy, self.bias)
                } else {
                    0.0
                };
                self.scratch.push(w);
            }
            let scratch = &self.scratch;
            weighted_random(s.health, |i| scratch[i])
        };
        chosen
            .map(Decision::to)
            .ok_or_else(|| "no healthy backend".to_string())
    }
}

/// `x^bias`, without the cost of `powf` for the usual biases.
fn pow(x: f64, bias: f64) -> f64 {
    if bias == 1.0 {
        x
    } else if bias == 0.0 {
        1.0
    } else {
        x.powf(bias)
    }
}

impl LeastRequest {
    fn set_weights(&mut self, backends: &[Backend]) {
        self.weights = backends
            .iter()
            .map(|b| f64::from(b.weight.max(1)))
            .collect();
        self.equal = self.weights.windows(2).all(|w| w[0] == w[1]);
    }
}

impl Adaptive for LeastRequest {
    fn observe(&mut self, outcomes: &[Outcome]) {
        self.steer.observe(outcomes);
    }

    fn update(&mut self, backends: &[Backend]) -> Result<(), String> {
        self.set_weights(backends);
        self.steer.update(backends);
        Ok(())
    }
}

export_adaptive_policy!(LeastRequest);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_policy_sdk::testing::{self, TestRequest};

    fn picks(p: &mut LeastRequest, n: usize) -> Vec<usize> {
        let health = testing::healthy(3);
        let mut seen = vec![0; 3];
        for _ in 0..n {
            seen[testing::select(p, &TestRequest::get("/"), &health)
                .unwrap()
                .backend as usize] += 1;
        }
        seen
    }

    #[test]
    fn the_busiest_backend_is_never_chosen_of_two() {
        testing::reset();
        let mut p =
            LeastRequest::configure(&Config::default(), &testing::backends(&["a", "b", "c"]))
                .unwrap();
        testing::set_load(0, 1, 0);
        testing::set_load(1, 5, 0);
        testing::set_load(2, 0, 0);
        let seen = picks(&mut p, 300);
        assert_eq!(seen[1], 0, "{seen:?}");
        assert!(seen[2] > seen[0], "{seen:?}");
    }

    #[test]
    fn unequal_weights_share_by_weight_when_idle() {
        testing::reset();
        let mut backends = testing::backends(&["a", "b", "c"]);
        backends[0].weight = 2;
        let mut p = LeastRequest::configure(&Config::default(), &backends).unwrap();
        let seen = picks(&mut p, 4000);
        // 2:1:1
        assert!((1800..2200).contains(&seen[0]), "{seen:?}");
        assert!((800..1200).contains(&seen[1]), "{seen:?}");
    }

    #[test]
    fn choices_and_bias_are_checked() {
        testing::reset();
        let b = testing::backends(&["a"]);
        let c = |k: &str, v: &str| Config::new(vec![(k.to_string(), v.to_string())]);
        assert!(LeastRequest::configure(&c("choices", "1"), &b).is_err());
        assert!(LeastRequest::configure(&c("bias", "-1"), &b).is_err());
        assert!(LeastRequest::configure(&c("choices", "3"), &b).is_ok());
    }
}
