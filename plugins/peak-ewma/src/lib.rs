//! `peak-ewma`: power of two choices on a cost of latency × (requests in
//! flight + 1), as Finagle's and Linkerd's balancers do.
//!
//! Each backend's latency estimate is a peak EWMA of the time to its
//! response headers, learnt from outcomes: a slower response replaces the
//! estimate at once, faster ones pull it down over `decay`, and with no news
//! it decays towards 0 so that a backend avoided for a while is tried
//! again. A failed attempt (a 5xx, or no response) counts as a response
//! taking `failure-penalty`, so a backend that fails fast does not look
//! fast (linkerd2-proxy #4537). A backend with no estimate yet costs 0 while
//! idle and the penalty once it has a request in flight (Finagle). Time, for
//! the decay, is the end of the newest outcome seen: under traffic that is
//! within a millisecond or so of now, and it spares a clock call per
//! decision.
//!
//! `policy-config` keys, all optional: `decay = "10s"`, `failure-penalty =
//! "1s"`, and the common keys for outlier ejection and zone preference
//! (see the SDK's `Steering`).

use switchyard_policy_sdk::{
    Adaptive, Backend, BackendHealth, Config, Decision, Ewma, Outcome, Policy, Request,
    STEERING_KEYS, Steering, backend_failed, export_adaptive_policy, load, p2c,
};

/// P2C over peak-EWMA latency × load.
pub struct PeakEwma {
    decay_ns: u64,
    penalty_us: f64,
    names: Vec<String>,
    estimates: Vec<Ewma>,
    /// The end of the newest outcome seen (ns).
    clock: u64,
    steer: Steering,
}

impl Policy for PeakEwma {
    fn configure(config: &Config, backends: &[Backend]) -> Result<Self, String> {
        config.expect_keys(&[&["decay", "failure-penalty"], STEERING_KEYS].concat())?;
        let decay_ns = config.duration_ns("decay", 10_000_000_000)?;
        if decay_ns == 0 {
            return Err("policy-config.decay: must be longer than 0".into());
        }
        let penalty_ns = config.duration_ns("failure-penalty", 1_000_000_000)?;
        Ok(PeakEwma {
            decay_ns,
            penalty_us: penalty_ns as f64 / 1000.0,
            names: backends.iter().map(|b| b.name.clone()).collect(),
            estimates: vec![Ewma::peak(decay_ns); backends.len()],
            clock: 0,
            steer: Steering::new(config, backends, false)?,
        })
    }

    fn select(&mut self, _req: &Request, health: &[BackendHealth]) -> Result<Decision, String> {
        let s = self.steer.steer(health);
        let now = self.clock;
        let (estimates, penalty) = (&self.estimates, self.penalty_us);
        let cost = |i: usize| {
            let in_flight = f64::from(load(i).in_flight);
            match estimates.get(i) {
                Some(e) if e.is_seeded() => e.value_at(now, 0.0) * (in_flight + 1.0),
                _ if in_flight > 0.0 => penalty + in_flight,
                _ => 0.0,
            }
        };
        p2c(s.health, cost)
            .map(Decision::to)
            .ok_or_else(|| "no healthy backend".to_string())
    }
}

impl Adaptive for PeakEwma {
    fn observe(&mut self, outcomes: &[Outcome]) {
        for o in outcomes {
            self.clock = self.clock.max(o.ended_ns);
            let Some(e) = self.estimates.get_mut(o.backend as usize) else {
                continue;
            };
            let sample = match backend_failed(&o.result) {
                Some(true) => self.penalty_us,
                Some(false) => match o.headers_us {
                    Some(us) => us as f64,
                    None => continue,
                },
                None => continue,
            };
            e.observe(sample, o.ended_ns);
        }
        self.steer.observe(outcomes);
    }

    fn update(&mut self, backends: &[Backend]) -> Result<(), String> {
        let fresh = Ewma::peak(self.decay_ns);
        self.estimates = backends
            .iter()
            .map(|b| {
                self.names
                    .iter()
                    .position(|n| *n == b.name)
                    .and_then(|i| self.estimates.get(i).copied())
                    .unwrap_or(fresh)
            })
            .collect();
        self.names = backends.iter().map(|b| b.name.clone()).collect();
        self.steer.update(backends);
        Ok(())
    }
}

export_adaptive_policy!(PeakEwma);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_policy_sdk::Failure;
    use switchyard_policy_sdk::testing::{self, TestRequest, failed, response};

    fn slow(backend: u32, us: u64) -> Outcome {
        Outcome {
            headers_us: Some(us),
            ..response(backend, 200)
        }
    }

    #[test]
    fn a_slow_or_failing_backend_loses_and_comes_back_as_it_decays() {
        testing::reset();
        let backends = testing::backends(&["a", "b", "c"]);
        let mut p = PeakEwma::configure(&Config::default(), &backends).unwrap();
        let health = testing::healthy(3);
        p.observe(&[
            slow(0, 1_000),
            slow(1, 50_000),
            failed(2, Failure::ConnectFailed),
        ]);
        // Two drawn at random, the cheaper wins: c (failing) never, b (slow)
        // only when drawn with c.
        let mut seen = [0; 3];
        for _ in 0..300 {
            seen[testing::select(&mut p, &TestRequest::get("/"), &health)
                .unwrap()
                .backend as usize] += 1;
        }
        assert_eq!(seen[2], 0, "{seen:?}");
        assert!(seen[0] > seen[1], "{seen:?}");
        // Two minutes later, with a fresh 1 ms answer from a: b's 50 ms and c's 1 s
        // penalty have decayed below a's 1 ms.
        testing::advance_ns(120_000_000_000);
        p.observe(&[slow(0, 1_000)]);
        let mut seen = [0; 3];
        for _ in 0..300 {
            seen[testing::select(&mut p, &TestRequest::get("/"), &health)
                .unwrap()
                .backend as usize] += 1;
        }
        assert!(seen[1] > 0 && seen[2] > 0, "{seen:?}");
    }
}
