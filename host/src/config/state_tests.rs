//! `[state]` and `shared-state`, as `Config::parse` checks them: which
//! Redis (`redis`, `rediss://` with `ca`, `redis-cluster`), and every
//! refusal at its line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Config, ConfigErrors, RedisTarget, SharedStateMode};

fn parse(src: &str) -> Result<Config, ConfigErrors> {
    Config::parse(Path::new("test.toml"), src)
}

fn with(state: &str, shared: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:1\"\n{state}\n[upstreams.app]\npolicy = \"round-robin\"\nbackends = [{{ name = \"a\", address = \"127.0.0.1:2\" }}]\n{shared}\n"
    )
}

#[test]
fn upstreams_keep_their_state_locally_by_default() {
    let c = parse(&with("[state]\nredis = \"redis://127.0.0.1:6379\"", "")).unwrap();
    assert_eq!(c.upstreams[0].shared_state, SharedStateMode::Local);
}

#[test]
fn shared_state_redis_takes_the_state_section() {
    let c = parse(&with(
        "[state]\nredis = \"redis://127.0.0.1:6379/2\"\ncounter-block = 16\nrefresh = \"250ms\"",
        "shared-state = \"redis\"",
    ))
    .unwrap();
    let SharedStateMode::Redis(s) = &c.upstreams[0].shared_state else {
        panic!("not redis");
    };
    assert_eq!(
        s.redis,
        RedisTarget::Single("redis://127.0.0.1:6379/2".into())
    );
    assert_eq!(s.counter_block, 16);
    assert_eq!(s.refresh, Duration::from_millis(250));
}

#[test]
fn shared_state_redis_without_a_state_section_is_an_error_at_its_line() {
    let err = parse(&with("", "shared-state = \"redis\""))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("test.toml:7:"), "{err}");
    assert!(err.contains("upstreams.app.shared-state"), "{err}");
    assert!(err.contains("[state]"), "{err}");
}

#[test]
fn bad_state_values_are_refused() {
    for (state, shared, want) in [
        ("[state]\nredis = \"http://x\"", "", "state.redis"),
        ("[state]\nredis = \"redis://x/#insecure\"", "", "database"),
        ("[state]\nredis = \"redis://x:port\"", "", "not a port"),
        ("[state]\nredis = \"redis://:1\"", "", "no host"),
        (
            "[state]\nredis = \"redis://x\"\ncounter-block = 0",
            "",
            "counter-block",
        ),
        (
            "[state]\nredis = \"redis://x\"\nrefresh = \"0s\"",
            "",
            "state.refresh",
        ),
        ("", "shared-state = \"memcached\"", "neither"),
    ] {
        let err = parse(&with(state, shared)).unwrap_err().to_string();
        assert!(err.contains(want), "{state} {shared}: {err}");
    }
}

#[test]
fn rediss_is_tls_and_logs_show_no_password() {
    let c = parse(&with(
        "[state]\nredis = \"rediss://user:secret@redis.internal:6380/1\"",
        "shared-state = \"redis\"",
    ))
    .unwrap();
    let s = c.state.unwrap();
    assert!(s.redis.tls());
    assert_eq!(s.ca, None, "the system's roots");
    assert_eq!(s.redis.to_string(), "redis rediss://redis.internal:6380/1");
}

/// A fresh temporary directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        let dir = std::env::temp_dir().join(format!(
            "switchyard-state-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    /// The file `name` in it, with `text`.
    fn file(&self, name: &str, text: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ca_pem() -> String {
    rcgen::generate_simple_self_signed(vec!["redis-ca.test".into()])
        .unwrap()
        .cert
        .pem()
}

#[test]
fn ca_names_the_authorities_of_a_rediss_server() {
    let pem = ca_pem();
    let dir = Dir::new();
    let path = dir.file("ca.pem", pem.as_bytes());
    let c = parse(&with(
        &format!(
            "[state]\nredis = \"rediss://127.0.0.1:6380\"\nca = \"{}\"",
            path.display()
        ),
        "shared-state = \"redis\"",
    ))
    .unwrap();
    let ca = c.state.unwrap().ca.unwrap();
    assert_eq!(ca.path, path);
    assert_eq!(ca.pem, pem.as_bytes());
    // Relative to the config file's directory.
    let src = with(
        "[state]\nredis = \"rediss://127.0.0.1:6380\"\nca = \"ca.pem\"",
        "",
    );
    let c = Config::parse(&dir.0.join("sy.toml"), &src).unwrap();
    assert_eq!(c.state.unwrap().ca.unwrap().path, path);
}

#[test]
fn a_missing_or_bad_ca_is_an_error_at_its_line() {
    let dir = Dir::new();
    let garbage = dir.file("garbage.pem", b"not a certificate\n");
    let broken = dir.file(
        "broken.pem",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    let good = dir.file("ca.pem", ca_pem().as_bytes());
    for (url, ca, want) in [
        ("rediss://h:1", "/nonexistent/ca.pem".into(), "cannot read"),
        ("rediss://h:1", garbage.clone(), "no CERTIFICATE block"),
        (
            "rediss://h:1",
            broken.clone(),
            "not a usable CA certificate",
        ),
        ("redis://h:1", good.clone(), "only for TLS"),
    ] {
        let src = with(
            &format!("[state]\nredis = \"{url}\"\nca = \"{}\"", ca.display()),
            "",
        );
        let err = parse(&src).unwrap_err().to_string();
        assert!(err.starts_with("test.toml:5:6: state.ca: "), "{err}");
        assert!(err.contains(want), "{ca:?}: {err}");
    }
}

#[test]
fn redis_cluster_lists_its_nodes() {
    let c = parse(&with(
        "[state]\nredis-cluster = [\"redis://127.0.0.1:7000\", \" redis://127.0.0.1:7001 \"]",
        "shared-state = \"redis\"",
    ))
    .unwrap();
    let SharedStateMode::Redis(s) = &c.upstreams[0].shared_state else {
        panic!("not redis");
    };
    assert_eq!(
        s.redis,
        RedisTarget::Cluster(vec![
            "redis://127.0.0.1:7000".into(),
            "redis://127.0.0.1:7001".into()
        ])
    );
    assert!(!s.redis.tls());
    let dir = Dir::new();
    let good = dir.file("ca.pem", ca_pem().as_bytes());
    let c = parse(&with(
        &format!(
            "[state]\nredis-cluster = [\"rediss://a:7000\", \"rediss://b:7000\"]\nca = \"{}\"",
            good.display()
        ),
        "",
    ))
    .unwrap();
    let s = c.state.unwrap();
    assert!(s.redis.tls() && s.ca.is_some());
    assert_eq!(
        s.redis.to_string(),
        "redis cluster rediss://a:7000, rediss://b:7000"
    );
}

#[test]
fn state_names_exactly_one_redis() {
    for (state, want) in [
        (
            "[state]\nredis = \"redis://a:1\"\nredis-cluster = [\"redis://a:1\"]",
            "test.toml:5:17: state: give either redis (one server) or redis-cluster, not both",
        ),
        (
            "[state]\ncounter-block = 8",
            "test.toml:3:1: [state]: give redis = ",
        ),
        (
            "[state]\nredis-cluster = []",
            "test.toml:4:17: state.redis-cluster: give at least one node",
        ),
        (
            "[state]\nredis-cluster = [\"redis://a:1\", \"http://b:1\"]",
            "test.toml:4:33: state.redis-cluster: \"http://b:1\" is not a redis://HOST:PORT",
        ),
        (
            "[state]\nredis-cluster = [\"redis://a:1\", \"rediss://b:1\"]",
            "every node as redis:// or every node as rediss://",
        ),
        (
            "[state]\nredis-cluster = [\"redis://a:1/3\"]",
            "a cluster has database 0 only",
        ),
        ("[state]\nredis = \"memcached://a:1\"", "state.redis: "),
    ] {
        let err = parse(&with(state, "")).unwrap_err().to_string();
        assert!(err.contains(want), "{state}: {err}");
    }
}
