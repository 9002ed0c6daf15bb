//! The client's request head, checked and made fit for a backend.
//!
//! [`check`] refuses what a proxy must not pass on (400: several `Host`
//! fields, none in HTTP/1.1, one that is not a host and port, an HTTP/2
//! `host` that disagrees with `:authority`; 405: `CONNECT`) and leaves one
//! `Host` naming the authority the request is for (an absolute-form
//! target's authority wins, RFC 9112 §3.2.2). [`rewrite`] then strips
//! hop-by-hop headers, joins cookie fields, sets the forwarding headers,
//! keeps only allowed upgrades and makes the target origin-form HTTP/1.1.

use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, HOST, TRANSFER_ENCODING, UPGRADE};
use http::request::Parts;
use http::{HeaderValue, Method, StatusCode, Uri, Version};
use hyper::upgrade::OnUpgrade;

use super::client::ClientConn;
use super::headers::{Stripped, is_trusted, join_cookies, set_forwarded, set_rfc7239, strip};
use super::runtime::Runtime;
use crate::config::values::is_authority;

/// Why a request is refused before it is routed.
pub type Refusal = (StatusCode, &'static str);

/// See the module docs.
pub fn check(parts: &mut Parts) -> Result<(), Refusal> {
    const BAD: StatusCode = StatusCode::BAD_REQUEST;
    if parts.method == Method::CONNECT {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not served by this proxy",
        ));
    }
    let mut hosts = parts.headers.get_all(HOST).iter();
    let host = hosts.next().cloned();
    if hosts.next().is_some() {
        return Err((BAD, "more than one Host header"));
    }
    let authority = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    let (host, replace) = match (parts.version, authority, host) {
        // HTTP/2: `:authority`, and a `host` field only if it agrees.
        (Version::HTTP_2, Some(a), Some(h)) => {
            if !a.as_bytes().eq_ignore_ascii_case(h.as_bytes()) {
                return Err((BAD, "the host header disagrees with :authority"));
            }
            (h, false)
        }
        // HTTP/1.x absolute form: the target's authority replaces `Host`.
        (_, Some(a), h) => {
            let same = h.is_some_and(|h| h == a);
            (a, !same)
        }
        (_, None, Some(h)) => (h, false),
        (Version::HTTP_10 | Version::HTTP_09, None, None) => return Ok(()),
        (_, None, None) => return Err((BAD, "no Host header")),
    };
    if !host.to_str().is_ok_and(is_authority) {
        return Err((BAD, "the Host header is not a host name and port"));
    }
    if replace {
        parts.headers.insert(HOST, host);
    }
    Ok(())
}

/// An upgrade the client asked for and the config allows (`Connection:
/// upgrade` + `Upgrade: x` over HTTP/1.1): the protocol and the client side
/// of the future tunnel.
pub type Upgrade = (HeaderValue, OnUpgrade);

fn take_upgrade(parts: &mut Parts, seen: &Stripped, allowed: &[String]) -> Option<Upgrade> {
    if parts.version != Version::HTTP_11 || !seen.upgrade {
        return None;
    }
    let protocol = seen.upgrade_value.clone()?;
    // `Upgrade: websocket` (a version suffix such as `/13` is allowed);
    // one protocol only: a list would let the backend pick one we refuse.
    let name = protocol.to_str().ok()?.trim();
    let base = name.split('/').next().unwrap_or(name);
    if name.contains(',') || !allowed.iter().any(|a| a.eq_ignore_ascii_case(base)) {
        return None;
    }
    Some((protocol, parts.extensions.remove::<OnUpgrade>()?))
}

/// See the module docs. `body_unsized` says the request has a body of
/// unknown length (chunked, or HTTP/2 DATA without `content-length`).
pub fn rewrite(
    parts: &mut Parts,
    client: &ClientConn,
    rt: &Runtime,
    body_unsized: bool,
) -> Option<Upgrade> {
    let peer = &client.peer;
    let trusted = is_trusted(&rt.config.trusted_proxies, peer.ip());
    let seen = strip(
        &mut parts.headers,
        (!trusted).then_some(rt.config.forwarded),
    );
    let upgrade = take_upgrade(parts, &seen, &rt.config.upgrades);
    // RFC 9112 §6.3: with Transfer-Encoding, Content-Length means nothing;
    // passing both on would let the backend read a different body.
    if seen.transfer_encoding {
        parts.headers.remove(CONTENT_LENGTH);
    }
    // The client's `Expect: 100-continue` was answered by this proxy.
    if seen.expect {
        parts.headers.remove(EXPECT);
    }
    if seen.cookies > 1 {
        join_cookies(&mut parts.headers);
    }
    set_forwarded(&mut parts.headers, peer, trusted, client.https);
    if rt.config.forwarded {
        set_rfc7239(&mut parts.headers, peer.ip(), trusted, client.https);
    }
    if parts.uri.authority().is_some() {
        parts.uri = parts
            .uri
            .path_and_query()
            .map(|pq| Uri::from(pq.clone()))
            .unwrap_or_else(|| Uri::from_static("/"));
    }
    parts.version = Version::HTTP_11;
    // hyper sends a GET or HEAD body of unknown length only if told to.
    if body_unsized && !parts.headers.contains_key(CONTENT_LENGTH) {
        parts
            .headers
            .insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    }
    if let Some((protocol, _)) = &upgrade {
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(UPGRADE, protocol.clone());
    }
    upgrade
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(req: http::request::Builder) -> Parts {
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn host_rules() {
        let mut p = parts(http::Request::get("/").header("host", "a.example"));
        assert!(check(&mut p).is_ok());
        let mut p = parts(
            http::Request::get("/")
                .header("host", "a.example")
                .header("host", "b.example"),
        );
        assert_eq!(check(&mut p).unwrap_err().0, StatusCode::BAD_REQUEST);
        let mut p = parts(http::Request::get("/"));
        assert_eq!(check(&mut p).unwrap_err().0, StatusCode::BAD_REQUEST);
        let mut p = parts(http::Request::get("/").version(Version::HTTP_10));
        assert!(check(&mut p).is_ok());
        let mut p = parts(http::Request::get("/").header("host", "a/../b?@c"));
        assert_eq!(check(&mut p).unwrap_err().0, StatusCode::BAD_REQUEST);
        let mut p =
            parts(http::Request::get("http://real.example:81/x").header("host", "fake.example"));
        assert!(check(&mut p).is_ok());
        assert_eq!(p.headers[HOST], "real.example:81");
        let mut p = parts(
            http::Request::get("https://a.example/")
                .version(Version::HTTP_2)
                .header("host", "b.example"),
        );
        assert_eq!(check(&mut p).unwrap_err().0, StatusCode::BAD_REQUEST);
        let mut p = parts(http::Request::get("https://a.example/").version(Version::HTTP_2));
        assert!(check(&mut p).is_ok());
        assert_eq!(p.headers[HOST], "a.example");
        let mut p = parts(http::Request::connect("a.example:443").header("host", "a.example:443"));
        assert_eq!(check(&mut p).unwrap_err().0, StatusCode::METHOD_NOT_ALLOWED);
    }
}
