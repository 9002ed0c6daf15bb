//! `switchyard demo`: three tiny backends and the proxy in one process, the
//! "nginx in front of two Flask apps" tutorial without installing anything.
//!
//! Each backend answers every request with its own name, so repeated
//! `curl localhost:8080` calls show the policy at work.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// The demo's backends: names and weights (3:2:1, so `--policy weighted`
/// looks different from round-robin).
pub const BACKENDS: [(&str, u32); 3] = [("backend-1", 3), ("backend-2", 2), ("backend-3", 1)];

/// Starts a backend on an ephemeral loopback port that answers
/// `Hello from NAME (ADDR, weight W): METHOD PATH`. Returns its address.
pub async fn start_backend(name: &str, weight: u32) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let name = name.to_string();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let name = name.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let text = format!(
                    "Hello from {name} ({addr}, weight {weight}): {} {}\n",
                    req.method(),
                    req.uri().path()
                );
                async move {
                    let mut resp = Response::new(Full::new(Bytes::from(text)));
                    resp.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; charset=utf-8"),
                    );
                    Ok::<_, Infallible>(resp)
                }
            });
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// The demo's configuration text: one upstream of the given backends
/// (name, address, weight) with `policy`, listening on `listen`.
pub fn config_text(
    listen: SocketAddr,
    policy: &str,
    backends: &[(String, SocketAddr, u32)],
) -> String {
    let mut out = format!(
        "[server]\nlisten = \"{listen}\"\n\n[upstreams.demo]\npolicy = {}\nbackends = [\n",
        toml_string(policy)
    );
    for (name, addr, weight) in backends {
        out.push_str(&format!(
            "  {{ name = \"{name}\", address = \"{addr}\", weight = {weight} }},\n"
        ));
    }
    out.push_str("]\n\n[[routes]]\npath-prefix = \"/\"\nupstream = \"demo\"\n");
    out
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Where relative policy paths given to the demo are resolved from.
pub fn config_path() -> std::path::PathBuf {
    std::env::current_dir()
        .unwrap_or_else(|_| Path::new(".").to_path_buf())
        .join("(demo)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_config_quotes_paths() {
        let backends = vec![
            ("backend-1".to_string(), "127.0.0.1:1".parse().unwrap(), 3),
            ("backend-2".to_string(), "127.0.0.1:2".parse().unwrap(), 1),
        ];
        let text = config_text(
            "127.0.0.1:8080".parse().unwrap(),
            "./my \"odd\".wasm",
            &backends,
        );
        let doc: toml::Table = text.parse().unwrap();
        let app = &doc["upstreams"]["demo"];
        assert_eq!(app["policy"].as_str(), Some("./my \"odd\".wasm"));
        assert_eq!(app["backends"].as_array().unwrap().len(), 2);
        assert_eq!(app["backends"][0]["weight"].as_integer(), Some(3));
    }
}
