//! Keep-alive connections to backends: reused between requests, dropped
//! when the backend closes them, and read to the end when the backend
//! delimits a body by closing.

use std::process::Stdio;
use std::time::Duration;

use crate::common::*;

/// `tests/e2e/py/h1_backend.py`, closing idle connections after `idle`.
struct PyBackend {
    _process: Killed,
    port: u16,
    _dir: TempDir,
}

impl PyBackend {
    fn start(idle: Duration) -> PyBackend {
        let dir = TempDir::new("h1-backend");
        let port_file = dir.path().join("port");
        let process = Killed(
            python()
                .arg(repo().join("tests/e2e/py/h1_backend.py"))
                .arg(&port_file)
                .arg(idle.as_secs_f64().to_string())
                .stderr(Stdio::null())
                .spawn()
                .expect("python3"),
        );
        assert!(
            wait_for(Duration::from_secs(15), || port_file.exists()),
            "the Python backend did not start"
        );
        let port = std::fs::read_to_string(&port_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        PyBackend {
            _process: process,
            port,
            _dir: dir,
        }
    }

    /// Idle connections the backend has closed so far (asked directly).
    fn closed(&self) -> u64 {
        get(&client(), &format!("http://127.0.0.1:{}/closed", self.port))
            .body
            .parse()
            .unwrap_or(0)
    }

    fn config(&self) -> String {
        format!(
            "[server]\nlisten = \"127.0.0.1:{{port}}\"\n[upstreams.app]\npolicy = \"round-robin\"\n\
             retries = 0\nmax-fails = 1\n\
             backends = [{{ name = \"py\", address = \"127.0.0.1:{}\" }}]\n",
            self.port
        )
    }
}

#[test]
fn a_connection_the_backend_closed_while_idle_is_not_reused() {
    let backend = PyBackend::start(Duration::from_millis(300));
    let proxy = Proxy::start(&backend.config());
    let agent = client();
    let first = get(&agent, &proxy.url("/conn"));
    assert_eq!(first.status, 200, "{}", proxy.log());
    // Back to back, the request goes out on the same connection.
    assert_eq!(get(&agent, &proxy.url("/conn")).body, first.body);

    // The backend closes the idle connection; the proxy notices instead of
    // sending on it. A POST makes that visible: sent on the dead connection
    // it would be lost and, not being idempotent, never re-sent (a 502, and
    // with one failure the only backend marked down).
    assert!(
        wait_for(Duration::from_secs(10), || backend.closed() >= 1),
        "the backend never closed the idle connection"
    );
    let r = post(&agent, &proxy.url("/conn"), b"payload");
    assert_eq!(r.status, 200, "{r:?}\n{}", proxy.log());
    assert_ne!(r.body, first.body, "a closed connection was reused");
    let mut bodies = Vec::new();
    for _ in 0..5 {
        let r = get(&agent, &proxy.url("/conn"));
        assert_eq!(r.status, 200, "{r:?}\n{}", proxy.log());
        bodies.push(r.body);
    }
    assert_ne!(bodies[0], first.body, "a closed connection was reused");
    assert!(bodies.iter().all(|b| *b == bodies[0]), "{bodies:?}");
    assert_eq!(proxy.log_count("backend failed"), 0, "{}", proxy.log());
    assert_eq!(proxy.log_count("backend marked down"), 0, "{}", proxy.log());
}

#[test]
fn a_body_delimited_by_the_backend_closing_arrives_whole() {
    let backend = PyBackend::start(Duration::from_secs(5));
    let proxy = Proxy::start(&backend.config());
    let agent = client();
    for n in [0usize, 1, 300_000] {
        let r = get(&agent, &proxy.url(&format!("/close/{n}")));
        assert_eq!(r.status, 200, "{r:?}\n{}", proxy.log());
        assert_eq!(r.body.len(), n, "{}", proxy.log());
        assert!(
            r.body
                .bytes()
                .enumerate()
                .all(|(i, b)| b == b'a' + (i % 26) as u8),
            "the body differs"
        );
    }
    // The closed connection went nowhere near the pool.
    assert_eq!(get(&agent, &proxy.url("/conn")).status, 200);
}
