//! Connections must not be held forever (items 1-4): idle HTTP/2 clients,
//! stalled TLS handshakes, stalled bodies in either direction, idle
//! tunnels, slow uploads and slowloris clients each end within a bound the
//! operator configures.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sha2::Digest;

use super::support::*;
use crate::common::*;

// ------------------------------------------------------------------ item 1

#[test]
fn item01_idle_http2_connection_gets_goaway_and_is_closed() {
    require_python("h2");
    let a = Backend::start("a");
    let proxy = Proxy::start(&config(&[a.entry()], "client-idle-timeout = \"1s\"", ""));
    // One request, then nothing but PING answers for up to 8 s.
    let r = py(&["h2-idle", &proxy.port.to_string(), "8"]);
    assert_eq!(r["status"], "200", "{r}");
    assert!(
        r["closed"] == true,
        "an idle HTTP/2 connection was still open after {}s of idling (client-idle-timeout = 1s): {r}",
        r["idle_for"]
    );
    assert!(r["goaway"] == true, "closed without a GOAWAY: {r}");
    assert!(
        r["idle_for"].as_f64().unwrap() < 6.0,
        "closed only after {}s",
        r["idle_for"]
    );
}

#[test]
fn item01_tls_client_that_never_handshakes_is_disconnected() {
    let a = Backend::start("a");
    let cfg = add_tls_listener(&config(
        &[a.entry()],
        // The idle timeout is long: only the handshake limit can cut it.
        "client-idle-timeout = \"60s\"\ntls-handshake-timeout = \"1s\"",
        "",
    ));
    let proxy = Proxy::start_with(&cfg, self_signed);
    let mut s = TcpStream::connect(("127.0.0.1", proxy.tls_port.unwrap())).unwrap();
    let started = Instant::now();
    assert!(
        closed_within(&mut s, Duration::from_secs(6)),
        "a TLS client that sent nothing was still connected after {:?} (tls-handshake-timeout = 1s)",
        started.elapsed()
    );
}

// ------------------------------------------------------------------ item 2

#[test]
fn item02_backend_stalling_mid_body_is_cut_and_counted_as_failed() {
    // Headers and 100 of 1000 promised bytes, then silence.
    let stalling = RawBackend::start("a", |_, s, stop| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
        let _ = s.write_all(&[b'x'; 100]);
        stall(stop);
        Next::Close
    });
    let proxy = Proxy::start(&config(
        &[stalling.entry()],
        "",
        "read-timeout = \"1s\"\nmax-fails = 1\nfail-timeout = \"60s\"\nretries = 0",
    ));
    let mut w = Wire::connect(proxy.port, Duration::from_secs(8));
    w.send(b"GET /stall HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let head = w.head().expect("response headers");
    assert_eq!(head.status(), 200, "{head:?}");
    let started = Instant::now();
    let (got, ended) = w.drain(Duration::from_secs(8));
    assert!(
        ended,
        "the client still waited for the body {:?} after the backend stalled (read-timeout = 1s); {got} bytes so far",
        started.elapsed()
    );
    assert!(got < 1000, "a stalled body arrived whole? {got} bytes");
    assert!(
        wait_for(Duration::from_secs(5), || !healthy(&proxy, "a")),
        "the stalling backend was not counted as failed: {}",
        backend_status(&proxy, "a")
    );
}

#[test]
fn item02_client_that_stops_reading_is_disconnected_and_backend_released() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&config(&[a.entry()], "", "send-timeout = \"1s\""));
    let mut w = Wire::connect(proxy.port, Duration::from_secs(5));
    w.send(b"GET /bytes/104857600 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let head = w.head().expect("response headers");
    assert_eq!(head.status(), 200, "{head:?}");
    let mut first = [0u8; 64 * 1024];
    w.stream.read_exact(&mut first).unwrap();
    // Now the client reads nothing more; the proxy's writes back up.
    assert!(
        wait_for(Duration::from_secs(10), || in_flight(&proxy, "a") == 0.0),
        "the backend connection stayed in flight for a client that stopped reading (send-timeout = 1s): {}",
        backend_status(&proxy, "a")
    );
    assert_eq!(backend_status(&proxy, "a")["in_flight"], 0);
    // What was buffered drains, then the connection ends short of 100 MiB.
    let (got, ended) = w.drain(Duration::from_secs(10));
    assert!(ended, "the client connection was not closed");
    assert!(
        got + 64 * 1024 < 104_857_600,
        "the whole body arrived ({got} bytes)"
    );
}

#[test]
fn item02_http2_stream_held_at_zero_window_is_reset_and_backend_released() {
    require_python("h2");
    let a = Backend::start("a");
    let proxy = Proxy::start(&config(&[a.entry()], "", "send-timeout = \"1s\""));
    let port = proxy.port.to_string();
    // The client holds the window shut for up to 15 s.
    let args = ["h2-zero-window", &port, "/bytes/10485760", "15"];
    let client = py_spawn(&args);
    assert!(
        wait_for(Duration::from_secs(10), || !a.seen().is_empty()),
        "the request never reached the backend"
    );
    assert!(
        wait_for(Duration::from_secs(8), || in_flight(&proxy, "a") == 0.0),
        "a stream at a zero window kept the backend in flight (send-timeout = 1s): {}",
        backend_status(&proxy, "a")
    );
    let r = py_finish(&args, client);
    assert_eq!(r["status"], 200, "{r}");
    assert!(
        r["reset"] == true || r["closed"] == true || r["goaway"] == true,
        "the stream was neither reset nor the connection closed: {r}"
    );
    assert!(r["ended"] == false, "{r}");
}

/// `tests/e2e/py/ws.py serve`: a WebSocket echo server; its port.
fn ws_server() -> (Killed, u16, TempDir) {
    require_python("websockets");
    let dir = TempDir::new("ws");
    let port_file = dir.path().join("port");
    let server = Killed(
        python()
            .arg(repo().join("tests/e2e/py/ws.py"))
            .arg("serve")
            .arg(&port_file)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_for(Duration::from_secs(15), || port_file.exists()),
        "websocket server did not start"
    );
    let port = std::fs::read_to_string(&port_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (server, port, dir)
}

#[test]
fn item02_idle_websocket_tunnel_is_closed_after_tunnel_idle_timeout() {
    let (_server, ws_port, _dir) = ws_server();
    let proxy = Proxy::start(&config(
        &[format!(
            "{{ name = \"ws\", address = \"127.0.0.1:{ws_port}\" }}"
        )],
        "",
        "tunnel-idle-timeout = \"1s\"",
    ));
    // Eight echoes 300 ms apart (2.4 s of traffic: the limit is on idleness,
    // not on the tunnel's age), then silence for up to 8 s.
    let url = format!("ws://127.0.0.1:{}/chat", proxy.port);
    let r = py(&["ws-idle", &url, "8", "0.3", "8"]);
    assert_eq!(r["echoed"], 8, "the tunnel did not carry traffic: {r}");
    assert!(
        r["closed"] == true,
        "an idle WebSocket tunnel was still open after {}s (tunnel-idle-timeout = 1s): {r}",
        r["idle_for"]
    );
    assert!(r["idle_for"].as_f64().unwrap() < 6.0, "{r}");
    assert!(
        wait_for(Duration::from_secs(5), || in_flight(&proxy, "ws") == 0.0),
        "{}",
        proxy.metrics()
    );
}

// ------------------------------------------------------------------ item 3

/// POSTs `total` bytes to /sha256 in `chunks` pieces `gap` apart; returns
/// the response and the expected digest.
fn slow_upload(port: u16, total: usize, chunks: usize, gap: Duration) -> (Message, String) {
    let body: Vec<u8> = (0..total as u64).map(pattern).collect();
    let want = hex(&sha2::Sha256::digest(&body));
    let mut w = Wire::connect(port, Duration::from_secs(15));
    w.send(
        format!("POST /sha256 HTTP/1.1\r\nHost: x\r\nContent-Length: {total}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    for (i, piece) in body.chunks(total.div_ceil(chunks)).enumerate() {
        if i > 0 {
            std::thread::sleep(gap);
        }
        if w.send(piece).is_err() {
            break; // the proxy answered early and closed; read it below
        }
    }
    let resp = w
        .response()
        .unwrap_or_else(|e| panic!("no response to the slow upload: {e:?}"));
    (resp, want)
}

#[test]
fn item03_slow_upload_is_not_charged_to_the_response_timeout() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&config(
        &[a.entry()],
        "",
        "response-timeout = \"1s\"\nmax-fails = 1\nfail-timeout = \"60s\"",
    ));
    // 1 MiB over ~3 s: three times the response timeout, yet the backend
    // answers the moment the body is complete.
    let started = Instant::now();
    let (resp, want) = slow_upload(proxy.port, 1 << 20, 30, Duration::from_millis(100));
    let took = started.elapsed();
    assert_eq!(
        (resp.status(), resp.body_text()),
        (200, want),
        "a 3 s upload was cut by response-timeout = 1s after {took:?}: {resp:?}"
    );
    assert!(took >= Duration::from_millis(2900), "{took:?}");
    assert!(healthy(&proxy, "a"), "{}", backend_status(&proxy, "a"));
}

#[test]
fn item03_client_that_stalls_its_upload_gets_408_and_backend_stays_healthy() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&config(
        &[a.entry()],
        "client-body-timeout = \"1s\"",
        "max-fails = 1\nfail-timeout = \"60s\"",
    ));
    let mut w = Wire::connect(proxy.port, Duration::from_secs(8));
    w.send(b"POST /sha256 HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
        .unwrap();
    let started = Instant::now();
    let resp = w.response();
    let resp = resp.unwrap_or_else(|e| {
        panic!(
            "no answer {:?} after the upload stalled (client-body-timeout = 1s): {e:?}",
            started.elapsed()
        )
    });
    assert_eq!(resp.status(), 408, "{resp:?}");
    assert!(healthy(&proxy, "a"), "{}", backend_status(&proxy, "a"));
}

// ------------------------------------------------------------------ item 4

/// `n` slowloris clients: each sends a request line, then one header byte
/// every `gap`, reconnecting whenever the proxy closes it; until `stop`.
fn slowloris(
    port: u16,
    n: usize,
    gap: Duration,
    stop: Arc<AtomicBool>,
    connected: Arc<AtomicUsize>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..n)
        .map(|_| {
            let (stop, connected) = (stop.clone(), connected.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
                        std::thread::sleep(gap);
                        continue;
                    };
                    let _ = s.set_nodelay(true);
                    let mut ok = s
                        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                        .is_ok();
                    connected.fetch_add(1, Ordering::Relaxed);
                    while ok && !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        std::thread::sleep(gap);
                        ok = s.write_all(b"a").is_ok();
                    }
                }
            })
        })
        .collect()
}

#[test]
fn item04_normal_requests_get_in_while_slowloris_clients_fill_max_connections() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&config(
        &[a.entry()],
        "max-connections = 20\nclient-idle-timeout = \"10s\"",
        "",
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let connected = Arc::new(AtomicUsize::new(0));
    let slow = slowloris(
        proxy.port,
        30,
        Duration::from_millis(200),
        stop.clone(),
        connected.clone(),
    );
    // Every slow client is in (20 hold the slots, 10 queue) before the
    // normal clients come.
    assert!(wait_for(Duration::from_secs(10), || connected
        .load(Ordering::Relaxed)
        >= 30));
    let mut outcomes = Vec::new();
    for i in 0..10 {
        let started = Instant::now();
        let mut w = Wire::connect(proxy.port, Duration::from_secs(5));
        let r = w
            .send(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .map_err(|e| format!("{e}"))
            .and_then(|()| w.response().map_err(|e| format!("{e:?}")));
        outcomes.push((i, r.as_ref().map(Message::status).ok(), started.elapsed()));
        if r.is_err() {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in slow {
        t.join().unwrap();
    }
    assert!(
        outcomes.len() == 10 && outcomes.iter().all(|(_, s, _)| *s == Some(200)),
        "normal requests starved by slow clients at max-connections = 20 (client-idle-timeout = 10s; each given 5 s): {outcomes:?}"
    );
}

/// Trickles `bytes` one every `gap` on a fresh connection until the proxy
/// closes it; how long that took, or None if still open after `limit`.
fn trickle_until_closed(
    port: u16,
    bytes: &[u8],
    gap: Duration,
    limit: Duration,
) -> Option<Duration> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(gap)).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    for byte in bytes.iter().cycle() {
        if started.elapsed() > limit {
            return None;
        }
        if s.write_all(&[*byte]).is_err() {
            return Some(started.elapsed());
        }
        // Waiting for the next byte's turn doubles as watching for a close.
        match s.read(&mut buf) {
            Ok(_) => return Some(started.elapsed()), // EOF, or a 408 before it
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    unreachable!()
}

#[test]
fn item04_head_trickled_byte_by_byte_is_cut_at_the_idle_timeout() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&config(&[a.entry()], "client-idle-timeout = \"1s\"", ""));
    let gap = Duration::from_millis(300);
    let limit = Duration::from_secs(5);
    let cases: [(&str, &[u8]); 2] = [
        (
            "an HTTP/1.1 head",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ),
        // The HTTP/2 preface, then a SETTINGS frame, a byte at a time.
        (
            "an HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
        ),
    ];
    let port = proxy.port;
    let results: Vec<_> = cases
        .iter()
        .map(|(what, bytes)| {
            let (what, bytes) = (what.to_string(), bytes.to_vec());
            std::thread::spawn(move || (what, trickle_until_closed(port, &bytes, gap, limit)))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    for (what, took) in &results {
        assert!(
            took.is_some(),
            "{what} trickled a byte every 300 ms was still open after {limit:?} (client-idle-timeout = 1s): {results:?}"
        );
    }
}
