//! Policy state shared through a Redis Cluster (`[state] redis-cluster`):
//! three `redis-server --cluster-enabled yes` on loopback, joined with
//! `redis-cli --cluster create`, and two proxies with two upstream groups
//! whose keys hash to different nodes. What holds for one Redis holds
//! here: key-value writes cross between the proxies within a second, and
//! a shared counter is handed out once and evenly across both; and the
//! same over TLS (`rediss://` nodes, `ca`).

use std::time::Duration;

use crate::common::*;
use crate::shared_state::{Redis, crossing_times, free_port, sessions_policy, three, turn};
use crate::shared_state_tls::{Pki, tls_args};

/// A port whose cluster bus port (+10000) is free too.
fn cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// Three primaries on 127.0.0.1 sharing the 16384 slots, each in a temp
/// dir of its own, killed on drop.
struct Cluster {
    nodes: Vec<Redis>,
    _dirs: Vec<TempDir>,
}

impl Cluster {
    /// With `tls`, the nodes serve TLS only (clients and the cluster bus)
    /// with its certificate.
    fn start(tls: Option<&Pki>) -> Cluster {
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        let mut cli_args = Vec::new();
        for _ in 0..3 {
            let dir = TempDir::new("redis-cluster");
            let port = cluster_port();
            let mut args: Vec<String> = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &format!("nodes-{port}.conf"),
                "--cluster-node-timeout",
                "2000",
                "--dir",
                &dir.path().display().to_string(),
            ]
            .iter()
            .map(|a| a.to_string())
            .collect();
            if let Some(pki) = tls {
                let (server, cli) = tls_args(pki, &dir);
                args.extend(server);
                args.extend(["--tls-cluster".into(), "yes".into()]);
                cli_args = cli;
            }
            nodes.push(Redis::start_with(
                port,
                tls.is_some(),
                args,
                cli_args.clone(),
            ));
            dirs.push(dir);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = std::process::Command::new("redis-cli")
            .args(&cli_args)
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli: run ./test.sh, which installs it");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        let cluster = Cluster { nodes, _dirs: dirs };
        assert!(
            wait_for(Duration::from_secs(20), || cluster.nodes.iter().all(|n| n
                .cli(&["CLUSTER", "INFO"])
                .contains("cluster_state:ok"))),
            "the cluster did not come up: {}",
            cluster.nodes[0].cli(&["CLUSTER", "INFO"])
        );
        cluster
    }

    /// `redis-cluster = [...]` with every node.
    fn state(&self, block: u64) -> String {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("\"{}\"", n.url()))
            .collect();
        format!(
            "redis-cluster = [{}]\ncounter-block = {block}",
            urls.join(", ")
        )
    }

    /// Keys each node holds.
    fn keys_per_node(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|n| n.cli(&["DBSIZE"]).parse().unwrap_or(0))
            .collect()
    }
}

/// Upstreams `app` (under `/app/`) and `shop` (under `/shop/`), both on
/// the sessions policy over `backends`, their state in the cluster.
fn config(cluster: &Cluster, backends: &[&Backend], block: u64) -> String {
    let list: Vec<String> = backends.iter().map(|b| b.entry()).collect();
    let policy = sessions_policy();
    let upstream = |name: &str| {
        format!(
            "[upstreams.{name}]\npolicy = \"{}\"\nshared-state = \"redis\"\npolicy-timeout = \"100ms\"\nbackends = [{}]\n\n[[routes]]\npath-prefix = \"/{name}/\"\nupstream = \"{name}\"\n",
            policy.display(),
            list.join(", ")
        )
    };
    format!(
        "[admin]\nlisten = \"127.0.0.1:{{admin}}\"\n\n[server]\nlisten = \"127.0.0.1:{{port}}\"\n\n[state]\n{}\n\n{}\n{}",
        cluster.state(block),
        upstream("app"),
        upstream("shop")
    )
}

#[test]
fn two_proxies_share_key_value_writes_and_counters_through_a_redis_cluster() {
    let cluster = Cluster::start(None);
    let (a, b, c) = three();
    let block = 8;
    let cfg = config(&cluster, &[&a, &b, &c], block);
    let (one, two) = (Proxy::start(&cfg), Proxy::start(&cfg));
    let up = |p: &Proxy| p.metric("switchyard_state_redis_up");
    assert!(
        wait_for(Duration::from_secs(5), || up(&one) == 1.0
            && up(&two) == 1.0),
        "the cluster never answered:\n{}",
        one.log()
    );

    // Key-value writes cross, in both groups, both ways.
    let agent = client();
    let times = crossing_times(&agent, &one, &two, |i| {
        if i % 4 < 2 { "/app/" } else { "/shop/" }
    });

    // The shared counter of each group: once each, even across the proxies.
    let mut splits = Vec::new();
    for path in ["/app/", "/shop/"] {
        let replies: Vec<Reply> = (0..120)
            .map(|i| get(&agent, &if i % 2 == 0 { &one } else { &two }.url(path)))
            .collect();
        let mut turns: Vec<u64> = replies.iter().map(turn).collect();
        turns.sort_unstable();
        let n = turns.len();
        turns.dedup();
        let split = tally(replies.iter().map(|r| r.body.as_str()));
        assert_eq!(
            n,
            turns.len(),
            "{path}: a value handed out twice: {split:?}"
        );
        for (backend, n) in &split {
            assert!(
                n.abs_diff(40) <= 2 * block as usize,
                "{path} {backend}: {n} of 120"
            );
        }
        splits.push(split);
    }

    // The two groups' keys are on different nodes.
    let keys = cluster.keys_per_node();
    let holding = keys.iter().filter(|&&n| n > 0).count();
    crate::figures!(
        "shared-state on a 3-node Redis Cluster: a key-value write seen by the other proxy after {:.0}–{:.0} ms (median {:.0} ms, 10 writes over 2 groups); \
         120 requests alternating between two proxies, counter-block {block}: app {:?}, shop {:?}; keys per node {keys:?}",
        ms(times[0]),
        ms(times[9]),
        ms(times[5]),
        splits[0],
        splits[1]
    );
    assert!(holding >= 2, "all keys on one node: {keys:?}");
    for p in [&one, &two] {
        assert_eq!(
            p.metric("switchyard_state_redis_errors_total"),
            0.0,
            "{}",
            p.log()
        );
    }
}

#[test]
fn a_redis_cluster_over_tls_shares_key_value_writes() {
    let pki = Pki::new("cluster");
    let cluster = Cluster::start(Some(&pki));
    let (a, b, c) = three();
    let cfg = config(&cluster, &[&a, &b, &c], 64).replace(
        "\ncounter-block = 64",
        "\nca = \"ca.pem\"\ncounter-block = 64",
    );
    assert!(cfg.contains("rediss://") && cfg.contains("ca = "), "{cfg}");
    let with_ca = |d: &TempDir| {
        d.write("ca.pem", &pki.ca);
    };
    let (one, two) = (
        Proxy::start_with(&cfg, with_ca),
        Proxy::start_with(&cfg, with_ca),
    );
    let agent = client();
    let times = crossing_times(&agent, &one, &two, |i| {
        if i % 2 == 0 { "/app/" } else { "/shop/" }
    });
    let keys = cluster.keys_per_node();
    crate::figures!(
        "shared-state on a 3-node Redis Cluster over TLS: a key-value write seen by the other proxy after {:.0}–{:.0} ms (10 writes over 2 groups); keys per node {keys:?}",
        ms(times[0]),
        ms(times[9])
    );
    assert!(keys.iter().filter(|&&n| n > 0).count() >= 2, "{keys:?}");
    for p in [&one, &two] {
        assert_eq!(p.metric("switchyard_state_redis_up"), 1.0, "{}", p.log());
    }
}
