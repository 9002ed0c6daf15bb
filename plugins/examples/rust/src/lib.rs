//! Canary routing that backs off: requests with `X-Canary: 1` go to the
//! backends named `canary-*`, all others round-robin over the rest. A
//! backend that answers 5xx or fails is skipped for `backoff` seconds
//! (`policy-config = { backoff = "10" }`, default 10) while its side has
//! another healthy backend.

use switchyard_policy_sdk::{
    Adaptive, AttemptResult, Backend, BackendHealth, Config, Counter, Decision, LogLevel, Outcome,
    Policy, Request, export_adaptive_policy, log, now_ns, nth_where,
};

struct Canary {
    /// The backends' names, to keep what was learned when they change.
    names: Vec<String>,
    /// `canary[i]`: backend `i` is a canary.
    canary: Vec<bool>,
    /// `avoid_until[i]`: skip backend `i` until this time (ns).
    avoid_until: Vec<u64>,
    backoff_ns: u64,
    /// Shared by every instance: round-robin positions for each side.
    canary_turn: Counter,
    stable_turn: Counter,
}

impl Policy for Canary {
    fn configure(config: &Config, backends: &[Backend]) -> Result<Self, String> {
        config.expect_keys(&["backoff"])?;
        let backoff_s: u64 = config.parse_or("backoff", 10)?;
        let canary: Vec<bool> = backends.iter().map(|b| b.name.starts_with("canary-")).collect();
        if !canary.contains(&true) {
            return Err("no backend is named canary-*".into());
        }
        Ok(Canary {
            names: backends.iter().map(|b| b.name.clone()).collect(),
            avoid_until: vec![0; canary.len()],
            canary,
            backoff_ns: backoff_s * 1_000_000_000,
            canary_turn: Counter::new("canary"),
            stable_turn: Counter::new("stable"),
        })
    }

    fn select(&mut self, req: &Request, health: &[BackendHealth]) -> Result<Decision, String> {
        let want = req.header("x-canary").as_deref() == Some("1");
        let turn = if want { &self.canary_turn } else { &self.stable_turn };
        let n = turn.fetch_add(1);
        let now = now_ns();
        let side = |i: usize, b: &BackendHealth| b.healthy && self.canary[i] == want;
        // Prefer the backends not backed off; when all of a side are, use them anyway.
        nth_where(health, n, |i, b| side(i, b) && self.avoid_until[i] <= now)
            .or_else(|| nth_where(health, n, side))
            .map(Decision::to)
            .ok_or_else(|| "no healthy backend in this group".into())
    }
}

impl Adaptive for Canary {
    fn observe(&mut self, outcomes: &[Outcome]) {
        for o in outcomes {
            let bad = match o.result {
                AttemptResult::Response(status) => status >= 500,
                AttemptResult::Failed(_) => true,
            };
            if let Some(until) = self.avoid_until.get_mut(o.backend as usize)
                && bad
            {
                *until = o.ended_ns + self.backoff_ns;
            }
        }
    }

    /// The group changed (a reload): keep each backend's back-off by name.
    fn update(&mut self, backends: &[Backend]) -> Result<(), String> {
        let until = |name: &str| {
            let old = self.names.iter().position(|n| n == name);
            old.map_or(0, |i| self.avoid_until[i])
        };
        self.avoid_until = backends.iter().map(|b| until(&b.name)).collect();
        self.canary = backends.iter().map(|b| b.name.starts_with("canary-")).collect();
        self.names = backends.iter().map(|b| b.name.clone()).collect();
        log(
            LogLevel::Info,
            &format!("now {} backends; back-offs kept by name", backends.len()),
        );
        Ok(())
    }
}

export_adaptive_policy!(Canary);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_policy_sdk::testing::{self, TestRequest, backends, healthy, response};

    fn policy() -> Canary {
        testing::reset();
        let config = Config::new(vec![]);
        Canary::configure(&config, &backends(&["a", "b", "canary-1"])).unwrap()
    }

    #[test]
    fn canary_header_picks_the_canary() {
        let mut p = policy();
        let d = testing::select(&mut p, &TestRequest::get("/").header("x-canary", "1"), &healthy(3));
        assert_eq!(d.unwrap().backend, 2);
    }

    #[test]
    fn a_5xx_backs_the_backend_off() {
        let mut p = policy();
        testing::set_now_ns(1_000);
        p.observe(&[response(0, 503)]);
        for _ in 0..4 {
            let d = testing::select(&mut p, &TestRequest::get("/"), &healthy(3)).unwrap();
            assert_eq!(d.backend, 1);
        }
        testing::advance_ns(11_000_000_000);
        let picks: Vec<u32> = (0..2)
            .map(|_| testing::select(&mut p, &TestRequest::get("/"), &healthy(3)).unwrap().backend)
            .collect();
        assert!(picks.contains(&0), "backed off for good: {picks:?}");
    }

    #[test]
    fn an_update_keeps_back_offs_by_name() {
        let mut p = policy();
        p.observe(&[response(0, 500)]);
        p.update(&backends(&["new", "a", "b", "canary-1"])).unwrap();
        for _ in 0..4 {
            let d = testing::select(&mut p, &TestRequest::get("/"), &healthy(4)).unwrap();
            assert_ne!(d.backend, 1, "`a` was backed off");
        }
    }
}
