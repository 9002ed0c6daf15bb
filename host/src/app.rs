//! Starting and stopping the proxy: load a config, build its runtime, bind
//! the listeners, serve until SIGTERM or SIGINT, drain.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use crate::config::Config;
use crate::policy::{PolicyEngine, StateRegistry};
use crate::proxy::Proxy;
use crate::runtime::Runtime;
use crate::server;

/// The process-wide pieces that outlive any one config.
pub struct App {
    /// Compiles policies.
    pub engine: PolicyEngine,
    /// Policy state by upstream name.
    pub registry: StateRegistry,
}

impl App {
    /// A new engine and empty state.
    pub fn new() -> anyhow::Result<App> {
        let engine = PolicyEngine::new()
            .map_err(|e| anyhow::anyhow!("cannot start the Wasm engine: {e}"))?;
        Ok(App {
            engine,
            registry: StateRegistry::default(),
        })
    }

    /// Builds a runtime from a checked config, or every reason it cannot be.
    pub fn build(&self, config: Config) -> anyhow::Result<Runtime> {
        Runtime::build(config, &self.engine, &self.registry).map_err(|errors| {
            let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            anyhow::anyhow!(lines.join("\n"))
        })
    }

    /// Loads a config file and builds its runtime.
    pub fn load(&self, file: &Path) -> anyhow::Result<Runtime> {
        let config = Config::load(file)?;
        self.build(config)
    }
}

/// Serves `runtime` until SIGTERM or SIGINT, then drains.
pub async fn serve(runtime: Runtime) -> anyhow::Result<()> {
    let listeners = server::bind(&runtime.config.listeners).await?;
    for (l, addr) in listeners.iter().zip(&runtime.config.listeners) {
        let local = l.local_addr().with_context(|| format!("listener {addr}"))?;
        tracing::info!("listening on http://{local}");
    }
    for up in &runtime.upstreams {
        tracing::info!(
            upstream = %up.name,
            policy = %up.policy.name(),
            backends = up.backends.len(),
            "upstream ready"
        );
    }
    let grace = runtime.config.shutdown_grace;
    let proxy = Proxy::new(runtime);
    server::serve(Arc::clone(&proxy), listeners, shutdown_signal(), grace).await;
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
