//! Header rewriting between client and backend: hop-by-hop headers out,
//! `X-Forwarded-*` in, and the client address as the proxy believes it.
//!
//! Incoming forwarding headers (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`
//! and their kin) are believed only from peers listed in
//! `server.trusted-proxies`; from anyone else they are replaced or
//! dropped, so a client cannot pose as another address, scheme, host, port
//! or path prefix.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use smallvec::SmallVec;

use super::client::Peer;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Forwarding headers other proxies and frameworks use that this proxy does
/// not set: from an untrusted peer they are dropped, since a backend might
/// believe them.
static UNTRUSTED: [HeaderName; 9] = [
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("x-client-ip"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("x-original-forwarded-for"),
];

/// Whether `ip` is one of the trusted proxies.
pub fn is_trusted(trusted: &[IpNet], ip: IpAddr) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// The client's address: the TCP peer, or, when the peer is a trusted
/// proxy, the right-most address in `X-Forwarded-For` that is not itself a
/// trusted proxy.
pub fn client_ip(headers: &HeaderMap, peer: IpAddr, trusted: &[IpNet]) -> IpAddr {
    if !is_trusted(trusted, peer) {
        return peer;
    }
    let mut client = peer;
    let hops = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(trusted, ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

/// What [`strip`] saw in a message's headers.
#[derive(Debug, Default)]
pub struct Stripped {
    /// `Connection` named `upgrade`.
    pub upgrade: bool,
    /// The `Upgrade` header's value (removed).
    pub upgrade_value: Option<HeaderValue>,
    /// `Connection` named `close`.
    pub close: bool,
    /// There was a `Transfer-Encoding` (removed).
    pub transfer_encoding: bool,
    /// `Cookie` fields.
    pub cookies: usize,
    /// There was an `Expect` (left in place).
    pub expect: bool,
}

/// Removes, in one pass over the headers: the hop-by-hop ones (RFC 9110
/// §7.6.1, `Proxy-Connection`, the proxy auth headers meant for this hop,
/// and any named in `Connection` except `Host`; `TE: trailers` is kept)
/// and, for a request from an untrusted peer (`untrusted` is
/// `Some(keep_forwarded)`), the forwarding headers this proxy does not
/// believe, `Forwarded` too unless it is to be replaced. Says what it saw.
pub fn strip(headers: &mut HeaderMap, untrusted: Option<bool>) -> Stripped {
    let mut seen = Stripped::default();
    let mut remove: SmallVec<[HeaderName; 8]> = SmallVec::new();
    let push = |remove: &mut SmallVec<[HeaderName; 8]>, n: &HeaderName| {
        if !remove.contains(n) {
            remove.push(n.clone());
        }
    };
    for (name, value) in headers.iter() {
        match name.as_str() {
            "connection" => {
                push(&mut remove, name);
                let tokens = value.to_str().ok().into_iter().flat_map(|v| v.split(','));
                for t in tokens.map(str::trim) {
                    if t.eq_ignore_ascii_case("upgrade") {
                        seen.upgrade = true;
                    } else if t.eq_ignore_ascii_case("close") {
                        seen.close = true;
                    } else if !t.eq_ignore_ascii_case("keep-alive")
                        && let Ok(n) = HeaderName::from_bytes(t.as_bytes())
                        // `Connection: host` must not take the Host away.
                        && n != header::HOST
                    {
                        push(&mut remove, &n);
                    }
                }
            }
            "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "trailer" => push(&mut remove, name),
            "transfer-encoding" => {
                seen.transfer_encoding = true;
                push(&mut remove, name);
            }
            "upgrade" => {
                seen.upgrade_value = Some(value.clone());
                push(&mut remove, name);
            }
            "te" if !value.as_bytes().eq_ignore_ascii_case(b"trailers") => push(&mut remove, name),
            "cookie" => seen.cookies += 1,
            "expect" => seen.expect = true,
            "forwarded" if untrusted == Some(false) => push(&mut remove, name),
            n if untrusted.is_some() && UNTRUSTED.iter().any(|u| u.as_str() == n) => {
                push(&mut remove, name)
            }
            _ => {}
        }
    }
    for name in remove {
        headers.remove(name);
    }
    seen
}

/// Removes the hop-by-hop headers (see [`strip`]).
pub fn remove_hop_by_hop(headers: &mut HeaderMap) -> Stripped {
    strip(headers, None)
}

/// Joins several `Cookie` fields into one, separated by `; ` (RFC 9113
/// §8.2.3: an HTTP/2 client may split its cookies, an HTTP/1.1 backend
/// expects one field).
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut fields = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (fields.next(), fields.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for v in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// Sets `X-Forwarded-For`, `-Proto` and `-Host` on a request going to a
/// backend. `peer` is the TCP peer; `host` the `Host` the client asked for.
pub fn set_forwarded(headers: &mut HeaderMap, peer: &Peer, trusted_peer: bool, https: bool) {
    let xff = match headers.get(&X_FORWARDED_FOR) {
        Some(prev) if trusted_peer => {
            let mut joined = Vec::with_capacity(prev.len() + 2 + peer.ip_value.len());
            joined.extend_from_slice(prev.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(peer.ip_value.as_bytes());
            HeaderValue::from_bytes(&joined).ok()
        }
        _ => None,
    };
    let xff = xff.unwrap_or_else(|| peer.ip_value.clone());
    // A repeated header from a trusted peer has been folded into `prev`
    // only if it was a single line; keep it simple and authoritative.
    headers.insert(&X_FORWARDED_FOR, xff);

    if !(trusted_peer && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(
            &X_FORWARDED_PROTO,
            HeaderValue::from_static(if https { "https" } else { "http" }),
        );
    }
    if !(trusted_peer && headers.contains_key(&X_FORWARDED_HOST)) {
        match headers.get(header::HOST).cloned() {
            Some(host) => {
                headers.insert(&X_FORWARDED_HOST, host);
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
}

/// One `Forwarded` element (RFC 7239) for a request from `peer`.
fn forwarded_element(peer: IpAddr, https: bool, host: Option<&HeaderValue>) -> String {
    let node = match peer {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let mut out = format!("for={node};proto={}", if https { "https" } else { "http" });
    if let Some(h) = host.and_then(|h| h.to_str().ok()) {
        let token = !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if token {
            out.push_str(&format!(";host={h}"));
        } else if !h.contains(['"', '\\']) {
            out.push_str(&format!(";host=\"{h}\""));
        }
    }
    out
}

/// Sets the RFC 7239 `Forwarded` header: appended to a trusted peer's,
/// otherwise replacing whatever the client sent.
pub fn set_rfc7239(headers: &mut HeaderMap, peer: IpAddr, trusted_peer: bool, https: bool) {
    let element = forwarded_element(peer, https, headers.get(header::HOST));
    let value = match headers.get(header::FORWARDED) {
        Some(prev) if trusted_peer => {
            let mut joined = prev.as_bytes().to_vec();
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(element.as_bytes());
            HeaderValue::from_bytes(&joined).ok()
        }
        _ => None,
    };
    match value.or_else(|| HeaderValue::from_str(&element).ok()) {
        Some(v) => {
            headers.insert(header::FORWARDED, v);
        }
        None => {
            headers.remove(header::FORWARDED);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn peer(s: &str) -> Peer {
        Peer::new(std::net::SocketAddr::new(ip(s), 5000))
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn an_untrusted_peer_cannot_spoof_x_forwarded_for() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("host", "a.example"),
        ]);
        set_forwarded(&mut h, &peer("127.0.0.1"), false, false);
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.example");
        assert_eq!(
            client_ip(
                &map(&[("x-forwarded-for", "6.6.6.6")]),
                ip("127.0.0.1"),
                &[]
            ),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn a_trusted_peer_has_its_chain_appended_and_believed() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let incoming = map(&[
            ("x-forwarded-for", "203.0.113.9, 10.1.1.1"),
            ("x-forwarded-proto", "https"),
        ]);
        assert_eq!(
            client_ip(&incoming, ip("10.0.0.2"), &trusted),
            ip("203.0.113.9")
        );
        let mut h = incoming.clone();
        set_forwarded(&mut h, &peer("10.0.0.2"), true, false);
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 10.1.1.1, 10.0.0.2");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn forwarded_follows_rfc_7239() {
        let mut h = map(&[("forwarded", "for=6.6.6.6"), ("host", "shop.example:8443")]);
        set_rfc7239(&mut h, ip("::1"), false, true);
        assert_eq!(
            h["forwarded"],
            "for=\"[::1]\";proto=https;host=\"shop.example:8443\""
        );
        let mut h = map(&[("forwarded", "for=203.0.113.9"), ("host", "shop.example")]);
        set_rfc7239(&mut h, ip("10.0.0.2"), true, false);
        assert_eq!(
            h["forwarded"],
            "for=203.0.113.9, for=10.0.0.2;proto=http;host=shop.example"
        );
    }

    #[test]
    fn hop_by_hop_headers_are_removed_including_connection_tokens() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "gzip"),
            ("transfer-encoding", "chunked"),
            ("accept", "*/*"),
        ]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("accept"));
        let mut h = map(&[("te", "trailers")]);
        remove_hop_by_hop(&mut h);
        assert!(h.contains_key("te"));
    }

    #[test]
    fn connection_cannot_name_host() {
        let mut h = map(&[
            ("connection", "host, x-a"),
            ("host", "a.example"),
            ("x-a", "1"),
        ]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h["host"], "a.example");
        assert!(!h.contains_key("x-a"));
    }

    #[test]
    fn cookie_fields_are_joined_in_order() {
        let mut h = map(&[
            ("cookie", "session=abc123"),
            ("cookie", "csrf=xyz"),
            ("cookie", "theme=dark"),
        ]);
        join_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h["cookie"], "session=abc123; csrf=xyz; theme=dark");
        let mut one = map(&[("cookie", "a=1")]);
        join_cookies(&mut one);
        assert_eq!(one["cookie"], "a=1");
    }

    #[test]
    fn untrusted_forwarding_headers_are_dropped() {
        let mut h = map(&[
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-prefix", "/admin"),
            ("forwarded", "for=6.6.6.6"),
            ("accept", "*/*"),
        ]);
        strip(&mut h, Some(false));
        assert_eq!(h.len(), 1, "{h:?}");
    }
}
