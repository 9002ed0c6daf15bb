//! The clock behind policy deadlines: a timer on each calling thread's own
//! CPU-time clock, and the one engine whose epoch it advances.
//!
//! A thread that calls into a policy gets, before its first call, a POSIX
//! timer on `CLOCK_THREAD_CPUTIME_ID` that expires every [`TICK`] of CPU
//! the thread uses. The kernel looks at CPU-time timers from its own
//! scheduler tick (every 4 ms at `HZ=250`), so the timer costs no extra
//! interrupt and no thread switch, and a thread that is idle or waiting
//! costs nothing. The expiry is a real-time signal to that thread; its
//! handler counts it in a thread-local and advances the engine's epoch, so
//! a guest running on the thread reaches an epoch check and the deadline
//! callback ([`super::sandbox::DeadlineWatch`]) decides.
//!
//! This replaced a ticker thread that advanced the epoch every millisecond
//! of wall time: on a VM, where arming a timer and switching threads exit
//! to the hypervisor, its thousand wakeups a second cost 3.4% of the CPU
//! per request (the two builds side by side in `bench/pair.sh`,
//! BENCHMARKS.md).

use std::cell::Cell;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use wasmtime::Engine;

/// How much CPU time a thread uses between two expiries of its timer (the
/// kernel delivers them at its own tick, so perhaps several at once).
pub const TICK: Duration = Duration::from_millis(1);

/// The engine whose epoch the signal handler advances: one per process
/// (see [`deadline_engine`]).
static ENGINE: OnceLock<Engine> = OnceLock::new();
/// The signal the timers send, once its handler is installed.
static SIGNAL: OnceLock<libc::c_int> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

thread_local! {
    /// Timer expiries delivered to this thread (written by the handler).
    static TICKS: Cell<u64> = const { Cell::new(0) };
    /// This thread's timer, once made; `Err` if it could not be.
    static TIMER: Cell<Option<Result<usize, ()>>> = const { Cell::new(None) };
    /// Deletes this thread's timer when the thread ends.
    static OWNER: TimerOwner = const { TimerOwner };
}

/// The process's deadline-enforcing engine, made by `make` on first use
/// (with its signal handler installed first); later calls get the same
/// engine. One engine per process is what wasmtime advises, and it lets
/// the signal handler reach the epoch without a registry.
pub fn deadline_engine(
    make: impl FnOnce() -> wasmtime::Result<Engine>,
) -> wasmtime::Result<Engine> {
    if let Some(e) = ENGINE.get() {
        return Ok(e.clone());
    }
    let _once = INIT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(e) = ENGINE.get() {
        return Ok(e.clone());
    }
    if SIGNAL.get().is_none() {
        let signal = install_handler().map_err(|e| {
            wasmtime::format_err!("cannot install the policy deadline's signal handler: {e}")
        })?;
        let _ = SIGNAL.set(signal);
    }
    // Prove on this thread that a CPU-time timer can be made, so a
    // machine that cannot is refused at start, not at the first call.
    arm_or_error().map_err(|e| {
        wasmtime::format_err!("cannot create a CPU-time timer for policy deadlines: {e}")
    })?;
    let engine = make()?;
    let _ = ENGINE.set(engine.clone());
    Ok(engine)
}

/// Makes sure this thread's timer runs, before a guest call on it, and
/// returns the ticks delivered so far; `None` if the thread has no timer
/// (then the call must not run: nothing could stop it).
pub fn arm() -> Option<u64> {
    arm_or_error().ok()
}

fn arm_or_error() -> std::io::Result<u64> {
    match TIMER.get() {
        Some(Ok(_)) => Ok(TICKS.get()),
        Some(Err(())) => Err(std::io::Error::other(
            "this thread could not create its CPU-time timer",
        )),
        None => {
            let made = match SIGNAL.get() {
                Some(&signal) => create_timer(signal),
                None => Err(std::io::Error::other("no signal handler installed")),
            };
            TIMER.set(Some(made.as_ref().map(|&id| id).map_err(|_| ())));
            // Registers the destructor that deletes the timer.
            OWNER.with(|_| ());
            match made {
                Ok(_) => Ok(TICKS.get()),
                Err(e) => {
                    tracing::error!(
                        "cannot create this thread's CPU-time timer ({e}); its policy calls fail"
                    );
                    Err(e)
                }
            }
        }
    }
}

/// Ticks delivered to this thread so far.
pub fn ticks() -> u64 {
    TICKS.get()
}

/// CPU time this thread has used, if the clock can be read. A system call
/// (about 0.7 µs here), so only read once a tick has come.
pub fn thread_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

struct TimerOwner;

impl Drop for TimerOwner {
    fn drop(&mut self) {
        if let Some(Ok(id)) = TIMER.get() {
            TIMER.set(None);
            // SAFETY: `id` is a timer this thread created and has not
            // deleted; after this no signal is sent for it.
            unsafe { libc::timer_delete(id as libc::timer_t) };
        }
    }
}

/// The handler: async-signal-safe (a thread-local counter, an atomic add).
extern "C" fn on_tick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    TICKS.set(TICKS.get().wrapping_add(1));
    if let Some(engine) = ENGINE.get() {
        engine.increment_epoch();
    }
}

/// Installs [`on_tick`] for the first real-time signal nobody handles.
fn install_handler() -> std::io::Result<libc::c_int> {
    for signal in (libc::SIGRTMIN()..=libc::SIGRTMAX()).rev() {
        // SAFETY: plain sigaction calls on a zeroed struct; the handler
        // only touches a thread-local Cell and an atomic.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            if old.sa_sigaction != libc::SIG_DFL {
                continue;
            }
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_tick as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(signal, &action, std::ptr::null_mut()) == 0 {
                return Ok(signal);
            }
        }
    }
    Err(std::io::Error::other("no free real-time signal"))
}

/// A timer on this thread's CPU clock, sending `signal` to this thread
/// every [`TICK`] of its CPU time.
fn create_timer(signal: libc::c_int) -> std::io::Result<usize> {
    // SAFETY: timer_create and timer_settime only read the structs we
    // pass and write the id; the signal's handler is installed.
    unsafe {
        let mut event: libc::sigevent = std::mem::zeroed();
        event.sigev_notify = libc::SIGEV_THREAD_ID;
        event.sigev_signo = signal;
        // The system call, not glibc's `gettid`: in the static binary of
        // the container image (fat LTO, glibc linked statically) that
        // symbol ended up a weak reference nothing defined, and the proxy
        // jumped to address 0 when it made its first timer, at start.
        event.sigev_notify_thread_id = libc::syscall(libc::SYS_gettid) as libc::pid_t;
        let mut id: libc::timer_t = std::ptr::null_mut();
        if libc::timer_create(libc::CLOCK_THREAD_CPUTIME_ID, &mut event, &mut id) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let period = libc::timespec {
            tv_sec: 0,
            tv_nsec: TICK.as_nanos() as libc::c_long,
        };
        let spec = libc::itimerspec {
            it_interval: period,
            it_value: period,
        };
        if libc::timer_settime(id, 0, &spec, std::ptr::null_mut()) != 0 {
            let e = std::io::Error::last_os_error();
            libc::timer_delete(id);
            return Err(e);
        }
        Ok(id as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The process's engine, made as the proxy makes it (whichever test
    /// comes first, every later one gets the same configuration).
    fn engine() -> Engine {
        super::super::engine::PolicyEngine::new()
            .unwrap()
            .engine()
            .clone()
    }

    /// Spins until this thread has used `cpu` of CPU time.
    fn spin(cpu: Duration) {
        let start = thread_cpu_time().unwrap();
        while thread_cpu_time().unwrap() - start < cpu {
            std::hint::spin_loop();
        }
    }

    #[test]
    fn a_busy_thread_gets_ticks_and_a_sleeping_one_none() {
        let _ = engine();
        std::thread::spawn(|| {
            let first = arm().unwrap();
            spin(Duration::from_millis(30));
            let busy = ticks() - first;
            assert!(busy >= 3, "30 ms of CPU brought {busy} ticks");
            let before = ticks();
            std::thread::sleep(Duration::from_millis(50));
            // (One expiry may still be on its way as the thread sleeps.)
            assert!(ticks() - before <= 1, "a sleeping thread was ticked");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_process_has_one_deadline_engine() {
        let (a, b) = (engine(), engine());
        assert!(Engine::same(&a, &b));
    }
}
