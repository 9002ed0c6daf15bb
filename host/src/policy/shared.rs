//! State a policy keeps in the host: counters and a small key-value store
//! per upstream group, shared by every instance and kept across hot swaps
//! and config reloads.
//!
//! Locks here are taken only when a policy opens a counter (normally once
//! per instance) or uses the key-value store; a counter's value is a plain
//! atomic.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

/// Counters an upstream's policies may open; more is a policy bug.
pub const MAX_COUNTERS: usize = 1024;
/// Longest key accepted by `kv-set`.
pub const MAX_KV_KEY: usize = 256;
/// Longest value accepted by `kv-set`.
pub const MAX_KV_VALUE: usize = 4096;
/// Most keys held per upstream.
pub const MAX_KV_KEYS: usize = 10_000;

/// [`SharedState`] is the host-side state of one upstream group's policies.
#[derive(Debug, Default)]
pub struct SharedState {
    counters: Mutex<HashMap<String, Arc<AtomicU64>>>,
    kv: Mutex<HashMap<String, Vec<u8>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave the maps inconsistent
    // (single inserts/removes), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SharedState {
    /// The counter `name`, created at 0; `None` past [`MAX_COUNTERS`].
    pub fn counter(&self, name: &str) -> Option<Arc<AtomicU64>> {
        let mut counters = lock(&self.counters);
        if let Some(c) = counters.get(name) {
            return Some(c.clone());
        }
        if counters.len() >= MAX_COUNTERS {
            return None;
        }
        let c = Arc::new(AtomicU64::new(0));
        counters.insert(name.to_string(), c.clone());
        Some(c)
    }

    /// The counters named `metric/NAME`, as (NAME, value), for `/metrics`.
    pub fn metric_counters(&self) -> Vec<(String, u64)> {
        lock(&self.counters)
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("metric/").map(|name| {
                    (
                        name.to_string(),
                        v.load(std::sync::atomic::Ordering::Relaxed),
                    )
                })
            })
            .collect()
    }

    /// A copy with the same counter values and an empty key-value store,
    /// for dry runs that must not move the real counters.
    pub fn snapshot(&self) -> SharedState {
        let counters = lock(&self.counters)
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    Arc::new(AtomicU64::new(v.load(std::sync::atomic::Ordering::Relaxed))),
                )
            })
            .collect();
        SharedState {
            counters: Mutex::new(counters),
            kv: Mutex::default(),
        }
    }

    /// A copy of the value under `key`.
    pub fn kv_get(&self, key: &str) -> Option<Vec<u8>> {
        lock(&self.kv).get(key).cloned()
    }

    /// Stores `value` under `key` within the documented limits.
    pub fn kv_set(&self, key: String, value: Vec<u8>) -> Result<(), String> {
        if key.len() > MAX_KV_KEY {
            return Err(format!(
                "key is {} bytes, the limit is {MAX_KV_KEY}",
                key.len()
            ));
        }
        if value.len() > MAX_KV_VALUE {
            return Err(format!(
                "value is {} bytes, the limit is {MAX_KV_VALUE}",
                value.len()
            ));
        }
        let mut kv = lock(&self.kv);
        if kv.len() >= MAX_KV_KEYS && !kv.contains_key(&key) {
            return Err(format!("the store is full ({MAX_KV_KEYS} keys)"));
        }
        kv.insert(key, value);
        Ok(())
    }

    /// Removes `key`; whether it was there.
    pub fn kv_delete(&self, key: &str) -> bool {
        lock(&self.kv).remove(key).is_some()
    }
}

/// [`StateRegistry`] hands out each upstream group's [`SharedState`] by
/// name, so a reloaded config or a swapped policy finds the same state.
#[derive(Debug, Default)]
pub struct StateRegistry {
    groups: Mutex<HashMap<String, Arc<SharedState>>>,
}

impl StateRegistry {
    /// The state of upstream `name`, created empty on first use.
    pub fn get(&self, name: &str) -> Arc<SharedState> {
        lock(&self.groups)
            .entry(name.to_string())
            .or_default()
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn counters_with_the_same_name_are_the_same_counter() {
        let s = SharedState::default();
        let a = s.counter("rr").unwrap();
        a.fetch_add(5, Ordering::Relaxed);
        assert_eq!(s.counter("rr").unwrap().load(Ordering::Relaxed), 5);
        assert_eq!(s.counter("other").unwrap().load(Ordering::Relaxed), 0);
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
    fn kv_refuses_oversized_entries_and_a_full_store() {
        let s = SharedState::default();
        assert!(s.kv_set("k".repeat(MAX_KV_KEY + 1), vec![]).is_err());
        assert!(s.kv_set("k".into(), vec![0; MAX_KV_VALUE + 1]).is_err());
        for i in 0..MAX_KV_KEYS {
            s.kv_set(i.to_string(), vec![1]).unwrap();
        }
        assert!(s.kv_set("new".into(), vec![]).is_err());
        assert!(
            s.kv_set("0".into(), vec![2]).is_ok(),
            "overwriting is allowed"
        );
        assert_eq!(s.kv_get("0"), Some(vec![2]));
        assert!(s.kv_delete("0"));
        assert!(!s.kv_delete("0"));
    }

    #[test]
    fn the_registry_returns_the_same_state_for_a_name() {
        let r = StateRegistry::default();
        r.get("app").kv_set("x".into(), vec![7]).unwrap();
        assert_eq!(r.get("app").kv_get("x"), Some(vec![7]));
        assert_eq!(r.get("other").kv_get("x"), None);
    }
}
