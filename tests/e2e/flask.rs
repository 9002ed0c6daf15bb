//! The classic tutorial, for real: two Flask apps behind the proxy, with
//! the example's app and config.

use std::process::Stdio;
use std::time::Duration;

use crate::common::*;

#[test]
fn requests_alternate_between_two_flask_apps() {
    require_python("flask");
    let app = repo().join("examples/flask/app.py");
    let ports: Vec<u16> = (0..2)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let _apps: Vec<Killed> = ["app1", "app2"]
        .iter()
        .zip(&ports)
        .map(|(name, port)| {
            Killed(
                python()
                    .arg(&app)
                    .args([name.to_string(), port.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    for port in &ports {
        assert!(
            wait_for(Duration::from_secs(20), || std::net::TcpStream::connect((
                "127.0.0.1",
                *port
            ))
            .is_ok()),
            "flask app on {port} did not start"
        );
    }
    // The shipped example config, pointed at this test's ports.
    let config = std::fs::read_to_string(repo().join("config/flask-demo.toml"))
        .unwrap()
        .replace("127.0.0.1:8080", "127.0.0.1:{port}")
        .replace("127.0.0.1:5001", &format!("127.0.0.1:{}", ports[0]))
        .replace("127.0.0.1:5002", &format!("127.0.0.1:{}", ports[1]));
    let proxy = Proxy::start(&config);
    let agent = client();
    let answers: Vec<String> = (0..6)
        .map(|_| get(&agent, &proxy.url("/hello")).body)
        .collect();
    for (i, a) in answers.iter().enumerate() {
        let want = if i % 2 == 0 { "app1" } else { "app2" };
        assert!(
            a.starts_with(&format!("Hello from {want}!")),
            "answer {i}: {a:?} ({answers:?})"
        );
        assert!(a.contains("you asked for /hello, via 127.0.0.1"), "{a}");
    }
}
