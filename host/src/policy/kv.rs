//! An upstream group's key-value store, as policies read and write it:
//! a map in memory, behind one lock. With `shared-state = "redis"` the
//! map is this process's copy of the store in Redis: writes also queue
//! for the background task in [`super::fleet`] (at most one pending
//! write per key, the latest), which brings other proxies' writes in.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// Longest key accepted by `kv-set`.
pub const MAX_KV_KEY: usize = 256;
/// Longest value accepted by `kv-set`.
pub const MAX_KV_VALUE: usize = 4096;
/// Most keys held per upstream.
pub const MAX_KV_KEYS: usize = 10_000;
/// Most writes waiting for Redis (distinct keys); past it, writes stay
/// local and are counted as dropped.
const MAX_PENDING: usize = 2 * MAX_KV_KEYS;

/// A write on its way to Redis: the key and its value (`None`: deleted).
pub type Write = (String, Option<Vec<u8>>);

/// [`KvStore`] is one group's key-value store.
#[derive(Debug, Default)]
pub struct KvStore {
    inner: Mutex<Inner>,
    /// Set when writes are shared: wakes the task that sends them.
    wake: Option<Arc<Notify>>,
    /// Writes not sent to Redis because too many were waiting.
    dropped: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<String, Vec<u8>>,
    /// Writes not yet in Redis, by key.
    pending: HashMap<String, Option<Vec<u8>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Single inserts and removes cannot leave the maps inconsistent, so a
    // poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl KvStore {
    /// A store whose writes are also queued for Redis; `wake` is notified
    /// on each.
    pub fn shared(wake: Arc<Notify>) -> KvStore {
        KvStore {
            wake: Some(wake),
            ..KvStore::default()
        }
    }

    /// A copy of the value under `key`.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        lock(&self.inner).map.get(key).cloned()
    }

    /// Stores `value` under `key` within the documented limits.
    pub fn set(&self, key: String, value: Vec<u8>) -> Result<(), String> {
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
        let mut kv = lock(&self.inner);
        if kv.map.len() >= MAX_KV_KEYS && !kv.map.contains_key(&key) {
            return Err(format!("the store is full ({MAX_KV_KEYS} keys)"));
        }
        if self.wake.is_some() {
            self.queue(&mut kv, &key, Some(&value));
        }
        kv.map.insert(key, value);
        Ok(())
    }

    /// Removes `key`; whether it was there.
    pub fn delete(&self, key: &str) -> bool {
        let mut kv = lock(&self.inner);
        let was = kv.map.remove(key).is_some();
        if was && self.wake.is_some() {
            self.queue(&mut kv, key, None);
        }
        was
    }

    fn queue(&self, kv: &mut Inner, key: &str, value: Option<&[u8]>) {
        if kv.pending.len() >= MAX_PENDING && !kv.pending.contains_key(key) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        kv.pending
            .insert(key.to_string(), value.map(<[u8]>::to_vec));
        if let Some(w) = &self.wake {
            w.notify_one();
        }
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        lock(&self.inner).map.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes dropped on their way to Redis (too many waiting).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The writes waiting for Redis, taken.
    pub fn take_pending(&self) -> Vec<Write> {
        lock(&self.inner).pending.drain().collect()
    }

    /// Writes that did not reach Redis, put back unless the key was
    /// written again since.
    pub fn unsent(&self, writes: Vec<Write>) {
        let mut kv = lock(&self.inner);
        for (k, v) in writes {
            kv.pending.entry(k).or_insert(v);
        }
    }

    /// Other proxies' writes, from Redis; a key with a write of this
    /// process still waiting keeps its local value.
    pub fn apply(&self, changes: Vec<Write>) {
        let mut kv = lock(&self.inner);
        for (k, v) in changes {
            if kv.pending.contains_key(&k) {
                continue;
            }
            match v {
                Some(v) => kv.map.insert(k, v),
                None => kv.map.remove(&k),
            };
        }
    }

    /// The whole store as Redis has it; keys with a write of this process
    /// still waiting keep their local value.
    pub fn replace(&self, entries: Vec<(String, Vec<u8>)>) {
        let mut kv = lock(&self.inner);
        let Inner { map, pending } = &mut *kv;
        map.retain(|k, _| pending.contains_key(k));
        for (k, v) in entries {
            if !pending.contains_key(&k) {
                map.insert(k, v);
            }
        }
    }

    /// Queues every key held, for a Redis that lost its data.
    pub fn republish(&self) {
        let mut kv = lock(&self.inner);
        let Inner { map, pending } = &mut *kv;
        for (k, v) in map.iter() {
            pending.entry(k.clone()).or_insert_with(|| Some(v.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_refuses_oversized_entries_and_a_full_store() {
        let s = KvStore::default();
        assert!(s.set("k".repeat(MAX_KV_KEY + 1), vec![]).is_err());
        assert!(s.set("k".into(), vec![0; MAX_KV_VALUE + 1]).is_err());
        for i in 0..MAX_KV_KEYS {
            s.set(i.to_string(), vec![1]).unwrap();
        }
        assert!(s.set("new".into(), vec![]).is_err());
        assert!(s.set("0".into(), vec![2]).is_ok(), "overwriting is allowed");
        assert_eq!(s.get("0"), Some(vec![2]));
        assert!(s.delete("0"));
        assert!(!s.delete("0"));
        assert!(s.take_pending().is_empty(), "a local store queues nothing");
    }

    #[test]
    fn shared_writes_are_seen_at_once_and_queued_latest_first() {
        let s = KvStore::shared(Arc::new(Notify::new()));
        s.set("a".into(), vec![1]).unwrap();
        s.set("a".into(), vec![2]).unwrap();
        s.set("b".into(), vec![3]).unwrap();
        assert!(s.delete("b"));
        assert_eq!(s.get("a"), Some(vec![2]));
        let mut p = s.take_pending();
        p.sort();
        assert_eq!(p, [("a".into(), Some(vec![2])), ("b".into(), None)]);
        assert!(s.take_pending().is_empty());
    }

    #[test]
    fn remote_changes_never_overwrite_a_write_still_waiting() {
        let s = KvStore::shared(Arc::new(Notify::new()));
        s.set("mine".into(), vec![1]).unwrap();
        s.apply(vec![
            ("mine".into(), Some(vec![9])),
            ("theirs".into(), Some(vec![8])),
        ]);
        assert_eq!(s.get("mine"), Some(vec![1]));
        assert_eq!(s.get("theirs"), Some(vec![8]));
        let sent = s.take_pending();
        s.unsent(sent);
        s.replace(vec![("other".into(), vec![7])]);
        assert_eq!(s.get("mine"), Some(vec![1]));
        assert_eq!(s.get("theirs"), None);
        assert_eq!(s.get("other"), Some(vec![7]));
        s.take_pending();
        s.apply(vec![("mine".into(), None)]);
        assert_eq!(s.get("mine"), None);
    }
}
