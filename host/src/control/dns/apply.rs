//! A group's new DNS backends put in service without a reload: the running
//! runtime copied with that one group rebuilt and swapped in like a reload's
//! (requests in flight finish on the group they started with, so a removed
//! backend finishes its requests). Backends that stay keep their health,
//! pool and numbers (kept by address in the [`BackendRegistry`]); the
//! policy is handed the new backends through its membership call, or loaded
//! anew from the component it runs when it cannot take them.
//!
//! [`BackendRegistry`]: crate::upstream::BackendRegistry

use std::sync::Arc;

use super::refresh::{Found, same};
use crate::config::UpstreamConfig;
use crate::control::app::App;
use crate::control::runtime::{hand_over, shadow_as_live};
use crate::policy::{LoadError, Policy, RoundRobin};
use crate::proxy::Runtime;
use crate::upstream::{Backend, Shadow, Upstream, states};

/// `runtime` with `found` applied to its group; `None` when it changes
/// nothing, or was looked up for another runtime or other entries (a
/// reload came in between), or the group is gone. Blocking (a policy may
/// be instantiated): call off the request path.
pub fn apply(app: &App, runtime: &Runtime, found: Found) -> Result<Option<Runtime>, String> {
    let Some(i) = runtime
        .upstreams
        .iter()
        .position(|u| u.name == found.upstream)
    else {
        return Ok(None);
    };
    let running = &runtime.upstreams[i];
    if found.generation != runtime.generation || found.entries != running.config.dns {
        return Ok(None);
    }
    let before = &running.config;
    let unchanged = before
        .dns
        .iter()
        .zip(&found.found)
        .all(|(e, f)| same(&before.found_by(e), f));
    if unchanged {
        return Ok(None);
    }
    let (up, dropped) = before.with_found(found.found);
    if !dropped.is_empty() {
        tracing::warn!(upstream = %up.name, "DNS found backends whose names are taken, left out: {}", dropped.join(", "));
    }
    log_change(before, &up);
    let joined = crate::policy::monotonic_ns();
    let backends = app
        .backends
        .backends(&up, joined, |b| app.metrics.backend(&up.name, b));
    let policy = policy_for(running, &up, &backends).map_err(|e| e.to_string())?;
    let shadow =
        shadow_for(app, running, &up, &backends).map_err(|e| format!("its shadow policy: {e}"))?;
    let group = Upstream::new(up.clone(), backends, policy, app.metrics.upstream(&up.name))
        .with_shadow(shadow)
        .with_traces(running.traces().cloned());
    let mut upstreams = runtime.upstreams.clone();
    upstreams[i] = Arc::new(group);
    let mut config = runtime.config.clone();
    if let Some(c) = config.upstreams.iter_mut().find(|c| c.name == up.name) {
        *c = up;
    }
    Ok(Some(Runtime {
        config,
        upstreams,
        router: runtime.router.clone(),
        generation: runtime.generation,
        access_log: runtime.access_log.clone(),
    }))
}

/// The group's policy for its new backends: the running one handed them
/// through its membership call where it can take them (its instances and
/// what they learned stay), else the same component loaded anew.
fn policy_for(
    running: &Upstream,
    up: &UpstreamConfig,
    backends: &[Backend],
) -> Result<Box<dyn Policy>, LoadError> {
    let current = running.policy();
    if let Some(policy) = hand_over(&**current, up, backends) {
        return Ok(policy);
    }
    match current.reloaded(up, &states(backends, &[])) {
        Some(loaded) => {
            tracing::info!(
                upstream = %up.name,
                "policy {} loaded anew for {} backends",
                current.name(),
                backends.len()
            );
            loaded
        }
        None => Ok(Box::new(RoundRobin::default())),
    }
}

/// The group's shadow policy for its new backends, like [`policy_for`].
fn shadow_for(
    app: &App,
    running: &Upstream,
    up: &UpstreamConfig,
    backends: &[Backend],
) -> Result<Option<Shadow>, LoadError> {
    let (Some(shadow), Some(as_live), Some(cfg)) =
        (running.shadow(), shadow_as_live(up), up.shadow.as_ref())
    else {
        return Ok(None);
    };
    let current = shadow.policy();
    let st = states(backends, &[]);
    let policy = match current.update_to(&as_live, &st) {
        Some(Ok(p)) => p,
        _ => match current.reloaded(&as_live, &st) {
            Some(loaded) => loaded?,
            None => Box::new(RoundRobin::default()),
        },
    };
    let names: Vec<&str> = backends.iter().map(|b| &*b.name).collect();
    Ok(Some(Shadow::new(
        policy,
        cfg.sample,
        app.metrics.shadow(&up.name, &names),
    )))
}

/// Logs which backends DNS brought and took away.
fn log_change(before: &UpstreamConfig, after: &UpstreamConfig) {
    let names = |up: &UpstreamConfig| -> Vec<String> {
        up.backends
            .iter()
            .filter(|b| b.dns.is_some())
            .map(|b| b.name.clone())
            .collect()
    };
    let (old, new) = (names(before), names(after));
    let added: Vec<&str> = new
        .iter()
        .filter(|n| !old.contains(n))
        .map(String::as_str)
        .collect();
    let removed: Vec<&str> = old
        .iter()
        .filter(|n| !new.contains(n))
        .map(String::as_str)
        .collect();
    tracing::info!(
        upstream = %after.name,
        "DNS changed the backends: {} now; added [{}], removed [{}]",
        after.backends.len(),
        added.join(", "),
        removed.join(", ")
    );
}
