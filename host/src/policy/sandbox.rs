//! The limits a policy runs under: a deadline per call (wasmtime epoch
//! interruption, driven by a ticker thread) and a memory cap per instance
//! (a resource limiter on its store).
//!
//! The ticker advances the engine's epoch every [`TICK`]; a call gets a
//! deadline of enough ticks to cover its timeout. When the deadline passes
//! the call is not stopped at once: a policy is charged for its own CPU
//! time, not for the machine's load, so the store's [`DeadlineWatch`]
//! samples the thread's CPU clock and gives it one more tick; only if the
//! thread really ran for (half) that tick is the call interrupted. A call
//! that was merely preempted finishes normally; an endless loop stops about
//! one tick after its timeout.
//!
//! When no call has started for a while the ticker parks, so an idle proxy
//! does not wake up 1,000 times a second; the next call wakes it before
//! entering the guest.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use thread_local::ThreadLocal;
use wasmtime::{Engine, UpdateDeadline};

/// How often the epoch advances.
pub const TICK: Duration = Duration::from_millis(1);

/// Ticks without any call after which the ticker parks.
const IDLE_TICKS: u32 = 100;

/// Longest a parked ticker sleeps before looking again (a safety net:
/// `Ticker::enter` wakes it).
const PARK_TIMEOUT: Duration = Duration::from_secs(1);

/// However descheduled a call is, it is interrupted this long after its
/// deadline first passed.
const HARD_LIMIT: Duration = Duration::from_secs(1);

/// Epoch ticks to allow a call that may run for `timeout`.
pub fn deadline_ticks(timeout: Duration) -> u64 {
    let tick = TICK.as_nanos();
    (timeout.as_nanos().div_ceil(tick) as u64).max(1)
}

/// CPU time this thread has used (`CLOCK_THREAD_CPUTIME_ID`).
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// [`DeadlineWatch`] decides, when a call's epoch deadline passes, whether
/// the policy used up its time or the thread was only descheduled.
#[derive(Debug, Default)]
pub struct DeadlineWatch {
    cpu_at_check: Option<Duration>,
    first_hit: Option<Instant>,
}

impl DeadlineWatch {
    /// Forgets the previous call; done before every call.
    pub fn reset(&mut self) {
        self.cpu_at_check = None;
        self.first_hit = None;
    }

    /// Called by wasmtime when the deadline passes.
    pub fn on_deadline(&mut self) -> UpdateDeadline {
        let cpu = thread_cpu_time();
        match self.cpu_at_check {
            None => {
                self.cpu_at_check = Some(cpu);
                self.first_hit = Some(Instant::now());
                UpdateDeadline::Continue(1)
            }
            Some(before) => {
                let ran = cpu.saturating_sub(before);
                let waited = self.first_hit.map_or(Duration::ZERO, |t| t.elapsed());
                if ran >= TICK / 2 || waited >= HARD_LIMIT {
                    UpdateDeadline::Interrupt
                } else {
                    self.cpu_at_check = Some(cpu);
                    UpdateDeadline::Continue(1)
                }
            }
        }
    }
}

#[derive(Default)]
#[repr(align(64))]
struct Padded(AtomicU64);

struct State {
    /// Calls started, one counter per thread (no shared cache line).
    activity: ThreadLocal<Padded>,
    parked: AtomicBool,
    stop: AtomicBool,
    /// Epoch increments so far.
    ticks: AtomicU64,
    thread: std::sync::OnceLock<Thread>,
}

/// [`Ticker`] drives epoch interruption for one engine. Dropping the last
/// clone stops its thread.
#[derive(Clone)]
pub struct Ticker {
    state: Arc<State>,
    _stop: Arc<StopOnDrop>,
}

struct StopOnDrop(Arc<State>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.0.thread.get() {
            t.unpark();
        }
    }
}

impl Ticker {
    /// Starts the ticker thread for `engine`.
    pub fn start(engine: Engine) -> std::io::Result<Ticker> {
        let state = Arc::new(State {
            activity: ThreadLocal::new(),
            parked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            ticks: AtomicU64::new(0),
            thread: std::sync::OnceLock::new(),
        });
        let s = state.clone();
        let handle = thread::Builder::new()
            .name("switchyard-epoch".into())
            .spawn(move || run(engine, s))?;
        let _ = state.thread.set(handle.thread().clone());
        Ok(Ticker {
            _stop: Arc::new(StopOnDrop(state.clone())),
            state,
        })
    }

    /// Called before every entry into a guest: counts the call and wakes a
    /// parked ticker, so the deadline about to be set will be enforced.
    pub fn enter(&self) {
        let s = &*self.state;
        s.activity.get_or_default().0.fetch_add(1, Ordering::SeqCst);
        if s.parked.load(Ordering::SeqCst)
            && s.parked.swap(false, Ordering::SeqCst)
            && let Some(t) = s.thread.get()
        {
            t.unpark();
        }
    }
}

fn total(s: &State) -> u64 {
    s.activity
        .iter()
        .map(|p| p.0.load(Ordering::SeqCst))
        .fold(0, u64::wrapping_add)
}

fn run(engine: Engine, s: Arc<State>) {
    // The ticker keeps the default priority on purpose: at nice 19 a busy
    // machine ran it tens of milliseconds late, and an endless loop with it.
    let mut last = total(&s);
    let mut idle = 0;
    while !s.stop.load(Ordering::SeqCst) {
        thread::sleep(TICK);
        engine.increment_epoch();
        s.ticks.fetch_add(1, Ordering::Relaxed);
        let now = total(&s);
        if now != last {
            last = now;
            idle = 0;
            continue;
        }
        idle += 1;
        if idle < IDLE_TICKS {
            continue;
        }
        // Park, unless a call started between the count and the flag
        // (`enter` bumps its counter before it looks at the flag).
        s.parked.store(true, Ordering::SeqCst);
        if total(&s) != last || s.stop.load(Ordering::SeqCst) {
            s.parked.store(false, Ordering::SeqCst);
            continue;
        }
        // The timeout is only a safety net; `enter` unparks. `idle` keeps
        // its count: if nothing ran meanwhile, the next tick parks again
        // (an idle proxy wakes once per PARK_TIMEOUT, not 100 times).
        thread::park_timeout(PARK_TIMEOUT);
        s.parked.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_covers_the_timeout() {
        assert_eq!(deadline_ticks(Duration::from_millis(1)), 1);
        assert_eq!(deadline_ticks(Duration::from_micros(1)), 1);
        assert_eq!(deadline_ticks(Duration::from_millis(10)), 10);
    }

    #[test]
    fn a_busy_thread_is_interrupted_one_tick_after_its_deadline() {
        let mut w = DeadlineWatch::default();
        assert!(matches!(w.on_deadline(), UpdateDeadline::Continue(1)));
        // Spin until this thread has really run for a tick (however busy
        // the machine, so the test does not depend on its speed).
        let start = thread_cpu_time();
        while thread_cpu_time().saturating_sub(start) < TICK {
            std::hint::spin_loop();
        }
        assert!(matches!(w.on_deadline(), UpdateDeadline::Interrupt));
    }

    #[test]
    fn a_descheduled_thread_gets_more_time() {
        let mut w = DeadlineWatch::default();
        assert!(matches!(w.on_deadline(), UpdateDeadline::Continue(1)));
        // Sleeping stands in for being preempted: wall time passes, CPU does not.
        thread::sleep(TICK * 2);
        assert!(matches!(w.on_deadline(), UpdateDeadline::Continue(1)));
        w.reset();
        assert!(matches!(w.on_deadline(), UpdateDeadline::Continue(1)));
    }

    #[test]
    fn the_ticker_parks_when_idle_and_wakes_on_entry() {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).unwrap();
        let ticker = Ticker::start(engine).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !ticker.state.parked.load(Ordering::SeqCst) {
            assert!(std::time::Instant::now() < deadline, "ticker never parked");
            thread::sleep(Duration::from_millis(10));
        }
        // Parked, it stays parked, past its safety-net wake-up: one tick
        // per PARK_TIMEOUT while nothing runs.
        let ticks = ticker.state.ticks.load(Ordering::Relaxed);
        thread::sleep(PARK_TIMEOUT + Duration::from_millis(300));
        let idle_ticks = ticker.state.ticks.load(Ordering::Relaxed) - ticks;
        assert!(idle_ticks <= 3, "an idle ticker ticked {idle_ticks} times");
        ticker.enter();
        assert!(!ticker.state.parked.load(Ordering::SeqCst));
        thread::sleep(Duration::from_millis(20));
        assert!(ticker.state.ticks.load(Ordering::Relaxed) - ticks > idle_ticks);
    }
}
