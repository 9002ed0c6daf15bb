//! The limits a policy runs under: a deadline per call (wasmtime epoch
//! interruption, advanced by each thread's CPU-time timer,
//! [`super::cpu_clock`]) and a memory cap per instance (a resource limiter
//! on its store).
//!
//! A policy is charged for its own CPU time, not for the machine's load: a
//! call that is merely preempted finishes normally. The deadline callback
//! runs whenever the epoch advances during a call (any thread's tick
//! advances it). The first tick this thread receives during the call
//! starts the count; the call is interrupted at the first tick after it has
//! then used its timeout of CPU. Ticks come with the kernel's scheduler
//! tick, so an endless loop stops between one and two kernel ticks after
//! its timeout (4-8 ms at `HZ=250`, 1-2 ms at `HZ=1000`); a call that
//! finishes within a tick is never looked at.

use std::time::Duration;

use wasmtime::UpdateDeadline;

use super::cpu_clock;

/// [`DeadlineWatch`] decides, when the epoch advances during a call,
/// whether the policy has used up its time.
#[derive(Debug, Default)]
pub struct DeadlineWatch {
    /// CPU time the call may use.
    limit: Duration,
    /// This thread's ticks when the call started; `None`: no timer.
    ticks_at_start: Option<u64>,
    /// This thread's CPU time at the first tick during the call.
    cpu_at_first_tick: Option<Duration>,
}

impl DeadlineWatch {
    /// Prepares for a call that may use `limit` of CPU time; returns the
    /// epoch deadline to set (ticks beyond the current epoch). On a thread
    /// without a timer nothing could stop the call, so it is refused at
    /// its first instruction (deadline 0: interrupted as a timeout).
    pub fn arm(&mut self, limit: Duration) -> u64 {
        self.limit = limit;
        self.cpu_at_first_tick = None;
        self.ticks_at_start = cpu_clock::arm();
        u64::from(self.ticks_at_start.is_some())
    }

    /// Called by wasmtime when the epoch passes the deadline.
    pub fn on_deadline(&mut self) -> UpdateDeadline {
        let Some(start) = self.ticks_at_start else {
            return UpdateDeadline::Interrupt;
        };
        // Another thread's tick: this one has not been charged yet.
        if cpu_clock::ticks() == start {
            return UpdateDeadline::Continue(1);
        }
        let Some(now) = cpu_clock::thread_cpu_time() else {
            return UpdateDeadline::Interrupt;
        };
        match self.cpu_at_first_tick {
            None => {
                self.cpu_at_first_tick = Some(now);
                UpdateDeadline::Continue(1)
            }
            Some(first) if now.saturating_sub(first) >= self.limit => UpdateDeadline::Interrupt,
            Some(_) => UpdateDeadline::Continue(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The process's deadline engine, made as the proxy makes it.
    fn engine() {
        super::super::engine::PolicyEngine::new().unwrap();
    }

    /// Spins until this thread has used `cpu`.
    fn spin(cpu: Duration) {
        let start = cpu_clock::thread_cpu_time().unwrap();
        while cpu_clock::thread_cpu_time().unwrap() - start < cpu {
            std::hint::spin_loop();
        }
    }

    /// Calls `on_deadline` until it interrupts, as the epoch checks of a
    /// spinning guest would; returns the CPU time that took.
    fn spin_until_interrupted(w: &mut DeadlineWatch) -> Duration {
        let start = cpu_clock::thread_cpu_time().unwrap();
        loop {
            let seen = cpu_clock::ticks();
            while cpu_clock::ticks() == seen {
                std::hint::spin_loop();
            }
            if let UpdateDeadline::Interrupt = w.on_deadline() {
                return cpu_clock::thread_cpu_time().unwrap() - start;
            }
        }
    }

    #[test]
    fn a_busy_call_is_interrupted_after_its_limit_of_cpu() {
        engine();
        std::thread::spawn(|| {
            let mut w = DeadlineWatch::default();
            assert_eq!(w.arm(Duration::from_millis(20)), 1);
            let used = spin_until_interrupted(&mut w);
            assert!(used >= Duration::from_millis(20), "{used:?}");
            assert!(used < Duration::from_millis(200), "{used:?}");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_descheduled_call_or_another_threads_tick_is_not_charged() {
        engine();
        std::thread::spawn(|| {
            let mut w = DeadlineWatch::default();
            w.arm(Duration::from_millis(1));
            // Other threads' ticks: this thread's count has not moved.
            for _ in 0..100 {
                assert!(matches!(w.on_deadline(), UpdateDeadline::Continue(1)));
            }
            // Sleeping stands in for being preempted: wall time passes,
            // CPU does not, and no tick comes.
            std::thread::sleep(Duration::from_millis(30));
            assert!(matches!(w.on_deadline(), UpdateDeadline::Continue(1)));
            // A new call starts from nothing.
            spin(Duration::from_millis(10));
            w.arm(Duration::from_millis(1));
            assert!(matches!(w.on_deadline(), UpdateDeadline::Continue(1)));
        })
        .join()
        .unwrap();
    }
}
