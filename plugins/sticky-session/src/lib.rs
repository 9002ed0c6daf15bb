//! `sticky-session`: a cookie keeps each client on one backend.
//!
//! A request without a valid cookie is balanced by smooth weighted
//! round-robin and its response sets a cookie naming the chosen backend.
//! Later requests carrying that cookie go to the same backend while it is
//! healthy; when it is not, they are re-balanced and the cookie re-issued.
//! The cookie value is a hash of the backend's name (keyed by `secret` when
//! set), so proxies with the same config agree without sharing anything.
//!
//! `policy-config` keys, all optional:
//! - `cookie`: cookie name, default `sy-backend`;
//! - `secret`: key for the HMAC of the backend name, default none;
//! - `max-age`: seconds, default none (a session cookie);
//! - `path`: default `/`;
//! - `secure`: `true`, `false` or `auto` (default: only over HTTPS);
//! - `http-only`: default `true`;
//! - `same-site`: `strict`, `lax` (default) or `none`.

use switchyard_policy_sdk::{
    Backend, BackendState, Config, CookieRouter, Counter, Decision, Policy, Request, SameSite,
    SetCookie, WeightedSchedule, export_policy,
};

/// The cookie name used when `policy-config` sets none.
pub const DEFAULT_COOKIE: &str = "sy-backend";

/// Sticky sessions by cookie, weighted round-robin for new sessions.
pub struct Sticky {
    cookie: String,
    router: CookieRouter,
    position: Counter,
    schedule: WeightedSchedule,
    path: String,
    max_age: Option<u64>,
    secure: Option<bool>,
    http_only: bool,
    same_site: SameSite,
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl Policy for Sticky {
    fn configure(config: &Config, backends: &[Backend]) -> Result<Self, String> {
        config.expect_keys(&[
            "cookie",
            "secret",
            "max-age",
            "path",
            "secure",
            "http-only",
            "same-site",
        ])?;
        let cookie = config.get("cookie").unwrap_or(DEFAULT_COOKIE).to_string();
        if !is_token(&cookie) {
            return Err(format!(
                "policy-config.cookie: {cookie:?} is not a valid cookie name"
            ));
        }
        let path = config.get("path").unwrap_or("/").to_string();
        if !path.starts_with('/') || path.bytes().any(|b| b == b';' || b.is_ascii_control()) {
            return Err(format!("policy-config.path: {path:?} is not a cookie path"));
        }
        let secure = match config.get("secure").unwrap_or("auto") {
            "auto" => None,
            "true" => Some(true),
            "false" => Some(false),
            other => {
                return Err(format!(
                    "policy-config.secure: expected true, false or \"auto\", got {other}"
                ));
            }
        };
        let same_site = match config.get("same-site").unwrap_or("lax") {
            "strict" => SameSite::Strict,
            "lax" => SameSite::Lax,
            "none" => SameSite::None,
            other => {
                return Err(format!(
                    "policy-config.same-site: expected \"strict\", \"lax\" or \"none\", got {other:?}"
                ));
            }
        };
        Ok(Sticky {
            router: CookieRouter::new(
                config.get("secret"),
                backends.iter().map(|b| b.name.as_str()),
            ),
            cookie,
            position: Counter::new("sticky-session"),
            schedule: WeightedSchedule::new(backends.iter().map(|b| b.weight).collect()),
            path,
            max_age: config.parse("max-age")?,
            secure,
            http_only: config.parse_or("http-only", true)?,
            same_site,
        })
    }

    fn select(&mut self, req: &Request, backends: &[BackendState]) -> Result<Decision, String> {
        if let Some(value) = req.cookie(&self.cookie)
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
        Ok(Decision {
            backend: chosen as u32,
            set_cookie: Some(SetCookie {
                name: self.cookie.clone(),
                value: self.router.token(chosen).to_string(),
                path: Some(self.path.clone()),
                max_age: self.max_age,
                http_only: self.http_only,
                secure: self.secure.unwrap_or_else(|| req.scheme() == "https"),
                same_site: Some(self.same_site),
            }),
        })
    }
}

export_policy!(Sticky);
