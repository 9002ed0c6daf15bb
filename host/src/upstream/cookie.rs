//! A policy's `set-cookie` request checked and rendered as a `Set-Cookie`
//! header: nothing a policy writes can add an attribute or break the
//! header.

use crate::config::values::is_token;
use crate::policy::{CookieSpec, PolicyFailure, SameSite};

/// RFC 6265 cookie-octet: visible ASCII except `"`, `,`, `;`, `\`.
fn is_cookie_value(s: &str) -> bool {
    s.bytes()
        .all(|b| (0x21..=0x7e).contains(&b) && !matches!(b, b'"' | b',' | b';' | b'\\'))
}

/// The `Set-Cookie` value for `c`, or why it is refused.
pub(super) fn render(c: CookieSpec) -> Result<http::HeaderValue, PolicyFailure> {
    if !is_token(&c.name) {
        return Err(PolicyFailure::BadCookie(format!("name {:?}", c.name)));
    }
    if !is_cookie_value(&c.value) {
        return Err(PolicyFailure::BadCookie(format!("value {:?}", c.value)));
    }
    let path = c.path.as_deref().unwrap_or("/");
    if path
        .bytes()
        .any(|b| b == b';' || !(0x20..0x7f).contains(&b))
    {
        return Err(PolicyFailure::BadCookie(format!("path {path:?}")));
    }
    let mut out = format!("{}={}; Path={path}", c.name, c.value);
    if let Some(domain) = &c.domain {
        // A host name: letters, digits, `-` and `.`, nothing to add an
        // attribute with.
        let host = domain.strip_prefix('.').unwrap_or(domain);
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(PolicyFailure::BadCookie(format!("domain {domain:?}")));
        }
        out.push_str(&format!("; Domain={host}"));
    }
    if let Some(age) = c.max_age {
        out.push_str(&format!("; Max-Age={age}"));
    }
    if c.http_only {
        out.push_str("; HttpOnly");
    }
    if c.secure {
        out.push_str("; Secure");
    }
    match c.same_site {
        Some(SameSite::Strict) => out.push_str("; SameSite=Strict"),
        Some(SameSite::Lax) => out.push_str("; SameSite=Lax"),
        Some(SameSite::None) => out.push_str("; SameSite=None"),
        None => {}
    }
    http::HeaderValue::from_str(&out).map_err(|_| PolicyFailure::BadCookie(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookie(name: &str, value: &str) -> CookieSpec {
        CookieSpec {
            name: name.into(),
            value: value.into(),
            path: None,
            domain: None,
            max_age: None,
            http_only: true,
            secure: false,
            same_site: Some(SameSite::Lax),
        }
    }

    #[test]
    fn cookies_render_with_their_attributes() {
        let mut c = cookie("sy-backend", "abc123");
        c.max_age = Some(60);
        c.secure = true;
        let v = render(c).unwrap();
        assert_eq!(
            v.to_str().unwrap(),
            "sy-backend=abc123; Path=/; Max-Age=60; HttpOnly; Secure; SameSite=Lax"
        );
    }

    #[test]
    fn cookies_that_could_inject_attributes_are_refused() {
        assert!(render(cookie("a b", "x")).is_err());
        assert!(render(cookie("a", "x; Domain=evil")).is_err());
        let mut c = cookie("a", "x");
        c.path = Some("/; Secure".into());
        assert!(render(c).is_err());
        let mut c = cookie("a", "x");
        c.domain = Some("example.com; Secure".into());
        assert!(render(c).is_err());
    }

    #[test]
    fn a_domain_is_a_host_name() {
        let mut c = cookie("a", "x");
        c.domain = Some(".shop.example".into());
        c.http_only = false;
        c.same_site = None;
        assert_eq!(
            render(c).unwrap().to_str().unwrap(),
            "a=x; Path=/; Domain=shop.example"
        );
    }
}
