//! What DNS found, placed in a group: each `dns` or `srv` entry's backends
//! go where the entry was written, named `NAME/TARGET:PORT` and marked
//! with the entry ([`DnsSource`](super::DnsSource)), so that a later find replaces exactly
//! that entry's backends.

use std::collections::HashSet;
use std::net::SocketAddr;

use super::dns::DnsBackends;
use super::upstream::{BackendConfig, UpstreamConfig};

impl DnsBackends {
    /// The backend at `addr` that this entry found as `target` (the
    /// address itself for `dns`, `TARGET:PORT` for `srv`): named
    /// `NAME/TARGET`. `srv_weight` is the SRV record's (0 counts as 1),
    /// `backup` whether the record's priority is not the best one found.
    pub fn backend(
        &self,
        target: &str,
        addr: SocketAddr,
        srv_weight: Option<u16>,
        backup: bool,
    ) -> BackendConfig {
        BackendConfig {
            name: format!("{}/{target}", self.name),
            address: addr.to_string(),
            socket_addr: addr,
            weight: srv_weight.map_or(self.weight, |w| u32::from(w.max(1))),
            backup: self.backup || backup,
            h2: self.h2,
            tags: self.tags.clone(),
            dns: Some(self.source()),
        }
    }
}

impl UpstreamConfig {
    /// The backends `entry` found, as this group has them now.
    pub fn found_by(&self, entry: &DnsBackends) -> Vec<BackendConfig> {
        let source = entry.source();
        self.backends
            .iter()
            .filter(|b| b.dns.as_ref() == Some(&source))
            .cloned()
            .collect()
    }

    /// This group with `found[i]` as what `self.dns[i]` finds now, each
    /// entry's backends where the entry was written. A found backend whose
    /// name is taken (by an `address` entry or an earlier find) is left
    /// out; the names left out are returned.
    pub fn with_found(&self, found: Vec<Vec<BackendConfig>>) -> (UpstreamConfig, Vec<String>) {
        let fixed: Vec<&BackendConfig> = self.backends.iter().filter(|b| b.dns.is_none()).collect();
        let mut taken: HashSet<String> = fixed.iter().map(|b| b.name.clone()).collect();
        let mut found: Vec<Option<Vec<BackendConfig>>> = found.into_iter().map(Some).collect();
        let (mut backends, mut dropped) = (Vec::new(), Vec::new());
        for position in 0..=fixed.len() {
            for (i, entry) in self.dns.iter().enumerate() {
                if entry.position != position {
                    continue;
                }
                for b in found.get_mut(i).and_then(Option::take).unwrap_or_default() {
                    if taken.insert(b.name.clone()) {
                        backends.push(b);
                    } else {
                        dropped.push(b.name);
                    }
                }
            }
            if let Some(b) = fixed.get(position) {
                backends.push((*b).clone());
            }
        }
        let mut up = self.clone();
        up.backends = backends;
        (up, dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DnsQuery;

    fn entry(name: &str, position: usize) -> DnsBackends {
        DnsBackends {
            name: name.into(),
            query: DnsQuery::Host {
                host: format!("{name}.internal"),
                port: 80,
            },
            weight: 2,
            backup: false,
            h2: false,
            tags: Vec::new(),
            position,
        }
    }

    fn found(e: &DnsBackends, ips: &[&str]) -> Vec<BackendConfig> {
        ips.iter()
            .map(|ip| {
                let addr: SocketAddr = format!("{ip}:80").parse().unwrap();
                e.backend(&addr.to_string(), addr, None, false)
            })
            .collect()
    }

    #[test]
    fn found_backends_go_where_their_entry_was_written() {
        let text = r#"
[server]
listen = "127.0.0.1:1"
[upstreams.app]
policy = "round-robin"
backends = [
  { name = "a", dns = "a.internal:80", weight = 2 },
  { name = "fixed", address = "127.0.0.1:9" },
  { name = "b", dns = "b.internal:80", weight = 2 },
]
"#;
        let config = super::super::Config::parse(std::path::Path::new("t.toml"), text).unwrap();
        let up = &config.upstreams[0];
        assert_eq!(up.dns, [entry("a", 0), entry("b", 1)]);
        let (a, b) = (&up.dns[0], &up.dns[1]);
        let (up, dropped) = up.with_found(vec![
            found(a, &["10.0.0.1", "10.0.0.2"]),
            found(b, &["10.0.0.3"]),
        ]);
        assert!(dropped.is_empty());
        let names: Vec<&str> = up.backends.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(
            names,
            ["a/10.0.0.1:80", "a/10.0.0.2:80", "fixed", "b/10.0.0.3:80"]
        );
        assert!(
            up.backends
                .iter()
                .all(|b| b.weight == 2 || b.name == "fixed")
        );
        assert_eq!(up.found_by(a).len(), 2);
        // A new find replaces the old one; a name taken is left out.
        let mut clash = found(b, &["10.0.0.4"]);
        clash.push(clash[0].clone());
        let (up, dropped) = up.with_found(vec![Vec::new(), clash]);
        assert_eq!(dropped, ["b/10.0.0.4:80"]);
        let names: Vec<&str> = up.backends.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["fixed", "b/10.0.0.4:80"]);
    }

    #[test]
    fn srv_weights_of_zero_count_as_one() {
        let e = entry("app", 0);
        let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
        assert_eq!(e.backend("t:80", addr, Some(0), false).weight, 1);
        assert_eq!(e.backend("t:80", addr, Some(3), false).weight, 3);
        assert!(e.backend("t:80", addr, Some(3), true).backup);
    }
}
