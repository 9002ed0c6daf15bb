//! Starting and stopping the proxy: the process-wide services, loading a
//! config into a runtime, serving it until SIGTERM or SIGINT, draining.

use std::path::Path;
use std::sync::{Arc, Mutex};

use super::metrics::Metrics;
use super::reload::Reloader;
use super::runtime::{self, Built};
use crate::config::{AccessLogConfig, Config};
use crate::policy::{PolicyEngine, StateRegistry};
use crate::proxy::Proxy;
use crate::proxy::access_log::AccessLog;
use crate::upstream::BackendRegistry;

/// [`App`] holds what outlives any one config: the Wasm engine (and its
/// compile cache), policy state and backend state by name or address, and
/// the metrics.
pub struct App {
    /// Compiles and runs policies.
    pub engine: PolicyEngine,
    /// Policy counters and key-value stores, by upstream name.
    pub states: StateRegistry,
    /// Backend statistics and connection pools, by address.
    pub backends: BackendRegistry,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Worker threads serving requests: each gets a policy instance made
    /// ahead of time.
    pub workers: usize,
    /// The access log writer, kept across reloads while its settings stay.
    access_log: Mutex<Option<(AccessLogConfig, AccessLog)>>,
}

impl App {
    /// A new engine and empty state, for `workers` worker threads.
    pub fn new(workers: usize) -> anyhow::Result<App> {
        let engine = PolicyEngine::new()
            .map_err(|e| anyhow::anyhow!("cannot start the Wasm engine: {e}"))?;
        Ok(App {
            engine,
            states: StateRegistry::default(),
            backends: BackendRegistry::default(),
            metrics: Metrics::new(),
            workers: workers.max(1),
            access_log: Mutex::new(None),
        })
    }

    /// The access log for `config`: the running one if its settings did not
    /// change (so a reload does not reopen the file), else a new one.
    pub fn access_log(&self, config: &AccessLogConfig) -> std::io::Result<AccessLog> {
        let mut current = self.access_log.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((c, log)) = &*current
            && c.path == config.path
            && c.format == config.format
        {
            return Ok(log.clone());
        }
        let log = AccessLog::open(config).map_err(|e| {
            let to = config
                .path
                .as_ref()
                .map_or("standard output".to_string(), |p| p.display().to_string());
            std::io::Error::new(e.kind(), format!("cannot write to {to}: {e}"))
        })?;
        *current = Some((config.clone(), log.clone()));
        Ok(log)
    }

    /// Builds the first runtime from a checked config, or says every reason
    /// it cannot be, one per line.
    pub fn build(&self, config: Config) -> anyhow::Result<Built> {
        runtime::build(config, self, 1).map_err(|errors| {
            let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            anyhow::anyhow!(lines.join("\n"))
        })
    }

    /// Loads a config file and builds its runtime.
    pub fn load(&self, file: &Path) -> anyhow::Result<Built> {
        let config = Config::load(file)?;
        self.build(config)
    }
}

/// Serves `built` until SIGTERM or SIGINT, reloading on SIGHUP, on
/// `POST /reload` and (if `watch`) when the config or a policy file
/// changes; then drains.
pub async fn serve(app: Arc<App>, built: Built, watch: bool) -> anyhow::Result<()> {
    for up in &built.runtime.upstreams {
        tracing::info!(
            upstream = %up.name,
            policy = %up.policy().name(),
            backends = up.backends.len(),
            "upstream ready"
        );
    }
    let Built { runtime, listeners } = built;
    let proxy = Proxy::new(runtime, app.metrics.unrouted.clone());
    let reloader = Reloader::start(app, proxy, listeners, watch).await?;
    reloader.run(shutdown_signal()).await;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
