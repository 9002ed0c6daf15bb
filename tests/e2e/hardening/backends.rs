//! Backends and retries (items 13-14): a malformed answer is not a dead
//! backend, and clients cannot make the proxy hammer its backends.

use std::io::Write;
use std::time::Duration;

use super::support::*;
use crate::common::*;

// ----------------------------------------------------------------- item 13

/// A backend whose `/many` answer has 150 header fields and whose `/huge`
/// answer has one 1 MiB field (over any head limit: the proxy's own
/// max-header-size and hyper's buffer); anything else is a plain 200.
fn oversized(name: &'static str) -> RawBackend {
    RawBackend::start(name, move |req, s, _| {
        let mut head = String::from("HTTP/1.1 200 OK\r\n");
        if req.target() == "/many" {
            for i in 0..150 {
                head.push_str(&format!("X-Field-{i}: v\r\n"));
            }
        } else if req.target() == "/huge" {
            head.push_str(&format!("X-Huge: {}\r\n", "h".repeat(1024 * 1024)));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n{name}", name.len()));
        let _ = s.write_all(head.as_bytes());
        Next::KeepAlive
    })
}

#[test]
fn item13_oversized_backend_response_head_is_one_502_not_retried_not_a_failure() {
    let (a, b) = (oversized("a"), oversized("b"));
    let proxy = Proxy::start(&config(
        &[a.entry(), b.entry()],
        "",
        "max-fails = 1\nfail-timeout = \"60s\"",
    ));
    let agent = client();
    for (i, path) in ["/many", "/huge"].iter().enumerate() {
        let r = get(&agent, &proxy.url(path));
        assert_eq!(r.status, 502, "{path}: {r:?}");
        let received = a.requests().len() + b.requests().len();
        assert_eq!(
            received,
            i + 1,
            "{path} was retried: a got {:?}, b got {:?}",
            a.requests()
                .iter()
                .map(|r| r.target().to_string())
                .collect::<Vec<_>>(),
            b.requests()
                .iter()
                .map(|r| r.target().to_string())
                .collect::<Vec<_>>()
        );
        for name in ["a", "b"] {
            assert!(
                healthy(&proxy, name),
                "after {path}, backend {name} is marked down: {}",
                backend_status(&proxy, name)
            );
        }
    }
    // Both still serve.
    let bodies: Vec<String> = (0..2).map(|_| get(&agent, &proxy.url("/")).body).collect();
    assert_eq!(
        tally(bodies.iter().map(String::as_str)).len(),
        2,
        "{bodies:?}"
    );
}

// ----------------------------------------------------------------- item 14

#[test]
fn item14_rapid_reset_streams_do_not_reach_the_backend() {
    require_python("h2");
    let a = Backend::start("a");
    let proxy = Proxy::start(&config(&[a.entry()], "", "max-connections-per-backend = 4"));
    let port = proxy.port.to_string();
    // 1000 pairs with each HEADERS and its RST_STREAM in one write: none
    // may start.
    let same = py(&["h2-rapid-reset", &port, "1000", "50", "40", "same"]);
    assert!(same["pairs"].as_u64().unwrap() >= 1000, "{same}");
    assert!(wait_for(Duration::from_secs(10), || in_flight(&proxy, "a") == 0.0));
    let after_same = a.seen().len();
    assert!(
        after_same <= 10,
        "{after_same} of 1000 requests reset in the same write reached the backend: {same}"
    );
    // 1000 pairs with a batch's RST_STREAMs a few milliseconds behind its
    // HEADERS: what was started before its reset arrived may reach the
    // backend (as with any proxy), but a connection that keeps resetting
    // is slowed and then told to go away, and the backend never has more
    // than max-connections-per-backend connections open.
    let split = py(&["h2-rapid-reset", &port, "1000", "50", "40", "split"]);
    assert!(split["pairs"].as_u64().unwrap() >= 1000, "{split}");
    // A normal request after the flood is served.
    assert_eq!(get(&client(), &proxy.url("/after")).status, 200);
    assert!(wait_for(Duration::from_secs(10), || in_flight(&proxy, "a") == 0.0));
    let reached = a.seen().len() - after_same - 1;
    println!(
        "rapid reset: {reached} of 1000 split pairs reached the backend over {} connections (at most {} open at once): {split}",
        a.connections(),
        a.most_open()
    );
    assert!(
        reached <= 200,
        "{reached} of 1000 reset requests reached the backend: {split}"
    );
    // The backend notices a connection the proxy dropped (a cancelled
    // request's) only when it next reads: allow for that lag.
    assert!(
        a.most_open() <= 12,
        "{} backend connections were open at once (max-connections-per-backend = 4)",
        a.most_open()
    );
}

#[test]
fn item14_max_connections_per_backend_caps_backend_connections() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&config(
        &[a.entry()],
        "",
        "max-connections-per-backend = 2\nconnect-timeout = \"20s\"",
    ));
    let url = proxy.url("/delay/500");
    let clients: Vec<_> = (0..10)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || get(&client(), &url).status)
        })
        .collect();
    let statuses: Vec<u16> = clients.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(statuses, [200; 10], "{}", proxy.log());
    assert!(
        a.connections() <= 2,
        "10 concurrent requests opened {} connections to the backend (max-connections-per-backend = 2)",
        a.connections()
    );
}
