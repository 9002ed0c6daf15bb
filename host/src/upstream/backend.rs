//! One backend: its configuration, its connection pool, and its live
//! numbers (requests in flight, latency, passive health as nginx's
//! `max_fails` / `fail_timeout`, the verdict of active checks). The numbers
//! are written only through [`super::Upstream::report`] and the health
//! checker, and read by everyone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use super::counters::BackendMetrics;
use super::pool::Pool;

/// [`BackendStats`] are one backend's live numbers.
#[derive(Debug, Default)]
pub struct BackendStats {
    /// Set by active health checks while the backend fails them.
    checks_failing: AtomicBool,
    in_flight: AtomicU32,
    latency_ewma_us: AtomicU32,
    fails: AtomicU32,
    window_start_ns: AtomicU64,
    down_until_ns: AtomicU64,
    /// When it joined, or last came back from failing active checks.
    since_ns: AtomicU64,
    /// Failures since the last success.
    consecutive: AtomicU32,
}

impl BackendStats {
    /// Numbers for a backend that joins at `now`.
    pub fn joined(now: u64) -> BackendStats {
        BackendStats {
            since_ns: AtomicU64::new(now),
            ..BackendStats::default()
        }
    }

    /// When the backend last became usable (joined, or came back after
    /// being marked down by either kind of health), if it is usable at
    /// `now`; 0 if it is not.
    pub fn healthy_since(&self, now: u64) -> u64 {
        if !self.healthy(now) {
            return 0;
        }
        self.since_ns
            .load(Ordering::Relaxed)
            .max(self.down_until_ns.load(Ordering::Relaxed))
    }

    /// Failed attempts since the last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive.load(Ordering::Relaxed)
    }

    /// Whether the backend is usable at `now`: not failing active checks
    /// and not marked down by passive health.
    pub fn healthy(&self, now: u64) -> bool {
        !self.checks_failing.load(Ordering::Relaxed)
            && now >= self.down_until_ns.load(Ordering::Relaxed)
    }

    /// Records the verdict of active health checks.
    pub fn set_check_failing(&self, failing: bool) {
        if self.checks_failing.swap(failing, Ordering::Relaxed) && !failing {
            self.since_ns
                .store(crate::policy::monotonic_ns(), Ordering::Relaxed);
        }
    }

    /// Forgets passive failures: an active check that sees the backend come
    /// back knows better than a mark set when it went away.
    pub fn clear_failures(&self) {
        self.fails.store(0, Ordering::Relaxed);
        self.down_until_ns.store(0, Ordering::Relaxed);
    }

    /// Whether active health checks have taken the backend out.
    pub fn check_failing(&self) -> bool {
        self.checks_failing.load(Ordering::Relaxed)
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// EWMA of the time to response headers, in µs (0: no sample yet).
    pub fn latency_ewma_us(&self) -> u32 {
        self.latency_ewma_us.load(Ordering::Relaxed)
    }

    /// Counts a request as started; the guard ends it when dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Records a failure. Returns true if this failure marked the backend
    /// down: `max_fails` failures within `fail_timeout` take it out for
    /// `fail_timeout` (a `max_fails` of 0 never does).
    pub(super) fn record_failure(&self, now: u64, max_fails: u32, fail_timeout: Duration) -> bool {
        self.consecutive.fetch_add(1, Ordering::Relaxed);
        if max_fails == 0 {
            return false;
        }
        let window = fail_timeout.as_nanos() as u64;
        let start = self.window_start_ns.load(Ordering::Relaxed);
        let fails = if now.saturating_sub(start) > window || start == 0 {
            self.window_start_ns.store(now.max(1), Ordering::Relaxed);
            self.fails.store(1, Ordering::Relaxed);
            1
        } else {
            self.fails.fetch_add(1, Ordering::Relaxed) + 1
        };
        if fails >= max_fails && self.healthy(now) {
            self.down_until_ns.store(now + window, Ordering::Relaxed);
            self.fails.store(0, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Records an answer: clears the failure count and updates the latency
    /// average (weight 1/8, as TCP's smoothed RTT).
    pub(super) fn record_success(&self, latency: Duration) {
        if self.fails.load(Ordering::Relaxed) != 0 {
            self.fails.store(0, Ordering::Relaxed);
        }
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
        let sample = latency.as_micros().min(u128::from(u32::MAX)) as i64;
        let old = i64::from(self.latency_ewma_us.load(Ordering::Relaxed));
        let new = if old == 0 {
            sample
        } else {
            old + (sample - old) / 8
        };
        self.latency_ewma_us
            .store(new.clamp(1, i64::from(u32::MAX)) as u32, Ordering::Relaxed);
    }
}

/// A request in flight to a backend; decrements the count when dropped.
#[derive(Debug)]
pub struct InFlight(Arc<BackendStats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One backend of a group.
#[derive(Debug)]
pub struct Backend {
    /// Name from the config.
    pub name: Arc<str>,
    /// Address as written.
    pub address: String,
    /// Resolved address.
    pub socket_addr: SocketAddr,
    /// Weight from the config.
    pub weight: u32,
    /// Used only when no primary backend is healthy.
    pub backup: bool,
    /// Spoken to over HTTP/2.
    pub h2: bool,
    /// Live numbers, shared with any other group using the same address
    /// and kept across reloads.
    pub stats: Arc<BackendStats>,
    /// Connections to it.
    pub pool: Arc<Pool>,
    /// Response counters.
    pub metrics: BackendMetrics,
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn one_failure_marks_down_with_nginx_defaults() {
        let s = BackendStats::default();
        assert!(s.healthy(5 * SEC));
        assert!(s.record_failure(5 * SEC, 1, Duration::from_secs(10)));
        assert!(!s.healthy(6 * SEC));
        assert!(s.healthy(15 * SEC));
    }

    #[test]
    fn max_fails_counts_within_the_window_only() {
        let s = BackendStats::default();
        let ft = Duration::from_secs(10);
        assert!(!s.record_failure(SEC, 3, ft));
        assert!(!s.record_failure(2 * SEC, 3, ft));
        // The window expired: counting starts again.
        assert!(!s.record_failure(20 * SEC, 3, ft));
        assert!(!s.record_failure(21 * SEC, 3, ft));
        assert!(s.record_failure(22 * SEC, 3, ft));
        assert!(!s.healthy(23 * SEC));
    }

    #[test]
    fn max_fails_zero_never_marks_down() {
        let s = BackendStats::default();
        for t in 1..10 {
            assert!(!s.record_failure(t * SEC, 0, Duration::from_secs(10)));
        }
        assert!(s.healthy(10 * SEC));
    }

    #[test]
    fn healthy_since_is_the_join_or_the_end_of_the_last_down_mark() {
        let s = BackendStats::joined(2 * SEC);
        assert_eq!(s.healthy_since(3 * SEC), 2 * SEC);
        assert!(s.record_failure(5 * SEC, 1, Duration::from_secs(10)));
        assert_eq!(s.consecutive_failures(), 1);
        assert_eq!(s.healthy_since(6 * SEC), 0);
        assert_eq!(s.healthy_since(16 * SEC), 15 * SEC);
        s.record_success(Duration::from_micros(100));
        assert_eq!(s.consecutive_failures(), 0);
    }

    #[test]
    fn latency_average_moves_an_eighth_of_the_way() {
        let s = BackendStats::default();
        s.record_success(Duration::from_micros(800));
        assert_eq!(s.latency_ewma_us(), 800);
        s.record_success(Duration::from_micros(1600));
        assert_eq!(s.latency_ewma_us(), 900);
    }

    #[test]
    fn in_flight_guards_count_up_and_down() {
        let s = Arc::new(BackendStats::default());
        let a = s.start();
        let b = s.start();
        assert_eq!(s.in_flight(), 2);
        drop(a);
        drop(b);
        assert_eq!(s.in_flight(), 0);
    }
}
