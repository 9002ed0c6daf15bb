//! HTTP/2 (h2c and over TLS), TLS termination, HTTP/2 to backends with
//! trailers, and WebSocket upgrades, each with the real clients people use.

use std::process::{Command, Stdio};
use std::time::Duration;

use http_body_util::BodyExt;

use crate::common::*;

/// `curl` with `args`; returns "HTTP_VERSION STATUS" and the body.
fn curl(args: &[&str]) -> (String, String) {
    let dir = TempDir::new("curl");
    let body = dir.path().join("body");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o"])
        .arg(&body)
        .args(["-w", "%{http_version} %{http_code}"])
        .args(args)
        .output()
        .expect("curl is installed");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        std::fs::read_to_string(&body).unwrap_or_default(),
    )
}

/// A self-signed certificate for 127.0.0.1 and localhost, as PEM files.
fn self_signed(dir: &TempDir) {
    let key =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    dir.write("cert.pem", key.cert.pem());
    dir.write("key.pem", key.signing_key.serialize_pem());
}

fn tls_config(backends: &[&Backend]) -> String {
    one_upstream("round-robin", backends, "").replace(
        "listen = \"127.0.0.1:{port}\"",
        "listen = [ \"127.0.0.1:{port}\", { address = \"127.0.0.1:0\", tls = { cert = \"cert.pem\", key = \"key.pem\" } } ]",
    )
}

#[test]
fn http2_and_http1_clients_get_their_protocol_on_plain_and_tls_listeners() {
    let a = Backend::start("a");
    let proxy = Proxy::start_with(&tls_config(&[&a]), self_signed);

    assert_eq!(
        curl(&["--http2-prior-knowledge", &proxy.url("/")]),
        ("2 200".into(), "a".into())
    );
    assert_eq!(
        curl(&["--http1.1", &proxy.url("/")]),
        ("1.1 200".into(), "a".into())
    );
    assert_eq!(
        curl(&["-k", "--http2", &proxy.https_url("/")]),
        ("2 200".into(), "a".into())
    );
    assert_eq!(
        curl(&["-k", "--http1.1", &proxy.https_url("/")]),
        ("1.1 200".into(), "a".into())
    );

    // Over TLS the backend is told the client used https.
    let seen = a.seen();
    let last = seen.last().unwrap();
    assert_eq!(
        last.headers.get("x-forwarded-proto").map(String::as_str),
        Some("https")
    );
    assert_eq!(
        last.headers.get("x-forwarded-for").map(String::as_str),
        Some("127.0.0.1")
    );
}

/// The subject curl reports for the proxy's certificate.
fn subject(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-sk", "-v", "-o", "/dev/null", url])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    err.lines()
        .find_map(|l| l.trim().strip_prefix("*  subject: "))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_reload_picks_up_a_renewed_certificate_on_the_same_socket() {
    let a = Backend::start("a");
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:{{admin}}\"\n{}",
        tls_config(&[&a])
    );
    let proxy = Proxy::start_with(&config, self_signed);
    let url = proxy.https_url("/");
    assert!(
        subject(&url).contains("rcgen self signed cert"),
        "{}",
        subject(&url)
    );

    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "switchyard renewed");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(proxy.dir.path().join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(proxy.dir.path().join("key.pem"), key.serialize_pem()).unwrap();
    let r = post(&client(), &proxy.admin_url("/reload"), b"");
    assert_eq!(r.status, 200, "{r:?}");
    // Same URL: the port-0 listener kept its socket; the new cert is served.
    assert!(
        subject(&url).contains("switchyard renewed"),
        "{}",
        subject(&url)
    );
}

#[test]
fn a_bad_certificate_is_refused_by_check_with_the_file() {
    let a = Backend::start("a");
    let dir = TempDir::new("badcert");
    dir.write(
        "cert.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    );
    dir.write("key.pem", "");
    let cfg = dir.write("switchyard.toml", tls_config(&[&a]).replace("{port}", "0"));
    let out = check_config(&cfg);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("switchyard.toml:2:") && err.contains("cert.pem"),
        "{err}"
    );
}

#[test]
fn http2_backends_keep_grpc_style_trailers() {
    let a = Backend::start("a");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{{port}}\"\n[upstreams.app]\npolicy = \"round-robin\"\nbackends = [{{ name = \"a\", address = \"{}\", h2 = true }}]\n",
        a.addr
    );
    let proxy = Proxy::start(&config);
    let port = proxy.port;
    // An h2c client (hyper) asking for a response with trailers.
    let (body, trailers) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let (mut sender, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(stream),
            )
            .await
            .unwrap();
            tokio::spawn(conn);
            let req = http::Request::get(format!("http://127.0.0.1:{port}/trailers"))
                .header("te", "trailers")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            let collected = resp.into_body().collect().await.unwrap();
            let trailers = collected.trailers().cloned();
            (collected.to_bytes(), trailers)
        });
    assert_eq!(body, "a");
    let trailers = trailers.expect("trailers reached the client");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(
        a.seen().last().unwrap().version,
        http::Version::HTTP_2,
        "the backend was not spoken to in HTTP/2"
    );
}

#[test]
fn a_websocket_echoes_100_messages_through_the_proxy() {
    require_python("websockets");
    let dir = TempDir::new("ws");
    let port_file = dir.path().join("port");
    let script = repo().join("tests/e2e/py/ws.py");
    let _server = Killed(
        python()
            .arg(&script)
            .arg("serve")
            .arg(&port_file)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_for(Duration::from_secs(15), || port_file.exists()),
        "websocket server did not start"
    );
    let ws_port: u16 = std::fs::read_to_string(&port_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{{port}}\"\n[upstreams.app]\npolicy = \"round-robin\"\nbackends = [{{ name = \"ws\", address = \"127.0.0.1:{ws_port}\" }}]\n"
    );
    let proxy = Proxy::start(&config);
    let out = python()
        .arg(&script)
        .arg("echo")
        .arg(format!("ws://127.0.0.1:{}/chat", proxy.port))
        .arg("100")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("ok 100"),
        "{text}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        proxy.log()
    );
}
