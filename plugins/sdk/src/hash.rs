//! Consistent hashing of a request key (client IP, a header, a cookie) onto
//! backends: weighted rendezvous hashing (highest random weight).
//!
//! Each backend scores `weight / -ln(u)`, where `u` in (0, 1) comes from a
//! hash of the backend's *name* and the key; the highest healthy score wins.
//! A key therefore moves only when its backend goes away (or a better one
//! appears), every proxy with the same config agrees, and heavier backends
//! win proportionally more keys.

use crate::BackendHealth;

/// 64-bit FNV-1a over several byte strings, finished with SplitMix64's
/// mixer: stable across builds, languages and machines.
pub fn hash64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separate parts so ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// [`ConsistentHash`] maps keys to backends by weighted rendezvous hashing.
#[derive(Debug, Clone)]
pub struct ConsistentHash {
    names: Vec<String>,
    weights: Vec<f64>,
}

impl ConsistentHash {
    /// Over these backends (names and weights, configuration order).
    pub fn new<'a>(backends: impl IntoIterator<Item = (&'a str, u32)>) -> Self {
        let (names, weights) = backends
            .into_iter()
            .map(|(n, w)| (n.to_string(), f64::from(w.max(1))))
            .unzip();
        ConsistentHash { names, weights }
    }

    /// The healthy backend `key` belongs to, if any is healthy.
    pub fn pick(&self, key: &[u8], backends: &[BackendHealth]) -> Option<usize> {
        let mut best: Option<(usize, f64)> = None;
        for (i, state) in backends.iter().enumerate() {
            if !state.healthy || i >= self.names.len() {
                continue;
            }
            let h = hash64(&[self.names[i].as_bytes(), key]);
            // u in (0, 1): 53 random bits, never 0.
            let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let score = self.weights[i] / -u.ln();
            if best.is_none_or(|(_, s)| score > s) {
                best = Some((i, score));
            }
        }
        best.map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_states as states;

    #[test]
    fn hashing_is_stable() {
        assert_eq!(hash64(&[b"a", b"b"]), hash64(&[b"a", b"b"]));
        assert_ne!(hash64(&[b"ab", b""]), hash64(&[b"a", b"b"]));
    }

    #[test]
    fn keys_spread_by_weight_and_move_only_with_their_backend() {
        let ch = ConsistentHash::new([("a", 1), ("b", 1), ("c", 2)]);
        let all = states(&[true, true, true]);
        let keys: Vec<String> = (0..4000)
            .map(|i| format!("10.0.{}.{}", i / 256, i % 256))
            .collect();
        let picks: Vec<usize> = keys
            .iter()
            .map(|k| ch.pick(k.as_bytes(), &all).unwrap())
            .collect();
        let mut counts = [0usize; 3];
        picks.iter().for_each(|&p| counts[p] += 1);
        // Expect 1000/1000/2000, within 10%.
        assert!((900..1100).contains(&counts[0]), "{counts:?}");
        assert!((900..1100).contains(&counts[1]), "{counts:?}");
        assert!((1800..2200).contains(&counts[2]), "{counts:?}");
        // b goes down: only b's keys move.
        let no_b = states(&[true, false, true]);
        for (k, &p) in keys.iter().zip(&picks) {
            let now = ch.pick(k.as_bytes(), &no_b).unwrap();
            if p != 1 {
                assert_eq!(now, p, "key {k} moved though its backend stayed");
            }
        }
        assert_eq!(ch.pick(b"x", &states(&[false, false, false])), None);
    }
}
