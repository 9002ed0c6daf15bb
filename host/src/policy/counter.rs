//! A policy's counter: a plain atomic when the group's state is local, a
//! [`BlockCounter`] when it is shared through Redis.
//!
//! A [`BlockCounter`] hands out values from a block reserved in Redis
//! ahead of time (one `INCRBY` a block, made by the background task in
//! [`super::fleet`]), so `counter-add` never waits on the network: its
//! fast path is one compare-and-swap, as cheap as the local counter's
//! `fetch_add`. When the block runs out with no reserved block ahead
//! (Redis down or slow, or a burst faster than a round trip), the counter
//! goes on counting locally, one block's worth at a time, and moves onto
//! the next reserved block, always above every value it handed out, once
//! one arrives.
//!
//! The block grows while the counter runs through one in less than
//! [`FAST`] (doubling, up to [`MAX_BLOCK`]) and shrinks back towards
//! `counter-block` when one lasts longer than [`SLOW`], so a busy counter
//! costs Redis (and this proxy's Redis thread) at most about a hundred
//! `INCRBY` a second, and a quiet one keeps blocks small and the fleet's
//! order close.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// A block used up faster than this makes the next one twice as large.
pub const FAST: Duration = Duration::from_millis(10);
/// A block that lasts longer than this makes the next one half as large
/// (never below `counter-block`).
pub const SLOW: Duration = Duration::from_millis(100);
/// The largest block a counter grows to.
pub const MAX_BLOCK: u64 = 1 << 20;

/// [`Counter`] is one counter of an upstream group, as a policy instance
/// holds it.
#[derive(Debug, Clone)]
pub enum Counter {
    /// Kept in this process: a plain atomic.
    Local(Arc<AtomicU64>),
    /// Shared through Redis in reserved blocks.
    Blocks(Arc<BlockCounter>),
}

impl Counter {
    /// A new local counter at `value`.
    pub fn local(value: u64) -> Counter {
        Counter::Local(Arc::new(AtomicU64::new(value)))
    }

    /// `counter-add`: adds `delta`, returns the value before.
    #[inline]
    pub fn fetch_add(&self, delta: u64) -> u64 {
        match self {
            Counter::Local(c) => c.fetch_add(delta, Ordering::Relaxed),
            Counter::Blocks(c) => c.fetch_add(delta),
        }
    }

    /// `counter-get`: the value this process would hand out next.
    #[inline]
    pub fn load(&self) -> u64 {
        match self {
            Counter::Local(c) => c.load(Ordering::Relaxed),
            Counter::Blocks(c) => c.load(),
        }
    }

    /// `counter-set`.
    #[inline]
    pub fn store(&self, value: u64) {
        match self {
            Counter::Local(c) => c.store(value, Ordering::Relaxed),
            Counter::Blocks(c) => c.store(value),
        }
    }
}

/// [`BlockCounter`] is a counter whose values come from blocks reserved in
/// Redis (see the module doc). `next` and `end` bound the range being
/// handed out; everything else sits behind a lock taken once a block.
#[derive(Debug)]
pub struct BlockCounter {
    /// The next value to hand out.
    next: AtomicU64,
    /// The end (exclusive) of the range in use; `next` never passes it on
    /// the fast path.
    end: AtomicU64,
    /// The least values per block (`counter-block`).
    block: u64,
    reserve: Mutex<Reserve>,
    /// Wakes the task that talks to Redis.
    wake: Arc<Notify>,
}

/// What the Redis task and the slow path share.
#[derive(Debug, Default)]
struct Reserve {
    /// A block reserved in Redis and not yet in use: `[start, end)`.
    ahead: Option<(u64, u64)>,
    /// The end of the range in use.
    limit: u64,
    /// A `counter-set` value not yet written to Redis.
    set: Option<u64>,
    /// Ranges counted locally, without a reserved block.
    local_runs: u64,
    /// Values the next block should hold (the allowance when counting
    /// locally too): `block` or more, see the module doc.
    size: u64,
    /// When the counter last moved onto a new range.
    switched: Option<Instant>,
}

/// What a [`BlockCounter`] needs from Redis, taken by the Redis task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wants {
    /// Write this value (a `counter-set`) first.
    pub set: Option<u64>,
    /// Reserve a block whose values are all at least this.
    pub block_above: Option<u64>,
    /// Values that block should hold.
    pub block: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl BlockCounter {
    /// A counter at 0 handing out `block` values per reservation; `wake`
    /// is notified whenever it wants a block or has a value to write.
    pub fn new(block: u64, wake: Arc<Notify>) -> BlockCounter {
        BlockCounter {
            next: AtomicU64::new(0),
            // Nothing in use: the first add takes the reserved block.
            end: AtomicU64::new(0),
            block: block.max(1),
            reserve: Mutex::new(Reserve {
                size: block.max(1),
                ..Reserve::default()
            }),
            wake,
        }
    }

    /// Adds `delta`, returns the value before.
    #[inline]
    pub fn fetch_add(&self, delta: u64) -> u64 {
        let v = self.next.load(Ordering::Acquire);
        if let Some(n) = v.checked_add(delta)
            && n <= self.end.load(Ordering::Acquire)
            && self
                .next
                .compare_exchange(v, n, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            return v;
        }
        self.add_slow(delta)
    }

    /// The value the next add would return (within the block in use).
    pub fn load(&self) -> u64 {
        self.next.load(Ordering::Acquire)
    }

    /// Sets the value at once here; Redis gets it from the background task,
    /// and blocks reserved after it start above it.
    pub fn store(&self, value: u64) {
        let mut r = lock(&self.reserve);
        // An empty range at `value`: the next add goes to the slow path.
        self.end.store(0, Ordering::Release);
        self.next.store(value, Ordering::Release);
        self.end.store(value, Ordering::Release);
        r.limit = value;
        r.ahead = None;
        r.set = Some(value);
        drop(r);
        self.wake.notify_one();
    }

    #[cold]
    fn add_slow(&self, delta: u64) -> u64 {
        let mut r = lock(&self.reserve);
        loop {
            let v = self.next.load(Ordering::Acquire);
            let e = self.end.load(Ordering::Acquire);
            match v.checked_add(delta) {
                Some(n) if n <= e => {
                    // Another thread moved onto a new range meanwhile.
                    if self
                        .next
                        .compare_exchange(v, n, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                    {
                        return v;
                    }
                }
                _ => break,
            }
        }
        // Close the range: adds that read the old end may still finish in
        // it, new ones wait for this lock.
        self.end.store(0, Ordering::Release);
        self.resize(&mut r);
        let ahead = r.ahead.take();
        let size = r.size;
        let (start, limit, reserved) = loop {
            let v = self.next.load(Ordering::Acquire);
            let (start, limit, reserved) = match ahead {
                // Never below a value already handed out here.
                Some((s, e)) if s.max(v).checked_add(delta).is_some_and(|n| n <= e) => {
                    (s.max(v), e, true)
                }
                _ => (v, v.saturating_add(size.max(delta)), false),
            };
            let n = start.wrapping_add(delta);
            if self
                .next
                .compare_exchange(v, n, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                break (start, limit, reserved);
            }
        };
        if !reserved {
            r.local_runs += 1;
        }
        r.limit = limit;
        self.end.store(limit, Ordering::Release);
        drop(r);
        self.wake.notify_one();
        start
    }

    /// Sizes the next block by how long the one ending lasted.
    fn resize(&self, r: &mut Reserve) {
        let now = Instant::now();
        if let Some(lasted) = r.switched.map(|t| now.duration_since(t)) {
            if lasted < FAST {
                r.size = r.size.saturating_mul(2).min(MAX_BLOCK.max(self.block));
            } else if lasted > SLOW {
                r.size = (r.size / 2).max(self.block);
            }
        }
        r.switched = Some(now);
    }

    /// What the counter needs from Redis now: a value to write, a block.
    pub fn wants(&self) -> Wants {
        let mut r = lock(&self.reserve);
        let floor = self.next.load(Ordering::Acquire).max(r.limit);
        Wants {
            set: r.set.take(),
            block_above: r.ahead.is_none().then_some(floor),
            block: r.size,
        }
    }

    /// A block `[start, end)` reserved in Redis, for when the range in use
    /// runs out.
    pub fn supply(&self, start: u64, end: u64) {
        let mut r = lock(&self.reserve);
        if r.ahead.is_none() && start < end {
            r.ahead = Some((start, end));
        }
    }

    /// A `counter-set` that could not be written: to be tried again.
    pub fn unwritten(&self, value: u64) {
        let mut r = lock(&self.reserve);
        r.set.get_or_insert(value);
    }

    /// Ranges counted locally so far (no reserved block was ahead).
    pub fn local_runs(&self) -> u64 {
        lock(&self.reserve).local_runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(block: u64) -> BlockCounter {
        BlockCounter::new(block, Arc::new(Notify::new()))
    }

    #[test]
    fn adds_hand_out_the_reserved_block_then_the_next() {
        let c = counter(4);
        c.supply(100, 104);
        assert_eq!(
            (0..4).map(|_| c.fetch_add(1)).collect::<Vec<_>>(),
            [100, 101, 102, 103]
        );
        assert_eq!(c.wants().block_above, Some(104));
        c.supply(200, 204);
        assert_eq!(c.fetch_add(1), 200);
        assert_eq!(c.load(), 201);
        assert_eq!(c.local_runs(), 0);
    }

    #[test]
    fn without_a_block_ahead_it_counts_on_locally_and_resumes_above() {
        let c = counter(4);
        c.supply(100, 104);
        for _ in 0..4 {
            c.fetch_add(1);
        }
        // Redis is away: 104.. counted locally, a block's worth at a time
        // (8: the first block went by quickly, so the next is twice as large).
        assert_eq!(
            (0..6).map(|_| c.fetch_add(1)).collect::<Vec<_>>(),
            [104, 105, 106, 107, 108, 109]
        );
        assert_eq!(c.local_runs(), 1);
        // A block below what was handed out is used only above it.
        assert_eq!(c.wants().block_above, Some(112));
        c.supply(110, 114);
        c.fetch_add(2);
        assert_eq!(c.fetch_add(1), 112, "the local allowance runs out first");
    }

    #[test]
    fn a_block_overtaken_by_local_counting_is_not_used() {
        let c = counter(2);
        c.fetch_add(5); // local: 0, allowance to 5
        c.supply(1, 3);
        assert_eq!(c.fetch_add(1), 5);
    }

    #[test]
    fn set_is_seen_at_once_and_written_behind() {
        let c = counter(4);
        c.supply(100, 104);
        c.store(7);
        assert_eq!(c.load(), 7);
        let w = c.wants();
        assert_eq!(w.set, Some(7));
        assert_eq!(w.block_above, Some(7));
        assert_eq!(c.wants().set, None, "taken once");
        assert_eq!(c.fetch_add(1), 7, "counted from the value set");
    }

    #[test]
    fn a_busy_counter_reserves_larger_blocks_and_a_quiet_one_smaller() {
        let c = counter(4);
        assert_eq!(c.wants().block, 4);
        // Blocks used up at once: each next one twice the size.
        let mut top = 0;
        for _ in 0..5 {
            let w = c.wants();
            c.supply(top, top + w.block);
            top += w.block;
            while c.load() < top {
                c.fetch_add(1);
            }
        }
        // The fifth block just started: four quick switches, 4 << 4.
        assert_eq!(c.wants().block, 64);
        // A block that lasts: back down, never below counter-block.
        for _ in 0..6 {
            let w = c.wants();
            c.supply(top, top + w.block);
            top += w.block;
            std::thread::sleep(SLOW + Duration::from_millis(5));
            while c.load() < top {
                c.fetch_add(1);
            }
        }
        assert_eq!(c.wants().block, 4);
    }

    #[test]
    fn concurrent_adds_never_hand_out_a_value_twice() {
        let c = Arc::new(counter(16));
        let supplier = {
            let c = c.clone();
            std::thread::spawn(move || {
                let mut top = 0;
                for _ in 0..2000 {
                    if let Some(floor) = c.wants().block_above {
                        top = top.max(floor);
                        c.supply(top, top + 16);
                        top += 16;
                    }
                    std::thread::yield_now();
                }
            })
        };
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..5000).map(|_| c.fetch_add(1)).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<u64> = workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        supplier.join().unwrap();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
    }
}
