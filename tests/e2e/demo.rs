//! `switchyard demo`: curl the proxy a few times and see several backends
//! answer, as in the "nginx in front of two Flask apps" tutorial; with
//! `--policy weighted` the 3:2:1 weights show; a policy that does not
//! exist is named in the error.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

/// Starts `switchyard demo ARGS` on an ephemeral port; returns it and the
/// port once it listens.
fn demo(dir: &TempDir, args: &[&str]) -> (Killed, u16) {
    let log = dir.path().join("demo.log");
    let child = Killed(
        sy().args(["demo", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut port = None;
    let started = wait_for(Duration::from_secs(60), || {
        port = listening_port(&std::fs::read_to_string(&log).unwrap_or_default());
        port.is_some()
    });
    assert!(
        started,
        "demo did not start: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    (child, port.unwrap_or_default())
}

/// Which backend answered: "Hello from backend-2 (...)" -> "backend-2".
fn who(text: &str) -> String {
    assert!(text.starts_with("Hello from backend-"), "{text:?}");
    text.split_whitespace().nth(2).unwrap_or("").to_string()
}

#[test]
fn four_curls_reach_at_least_two_backends() {
    let dir = TempDir::new("demo");
    let (_demo, port) = demo(&dir, &[]);
    let mut answers = BTreeSet::new();
    for _ in 0..4 {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "5",
                &format!("http://localhost:{port}/"),
            ])
            .output()
            .expect("curl is installed");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        answers.insert(who(&text));
    }
    assert!(answers.len() >= 2, "only {answers:?} answered");
}

#[test]
fn the_weighted_demo_shows_its_weights() {
    let dir = TempDir::new("demo-weighted");
    let (_demo, port) = demo(&dir, &["--policy", "weighted"]);
    let agent = client();
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..60 {
        let r = get(&agent, &format!("http://127.0.0.1:{port}/"));
        assert_eq!(r.status, 200);
        *count.entry(who(&r.body)).or_default() += 1;
    }
    // Weights 3:2:1 over 60 requests: 30, 20, 10 (round-robin gives 20
    // each).
    let near = |name: &str, want: usize| count.get(name).copied().unwrap_or(0).abs_diff(want) <= 2;
    assert!(
        near("backend-1", 30) && near("backend-2", 20) && near("backend-3", 10),
        "{count:?}"
    );
}

#[test]
fn a_demo_policy_that_does_not_exist_is_named() {
    for (policy, says) in [
        ("least-conn", "not a built-in policy"),
        ("./nowhere/policy.wasm", "no such file"),
    ] {
        let dir = TempDir::new("demo-missing");
        let log = dir.path().join("stderr");
        let mut child = Killed(
            sy().args(["demo", "--listen", "127.0.0.1:0", "--policy", policy])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap(),
        );
        let mut status = None;
        let exited = wait_for(Duration::from_secs(60), || {
            status = child.0.try_wait().unwrap();
            status.is_some()
        });
        let err = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(exited, "demo --policy {policy} started: {err}");
        assert!(status.is_some_and(|s| !s.success()));
        assert!(
            err.contains(&format!("demo --policy {policy}")) && err.contains(says),
            "{err}"
        );
        assert!(!err.contains("(demo)"), "{err}");
    }
}
