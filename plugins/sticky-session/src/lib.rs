//! `sticky-session`: a cookie keeps each client on one backend.
//!
//! A request without a valid cookie is balanced by smooth weighted
//! round-robin and its response sets a cookie naming the chosen backend.
//! Later requests carrying that cookie go to the same backend while it is
//! healthy; when it is not, they are re-balanced and the cookie re-issued.
//! The cookie value is a hash of the backend's name (keyed by `secret` when
//! set), so proxies with the same config agree without sharing anything.
//!
//! `policy-config` keys, all optional: `cookie` (default `sy-backend`),
//! `secret`, and the cookie attributes `path`, `domain`, `max-age`, `secure`,
//! `http-only`, `same-site` (see the SDK's `CookieSpec`); outlier ejection
//! and zone preference as for `round-robin` (an ejected backend's clients
//! are re-balanced and get a new cookie).

use switchyard_policy_sdk::{
    Adaptive, Backend, BackendHealth, Config, CookieRouter, CookieSpec, Counter, Decision, Outcome,
    Policy, Request, STEERING_KEYS, Steering, WeightedSchedule, export_adaptive_policy,
    ignore_outcomes,
};

/// The cookie name used when `policy-config` sets none.
pub const DEFAULT_COOKIE: &str = "sy-backend";

/// Sticky sessions by cookie, weighted round-robin for new sessions.
pub struct Sticky {
    cookie: CookieSpec,
    router: CookieRouter,
    position: Counter,
    schedule: WeightedSchedule,
    secret: Option<String>,
    steer: Steering,
}

impl Policy for Sticky {
    fn configure(config: &Config, backends: &[Backend]) -> Result<Self, String> {
        let mut keys = CookieSpec::KEYS.to_vec();
        keys.push("secret");
        keys.extend_from_slice(STEERING_KEYS);
        config.expect_keys(&keys)?;
        let steer = Steering::new(config, backends, false)?;
        if !steer.wants_outcomes() {
            ignore_outcomes();
        }
        Ok(Sticky {
            cookie: CookieSpec::from_config(config, DEFAULT_COOKIE)?,
            router: CookieRouter::new(
                config.get("secret"),
                backends.iter().map(|b| b.name.as_str()),
            ),
            position: Counter::new("sticky-session"),
            schedule: WeightedSchedule::new(backends.iter().map(|b| b.weight).collect()),
            secret: config.get("secret").map(str::to_string),
            steer,
        })
    }

    fn select(&mut self, req: &Request, health: &[BackendHealth]) -> Result<Decision, String> {
        let backends = self.steer.steer(health).health;
        if let Some(value) = req.cookie(&self.cookie.name)
            && let Some(i) = self.router.lookup(&value)
            && backends.get(i).is_some_and(|b| b.healthy)
        {
            return Ok(Decision::to(i));
        }
        let n = self.position.fetch_add(1);
        let chosen = self
            .schedule
            .pick(backends, n)
            .ok_or_else(|| "no healthy backend".to_string())?;
        Ok(Decision::to(chosen).with_cookie(
            self.cookie
                .set(self.router.token(chosen), req.scheme() == "https"),
        ))
    }
}

impl Adaptive for Sticky {
    fn observe(&mut self, outcomes: &[Outcome]) {
        self.steer.observe(outcomes);
    }

    fn update(&mut self, backends: &[Backend]) -> Result<(), String> {
        self.router = CookieRouter::new(
            self.secret.as_deref(),
            backends.iter().map(|b| b.name.as_str()),
        );
        self.schedule = WeightedSchedule::new(backends.iter().map(|b| b.weight).collect());
        self.steer.update(backends);
        Ok(())
    }
}

export_adaptive_policy!(Sticky);
