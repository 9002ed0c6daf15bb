//! A configuration brought to life: upstream groups with their policies
//! loaded, the router, the listeners' TLS. Building one compiles,
//! configures and dry-runs every policy, which is exactly what `switchyard
//! check` verifies; a policy file that changes later is swapped into the
//! running groups here.

use std::path::Path;
use std::sync::Arc;

use super::app::App;
use super::{limits, oci};
use crate::config::{Config, ConfigError, PolicySource, SharedStateMode, UpstreamConfig};
use crate::edge::ListenerSpec;
use crate::edge::tls;
use crate::policy::{Compiled, LoadError, Policy, RoundRobin, WasmPolicy};
use crate::proxy::Runtime;
use crate::proxy::router::Router;
use crate::upstream::{Backend, Shadow, Upstream, states};

/// A runtime and the listeners it wants.
pub struct Built {
    /// What the request path serves from.
    pub runtime: Runtime,
    /// The listeners, with their TLS configs loaded.
    pub listeners: Vec<ListenerSpec>,
}

/// The outcome of a policy file change for one upstream group.
#[derive(Debug)]
pub struct Swap {
    /// The group.
    pub upstream: String,
    /// The new digest, or why the file was refused.
    pub result: Result<String, LoadError>,
}

/// Compiles the group's policy: read from its file, taken from the
/// binary, or pulled from its registry; refused before it is compiled
/// when its bytes are not the ones `sha256 = ...` pins.
pub fn compile(app: &App, up: &UpstreamConfig) -> Result<Compiled, LoadError> {
    let pin = up.policy_sha256.as_deref();
    match &up.policy {
        PolicySource::Oci(reference) => {
            let bytes =
                oci::pull(reference, app.engine.cache_dir().as_deref()).map_err(LoadError::Pull)?;
            app.engine.compile_bytes(up.policy.clone(), &bytes, pin)
        }
        source => app.engine.compile_pinned(source, pin),
    }
}

/// The group's policy: the running one of `previous` handed the new
/// backends where that will do (see [`updated_policy`]), else loaded anew.
fn load_policy(
    app: &App,
    previous: Option<&Upstream>,
    up: &UpstreamConfig,
    backends: &[Backend],
) -> Result<Box<dyn Policy>, LoadError> {
    if let PolicySource::Native(_) = up.policy {
        return Ok(Box::new(RoundRobin::default()));
    }
    let started = std::time::Instant::now();
    let compiled = compile(app, up)?;
    if let Some(policy) = updated_policy(previous, up, &compiled, backends) {
        return Ok(policy);
    }
    let policy = WasmPolicy::load(
        &app.engine,
        compiled,
        up,
        app.states.get(&up.name, &up.shared_state),
        &states(backends, &[]),
        app.workers,
    )?;
    tracing::info!(
        upstream = %up.name,
        "policy {} loaded in {:.1} ms",
        up.policy,
        started.elapsed().as_secs_f64() * 1000.0
    );
    Ok(Box::new(policy))
}

/// The group's shadow policy, if it has one: loaded like the live one
/// (with its own `shadow-policy-config`), on its own shared state so that
/// it cannot move the live policy's counters.
fn load_shadow(
    app: &App,
    up: &UpstreamConfig,
    backends: &[Backend],
) -> Result<Option<Shadow>, ConfigError> {
    let Some(cfg) = &up.shadow else {
        return Ok(None);
    };
    let policy = shadow_policy(app, up, backends).map_err(|e| {
        cfg.origin
            .error(format!("upstreams.{}.shadow-policy: {e}", up.name))
    })?;
    let names: Vec<&str> = backends.iter().map(|b| &*b.name).collect();
    Ok(Some(Shadow::new(
        policy,
        cfg.sample,
        app.metrics.shadow(&up.name, &names),
    )))
}

/// Loads `up`'s shadow policy (which it must have).
fn shadow_policy(
    app: &App,
    up: &UpstreamConfig,
    backends: &[Backend],
) -> Result<Box<dyn Policy>, LoadError> {
    let Some(as_live) = shadow_as_live(up) else {
        return Err(LoadError::NotWasm("no shadow-policy".into()));
    };
    if let PolicySource::Native(_) = as_live.policy {
        return Ok(Box::new(RoundRobin::default()));
    }
    let compiled = compile(app, &as_live)?;
    let policy = WasmPolicy::load(
        &app.engine,
        compiled,
        &as_live,
        app.states
            .get(&shadow_state_name(&up.name), &SharedStateMode::Local),
        &states(backends, &[]),
        app.workers,
    )?;
    Ok(Box::new(policy))
}

/// The name of the state group `upstream`'s shadow policy runs on.
pub(super) fn shadow_state_name(upstream: &str) -> String {
    format!("{upstream} (shadow)")
}

/// `up` as its shadow policy would be loaded: the shadow's policy and
/// `shadow-policy-config` in place of the live ones. `None` without one.
pub(super) fn shadow_as_live(up: &UpstreamConfig) -> Option<UpstreamConfig> {
    let cfg = up.shadow.as_ref()?;
    let mut as_live = up.clone();
    as_live.policy = cfg.policy.clone();
    as_live.policy_sha256 = cfg.sha256.clone();
    as_live.policy_config = cfg.policy_config.clone();
    as_live.shadow = None;
    Some(as_live)
}

/// A policy that observes or learns keeps its instances across a reload
/// that changes only its group's backends: when `previous` (the group as
/// it runs now) has the same component (`compiled`, same contents), the
/// same `policy-config`, sandbox and zone, and the component exports the
/// membership call, the running policy is handed the new backends (after
/// a dry run) instead of being loaded again. `None`: load it anew.
fn updated_policy(
    previous: Option<&Upstream>,
    up: &UpstreamConfig,
    compiled: &Compiled,
    backends: &[Backend],
) -> Option<Box<dyn Policy>> {
    let previous = previous?;
    let running = previous.policy();
    if previous.config.policy != up.policy
        || compiled.digest != running.status().digest
        || previous.config.shared_state != up.shared_state
    {
        return None;
    }
    hand_over(&**running, up, backends)
}

/// `running` (the group's policy now) handed `up`'s backends through its
/// membership call, after a dry run; `None` when it cannot take them.
pub(super) fn hand_over(
    running: &dyn Policy,
    up: &UpstreamConfig,
    backends: &[Backend],
) -> Option<Box<dyn Policy>> {
    match running.update_to(up, &states(backends, &[]))? {
        Ok(policy) => {
            tracing::info!(
                upstream = %up.name,
                "policy {} keeps its instances: {} backends handed to its membership call",
                up.policy,
                up.backends.len()
            );
            Some(policy)
        }
        Err(e) => {
            tracing::info!(
                upstream = %up.name,
                "policy {} is configured anew: its membership update failed: {e}",
                up.policy
            );
            None
        }
    }
}

/// Loads every upstream's policy and builds the groups (reusing the
/// running policies of `previous` where a membership update will do).
/// Returns every problem found, each located where it was written.
pub fn build(
    mut config: Config,
    app: &App,
    generation: u64,
    previous: Option<&Runtime>,
) -> Result<Built, Vec<ConfigError>> {
    let mut errors = Vec::new();
    if let Err(e) = limits::fit_connections(&mut config) {
        errors.push(e);
    }
    let mut upstreams = Vec::new();
    app.engine.set_cache_dir(config.cache_dir.clone());
    for up in &config.upstreams {
        // The backends of the first config were there before the proxy:
        // only later ones count as joining (slow start ramps those).
        let joined = if previous.is_some() {
            crate::policy::monotonic_ns()
        } else {
            0
        };
        let backends = app
            .backends
            .backends(up, joined, |b| app.metrics.backend(&up.name, b));
        let running = previous.and_then(|rt| rt.upstreams.iter().find(|u| u.name == up.name));
        match load_policy(app, running.map(|u| &**u), up, &backends) {
            Ok(policy) => {
                let shadow = match load_shadow(app, up, &backends) {
                    Ok(s) => s,
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                };
                let decisions = config.admin.as_ref().map_or(0, |a| a.decisions);
                upstreams.push(Arc::new(
                    Upstream::new(up.clone(), backends, policy, app.metrics.upstream(&up.name))
                        .with_shadow(shadow)
                        .with_traces(app.traces.ring(&up.name, decisions)),
                ))
            }
            Err(e) => errors.push(
                up.policy_origin
                    .error(format!("upstreams.{}.policy: {e}", up.name)),
            ),
        }
    }
    let mut listeners = Vec::new();
    for l in &config.listeners {
        let tls = match &l.tls {
            None => None,
            Some(files) => match tls::server_config(files) {
                Ok(c) => Some(c),
                Err(e) => {
                    errors.push(e);
                    None
                }
            },
        };
        listeners.push(ListenerSpec { addr: l.addr, tls });
    }
    let access_log = match &config.access_log {
        None => None,
        Some(c) => match app.access_log(c) {
            Ok(log) => Some(log),
            Err(e) => {
                errors.push(c.origin.error(format!("access-log.path: {e}")));
                None
            }
        },
    };
    if let Some(admin) = &config.admin
        && let Some(file) = &admin.token_file
        && let Err(e) = read_token(file)
    {
        errors.push(admin.token_origin.error(format!("admin.token-file: {e}")));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Built {
        runtime: Runtime {
            access_log,
            router: Router::new(config.routes.clone()),
            config,
            upstreams,
            generation,
        },
        listeners,
    })
}

/// Every policy file the runtime's config uses.
pub fn policy_files(rt: &Runtime) -> Vec<&Path> {
    let mut files: Vec<&Path> = rt
        .config
        .upstreams
        .iter()
        .flat_map(|u| std::iter::once(&u.policy).chain(u.shadow.as_ref().map(|s| &s.policy)))
        .filter_map(|p| match p {
            PolicySource::File(p) => Some(p.as_path()),
            PolicySource::Builtin(_) | PolicySource::Native(_) | PolicySource::Oci(_) => None,
        })
        .collect();
    files.sort();
    files.dedup();
    files
}

/// Reloads the policy file `path` into every group of `rt` that uses it:
/// each gets the new policy only if it compiles, configures and passes its
/// dry run against the group's live backends; otherwise the old one keeps
/// serving. Blocking (compiles): call off the request path.
pub fn swap_policy_file(rt: &Runtime, app: &App, path: &Path) -> Vec<Swap> {
    let mut out = Vec::new();
    for up in &rt.upstreams {
        swap_shadow_file(app, up, path);
        if !matches!(&up.config.policy, PolicySource::File(p) if p == path) {
            continue;
        }
        let result = load_policy(app, None, &up.config, &up.backends).map(|policy| {
            let digest = policy.status().digest;
            up.swap_policy(policy);
            digest
        });
        match &result {
            Ok(_) => up.metrics.swaps.inc(),
            Err(_) => up.metrics.failed_swaps.inc(),
        };
        out.push(Swap {
            upstream: up.name.clone(),
            result,
        });
    }
    out
}

/// Reloads `up`'s shadow policy if it is the file `path`; a file that
/// does not load leaves the old shadow in place, and is logged.
fn swap_shadow_file(app: &App, up: &Upstream, path: &Path) {
    let Some(shadow) = up.shadow() else {
        return;
    };
    if !matches!(up.config.shadow.as_ref().map(|s| &s.policy), Some(PolicySource::File(p)) if p == path)
    {
        return;
    }
    match shadow_policy(app, &up.config, &up.backends) {
        Ok(policy) => {
            tracing::info!(upstream = %up.name, "shadow policy {} swapped", path.display());
            shadow.swap(policy);
        }
        Err(e) => tracing::warn!(
            upstream = %up.name,
            "shadow policy {} refused, the old one stays: {e}",
            path.display()
        ),
    }
}

/// Builds the first runtime from a checked config, or says every reason
/// it cannot be, one per line.
pub fn first(app: &App, config: Config) -> anyhow::Result<Built> {
    build(config, app, 1, None).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        anyhow::anyhow!(lines.join("\n"))
    })
}

/// The bearer token in `file`, trimmed; refused if empty.
pub fn read_token(file: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("{} is empty", file.display()));
    }
    Ok(token.to_string())
}
