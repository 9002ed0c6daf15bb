//! Decision traces: why a request went where it went. With `[admin]
//! decisions = N`, each group keeps its last N decisions (the request's
//! method, host and path; the policy and its digest; the backend states it
//! saw; its ranked answer and reason; the fallback if it failed; what a
//! shadow policy would have chosen) and the outcome of every attempt, for
//! `GET /decisions`. Off by default: then nothing is built per request.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::{Value, json};

use crate::policy::BackendState;

/// One decision and what came of it.
#[derive(Debug)]
pub struct Trace {
    /// When it was made.
    pub time: SystemTime,
    /// The request's method.
    pub method: http::Method,
    /// The host it named.
    pub host: Option<String>,
    /// Its path and query.
    pub path: String,
    /// The policy that decided, and its digest.
    pub policy: (String, String),
    /// Which attempt of the request this decision was for (1: first).
    pub attempt: u32,
    /// Each backend's name and the state the policy saw.
    pub seen: Vec<(Arc<str>, BackendState)>,
    /// The backends chosen, best first (the first was used).
    pub candidates: Vec<Arc<str>>,
    /// The policy's reason.
    pub reason: Option<String>,
    /// Why the fallback decided instead of the policy.
    pub fallback: Option<String>,
    /// What the shadow policy chose, if one was asked.
    pub shadow: Option<ShadowSaw>,
    /// The attempts made on this decision, as they ended.
    attempts: Mutex<Vec<Attempt>>,
}

/// A shadow policy's answer to the same decision.
#[derive(Debug, Clone)]
pub enum ShadowSaw {
    /// It chose this backend.
    Chose(Arc<str>),
    /// It failed (the failure's kind).
    Failed(&'static str),
}

/// How one attempt ended.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The backend tried.
    pub backend: Arc<str>,
    /// 1 for the request's first attempt.
    pub attempt: u32,
    /// The response status, if one came.
    pub status: Option<u16>,
    /// What went wrong, if anything.
    pub failure: Option<&'static str>,
    /// Time to the response headers, ms.
    pub headers_ms: Option<f64>,
}

impl Trace {
    /// A trace of a decision on `parts`, with no attempt yet.
    pub fn new(parts: &http::request::Parts, attempt: u32) -> Trace {
        Trace {
            time: SystemTime::now(),
            method: parts.method.clone(),
            host: crate::policy::request_host(parts).map(str::to_string),
            path: parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path().to_string(), |p| p.to_string()),
            policy: (String::new(), String::new()),
            attempt,
            seen: Vec::new(),
            candidates: Vec::new(),
            reason: None,
            fallback: None,
            shadow: None,
            attempts: Mutex::new(Vec::new()),
        }
    }

    /// Adds an attempt's outcome.
    pub fn attempted(&self, a: Attempt) {
        self.attempts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(a);
    }

    /// The trace as `GET /decisions` shows it.
    pub fn to_json(&self) -> Value {
        let backends: Vec<Value> = self
            .seen
            .iter()
            .map(|(name, s)| {
                json!({
                    "name": &**name,
                    "healthy": s.healthy,
                    "in_flight": s.in_flight,
                    "latency_ewma_us": s.latency_ewma_us,
                    "consecutive_failures": s.consecutive_failures,
                })
            })
            .collect();
        let attempts: Vec<Value> = self
            .attempts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|a| {
                json!({
                    "backend": &*a.backend,
                    "attempt": a.attempt,
                    "status": a.status,
                    "failure": a.failure,
                    "headers_ms": a.headers_ms,
                })
            })
            .collect();
        json!({
            "time": humantime::format_rfc3339_micros(self.time).to_string(),
            "method": self.method.as_str(),
            "host": self.host,
            "path": self.path,
            "attempt": self.attempt,
            "policy": self.policy.0,
            "digest": self.policy.1,
            "candidates": self.candidates.iter().map(|c| &**c).collect::<Vec<_>>(),
            "reason": self.reason,
            "fallback": self.fallback,
            "shadow": self.shadow.as_ref().map(|s| match s {
                ShadowSaw::Chose(b) => json!({ "backend": &**b }),
                ShadowSaw::Failed(kind) => json!({ "failed": kind }),
            }),
            "backends": backends,
            "outcome": attempts,
        })
    }
}

/// The last decisions of one group, newest last; bounded.
#[derive(Debug)]
pub struct TraceRing {
    capacity: usize,
    entries: Mutex<VecDeque<Arc<Trace>>>,
}

impl TraceRing {
    /// A ring keeping `capacity` decisions.
    pub fn new(capacity: usize) -> TraceRing {
        TraceRing {
            capacity,
            entries: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
        }
    }

    /// Keeps `trace`, forgetting the oldest if full; returns it shared.
    pub fn push(&self, trace: Trace) -> Arc<Trace> {
        let trace = Arc::new(trace);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity {
            entries.pop_front();
        }
        entries.push_back(trace.clone());
        trace
    }

    /// The most recent `limit` decisions, newest first.
    pub fn recent(&self, limit: usize) -> Vec<Arc<Trace>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.iter().rev().take(limit).cloned().collect()
    }

    /// How many it keeps.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// The rings by upstream name, kept across reloads while the capacity
/// stays the same.
#[derive(Debug, Default)]
pub struct TraceRegistry {
    rings: Mutex<HashMap<String, Arc<TraceRing>>>,
}

impl TraceRegistry {
    /// Upstream `name`'s ring for `capacity` decisions (`None`: off).
    pub fn ring(&self, name: &str, capacity: usize) -> Option<Arc<TraceRing>> {
        let mut rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        if capacity == 0 {
            rings.remove(name);
            return None;
        }
        let ring = rings
            .entry(name.to_string())
            .and_modify(|r| {
                if r.capacity() != capacity {
                    *r = Arc::new(TraceRing::new(capacity));
                }
            })
            .or_insert_with(|| Arc::new(TraceRing::new(capacity)));
        Some(ring.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_keeps_the_newest() {
        let ring = TraceRing::new(3);
        let parts = http::Request::get("/x?y=1")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        for i in 0..5 {
            ring.push(Trace::new(&parts, i));
        }
        let recent: Vec<u32> = ring.recent(10).iter().map(|t| t.attempt).collect();
        assert_eq!(recent, [4, 3, 2]);
        assert_eq!(ring.recent(1).len(), 1);
        assert_eq!(ring.recent(1)[0].to_json()["path"], "/x?y=1");
    }

    #[test]
    fn rings_survive_while_their_size_does() {
        let reg = TraceRegistry::default();
        let a = reg.ring("u", 10).unwrap();
        assert!(Arc::ptr_eq(&a, &reg.ring("u", 10).unwrap()));
        assert!(!Arc::ptr_eq(&a, &reg.ring("u", 20).unwrap()));
        assert!(reg.ring("u", 0).is_none());
    }
}
