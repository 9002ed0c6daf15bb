//! Serving: the first runtime built and put in service, reloads until
//! SIGTERM or SIGINT, then the drain.

use std::path::Path;
use std::sync::Arc;

use super::app::App;
use super::dns;
use super::reload::Reloader;
use super::runtime::{self, Built};
use crate::config::Config;
use crate::proxy::Proxy;

/// Loads a config file, looks up its DNS backends and builds its first
/// runtime (blocking while policies compile).
pub async fn load(app: &App, file: &Path) -> anyhow::Result<Built> {
    let config = Config::load(file)?;
    let config = dns::discover(config, None, &app.metrics).await;
    runtime::first(app, config)
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
