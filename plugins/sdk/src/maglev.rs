//! Maglev consistent hashing (Eisenbud et al., NSDI 2016; Envoy's
//! `MAGLEV`): a lookup table of a prime size, at least 100 entries per
//! backend (1031 entries up to 10 backends, 4099 up to 40...), filled by each backend's own permutation in turns proportional
//! to its weight. A key's hash picks an entry; the entries after it are the
//! key's next choices. Backends are placed by the hash of their *name*, so
//! every proxy with the same backends builds the same table, and a change
//! of membership moves few keys besides those of the backend that left.

use crate::hash64;

/// Entries per backend, at least (the table size is the next prime).
pub const ENTRIES_PER_BACKEND: usize = 100;

/// [`Maglev`] is a built lookup table.
#[derive(Debug, Clone)]
pub struct Maglev {
    table: Vec<u16>,
    backends: usize,
}

impl Maglev {
    /// The table for these backends (name, weight), in configuration order;
    /// entries hold indices into that order. At most 65,535 backends.
    pub fn new<'a>(backends: impl IntoIterator<Item = (&'a str, u32)>) -> Maglev {
        let backends: Vec<(&str, u32)> = backends.into_iter().take(usize::from(u16::MAX)).collect();
        let n = backends.len();
        if n == 0 {
            return Maglev {
                table: Vec::new(),
                backends: 0,
            };
        }
        let size = table_size(n) as u64;
        // Each backend's permutation: its current slot and its step.
        let mut perm: Vec<(u64, u64)> = backends
            .iter()
            .map(|(name, _)| {
                let offset = hash64(&[b"maglev-offset", name.as_bytes()]) % size;
                let skip = hash64(&[b"maglev-skip", name.as_bytes()]) % (size - 1) + 1;
                (offset, skip)
            })
            .collect();
        let max_weight = backends.iter().map(|(_, w)| (*w).max(1)).max().unwrap_or(1);
        let mut table = vec![u16::MAX; size as usize];
        let mut filled = 0u64;
        let mut round = 0u64;
        'fill: loop {
            round += 1;
            for i in 0..n {
                // Weighted turns: backend i takes a turn in this round when
                // its share of rounds crosses a whole number.
                let w = u64::from(backends[i].1.max(1));
                let wmax = u64::from(max_weight);
                if (round * w) / wmax == ((round - 1) * w) / wmax {
                    continue;
                }
                let (pos, skip) = &mut perm[i];
                loop {
                    let slot = *pos as usize;
                    *pos += *skip;
                    if *pos >= size {
                        *pos -= size;
                    }
                    if table[slot] == u16::MAX {
                        table[slot] = i as u16;
                        filled += 1;
                        break;
                    }
                }
                if filled == size {
                    break 'fill;
                }
            }
        }
        Maglev { table, backends: n }
    }

    /// The table's size (a prime, or 0 with no backends).
    pub fn size(&self) -> usize {
        self.table.len()
    }

    /// The backends of the table in the order `hash` visits them, from
    /// its entry onwards, each once. Stops after a full turn of the table.
    pub fn walk(&self, hash: u64) -> Walk<'_> {
        let start = if self.table.is_empty() {
            0
        } else {
            (hash % self.table.len() as u64) as usize
        };
        Walk {
            maglev: self,
            pos: start,
            left: self.table.len(),
            seen: if self.backends <= 64 {
                Seen::Mask(0)
            } else {
                Seen::List(Vec::new())
            },
        }
    }

    /// The backend `hash` falls on, ignoring health.
    pub fn get(&self, hash: u64) -> Option<usize> {
        self.walk(hash).next()
    }
}

/// Backends already yielded by a [`Walk`].
#[derive(Debug)]
enum Seen {
    Mask(u64),
    List(Vec<u16>),
}

/// [`Walk`] yields a key's backends in table order, each once.
#[derive(Debug)]
pub struct Walk<'a> {
    maglev: &'a Maglev,
    pos: usize,
    left: usize,
    seen: Seen,
}

impl Iterator for Walk<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        while self.left > 0 {
            let b = self.maglev.table[self.pos];
            self.pos = (self.pos + 1) % self.maglev.table.len();
            self.left -= 1;
            let fresh = match &mut self.seen {
                Seen::Mask(m) => {
                    let bit = 1u64 << b;
                    let fresh = *m & bit == 0;
                    *m |= bit;
                    fresh
                }
                Seen::List(l) => {
                    let fresh = !l.contains(&b);
                    if fresh {
                        l.push(b);
                    }
                    fresh
                }
            };
            if fresh {
                return Some(usize::from(b));
            }
        }
        None
    }
}

/// The table size for `n` backends: a prime with at least
/// [`ENTRIES_PER_BACKEND`] entries per backend, from a fixed ladder so that
/// adding or removing a backend keeps the size (and so most keys) unless it
/// crosses a step (10, 40, 163, 655 backends).
fn table_size(n: usize) -> usize {
    const LADDER: [usize; 5] = [1031, 4099, 16411, 65537, 262147];
    LADDER
        .into_iter()
        .find(|&size| size >= n * ENTRIES_PER_BACKEND)
        .unwrap_or_else(|| next_prime(n * ENTRIES_PER_BACKEND))
}

/// The smallest prime ≥ `n`.
fn next_prime(n: usize) -> usize {
    let is_prime = |k: usize| {
        k >= 2
            && (2..)
                .take_while(|d| d * d <= k)
                .all(|d| !k.is_multiple_of(d))
    };
    (n..).find(|&k| is_prime(k)).unwrap_or(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<u64> {
        (0..n)
            .map(|i| hash64(&[format!("user-{i}").as_bytes()]))
            .collect()
    }

    #[test]
    fn the_table_is_prime_and_big_enough() {
        let m = Maglev::new([("a", 1), ("b", 1), ("c", 1), ("d", 1), ("e", 1)]);
        assert_eq!(m.size(), 1031);
        assert_eq!(table_size(16), 4099);
        assert_eq!(next_prime(1600), 1601);
        for size in [1031, 4099, 16411, 65537, 262147] {
            assert_eq!(next_prime(size), size);
        }
    }

    #[test]
    fn keys_spread_by_weight() {
        let m = Maglev::new([("a", 1), ("b", 1), ("c", 2), ("d", 1), ("e", 1)]);
        let mut counts = [0usize; 5];
        for k in keys(60_000) {
            counts[m.get(k).unwrap()] += 1;
        }
        for (i, &c) in counts.iter().enumerate() {
            let want = if i == 2 { 20_000.0 } else { 10_000.0 };
            assert!((c as f64 - want).abs() < want * 0.05, "{counts:?}");
        }
    }

    #[test]
    fn removing_a_backend_moves_few_other_keys() {
        let all = Maglev::new([("a", 1), ("b", 1), ("c", 1), ("d", 1), ("e", 1)]);
        let without_c = Maglev::new([("a", 1), ("b", 1), ("d", 1), ("e", 1)]);
        let names = ["a", "b", "c", "d", "e"];
        let names_after = ["a", "b", "d", "e"];
        let ks = keys(10_000);
        let mut moved = 0;
        for &k in &ks {
            let before = names[all.get(k).unwrap()];
            let after = names_after[without_c.get(k).unwrap()];
            if before != after {
                moved += 1;
            }
        }
        // c held ~20%; Maglev moves a few more.
        assert!(moved < 2_200, "{moved}");
    }

    #[test]
    fn a_walk_visits_every_backend_once() {
        let m = Maglev::new([("a", 1), ("b", 3), ("c", 1)]);
        let mut w: Vec<usize> = m.walk(12345).collect();
        w.sort();
        assert_eq!(w, [0, 1, 2]);
        assert_eq!(Maglev::new([]).get(1), None);
    }
}
