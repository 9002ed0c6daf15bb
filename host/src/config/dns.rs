//! `dns` and `srv` backend entries, `dns-refresh` and `[server]
//! resolver`: `{ name = "app", dns = "app.internal:8000" }` stands for
//! every A and AAAA address of the name, `{ name = "app", srv =
//! "_http._tcp.app.internal" }` for every SRV record. Only checked here:
//! the lookups are the control layer's, and [`super::discovery`] places
//! what they find in a group.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use toml::Spanned;

use super::check::Checker;
use super::file::FileBackend;
use super::values::duration;

/// How often a group's DNS entries are looked up when `dns-refresh` is not
/// set (a record's shorter TTL wins).
pub const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(5);
/// The shortest time between two lookups of one entry, whatever
/// `dns-refresh` or a record's TTL (0 is common, e.g. Consul's) says.
pub const MIN_DNS_REFRESH: Duration = Duration::from_secs(1);

/// What a DNS entry asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DnsQuery {
    /// `dns = "host:port"`: the A and AAAA records of `host`, each address
    /// with `port`.
    Host {
        /// The name looked up.
        host: String,
        /// The backends' port.
        port: u16,
    },
    /// `srv = "_service._proto.name"`: the SRV records of the name, each
    /// giving a target (looked up in turn), a port and a weight.
    Srv(String),
}

impl DnsQuery {
    /// The config key: `dns` or `srv`.
    pub fn key(&self) -> &'static str {
        match self {
            DnsQuery::Host { .. } => "dns",
            DnsQuery::Srv(_) => "srv",
        }
    }
}

impl fmt::Display for DnsQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsQuery::Host { host, port } => write!(f, "{host}:{port}"),
            DnsQuery::Srv(name) => f.write_str(name),
        }
    }
}

/// A `dns` or `srv` backend entry: it stands for every backend its lookup
/// finds, each with the entry's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsBackends {
    /// The entry's name; each backend is named `NAME/TARGET:PORT`.
    pub name: String,
    /// What is looked up.
    pub query: DnsQuery,
    /// Each backend's weight (`dns`); an `srv` entry takes each record's.
    pub weight: u32,
    /// Its backends are backups.
    pub backup: bool,
    /// Its backends speak HTTP/2 (prior knowledge).
    pub h2: bool,
    /// Tags for each of its backends, sorted by key.
    pub tags: Vec<(String, String)>,
    /// How many `address` entries come before it: where its backends go in
    /// the group's order.
    pub position: usize,
}

/// Which entry found a backend, for a backend that came from DNS.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DnsSource {
    /// The entry's name.
    pub entry: String,
    /// What it looked up.
    pub query: DnsQuery,
}

impl DnsBackends {
    /// What a backend this entry found is marked with.
    pub fn source(&self) -> DnsSource {
        DnsSource {
            entry: self.name.clone(),
            query: self.query.clone(),
        }
    }
}

impl FileBackend {
    /// The entry, if it is a `dns` or `srv` one (`None` with its problems
    /// noted otherwise; `address`, `dns` and `srv` exclude each other).
    pub(super) fn to_dns(
        &self,
        c: &mut Checker<'_>,
        key: &str,
        name: String,
        position: usize,
    ) -> Option<DnsBackends> {
        let query = match (&self.dns, &self.srv) {
            (Some(d), None) => host_port(d.get_ref()).map_err(|why| (d, "dns", why)),
            (None, Some(s)) => srv_name(s.get_ref()).map_err(|why| (s, "srv", why)),
            _ => return None,
        };
        let query = match query {
            Ok(q) => q,
            Err((at, k, why)) => {
                c.push(c.loc().error(at, format!("{key}.{k}: {why}")));
                return None;
            }
        };
        if let (DnsQuery::Srv(_), Some(w)) = (&query, &self.weight) {
            c.push(c.loc().error(
                w,
                format!(
                    "{key}.weight: an srv entry takes each backend's weight from its SRV record"
                ),
            ));
            return None;
        }
        let weight = match &self.weight {
            Some(w) if *w.get_ref() == 0 => {
                c.push(
                    c.loc()
                        .error(w, format!("{key}.weight: must be at least 1")),
                );
                return None;
            }
            w => w.as_ref().map_or(1, |w| *w.get_ref()),
        };
        Some(DnsBackends {
            name,
            query,
            weight,
            backup: self.backup,
            h2: self.h2,
            tags: self.tags(c, key)?,
            position,
        })
    }

    /// Whether the entry names more than one of `address`, `dns` and
    /// `srv`, or none.
    pub(super) fn source_problem(&self) -> Option<&'static str> {
        let given = [
            self.address.is_some(),
            self.dns.is_some(),
            self.srv.is_some(),
        ];
        match given.iter().filter(|g| **g).count() {
            1 => None,
            0 => Some(
                "give address = \"HOST:PORT\", dns = \"NAME:PORT\" or srv = \"_SERVICE._PROTO.NAME\"",
            ),
            _ => Some("address, dns and srv exclude each other: give one"),
        }
    }
}

/// `dns-refresh`: at least [`MIN_DNS_REFRESH`], and only where the group
/// has a `dns` or `srv` entry.
pub(super) fn dns_refresh(
    c: &mut Checker<'_>,
    key: &str,
    v: &Option<Spanned<String>>,
    has_dns: bool,
) -> Duration {
    let key = format!("{key}.dns-refresh");
    let r = duration(c.loc(), &key, v, DEFAULT_DNS_REFRESH, true);
    let d = c.or(r, DEFAULT_DNS_REFRESH);
    let Some(s) = v else { return d };
    if !has_dns {
        c.push(c.loc().error(
            s,
            format!("{key}: this upstream has no dns or srv backend to refresh"),
        ));
    } else if d < MIN_DNS_REFRESH {
        c.push(c.loc().error(s, format!("{key}: at least 1s")));
        return DEFAULT_DNS_REFRESH;
    }
    d
}

/// `[server] resolver`: `IP:PORT`, or an IP (port 53).
pub(super) fn resolver(c: &mut Checker<'_>, v: &Option<Spanned<String>>) -> Option<SocketAddr> {
    let s = v.as_ref()?;
    let text = s.get_ref().trim();
    let parsed = text.parse::<SocketAddr>().ok().or_else(|| {
        text.parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 53))
    });
    if parsed.is_none() {
        c.push(c.loc().error(
            s,
            format!(
                "server.resolver: {text:?} is not a DNS server's IP address and port such as \"127.0.0.1:53\""
            ),
        ));
    }
    parsed
}

/// `dns = "name:port"`: a DNS name (not an IP address) and a port.
fn host_port(text: &str) -> Result<DnsQuery, String> {
    let text = text.trim();
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("{text:?} needs a port, as in \"{text}:80\""));
    };
    if text.parse::<SocketAddr>().is_ok() || host.parse::<IpAddr>().is_ok() {
        return Err(format!(
            "{text:?} is an IP address, not a name: write address = {text:?}"
        ));
    }
    let port = match port.parse::<u16>() {
        Ok(p) if p > 0 => p,
        _ => return Err(format!("{port:?} is not a port (1-65535)")),
    };
    if !is_dns_name(host) {
        return Err(format!(
            "{host:?} is not a DNS name such as \"app.internal\""
        ));
    }
    Ok(DnsQuery::Host {
        host: host.to_string(),
        port,
    })
}

/// `srv = "_service._proto.name"`.
fn srv_name(text: &str) -> Result<DnsQuery, String> {
    let text = text.trim();
    let example = "such as \"_http._tcp.app.internal\"";
    if text.contains(':') {
        return Err(format!(
            "{text:?} has a port: an SRV name has none (its records give each backend's), {example}"
        ));
    }
    let labels: Vec<&str> = text.trim_end_matches('.').split('.').collect();
    let service = |l: &str| l.len() > 1 && l.starts_with('_');
    if labels.len() < 3 || !service(labels[0]) || !service(labels[1]) || !is_dns_name(text) {
        return Err(format!(
            "{text:?} is not an SRV name _SERVICE._PROTO.NAME, {example}"
        ));
    }
    Ok(DnsQuery::Srv(text.to_string()))
}

/// Letters, digits, `-` and `_` in dot-separated labels of 1 to 63
/// characters, 253 in all; a final dot (fully qualified) allowed.
fn is_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_entries_need_a_name_and_a_port() {
        assert_eq!(
            host_port("app.internal:8000"),
            Ok(DnsQuery::Host {
                host: "app.internal".into(),
                port: 8000
            })
        );
        for (bad, why) in [
            ("app.internal", "needs a port"),
            ("127.0.0.1:80", "is an IP address"),
            ("[::1]:80", "is an IP address"),
            ("app.internal:0", "is not a port"),
            ("app.internal:http", "is not a port"),
            ("app internal:80", "is not a DNS name"),
            ("-app:80", "is not a DNS name"),
        ] {
            let err = host_port(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn srv_names_have_a_service_a_protocol_and_no_port() {
        assert_eq!(
            srv_name("_http._tcp.app.internal"),
            Ok(DnsQuery::Srv("_http._tcp.app.internal".into()))
        );
        for bad in [
            "app.internal",
            "_http.app.internal",
            "_http._tcp",
            "_._tcp.app",
            "_http._tcp.app.internal:80",
        ] {
            assert!(srv_name(bad).is_err(), "{bad}");
        }
    }
}
