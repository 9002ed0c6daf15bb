//! Sticky-session cookies that every proxy with the same config agrees on.
//!
//! The cookie value is derived from the backend's *name* (never its address),
//! with HMAC-SHA-256 when a secret is configured and plain SHA-256 otherwise,
//! truncated to 16 hex digits. No per-process state goes into it, so any
//! number of proxies route the same cookie to the same backend.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::{Config, SameSite, SetCookie};

/// The cookie value that names backend `name`.
pub fn cookie_token(secret: Option<&str>, name: &str) -> String {
    let digest: [u8; 32] = match secret {
        Some(secret) => {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
                .expect("HMAC accepts keys of any length");
            mac.update(name.as_bytes());
            mac.finalize().into_bytes().into()
        }
        None => Sha256::digest(name.as_bytes()).into(),
    };
    let mut out = String::with_capacity(16);
    for byte in &digest[..8] {
        out.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
        out.push(char::from_digit(u32::from(byte & 0xf), 16).unwrap_or('0'));
    }
    out
}

/// [`CookieRouter`] maps cookie values back to backend indices.
#[derive(Debug, Clone)]
pub struct CookieRouter {
    tokens: Vec<String>,
}

impl CookieRouter {
    /// Tokens for each backend name, in configuration order.
    pub fn new<'a>(secret: Option<&str>, names: impl IntoIterator<Item = &'a str>) -> Self {
        CookieRouter {
            tokens: names.into_iter().map(|n| cookie_token(secret, n)).collect(),
        }
    }

    /// The backend a cookie value names, if any.
    pub fn lookup(&self, value: &str) -> Option<usize> {
        self.tokens.iter().position(|t| t == value)
    }

    /// The cookie value for backend `index`.
    pub fn token(&self, index: usize) -> &str {
        &self.tokens[index]
    }
}

/// [`CookieSpec`] is how a policy's cookie is named and what attributes it
/// carries, read from `policy-config`:
///
/// - `cookie`: the name (default given by the policy);
/// - `path`: default `/`;
/// - `domain`: default none (the cookie goes back to the host that set it);
/// - `max-age`: seconds, default none (a session cookie);
/// - `secure`: `true`, `false` or `auto` (default: only over HTTPS);
/// - `http-only`: default `true`;
/// - `same-site`: `strict`, `lax` (default) or `none`.
#[derive(Debug, Clone)]
pub struct CookieSpec {
    /// The cookie's name.
    pub name: String,
    path: String,
    domain: Option<String>,
    max_age: Option<u64>,
    secure: Option<bool>,
    http_only: bool,
    same_site: SameSite,
}

impl CookieSpec {
    /// The `policy-config` keys [`CookieSpec::from_config`] reads.
    pub const KEYS: &'static [&'static str] = &[
        "cookie",
        "path",
        "domain",
        "max-age",
        "secure",
        "http-only",
        "same-site",
    ];

    /// Reads the keys above, with `default_name` when `cookie` is unset.
    pub fn from_config(config: &Config, default_name: &str) -> Result<CookieSpec, String> {
        let name = config.get("cookie").unwrap_or(default_name).to_string();
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        };
        if !token(&name) {
            return Err(format!(
                "policy-config.cookie: {name:?} is not a valid cookie name"
            ));
        }
        let path = config.get("path").unwrap_or("/").to_string();
        if !path.starts_with('/') || path.bytes().any(|b| b == b';' || b.is_ascii_control()) {
            return Err(format!("policy-config.path: {path:?} is not a cookie path"));
        }
        let domain = config.get("domain").map(str::to_string);
        if let Some(d) = &domain
            && (d.is_empty()
                || !d
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
        {
            return Err(format!("policy-config.domain: {d:?} is not a host name"));
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
        Ok(CookieSpec {
            name,
            path,
            domain,
            max_age: config.parse("max-age")?,
            secure,
            http_only: config.parse_or("http-only", true)?,
            same_site,
        })
    }

    /// The cookie with `value`, for a request over HTTPS or not.
    pub fn set(&self, value: &str, https: bool) -> SetCookie {
        SetCookie {
            name: self.name.clone(),
            value: value.to_string(),
            path: Some(self.path.clone()),
            domain: self.domain.clone(),
            max_age: self.max_age,
            http_only: self.http_only,
            secure: self.secure.unwrap_or(https),
            same_site: Some(self.same_site),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stable_and_hex() {
        let t = cookie_token(None, "a");
        // SHA-256("a") starts with ca978112ca1bbdca.
        assert_eq!(t, "ca978112ca1bbdca");
        assert_eq!(cookie_token(None, "a"), t);
    }

    #[test]
    fn a_secret_changes_every_token() {
        assert_ne!(cookie_token(Some("s3cret"), "a"), cookie_token(None, "a"));
        assert_ne!(
            cookie_token(Some("s3cret"), "a"),
            cookie_token(Some("other"), "a")
        );
    }

    #[test]
    fn router_finds_the_backend_a_cookie_names() {
        let r = CookieRouter::new(None, ["a", "b", "c"]);
        assert_eq!(r.lookup(r.token(1)), Some(1));
        assert_eq!(r.lookup("not-a-token"), None);
    }
}
