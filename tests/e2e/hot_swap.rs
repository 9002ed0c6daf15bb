//! Replacing a policy file while traffic flows: no failed request, the new
//! policy in service within moments, broken files refused, and the state a
//! policy keeps in the host surviving the swap.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::fixtures;

fn weighted_config(a: &Backend, b: &Backend, c: &Backend) -> String {
    format!(
        r#"[admin]
listen = "127.0.0.1:{{admin}}"

[server]
listen = "127.0.0.1:{{port}}"

[upstreams.app]
policy = "policy.wasm"
backends = [
  {{ name = "a", address = "{}", weight = 5 }},
  {{ name = "b", address = "{}" }},
  {{ name = "c", address = "{}" }},
]
"#,
        a.addr, b.addr, c.addr
    )
}

/// Replaces `path` with `bytes` the way deploy tools do: write a temporary
/// file beside it, then rename it over.
fn rename_over(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("wasm.tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn digest(proxy: &Proxy) -> String {
    proxy.status()["upstreams"][0]["policy"]["digest"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The digest `/status` reports for a component.
fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(bytes);
    format!(
        "sha256:{}",
        d.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

fn split(agent: &ureq::Agent, proxy: &Proxy, n: usize) -> BTreeMap<String, usize> {
    let bodies: Vec<String> = (0..n).map(|_| get(agent, &proxy.url("/")).body).collect();
    tally(bodies.iter().map(String::as_str))
}

fn exact(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[test]
fn twenty_swaps_under_load_fail_no_request() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let dir = TempDir::new("swap-src");
    let policies = builtin_policies(dir.path());
    let (rr, weighted) = (&policies["round-robin"], &policies["weighted"]);
    let proxy = Proxy::start_with(&weighted_config(&a, &b, &c), |d| {
        d.write("policy.wasm", weighted);
    });
    let file = proxy.dir.path().join("policy.wasm");

    // 8 keep-alive clients for the whole run.
    let load = Load::start(&proxy.url("/"), 8);

    // 20 swaps in 10 s, alternating policy and alternating the way the file
    // is replaced; it ends on weighted.
    let mut quiet_windows = Vec::new();
    for i in 1..=20 {
        let bytes = if i % 2 == 1 { rr } else { weighted };
        let before = load.sent();
        if i % 4 < 2 {
            rename_over(&file, bytes);
        } else {
            std::fs::write(&file, bytes).unwrap();
        }
        std::thread::sleep(Duration::from_millis(500));
        if load.sent() == before {
            quiet_windows.push(i);
        }
    }
    let last_write = Instant::now();
    let (total, failures) = load.stop();
    // Traffic flowed through every swap, not only between them.
    assert!(
        quiet_windows.is_empty(),
        "no request was served around swaps {quiet_windows:?}"
    );
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    // The last policy is in service within 2 s of the last write...
    let want = sha256(weighted);
    assert!(
        wait_for(
            Duration::from_secs(2).saturating_sub(last_write.elapsed()),
            || digest(&proxy) == want
        ),
        "weighted not in service 2 s after the last swap: {}\n{}",
        digest(&proxy),
        proxy.log()
    );
    // ... and it is weighted round-robin: 70 requests split 50/10/10.
    assert_eq!(
        split(&client(), &proxy, 70),
        exact(&[("a", 50), ("b", 10), ("c", 10)])
    );
    assert!(proxy.metric("switchyard_policy_swaps_total{upstream=\"app\",result=\"ok\"}") >= 10.0);
}

#[test]
fn random_bytes_over_the_policy_file_leave_the_old_policy_serving() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let dir = TempDir::new("junk-src");
    let policies = builtin_policies(dir.path());
    let proxy = Proxy::start_with(&weighted_config(&a, &b, &c), |d| {
        d.write("policy.wasm", &policies["weighted"]);
    });
    let file = proxy.dir.path().join("policy.wasm");
    let agent = client();

    std::fs::write(&file, fixtures::random_bytes(20_000)).unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || proxy
            .log()
            .contains("refused, the previous policy keeps serving")),
        "{}",
        proxy.log()
    );
    let line = proxy
        .log()
        .lines()
        .find(|l| l.contains("refused"))
        .unwrap()
        .to_string();
    assert!(
        line.contains(file.to_str().unwrap()) && line.contains("is not a WebAssembly component"),
        "{line}"
    );
    // Still weighted: traffic flows as before.
    assert_eq!(
        split(&agent, &proxy, 70),
        exact(&[("a", 50), ("b", 10), ("c", 10)])
    );
    assert!(
        proxy.metric("switchyard_policy_swaps_total{upstream=\"app\",result=\"failed\"}") >= 1.0
    );

    // A valid file written afterwards takes over.
    rename_over(&file, &policies["round-robin"]);
    let want = sha256(&policies["round-robin"]);
    assert!(
        wait_for(Duration::from_secs(5), || digest(&proxy) == want),
        "{}",
        proxy.log()
    );
    assert_eq!(
        split(&agent, &proxy, 30),
        exact(&[("a", 10), ("b", 10), ("c", 10)])
    );
}

#[test]
fn round_robin_keeps_its_position_across_a_swap() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let dir = TempDir::new("position-src");
    let rr = builtin_policies(dir.path()).remove("round-robin").unwrap();
    let proxy = Proxy::start_with(&weighted_config(&a, &b, &c), |d| {
        d.write("policy.wasm", &rr);
    });
    let file = proxy.dir.path().join("policy.wasm");
    let agent = client();
    let next = |agent: &ureq::Agent| get(agent, &proxy.url("/")).body;
    assert_eq!(
        [next(&agent), next(&agent), next(&agent), next(&agent)],
        ["a", "b", "c", "a"]
    );

    // An identical file: the next backend is the one that came next anyway.
    let swaps =
        |p: &Proxy| p.metric("switchyard_policy_swaps_total{upstream=\"app\",result=\"ok\"}");
    std::fs::write(&file, &rr).unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || swaps(&proxy) >= 1.0),
        "{}",
        proxy.log()
    );
    assert_eq!(next(&agent), "b");

    // A new version of itself (another file, another digest): same again.
    let v2 = fixtures::new_version(&rr, "v2");
    rename_over(&file, &v2);
    let want = sha256(&v2);
    assert!(
        wait_for(Duration::from_secs(5), || digest(&proxy) == want),
        "{}",
        proxy.log()
    );
    assert_eq!(next(&agent), "c");
    assert_eq!(next(&agent), "a");
}

#[test]
fn a_hostile_swap_is_refused_and_a_config_trap_never_serves() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let dir = TempDir::new("hostile-src");
    let rr = builtin_policies(dir.path()).remove("round-robin").unwrap();
    let proxy = Proxy::start_with(&weighted_config(&a, &b, &c), |d| {
        d.write("policy.wasm", &rr);
    });
    let file = proxy.dir.path().join("policy.wasm");
    rename_over(&file, &fixtures::config_trap());
    assert!(
        wait_for(Duration::from_secs(5), || proxy
            .log()
            .contains("trapped while loading")),
        "{}",
        proxy.log()
    );
    assert_eq!(
        split(&client(), &proxy, 30),
        exact(&[("a", 10), ("b", 10), ("c", 10)])
    );
}
