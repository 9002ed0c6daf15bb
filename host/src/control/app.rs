//! What outlives any one config: the Wasm engine, policy and backend state
//! kept by name or address, the metrics, the access-log writer, and why the
//! last changes were refused.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

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
    refusals: Mutex<Refusals>,
}

/// [`Refusals`] says why the latest changes were refused while the running
/// config and policies kept serving; each is cleared by the next success.
#[derive(Debug, Clone, Default)]
pub struct Refusals {
    /// The last config reload, if it was refused.
    pub reload: Option<Refusal>,
    /// The last policy file swap of each upstream, if it was refused.
    pub policies: HashMap<String, Refusal>,
}

/// [`Refusal`] is one refused change: when, and why.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// When it was refused.
    pub at: SystemTime,
    /// Why, as logged.
    pub reason: String,
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
            refusals: Mutex::default(),
        })
    }

    /// Why the latest changes were refused.
    pub fn refusals(&self) -> Refusals {
        self.refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Notes a reload's outcome: a success clears every refusal (it loaded
    /// every policy anew).
    pub fn note_reload(&self, result: &Result<u64, String>) {
        let mut r = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(_) => *r = Refusals::default(),
            Err(reason) => r.reload = Some(refusal(reason)),
        }
    }

    /// Notes the outcome of a policy file swap in `upstream`.
    pub fn note_swap(&self, upstream: &str, refused: Option<&str>) {
        let mut r = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        match refused {
            None => r.policies.remove(upstream),
            Some(reason) => r.policies.insert(upstream.to_string(), refusal(reason)),
        };
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

fn refusal(reason: &str) -> Refusal {
    Refusal {
        at: SystemTime::now(),
        reason: reason.to_string(),
    }
}
