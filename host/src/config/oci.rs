//! `oci://` references: where a policy is pulled from, in the grammar of
//! the OCI distribution reference (`REGISTRY/REPO[:TAG][@sha256:DIGEST]`),
//! with Docker's defaults (no registry: `docker.io`, its one-part names
//! under `library/`; no tag and no digest: `latest`).

use std::fmt;

/// The registry a reference without one names.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The tag a reference without tag or digest names.
pub const DEFAULT_TAG: &str = "latest";

/// [`OciReference`] names one artifact in a registry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OciReference {
    /// `host[:port]`, as written (or [`DEFAULT_REGISTRY`]).
    pub registry: String,
    /// The repository path, e.g. `policies/weighted`.
    pub repository: String,
    /// The tag, if one was written (or [`DEFAULT_TAG`] when neither a tag
    /// nor a digest was).
    pub tag: Option<String>,
    /// `sha256:HEX`, the manifest's digest, if one was written; it wins
    /// over the tag.
    pub digest: Option<String>,
    /// The registry is listed in `[server] insecure-registries`: it is
    /// spoken to over plain HTTP.
    pub plain_http: bool,
}

impl OciReference {
    /// Parses `REGISTRY/REPO[:TAG][@sha256:DIGEST]`, with or without the
    /// `oci://` in front; the error says what is wrong.
    pub fn parse(text: &str) -> Result<OciReference, String> {
        let text = text.trim();
        let rest = text.strip_prefix("oci://").unwrap_or(text);
        let (name, digest) = match rest.split_once('@') {
            Some((n, d)) => (n, Some(parse_digest(d)?)),
            None => (rest, None),
        };
        // A tag follows the last ':' after the last '/' (a ':' before it is
        // the registry's port).
        let slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[slash..].rfind(':') {
            Some(i) => (&name[..slash + i], Some(&name[slash + i + 1..])),
            None => (name, None),
        };
        if let Some(t) = tag
            && !is_tag(t)
        {
            return Err(format!(
                "{t:?} is not a tag (letters, digits, '_', '.' and '-', at most 128, not starting with '.' or '-')"
            ));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, repo)) if is_registry_like(first) => (first.to_string(), repo.to_string()),
            _ if !name.contains('/') && !name.is_empty() => {
                (DEFAULT_REGISTRY.to_string(), format!("library/{name}"))
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        if !is_host_port(&registry) {
            return Err(format!("{registry:?} is not a registry host[:port]"));
        }
        if !is_repository(&repository) {
            return Err(format!(
                "{repository:?} is not a repository (lower-case path components of letters and digits, separated by '/', '.', '_' or '-')"
            ));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (None, Some(_)) => None,
        };
        Ok(OciReference {
            registry,
            repository,
            tag,
            digest,
            plain_http: false,
        })
    }
}

impl fmt::Display for OciReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "oci://{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// `sha256:` and 64 hex digits, lower-cased; other algorithms are refused.
fn parse_digest(d: &str) -> Result<String, String> {
    let Some(hex) = d.strip_prefix("sha256:") else {
        return Err(format!(
            "{d:?} is not a digest: only sha256:HEX (64 hex digits) is supported"
        ));
    };
    parse_sha256(hex)
        .map(|h| format!("sha256:{h}"))
        .ok_or_else(|| format!("{d:?} is not a digest: sha256: needs 64 hex digits"))
}

/// A SHA-256 written as 64 hex digits (optionally after `sha256:`),
/// lower-cased; `None` if it is not one.
pub fn parse_sha256(text: &str) -> Option<String> {
    let hex = text.trim();
    let hex = hex.strip_prefix("sha256:").unwrap_or(hex);
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}

/// Docker's rule: a first component with a '.' or a ':', or `localhost`,
/// names a registry; otherwise it is part of a Docker Hub repository.
fn is_registry_like(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost"
}

/// `host[:port]`: a DNS name, an IPv4 address or a bracketed IPv6 one.
fn is_host_port(s: &str) -> bool {
    // The host, unless it is an IPv6 literal (checked here), and the port.
    let (host, port) = match s.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, after)) if v6.parse::<std::net::Ipv6Addr>().is_ok() => {
                match after.strip_prefix(':') {
                    Some(p) => (None, Some(p)),
                    None if after.is_empty() => (None, None),
                    None => return false,
                }
            }
            _ => return false,
        },
        None => match s.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(s), None),
        },
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    let label = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    port_ok && host.is_none_or(|h| h.split('.').all(label))
}

/// Lower-case path components of letters and digits joined by `.`, `_`,
/// `__` or runs of `-`, separated by `/`.
fn is_repository(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.split('/').all(|part| {
            let b = part.as_bytes();
            let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
            if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
                return false;
            }
            // Separators: '.', '_', '__' or any run of '-', between alnums.
            let mut i = 0;
            while i < b.len() {
                if alnum(b[i]) {
                    i += 1;
                    continue;
                }
                let start = i;
                while i < b.len() && !alnum(b[i]) {
                    i += 1;
                }
                let sep = &part[start..i];
                let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
                if !ok {
                    return false;
                }
            }
            true
        })
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn is_tag(t: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b.iter().all(|&c| word(c) || c == b'.' || c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn parse(s: &str) -> OciReference {
        OciReference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn a_registry_with_a_port_is_not_a_tag() {
        let r = parse("oci://127.0.0.1:5000/policies/weighted:v1");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "policies/weighted");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.digest, None);
        // No tag: latest, and the port stays the registry's.
        let r = parse("oci://localhost:5000/weighted");
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.tag.as_deref(), Some("latest"));
    }

    #[test]
    fn nested_repository_paths_are_kept_whole() {
        let r = parse("oci://ghcr.io/acme/edge/policies/canary-v2:2024.11");
        assert_eq!(r.registry, "ghcr.io");
        assert_eq!(r.repository, "acme/edge/policies/canary-v2");
        assert_eq!(r.tag.as_deref(), Some("2024.11"));
        assert_eq!(
            r.to_string(),
            "oci://ghcr.io/acme/edge/policies/canary-v2:2024.11"
        );
    }

    #[test]
    fn a_digest_names_the_manifest_and_wins_over_no_tag() {
        let r = parse(&format!("oci://registry.example:443/p/w@sha256:{D}"));
        assert_eq!(r.tag, None);
        assert_eq!(r.digest, Some(format!("sha256:{D}")));
        let r = parse(&format!(
            "oci://registry.example/p/w:v1@sha256:{}",
            D.to_uppercase()
        ));
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.digest, Some(format!("sha256:{D}")), "lower-cased");
        assert_eq!(
            r.to_string(),
            format!("oci://registry.example/p/w:v1@sha256:{D}")
        );
    }

    #[test]
    fn without_a_registry_docker_hub_is_meant() {
        let r = parse("oci://weighted");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "library/weighted")
        );
        assert_eq!(r.tag.as_deref(), Some("latest"));
        let r = parse("acme/weighted:v3");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "acme/weighted")
        );
    }

    #[test]
    fn malformed_references_say_what_is_wrong() {
        for (bad, says) in [
            ("oci://127.0.0.1:5000/Policies/w:v1", "not a repository"),
            ("oci://127.0.0.1:5000/p/w:", "not a tag"),
            ("oci://127.0.0.1:5000/p/w:.v1", "not a tag"),
            ("oci://127.0.0.1:5000/p/../w", "not a repository"),
            ("oci://127.0.0.1:5000/p/w@sha256:abc", "64 hex digits"),
            ("oci://127.0.0.1:5000/p/w@md5:abc", "only sha256"),
            ("oci://127.0.0.1:99999/p/w", "not a registry"),
            ("oci://", "not a repository"),
            ("oci://127.0.0.1:5000/", "not a repository"),
        ] {
            let e = OciReference::parse(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn sha256_pins_take_hex_with_or_without_the_prefix() {
        assert_eq!(parse_sha256(D).as_deref(), Some(D));
        assert_eq!(
            parse_sha256(&format!("sha256:{}", D.to_uppercase())).as_deref(),
            Some(D)
        );
        assert_eq!(parse_sha256("abc"), None);
        assert_eq!(parse_sha256(&format!("{D}0")), None);
    }
}
