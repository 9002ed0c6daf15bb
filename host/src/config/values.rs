//! Value syntaxes shared by the config and the request path: durations,
//! sizes, status ranges, HTTP tokens and authorities, and the flattening of
//! `policy-config` for the WIT.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::check::{ConfigError, Locator};

/// A duration such as `"3s"` or `"500ms"`, or `default` when absent.
/// `positive` refuses zero.
pub(super) fn duration(
    loc: &Locator<'_>,
    key: &str,
    v: &Option<Spanned<String>>,
    default: Duration,
    positive: bool,
) -> Result<Duration, ConfigError> {
    let Some(s) = v else { return Ok(default) };
    let d = humantime::parse_duration(s.get_ref().trim()).map_err(|e| {
        loc.error(
            s,
            format!(
                "{key}: {:?} is not a duration like \"3s\" or \"500ms\" ({e})",
                s.get_ref()
            ),
        )
    })?;
    if positive && d.is_zero() {
        return Err(loc.error(s, format!("{key}: must be above 0")));
    }
    Ok(d)
}

/// A size such as `"64KiB"` or `"10MiB"`, in bytes.
pub(super) fn size(loc: &Locator<'_>, key: &str, v: &Spanned<String>) -> Result<u64, ConfigError> {
    v.get_ref()
        .trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| {
            loc.error(
                v,
                format!(
                    "{key}: {:?} is not a size like \"64KiB\" or \"10MiB\" ({e})",
                    v.get_ref()
                ),
            )
        })
}

/// `"200"`, `"200-299"` or `"2xx"` as an inclusive range.
pub fn parse_status_range(s: &str) -> Option<(u16, u16)> {
    let s = s.trim();
    let valid = |c: u16| (100..=599).contains(&c);
    if let Some(class) = s.strip_suffix("xx") {
        let c: u16 = class.parse().ok()?;
        return (1..=5).contains(&c).then_some((c * 100, c * 100 + 99));
    }
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
        None => {
            let c = s.parse().ok()?;
            (c, c)
        }
    };
    (valid(lo) && valid(hi) && lo <= hi).then_some((lo, hi))
}

/// RFC 9110 `tchar`: the characters of a header name or cookie name.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A non-empty RFC 9110 token.
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

/// Whether `s` is a valid `Host` value: `uri-host [ ":" port ]` (RFC 9110
/// §7.2), where the host is a registered name (unreserved, sub-delims and
/// percent-encoded bytes), an IPv4 address or a bracketed IPv6 literal. No
/// userinfo, path, query or whitespace.
pub fn is_authority(s: &str) -> bool {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => ("", port),
                None => return false,
            },
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, p),
            None => (s, ""),
        }
    };
    let port_ok = port.bytes().all(|b| b.is_ascii_digit()) && port.len() <= 5;
    let host_ok = s.starts_with('[')
        || (!host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b)));
    port_ok && host_ok && !(s.contains(':') && !s.starts_with('[') && port.is_empty())
}

/// `$SWITCHYARD_CACHE_DIR`, else `$XDG_CACHE_HOME/switchyard/policies`, else
/// `~/.cache/switchyard/policies`.
pub(super) fn default_cache_dir() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = env("SWITCHYARD_CACHE_DIR") {
        return (dir.as_os_str() != "off").then_some(dir);
    }
    env("XDG_CACHE_HOME")
        .or_else(|| env("HOME").map(|h| h.join(".cache")))
        .map(|c| c.join("switchyard").join("policies"))
}

/// Resolves `host:port` once, at load time (no DNS on the request path).
pub(super) fn resolve(address: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = address.parse::<SocketAddr>() {
        return Ok(a);
    }
    if !address.contains(':') {
        return Err(format!("{address:?} needs a port, as in \"{address}:80\""));
    }
    match address.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("{address:?} resolves to no address")),
        Err(e) => Err(format!("cannot resolve {address:?}: {e}")),
    }
}

/// Flattens a TOML table into dotted keys: strings as is, everything else in
/// TOML syntax.
pub(super) fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, String)>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => flatten(&key, t, out),
            toml::Value::String(s) => out.push((key, s.clone())),
            other => out.push((key, other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges_parse() {
        assert_eq!(parse_status_range("200"), Some((200, 200)));
        assert_eq!(parse_status_range("200-399"), Some((200, 399)));
        assert_eq!(parse_status_range("3xx"), Some((300, 399)));
        assert_eq!(parse_status_range("600"), None);
        assert_eq!(parse_status_range("300-200"), None);
    }

    #[test]
    fn authorities_are_hosts_with_optional_ports() {
        for ok in [
            "example.com",
            "example.com:8080",
            "127.0.0.1",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:443",
            "my_host.local",
            "xn--bcher-kva.example",
        ] {
            assert!(is_authority(ok), "{ok}");
        }
        for bad in [
            "",
            "a/b",
            "a/../b",
            "a?b",
            "user@host",
            "host:",
            "host:80:81",
            "host:port",
            "[::1",
            "[zz]:80",
            "a b",
            "host:123456",
            ":80",
        ] {
            assert!(!is_authority(bad), "{bad}");
        }
    }

    #[test]
    fn tokens_are_tchars() {
        assert!(is_token("sy-backend"));
        assert!(!is_token("a b"));
        assert!(!is_token(""));
        assert!(!is_token("a;b"));
    }
}
