//! Bad and oversized input gets a clear 4xx and disturbs nobody else:
//! malformed requests 400, huge headers 431, bodies over the route's limit
//! 413; the next request is served normally.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::*;

/// Writes `bytes` on a fresh connection and returns the status line.
fn raw(port: u16, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // Read until the headers end or the connection closes.
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

fn config(a: &Backend) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{{port}}\"\n[upstreams.app]\npolicy = \"round-robin\"\nbackends = [{}]\n\
         [[routes]]\npath-prefix = \"/sha256\"\nupstream = \"app\"\nmax-body-size = \"64KiB\"\n\
         [[routes]]\npath-prefix = \"/\"\nupstream = \"app\"\n",
        a.entry()
    )
}

#[test]
fn malformed_and_oversized_requests_get_4xx_and_the_next_one_works() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&config(&a));
    let agent = client();

    assert!(raw(proxy.port, b"THIS IS NOT HTTP\r\n\r\n").starts_with("HTTP/1.1 400"));
    assert!(
        raw(
            proxy.port,
            b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"
        )
        .starts_with("HTTP/1.1 400")
    );
    assert_eq!(get(&agent, &proxy.url("/")).status, 200);

    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "y".repeat(100 * 1024)
    );
    assert!(
        raw(proxy.port, huge.as_bytes()).starts_with("HTTP/1.1 431"),
        "{}",
        raw(proxy.port, huge.as_bytes())
    );
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    assert!(raw(proxy.port, many.as_bytes()).starts_with("HTTP/1.1 431"));
    assert_eq!(get(&agent, &proxy.url("/")).status, 200);

    // Declared too large: refused before anything reaches the backend.
    let r = post(&agent, &proxy.url("/sha256"), &vec![b'x'; 100 * 1024]);
    assert_eq!(r.status, 413, "{r:?}");
    assert!(a.seen().iter().all(|s| s.path != "/sha256"));
    // Chunked, so only found out while streaming.
    let mut chunked =
        b"POST /sha256 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..10 {
        chunked.extend_from_slice(format!("{:x}\r\n", 16 * 1024).as_bytes());
        chunked.extend_from_slice(&[b'z'; 16 * 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let status = raw(proxy.port, &chunked);
    assert!(
        status.starts_with("HTTP/1.1 413"),
        "{status}\n{}",
        proxy.log()
    );
    // Under the limit is fine, on both routes.
    assert_eq!(
        post(&agent, &proxy.url("/sha256"), &vec![b'x'; 1024]).status,
        200
    );
    assert_eq!(get(&agent, &proxy.url("/")).status, 200);
}

#[test]
fn an_idle_client_connection_is_closed_after_the_idle_timeout() {
    let a = Backend::start("a");
    let cfg = config(&a).replace(
        "listen = \"127.0.0.1:{port}\"",
        "listen = \"127.0.0.1:{port}\"\nclient-idle-timeout = \"300ms\"",
    );
    let proxy = Proxy::start(&cfg);
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    // Nothing sent: the proxy closes the connection (EOF, or a 408).
    let _ = s.read(&mut buf);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "idle connection kept {:?}",
        started.elapsed()
    );

    // A kept-alive connection idle after a request is closed the same way.
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"\r\n\r\na") {
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "closed before the response: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    let started = std::time::Instant::now();
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "expected the connection to close");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "idle keep-alive connection kept {:?}",
        started.elapsed()
    );
}

#[test]
fn at_the_listener_limit_idle_connections_make_room_and_busy_ones_are_waited_for() {
    let a = Backend::start("a");
    let cfg = config(&a).replace(
        "listen = \"127.0.0.1:{port}\"",
        "listen = \"127.0.0.1:{port}\"\nmax-connections = 2",
    );
    let proxy = Proxy::start(&cfg);
    let ask = |s: &mut TcpStream, path: &str| {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
    };
    let answered = |s: &mut TcpStream, within: Duration| {
        s.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 256];
        matches!(s.read(&mut buf), Ok(n) if n > 0)
    };
    let closed = |s: &mut TcpStream, within: Duration| {
        s.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 256];
        matches!(s.read(&mut buf), Ok(0) | Err(_))
    };
    // Two kept-alive, idle connections fill the listener...
    let mut first = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    ask(&mut first, "/");
    assert!(answered(&mut first, Duration::from_secs(5)));
    let mut second = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    ask(&mut second, "/");
    assert!(answered(&mut second, Duration::from_secs(5)));
    // ... and a third client gets in at once: idle ones make room, the
    // oldest first (as nginx and HAProxy close idle keep-alive ones).
    let mut third = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    ask(&mut third, "/");
    assert!(
        answered(&mut third, Duration::from_secs(5)),
        "{}",
        proxy.log()
    );
    assert!(
        closed(&mut first, Duration::from_secs(5)),
        "the oldest idle connection stays"
    );

    // Busy connections are never closed: a new client waits for one to
    // finish.
    let mut busy1 = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    ask(&mut busy1, "/delay/3000");
    let mut busy2 = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    ask(&mut busy2, "/delay/3000");
    // Both requests are in the backend's hands: the connections are busy.
    let delayed = || {
        a.seen()
            .iter()
            .filter(|s| s.path.starts_with("/delay/"))
            .count()
    };
    assert!(
        wait_for(Duration::from_secs(5), || delayed() == 2),
        "{:?}\n{}",
        a.seen().iter().map(|s| s.path.clone()).collect::<Vec<_>>(),
        proxy.log()
    );
    let mut waiting = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    ask(&mut waiting, "/");
    assert!(
        !answered(&mut waiting, Duration::from_millis(500)),
        "a busy connection was closed to make room"
    );
    assert!(answered(&mut busy1, Duration::from_secs(5)));
    assert!(answered(&mut busy2, Duration::from_secs(5)));
    assert!(
        answered(&mut waiting, Duration::from_secs(5)),
        "not served after a slot freed up"
    );
}
