//! `switchyard simulate`: a policy's behaviour on simulated backends, the
//! same for the same seed, in agreement with the live proxy (the slow
//! backend of the adaptive scenarios; an access log replayed through
//! consistent hashing), with a failing policy costing no request, and a
//! bad scenario refused with its file and reason.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::adaptive::{alone, one_slow_of_three};
use crate::common::*;
use crate::fixtures::{Hostile, hostile};

/// Three backends `a`, `b`, `c` under `policy` (addresses never dialled).
fn config(policy: &str, extra: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"

[upstreams.app]
policy = "{policy}"
backends = [
  {{ name = "a", address = "127.0.0.1:9" }},
  {{ name = "b", address = "127.0.0.1:9" }},
  {{ name = "c", address = "127.0.0.1:9" }},
]
{extra}
"#
    )
}

/// Runs `switchyard simulate` in `dir` with `args`; (success, stdout,
/// stderr, wall time).
fn simulate(dir: &Path, args: &[&str]) -> (bool, String, String, Duration) {
    let started = Instant::now();
    let out = sy()
        .current_dir(dir)
        .arg("simulate")
        .args(args)
        .output()
        .expect("run switchyard simulate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
}

/// The run of `policy` in a `--json` report.
fn run_of<'a>(report: &'a serde_json::Value, policy: &str) -> &'a serde_json::Value {
    report["policies"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["policy"] == policy))
        .unwrap_or_else(|| panic!("no run of {policy} in {report}"))
}

/// Backend `b`'s share in the window starting at `from_s`.
fn window_share(run: &serde_json::Value, from_s: f64, backend: &str) -> f64 {
    run["windows"]
        .as_array()
        .and_then(|w| w.iter().find(|w| w["from_s"].as_f64() == Some(from_s)))
        .and_then(|w| w["share"][backend].as_f64())
        .unwrap_or_else(|| panic!("no window from {from_s} s in {run}"))
}

const SLOWED_AT_20S: &str = r#"duration = "60s"
rate = 500
seed = 7
keys = 1000
window = "5s"
[defaults]
latency = "20ms"
p99 = "60ms"
[[events]]
at = "20s"
backend = "b"
latency = "200ms"
p99 = "600ms"
"#;

#[test]
fn simulate_shows_peak_ewma_leaving_a_slowed_backend_and_repeats_byte_for_byte() {
    let dir = TempDir::new("simulate");
    dir.write("switchyard.toml", config("round-robin", ""));
    dir.write("slow-b.toml", SLOWED_AT_20S);
    let args = [
        "--config",
        "switchyard.toml",
        "--scenario",
        "slow-b.toml",
        "--policy",
        "peak-ewma",
        "--policy",
        "least-request",
        "--json",
        "--svg",
        "shares.svg",
    ];
    let (ok, first, err, took) = simulate(dir.path(), &args);
    assert!(ok, "simulate failed:\n{err}");
    let report = json(&first);
    let rr = run_of(&report, "round-robin");
    let pe = run_of(&report, "peak-ewma");
    let lr = run_of(&report, "least-request");
    // ~30000 Poisson arrivals in 60 s at 500/s, the same for each policy.
    let n = rr["requests"].as_u64().unwrap();
    assert!((29_000..31_000).contains(&n), "{n} requests");
    assert_eq!(pe["requests"], rr["requests"]);
    for run in [rr, pe, lr] {
        assert_eq!(run["errors"], 0, "{run}");
        assert_eq!(run["policy_failures"], 0, "{run}");
        let digest = run["digest"].as_str().unwrap_or_default();
        assert!(
            digest.starts_with("sha256:") && digest.len() == 71,
            "{digest}"
        );
    }
    // Round-robin keeps b at a third after it slowed down...
    for from in [20.0, 25.0, 40.0, 55.0] {
        let s = window_share(rr, from, "b");
        assert!(
            (s - 1.0 / 3.0).abs() < 0.01,
            "round-robin b {s} from {from} s"
        );
    }
    // ...peak-ewma drops it below 10% within 5 simulated seconds.
    let pe_before = window_share(pe, 15.0, "b");
    let pe_after = window_share(pe, 20.0, "b");
    assert!(pe_before > 0.2, "peak-ewma b {pe_before} before the change");
    assert!(pe_after < 0.10, "peak-ewma b {pe_after} in 20-25 s");
    let lr_after = window_share(lr, 25.0, "b");
    assert!(lr_after < 0.15, "least-request b {lr_after} in 25-30 s");
    // Client latency follows: p99 under round-robin is the slow backend's.
    let (rr_p99, pe_p99) = (
        rr["p99_ms"].as_f64().unwrap(),
        pe["p99_ms"].as_f64().unwrap(),
    );
    assert!(rr_p99 > 3.0 * pe_p99, "p99 rr {rr_p99} ms, pe {pe_p99} ms");
    crate::figures!(
        "simulate 60 s x 500 req/s x 3 policies in {:.2} s (debug build); b after 20 s: rr {:.1}%, peak-ewma {:.1}%, least-request {:.1}%; p99 rr {rr_p99} ms, peak-ewma {pe_p99} ms",
        took.as_secs_f64(),
        window_share(rr, 20.0, "b") * 100.0,
        pe_after * 100.0,
        lr_after * 100.0
    );

    // The same seed gives the same bytes; another seed other draws.
    let (_, second, _, _) = simulate(dir.path(), &args);
    assert_eq!(first, second, "two runs with seed 7 differ");
    dir.write("slow-b.toml", SLOWED_AT_20S.replace("seed = 7", "seed = 8"));
    let (_, third, _, _) = simulate(dir.path(), &args);
    assert_ne!(first, third, "seed 8 gave seed 7's run");

    // The chart: a polyline per backend per policy, the event marked.
    let svg = std::fs::read_to_string(dir.path().join("shares.svg")).expect("svg written");
    assert!(svg.starts_with("<svg"), "{svg}");
    assert_eq!(svg.matches("<polyline").count(), 9);
    assert!(svg.contains("b latency 200ms"), "{svg}");

    // Without --json: a table per policy with the windows as columns.
    let (ok, text, _, _) = simulate(dir.path(), &["-c", "switchyard.toml", "-s", "slow-b.toml"]);
    assert!(ok);
    assert!(text.contains("policy round-robin (sha256 "), "{text}");
    assert!(text.contains("20-25s"), "{text}");
}

#[test]
fn simulate_agrees_with_the_live_slow_backend_scenario() {
    // Live: eight clients against three real backends, one 50 ms late.
    let live: Vec<(&str, f64)> = {
        let _alone = alone();
        ["round-robin", "least-request", "peak-ewma"]
            .into_iter()
            .map(|p| (p, one_slow_of_three(p).0))
            .collect()
    };
    // Simulated: the same backends (loopback answers take ~0.3 ms), open
    // arrivals at about the rate eight such clients reach.
    let dir = TempDir::new("simulate");
    dir.write(
        "switchyard.toml",
        r#"[server]
listen = "127.0.0.1:0"

[upstreams.app]
policy = "round-robin"
backends = [
  { name = "fast-1", address = "127.0.0.1:9" },
  { name = "slow", address = "127.0.0.1:9" },
  { name = "fast-2", address = "127.0.0.1:9" },
]
"#,
    );
    dir.write(
        "slow.toml",
        r#"duration = "3s"
rate = 2000
seed = 1
[defaults]
latency = "300us"
p99 = "1ms"
[backends.slow]
latency = "50ms"
p99 = "52ms"
"#,
    );
    let (ok, out, err, _) = simulate(
        dir.path(),
        &[
            "-c",
            "switchyard.toml",
            "-s",
            "slow.toml",
            "--policy",
            "least-request",
            "--policy",
            "peak-ewma",
            "--json",
        ],
    );
    assert!(ok, "{err}");
    let report = json(&out);
    for (policy, live_share) in live {
        let sim = run_of(&report, policy)["backends"]["slow"]["share"]
            .as_f64()
            .unwrap();
        crate::figures!(
            "simulate vs live, slow backend's share under {policy}: simulated {:.1}%, live {:.1}%",
            sim * 100.0,
            live_share * 100.0
        );
        assert!(
            (sim - live_share).abs() <= 0.05,
            "{policy}: simulated {sim:.3} vs live {live_share:.3}: more than 5 points apart"
        );
    }
}

#[test]
fn simulate_replays_an_access_log_as_the_proxy_routed_it() {
    // Live: consistent hashing on the path, every request logged.
    let backends = [
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    ];
    let refs: Vec<&Backend> = backends.iter().collect();
    let config = format!(
        "{}\n[upstreams.app.policy-config]\nkey = \"path\"\n\n[access-log]\npath = \"access.log\"\nformat = \"json\"\n",
        one_upstream("consistent-hash", &refs, "")
    );
    let proxy = Proxy::start(&config);
    let agent = client();
    let mut rng = fastrand::Rng::with_seed(3);
    for _ in 0..300 {
        let path = format!("/item/{}", rng.u32(0..60));
        assert_eq!(get(&agent, &proxy.url(&path)).status, 200);
    }
    let log = proxy.dir.path().join("access.log");
    assert!(wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
            == 300
    }));
    let mut live = std::collections::BTreeMap::new();
    for line in std::fs::read_to_string(&log).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        *live
            .entry(v["backend"].as_str().unwrap().to_string())
            .or_insert(0u64) += 1;
    }

    // Replayed through the same config: each request to the same backend.
    proxy.dir.write("none.toml", "duration = \"1s\"\n");
    let (ok, out, err, _) = simulate(
        proxy.dir.path(),
        &[
            "-c",
            "switchyard.toml",
            "-s",
            "none.toml",
            "--access-log",
            "access.log",
            "--policy",
            "round-robin",
            "--json",
        ],
    );
    assert!(ok, "{err}");
    let report = json(&out);
    let ch = run_of(&report, "consistent-hash");
    assert_eq!(ch["requests"], 300);
    for (name, n) in &live {
        assert_eq!(
            ch["backends"][name]["requests"].as_u64(),
            Some(*n),
            "{name}: live {live:?}, simulated {}",
            ch["backends"]
        );
    }
    // Round-robin over the same requests spreads them evenly instead.
    let rr = run_of(&report, "round-robin");
    for name in ["a", "b", "c"] {
        assert_eq!(rr["backends"][name]["requests"], 100, "{}", rr["backends"]);
    }
}

#[test]
fn simulate_a_failing_policy_costs_no_request() {
    for h in [Hostile::Trap, Hostile::Loop] {
        let dir = TempDir::new("simulate");
        dir.write("bad.wasm", hostile(h));
        dir.write("switchyard.toml", config("bad.wasm", ""));
        // Every request is for /x, where the fixture misbehaves.
        dir.write(
            "s.toml",
            "duration = \"20s\"\nrate = 100\npath = \"/x\"\n[[events]]\nat = \"10s\"\nbackend = \"c\"\ndown = true\n",
        );
        let (ok, out, err, _) = simulate(
            dir.path(),
            &["-c", "switchyard.toml", "-s", "s.toml", "--json"],
        );
        assert!(ok, "{h:?}: {err}");
        let report = json(&out);
        let run = &report["policies"][0];
        let n = run["requests"].as_u64().unwrap();
        assert!(n > 1500, "{h:?}: {run}");
        // The fallback sent every request; none failed, even after c went
        // down (refused connections are retried on another backend).
        // (a retry after c refused asks again: more decisions than requests).
        assert!(run["policy_failures"].as_u64() >= Some(n), "{h:?}: {run}");
        assert_eq!(run["errors"], 0, "{h:?}: {run}");
        assert!(window_share(run, 10.0, "c") < 0.01, "{h:?}: {run}");
    }
}

#[test]
fn simulate_refuses_a_bad_scenario_naming_file_and_reason() {
    let dir = TempDir::new("simulate");
    dir.write("switchyard.toml", config("round-robin", ""));
    for (scenario, reason) in [
        (
            "duration = \"5s\"\n[backends.d]\n",
            "\"d\" is not a backend",
        ),
        ("duration = \"5s\"\nrte = 10\n", "unknown field `rte`"),
        ("duration = \"5s\"\nkey = \"body\"\n", "give client-ip"),
        (
            "duration = \"5s\"\n[[events]]\nat = \"1s\"\nbackend = \"a\"\nerrors = 3\n",
            "within 0..1",
        ),
    ] {
        dir.write("bad.toml", scenario);
        let (ok, _, err, _) = simulate(dir.path(), &["-c", "switchyard.toml", "-s", "bad.toml"]);
        assert!(!ok, "accepted {scenario:?}");
        assert!(
            err.contains("bad.toml") && err.contains(reason),
            "{scenario:?}: {err}"
        );
    }
    let (ok, _, err, _) = simulate(
        dir.path(),
        &[
            "-c",
            "switchyard.toml",
            "-s",
            "bad.toml",
            "--upstream",
            "api",
        ],
    );
    assert!(!ok && err.contains("no upstream \"api\""), "{err}");
}
