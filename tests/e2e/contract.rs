//! Contract 0.2 seen from a client: policies that learn from outcomes (the
//! Python template backs off a backend that answers 500; a policy weighs
//! backends by the capacity they report in a response header), a ranked
//! answer walked without asking the policy again, a reload that hands a
//! running policy its new backends with its state intact, a hostile
//! `observe` contained like a hostile `select`; and the components built
//! for 0.1 (the built-ins as they shipped, a template per language)
//! splitting exactly as before.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use crate::balancing::{assert_takes_turns, cookie_of, expect, three, weighted_config};
use crate::common::*;
use crate::fixtures::{self, Hostile};
use crate::languages::{assert_canary_split, build, canary_config, copy_of, template};

/// Runs `componentize-py` on `dir/app.py` for `world` of the WIT in
/// `wit`; returns the component.
fn componentize_py(dir: &Path, wit: &Path, world: &str) -> PathBuf {
    require_python("componentize_py");
    let out = tool("componentize-py")
        .current_dir(dir)
        .arg("-d")
        .arg(wit)
        .args(["-w", world, "componentize", "app", "-o", "policy.wasm"])
        .output()
        .expect("componentize-py");
    assert!(
        out.status.success(),
        "componentize-py failed in {}:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("policy.wasm")
}

/// `tests/fixtures/v0.2/learner`, built once for every test here.
static LEARNER: LazyLock<(TempDir, PathBuf)> = LazyLock::new(|| {
    let dir = TempDir::new("learner");
    std::fs::copy(
        repo().join("tests/fixtures/v0.2/learner/app.py"),
        dir.path().join("app.py"),
    )
    .unwrap();
    let wasm = componentize_py(dir.path(), &repo().join("wit"), "adaptive-policy");
    (dir, wasm)
});

/// `backends` behind `policy` (an interpreted one: generous limits), with
/// `policy-config` lines and upstream settings `extra`.
fn config(policy: &Path, backends: &[&Backend], policy_config: &str, extra: &str) -> String {
    let list: Vec<String> = backends.iter().map(|b| b.entry()).collect();
    format!(
        r#"[admin]
listen = "127.0.0.1:{{admin}}"

[server]
listen = "127.0.0.1:{{port}}"

[upstreams.app]
policy = "{}"
policy-memory = "128MiB"
policy-timeout = "100ms"
backends = [{}]
{extra}

[upstreams.app.policy-config]
{policy_config}
"#,
        policy.display(),
        list.join(", ")
    )
}

fn bodies(proxy: &Proxy, n: usize) -> BTreeMap<String, usize> {
    let agent = client();
    let all: Vec<String> = (0..n).map(|_| get(&agent, &proxy.url("/")).body).collect();
    tally(all.iter().map(String::as_str))
}

#[test]
fn the_python_template_stops_sending_to_a_backend_that_answers_500() {
    let dir = copy_of("python");
    let wasm = build(dir.path());
    let (s1, c1, s2) = (
        Backend::start("stable-1"),
        Backend::start("canary-1"),
        Backend::start("stable-2"),
    );
    s1.set_status(500);
    let proxy = Proxy::start(&format!(
        "{}\n[upstreams.app.policy-config]\nbackoff = 600\n",
        canary_config(&wasm, &[&s1, &c1, &s2], "")
    ));
    let agent = client();
    let mut to_sick = 0;
    for _ in 0..100 {
        let r = get(&agent, &proxy.url("/"));
        if r.body == "stable-1" {
            assert_eq!(r.status, 500);
            to_sick += 1;
        } else {
            assert_eq!((r.status, r.body.as_str()), (200, "stable-2"));
        }
    }
    // Round-robin would send it 50. The policy tries it, sees the 500 and
    // backs off: at most 5% after its first failure.
    assert!(
        (1..=6).contains(&to_sick),
        "{to_sick} of 100 requests went to the failing backend\n{}",
        proxy.log()
    );
    assert_eq!(
        proxy.metric("switchyard_policy_decisions_total{upstream=\"app\"}"),
        100.0,
        "{}",
        proxy.metrics()
    );
}

#[test]
fn a_policy_weighs_backends_by_the_capacity_they_report() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    a.set_header("x-capacity", "1");
    b.set_header("x-capacity", "3");
    let proxy = Proxy::start(&config(&LEARNER.1, &[&a, &b], "watch = \"x-capacity\"", ""));
    // Until each backend has answered once, both count 1.
    bodies(&proxy, 8);
    let split = bodies(&proxy, 80);
    assert_eq!(split, expect(&[("a", 20), ("b", 60)]), "{}", proxy.log());
    // `a` now says it can take as much as `b`: the split follows.
    a.set_header("x-capacity", "3");
    bodies(&proxy, 8);
    let split = bodies(&proxy, 60);
    assert_eq!(split, expect(&[("a", 30), ("b", 30)]), "{}", proxy.log());
}

/// An address nothing listens on: connections to it are refused.
fn refusing_address() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

#[test]
fn a_ranked_answer_is_walked_without_asking_the_policy_again() {
    let b = Backend::start("b");
    let dead = refusing_address();
    let text = config(&LEARNER.1, &[&b], "rank = \"true\"", "max-fails = 0").replace(
        "backends = [",
        &format!("backends = [{{ name = \"dead\", address = \"{dead}\" }}, "),
    );
    let proxy = Proxy::start(&text);
    let agent = client();
    for _ in 0..10 {
        let r = get(&agent, &proxy.url("/"));
        assert_eq!((r.status, r.body.as_str()), (200, "b"), "{}", proxy.log());
    }
    // Every request: the first choice refused the connection, the second
    // ranked one served it, and the policy decided once.
    assert_eq!(
        proxy.metric("switchyard_ranked_attempts_total{upstream=\"app\"}"),
        10.0,
        "{}",
        proxy.metrics()
    );
    assert_eq!(
        proxy.metric("switchyard_policy_decisions_total{upstream=\"app\"}"),
        10.0,
        "{}",
        proxy.metrics()
    );
    let metrics = proxy.metrics();
    let failures: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("switchyard_policy_failures_total{upstream=\"app\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(failures, 0.0, "{metrics}");
}

/// A Rust policy made by `switchyard policy new`, as a user would.
fn rust_policy(dir: &TempDir) -> PathBuf {
    let project = dir.path().join("backoff");
    let out = sy()
        .args(["policy", "new", "--lang", "rust"])
        .arg(&project)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tool("bash")
        .arg(project.join("build.sh"))
        .env("SWITCHYARD", BIN)
        // Share compiled dependencies with the template's build.
        .env("CARGO_TARGET_DIR", template("rust").join("target"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    project.join("policy.wasm")
}

#[test]
fn a_reload_that_adds_a_backend_keeps_what_the_running_policy_learned() {
    let dir = TempDir::new("membership");
    let wasm = rust_policy(&dir);
    let (s1, c1, s2, s3) = (
        Backend::start("stable-1"),
        Backend::start("canary-1"),
        Backend::start("stable-2"),
        Backend::start("stable-3"),
    );
    s1.set_status(500);
    let write = |backends: &[&Backend]| {
        format!(
            "{}\n[upstreams.app.policy-config]\nbackoff = 600\n",
            canary_config(&wasm, backends, "watch = false")
        )
    };
    let proxy = Proxy::start(&write(&[&s1, &c1, &s2]));
    // The policy learns that stable-1 fails.
    let before = bodies(&proxy, 20);
    assert_eq!(before.get("stable-1"), Some(&1), "{before:?}");

    proxy.reload(&write(&[&s1, &c1, &s2, &s3]));
    let log = proxy.log();
    assert!(
        log.contains("keeps its instances: 4 backends handed to its membership call"),
        "{log}"
    );
    // The instances were updated, not configured anew: they still avoid
    // stable-1, and take the new backend into the rotation.
    let after = bodies(&proxy, 30);
    assert_eq!(
        after,
        expect(&[("stable-2", 15), ("stable-3", 15)]),
        "{}",
        proxy.log()
    );
    assert!(
        proxy
            .log()
            .contains("now 4 backends; back-offs kept by name"),
        "{}",
        proxy.log()
    );

    // A changed policy-config is a new configuration: fresh instances,
    // which have to learn again (stable-1 gets tried once more).
    proxy.reload(&write(&[&s1, &c1, &s2, &s3]).replace("backoff = 600", "backoff = 601"));
    assert_eq!(
        proxy.log().matches("keeps its instances").count(),
        1,
        "{}",
        proxy.log()
    );
    let again = bodies(&proxy, 30);
    assert_eq!(
        again.get("stable-1"),
        Some(&1),
        "{again:?}\n{}",
        proxy.log()
    );
}

#[test]
fn a_hostile_observe_is_contained_like_a_hostile_select() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    for h in [Hostile::Trap, Hostile::Loop, Hostile::Hog] {
        let wasm = fixtures::hostile_observer(h);
        let proxy = Proxy::start_with(
            &format!(
                "[admin]\nlisten = \"127.0.0.1:{{admin}}\"\n\n{}",
                one_upstream(
                    "observer.wasm",
                    &[&a, &b],
                    "policy-timeout = \"50ms\"\npolicy-max-failures = 1000"
                )
            ),
            |d| {
                d.write("observer.wasm", &wasm);
            },
        );
        let agent = client();
        let mut took = Vec::new();
        for _ in 0..10 {
            let started = Instant::now();
            let r = get(&agent, &proxy.url("/"));
            took.push(started.elapsed());
            assert_eq!(r.status, 200, "{h:?}: {}", proxy.log());
        }
        took.sort();
        // However loaded the machine, no request waited past the deadline
        // by much (a loop is stopped at 50 ms).
        assert!(
            took[took.len() - 1] < Duration::from_millis(1000),
            "{h:?}: worst case {took:?}"
        );
        // The first request has no outcome to observe yet; every later
        // one's observe misbehaved (or, while a new instance was being
        // made, found none ready), was counted, and the fallback served.
        let counted: f64 = ["trap", "timeout", "memory", "warming"]
            .iter()
            .map(|k| {
                proxy.metric(&format!(
                    "switchyard_policy_failures_total{{upstream=\"app\",kind=\"{k}\"}}"
                ))
            })
            .sum();
        assert!(counted >= 9.0, "{h:?}: {counted}\n{}", proxy.metrics());
        let kind = proxy.metric(&format!(
            "switchyard_policy_failures_total{{upstream=\"app\",kind=\"{}\"}}",
            h.kind()
        ));
        assert!(kind >= 1.0, "{h:?}\n{}", proxy.metrics());
    }
}

fn v01(name: &str) -> PathBuf {
    repo().join("tests/fixtures/v0.1").join(name)
}

#[test]
fn the_builtins_as_shipped_for_0_1_split_as_before() {
    let rr = v01("round-robin.wasm");
    assert_takes_turns(rr.to_str().unwrap());

    let (a, b, c) = three();
    let weighted = v01("weighted.wasm");
    let proxy = Proxy::start(&weighted_config(&a, &b, &c, weighted.to_str().unwrap()));
    let agent = client();
    let all: Vec<String> = (0..70).map(|_| get(&agent, &proxy.url("/")).body).collect();
    assert_eq!(all[..7].concat(), "aabacaa");
    assert_eq!(
        tally(all.iter().map(String::as_str)),
        expect(&[("a", 50), ("b", 10), ("c", 10)])
    );

    let sticky = v01("sticky-session.wasm");
    let proxy = Proxy::start(&one_upstream(sticky.to_str().unwrap(), &[&a, &b, &c], ""));
    let first = get(&agent, &proxy.url("/"));
    let cookie = cookie_of(first.header("set-cookie").expect("a cookie")).to_string();
    for _ in 0..10 {
        let r = get_with(&agent, &proxy.url("/"), &[("cookie", &cookie)]);
        assert_eq!(r.body, first.body);
    }

    // `check` says which contract each targets.
    for (path, policy) in [(&rr, "round-robin"), (&weighted, "weighted")] {
        let dir = TempDir::new("check-v01");
        let file = dir.write(
            "switchyard.toml",
            one_upstream(path.to_str().unwrap(), &[&a], "").replace("{port}", "0"),
        );
        let out = check_config(&file);
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.contains("(contract 0.1)"), "{policy}: {said}");
    }
}

#[test]
fn templates_built_for_0_1_split_canary_traffic_as_before() {
    let (s1, c1, s2) = (
        Backend::start("stable-1"),
        Backend::start("canary-1"),
        Backend::start("stable-2"),
    );
    let split = |wasm: &Path| {
        let proxy = Proxy::start(&canary_config(wasm, &[&s1, &c1, &s2], ""));
        assert_canary_split(&proxy);
        assert_eq!(proxy.status()["upstreams"][0]["policy"]["contract"], "0.1");
    };
    for lang in ["rust", "c", "wat"] {
        split(&v01(&format!("canary-{lang}.wasm")));
    }
    // Python and JavaScript from their 0.1 sources, against wit/0.1.
    let dir = TempDir::new("python-v01");
    std::fs::copy(v01("python/app.py"), dir.path().join("app.py")).unwrap();
    split(&componentize_py(
        dir.path(),
        &repo().join("wit/0.1"),
        "policy",
    ));

    let js = template("js");
    assert!(
        js.join("node_modules/@bytecodealliance/componentize-js")
            .is_dir(),
        "no node_modules in plugins/examples/js: run ./test.sh, which runs npm ci there"
    );
    let dir = TempDir::new("js-v01");
    std::fs::copy(v01("js/policy.js"), dir.path().join("policy.js")).unwrap();
    std::fs::copy(js.join("build.mjs"), dir.path().join("build.mjs")).unwrap();
    std::os::unix::fs::symlink(js.join("node_modules"), dir.path().join("node_modules")).unwrap();
    std::os::unix::fs::symlink(repo().join("wit/0.1"), dir.path().join("wit")).unwrap();
    let out = tool("node")
        .current_dir(dir.path())
        .arg("build.mjs")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    split(&dir.path().join("policy.wasm"));
}
