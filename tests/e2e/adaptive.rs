//! The adaptive built-in policies seen from clients: `least-request` and
//! `peak-ewma` steer around a slow backend and one answering 503;
//! ejection (`eject-after`) takes a failing backend out and brings it back;
//! `consistent-hash` spreads keys by weight, agrees across processes, moves
//! few keys when a backend leaves and bounds a hot backend's load;
//! `slow-start` ramps up a backend added by reload; `prefer-zone` keeps
//! traffic in the proxy's zone until it has too few healthy backends; and
//! bad `policy-config` values are refused by `switchyard check`.
//!
//! Every test prints its figures on lines starting with `scenarioN`, to
//! standard error past the test harness's capture, so they show in CI's
//! log even when the tests pass.

use std::collections::BTreeMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use crate::common::*;

/// `println!` that the test harness does not capture (it captures only the
/// `print!` family), so a passing test's figures still reach the log.
#[macro_export]
macro_rules! figures {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

/// Scenario 1 measures latencies, so it runs alone: it holds this
/// exclusively, and the other tests' heavy loads hold it shared.
static QUIET: RwLock<()> = RwLock::new(());

pub(crate) fn alone() -> RwLockWriteGuard<'static, ()> {
    QUIET.write().unwrap_or_else(|e| e.into_inner())
}

fn shared() -> RwLockReadGuard<'static, ()> {
    QUIET.read().unwrap_or_else(|e| e.into_inner())
}

/// A backend entry with extra fields (`weight = 2`, `tags = { ... }`).
fn entry(b: &Backend, extra: &str) -> String {
    if extra.is_empty() {
        b.entry()
    } else {
        format!(
            "{{ name = \"{}\", address = \"{}\", {extra} }}",
            b.name, b.addr
        )
    }
}

/// A config with an admin API and one upstream `app` of `entries` under
/// `policy`: `server` lines go to `[server]`, `upstream` lines to
/// `[upstreams.app]`, `policy_config` lines to its `policy-config`.
fn config(
    policy: &str,
    entries: &[String],
    server: &str,
    upstream: &str,
    policy_config: &str,
) -> String {
    format!(
        r#"[admin]
listen = "127.0.0.1:{{admin}}"

[server]
listen = "127.0.0.1:{{port}}"
{server}

[upstreams.app]
policy = "{policy}"
backends = [
  {}
]
{upstream}

[upstreams.app.policy-config]
{policy_config}
"#,
        entries.join(",\n  ")
    )
}

fn entries(backends: &[&Backend]) -> Vec<String> {
    backends.iter().map(|b| b.entry()).collect()
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// `name count (share)` for every backend in `samples`.
fn spread(samples: &[Sample]) -> String {
    per_backend(samples)
        .iter()
        .map(|(b, n)| {
            let name = if b.is_empty() { "<error>" } else { b.as_str() };
            format!(
                "{name} {n} ({})",
                pct(*n as f64 / samples.len().max(1) as f64)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn header(name: &str, value: String) -> Vec<(String, String)> {
    vec![(name.to_string(), value)]
}

// ---------------------------------------------------------------- scenario 1

/// Eight keep-alive clients for 3 s against three fresh backends, one of
/// them answering 50 ms late, behind `policy` on a fresh proxy.
pub(crate) fn one_slow_of_three(policy: &str) -> (f64, LatencyStats) {
    let (f1, f2, slow) = (
        Backend::start("fast-1"),
        Backend::start("fast-2"),
        Backend::start("slow"),
    );
    slow.set_delay(Duration::from_millis(50));
    let proxy = Proxy::start(&config(policy, &entries(&[&f1, &slow, &f2]), "", "", ""));
    let samples = run_clients(&proxy.url("/"), 8, Duration::from_secs(3), no_headers);
    let failed = samples.iter().filter(|s| s.status != 200).count();
    assert_eq!(failed, 0, "{policy}: {failed} requests failed");
    let share = share_of(&samples, "slow");
    let stats = LatencyStats::of(&samples);
    figures!(
        "scenario1 {policy}: slow share {}, mean {:.1} ms, p99 {:.1} ms ({stats}; {})",
        pct(share),
        ms(stats.mean),
        ms(stats.p99),
        spread(&samples)
    );
    (share, stats)
}

#[test]
fn scenario1_least_request_and_peak_ewma_avoid_a_slow_backend() {
    let _alone = alone();
    let (rr_share, rr) = one_slow_of_three("round-robin");
    let (lr_share, lr) = one_slow_of_three("least-request");
    let (pe_share, pe) = one_slow_of_three("peak-ewma");
    figures!(
        "scenario1 summary: slow share rr {} / lr {} / pe {}; mean rr {:.1} / lr {:.1} ms ({:.1}x); p99 rr {:.1} / pe {:.1} ms ({:.1}x)",
        pct(rr_share),
        pct(lr_share),
        pct(pe_share),
        ms(rr.mean),
        ms(lr.mean),
        rr.mean.as_secs_f64() / lr.mean.as_secs_f64().max(1e-9),
        ms(rr.p99),
        ms(pe.p99),
        rr.p99.as_secs_f64() / pe.p99.as_secs_f64().max(1e-9),
    );
    assert!(
        rr_share > 0.2,
        "round-robin sent the slow backend only {}",
        pct(rr_share)
    );
    assert!(
        lr_share <= 0.10,
        "least-request sent the slow backend {} (> 10%)",
        pct(lr_share)
    );
    assert!(
        pe_share <= 0.02,
        "peak-ewma sent the slow backend {} (> 2%)",
        pct(pe_share)
    );
    assert!(
        pe.p99 * 3 <= rr.p99,
        "peak-ewma p99 {:.1} ms is not 3x below round-robin's {:.1} ms",
        ms(pe.p99),
        ms(rr.p99)
    );
    assert!(
        lr.mean * 2 <= rr.mean,
        "least-request mean {:.1} ms is not 2x below round-robin's {:.1} ms",
        ms(lr.mean),
        ms(rr.mean)
    );
}

// ---------------------------------------------------------------- scenario 2

/// The share of `samples` sent after the first second that `backend` got.
fn share_after_first_second(samples: &[Sample], backend: &str) -> (f64, usize) {
    let late: Vec<Sample> = samples
        .iter()
        .filter(|s| s.at >= Duration::from_secs(1))
        .cloned()
        .collect();
    (share_of(&late, backend), late.len())
}

/// A fresh proxy with `policy` (and `policy_config`) over three fresh
/// backends, `bad` answering 503 to everything; `max-fails = 0`, so only
/// the policy can keep requests off it. Returns (proxy, (ok-1, ok-2, bad)).
fn one_503_of_three(policy: &str, policy_config: &str) -> (Proxy, (Backend, Backend, Backend)) {
    let (ok1, ok2, bad) = (
        Backend::start("ok-1"),
        Backend::start("ok-2"),
        Backend::start("bad"),
    );
    bad.set_status(503);
    let proxy = Proxy::start(&config(
        policy,
        &entries(&[&ok1, &bad, &ok2]),
        "",
        "max-fails = 0",
        policy_config,
    ));
    (proxy, (ok1, ok2, bad))
}

#[test]
fn scenario2_peak_ewma_avoids_a_backend_answering_503() {
    let (proxy, (_ok1, _ok2, _bad)) = one_503_of_three("peak-ewma", "");
    let samples = {
        let _shared = shared();
        run_clients(&proxy.url("/"), 8, Duration::from_secs(3), no_headers)
    };
    let (share, n) = share_after_first_second(&samples, "bad");
    figures!(
        "scenario2 peak-ewma: 503 backend share after 1 s {} of {n}; overall {} ({})",
        pct(share),
        pct(share_of(&samples, "bad")),
        spread(&samples)
    );
    assert!(n > 0, "no requests after the first second");
    assert!(
        share <= 0.05,
        "peak-ewma sent the 503 backend {} after the first second (> 5%)",
        pct(share)
    );
    assert!(
        samples
            .iter()
            .all(|s| s.status == 200 || (s.status == 503 && s.backend == "bad")),
        "unexpected failures: {}",
        spread(&samples)
    );
}

#[test]
fn scenario2_every_builtin_with_eject_after_avoids_a_backend_answering_503() {
    // (policy, extra policy-config): plain round-robin, without ejection,
    // is the baseline the others are compared with.
    let cases = [
        ("round-robin", ""),
        ("weighted", "eject-after = 5"),
        ("sticky-session", "eject-after = 5"),
        ("least-request", "eject-after = 5"),
        ("peak-ewma", "eject-after = 5"),
        (
            "consistent-hash",
            "key = \"header:x-user\"\neject-after = 5",
        ),
    ];
    let mut failed = Vec::new();
    for (policy, extra) in cases {
        let (proxy, (_ok1, _ok2, _bad)) = one_503_of_three(policy, extra);
        let samples = {
            let _shared = shared();
            run_clients(&proxy.url("/"), 4, Duration::from_secs(2), |i, n| {
                header("x-user", format!("user-{i}-{n}"))
            })
        };
        let (share, n) = share_after_first_second(&samples, "bad");
        figures!(
            "scenario2 {policy} {}: 503 backend share after 1 s {} of {n} ({})",
            if extra.is_empty() {
                "(no ejection)"
            } else {
                "eject-after=5"
            },
            pct(share),
            spread(&samples)
        );
        let baseline = extra.is_empty();
        if n == 0 || (baseline && share < 0.25) || (!baseline && share > 0.05) {
            failed.push(format!("{policy}: {} of {n}", pct(share)));
        }
    }
    assert!(
        failed.is_empty(),
        "503 backend shares after the first second off target: {failed:?}"
    );
}

/// The value on the first `/metrics` line that mentions `ejections` (and
/// the line), if any.
fn ejections_metric(proxy: &Proxy) -> Option<(f64, String)> {
    proxy
        .metrics()
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("ejections"))
        .find_map(|l| {
            let v = l.rsplit(' ').next()?.parse().ok()?;
            Some((v, l.to_string()))
        })
}

#[test]
fn scenario2_round_robin_ejects_a_backend_answering_503_and_takes_it_back() {
    let (proxy, (_ok1, _ok2, bad)) =
        one_503_of_three("round-robin", "eject-after = 5\neject-for = \"2s\"");
    let guard = shared();
    let load = LatencyLoad::start(&proxy.url("/"), 8, no_headers);
    std::thread::sleep(Duration::from_secs(3));
    let samples = load.snapshot();
    let (share, n) = share_after_first_second(&samples, "bad");
    figures!(
        "scenario2 round-robin eject-after=5 eject-for=2s: 503 backend share after 1 s {} of {n}; overall {} ({})",
        pct(share),
        pct(share_of(&samples, "bad")),
        spread(&samples)
    );

    // Fixed, it comes back once its ejection is over.
    let before = bad.requests();
    bad.set_status(200);
    let fixed = Instant::now();
    let back = wait_for(Duration::from_secs(20), || bad.requests() > before);
    let back_after = fixed.elapsed();
    std::thread::sleep(Duration::from_millis(1000));
    let since = load.elapsed() - Duration::from_millis(1000);
    let all = load.stop();
    drop(guard);
    let last: Vec<Sample> = all.iter().filter(|s| s.at >= since).cloned().collect();
    let back_share = share_of(&last, "bad");
    figures!(
        "scenario2 round-robin eject: fixed backend back after {:.2} s; then share {} ({})",
        back_after.as_secs_f64(),
        pct(back_share),
        spread(&last)
    );
    let warned = proxy
        .log()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("ejected"))
        .count();
    let metric = ejections_metric(&proxy);
    figures!(
        "scenario2 round-robin eject: {warned} warn lines with \"ejected\"; metric {:?}",
        metric.as_ref().map(|m| &m.1)
    );

    assert!(n > 0, "no requests after the first second");
    assert!(
        share <= 0.05,
        "round-robin with eject-after = 5 sent the 503 backend {} after the first second (> 5%)",
        pct(share)
    );
    assert!(
        back,
        "the fixed backend got no request within 20 s:\n{}",
        proxy.log()
    );
    assert!(
        back_share >= 0.10,
        "the fixed backend got only {} in the second after it came back",
        pct(back_share)
    );
    assert!(warned >= 1, "no ejection logged:\n{}", proxy.log());
    let (count, line) = metric.unwrap_or_else(|| {
        panic!(
            "no metric mentions ejections:\n{}",
            proxy
                .metrics()
                .lines()
                .filter(|l| l.contains("policy"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    assert!(count >= 1.0, "{line}");
}

// ---------------------------------------------------------------- scenario 3

/// Which backend answers each key (sent as `X-User`), asked by 4 clients
/// in parallel.
fn map_keys(proxy: &Proxy, keys: &[String]) -> Vec<String> {
    let url = proxy.url("/");
    let chunk = keys.len().div_ceil(4).max(1);
    let parts: Vec<Vec<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = keys
            .chunks(chunk)
            .map(|part| {
                let url = &url;
                s.spawn(move || {
                    let agent = client();
                    part.iter()
                        .map(|k| {
                            let r = get_with(&agent, url, &[("x-user", k)]);
                            assert_eq!(r.status, 200, "key {k}: {}", r.body);
                            r.body
                        })
                        .collect::<Vec<String>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    parts.concat()
}

#[test]
fn scenario3_consistent_hash_spreads_by_weight_agrees_and_moves_few_keys() {
    let hs: Vec<Backend> = (1..=5).map(|i| Backend::start(&format!("h{i}"))).collect();
    let weights = [2usize, 1, 1, 1, 1];
    let list: Vec<String> = hs
        .iter()
        .zip(weights)
        .map(|(b, w)| entry(b, &format!("weight = {w}")))
        .collect();
    let text = config("consistent-hash", &list, "", "", "key = \"header:x-user\"");
    let p1 = Proxy::start(&text);
    let p2 = Proxy::start(&text);
    let keys: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();

    let first = {
        let _shared = shared();
        map_keys(&p1, &keys)
    };
    let counts = tally(first.iter().map(String::as_str));
    let total_weight: usize = weights.iter().sum();
    let mut off = Vec::new();
    let mut figures = Vec::new();
    for (b, w) in hs.iter().zip(weights) {
        let expected = keys.len() as f64 * w as f64 / total_weight as f64;
        let got = counts.get(&b.name).copied().unwrap_or(0) as f64;
        let dev = got / expected - 1.0;
        figures.push(format!(
            "{} (w{w}) {got} vs {expected:.0} ({:+.1}%)",
            b.name,
            dev * 100.0
        ));
        if dev.abs() > 0.10 {
            off.push(b.name.clone());
        }
    }
    figures!("scenario3 consistent-hash spread: {}", figures.join(", "));

    // A second process with the same config maps every sampled key the same.
    let sample: Vec<String> = keys.iter().step_by(5).cloned().collect();
    let sampled_first: Vec<String> = first.iter().step_by(5).cloned().collect();
    let second = {
        let _shared = shared();
        map_keys(&p2, &sample)
    };
    let disagree = sample
        .iter()
        .zip(sampled_first.iter().zip(&second))
        .filter(|(_, (a, b))| a != b)
        .map(|(k, (a, b))| format!("{k}: {a} vs {b}"))
        .collect::<Vec<_>>();
    figures!(
        "scenario3 consistent-hash two processes: {} of {} sampled keys differ",
        disagree.len(),
        sample.len()
    );

    // Without h3, only h3's keys need to move.
    let without: Vec<String> = list
        .iter()
        .zip(&hs)
        .filter(|(_, b)| b.name != "h3")
        .map(|(e, _)| e.clone())
        .collect();
    p1.reload(&config(
        "consistent-hash",
        &without,
        "",
        "",
        "key = \"header:x-user\"",
    ));
    let after = {
        let _shared = shared();
        map_keys(&p1, &keys)
    };
    let moved = first.iter().zip(&after).filter(|(a, b)| a != b).count();
    let on_h3 = first.iter().filter(|b| *b == "h3").count();
    let h3_stayed = first
        .iter()
        .zip(&after)
        .filter(|(a, b)| *a == "h3" && *b == "h3")
        .count();
    let others_moved = first
        .iter()
        .zip(&after)
        .filter(|(a, b)| *a != "h3" && a != b)
        .count();
    figures!(
        "scenario3 consistent-hash remove h3: {moved} of {} keys moved ({}); h3 had {on_h3}, {h3_stayed} of them stayed; {others_moved} keys of other backends moved ({})",
        keys.len(),
        pct(moved as f64 / keys.len() as f64),
        pct(others_moved as f64 / keys.len() as f64)
    );

    assert!(
        off.is_empty(),
        "backends off their weighted share by > 10%: {off:?}"
    );
    assert!(
        disagree.is_empty(),
        "two processes disagree on {} keys, e.g. {:?}",
        disagree.len(),
        &disagree[..disagree.len().min(10)]
    );
    assert!(on_h3 > 0);
    assert_eq!(h3_stayed, 0, "keys still answered by the removed backend");
    assert!(
        moved as f64 <= 0.22 * keys.len() as f64,
        "{moved} of {} keys moved (> 22%)",
        keys.len()
    );
}

/// What 16 clients sending 2 s of requests, each with one of the hot
/// keys as its `X-User`, did to the backends.
struct Hammered {
    /// The most requests each backend had in flight at once in the first
    /// 0.5 s (new backend connections are being opened then) ...
    burst: Vec<u64>,
    /// ... and in the 1.5 s after.
    steady: Vec<u64>,
    samples: Vec<Sample>,
}

impl Hammered {
    fn most(&self) -> Vec<u64> {
        self.burst
            .iter()
            .zip(&self.steady)
            .map(|(a, b)| *a.max(b))
            .collect()
    }
}

fn hammer(proxy: &Proxy, backends: &[Backend], hot: &[String]) -> Hammered {
    let most = || backends.iter().map(|b| b.most_in_flight()).collect();
    for b in backends {
        b.reset_most_in_flight();
    }
    let hot = hot.to_vec();
    let load = LatencyLoad::start(&proxy.url("/"), 16, move |c, n| {
        header("x-user", hot[(c + n as usize) % hot.len()].clone())
    });
    std::thread::sleep(Duration::from_millis(500));
    let burst = most();
    for b in backends {
        b.reset_most_in_flight();
    }
    std::thread::sleep(Duration::from_millis(1500));
    let samples = load.stop();
    Hammered {
        burst,
        steady: most(),
        samples,
    }
}

#[test]
fn scenario3_bounded_load_caps_what_hot_keys_put_on_one_backend() {
    let hs: Vec<Backend> = (1..=5).map(|i| Backend::start(&format!("h{i}"))).collect();
    let list: Vec<String> = hs.iter().map(|b| b.entry()).collect();
    let plain = config("consistent-hash", &list, "", "", "key = \"header:x-user\"");
    let proxy = Proxy::start(&plain);

    // Three hot keys on the same backend: the worst case (11 keys are
    // enough to find three that share one of 5 backends).
    let agent = client();
    let mut by_backend: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut hot = Vec::new();
    for i in 0..100 {
        let key = format!("hot-{i}");
        let r = get_with(&agent, &proxy.url("/"), &[("x-user", &key)]);
        let keys = by_backend.entry(r.body).or_default();
        keys.push(key);
        if keys.len() == 3 {
            hot = keys.clone();
            break;
        }
    }
    assert_eq!(hot.len(), 3, "no three keys on one backend: {by_backend:?}");

    for b in &hs {
        b.set_delay(Duration::from_millis(20));
    }
    let limit = 1.25 * (16.0 / 5.0) + 1.0;
    let _shared = shared();
    let plain_run = hammer(&proxy, &hs, &hot);
    let unbounded = plain_run.most();
    figures!(
        "scenario3 consistent-hash hot keys {hot:?} without bounded-load: most in flight per backend {unbounded:?}, {} requests ({})",
        plain_run.samples.len(),
        spread(&plain_run.samples)
    );
    proxy.reload(&config(
        "consistent-hash",
        &list,
        "",
        "",
        "key = \"header:x-user\"\nbounded-load = 1.25",
    ));
    let bounded_run = hammer(&proxy, &hs, &hot);
    let (bounded, s2) = (bounded_run.most(), &bounded_run.samples);
    figures!(
        "scenario3 consistent-hash hot keys with bounded-load = 1.25: most in flight per backend {bounded:?} (limit {limit:.2}; first 0.5 s {:?}, then {:?}), {} requests ({})",
        bounded_run.burst,
        bounded_run.steady,
        s2.len(),
        spread(s2)
    );
    assert!(
        s2.iter().all(|s| s.status == 200),
        "failures with bounded-load: {}",
        spread(s2)
    );
    // The setup is a real test: unbounded, the hot keys pile up.
    assert!(
        unbounded.iter().any(|&n| n as f64 > limit),
        "the hot keys did not pile up without bounded-load: {unbounded:?}"
    );
    let most = bounded.iter().copied().max().unwrap_or(0);
    assert!(
        most as f64 <= limit,
        "with bounded-load = 1.25 a backend had {most} requests in flight (> {limit:.2}): {bounded:?}"
    );
}

// ---------------------------------------------------------------- scenario 4

#[test]
fn scenario4_slow_start_ramps_up_a_backend_added_by_reload() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("new"),
    );
    let two = config(
        "round-robin",
        &entries(&[&a, &b]),
        "",
        "",
        "slow-start = \"10s\"",
    );
    let proxy = Proxy::start(&two);
    // The backends of the config the proxy starts with were there before
    // it: they do not ramp, only the one the reload adds does.
    let load = LatencyLoad::start_paced(&proxy.url("/"), 2, Duration::from_millis(4), no_headers);
    std::thread::sleep(Duration::from_millis(300));
    proxy.reload(&config(
        "round-robin",
        &entries(&[&a, &b, &c]),
        "",
        "",
        "slow-start = \"10s\"",
    ));
    let reloaded = load.elapsed();
    std::thread::sleep(Duration::from_millis(11_600));
    let samples = load.stop();
    let window = |from: Duration, len: Duration| -> Vec<Sample> {
        samples
            .iter()
            .filter(|s| s.at >= reloaded + from && s.at < reloaded + from + len)
            .cloned()
            .collect()
    };
    let per_second: Vec<String> = (0..11)
        .map(|i| {
            pct(share_of(
                &window(Duration::from_secs(i), Duration::from_secs(1)),
                "new",
            ))
        })
        .collect();
    figures!(
        "scenario4 slow-start 10s: new backend share per second after the reload: {}",
        per_second.join(" ")
    );
    let early = window(Duration::ZERO, Duration::from_secs(1));
    let late = window(Duration::from_millis(10_500), Duration::from_secs(1));
    let (early_share, late_share) = (share_of(&early, "new"), share_of(&late, "new"));
    figures!(
        "scenario4 slow-start 10s: first second {} of {} ({}); after 10.5 s {} of {} ({})",
        pct(early_share),
        early.len(),
        spread(&early),
        pct(late_share),
        late.len(),
        spread(&late)
    );
    assert!(early.len() >= 20 && late.len() >= 20, "too few requests");
    assert!(
        early_share <= 0.11,
        "the new backend got {} in the first second (> 11%)",
        pct(early_share)
    );
    assert!(
        late_share >= 0.28,
        "the new backend got only {} after the window (< 28%)",
        pct(late_share)
    );
}

// ---------------------------------------------------------------- scenario 5

#[test]
fn scenario5_prefer_zone_keeps_traffic_home_until_a_zone_backend_fails() {
    let mut a1 = Backend::start("a1");
    let (a2, b1, b2) = (
        Backend::start("a2"),
        Backend::start("b1"),
        Backend::start("b2"),
    );
    let list = vec![
        entry(&a1, "tags = { zone = \"a\" }"),
        entry(&b1, "tags = { zone = \"b\" }"),
        entry(&a2, "tags = { zone = \"a\" }"),
        entry(&b2, "tags = { zone = \"b\" }"),
    ];
    let proxy = Proxy::start(&config(
        "round-robin",
        &list,
        "zone = \"a\"",
        "",
        "prefer-zone = true\nmin-healthy = \"50%\"",
    ));
    let url = proxy.url("/");
    let pause = Duration::from_millis(4);
    let home = LatencyLoad::start_paced(&url, 2, pause, no_headers);
    std::thread::sleep(Duration::from_millis(1500));
    let home = home.stop();
    let zone_b = |s: &[Sample]| share_of(s, "b1") + share_of(s, "b2");
    figures!(
        "scenario5 prefer-zone both zone-a up: zone b share {} ({})",
        pct(zone_b(&home)),
        spread(&home)
    );

    a1.stop();
    // The proxy marks a1 down at its first refused connection.
    let _ = run_clients(&url, 1, Duration::from_millis(300), no_headers);
    let spill = LatencyLoad::start_paced(&url, 2, pause, no_headers);
    std::thread::sleep(Duration::from_millis(1500));
    let spill = spill.stop();
    figures!(
        "scenario5 prefer-zone a1 stopped: zone b share {} ({})",
        pct(zone_b(&spill)),
        spread(&spill)
    );

    assert!(home.len() >= 20 && spill.len() >= 20, "too few requests");
    assert!(
        home.iter().all(|s| s.status == 200),
        "failures: {}",
        spread(&home)
    );
    assert_eq!(
        zone_b(&home),
        0.0,
        "zone b got traffic while zone a was healthy: {}",
        spread(&home)
    );
    assert!(
        zone_b(&spill) > 0.20,
        "zone b got only {} with half of zone a down: {}",
        pct(zone_b(&spill)),
        spread(&spill)
    );
    assert_eq!(share_of(&spill, "a1"), 0.0, "the stopped backend answered?");
}

// ---------------------------------------------------------------- scenario 6

fn check_config_text(policy: &str, policy_config: &str) -> String {
    let list = [
        "{ name = \"a\", address = \"127.0.0.1:19001\", weight = 2, tags = { zone = \"a\" } }"
            .to_string(),
        "{ name = \"b\", address = \"127.0.0.1:19002\", tags = { zone = \"b\" } }".to_string(),
        "{ name = \"c\", address = \"127.0.0.1:19003\", tags = { zone = \"a\" } }".to_string(),
    ];
    config(
        policy,
        &list,
        "zone = \"a\"",
        "max-fails = 0",
        policy_config,
    )
    .replace("{admin}", "19901")
    .replace("{port}", "18080")
}

#[test]
fn scenario6_bad_policy_config_values_are_refused_by_check() {
    let common = "eject-after = 5\neject-for = \"30s\"\nmax-ejected = \"50%\"\nprefer-zone = true\nmin-healthy = \"50%\"";
    let good: [(&str, String); 6] = [
        (
            "least-request",
            format!(
                "choices = 2\nbias = 1.0\nslow-start = \"10s\"\nslow-start-min = 0.1\n{common}"
            ),
        ),
        (
            "peak-ewma",
            format!("decay = \"10s\"\nfailure-penalty = \"1s\"\n{common}"),
        ),
        (
            "consistent-hash",
            format!(
                "key = \"header:x-user\"\nfallback = \"random\"\nbounded-load = 1.25\n{common}"
            ),
        ),
        (
            "round-robin",
            format!("slow-start = \"10s\"\nslow-start-min = 0.1\n{common}"),
        ),
        (
            "weighted",
            format!("slow-start = \"10s\"\nslow-start-min = 0.1\n{common}"),
        ),
        (
            "sticky-session",
            format!("cookie = \"sy-backend\"\n{common}"),
        ),
    ];
    for (policy, pc) in &good {
        let (ok, text, _) = check_with(&check_config_text(policy, pc), |_| {});
        figures!("scenario6 good {policy}: accepted {ok}");
        assert!(ok, "check refused a good {policy} config:\n{text}");
    }

    // (policy, good config, the line to change, its bad replacement, key)
    let bad = [
        (
            "consistent-hash",
            "key = \"header:x-user\"",
            "key = \"bogus:x\"",
            "key",
        ),
        (
            "consistent-hash",
            "bounded-load = 1.25",
            "bounded-load = 0.5",
            "bounded-load",
        ),
        (
            "least-request",
            "eject-for = \"30s\"",
            "eject-for = \"-5s\"",
            "eject-for",
        ),
        (
            "round-robin",
            "slow-start = \"10s\"",
            "slow-start = \"-1s\"",
            "slow-start",
        ),
        ("least-request", "choices = 2", "choises = 2", "choises"),
    ];
    let mut failures = Vec::new();
    for (policy, from, to, key) in bad {
        let pc = &good.iter().find(|(p, _)| *p == policy).unwrap().1;
        assert!(pc.contains(from), "{pc}");
        let (ok, text, path) =
            check_with(&check_config_text(policy, &pc.replace(from, to)), |_| {});
        let needle = format!("policy-config.{key}");
        let line = text
            .lines()
            .find(|l| l.contains(&needle))
            .unwrap_or("<not named>");
        figures!("scenario6 {policy} `{to}`: refused {}, says: {line}", !ok);
        // Named as `file:line:column: ... policy-config.KEY: reason`.
        let placed = line.starts_with(&format!("{path}:"));
        let reason = line
            .split(&format!("{needle}:"))
            .nth(1)
            .is_some_and(|r| !r.trim().is_empty());
        if ok || !placed || !reason {
            failures.push(format!("{policy} `{to}`: success {ok}, output:\n{text}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
