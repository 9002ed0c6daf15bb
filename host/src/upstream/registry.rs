//! [`BackendRegistry`] keeps each backend address's statistics and
//! connection pool across config reloads, as Caddy's host pool does: a
//! backend marked down stays down, and warm connections stay warm, when the
//! config around it changes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::backend::{Backend, BackendStats};
use super::counters::BackendMetrics;
use super::pool::{Pool, PoolLimits};
use crate::config::UpstreamConfig;

/// Pools are shared by groups that use the same address with the same
/// settings.
type PoolKey = (SocketAddr, usize, Duration, usize);

/// See the module docs.
#[derive(Debug, Default)]
pub struct BackendRegistry {
    stats: Mutex<HashMap<SocketAddr, Arc<BackendStats>>>,
    pools: Mutex<HashMap<PoolKey, Arc<Pool>>>,
}

impl BackendRegistry {
    /// The backends of `config`, with shared statistics and pools;
    /// `metrics(name)` gives each backend's counters. An address seen for
    /// the first time joins at `joined_ns` (0 for the config the proxy
    /// starts with: those backends were there before it).
    pub fn backends(
        &self,
        config: &UpstreamConfig,
        joined_ns: u64,
        metrics: impl Fn(&str) -> BackendMetrics,
    ) -> Vec<Backend> {
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let limits = PoolLimits {
            max_idle: config.keepalive,
            idle_timeout: config.idle_timeout,
            max_connections: config.max_connections_per_backend,
        };
        config
            .backends
            .iter()
            .map(|b| Backend {
                name: b.name.as_str().into(),
                address: b.address.clone(),
                socket_addr: b.socket_addr,
                weight: b.weight,
                backup: b.backup,
                h2: b.h2,
                stats: stats
                    .entry(b.socket_addr)
                    .or_insert_with(|| Arc::new(BackendStats::joined(joined_ns)))
                    .clone(),
                pool: pools
                    .entry((
                        b.socket_addr,
                        limits.max_idle,
                        limits.idle_timeout,
                        limits.max_connections,
                    ))
                    .or_insert_with(|| Arc::new(Pool::new(b.socket_addr, limits)))
                    .clone(),
                metrics: metrics(&b.name),
            })
            .collect()
    }

    /// Forgets addresses no running config uses any more.
    pub fn prune(&self) {
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, s| Arc::strong_count(s) > 1);
        self.pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, p| Arc::strong_count(p) > 1);
    }
}
