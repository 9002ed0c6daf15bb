//! When backends fail: `502` fast when none can be reached and recovery when
//! one returns; failover past a dead backend; `504` on a slow one; `404`
//! for an unknown route.

use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn all_backends_down_gives_502_fast_and_recovers() {
    let (mut a, mut b) = (Backend::start("a"), Backend::start("b"));
    let proxy = Proxy::start(&one_upstream(
        "round-robin",
        &[&a, &b],
        "connect-timeout = \"5s\"",
    ));
    let agent = client();
    assert_eq!(get(&agent, &proxy.url("/")).status, 200);
    a.stop();
    b.stop();

    // A refused connect fails at once: nowhere near the connect timeout.
    for _ in 0..3 {
        let started = Instant::now();
        let r = get(&agent, &proxy.url("/"));
        assert_eq!(r.status, 502, "{r:?}");
        assert!(r.body.contains("no backend could be reached"), "{}", r.body);
        assert!(
            started.elapsed() < Duration::from_millis(2500),
            "502 took {:?} (connect-timeout 5s)",
            started.elapsed()
        );
    }

    b.restart();
    // Both backends are marked down (fail-timeout 10s), yet the proxy tries
    // them anyway rather than refuse: the very next request succeeds.
    let r = get(&agent, &proxy.url("/"));
    assert_eq!((r.status, r.body.as_str()), (200, "b"));
    for _ in 0..5 {
        assert_eq!(get(&agent, &proxy.url("/")).body, "b");
    }
}

#[test]
fn a_dead_backend_is_skipped_without_failing_requests() {
    let (a, mut b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let proxy = Proxy::start(&one_upstream("round-robin", &[&a, &b, &c], ""));
    b.stop();
    let agent = client();
    let bodies: Vec<String> = (0..20)
        .map(|_| {
            let r = get(&agent, &proxy.url("/"));
            assert_eq!(r.status, 200, "{r:?}");
            r.body
        })
        .collect();
    assert!(!bodies.contains(&"b".to_string()));
    let t = tally(bodies.iter().map(String::as_str));
    assert_eq!(t.len(), 2, "{t:?}");
    assert!(
        proxy.log().contains("backend marked down"),
        "{}",
        proxy.log()
    );
}

#[test]
fn a_slow_backend_gives_504_after_the_response_timeout() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&one_upstream(
        "round-robin",
        &[&a],
        "response-timeout = \"300ms\"",
    ));
    let agent = client();
    let started = Instant::now();
    let r = get(&agent, &proxy.url("/delay/5000"));
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{r:?}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
        "took {took:?}"
    );
    // The proxy still serves.
    assert_eq!(get(&agent, &proxy.url("/")).status, 200);
}

#[test]
fn an_unknown_route_gives_404() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let config = format!(
        r#"[server]
listen = "127.0.0.1:{{port}}"

[upstreams.api]
policy = "round-robin"
backends = [{}]

[upstreams.shop]
policy = "round-robin"
backends = [{}]

[[routes]]
path-prefix = "/api"
upstream = "api"

[[routes]]
host = "shop.example"
upstream = "shop"
"#,
        a.entry(),
        b.entry()
    );
    let proxy = Proxy::start(&config);
    let agent = client();
    assert_eq!(get(&agent, &proxy.url("/api/users")).body, "a");
    assert_eq!(
        get_with(&agent, &proxy.url("/"), &[("host", "shop.example")]).body,
        "b"
    );
    assert_eq!(
        get_with(&agent, &proxy.url("/api"), &[("host", "shop.example")]).body,
        "b"
    );
    let r = get(&agent, &proxy.url("/apix"));
    assert_eq!(r.status, 404, "{r:?}");
}
