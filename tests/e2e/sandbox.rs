//! Hostile policies cannot take a request down: each misbehaviour costs at
//! most the deadline, is counted by kind in `/metrics`, and the request is
//! served by the fallback from a healthy backend.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::fixtures::{self, Hostile};

fn config(backends: &[&Backend], extra: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:{{admin}}\"\n\n{}",
        one_upstream("hostile.wasm", backends, extra)
    )
}

fn start(h: Hostile, backends: &[&Backend], extra: &str) -> Proxy {
    let wasm = fixtures::hostile(h);
    Proxy::start_with(&config(backends, extra), |d| {
        d.write("hostile.wasm", &wasm);
    })
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn every_hostile_policy_is_contained_and_counted() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    for h in Hostile::ALL {
        // The hog gets time to reach its memory cap even on a fresh VM,
        // where first touches of pages are slow (see the test below).
        let extra = match h {
            Hostile::Hog => "policy-timeout = \"200ms\"",
            _ => "",
        };
        let proxy = start(h, &[&a, &b], extra);
        let agent = client();
        // Until the policy is reported unhealthy: a request that finds no
        // instance ready (one is being made after a trap) is served by the
        // fallback without calling the policy, so on a busy machine it may
        // take more than the 5 failing calls' worth of requests.
        let mut seen = Vec::new();
        for i in 0..200 {
            if i >= 12 && proxy.status()["upstreams"][0]["policy"]["healthy"] == false {
                break;
            }
            let r = get(&agent, &proxy.url(&format!("/hostile/{i}")));
            assert_eq!(r.status, 200, "{h:?}: {r:?}\n{}", proxy.log());
            seen.push(r.body);
        }
        // The fallback is round-robin over the healthy backends.
        assert!(
            seen.contains(&"a".into()) && seen.contains(&"b".into()),
            "{h:?}: {seen:?}"
        );
        let kind = |k: &str| {
            proxy.metric(&format!(
                "switchyard_policy_failures_total{{upstream=\"app\",kind=\"{k}\"}}"
            ))
        };
        // Counted under its kind: at least the 5 that make it unhealthy.
        let counted: f64 = ["trap", "timeout", "memory", "error", "out_of_range"]
            .iter()
            .map(|k| kind(k))
            .sum();
        assert!(
            kind(h.kind()) >= 1.0 && counted >= 5.0,
            "{h:?}: {counted} failures counted\n{}",
            proxy.metrics()
        );
        // After 5 consecutive failures the policy is reported unhealthy.
        let status = proxy.status();
        assert_eq!(
            status["upstreams"][0]["policy"]["healthy"], false,
            "{h:?}: {status}"
        );
        assert!(
            proxy
                .log()
                .contains("policy unhealthy after 5 consecutive failures"),
            "{h:?}"
        );
        // A path the policy handles still goes through it.
        assert_eq!(get(&agent, &proxy.url("/")).status, 200);
    }
}

/// CPU time (user + system) the process has used, in milliseconds.
fn cpu_ms(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at state.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks * 1000 / 100 // USER_HZ is 100 on Linux
}

#[test]
fn an_endless_loop_costs_a_request_no_more_than_the_deadline() {
    let a = Backend::start("a");
    // A deadline long enough to measure with the process's CPU clock (10 ms
    // resolution); every request calls the policy (no unhealthy short-cut).
    let proxy = start(
        Hostile::Loop,
        &[&a],
        "policy-timeout = \"50ms\"\npolicy-max-failures = 1000",
    );
    let agent = client();
    get(&agent, &proxy.url("/"));
    let cpu_before = cpu_ms(proxy.pid());
    let mut took = Vec::new();
    for i in 0..10 {
        let started = Instant::now();
        let r = get(&agent, &proxy.url(&format!("/loop/{i}")));
        took.push(started.elapsed());
        assert_eq!(r.status, 200);
    }
    let cpu = cpu_ms(proxy.pid()) - cpu_before;
    eprintln!("endless loop, policy-timeout 50ms: 10 requests took {took:?}, {cpu} ms of CPU");
    // Each loop is stopped at the first kernel tick after it has used 50 ms
    // of CPU counted from its first tick: 50-58 ms at HZ=250, plus the
    // proxy's own work.
    assert!(cpu <= 700, "10 looping requests used {cpu} ms of CPU");
    // However loaded the machine, no request waited for the loop to end.
    took.sort();
    assert!(
        took[0] >= Duration::from_millis(50),
        "the loop was not run? {took:?}"
    );
    assert!(
        took[took.len() - 1] < Duration::from_millis(1000),
        "worst case: {took:?}"
    );
    assert_eq!(
        proxy.metric("switchyard_policy_failures_total{upstream=\"app\",kind=\"timeout\"}"),
        10.0
    );
}

#[test]
fn a_memory_hog_does_not_grow_the_proxy_past_its_cap() {
    let a = Backend::start("a");
    let proxy = start(
        Hostile::Hog,
        &[&a],
        // The deadline is generous: this test is about the memory cap, and
        // on a fresh VM the first touch of each page (a fault in the guest
        // kernel and one in the hypervisor) made 4 MiB take more than the
        // default 1 ms of CPU, so every call ended as a timeout.
        "policy-memory = \"4MiB\"\npolicy-max-failures = 1000\npolicy-timeout = \"200ms\"",
    );
    let agent = client();
    for _ in 0..5 {
        get(&agent, &proxy.url("/"));
    }
    let before = rss_kib(proxy.pid());
    let mut peak = before;
    for i in 0..40 {
        assert_eq!(get(&agent, &proxy.url(&format!("/hog/{i}"))).status, 200);
        peak = peak.max(rss_kib(proxy.pid()));
    }
    let after = rss_kib(proxy.pid());
    assert!(
        peak - before <= 4 * 1024,
        "RSS rose by {} KiB (cap 4096)",
        peak - before
    );
    assert!(
        after - before.min(after) <= 4 * 1024,
        "RSS stayed {} KiB up",
        after - before.min(after)
    );
    // Each call that ran hit the cap; a request that came while the next
    // instance was still being made (off the request path) went to the
    // fallback without a call, and once the failure rate made the policy
    // unhealthy, requests skipped it.
    let kind = |k: &str| {
        proxy.metric(&format!(
            "switchyard_policy_failures_total{{upstream=\"app\",kind=\"{k}\"}}"
        ))
    };
    let memory = kind("memory");
    assert!(memory >= 1.0, "{}", proxy.metrics());
    assert_eq!(
        memory + kind("timeout") + kind("warming") + kind("skipped"),
        40.0,
        "{}",
        proxy.metrics()
    );
}

#[test]
fn a_policy_whose_config_step_traps_is_never_put_in_service() {
    let a = Backend::start("a");
    let dir = TempDir::new("config-trap");
    let path = dir.write("bad.wasm", fixtures::config_trap());
    let cfg = dir.write(
        "switchyard.toml",
        one_upstream(path.to_str().unwrap(), &[&a], "").replace("{port}", "0"),
    );
    let out = check_config(&cfg);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("trapped while loading"), "{err}");
}
