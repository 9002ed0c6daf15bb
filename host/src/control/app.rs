//! What outlives any one config: the Wasm engine, policy and backend state
//! kept by name or address, the metrics, the access-log writer.

use std::sync::Mutex;

use super::metrics::Metrics;
use crate::config::AccessLogConfig;
use crate::policy::{PolicyEngine, StateRegistry};
use crate::proxy::access_log::AccessLog;
use crate::upstream::BackendRegistry;
use crate::upstream::trace::TraceRegistry;

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
    /// Each upstream's last decisions (`[admin] decisions`).
    pub traces: TraceRegistry,
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
            traces: TraceRegistry::default(),
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
}
