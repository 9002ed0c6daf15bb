//! State a policy keeps in the host: counters and a small key-value store
//! per upstream group, shared by every instance and kept across hot swaps
//! and config reloads.
//!
//! Locks here are taken only when a policy opens a counter (normally once
//! per instance) or uses the key-value store; a counter's value is a plain
//! atomic. With `shared-state = "redis"` the same calls work on this
//! process's copy of the state in Redis ([`super::fleet`]): nothing here
//! waits for the network.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::counter::Counter;
use super::fleet::{Fleet, FleetGroup};
use super::kv::KvStore;
pub use super::kv::{MAX_KV_KEY, MAX_KV_KEYS, MAX_KV_VALUE};
use crate::config::{SharedStateMode, StateConfig};

/// Counters an upstream's policies may open; more is a policy bug.
pub const MAX_COUNTERS: usize = 1024;
/// Counters whose names start with this are the proxy's own metrics
/// (`/metrics`): they stay per process even on shared state, as
/// Prometheus counters are.
const METRIC_PREFIX: &str = "metric/";

/// [`SharedState`] is the host-side state of one upstream group's policies.
#[derive(Debug, Default)]
pub struct SharedState {
    counters: Mutex<HashMap<String, Counter>>,
    kv: Arc<KvStore>,
    /// Set when the state is shared through Redis.
    fleet: Option<Arc<FleetGroup>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave the maps inconsistent
    // (single inserts/removes), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SharedState {
    /// The state of upstream `upstream`, shared through `fleet`'s Redis.
    pub fn shared(fleet: &Arc<Fleet>, upstream: &str) -> SharedState {
        let group = fleet.group(upstream);
        SharedState {
            counters: Mutex::default(),
            kv: group.kv.clone(),
            fleet: Some(group),
        }
    }

    /// Whether the state is shared through Redis.
    pub fn is_shared(&self) -> bool {
        self.fleet.is_some()
    }

    /// The counter `name`, created at 0; `None` past [`MAX_COUNTERS`].
    pub fn counter(&self, name: &str) -> Option<Counter> {
        let mut counters = lock(&self.counters);
        if let Some(c) = counters.get(name) {
            return Some(c.clone());
        }
        if counters.len() >= MAX_COUNTERS {
            return None;
        }
        let c = match &self.fleet {
            Some(group) if !name.starts_with(METRIC_PREFIX) => Counter::Blocks(group.counter(name)),
            _ => Counter::local(0),
        };
        counters.insert(name.to_string(), c.clone());
        Some(c)
    }

    /// The counters named `metric/NAME`, as (NAME, value), for `/metrics`.
    pub fn metric_counters(&self) -> Vec<(String, u64)> {
        lock(&self.counters)
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(METRIC_PREFIX)
                    .map(|name| (name.to_string(), v.load()))
            })
            .collect()
    }

    /// A local copy with the same counter values and an empty key-value
    /// store, for dry runs that must not move the real counters.
    pub fn snapshot(&self) -> SharedState {
        let counters = lock(&self.counters)
            .iter()
            .map(|(k, v)| (k.clone(), Counter::local(v.load())))
            .collect();
        SharedState {
            counters: Mutex::new(counters),
            ..SharedState::default()
        }
    }

    /// A copy of the value under `key`.
    pub fn kv_get(&self, key: &str) -> Option<Vec<u8>> {
        self.kv.get(key)
    }

    /// Stores `value` under `key` within the documented limits.
    pub fn kv_set(&self, key: String, value: Vec<u8>) -> Result<(), String> {
        self.kv.set(key, value)
    }

    /// Removes `key`; whether it was there.
    pub fn kv_delete(&self, key: &str) -> bool {
        self.kv.delete(key)
    }
}

/// [`StateRegistry`] hands out each upstream group's [`SharedState`] by
/// name, so a reloaded config or a swapped policy finds the same state. A
/// group whose `shared-state` changed gets a new state.
#[derive(Debug, Default)]
pub struct StateRegistry {
    groups: Mutex<HashMap<String, (SharedStateMode, Arc<SharedState>)>>,
    /// One link per `[state]`, started on first use, kept alive by the
    /// groups that use it.
    fleets: Mutex<Vec<Weak<Fleet>>>,
    /// Failed exchanges of every link, closed ones included.
    redis_errors: Arc<AtomicU64>,
}

impl StateRegistry {
    /// The state of upstream `name` kept as `mode` says, created empty on
    /// first use (or when `mode` changed).
    pub fn get(&self, name: &str, mode: &SharedStateMode) -> Arc<SharedState> {
        let mut groups = lock(&self.groups);
        if let Some((m, s)) = groups.get(name)
            && m == mode
        {
            return s.clone();
        }
        let state = Arc::new(match mode {
            SharedStateMode::Local => SharedState::default(),
            SharedStateMode::Redis(config) => SharedState::shared(&self.fleet(config), name),
        });
        groups.insert(name.to_string(), (mode.clone(), state.clone()));
        state
    }

    /// Forgets the state of every group `keep` says no to (upstreams a
    /// reload removed). Policies still running on it keep it until they
    /// end; a Redis link no group uses any more then closes.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        lock(&self.groups).retain(|name, _| keep(name));
    }

    /// The state of upstream `name`, if it has one.
    pub fn peek(&self, name: &str) -> Option<Arc<SharedState>> {
        lock(&self.groups).get(name).map(|(_, s)| s.clone())
    }

    fn fleet(&self, config: &StateConfig) -> Arc<Fleet> {
        let mut fleets = lock(&self.fleets);
        fleets.retain(|f| f.strong_count() > 0);
        if let Some(f) = fleets
            .iter()
            .filter_map(Weak::upgrade)
            .find(|f| f.config() == config)
        {
            return f;
        }
        let f = Fleet::start(config, self.redis_errors.clone());
        fleets.push(Arc::downgrade(&f));
        f
    }

    /// With any upstream on Redis: whether every Redis in use answers, and
    /// the failed exchanges so far.
    pub fn redis_status(&self) -> Option<(bool, u64)> {
        let live: Vec<Arc<Fleet>> = lock(&self.fleets)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        if live.is_empty() {
            return None;
        }
        Some((
            live.iter().all(|f| f.is_up()),
            self.redis_errors.load(Ordering::Relaxed),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RedisTarget;

    #[test]
    fn counters_with_the_same_name_are_the_same_counter() {
        let s = SharedState::default();
        let a = s.counter("rr").unwrap();
        a.fetch_add(5);
        assert_eq!(s.counter("rr").unwrap().load(), 5);
        assert_eq!(s.counter("other").unwrap().load(), 0);
    }

    #[test]
    fn counters_are_capped() {
        let s = SharedState::default();
        for i in 0..MAX_COUNTERS {
            assert!(s.counter(&i.to_string()).is_some());
        }
        assert!(s.counter("one-too-many").is_none());
        assert!(s.counter("0").is_some());
    }

    #[test]
    fn the_registry_returns_the_same_state_for_a_name() {
        let r = StateRegistry::default();
        let local = SharedStateMode::Local;
        r.get("app", &local).kv_set("x".into(), vec![7]).unwrap();
        assert_eq!(r.get("app", &local).kv_get("x"), Some(vec![7]));
        assert_eq!(r.get("other", &local).kv_get("x"), None);
        assert!(r.redis_status().is_none());
    }

    #[test]
    fn retain_forgets_the_groups_no_longer_wanted() {
        let r = StateRegistry::default();
        let local = SharedStateMode::Local;
        r.get("app", &local).kv_set("x".into(), vec![7]).unwrap();
        r.get("gone", &local).kv_set("x".into(), vec![8]).unwrap();
        r.retain(|name| name == "app");
        assert!(r.peek("gone").is_none());
        assert_eq!(r.get("app", &local).kv_get("x"), Some(vec![7]));
    }

    #[test]
    fn shared_state_keeps_metric_counters_local_and_works_without_redis() {
        let r = StateRegistry::default();
        let mode = SharedStateMode::Redis(StateConfig {
            // Nothing listens there: the state runs on local values.
            redis: RedisTarget::Single("redis://127.0.0.1:1".into()),
            ca: None,
            counter_block: 8,
            refresh: std::time::Duration::from_millis(100),
        });
        let s = r.get("app", &mode);
        assert!(s.is_shared());
        assert!(matches!(s.counter("rr"), Some(Counter::Blocks(_))));
        assert!(matches!(s.counter("metric/x"), Some(Counter::Local(_))));
        let rr = s.counter("rr").unwrap();
        assert_eq!(
            (0..3).map(|_| rr.fetch_add(1)).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        s.kv_set("k".into(), vec![1]).unwrap();
        assert_eq!(s.kv_get("k"), Some(vec![1]));
        assert_eq!(r.redis_status().map(|(up, _)| up), Some(false));
        assert!(!r.get("app", &SharedStateMode::Local).is_shared());
    }
}
