//! The outcomes of a group's attempts, kept for a policy that observes
//! them: a bounded log that every instance reads from its own position, so
//! each sees every outcome (the most recent [`KEPT`] if it was idle).
//! Pushed on the response path (one short lock), read before an
//! instance's next `select`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::api::Observed;
use super::bindings::v02::switchyard::policy::types::Outcome;
use super::contract::{Members, outcome_for};
use super::host_impl::monotonic_ns;

/// Outcomes kept for instances that have not seen them yet.
pub const KEPT: usize = 256;

/// See the module docs.
#[derive(Default)]
pub struct OutcomeLog {
    /// Sequence number the next outcome gets (outcomes pushed so far).
    head: AtomicU64,
    entries: Mutex<VecDeque<Observed>>,
}

impl OutcomeLog {
    /// Adds an outcome.
    pub fn push(&self, o: Observed) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() == KEPT {
            entries.pop_front();
        }
        entries.push_back(o);
        self.head.fetch_add(1, Ordering::Release);
    }

    /// How many outcomes have been pushed: where a new reader starts.
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// The outcomes after position `seen`, as `members` names backends,
    /// into `out` (cleared first); returns the new position.
    pub fn since(&self, seen: u64, members: &Members, out: &mut Vec<Outcome>) -> u64 {
        out.clear();
        if self.head() == seen {
            return seen;
        }
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let head = self.head();
        let new = (head - seen.min(head)).min(entries.len() as u64) as usize;
        out.extend(
            entries
                .iter()
                .skip(entries.len() - new)
                .filter_map(|o| outcome_for(o, members)),
        );
        head
    }
}

/// Outcomes are delivered in batches: once [`BATCH`] are waiting, or
/// [`INTERVAL_NS`] after the instance's last delivery, so that a busy
/// instance pays for one `observe` call per batch rather than one per
/// request (a call costs about as much as a `select`).
pub const BATCH: u64 = 32;
/// See [`BATCH`].
pub const INTERVAL_NS: u64 = 1_000_000;

/// [`Reader`] is one instance's place in the log.
#[derive(Default)]
pub struct Reader {
    /// Its position: from 0, so that its first call brings the group's
    /// recent outcomes and a replacement instance does not start blind.
    seen: u64,
    /// When it was last told outcomes (monotonic ns).
    told_ns: u64,
    /// Reused buffer for what it is told.
    batch: Vec<Outcome>,
}

impl Reader {
    /// The outcomes to tell the instance now, if a batch is due and not
    /// empty (see [`BATCH`]).
    pub fn batch(&mut self, log: &OutcomeLog, members: &Members) -> Option<&[Outcome]> {
        let waiting = log.head().saturating_sub(self.seen);
        let due = waiting >= BATCH
            || (waiting > 0 && monotonic_ns().saturating_sub(self.told_ns) >= INTERVAL_NS);
        if !due {
            return None;
        }
        self.seen = log.since(self.seen, members, &mut self.batch);
        self.told_ns = monotonic_ns();
        (!self.batch.is_empty()).then_some(self.batch.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn members() -> Members {
        let text = "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.u]\npolicy = \"round-robin\"\nbackends = [{ name = \"a\", address = \"127.0.0.1:1\" }, { name = \"b\", address = \"127.0.0.1:2\" }]\n";
        let config = Config::parse(Path::new("t.toml"), text).unwrap();
        Members::new(1, &config.upstreams[0].backends)
    }

    fn observed(backend: &str, status: u16) -> Observed {
        Observed {
            backend: backend.into(),
            attempt: 1,
            status: Some(status),
            failure: None,
            headers_us: Some(10),
            body_us: None,
            ended_ns: 0,
            headers: Vec::new(),
        }
    }

    #[test]
    fn each_reader_sees_what_came_after_its_position() {
        let log = OutcomeLog::default();
        let m = members();
        let mut out = Vec::new();
        let start = log.head();
        log.push(observed("a", 200));
        log.push(observed("b", 500));
        log.push(observed("gone", 200));
        let pos = log.since(start, &m, &mut out);
        // The removed backend's outcome is not delivered.
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].backend, out[1].backend), (0, 1));
        assert_eq!(log.since(pos, &m, &mut out), pos);
        assert!(out.is_empty());
    }

    #[test]
    fn an_idle_reader_gets_the_most_recent_only() {
        let log = OutcomeLog::default();
        let m = members();
        let mut out = Vec::new();
        for i in 0..(KEPT as u16 + 10) {
            log.push(observed("a", 200 + i));
        }
        log.since(0, &m, &mut out);
        assert_eq!(out.len(), KEPT);
        match out[0].result {
            crate::policy::bindings::v02::switchyard::policy::types::AttemptResult::Response(s) => {
                assert_eq!(s, 210)
            }
            _ => panic!("a response"),
        }
    }
}
