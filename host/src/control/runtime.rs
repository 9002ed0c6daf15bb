//! A configuration brought to life: upstream groups with their policies
//! loaded, and the router. Building one compiles, configures and dry-runs
//! every policy, which is exactly what `switchyard check` verifies; a
//! policy file that changes later is swapped into the running groups here.

use std::path::Path;
use std::sync::Arc;

use crate::access_log::AccessLog;
use crate::app::App;
use crate::config::{Config, ConfigError, PolicySource, UpstreamConfig};
use crate::policy::{LoadError, Policy, RoundRobin, WasmPolicy};
use crate::router::Router;
use crate::server::ListenerSpec;
use crate::tls;
use crate::upstream::{Backend, Upstream, states};

/// [`Runtime`] is everything the request path needs from one config.
pub struct Runtime {
    /// The checked config it was built from.
    pub config: Config,
    /// Upstream groups, in the config's order.
    pub upstreams: Vec<Arc<Upstream>>,
    /// Request → upstream index.
    pub router: Router,
    /// 1 for the config loaded at start, +1 for each reload.
    pub generation: u64,
    /// The listeners, with their TLS configs loaded.
    pub listeners: Vec<ListenerSpec>,
    /// Where request lines go, if the access log is on.
    pub access_log: Option<AccessLog>,
}

/// The outcome of a policy file change for one upstream group.
#[derive(Debug)]
pub struct Swap {
    /// The group.
    pub upstream: String,
    /// The new digest, or why the file was refused.
    pub result: Result<String, LoadError>,
}

fn load_policy(
    app: &App,
    up: &UpstreamConfig,
    backends: &[Backend],
) -> Result<Box<dyn Policy>, LoadError> {
    if let PolicySource::Native(_) = up.policy {
        return Ok(Box::new(RoundRobin::default()));
    }
    let started = std::time::Instant::now();
    let compiled = app.engine.compile(&up.policy)?;
    let policy = WasmPolicy::load(
        &app.engine,
        compiled,
        up,
        app.states.get(&up.name),
        &states(backends, &[]),
    )?;
    tracing::info!(
        upstream = %up.name,
        "policy {} loaded in {:.1} ms",
        up.policy,
        started.elapsed().as_secs_f64() * 1000.0
    );
    Ok(Box::new(policy))
}

impl Runtime {
    /// Loads every upstream's policy and builds the groups. Returns every
    /// problem found, each located at the `policy = ...` line it concerns.
    pub fn build(config: Config, app: &App, generation: u64) -> Result<Runtime, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut upstreams = Vec::new();
        app.engine.set_cache_dir(config.cache_dir.clone());
        for up in &config.upstreams {
            let backends = app.backends.backends(up, &app.metrics);
            match load_policy(app, up, &backends) {
                Ok(policy) => upstreams.push(Arc::new(Upstream::new(
                    up.clone(),
                    backends,
                    policy,
                    app.metrics.upstream(&up.name),
                ))),
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
                    errors.push(
                        crate::config::Origin {
                            file: config.file.clone(),
                            ..Default::default()
                        }
                        .error(format!("access-log: {e}")),
                    );
                    None
                }
            },
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Runtime {
            access_log,
            router: Router::new(config.routes.clone()),
            config,
            upstreams,
            generation,
            listeners,
        })
    }

    /// Every policy file the config uses.
    pub fn policy_files(&self) -> Vec<&Path> {
        let mut files: Vec<&Path> = self
            .config
            .upstreams
            .iter()
            .filter_map(|u| match &u.policy {
                PolicySource::File(p) => Some(p.as_path()),
                PolicySource::Builtin(_) | PolicySource::Native(_) => None,
            })
            .collect();
        files.sort();
        files.dedup();
        files
    }

    /// Reloads the policy file `path` into every group that uses it: each
    /// gets the new policy only if it compiles, configures and passes its
    /// dry run against the group's live backends; otherwise the old one
    /// keeps serving. Blocking (compiles): call off the request path.
    pub fn swap_policy_file(&self, app: &App, path: &Path) -> Vec<Swap> {
        let mut out = Vec::new();
        for up in &self.upstreams {
            if !matches!(&up.config.policy, PolicySource::File(p) if p == path) {
                continue;
            }
            let result = load_policy(app, &up.config, &up.backends).map(|policy| {
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
}
