//! Smooth weighted round-robin, with nginx's semantics.
//!
//! nginx's algorithm: on each pick every backend's `current` grows by its
//! weight, the backend with the largest `current` (first one on a tie) is
//! chosen and its `current` drops by the total weight. With weights 5, 1, 1
//! this gives `a a b a c a a`, and the sequence repeats every `sum(weights)`
//! picks. Because it is periodic, the policy precomputes one period and picks
//! `schedule[n % period]` with `n` from a shared counter: every instance and
//! thread then follows one exact sequence without sharing `current`.

use crate::BackendHealth;

/// Above this period (after dividing the weights by their common factor) the
/// schedule is not tabulated; picks are then proportional but not smooth.
const MAX_PERIOD: u64 = 1 << 16;

/// The backend indices of one period of smooth weighted round-robin.
///
/// Weights of zero are skipped. Returns an empty sequence when every weight
/// is zero.
pub fn smooth_weighted_sequence(weights: &[u32]) -> Vec<u32> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            current[i] += i64::from(w);
            if w > 0 && (weights[best] == 0 || current[i] > current[best]) {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// One period of the schedule for a given set of usable backends.
#[derive(Debug, Clone, Default)]
struct Period {
    /// Which backends were usable when this period was built.
    usable: Vec<bool>,
    /// Tabulated sequence, or empty when the period is too long.
    table: Vec<u32>,
    /// Reduced weights of usable backends (0 for the others).
    weights: Vec<u32>,
    /// Sum of `weights`.
    total: u64,
}

impl Period {
    fn build(weights: &[u32], usable: &[bool]) -> Period {
        let mut reduced: Vec<u32> = weights
            .iter()
            .zip(usable)
            .map(|(&w, &ok)| if ok { w } else { 0 })
            .collect();
        let common = reduced.iter().copied().fold(0, gcd);
        if common > 1 {
            reduced.iter_mut().for_each(|w| *w /= common);
        }
        let total: u64 = reduced.iter().map(|&w| u64::from(w)).sum();
        let table = if total <= MAX_PERIOD {
            smooth_weighted_sequence(&reduced)
        } else {
            Vec::new()
        };
        Period {
            usable: usable.to_vec(),
            table,
            weights: reduced,
            total,
        }
    }

    fn matches(&self, states: &[BackendHealth]) -> bool {
        self.usable.len() == states.len()
            && self.usable.iter().zip(states).all(|(&u, s)| u == s.healthy)
    }

    fn pick(&self, n: u64) -> Option<usize> {
        if self.total == 0 {
            return None;
        }
        let slot = n % self.total;
        if !self.table.is_empty() {
            return Some(self.table[slot as usize] as usize);
        }
        // Too long to tabulate: walk the cumulative weights.
        let mut acc = 0u64;
        self.weights.iter().position(|&w| {
            acc += u64::from(w);
            slot < acc
        })
    }
}

/// [`WeightedSchedule`] picks backends by smooth weighted round-robin over
/// the healthy ones, from a sequence number shared by all instances.
///
/// It keeps the period for "all healthy" and the most recent other health
/// combination, so a pick costs one pass over the backend states.
#[derive(Debug, Clone)]
pub struct WeightedSchedule {
    weights: Vec<u32>,
    all: Period,
    other: Option<Period>,
}

impl WeightedSchedule {
    /// A schedule for these weights (configuration order).
    pub fn new(weights: Vec<u32>) -> Self {
        let all = Period::build(&weights, &vec![true; weights.len()]);
        WeightedSchedule {
            weights,
            all,
            other: None,
        }
    }

    /// The backend for sequence number `n` among the healthy `states`, or
    /// `None` when no healthy backend has a weight above zero.
    pub fn pick(&mut self, states: &[BackendHealth], n: u64) -> Option<usize> {
        if self.all.matches(states) {
            return self.all.pick(n);
        }
        match &self.other {
            Some(p) if p.matches(states) => {}
            _ => {
                let usable: Vec<bool> = states.iter().map(|s| s.healthy).collect();
                let mut weights = self.weights.clone();
                weights.resize(usable.len(), 0);
                self.other = Some(Period::build(&weights, &usable));
            }
        }
        self.other.as_ref().and_then(|p| p.pick(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_states as states;

    fn names(seq: &[u32]) -> String {
        seq.iter().map(|&i| (b'a' + i as u8) as char).collect()
    }

    #[test]
    fn weights_5_1_1_give_nginx_sequence() {
        assert_eq!(names(&smooth_weighted_sequence(&[5, 1, 1])), "aabacaa");
    }

    #[test]
    fn equal_weights_give_plain_round_robin() {
        assert_eq!(names(&smooth_weighted_sequence(&[1, 1, 1])), "abc");
    }

    #[test]
    fn zero_weights_are_never_picked() {
        assert_eq!(names(&smooth_weighted_sequence(&[0, 2, 0, 1])), "bdb");
        assert!(smooth_weighted_sequence(&[0, 0]).is_empty());
    }

    #[test]
    fn scaled_weights_give_the_same_sequence_as_reduced_ones() {
        let mut s = WeightedSchedule::new(vec![50, 10, 10]);
        let all = states(&[true; 3]);
        let seq: Vec<u32> = (0..7).map(|n| s.pick(&all, n).unwrap() as u32).collect();
        assert_eq!(names(&seq), "aabacaa");
    }

    #[test]
    fn seventy_picks_split_exactly_50_10_10() {
        let mut s = WeightedSchedule::new(vec![5, 1, 1]);
        let all = states(&[true; 3]);
        let mut counts = [0; 3];
        for n in 0..70 {
            counts[s.pick(&all, n).unwrap()] += 1;
        }
        assert_eq!(counts, [50, 10, 10]);
    }

    #[test]
    fn unhealthy_backends_are_skipped_and_the_rest_keep_their_ratio() {
        let mut s = WeightedSchedule::new(vec![5, 1, 1]);
        let some = states(&[false, true, true]);
        let seq: Vec<usize> = (0..4).map(|n| s.pick(&some, n).unwrap()).collect();
        assert_eq!(seq, [1, 2, 1, 2]);
        assert_eq!(s.pick(&states(&[false; 3]), 0), None);
    }

    #[test]
    fn huge_periods_fall_back_to_proportional_picks() {
        let mut s = WeightedSchedule::new(vec![100_000, 99_999]);
        let all = states(&[true; 2]);
        let mut counts = [0u64; 2];
        for n in 0..199_999 {
            counts[s.pick(&all, n).unwrap()] += 1;
        }
        assert_eq!(counts, [100_000, 99_999]);
    }
}
