//! A policy's health, from the verdicts on its calls.
//!
//! After `policy-max-failures` consecutive failures, or when at least half
//! of a thread's last [`WINDOW`] calls failed, the policy is reported
//! unhealthy; requests then go to the fallback without calling it, except
//! one probe every [`PROBE_INTERVAL`]. Successes in a row on probes heal
//! it: one after a run of failures, [`WINDOW`] / 4 after a bad failure rate
//! (or a policy failing every other call would flap).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use super::api::PolicyFailure;
use super::host_impl::monotonic_ns;

/// How often an unhealthy policy is tried again.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// Calls per thread over which the failure rate is judged.
pub const WINDOW: u32 = 20;

/// [`Health`] is shared by all of a policy's instances.
#[derive(Debug, Default)]
pub struct Health {
    max_failures: u32,
    consecutive: AtomicU32,
    unhealthy: AtomicBool,
    next_probe_ns: AtomicU64,
    successes: AtomicU32,
    heal_after: AtomicU32,
}

/// One thread's recent calls: the window the failure rate is judged on.
#[derive(Debug, Default)]
pub struct Record {
    calls: u32,
    failures: u32,
}

impl Health {
    /// A healthy policy, unhealthy after `max_failures` in a row.
    pub fn new(max_failures: u32) -> Health {
        Health {
            max_failures,
            ..Health::default()
        }
    }

    /// Not reported unhealthy.
    pub fn healthy(&self) -> bool {
        !self.unhealthy.load(Ordering::Relaxed)
    }

    /// Failures since the last success.
    pub fn consecutive(&self) -> u32 {
        self.consecutive.load(Ordering::Relaxed)
    }

    /// Whether this request should skip an unhealthy policy. One caller
    /// per probe interval gets to try it.
    pub fn skip(&self) -> bool {
        if !self.unhealthy.load(Ordering::Relaxed) {
            return false;
        }
        let now = monotonic_ns();
        let next = self.next_probe_ns.load(Ordering::Relaxed);
        now < next
            || self
                .next_probe_ns
                .compare_exchange(
                    next,
                    now + PROBE_INTERVAL.as_nanos() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
    }

    fn mark_unhealthy(&self, label: &str, why: std::fmt::Arguments<'_>, heal_after: u32) {
        self.successes.store(0, Ordering::Relaxed);
        self.heal_after.store(heal_after, Ordering::Relaxed);
        if !self.unhealthy.swap(true, Ordering::Relaxed) {
            self.next_probe_ns.store(
                monotonic_ns() + PROBE_INTERVAL.as_nanos() as u64,
                Ordering::Relaxed,
            );
            tracing::warn!(
                policy = %label,
                "policy unhealthy {why}; requests use the fallback, the policy is retried every {PROBE_INTERVAL:?}"
            );
        }
    }

    /// Counts a failure that is not a call's (an instance that could not
    /// be made).
    pub fn failed(&self, label: &str, failure: &PolicyFailure) {
        let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.max_failures {
            self.mark_unhealthy(
                label,
                format_args!("after {n} consecutive failures (last: {failure})"),
                1,
            );
        }
    }

    /// Takes the verdict on one call made on the thread whose `record` it
    /// is.
    pub fn settle(&self, label: &str, record: &mut Record, verdict: Result<(), &PolicyFailure>) {
        record.calls += 1;
        match verdict {
            Ok(()) => {
                if self.consecutive.load(Ordering::Relaxed) != 0 {
                    self.consecutive.store(0, Ordering::Relaxed);
                }
                if self.unhealthy.load(Ordering::Relaxed)
                    && self.successes.fetch_add(1, Ordering::Relaxed) + 1
                        >= self.heal_after.load(Ordering::Relaxed)
                    && self.unhealthy.swap(false, Ordering::Relaxed)
                {
                    tracing::info!(policy = %label, "policy is healthy again");
                }
            }
            Err(failure) => {
                record.failures += 1;
                self.successes.store(0, Ordering::Relaxed);
                self.failed(label, failure);
            }
        }
        if record.calls >= WINDOW {
            if record.failures * 2 >= record.calls {
                let (f, c) = (record.failures, record.calls);
                self.mark_unhealthy(
                    label,
                    format_args!("after {f} of its last {c} calls on one thread failed"),
                    WINDOW / 4,
                );
            }
            *record = Record::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail() -> PolicyFailure {
        PolicyFailure::Error("no".into())
    }

    #[test]
    fn a_run_of_failures_makes_it_unhealthy_and_one_success_heals_it() {
        let h = Health::new(3);
        let mut r = Record::default();
        for _ in 0..3 {
            h.settle("t", &mut r, Err(&fail()));
        }
        assert!(!h.healthy());
        h.settle("t", &mut r, Ok(()));
        assert!(h.healthy());
    }

    #[test]
    fn failing_every_other_call_makes_it_unhealthy_and_keeps_it_so() {
        let h = Health::new(5);
        let mut r = Record::default();
        for i in 0..WINDOW {
            let v = if i % 2 == 0 { Err(fail()) } else { Ok(()) };
            h.settle("t", &mut r, v.as_ref().map(|_| ()));
        }
        assert!(!h.healthy(), "half of {WINDOW} calls failed");
        // Alternating on: never WINDOW / 4 successes in a row.
        for i in 0..WINDOW {
            let v = if i % 2 == 0 { Err(fail()) } else { Ok(()) };
            h.settle("t", &mut r, v.as_ref().map(|_| ()));
            assert!(!h.healthy());
        }
        for _ in 0..WINDOW / 4 {
            h.settle("t", &mut r, Ok(()));
        }
        assert!(h.healthy());
    }
}
