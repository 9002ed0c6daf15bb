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
//! `http-only`, `same-site` (see the SDK's `CookieSpec`).

use switchyard_policy_sdk::{
    Backend, BackendHealth, Config, CookieRouter, CookieSpec, Counter, Decision, Policy, Request,
    WeightedSchedule, export_policy,
};

/// The cookie name used when `policy-config` sets none.
pub const DEFAULT_COOKIE: &str = "sy-backend";

/// Sticky sessions by cookie, weighted round-robin for new sessions.
pub struct Sticky {
    cookie: CookieSpec,
    router: CookieRouter,
    position: Counter,
    schedule: WeightedSchedule,
}

impl Policy for Sticky {
    fn configure(config: &Config, backends: &[Backend]) -> Result<Self, String> {
        let mut keys = CookieSpec::KEYS.to_vec();
        keys.push("secret");
        config.expect_keys(&keys)?;
        Ok(Sticky {
            cookie: CookieSpec::from_config(config, DEFAULT_COOKIE)?,
            router: CookieRouter::new(
                config.get("secret"),
                backends.iter().map(|b| b.name.as_str()),
            ),
            position: Counter::new("sticky-session"),
            schedule: WeightedSchedule::new(backends.iter().map(|b| b.weight).collect()),
        })
    }

    fn select(&mut self, req: &Request, backends: &[BackendHealth]) -> Result<Decision, String> {
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

export_policy!(Sticky);
