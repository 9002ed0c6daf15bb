//! The built-in policies seen from a client: exact round-robin, nginx's
//! weighted sequence, sticky cookies; and a policy loaded from a file.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::common::*;

pub fn three() -> (Backend, Backend, Backend) {
    (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    )
}

pub fn expect(pairs: &[(&str, usize)]) -> std::collections::BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Thirty requests in a row on one connection through `policy` over a, b, c:
/// each backend answers ten, in turn from the first.
pub fn assert_takes_turns(policy: &str) {
    let (a, b, c) = three();
    let proxy = Proxy::start(&one_upstream(policy, &[&a, &b, &c], ""));
    let agent = client();
    let bodies: Vec<String> = (0..30).map(|_| get(&agent, &proxy.url("/")).body).collect();
    assert_eq!(
        tally(bodies.iter().map(String::as_str)),
        expect(&[("a", 10), ("b", 10), ("c", 10)])
    );
    assert_eq!(&bodies[..3], ["a", "b", "c"]);
}

#[test]
fn round_robin_splits_sequential_requests_exactly() {
    assert_takes_turns("round-robin");
}

#[test]
fn the_native_round_robin_used_by_the_benchmark_splits_the_same_way() {
    assert_takes_turns("native:round-robin");
}

#[test]
fn round_robin_stays_exact_under_concurrency() {
    let (a, b, c) = three();
    let proxy = Proxy::start(&one_upstream("round-robin", &[&a, &b, &c], ""));
    let remaining = Arc::new(AtomicUsize::new(300));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (remaining, bodies, url) = (remaining.clone(), bodies.clone(), proxy.url("/"));
            std::thread::spawn(move || {
                // One keep-alive connection per client.
                let agent = client();
                while remaining
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    let r = get(&agent, &url);
                    assert_eq!(r.status, 200);
                    bodies.lock().unwrap().push(r.body);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let bodies = bodies.lock().unwrap();
    assert_eq!(bodies.len(), 300);
    assert_eq!(
        tally(bodies.iter().map(String::as_str)),
        expect(&[("a", 100), ("b", 100), ("c", 100)])
    );
}

pub fn weighted_config(a: &Backend, b: &Backend, c: &Backend, policy: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:{{port}}"

[upstreams.app]
policy = "{policy}"
backends = [
  {{ name = "a", address = "{}", weight = 5 }},
  {{ name = "b", address = "{}" }},
  {{ name = "c", address = "{}" }},
]

[[routes]]
path-prefix = "/"
upstream = "app"
"#,
        a.addr, b.addr, c.addr
    )
}

#[test]
fn weighted_follows_nginx_smooth_sequence() {
    let (a, b, c) = three();
    let proxy = Proxy::start(&weighted_config(&a, &b, &c, "weighted"));
    let agent = client();
    let bodies: Vec<String> = (0..70).map(|_| get(&agent, &proxy.url("/")).body).collect();
    assert_eq!(bodies[..7].concat(), "aabacaa");
    assert_eq!(
        tally(bodies.iter().map(String::as_str)),
        expect(&[("a", 50), ("b", 10), ("c", 10)])
    );
}

pub fn cookie_of(set_cookie: &str) -> &str {
    set_cookie.split(';').next().unwrap()
}

#[test]
fn sticky_sessions_keep_a_client_on_its_backend_until_it_goes_down() {
    let (a, b, c) = three();
    let mut backends = [a, b, c];
    let config = format!(
        "{}\n[upstreams.app.policy-config]\ncookie = \"sy-backend\"\n",
        one_upstream(
            "sticky-session",
            &[&backends[0], &backends[1], &backends[2]],
            ""
        )
    );
    let proxy = Proxy::start(&config);
    let agent = client();

    let first = get(&agent, &proxy.url("/"));
    assert_eq!(first.status, 200);
    let set_cookie = first
        .header("set-cookie")
        .expect("first response sets the cookie");
    assert!(set_cookie.starts_with("sy-backend="), "{set_cookie}");
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("Path=/"),
        "{set_cookie}"
    );
    let cookie = cookie_of(set_cookie).to_string();
    let home = first.body.clone();

    for _ in 0..20 {
        let r = get_with(&agent, &proxy.url("/"), &[("cookie", &cookie)]);
        assert_eq!(r.body, home, "a request with the cookie left its backend");
        assert_eq!(
            r.header("set-cookie"),
            None,
            "a valid cookie is not re-issued"
        );
    }

    // The session's backend goes down: the next request is re-balanced and
    // gets a cookie naming its new backend.
    let i = backends.iter().position(|b| b.name == home).unwrap();
    backends[i].stop();
    let moved = get_with(&agent, &proxy.url("/"), &[("cookie", &cookie)]);
    assert_eq!(moved.status, 200);
    assert_ne!(moved.body, home);
    let new_cookie = cookie_of(moved.header("set-cookie").expect("cookie re-issued")).to_string();
    assert_ne!(new_cookie, cookie);
    let again = get_with(&agent, &proxy.url("/"), &[("cookie", &new_cookie)]);
    assert_eq!(again.body, moved.body, "the new cookie sticks");
}

#[test]
fn two_proxies_with_the_same_config_agree_on_cookies() {
    let (a, b, c) = three();
    let config = one_upstream("sticky-session", &[&a, &b, &c], "");
    let (p1, p2) = (Proxy::start(&config), Proxy::start(&config));
    let agent = client();
    for _ in 0..3 {
        let r = get(&agent, &p1.url("/"));
        let cookie = cookie_of(r.header("set-cookie").unwrap()).to_string();
        let other = get_with(&agent, &p2.url("/"), &[("cookie", &cookie)]);
        assert_eq!(
            other.body, r.body,
            "proxy 2 routed proxy 1's cookie elsewhere"
        );
    }
}

#[test]
fn a_policy_file_behaves_like_the_builtin() {
    let dir = TempDir::new("export");
    let out = sy()
        .args(["policies", "--export"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in ["round-robin", "weighted", "sticky-session"] {
        assert!(
            dir.path().join(format!("{name}.wasm")).is_file(),
            "{name}.wasm not exported"
        );
    }

    let (a, b, c) = three();
    let path = dir.path().join("weighted.wasm");
    let proxy = Proxy::start(&weighted_config(&a, &b, &c, path.to_str().unwrap()));
    assert!(proxy.log().contains("weighted.wasm"), "{}", proxy.log());
    let agent = client();
    let bodies: Vec<String> = (0..70).map(|_| get(&agent, &proxy.url("/")).body).collect();
    assert_eq!(bodies[..7].concat(), "aabacaa");
    assert_eq!(
        tally(bodies.iter().map(String::as_str)),
        expect(&[("a", 50), ("b", 10), ("c", 10)])
    );

    // Relative paths are resolved against the config file's directory.
    let proxy = Proxy::start_with(&one_upstream("plugins/rr.wasm", &[&a, &b, &c], ""), |d| {
        std::fs::create_dir_all(d.path().join("plugins")).unwrap();
        std::fs::copy(
            dir.path().join("round-robin.wasm"),
            d.path().join("plugins/rr.wasm"),
        )
        .unwrap();
    });
    let bodies: Vec<String> = (0..30).map(|_| get(&agent, &proxy.url("/")).body).collect();
    assert_eq!(
        tally(bodies.iter().map(String::as_str)),
        expect(&[("a", 10), ("b", 10), ("c", 10)])
    );
}

#[test]
fn policies_lists_the_builtins() {
    let out = sy().arg("policies").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for name in ["round-robin", "weighted", "sticky-session"] {
        assert!(text.lines().any(|l| l.starts_with(name)), "{text}");
    }
}
