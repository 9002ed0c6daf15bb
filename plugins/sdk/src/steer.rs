//! What every built-in policy does around its own choice, from
//! `policy-config`: outlier ejection (`eject-after`), zone preference
//! (`prefer-zone`) and slow start (`slow-start`). A policy builds a
//! [`Steering`] in `configure`, feeds it outcomes and membership updates,
//! and chooses among the backends [`Steering::steer`] leaves it.
//!
//! Ejection state is rebuilt by every instance from the outcomes they all
//! see, and published in one host counter per backend (`eject/NAME`), so a
//! new instance starts knowing who is ejected, and only the instance that
//! publishes an ejection first logs it and counts it in `/metrics`
//! (`metric/ejections`).

use crate::{
    AttemptResult, Backend, BackendHealth, Config, Counter, Failure, LogLevel, Outcome, log,
    now_ns, random_u64, zone,
};

/// The `policy-config` keys [`Steering`] reads (ejection and zone).
pub const STEERING_KEYS: &[&str] = &[
    "eject-after",
    "eject-for",
    "max-ejected",
    "prefer-zone",
    "min-healthy",
];

/// The slow-start keys, read when [`Steering::new`] is asked for them.
pub const SLOW_START_KEYS: &[&str] = &["slow-start", "slow-start-min", "slow-start-aggression"];

/// The longest an ejection lasts, however often it repeats (unless
/// `eject-for` itself is longer).
const MAX_EJECTION_NS: u64 = 300_000_000_000;
/// Bits of the shared counter that hold the ejection's end (ns); the
/// repeat level is above them.
const UNTIL_BITS: u32 = 56;
const UNTIL_MASK: u64 = (1 << UNTIL_BITS) - 1;

/// [`Steering`] narrows the backends a policy chooses from.
#[derive(Debug)]
pub struct Steering {
    names: Vec<String>,
    local: Vec<bool>,
    eject: Option<Ejector>,
    /// `min-healthy` when `prefer-zone` is on and can apply.
    zone_min: Option<f64>,
    slow: Option<SlowStart>,
    scratch: Vec<BackendHealth>,
    factors: Vec<f64>,
}

#[derive(Debug, Clone, Copy)]
struct SlowStart {
    window_ns: u64,
    min: f64,
    aggression: f64,
}

#[derive(Debug)]
struct Ejector {
    after: u32,
    base_ns: u64,
    max_share: f64,
    tracks: Vec<Track>,
    /// The latest end of any ejection this instance knows of.
    latest_until: u64,
    ejections: Counter,
}

#[derive(Debug, Clone, Copy)]
struct Track {
    failures: u32,
    until_ns: u64,
    level: u32,
    shared: Counter,
}

/// The backends to choose from for one request, and their slow-start
/// weight factors.
#[derive(Debug, Clone, Copy)]
pub struct Steered<'a> {
    /// The health list with ejected and (by zone) excluded backends marked
    /// unhealthy; the proxy's own list when nothing is excluded, or when
    /// excluding would leave no backend.
    pub health: &'a [BackendHealth],
    factors: Option<&'a [f64]>,
}

impl Steered<'_> {
    /// Whether some backend is still ramping up (slow start): choose by
    /// [`Steered::factor`] then.
    pub fn ramping(&self) -> bool {
        self.factors.is_some()
    }

    /// Backend `i`'s slow-start factor, from `slow-start-min` to 1.
    pub fn factor(&self, i: usize) -> f64 {
        self.factors.and_then(|f| f.get(i).copied()).unwrap_or(1.0)
    }
}

impl Steering {
    /// Reads the steering keys (and the slow-start keys when `slow_start`)
    /// from `config` for `backends`. Errors name the key.
    pub fn new(
        config: &Config,
        backends: &[Backend],
        slow_start: bool,
    ) -> Result<Steering, String> {
        let after: u32 = config.parse_or("eject-after", 0)?;
        let base_ns = config.duration_ns("eject-for", 30_000_000_000)?;
        if after > 0 && base_ns == 0 {
            return Err("policy-config.eject-for: must be longer than 0".into());
        }
        let max_share = config.share("max-ejected", 0.5)?;
        let prefer: bool = config.parse_or("prefer-zone", false)?;
        let min_healthy = config.share("min-healthy", 0.5)?;
        let slow = if slow_start {
            let window_ns = config.duration_ns("slow-start", 0)?;
            let min = config.number_in("slow-start-min", 0.1, 0.0..=1.0)?;
            let aggression = config.number_in("slow-start-aggression", 1.0, 0.01..=100.0)?;
            (window_ns > 0).then_some(SlowStart {
                window_ns,
                min,
                aggression,
            })
        } else {
            None
        };
        let own_zone = if prefer { zone() } else { None };
        if prefer && own_zone.is_none() {
            log(
                LogLevel::Warn,
                "policy-config.prefer-zone has no effect: [server] zone is not set",
            );
        }
        let mut steering = Steering {
            names: Vec::new(),
            local: Vec::new(),
            eject: (after > 0).then(|| Ejector {
                after,
                base_ns,
                max_share,
                tracks: Vec::new(),
                latest_until: 0,
                ejections: Counter::new("metric/ejections"),
            }),
            zone_min: own_zone.is_some().then_some(min_healthy),
            slow,
            scratch: Vec::new(),
            factors: Vec::new(),
        };
        steering.set_backends(backends, own_zone.as_deref());
        Ok(steering)
    }

    /// Whether it needs outcomes (ejection is on).
    pub fn wants_outcomes(&self) -> bool {
        self.eject.is_some()
    }

    /// The group's backends changed: keeps what it knows by name.
    pub fn update(&mut self, backends: &[Backend]) {
        let own = self.zone_min.and_then(|_| zone());
        self.set_backends(backends, own.as_deref());
    }

    fn set_backends(&mut self, backends: &[Backend], own_zone: Option<&str>) {
        self.local = backends
            .iter()
            .map(|b| own_zone.is_some_and(|z| b.tags.iter().any(|(k, v)| k == "zone" && v == z)))
            .collect();
        if let Some(e) = &mut self.eject {
            let old: Vec<(String, Track)> = self
                .names
                .iter()
                .cloned()
                .zip(e.tracks.iter().copied())
                .collect();
            e.tracks = backends
                .iter()
                .map(|b| {
                    old.iter()
                        .find(|(n, _)| *n == b.name)
                        .map(|(_, t)| *t)
                        .unwrap_or_else(|| Track::open(&b.name))
                })
                .collect();
            e.latest_until = e.tracks.iter().map(|t| t.until_ns).max().unwrap_or(0);
        }
        self.names = backends.iter().map(|b| b.name.clone()).collect();
    }

    /// Takes in outcomes (ejection).
    pub fn observe(&mut self, outcomes: &[Outcome]) {
        let Some(e) = &mut self.eject else { return };
        for o in outcomes {
            let i = o.backend as usize;
            let Some(track) = e.tracks.get_mut(i) else {
                continue;
            };
            match backend_failed(&o.result) {
                None => {}
                Some(false) => track.failures = 0,
                Some(true) => {
                    if track.until_ns > o.ended_ns {
                        // Already out: answers to requests sent before.
                        continue;
                    }
                    track.failures += 1;
                    if track.failures >= e.after {
                        e.eject(i, o.ended_ns, &self.names);
                    }
                }
            }
        }
    }

    /// The backends to choose from now (see [`Steered`]).
    pub fn steer<'a>(&'a mut self, health: &'a [BackendHealth]) -> Steered<'a> {
        let mut now = None;
        let mut clock = || *now.get_or_insert_with(now_ns);
        let mut filtered = false;
        if let Some(e) = &self.eject
            && e.latest_until != 0
        {
            let t = clock();
            if t < e.latest_until {
                self.scratch.clear();
                self.scratch.extend_from_slice(health);
                let mut any = false;
                for (h, track) in self.scratch.iter_mut().zip(&e.tracks) {
                    if track.until_ns > t {
                        h.healthy = false;
                    }
                    any |= h.healthy;
                }
                filtered = any;
            }
        }
        if let Some(min) = self.zone_min {
            let base: &[BackendHealth] = if filtered { &self.scratch } else { health };
            let (mut local_total, mut local_up, mut remote_up) = (0usize, 0usize, 0usize);
            for (h, &local) in base.iter().zip(&self.local) {
                if local {
                    local_total += 1;
                    local_up += usize::from(h.healthy);
                } else {
                    remote_up += usize::from(h.healthy);
                }
            }
            if local_up > 0 && remote_up > 0 {
                let share = local_up as f64 / local_total as f64;
                if share >= min {
                    // The zone keeps the share of its traffic its healthy
                    // backends can take; the rest spills over.
                    let stay = local_up == local_total || unit_random() < share;
                    if !filtered {
                        self.scratch.clear();
                        self.scratch.extend_from_slice(health);
                        filtered = true;
                    }
                    for (h, &local) in self.scratch.iter_mut().zip(&self.local) {
                        if local != stay {
                            h.healthy = false;
                        }
                    }
                }
            }
        }
        let mut ramping = false;
        if let Some(s) = self.slow {
            let t = clock();
            self.factors.clear();
            for h in health {
                let elapsed = t.saturating_sub(h.healthy_since_ns);
                // 0: there since before the proxy started; it never ramps.
                let f = if h.healthy_since_ns != 0 && elapsed < s.window_ns {
                    ramping = true;
                    let frac = elapsed as f64 / s.window_ns as f64;
                    frac.powf(1.0 / s.aggression).max(s.min)
                } else {
                    1.0
                };
                self.factors.push(f);
            }
        }
        Steered {
            health: if filtered { &self.scratch } else { health },
            factors: ramping.then_some(&self.factors),
        }
    }
}

impl Track {
    fn open(name: &str) -> Track {
        let shared = Counter::new(&format!("eject/{name}"));
        let v = shared.get();
        Track {
            failures: 0,
            until_ns: v & UNTIL_MASK,
            level: (v >> UNTIL_BITS) as u32,
            shared,
        }
    }
}

impl Ejector {
    /// Ejects backend `i` at `t` unless too many are out already.
    fn eject(&mut self, i: usize, t: u64, names: &[String]) {
        let n = self.tracks.len();
        let out = self.tracks.iter().filter(|k| k.until_ns > t).count();
        let allowed = if n >= 2 {
            ((n as f64 * self.max_share).floor() as usize).max(1)
        } else {
            0
        };
        let track = &mut self.tracks[i];
        track.failures = 0;
        if out >= allowed {
            return;
        }
        // The level goes down by one for every `eject-for` spent in
        // service since the last ejection ended.
        let mut level = track.level;
        if track.until_ns != 0 && t > track.until_ns {
            let calm = (t - track.until_ns) / self.base_ns;
            level = level.saturating_sub(u32::try_from(calm).unwrap_or(u32::MAX));
        }
        let duration = self
            .base_ns
            .saturating_mul(1u64 << level.min(20))
            .min(MAX_EJECTION_NS.max(self.base_ns));
        track.until_ns = (t + duration) & UNTIL_MASK;
        track.level = (level + 1).min(20);
        self.latest_until = self.latest_until.max(track.until_ns);
        let value = (u64::from(track.level) << UNTIL_BITS) | track.until_ns;
        if publish(track.shared, value) {
            let name = names.get(i).map_or("?", String::as_str);
            log(
                LogLevel::Warn,
                &format!(
                    "ejected backend {name} for {}s after {} consecutive failures",
                    duration / 1_000_000_000,
                    self.after
                ),
            );
            self.ejections.fetch_add(1);
        }
    }
}

/// Whether an attempt counts against its backend: `Some(true)` for a 5xx
/// or a failure of the backend, `Some(false)` for any other response,
/// `None` for what is not the backend's doing (the proxy's limits, the
/// client leaving).
pub fn backend_failed(result: &AttemptResult) -> Option<bool> {
    match result {
        AttemptResult::Response(status) => Some(*status >= 500),
        AttemptResult::Failed(Failure::Busy | Failure::TooLarge | Failure::ClientGone) => None,
        AttemptResult::Failed(_) => Some(true),
    }
}

/// Stores `value` in `counter` if it ends a later ejection than the one
/// there; whether this call was the one that did (the others, racing with
/// the same news, take their addition back).
fn publish(counter: Counter, value: u64) -> bool {
    let old = counter.get();
    if old & UNTIL_MASK >= value & UNTIL_MASK {
        return false;
    }
    let delta = value.wrapping_sub(old);
    if counter.fetch_add(delta) == old {
        true
    } else {
        counter.fetch_add(delta.wrapping_neg());
        false
    }
}

/// A random number in [0, 1).
pub fn unit_random() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// A healthy backend drawn at random with probability proportional to
/// `weight(i)` (backends of weight 0 or less are never drawn, unless all
/// are, then uniformly); `None` when none is healthy.
pub fn weighted_random(health: &[BackendHealth], weight: impl Fn(usize) -> f64) -> Option<usize> {
    let total: f64 = health
        .iter()
        .enumerate()
        .filter(|(_, h)| h.healthy)
        .map(|(i, _)| weight(i).max(0.0))
        .sum();
    if total <= 0.0 {
        return crate::nth_healthy(health, random_u64());
    }
    let mut r = unit_random() * total;
    let mut last = None;
    for (i, h) in health.iter().enumerate() {
        if !h.healthy {
            continue;
        }
        let w = weight(i).max(0.0);
        if w > 0.0 {
            last = Some(i);
            if r < w {
                return Some(i);
            }
            r -= w;
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_config as config;
    use crate::testing::{self, failed, response};

    fn zoned(zones: &[&str]) -> Vec<Backend> {
        let mut b = testing::backends(&["a", "b", "c", "d"][..zones.len()]);
        for (b, z) in b.iter_mut().zip(zones) {
            b.tags = vec![("zone".into(), z.to_string())];
        }
        b
    }

    #[test]
    fn five_failures_eject_a_backend_for_eject_for_then_it_returns() {
        testing::reset();
        let backends = testing::backends(&["a", "b", "c"]);
        let c = config(&[("eject-after", "5"), ("eject-for", "10s")]);
        let mut s = Steering::new(&c, &backends, false).unwrap();
        let health = testing::healthy(3);
        s.observe(&[response(1, 503), response(1, 503), response(1, 200)]);
        s.observe(&vec![response(1, 503); 4]);
        assert!(s.steer(&health).health[1].healthy, "4 in a row is not 5");
        s.observe(&[failed(1, Failure::ConnectFailed)]);
        assert!(!s.steer(&health).health[1].healthy);
        assert!(s.steer(&health).health[0].healthy);
        assert_eq!(testing::counter("metric/ejections"), 1);
        assert!(
            testing::logs()
                .iter()
                .any(|(_, l)| l.contains("ejected backend b"))
        );
        // A new instance knows from the shared counter.
        let mut fresh = Steering::new(&c, &backends, false).unwrap();
        assert!(!fresh.steer(&health).health[1].healthy);
        testing::advance_ns(10_000_000_001);
        assert!(s.steer(&health).health[1].healthy);
        // Ejected again at once: twice as long.
        s.observe(&vec![response(1, 500); 5]);
        testing::advance_ns(15_000_000_000);
        assert!(!s.steer(&health).health[1].healthy);
        testing::advance_ns(5_000_000_001);
        assert!(s.steer(&health).health[1].healthy);
        // The proxy's own refusals are not the backend's fault.
        s.observe(&vec![failed(2, Failure::Busy); 9]);
        assert!(s.steer(&health).health[2].healthy);
    }

    #[test]
    fn never_more_than_max_ejected() {
        testing::reset();
        let backends = testing::backends(&["a", "b", "c", "d"]);
        let c = config(&[("eject-after", "1"), ("max-ejected", "50%")]);
        let mut s = Steering::new(&c, &backends, false).unwrap();
        s.observe(&[response(0, 500), response(1, 500), response(2, 500)]);
        let health = testing::healthy(4);
        let out = s
            .steer(&health)
            .health
            .iter()
            .filter(|h| !h.healthy)
            .count();
        assert_eq!(out, 2);
    }

    #[test]
    fn the_zone_keeps_what_its_healthy_backends_can_take() {
        testing::reset();
        testing::set_zone(Some("a"));
        let backends = zoned(&["a", "a", "b", "b"]);
        let mut s = Steering::new(&config(&[("prefer-zone", "true")]), &backends, false).unwrap();
        let health = testing::healthy(4);
        let v = s.steer(&health);
        assert_eq!(
            v.health.iter().map(|h| h.healthy).collect::<Vec<_>>(),
            [true, true, false, false]
        );
        let mut one_down = testing::healthy(4);
        one_down[0].healthy = false;
        let mut local = 0;
        for _ in 0..1000 {
            let v = s.steer(&one_down);
            if v.health[1].healthy {
                assert!(!v.health[2].healthy && !v.health[3].healthy);
                local += 1;
            } else {
                assert!(v.health[2].healthy && v.health[3].healthy);
            }
        }
        assert!((400..600).contains(&local), "{local}");
    }

    #[test]
    fn slow_start_ramps_from_the_minimum() {
        testing::reset();
        testing::set_now_ns(100_000_000_000);
        let backends = testing::backends(&["a", "b"]);
        let c = config(&[("slow-start", "10s")]);
        let mut s = Steering::new(&c, &backends, true).unwrap();
        let mut health = testing::healthy(2);
        health[0].healthy_since_ns = 0;
        health[1].healthy_since_ns = 99_000_000_000;
        let v = s.steer(&health);
        assert!(v.ramping());
        assert_eq!(v.factor(0), 1.0);
        assert!((v.factor(1) - 0.1).abs() < 1e-9);
        testing::advance_ns(4_000_000_000);
        assert!((s.steer(&health).factor(1) - 0.5).abs() < 1e-9);
        testing::advance_ns(6_000_000_000);
        assert!(!s.steer(&health).ramping());
    }

    #[test]
    fn bad_values_are_refused_with_the_key() {
        testing::reset();
        let b = testing::backends(&["a"]);
        for (k, v) in [
            ("eject-for", "-5s"),
            ("slow-start", "-1s"),
            ("max-ejected", "120%"),
        ] {
            let err = Steering::new(&config(&[(k, v)]), &b, true).unwrap_err();
            assert!(err.contains(&format!("policy-config.{k}")), "{err}");
        }
    }

    #[test]
    fn weighted_random_follows_weights() {
        testing::reset();
        let h = testing::healthy(3);
        let mut n = [0; 3];
        for _ in 0..3000 {
            n[weighted_random(&h, |i| [1.0, 0.0, 2.0][i]).unwrap()] += 1;
        }
        assert_eq!(n[1], 0);
        assert!((800..1200).contains(&n[0]), "{n:?}");
    }
}
