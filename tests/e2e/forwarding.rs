//! What crosses the proxy: forwarded headers set (and not spoofable),
//! hop-by-hop headers removed, bodies streamed intact both ways, backend
//! connections kept alive.

use crate::common::*;

#[test]
fn backends_see_forwarded_headers_and_no_hop_by_hop_ones() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&one_upstream("round-robin", &[&a], ""));
    let agent = client();
    let r = get_with(
        &agent,
        &proxy.url("/path?q=1"),
        &[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-host", "evil.example"),
            ("connection", "x-hop"),
            ("x-hop", "secret"),
            ("x-app", "kept"),
        ],
    );
    assert_eq!(r.status, 200);
    let seen = a.seen();
    let h = &seen.last().unwrap().headers;
    assert_eq!(
        h.get("x-forwarded-for").map(String::as_str),
        Some("127.0.0.1"),
        "{h:?}"
    );
    assert_eq!(h.get("x-forwarded-proto").map(String::as_str), Some("http"));
    assert_eq!(
        h.get("x-forwarded-host").map(String::as_str),
        Some(format!("127.0.0.1:{}", proxy.port).as_str())
    );
    assert_eq!(
        h.get("host").map(String::as_str),
        Some(format!("127.0.0.1:{}", proxy.port).as_str()),
        "the client's Host is kept"
    );
    assert_eq!(h.get("x-app").map(String::as_str), Some("kept"));
    assert!(
        !h.contains_key("x-hop"),
        "a header named in Connection was forwarded: {h:?}"
    );
    assert_eq!(seen.last().unwrap().path, "/path");
}

#[test]
fn a_trusted_proxy_has_its_forwarded_for_chain_kept() {
    let a = Backend::start("a");
    let config = one_upstream("round-robin", &[&a], "").replace(
        "listen = \"127.0.0.1:{port}\"",
        "listen = \"127.0.0.1:{port}\"\ntrusted-proxies = [\"127.0.0.0/8\"]",
    );
    let proxy = Proxy::start(&config);
    get_with(
        &client(),
        &proxy.url("/"),
        &[("x-forwarded-for", "203.0.113.9")],
    );
    let seen = a.seen();
    assert_eq!(
        seen.last()
            .unwrap()
            .headers
            .get("x-forwarded-for")
            .map(String::as_str),
        Some("203.0.113.9, 127.0.0.1")
    );
}

#[test]
fn large_bodies_stream_through_intact_both_ways() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&one_upstream("round-robin", &[&a], ""));
    let body: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let r = post(&client(), &proxy.url("/echo"), &body);
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), body.len());
    assert!(r.body.as_bytes() == body.as_slice(), "echoed body differs");
}

#[test]
fn backend_connections_are_kept_alive() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&one_upstream("round-robin", &[&a], ""));
    let agent = client();
    for _ in 0..50 {
        assert_eq!(get(&agent, &proxy.url("/")).status, 200);
    }
    assert!(
        a.connections() <= 2,
        "50 sequential requests opened {} backend connections",
        a.connections()
    );
}
