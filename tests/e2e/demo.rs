//! `switchyard demo`: curl the proxy a few times and see several backends
//! answer, as in the "nginx in front of two Flask apps" tutorial.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn four_curls_reach_at_least_two_backends() {
    let dir = TempDir::new("demo");
    let log = dir.path().join("demo.log");
    let _demo = Killed(
        sy().args(["demo", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let port = loop {
        if let Some(p) = listening_port(&std::fs::read_to_string(&log).unwrap_or_default()) {
            break p;
        }
        assert!(Instant::now() < deadline, "demo did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
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
            text.starts_with("Hello from backend-"),
            "{text:?} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        answers.insert(text.split_whitespace().nth(2).unwrap_or("").to_string());
    }
    assert!(answers.len() >= 2, "only {answers:?} answered");
}
