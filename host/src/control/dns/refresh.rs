//! The background lookups: one task per group with `dns` or `srv`
//! entries, looking them up every `dns-refresh` (sooner when a record's
//! TTL is shorter, never more often than once a second) and sending a
//! [`Found`] when what they find differs from what the group serves.
//!
//! A lookup that fails keeps the entry's last backends; the failure is
//! logged once, then at most every [`WARN_EVERY`] while it lasts, and
//! counted in `switchyard_dns_resolutions_total`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::lookup::{LookupError, Resolver};
use crate::config::{BackendConfig, DnsBackends, MIN_DNS_REFRESH, UpstreamConfig};
use crate::control::app::App;
use crate::proxy::Proxy;

/// Least time between two warnings about the same failing entry.
pub const WARN_EVERY: Duration = Duration::from_secs(60);

/// What a group's entries found, when it is not what the group serves.
#[derive(Debug)]
pub struct Found {
    /// The group.
    pub upstream: String,
    /// The runtime generation it was looked up for.
    pub generation: u64,
    /// The entries looked up (the group's `dns`).
    pub entries: Vec<DnsBackends>,
    /// `found[i]`: the backends `entries[i]` stands for now.
    pub found: Vec<Vec<BackendConfig>>,
}

/// The running lookups of one runtime; dropping it stops them.
#[derive(Debug, Default)]
pub struct Refresh(Vec<JoinHandle<()>>);

impl Drop for Refresh {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Starts a task for each group of the proxy's runtime that has DNS
/// entries; each sends what changes to `tx`.
pub fn start(app: &Arc<App>, proxy: &Arc<Proxy>, tx: &mpsc::UnboundedSender<Found>) -> Refresh {
    let runtime = proxy.runtime();
    let mut tasks = Vec::new();
    for up in runtime
        .upstreams
        .iter()
        .filter(|u| !u.config.dns.is_empty())
    {
        let resolver = match Resolver::new(runtime.config.resolver) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(upstream = %up.name, "{e}: its DNS backends are not looked up again");
                continue;
            }
        };
        let group = Group {
            app: app.clone(),
            proxy: proxy.clone(),
            name: up.name.clone(),
            generation: runtime.generation,
            resolver,
            failing: HashMap::new(),
        };
        tasks.push(tokio::spawn(group.run(up.config.dns_refresh, tx.clone())));
    }
    Refresh(tasks)
}

/// One group's lookups.
struct Group {
    app: Arc<App>,
    proxy: Arc<Proxy>,
    name: String,
    generation: u64,
    resolver: Resolver,
    /// Entries failing now (by name): since when, last warned when.
    failing: HashMap<String, (Instant, Option<Instant>)>,
}

impl Group {
    async fn run(mut self, first: Duration, tx: mpsc::UnboundedSender<Found>) {
        let mut wait = first;
        loop {
            tokio::time::sleep(wait).await;
            let runtime = self.proxy.runtime();
            let Some(up) = runtime.upstreams.iter().find(|u| u.name == self.name) else {
                return;
            };
            let (found, ttl) = self.round(&up.config).await;
            wait = ttl.min(up.config.dns_refresh).max(MIN_DNS_REFRESH);
            let serving = up.config.dns.iter().map(|e| up.config.found_by(e));
            let changed = found.iter().zip(serving).any(|(f, s)| !same(f, &s));
            if changed {
                let found = Found {
                    upstream: self.name.clone(),
                    generation: self.generation,
                    entries: up.config.dns.clone(),
                    found,
                };
                if tx.send(found).is_err() {
                    return;
                }
            }
        }
    }

    /// Looks every entry up once: what each stands for now (its last
    /// backends when it failed), and the shortest TTL seen.
    async fn round(&mut self, up: &UpstreamConfig) -> (Vec<Vec<BackendConfig>>, Duration) {
        let mut ttl = up.dns_refresh;
        let mut found = Vec::new();
        for entry in &up.dns {
            match self.resolver.find(entry).await {
                Ok(answer) => {
                    self.app.metrics.dns(&up.name, "ok");
                    if self.failing.remove(&entry.name).is_some() {
                        tracing::info!(upstream = %up.name, backend = %entry.name, "{} {} resolves again", entry.query.key(), entry.query);
                    }
                    ttl = ttl.min(answer.ttl);
                    found.push(answer.backends);
                }
                Err(e) => {
                    self.app.metrics.dns(&up.name, e.label());
                    let last = up.found_by(entry);
                    self.warn(up, entry, &e, last.len());
                    found.push(last);
                }
            }
        }
        (found, ttl)
    }

    /// Logs a failed lookup: the first of a run of failures, then every
    /// [`WARN_EVERY`].
    fn warn(&mut self, up: &UpstreamConfig, entry: &DnsBackends, e: &LookupError, kept: usize) {
        let now = Instant::now();
        let (since, warned) = self
            .failing
            .entry(entry.name.clone())
            .or_insert((now, None));
        if warned.is_some_and(|w| now.duration_since(w) < WARN_EVERY) {
            return;
        }
        *warned = Some(now);
        let kept = match kept {
            0 => "no backend from it until it resolves".to_string(),
            n => format!("keeping the {n} backend(s) it found last"),
        };
        tracing::warn!(
            upstream = %up.name,
            backend = %entry.name,
            "lookup of {} {} failed ({e}; failing for {}s): {kept}",
            entry.query.key(),
            entry.query,
            now.duration_since(*since).as_secs()
        );
    }
}

/// Whether two finds are the same backends (names, addresses, weights,
/// backup), whatever their order.
pub fn same(a: &[BackendConfig], b: &[BackendConfig]) -> bool {
    let key = |list: &[BackendConfig]| {
        let mut k: Vec<_> = list
            .iter()
            .map(|b| (b.name.clone(), b.socket_addr, b.weight, b.backup))
            .collect();
        k.sort();
        k
    };
    key(a) == key(b)
}
