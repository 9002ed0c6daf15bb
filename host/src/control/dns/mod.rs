//! Backends from DNS. Before a config is built (at start, on a reload,
//! for `switchyard check`), [`discover`] looks up every `dns` and `srv`
//! entry and puts what it finds in the groups' backends. While the proxy
//! runs, [`refresh`] looks them up again in the background, and [`apply`]
//! puts a group's changed backends in service without a reload.
//!
//! - [`lookup`]: the resolver, and what one entry finds;
//! - [`refresh`]: a task per group, sending what changed;
//! - [`apply`]: the group rebuilt around its running policy.

mod apply;
mod lookup;
mod refresh;

use std::time::Duration;

pub use apply::apply;
pub use lookup::{LookupError, Resolver};
pub use refresh::{Found, Refresh, start};

use crate::config::{BackendConfig, Config, DnsBackends, UpstreamConfig};
use crate::control::metrics::Metrics;
use crate::proxy::Runtime;

/// The longest a lookup may hold up a start or a reload.
pub const DISCOVER_TIMEOUT: Duration = Duration::from_secs(5);

/// `config` with every group's DNS entries looked up, their backends in
/// place. An entry that finds nothing keeps what it found in `running`
/// (the same group and entry of the config in service), if anything.
///
/// A name that does not resolve does not stop the proxy: it starts (or
/// reloads) without that entry's backends, says so, and the background
/// lookups add them when the name resolves; a group left with no backend
/// at all answers 503 meanwhile. This is what Envoy does for a
/// `STRICT_DNS` cluster and HAProxy with `init-addr none` (the setting its
/// manual gives for service discovery): refusing to start, as nginx does
/// for a `server` name it cannot resolve, would turn "the app is not
/// deployed yet" into "the proxy is down for every upstream", and a proxy
/// that crash-loops until its backends exist in DNS.
pub async fn discover(mut config: Config, running: Option<&Runtime>, metrics: &Metrics) -> Config {
    if config.upstreams.iter().all(|u| u.dns.is_empty()) {
        return config;
    }
    let resolver = Resolver::new(config.resolver);
    for up in config.upstreams.iter_mut().filter(|u| !u.dns.is_empty()) {
        let before = running
            .and_then(|rt| rt.upstreams.iter().find(|u| u.name == up.name))
            .map(|u| &u.config);
        let mut found = Vec::new();
        for entry in &up.dns {
            let last = before.map(|b| b.found_by(entry)).unwrap_or_default();
            found.push(first_find(&resolver, up, entry, last, metrics).await);
        }
        let (with_found, dropped) = up.with_found(found);
        if !dropped.is_empty() {
            tracing::warn!(upstream = %up.name, "DNS found backends whose names are taken, left out: {}", dropped.join(", "));
        }
        *up = with_found;
    }
    config
}

/// What `entry` stands for when a config is built: what it finds now, else
/// `last`, with a warning.
async fn first_find(
    resolver: &Result<Resolver, LookupError>,
    up: &UpstreamConfig,
    entry: &DnsBackends,
    last: Vec<BackendConfig>,
    metrics: &Metrics,
) -> Vec<BackendConfig> {
    let result = match resolver {
        Ok(r) => tokio::time::timeout(DISCOVER_TIMEOUT, r.find(entry))
            .await
            .unwrap_or_else(|_| {
                Err(LookupError::Failed(format!(
                    "no answer within {DISCOVER_TIMEOUT:?}"
                )))
            }),
        Err(e) => Err(LookupError::Failed(e.to_string())),
    };
    let e = match result {
        Ok(answer) => {
            metrics.dns(&up.name, "ok");
            return answer.backends;
        }
        Err(e) => e,
    };
    metrics.dns(&up.name, e.label());
    let what = format!("{} {}", entry.query.key(), entry.query);
    if last.is_empty() {
        tracing::warn!(upstream = %up.name, backend = %entry.name, "lookup of {what} failed ({e}): no backend from it until it resolves (looked up again every {:?})", up.dns_refresh);
    } else {
        tracing::warn!(upstream = %up.name, backend = %entry.name, "lookup of {what} failed ({e}): keeping the {} backend(s) it found last", last.len());
    }
    last
}
