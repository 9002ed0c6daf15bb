//! Choosing by cost: power of two choices ([`p2c`]), fallbacks ranked by
//! cost ([`ranked_by`]), and a moving average that forgets with time
//! ([`Ewma`], plain or "peak" as Finagle's and Linkerd's balancers use).

use crate::{BackendHealth, random_u64};

/// Power of two choices: two distinct healthy backends drawn at random,
/// the one with the lower `cost` wins (the first drawn on a tie). With one
/// healthy backend, that one; `None` when none is healthy. Cheaper than
/// scanning every backend and, unlike "always the least loaded", it does
/// not send a burst to one backend that every instance believes is idle.
pub fn p2c(health: &[BackendHealth], cost: impl Fn(usize) -> f64) -> Option<usize> {
    let healthy = health.iter().filter(|h| h.healthy).count();
    let nth = |k: usize| {
        health
            .iter()
            .enumerate()
            .filter(|(_, h)| h.healthy)
            .nth(k)
            .map(|(i, _)| i)
    };
    match healthy {
        0 => None,
        1 => nth(0),
        n => {
            let r = random_u64();
            let a = (r % n as u64) as usize;
            // A second index different from the first.
            let b = (a + 1 + ((r >> 32) % (n as u64 - 1)) as usize) % n;
            let (a, b) = (nth(a)?, nth(b)?);
            Some(if cost(b) < cost(a) { b } else { a })
        }
    }
}

/// The healthy backends other than `except`, cheapest first (by `cost`,
/// ties in index order): ready for [`crate::Decision::with_fallbacks`].
pub fn ranked_by(
    health: &[BackendHealth],
    except: usize,
    cost: impl Fn(usize) -> f64,
) -> Vec<usize> {
    let mut ranked: Vec<(f64, usize)> = health
        .iter()
        .enumerate()
        .filter(|&(i, h)| h.healthy && i != except)
        .map(|(i, _)| (cost(i), i))
        .collect();
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    ranked.into_iter().map(|(_, i)| i).collect()
}

/// An exponentially weighted moving average whose weight depends on the
/// time between samples: a sample `tau` after the previous one moves the
/// average about 63% of the way; with no samples the average keeps its
/// value (use [`Ewma::value_at`] to see it decay towards a resting value).
///
/// [`Ewma::peak`] makes a "peak EWMA": a sample above the average replaces
/// it at once and only the way down is smoothed, so a backend that turns
/// slow (or fails, if failures are fed in as a penalty) is avoided at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ewma {
    value: f64,
    last_ns: u64,
    tau_ns: f64,
    peak: bool,
    seeded: bool,
}

impl Ewma {
    /// An average that forgets over `tau_ns` nanoseconds.
    pub fn new(tau_ns: u64) -> Ewma {
        Ewma {
            value: 0.0,
            last_ns: 0,
            tau_ns: tau_ns.max(1) as f64,
            peak: false,
            seeded: false,
        }
    }

    /// A peak EWMA (see the type's docs).
    pub fn peak(tau_ns: u64) -> Ewma {
        Ewma {
            peak: true,
            ..Ewma::new(tau_ns)
        }
    }

    /// Adds `sample`, taken at `now_ns`.
    pub fn observe(&mut self, sample: f64, now_ns: u64) {
        if !self.seeded || (self.peak && sample > self.value) {
            self.value = sample;
        } else {
            let w = decay(now_ns.saturating_sub(self.last_ns), self.tau_ns);
            self.value = self.value * w + sample * (1.0 - w);
        }
        self.seeded = true;
        self.last_ns = self.last_ns.max(now_ns);
    }

    /// The average (0 before any sample).
    pub fn value(&self) -> f64 {
        self.value
    }

    /// The average at `now_ns` if it has been decaying towards `rest`
    /// since the last sample: how a penalty wears off with no new news.
    pub fn value_at(&self, now_ns: u64, rest: f64) -> f64 {
        if !self.seeded {
            return rest;
        }
        let w = decay(now_ns.saturating_sub(self.last_ns), self.tau_ns);
        self.value * w + rest * (1.0 - w)
    }

    /// Whether it has had a sample.
    pub fn is_seeded(&self) -> bool {
        self.seeded
    }
}

/// `e^(-dt/tau)`: what is left of an old value after `dt`. Samples come
/// far more often than `tau` under load, so the first terms of the series
/// (error below 2e-7) spare the guest a software `exp` there.
fn decay(dt_ns: u64, tau_ns: f64) -> f64 {
    let x = dt_ns as f64 / tau_ns;
    if x < 0.01 {
        1.0 - x + x * x / 2.0
    } else {
        (-x).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_states as states;

    #[test]
    fn p2c_picks_the_cheaper_of_two_healthy_backends() {
        crate::testing::reset();
        let h = states(&[true, true, false]);
        for _ in 0..50 {
            // Backend 1 is always cheaper; it wins whenever drawn, and with
            // two healthy backends both are always drawn.
            assert_eq!(p2c(&h, |i| if i == 1 { 1.0 } else { 9.0 }), Some(1));
        }
        assert_eq!(p2c(&states(&[false, true]), |_| 0.0), Some(1));
        assert_eq!(p2c(&states(&[false, false]), |_| 0.0), None);
    }

    #[test]
    fn p2c_spreads_over_equal_backends() {
        crate::testing::reset();
        let h = states(&[true; 4]);
        let mut seen = [0; 4];
        for _ in 0..400 {
            seen[p2c(&h, |_| 1.0).unwrap()] += 1;
        }
        assert!(seen.iter().all(|&n| n > 40), "{seen:?}");
    }

    #[test]
    fn ranked_by_orders_the_other_healthy_backends_by_cost() {
        let h = states(&[true, true, false, true]);
        assert_eq!(ranked_by(&h, 0, |i| [0.0, 5.0, 1.0, 2.0][i]), [3, 1]);
    }

    #[test]
    fn the_short_decay_matches_exp() {
        for dt in [0u64, 1, 1_000, 99_999_999, 100_000_001, 5_000_000_000] {
            let exact = (-(dt as f64) / 1e10).exp();
            assert!((decay(dt, 1e10) - exact).abs() < 2e-7, "{dt}");
        }
    }

    #[test]
    fn an_ewma_moves_with_time_and_a_peak_jumps_up() {
        let tau = 1_000_000_000;
        let mut e = Ewma::new(tau);
        e.observe(100.0, 0);
        e.observe(200.0, tau);
        assert!((e.value() - (100.0 * (-1f64).exp() + 200.0 * (1.0 - (-1f64).exp()))).abs() < 1e-6);
        let mut p = Ewma::peak(tau);
        p.observe(100.0, 0);
        p.observe(1000.0, 1);
        assert_eq!(p.value(), 1000.0);
        p.observe(100.0, tau);
        assert!(p.value() < 1000.0 && p.value() > 100.0);
        assert!(p.value_at(10 * tau, 0.0) < 1.0);
    }
}
