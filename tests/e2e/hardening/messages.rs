//! Messages must arrive as sent (items 5-12): what a backend receives and
//! what a client gets back, byte for byte where it matters.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::Digest;

use super::support::*;
use crate::common::*;

fn sha256_hex(data: &[u8]) -> String {
    hex(&sha2::Sha256::digest(data))
}

// ------------------------------------------------------------------ item 5

#[test]
fn item05_http2_cookie_fields_reach_an_http1_backend_joined() {
    require_python("h2");
    let backend = RawBackend::ok("a", "ok");
    let proxy = Proxy::start(&config(&[backend.entry()], "", ""));
    let r = h2_send(
        proxy.port,
        &[h2_request(
            proxy.port,
            "GET",
            "/",
            &[
                ("cookie", "session=abc123"),
                ("cookie", "csrf=xyz"),
                ("cookie", "theme=dark"),
            ],
            &[],
        )],
    );
    assert_eq!(r["responses"][0]["status"], 200, "{r}");
    let seen = backend.requests();
    assert_eq!(
        seen[0].all("cookie"),
        ["session=abc123; csrf=xyz; theme=dark"],
        "the HTTP/1.1 backend got these Cookie fields (RFC 9113 §8.2.3: one, joined with \"; \"): {:?}",
        seen[0].headers
    );
}

#[test]
fn item05_sticky_session_honours_a_cookie_in_the_second_or_third_http2_cookie_field() {
    require_python("h2");
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let proxy = Proxy::start(
        &config(&[a.entry(), b.entry(), c.entry()], "", "")
            .replace("policy = \"round-robin\"", "policy = \"sticky-session\""),
    );
    // The cookie that pins a client to b, as the proxy issues it.
    let sticky = (0..6)
        .map(|_| get(&client(), &proxy.url("/")))
        .find(|r| r.body == "b")
        .and_then(|r| r.header("set-cookie").map(str::to_string))
        .expect("a cookie for b");
    let sticky = sticky.split(';').next().unwrap().to_string();
    let mut requests = Vec::new();
    for position in [1, 2] {
        for _ in 0..3 {
            let mut fields = vec![("cookie", "session=abc123"), ("cookie", "theme=dark")];
            fields.insert(position, ("cookie", sticky.as_str()));
            requests.push(h2_request(proxy.port, "GET", "/", &fields, &[]));
        }
    }
    let r = h2_send(proxy.port, &requests);
    let bodies: Vec<&str> = r["responses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["body"].as_str().unwrap())
        .collect();
    assert_eq!(
        bodies, ["b"; 6],
        "with {sticky} in the 2nd (first three) or 3rd (last three) cookie field: {r}"
    );
}

// ------------------------------------------------------------------ item 6

#[test]
fn item06_backend_response_with_content_length_and_chunked_arrives_whole() {
    let backend = RawBackend::start("a", |_, s, _| {
        let _ = s.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        );
        Next::KeepAlive
    });
    let proxy = Proxy::start(&config(&[backend.entry()], "", ""));
    let r = must_exchange(
        proxy.port,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status(), 200, "{r:?}");
    assert_eq!(
        r.body_text(),
        "hello",
        "chunked must win over Content-Length: {r:?}"
    );
    assert!(
        r.all("content-length").iter().all(|v| *v == "5"),
        "the backend's Content-Length was forwarded: {:?}",
        r.headers
    );
}

// ------------------------------------------------------------------ item 7

#[test]
fn item07_request_bodies_on_get_and_delete_reach_the_backend() {
    require_python("h2");
    let a = Backend::start("a");
    let proxy = Proxy::start(&config(&[a.entry()], "", ""));
    let want = sha256_hex(b"hello");
    for method in ["GET", "DELETE", "OPTIONS"] {
        let r = must_exchange(
            proxy.port,
            format!(
                "{method} /sha256 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            )
            .as_bytes(),
        );
        assert_eq!(
            (r.status(), r.body_text()),
            (200, want.clone()),
            "a chunked {method} body did not reach the backend (e3b0... is the digest of nothing)"
        );
    }
    // HTTP/2: DATA frames, no content-length.
    let r = h2_send(
        proxy.port,
        &[h2_request(
            proxy.port,
            "GET",
            "/sha256",
            &[],
            &["hel", "lo"],
        )],
    );
    assert_eq!(r["responses"][0]["status"], 200, "{r}");
    assert_eq!(
        r["responses"][0]["body"], want,
        "an HTTP/2 GET's DATA did not reach the backend"
    );
}

// ------------------------------------------------------------------ item 8

#[test]
fn item08_two_host_headers_get_400() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&config(&[a.entry()], "", ""));
    let r = must_exchange(
        proxy.port,
        b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status(), 400, "{r:?}");
    assert!(a.seen().is_empty(), "forwarded: {:?}", a.seen());
}

#[test]
fn item08_http11_request_without_host_gets_400() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&config(&[a.entry()], "", ""));
    let r = must_exchange(proxy.port, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status(), 400, "{r:?}");
    assert!(a.seen().is_empty(), "forwarded: {:?}", a.seen());
}

#[test]
fn item08_connection_host_does_not_strip_host_from_the_backend_request() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&config(&[a.entry()], "", ""));
    let r = must_exchange(
        proxy.port,
        b"GET / HTTP/1.1\r\nHost: app.example\r\nConnection: Host\r\n\r\n",
    );
    assert_eq!(r.status(), 200, "{r:?}");
    let seen = a.seen();
    assert_eq!(
        seen[0].headers.get("host").map(String::as_str),
        Some("app.example"),
        "the backend got no Host: {:?}",
        seen[0].headers
    );
}

#[test]
fn item08_http2_host_conflicting_with_authority_gets_400_and_authority_becomes_host() {
    require_python("h2");
    let a = Backend::start("a");
    let proxy = Proxy::start(&config(&[a.entry()], "", ""));
    let base = [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "a.example"),
        (":path", "/"),
    ];
    let mut conflicting = base.to_vec();
    conflicting.push(("host", "b.example"));
    let r = h2_send(proxy.port, &[h2_fields(&conflicting, &[])]);
    assert_eq!(
        r["responses"][0]["status"],
        400,
        ":authority a.example with host b.example: {r}\nthe backend saw {:?}",
        a.seen()
    );
    assert!(a.seen().is_empty(), "forwarded: {:?}", a.seen());

    let r = h2_send(proxy.port, &[h2_fields(&base, &[])]);
    assert_eq!(r["responses"][0]["status"], 200, "{r}");
    let seen = a.seen();
    assert_eq!(
        seen.last().unwrap().headers.get("host").map(String::as_str),
        Some("a.example")
    );
}

#[test]
fn item08_host_with_invalid_characters_gets_400() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&config(&[a.entry()], "", ""));
    for host in ["evil.example/../x", "evil.example?x", "user@evil.example"] {
        let r = must_exchange(
            proxy.port,
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert_eq!(
            r.status(),
            400,
            "Host {host:?}: {r:?}; the backend saw {:?}",
            a.seen().last().map(|s| &s.headers)
        );
    }
    assert!(a.seen().is_empty());
}

#[test]
fn item08_absolute_form_target_authority_wins_over_host_for_routing_and_forwarding() {
    let (t, o) = (Backend::start("t"), Backend::start("o"));
    let cfg = format!(
        r#"[server]
listen = "127.0.0.1:{{port}}"

[upstreams.target]
policy = "round-robin"
backends = [{}]

[upstreams.other]
policy = "round-robin"
backends = [{}]

[[routes]]
host = "target.example"
upstream = "target"

[[routes]]
upstream = "other"
"#,
        t.entry(),
        o.entry()
    );
    let proxy = Proxy::start(&cfg);
    let r = must_exchange(
        proxy.port,
        b"GET http://target.example/p HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        (r.status(), r.body_text().as_str()),
        (200, "t"),
        "routed by Host instead of the target's authority"
    );
    let seen = t.seen();
    assert_eq!(
        seen[0].headers.get("host").map(String::as_str),
        Some("target.example"),
        "{:?}",
        seen[0].headers
    );
}

#[test]
fn item08_invalid_authority_host_gets_400_and_h2_backend_stays_healthy() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&config(
        &[format!(
            "{{ name = \"a\", address = \"{}\", h2 = true }}",
            a.addr
        )],
        "",
        "max-fails = 1\nfail-timeout = \"60s\"",
    ));
    let r = must_exchange(
        proxy.port,
        b"GET / HTTP/1.1\r\nHost: bad host\r\nConnection: close\r\n\r\n",
    );
    let status = backend_status(&proxy, "a");
    assert_eq!(
        r.status(),
        400,
        "Host \"bad host\": {r:?}; backend a in /status: {status}"
    );
    assert_eq!(status["healthy"], true, "{status}");
    assert_eq!(get(&client(), &proxy.url("/")).status, 200);
}

// ------------------------------------------------------------------ item 9

/// An HTTP/2 backend that takes connections but no requests: its SETTINGS
/// allow zero concurrent streams, so the proxy's requests queue unsent on
/// the connection, until the test says `close`. `ready` is set once the
/// proxy has acknowledged a PING sent after those SETTINGS, i.e. has
/// applied them.
struct H2Refuser {
    addr: std::net::SocketAddr,
    ready: Arc<AtomicBool>,
    close: Arc<AtomicBool>,
}

impl H2Refuser {
    fn start() -> H2Refuser {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let ready = Arc::new(AtomicBool::new(false));
        let close = Arc::new(AtomicBool::new(false));
        let (r, c) = (ready.clone(), close.clone());
        std::thread::spawn(move || {
            // One connection is all the proxy needs (it shares it).
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            // SETTINGS: MAX_CONCURRENT_STREAMS (0x3) = 0.
            let _ = s.write_all(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0]);
            let mut buf: Vec<u8> = Vec::new();
            let mut preface = false;
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !c.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                let mut chunk = [0u8; 4096];
                match s.read(&mut chunk) {
                    Ok(0) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(_) => continue,
                }
                if !preface && buf.len() >= 24 {
                    buf.drain(..24);
                    preface = true;
                }
                while preface && buf.len() >= 9 {
                    let len = (buf[0] as usize) << 16 | (buf[1] as usize) << 8 | buf[2] as usize;
                    if buf.len() < 9 + len {
                        break;
                    }
                    let (kind, flags) = (buf[3], buf[4]);
                    buf.drain(..9 + len);
                    match (kind, flags & 1) {
                        // The proxy's SETTINGS: acknowledge, then PING.
                        (4, 0) => {
                            let _ = s.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]);
                            let _ =
                                s.write_all(&[0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
                        }
                        (6, 1) => r.store(true, Ordering::Relaxed),
                        _ => {}
                    }
                }
            }
            // Dropping the socket closes the connection.
        });
        H2Refuser { addr, ready, close }
    }
}

#[test]
fn item09_failover_from_an_h2_backend_sends_origin_form_and_host() {
    let refuser = H2Refuser::start();
    let b = RawBackend::ok("b", "b");
    // Weighted 100:1, so that the HTTP/2 backend is the first choice of
    // every request here; never marked down.
    let proxy = Proxy::start(
        &config(
            &[
                format!(
                    "{{ name = \"h2\", address = \"{}\", h2 = true, weight = 100 }}",
                    refuser.addr
                ),
                b.entry(),
            ],
            "",
            "max-fails = 0",
        )
        .replace("policy = \"round-robin\"", "policy = \"weighted\""),
    );
    let send = |i: usize| {
        let port = proxy.port;
        std::thread::spawn(move || {
            must_exchange(
                port,
                format!(
                    "GET /p/{i}?q=1 HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            )
        })
    };
    // The first request opens the connection and learns its SETTINGS.
    let mut pending = vec![send(0)];
    assert!(
        wait_for(Duration::from_secs(10), || refuser
            .ready
            .load(Ordering::Relaxed)),
        "the proxy never opened its HTTP/2 connection"
    );
    // Three more wait on it, unsent (in flight to it, on this build's
    // count; given 2 s either way); then the backend goes away and hands all
    // four back.
    pending.extend((1..4).map(send));
    wait_for(Duration::from_secs(2), || in_flight(&proxy, "h2") == 4.0);
    refuser.close.store(true, Ordering::Relaxed);
    let answers: Vec<Message> = pending.into_iter().map(|p| p.join().unwrap()).collect();
    let seen = b.requests();
    for req in &seen {
        let target = req.target();
        assert!(
            target.starts_with("/p/") && target.ends_with("?q=1"),
            "after failover from the HTTP/2 backend, b got the request line {:?}",
            req.start
        );
        assert_eq!(
            req.all("host"),
            ["app.example"],
            "after failover from the HTTP/2 backend, b got {req:?}"
        );
    }
    // Every one of them is served by b: the HTTP/2 backend processed none
    // (it allowed no stream), so each is safe to send elsewhere.
    for r in &answers {
        assert_eq!(
            (r.status(), r.body_text().as_str()),
            (200, "b"),
            "a GET handed back by the HTTP/2 backend: {r:?}"
        );
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
}

// ----------------------------------------------------------------- item 10

#[test]
fn item10_upgrade_h2c_is_stripped_and_forwarded_as_a_plain_request() {
    // A backend that accepts any Upgrade it is offered.
    let backend = RawBackend::start("a", |req, s, _| {
        if req.header("upgrade").is_some() {
            let _ = s.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
            );
        } else {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        }
        Next::KeepAlive
    });
    let proxy = Proxy::start(&config(&[backend.entry()], "", ""));
    let mut w = Wire::connect(proxy.port, Duration::from_secs(5));
    w.send(
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n",
    )
    .unwrap();
    let first = w.response().expect("a response to the upgrade request");
    // Whatever came back, the client goes on on that connection.
    let _ = w.send(b"GET /second HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n");
    let _ = w.response();
    let seen = backend.requests();
    for req in &seen {
        assert_eq!(
            (req.header("upgrade"), req.all("x-forwarded-for")),
            (None, vec!["127.0.0.1"]),
            "the backend got {:?} (client got {:?} first)",
            req,
            first.start
        );
    }
    assert_eq!(first.status(), 200, "{first:?}");
    assert!(!seen.is_empty());
}

#[test]
fn item10_unsolicited_101_from_a_backend_is_a_502() {
    let backend = RawBackend::start("a", |_, s, _| {
        let _ = s.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        );
        Next::Close
    });
    let proxy = Proxy::start(&config(&[backend.entry()], "", "retries = 0"));
    let r = must_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        r.status(),
        502,
        "a 101 to a request that asked for none: {r:?}"
    );
}

// ----------------------------------------------------------------- item 11

#[test]
fn item11_untrusted_forwarding_headers_are_dropped_or_replaced() {
    let a = Backend::start("a");
    let spoofed = [
        ("forwarded", "for=6.6.6.6;host=evil.example"),
        ("x-real-ip", "6.6.6.6"),
        ("x-forwarded-port", "1"),
        ("x-forwarded-prefix", "/evil"),
    ];
    let proxy = Proxy::start(&config(&[a.entry()], "", ""));
    assert_eq!(get_with(&client(), &proxy.url("/"), &spoofed).status, 200);
    let seen = a.seen();
    let h = &seen.last().unwrap().headers;
    for (name, _) in spoofed {
        assert!(
            !h.contains_key(name),
            "{name} from an untrusted client reached the backend: {h:?}"
        );
    }

    // With `forwarded = true`, Forwarded is the proxy's own element only.
    let proxy = Proxy::start(&config(&[a.entry()], "forwarded = true", ""));
    assert_eq!(get_with(&client(), &proxy.url("/"), &spoofed).status, 200);
    let seen = a.seen();
    let h = &seen.last().unwrap().headers;
    let forwarded = h.get("forwarded").map(String::as_str).unwrap_or("");
    assert!(
        forwarded.starts_with("for=127.0.0.1;proto=http") && !forwarded.contains("6.6.6.6"),
        "{forwarded:?}"
    );
    for name in ["x-real-ip", "x-forwarded-port", "x-forwarded-prefix"] {
        assert!(!h.contains_key(name), "{name}: {h:?}");
    }
}

// ----------------------------------------------------------------- item 12

#[test]
fn item12_http1_request_on_a_connection_that_agreed_h2_is_refused() {
    let a = Backend::start("a");
    let proxy = Proxy::start_with(
        &add_tls_listener(&config(&[a.entry()], "", "")),
        self_signed,
    );
    let r = py(&["tls-alpn-h1", &proxy.tls_port.unwrap().to_string(), "5"]);
    assert_eq!(r["alpn"], "h2", "{r}");
    let received = r["received"].as_str().unwrap();
    assert!(
        !received.contains("HTTP/1."),
        "an HTTP/1.1 request was served after ALPN agreed on h2: {received:?}"
    );
    assert!(r["closed"] == true, "{r}");
    assert!(a.seen().is_empty(), "{:?}", a.seen());
}

#[test]
fn item12_http2_expect_100_continue_gets_an_interim_100() {
    require_python("h2");
    let a = Backend::start("a");
    let proxy = Proxy::start(&config(&[a.entry()], "", ""));
    let r = py(&["h2-expect", &proxy.port.to_string(), "5"]);
    assert!(
        r["interim_before_body"] == true,
        "no interim 100 within 5 s of HEADERS with expect: 100-continue: {r}"
    );
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["body"], sha256_hex(b"hello"), "{r}");
}
