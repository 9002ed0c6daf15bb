//! The outcomes of a group's attempts, kept for a policy that observes
//! them: a bounded log that every instance reads from its own position, so
//! each sees every outcome (the most recent [`KEPT`] if it was idle).
//! Pushed on the response path (one short lock), read before an
//! instance's next `select`: in batches, except that a failure (a 5xx or
//! an attempt that failed) is told at once.

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
    /// The position just after the newest failure (0: none yet).
    failed_upto: AtomicU64,
    entries: Mutex<VecDeque<Observed>>,
}

impl OutcomeLog {
    /// Adds an outcome.
    pub fn push(&self, o: Observed) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() == KEPT {
            entries.pop_front();
        }
        let failed = o.failure.is_some() || o.status.is_some_and(|s| s >= 500);
        entries.push_back(o);
        let upto = self.head.fetch_add(1, Ordering::Release) + 1;
        if failed {
            self.failed_upto.store(upto, Ordering::Release);
        }
    }

    /// Whether a failure was pushed after position `seen`.
    pub fn failed_since(&self, seen: u64) -> bool {
        self.failed_upto.load(Ordering::Acquire) > seen
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
/// request (a call costs about as much as a `select`). A failure does not
/// wait for either: a policy that backs off a failing backend must know
/// before its next choice, or the next requests of a fast client reach
/// that backend again whenever the rotation comes round to it within the
/// millisecond. Failures are rare on a healthy group, so this costs
/// little.
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
        self.batch_at(log, members, monotonic_ns)
    }

    /// [`Reader::batch`] on the clock `now` (read once, and only when
    /// something is waiting).
    fn batch_at(
        &mut self,
        log: &OutcomeLog,
        members: &Members,
        now: impl FnOnce() -> u64,
    ) -> Option<&[Outcome]> {
        let waiting = log.head().saturating_sub(self.seen);
        if waiting == 0 {
            return None;
        }
        let now = now();
        let due = waiting >= BATCH
            || log.failed_since(self.seen)
            || now.saturating_sub(self.told_ns) >= INTERVAL_NS;
        if !due {
            return None;
        }
        self.seen = log.since(self.seen, members, &mut self.batch);
        self.told_ns = now;
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

    /// What a reader is told at `now_ms`, as statuses (0: a failure;
    /// `None`: nothing due).
    fn told(reader: &mut Reader, log: &OutcomeLog, m: &Members, now_ms: f64) -> Option<Vec<u16>> {
        use crate::policy::bindings::v02::switchyard::policy::types::AttemptResult;
        let batch = reader.batch_at(log, m, || (now_ms * 1e6) as u64)?;
        Some(
            batch
                .iter()
                .map(|o| match o.result {
                    AttemptResult::Response(s) => s,
                    AttemptResult::Failed(_) => 0,
                })
                .collect(),
        )
    }

    #[test]
    fn successes_wait_for_a_batch_and_a_failure_is_told_at_once() {
        let log = OutcomeLog::default();
        let m = members();
        let mut reader = Reader::default();
        assert_eq!(told(&mut reader, &log, &m, 100.0), None);
        // A new reader is told what is there at its first call.
        log.push(observed("a", 200));
        assert_eq!(told(&mut reader, &log, &m, 100.0), Some(vec![200]));
        // Within the interval (1 ms), successes wait...
        log.push(observed("b", 200));
        assert_eq!(told(&mut reader, &log, &m, 100.1), None);
        // ...a 5xx does not, and brings what waited with it.
        log.push(observed("a", 503));
        assert_eq!(told(&mut reader, &log, &m, 100.2), Some(vec![200, 503]));
        assert_eq!(told(&mut reader, &log, &m, 100.3), None);
        // Nor does an attempt that failed without a response.
        log.push(Observed {
            status: None,
            failure: Some(crate::policy::api::AttemptFailure::ConnectFailed),
            ..observed("b", 0)
        });
        assert_eq!(told(&mut reader, &log, &m, 100.4), Some(vec![0]));
        // Successes after it wait again, until the interval has passed.
        log.push(observed("a", 200));
        assert_eq!(told(&mut reader, &log, &m, 101.3), None);
        assert_eq!(told(&mut reader, &log, &m, 101.4), Some(vec![200]));
        // A failure another reader was told is news to this one.
        let mut late = Reader::default();
        assert_eq!(
            told(&mut late, &log, &m, 101.4),
            Some(vec![200, 200, 503, 0, 200])
        );
        // And BATCH successes make a batch, whatever the time.
        for _ in 0..BATCH {
            log.push(observed("b", 200));
        }
        assert_eq!(told(&mut late, &log, &m, 101.5).map(|b| b.len()), Some(32));
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
